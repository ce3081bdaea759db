"""normalize_email against the isemail corpus, judged by email-validator 2.4.0's recorded
verdicts, with the hub's one policy difference (padding is stripped) spelled out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hub.emails import email_key, normalize_email
from hub.errors import ValidationFailed

VECTORS = Path(__file__).parent / "reference" / "vectors"

# Cases whose only problem is leading/trailing spaces, which the hub strips on purpose
# (spreadsheet padding): (file, id) → the address the hub keeps.
PADDING_STRIPPED: dict[tuple[str, str], str] = {
    ("isemail_tests.json", "157"): "test@iana.org",  # " test@iana.org"
    ("isemail_tests.json", "158"): "test@iana.org",  # "test@iana.org "
}


def _cases(name: str) -> list[dict[str, Any]]:
    tests: list[dict[str, Any]] = json.loads((VECTORS / name).read_text())["tests"]
    return tests


def _outcome(address: str) -> str | None:
    try:
        return normalize_email(address)
    except ValidationFailed as exc:
        assert [(e.field, e.code) for e in exc.errors] == [("email", "invalid_email")]
        return None


@pytest.mark.parametrize(("name", "count"), [("isemail_tests.json", 164),
                                             ("isemail_tests_original.json", 279)])
def test_every_isemail_case_matches_email_validator(name: str, count: int) -> None:
    cases = _cases(name)
    mismatches = []
    for case in cases:
        verdict = case["email_validator"]
        expected = verdict["normalized"] if verdict["valid"] else None
        expected = PADDING_STRIPPED.get((name, case["id"]), expected)
        got = _outcome(case["address_decoded"])
        if got != expected:
            mismatches.append(f"#{case['id']} {case['address_decoded']!r} "
                              f"({case['category']}): expected {expected}, got {got}")
    assert len(cases) == count
    assert not mismatches, "\n".join(mismatches)


def test_padding_table_only_lists_cases_email_validator_rejects() -> None:
    for name, id_ in PADDING_STRIPPED:
        case = next(c for c in _cases(name) if c["id"] == id_)
        assert not case["email_validator"]["valid"]
        assert case["address_decoded"] != case["address_decoded"].strip()


def test_domain_is_lowercased_local_part_kept_and_key_folds_both() -> None:
    assert normalize_email("Bob.Smith@Example.COM") == "Bob.Smith@example.com"
    assert normalize_email("\tbob.smith@example.com\u00a0") == "bob.smith@example.com"
    assert email_key(normalize_email("Bob.Smith@Example.COM")) == email_key(
        normalize_email("bob.smith@EXAMPLE.com")
    ) == "bob.smith@example.com"
    # Internationalised domains normalise to one form whichever way they were written.
    assert normalize_email("test@xn--hxajbheg2az3al.xn--jxalpdlp") == normalize_email(
        "test@παράδειγμα.δοκιμή"
    )


@pytest.mark.parametrize(
    "address",
    ["user@localhost", "user@example.test", "a@b@c.com", "x" * 250 + "@example.com",
     "user@example.com\r\n", "Bob <bob@example.com>", "user@[127.0.0.1]", '"quoted"@example.com'],
)
def test_addresses_a_sender_must_not_accept(address: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        normalize_email(address, field="contacts[3].email")
    errors = [(e.field, e.code) for e in info.value.errors]
    assert errors == [("contacts[3].email", "invalid_email")]
    assert info.value.status == 422


def test_a_rejected_domain_does_not_poison_later_addresses() -> None:
    with pytest.raises(ValidationFailed):
        normalize_email("a..b@shared-domain.example.org")
    assert normalize_email("a.b@shared-domain.example.org") == "a.b@shared-domain.example.org"
    long_local = "y" * 230
    with pytest.raises(ValidationFailed):
        normalize_email(f"{long_local}@shared-domain.example.org")  # over 254 in all
