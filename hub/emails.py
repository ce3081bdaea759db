"""Email addresses in, normalised addresses out, and the lowercased key used to match them.

Policy: email-validator decides (syntax only, no DNS: an import must not wait on the network),
with its defaults: no quoted local parts, no IP-literal domains, no display names, no
special-use domains (``.test``, ``localhost``), internationalised addresses allowed. Leading
and trailing spaces, tabs and no-break spaces are stripped first (spreadsheet cells and
copy-paste carry them); CR/LF anywhere is still an error, as is whitespace inside an address:
a line break in an address is header injection or a broken file, not padding.

Speed: a CSV import validates 100k addresses that share a few thousand domains, and the
domain half (IDNA/UTS #46) is most of email-validator's cost. Plain ASCII dot-atom addresses
therefore take a fast path that validates each distinct domain once (cached) and applies the
same local-part and length rules; anything else goes through email-validator whole.
"""

from __future__ import annotations

import re
from functools import lru_cache

from email_validator import EmailNotValidError, validate_email

from hub.errors import ValidationFailed

INVALID_EMAIL = "invalid_email"

# RFC 5322 dot-atom over atext: exactly what email-validator accepts unquoted in ASCII. Like
# email-validator (non-strict), a local part over RFC 5321's 64 characters is not refused.
_PLAIN_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_MAX_ADDRESS = 254  # RFC 3696 errata 1690, as email-validator enforces
_PROBE_LOCAL = "x"
_PADDING = " \t\u00a0"


def _validate(address: str) -> str:
    return validate_email(address, check_deliverability=False).normalized


@lru_cache(maxsize=65536)
def _domain(domain: str) -> str | None:
    """The normalised form of `domain`, or None when email-validator rejects it."""
    try:
        normalized = _validate(f"{_PROBE_LOCAL}@{domain}")
    except EmailNotValidError:
        return None
    return normalized.partition("@")[2]


def _fast(address: str) -> str | None:
    """The normalised address for plain ASCII addresses with a good domain; None otherwise."""
    if not address.isascii() or len(address) > _MAX_ADDRESS:
        return None
    local, at, domain = address.rpartition("@")
    if not at or _PLAIN_LOCAL.fullmatch(local) is None:
        return None
    normalized_domain = _domain(domain)
    if normalized_domain is None or not normalized_domain.isascii():
        return None  # let the slow path produce the error, or the IDN's length rules
    return f"{local}@{normalized_domain}"


def normalize_email(raw: str, *, field: str = "email") -> str:
    """The address as email-validator normalises it (domain lowercased / IDNA-decoded, local
    part's case kept), or ValidationFailed naming `field` with code ``invalid_email``."""
    address = raw.strip(_PADDING)
    fast = _fast(address)
    if fast is not None:
        return fast
    try:
        return _validate(address)
    except EmailNotValidError as exc:
        raise ValidationFailed.field(field, str(exc), INVALID_EMAIL) from None


def email_key(addr: str) -> str:
    """The lookup key for uniqueness and suppression: the normalised address lowercased.

    Local parts are case-sensitive in theory and case-insensitive at every real mailbox
    provider; a suppression must catch ``Bob@x.com`` when ``bob@x.com`` unsubscribed.
    Provider-specific folding (Gmail dots, ``+tags``) is deliberately not applied: it would
    merge distinct mailboxes at other providers.
    """
    return addr.lower()
