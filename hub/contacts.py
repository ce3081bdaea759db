"""Contact fields checked and normalised before they reach the store: E.164 phones in the
sub-account's default region, validated emails, IANA time zones, clean tags, and custom
field names a template can use (`custom_key`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from hub.emails import email_key, normalize_email
from hub.errors import FieldError, HubError, ValidationFailed
from hub.json_values import find_leaf, not_finite_message, unstorable
from hub.phones import normalize_phone
from hub.timezones import validate_timezone

MAX_TAGS = 100
MAX_TAG_LENGTH = 64
MAX_NAME_LENGTH = 200
#: A search that could only be (part of) a phone number: digits and what people write
#: between them.
_PHONE_LIKE = re.compile(r"\+?[\d\s().\-]*\d[\d\s().\-]*")
_WORD = re.compile(r"[^\W_]+")


def custom_key(name: str) -> str:
    """The key a custom field is stored under: its name's words (letters and digits) in
    lower case, joined by `_`, so that `Favourite Colour` and `Member-ID` become
    `favourite_colour` and `member_id`, which `{{custom.favourite_colour}}` can name.
    Every write path applies it; merge fields apply it to what they name and to keys
    stored before it existed."""
    return "_".join(_WORD.findall(name.lower()))


def _unstorable(value: Any, path: str) -> tuple[str, str, str] | None:
    """(path, message, code) of the first value in `value` that PostgreSQL's JSON cannot
    hold (hub.json_values.unstorable). The gateway refuses them in every request body;
    this keeps them out of contacts written by other callers."""
    found = find_leaf(value, path, unstorable)
    if found is None:
        return None
    at, leaf = found
    if isinstance(leaf, str):
        return at, "holds a NUL character (\\u0000); remove it", "nul_character"
    return at, not_finite_message(leaf), "invalid_number"


def phone_search(q: str, default_region: str) -> str:
    """What a contact search for `q` looks for in the E.164 phones: a whole number written
    any way (``(212) 555-0199``) as E.164; part of one as its digits (after `+` if it
    starts with one); anything else as is."""
    q = q.strip()
    if not _PHONE_LIKE.fullmatch(q):
        return q
    try:
        return normalize_phone(q, default_region)
    except ValidationFailed:
        return ("+" if q.startswith("+") else "") + re.sub(r"\D", "", q)


def clean_contact(data: Mapping[str, Any], default_region: str, *, partial: bool = False,
                  prefix: str = "") -> dict[str, Any]:
    """Normalise contact fields for the store, or raise one ValidationFailed naming every bad
    field. `partial` (PATCH) keeps absent fields absent; `None` clears a field (the
    gateway lets it through only for phone, email and timezone: see ContactPatch)."""
    out: dict[str, Any] = {}
    errors: list[FieldError] = []

    def check(name: str, fn: Any) -> None:
        if name not in data:
            return
        try:
            if name != "custom_fields" and (bad := _unstorable(data[name], name)):
                raise ValidationFailed.field(*bad)
            fn(data[name])
        except HubError as exc:
            for e in exc.errors or [FieldError(name, exc.detail, exc.code)]:
                # custom_fields errors name the key: custom_fields.<key>
                field = e.field if e.field.startswith(name + ".") else name
                errors.append(FieldError(prefix + field, e.message, e.code))

    def phone(v: str | None) -> None:
        out["phone"] = normalize_phone(v, default_region, field="phone") if v else None

    def email(v: str | None) -> None:
        if v:
            out["email"] = normalize_email(v, field="email")
            out["email_key"] = email_key(out["email"])
        else:
            out["email"] = out["email_key"] = None

    def name(field: str) -> Any:
        def apply(v: str | None) -> None:
            v = (v or "").strip()
            if len(v) > MAX_NAME_LENGTH:
                raise ValidationFailed.field(field, f"at most {MAX_NAME_LENGTH} characters",
                                             "too_long")
            out[field] = v
        return apply

    def timezone(v: str | None) -> None:
        out["timezone"] = validate_timezone(v, field="timezone") if v else None

    def tags(v: list[str] | None) -> None:
        seen: dict[str, None] = {}
        for t in v or []:
            t = t.strip()
            if not t:
                continue
            if len(t) > MAX_TAG_LENGTH:
                raise ValidationFailed.field("tags", f"a tag is at most {MAX_TAG_LENGTH} "
                                             "characters", "too_long")
            seen[t] = None
        if len(seen) > MAX_TAGS:
            raise ValidationFailed.field("tags", f"at most {MAX_TAGS} tags", "too_many")
        out["tags"] = list(seen)

    def custom(v: Mapping[str, Any] | None) -> None:
        fields: dict[str, Any] = {}
        named: dict[str, str] = {}  # key -> the name it was written as
        bad: list[FieldError] = []
        for name, value in (v or {}).items():
            at = f"custom_fields.{name}"
            key = custom_key(name)
            if problem := _unstorable(value, at):
                bad.append(FieldError(*problem))
            elif not key:
                bad.append(FieldError(at, "a custom field's name needs a letter or a digit",
                                      "invalid_key"))
            elif key in named:
                bad.append(FieldError(at, f"`{named[key]}` and `{name}` are both stored as "
                                      f"`{key}`; keep one of them", "duplicate_key"))
            else:
                named[key], fields[key] = name, value
        if bad:
            raise ValidationFailed("; ".join(f"{e.field}: {e.message}" for e in bad),
                                   errors=bad)
        out["custom_fields"] = fields

    check("phone", phone)
    check("email", email)
    check("first_name", name("first_name"))
    check("last_name", name("last_name"))
    check("timezone", timezone)
    check("tags", tags)
    check("custom_fields", custom)
    if not partial and not out.get("phone") and not out.get("email"):
        errors.append(FieldError(prefix + "phone", "a contact needs a phone or an email",
                                 "phone_or_email_required"))
    if errors:
        raise ValidationFailed(
            "; ".join(f"{e.field}: {e.message}" for e in errors), errors=errors
        )
    return out
