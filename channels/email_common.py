"""What the two email adapters (SendGrid and SMTP) share: the RFC 8058 one-click
List-Unsubscribe headers, our Message-ID, per-recipient substitutions and the checks that
keep an address or a header value on one line.

Bulk email is a message with an `unsubscribe_url`: only those get List-Unsubscribe headers,
so transactional mail never offers an unsubscribe link it cannot honour.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import quote

ONE_CLICK = "List-Unsubscribe=One-Click"  # RFC 8058 §3.1, the only value allowed

# RFC 5322 dot-atom-text: what may stand on each side of the "@" in a Message-ID.
_MSG_ID_PART = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+$")
_FORBIDDEN = ("\r", "\n", "\0")


class HeaderValueError(ValueError):
    """A value would break a header or an address out of its line: the message is invalid."""


def check_header_value(name: str, value: str) -> str:
    if any(c in value for c in _FORBIDDEN):
        raise HeaderValueError(f"{name} contains a line break")
    return value


def check_address(name: str, address: str) -> str:
    """A bare addr-spec: one "@", no spaces, brackets or line breaks. Deliverability is
    the provider's call; this only keeps the request and the headers well formed."""
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or any(c in address for c in " <>,;\t\r\n\0"):
        raise HeaderValueError(f"{name} is not an email address")
    return address


def from_domain(address: str) -> str:
    return check_address("from", address).rpartition("@")[2].lower()


def message_id_header(message_id: str, from_address: str) -> str:
    """`<{message_id}@{from domain}>`: unique because our id is, and it names us."""
    domain = from_domain(from_address)
    if not _MSG_ID_PART.match(message_id) or not _MSG_ID_PART.match(domain):
        raise HeaderValueError("message id cannot be used in a Message-ID header")
    return f"<{message_id}@{domain}>"


def list_unsubscribe_headers(
    unsubscribe_url: str | None, *, message_id: str, mailto: str | None = None
) -> dict[str, str]:
    """`List-Unsubscribe: <https://…>, <mailto:…>` and, for an HTTPS target,
    `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058 requires HTTPS for
    one-click). The mailto, when configured, carries our message id in its subject so a
    mailed unsubscribe can be traced back to the recipient."""
    if not unsubscribe_url:
        return {}
    if not unsubscribe_url.lower().startswith(("https://", "http://")) or any(
        c in unsubscribe_url for c in " <>,\t\r\n\0"
    ):
        raise HeaderValueError("unsubscribe_url is not a usable http(s) URL")
    targets = [f"<{unsubscribe_url}>"]
    if mailto:
        check_address("unsubscribe mailto", mailto)
        targets.append(f"<mailto:{mailto}?subject={quote('unsubscribe ' + message_id)}>")
    headers = {"List-Unsubscribe": ", ".join(targets)}
    if unsubscribe_url.lower().startswith("https://"):
        headers["List-Unsubscribe-Post"] = ONE_CLICK
    return headers


def apply_substitutions(text: str, substitutions: Mapping[str, str]) -> str:
    """Replace each key with its value in one pass, longest key first, the way SendGrid
    applies a personalization's `substitutions` (so both adapters render the same mail)."""
    if not text or not substitutions:
        return text
    keys = sorted((k for k in substitutions if k), key=len, reverse=True)
    if not keys:
        return text
    pattern = re.compile("|".join(re.escape(k) for k in keys))
    return pattern.sub(lambda m: substitutions[m.group(0)], text)
