"""normalize_phone against every libphonenumber vector (phonenumbers 9.0.43), with the hub's
deliberate policy differences spelled out in one table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hub.errors import ValidationFailed
from hub.phones import normalize_phone, phone_region, phone_timezones

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "reference" / "vectors" / "phone_number_vectors.json").read_text()
)

# Inputs libphonenumber turns into a valid number that the hub refuses on purpose
# (see the policy in hub/phones.py): input → reason.
REJECTED_ON_PURPOSE: dict[str, str] = {
    "+1 415 555 2671 ext. 1234": "extension: a PBX extension cannot receive SMS",
    "+1 415 555 2671;ext=99": "extension: a PBX extension cannot receive SMS",
    "+1-800-FLOWERS": "letters: keypad mapping turns typos into someone else's number",
    "whatsapp:+14155552671": "channel prefix: a WhatsApp address is not an SMS number",
}


def _outcome(raw: str, region: str | None) -> str | None:
    try:
        return normalize_phone(raw, region)
    except ValidationFailed as exc:
        assert [(e.field, e.code) for e in exc.errors] == [("phone", "invalid_phone")]
        return None


def test_every_example_number_in_every_written_form() -> None:
    mismatches = []
    for ex in VECTORS["example_numbers"]:
        expected = ex["e164"] if ex["is_valid"] else None
        forms: list[tuple[str, str | None]] = [(ex["e164"], None)]
        if "national" in ex:
            forms += [(ex["national"], ex["region"]), (ex["international"], None)]
        for raw, region in forms:
            got = _outcome(raw, region)
            if got != expected:
                mismatches.append(f"{ex['region']} {ex['requested_type']} {raw!r} "
                                  f"(region {region}): expected {expected}, got {got}")
    assert len(VECTORS["example_numbers"]) == 1336
    assert not mismatches, "\n".join(mismatches)


def test_every_parse_case_matches_libphonenumber_except_the_policy_table() -> None:
    mismatches = []
    for case in VECTORS["parse_cases"]:
        library = case["e164"] if case["parsed"] and case["is_valid"] else None
        expected = None if case["input"] in REJECTED_ON_PURPOSE else library
        got = _outcome(case["input"], case["default_region"])
        if got != expected:
            mismatches.append(f"{case['input']!r} (region {case['default_region']}): "
                              f"expected {expected}, got {got}")
    assert len(VECTORS["parse_cases"]) == 62
    assert not mismatches, "\n".join(mismatches)


def test_policy_table_only_lists_numbers_libphonenumber_accepts() -> None:
    # A stale entry would hide a real disagreement behind a reason that no longer applies.
    cases = {c["input"]: c for c in VECTORS["parse_cases"]}
    for raw in REJECTED_ON_PURPOSE:
        assert cases[raw]["parsed"] and cases[raw]["is_valid"], raw


def test_accepted_parse_cases_report_the_recorded_region() -> None:
    mismatches = []
    for case in VECTORS["parse_cases"]:
        got = _outcome(case["input"], case["default_region"])
        if got is None:
            continue
        expected = None if case["region_code"] == "001" else case["region_code"]
        if phone_region(got) != expected:
            mismatches.append(f"{got}: expected {expected}, got {phone_region(got)}")
    assert not mismatches, "\n".join(mismatches)


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("+1 415 555 2671 ext. 1234", "extension"),
        ("+1-800-FLOWERS", "letters"),
        ("4l5 555 2671", "not a phone number"),
        ("whatsapp:+14155552671", "WhatsApp"),
        ("sms:+14155552671", "prefix"),
        ("+1 555 555 5555", "not a number in use"),
        ("12345", "too short"),
        ("   ", "empty"),
    ],
)
def test_rejections_say_why_and_name_the_field(raw: str, words: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        normalize_phone(raw, "US", field="address")
    exc = info.value
    assert exc.status == 422
    assert [(e.field, e.code) for e in exc.errors] == [("address", "invalid_phone")]
    assert words in exc.errors[0].message
    assert raw.strip() == "" or raw not in exc.detail  # the number itself is never echoed


def test_region_is_case_insensitive_and_none_demands_a_country_code() -> None:
    assert normalize_phone("(415) 555-2671", "us") == "+14155552671"
    assert normalize_phone("TEL:+1 415 555 2671", None) == "+14155552671"
    with pytest.raises(ValidationFailed):
        normalize_phone("(415) 555-2671", None)


def test_twilio_magic_test_numbers_are_accepted() -> None:
    for n in ("+15005550006", "+15005550001", "+15005550009"):
        assert normalize_phone(n) == n


def test_region_and_timezones_of_a_number() -> None:
    assert phone_region("+14155552671") == "US"
    assert phone_region("+12684641234") == "AG"
    assert phone_region("+80012345678") is None  # non-geographic
    assert phone_region("not a number") is None
    assert phone_timezones("+12125550123") == ["America/New_York"]
    assert phone_timezones("+14155550123") == ["America/Los_Angeles"]
    assert phone_timezones("+80012345678") == []  # libphonenumber says Etc/Unknown
    assert len(phone_timezones("+79123456789")) > 1
