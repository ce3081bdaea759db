"""Keyset pagination with opaque cursors over (created_at DESC, id DESC).

Newest first on a unique key: rows inserted while a client pages land before its cursor, so
paging never repeats or skips a row that existed when it started.

Conversations list by latest activity instead: (last_message_at DESC, threads without a
message last, then created_at DESC, id DESC); their cursors also carry last_message_at. That
key moves, so a thread that moves while a client pages may be shown twice or skipped.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from hub.errors import FieldError, ValidationFailed


@dataclass(frozen=True, slots=True)
class Cursor:
    created_at: datetime
    id: UUID
    by_activity: bool = False  # a cursor of a list by latest activity
    last_message_at: datetime | None = None  # its row's, when by_activity


#: Conversations by latest activity, newest first (`{p}`: the table's alias and a dot, or
#: nothing); '-infinity' puts threads without a message last. Migration 0013 indexes it.
ACTIVITY_KEY = "coalesce({p}last_message_at, '-infinity'::timestamptz)"
BY_ACTIVITY = f"{ACTIVITY_KEY} DESC, {{p}}created_at DESC, {{p}}id DESC"


def encode_cursor(created_at: datetime, id_: UUID, *activity: datetime | None) -> str:
    raw = json.dumps([created_at.isoformat(), str(id_),
                      *(None if a is None else a.isoformat() for a in activity)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _malformed() -> ValidationFailed:
    return ValidationFailed(
        "the cursor is not one this API returned",
        errors=[FieldError("cursor", "malformed cursor; pass next_cursor unchanged",
                           "invalid_cursor")],
    )


def decode_cursor(cursor: str | None) -> Cursor | None:
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, id_, *activity = json.loads(raw)
        if len(activity) > 1:
            raise ValueError("too many keys")
        last = activity[0] if activity else None
        return Cursor(datetime.fromisoformat(created_at), UUID(id_), bool(activity),
                      None if last is None else datetime.fromisoformat(last))
    except (ValueError, TypeError) as exc:
        raise _malformed() from exc


@dataclass(frozen=True, slots=True)
class Page:
    data: list[dict[str, Any]]
    has_more: bool
    next_cursor: str | None


def keyset_clause(cursor: Cursor | None, next_param: int, alias: str = "", *,
                  by_activity: bool = False) -> tuple[str, list[Any]]:
    """SQL condition (and its args) selecting rows after `cursor` in newest-first order
    (by latest activity with `by_activity`; a cursor of the other order is refused)."""
    if cursor is None:
        return "TRUE", []
    if cursor.by_activity != by_activity:
        raise _malformed()
    p = f"{alias}." if alias else ""
    n = next_param
    if by_activity:
        return (f"({ACTIVITY_KEY.format(p=p)}, {p}created_at, {p}id) < "
                f"(coalesce(${n}::timestamptz, '-infinity'), ${n + 1}, ${n + 2})",
                [cursor.last_message_at, cursor.created_at, cursor.id])
    return f"({p}created_at, {p}id) < (${n}, ${n + 1})", [cursor.created_at, cursor.id]


def make_page(rows: list[dict[str, Any]], limit: int, *, by_activity: bool = False) -> Page:
    """`rows` was fetched with LIMIT limit + 1; the extra row only signals more."""
    has_more = len(rows) > limit
    rows = rows[:limit]
    if not (has_more and rows):
        return Page(rows, has_more, None)
    last = rows[-1]
    activity = [last["last_message_at"]] if by_activity else []
    return Page(rows, has_more, encode_cursor(last["created_at"], last["id"], *activity))
