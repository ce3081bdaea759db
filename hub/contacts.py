"""Contact fields checked and normalised before they reach the store: E.164 phones in the
sub-account's default region, validated emails, IANA time zones, clean tags."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from hub.emails import email_key, normalize_email
from hub.errors import FieldError, HubError, ValidationFailed
from hub.phones import normalize_phone
from hub.timezones import validate_timezone

MAX_TAGS = 100
MAX_TAG_LENGTH = 64
MAX_NAME_LENGTH = 200
#: A search that could only be (part of) a phone number: digits and what people write
#: between them.
_PHONE_LIKE = re.compile(r"\+?[\d\s().\-]*\d[\d\s().\-]*")


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
    field. `partial` (PATCH) keeps absent fields absent; `None` clears a field."""
    out: dict[str, Any] = {}
    errors: list[FieldError] = []

    def check(name: str, fn: Any) -> None:
        if name not in data:
            return
        try:
            fn(data[name])
        except HubError as exc:
            for e in exc.errors or [FieldError(name, exc.detail, exc.code)]:
                errors.append(FieldError(prefix + name, e.message, e.code))

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
        out["custom_fields"] = dict(v or {})

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
