"""Merge-field templates: what a marketer writes, what a contact receives."""

from __future__ import annotations

import time

import pytest

from hub.errors import ValidationFailed
from hub.templates import parse, render

GREETING = 'Hi {{ first_name | default: "there" }}, your {{custom.plan}} plan renews {{ date }}.'


def test_variables_are_filled_and_nested_custom_fields_resolve() -> None:
    out = render(GREETING, {"first_name": "Ana", "custom": {"plan": "Gold"}, "date": "May 1"})
    assert out.text == "Hi Ana, your Gold plan renews May 1."
    assert out.missing == []


def test_default_covers_absent_none_and_blank_values() -> None:
    for first_name in (None, "", "   "):
        out = render(GREETING, {"first_name": first_name, "custom": {"plan": "Gold"}, "date": "1"})
        assert out.text.startswith("Hi there,")
        assert out.missing == []
    assert render(GREETING, {"custom": {"plan": "G"}, "date": "1"}).text.startswith("Hi there,")


def test_missing_variables_render_empty_and_are_reported_once_in_order() -> None:
    out = render("{{ b }} {{a}} {{ b }} {{ custom.tier }}", {"custom": "not a mapping"})
    assert out.text == "   "
    assert out.missing == ["b", "a", "custom.tier"]


def test_single_quoted_and_empty_defaults() -> None:
    assert render("Hi {{ name | default: 'friend' }}!", {}).text == "Hi friend!"
    out = render("Hi{{ suffix | default: '' }}!", {})
    assert (out.text, out.missing) == ("Hi!", [])  # an explicit empty default is intended


def test_non_string_values_are_rendered_as_text() -> None:
    assert render("{{n}} pts, {{custom.balance}}", {"n": 3, "custom": {"balance": 9.5}}).text == (
        "3 pts, 9.5"
    )


def test_single_braces_are_plain_text() -> None:
    out = render("Use code {SAVE10} at {{shop}}", {"shop": "x.co"})
    assert out.text == "Use code {SAVE10} at x.co"


def test_parse_lists_variables_once_in_order_of_use() -> None:
    template = parse("{{ b }}{{a|default:\"x\"}}{{ b }}{{custom.plan}}")
    assert template.variables == ("b", "a", "custom.plan")
    assert template.render({"a": "1", "b": "2", "custom": {"plan": "p"}}).text == "212p"


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("Hi {{first_name", "'{{' opened at line 1, column 4 (offset 3) is never closed"),
        ("Hi {first_name}}", "'}}' without a matching '{{' at line 1, column 15"),
        ("a\n{{ first name }}", "'{{ first name }}' at line 2, column 1"),
        ("{{ name | upcase }}", "is not {{ name }} or {{ name | default: \"text\" }}"),
        ("{{}}", "merge field '{{}}'"),
        ("{{ a {{ b }}", "merge field '{{ a {{ b }}'"),
        ("{{ name | default: \"x' }}", "merge field"),
    ],
)
def test_syntax_errors_are_reported_with_their_position(source: str, words: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        parse(source)
    exc = info.value
    assert exc.status == 422
    assert [(e.field, e.code) for e in exc.errors] == [("template", "invalid_template")]
    assert words in exc.errors[0].message


def test_every_error_is_reported_and_the_field_can_be_renamed() -> None:
    with pytest.raises(ValidationFailed) as info:
        parse("{{ a b }} and {{ c | d }}", field="body")
    assert [(e.field, e.code) for e in info.value.errors] == [("body", "invalid_template")] * 2


def test_render_of_a_broken_template_raises_rather_than_sending_braces() -> None:
    with pytest.raises(ValidationFailed):
        render("Hi {{first_name}", {"first_name": "Ana"})


def test_compiled_template_renders_a_campaign_quickly() -> None:
    template = parse(GREETING)
    rows = [{"first_name": f"n{i}", "custom": {"plan": "Gold"}, "date": "May 1"}
            for i in range(100_000)]
    started = time.perf_counter()
    bodies = [template.render(row).text for row in rows]
    elapsed = time.perf_counter() - started
    assert bodies[99_999] == "Hi n99999, your Gold plan renews May 1."
    assert elapsed < 2.0, f"100k renders took {elapsed:.2f}s"
