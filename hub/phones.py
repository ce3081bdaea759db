"""Phone numbers in, E.164 out: the one place user-typed numbers become SMS/voice addresses.

Policy (what "a phone number" means for an SMS/voice hub; libphonenumber does the parsing):

- Whatever libphonenumber accepts as formatting is accepted: national formats in the
  sub-account's default region, international IDD prefixes (``001 415…`` from GB), spaces,
  dots, dashes, brackets, a doubled ``++``, invisible characters, fullwidth and Arabic-Indic
  digits, and the RFC 3966 ``tel:`` prefix.
- The number must be *valid* (``phonenumbers.is_valid_number``), not merely possible: it must
  fall in a range its country has allocated. That rejects typos, the UK drama range
  (+44 7700 900xxx) and NANP 555 numbers before a campaign pays to send to them. Twilio's
  magic test numbers (+1 500 555 00xx) need no special case: libphonenumber classes them as
  valid NANP personal numbers.
- Deliberately stricter than libphonenumber:
  * an extension (``ext. 1234``, ``x 12``, ``;ext=99``) is rejected: a PBX extension cannot
    receive an SMS, and dropping it silently would text the switchboard;
  * letters are rejected (``1-800-FLOWERS``, ``4l5 555 2671``): libphonenumber maps letters
    to keypad digits, which turns a typo into someone else's number;
  * a ``whatsapp:`` or any other non-``tel:`` prefix is rejected: stripping it would turn a
    WhatsApp address into an SMS number.
- Every number type libphonenumber knows is accepted (mobile, fixed line, toll-free, VoIP…):
  numbers also serve voice, and US numbers do not say whether they are mobile.
"""

from __future__ import annotations

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat, ValidationResult
from phonenumbers import timezone as _timezone

from hub.errors import ValidationFailed

INVALID_PHONE = "invalid_phone"

_E164 = PhoneNumberFormat.E164
_UNKNOWN_ZONE = "Etc/Unknown"
_NON_GEOGRAPHIC = ("001", "ZZ")

_PARSE_ERRORS: dict[int, str] = {
    NumberParseException.INVALID_COUNTRY_CODE: (
        "no known country code; write it as +<country code> <number>"
    ),
    NumberParseException.NOT_A_NUMBER: "not a phone number",
    NumberParseException.TOO_SHORT_AFTER_IDD: "too short after the international prefix",
    NumberParseException.TOO_SHORT_NSN: "too short to be a phone number",
    NumberParseException.TOO_LONG: "too long to be a phone number",
}

_NOT_VALID: dict[int, str] = {
    ValidationResult.INVALID_COUNTRY_CODE: "no known country code",
    ValidationResult.TOO_SHORT: "too short for its country",
    ValidationResult.TOO_LONG: "too long for its country",
    ValidationResult.INVALID_LENGTH: "the wrong length for its country",
}


def _invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed.field(field, message, INVALID_PHONE)


def _strip_scheme(text: str, field: str) -> str:
    # Only called when the text contains ':', so the common case pays nothing.
    scheme, _, rest = text.partition(":")
    scheme = scheme.strip().lower()
    if scheme == "tel":
        return rest
    if scheme == "whatsapp":
        raise _invalid(field, "a WhatsApp address, not an SMS/voice number")
    raise _invalid(field, "not a phone number (unexpected prefix before ':')")


def normalize_phone(
    raw: str, default_region: str | None = "US", *, field: str = "phone"
) -> str:
    """`raw` as E.164 (``+14155552671``), or ValidationFailed naming `field`.

    `default_region` (ISO 3166 alpha-2) applies to numbers written without a country code;
    None demands an international number.
    """
    text = raw.strip()
    if not text:
        raise _invalid(field, "must not be empty")
    if ":" in text:
        text = _strip_scheme(text, field)
    region = default_region.upper() if default_region else None
    try:
        number = phonenumbers.parse(text, region)
    except NumberParseException as exc:
        raise _invalid(field, _PARSE_ERRORS.get(exc.error_type, "not a phone number")) from None
    if number.extension:
        raise _invalid(field, "extensions cannot receive SMS; remove the extension")
    if any(ch.isalpha() for ch in text):
        raise _invalid(field, "letters are not allowed; write the number in digits")
    if not phonenumbers.is_valid_number(number):
        reason = phonenumbers.is_possible_number_with_reason(number)
        raise _invalid(field, _NOT_VALID.get(reason, "not a number in use in its country"))
    return phonenumbers.format_number(number, _E164)


def normalize_short_code(raw: str, *, field: str = "address") -> str:
    """A short code as its digits (``"72345"``): not E.164, it has no country code. Carriers
    issue 3 to 8 digits (5-6 in the US and Canada); Twilio sends from and to it as digits."""
    text = raw.strip()
    if not (text.isascii() and text.isdigit() and 3 <= len(text) <= 8):
        raise _invalid(field, "a short code is 3 to 8 digits, without a + or country code")
    return text


def _parse_e164(e164: str) -> phonenumbers.PhoneNumber | None:
    try:
        return phonenumbers.parse(e164, None)
    except NumberParseException:
        return None


def phone_region(e164: str) -> str | None:
    """The ISO 3166 region of an E.164 number; None for non-geographic (+800…) or unknown."""
    number = _parse_e164(e164)
    if number is None:
        return None
    region = phonenumbers.region_code_for_number(number)
    return None if region is None or region in _NON_GEOGRAPHIC else region


def phone_timezones(e164: str) -> list[str]:
    """IANA zones libphonenumber associates with the number's prefix (empty when unknown).

    NANP numbers give one zone per area code (+1 212 → America/New_York); most other
    countries give every zone of the country (+7 9… → 16 zones).
    """
    number = _parse_e164(e164)
    if number is None:
        return []
    return [z for z in _timezone.time_zones_for_number(number) if z != _UNKNOWN_ZONE]
