"""Keyset pagination with opaque cursors over (created_at DESC, id DESC).

Newest first on a unique key: rows inserted while a client pages land before its cursor, so
paging never repeats or skips a row that existed when it started.
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


def encode_cursor(created_at: datetime, id_: UUID) -> str:
    raw = json.dumps([created_at.isoformat(), str(id_)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> Cursor | None:
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, id_ = json.loads(raw)
        return Cursor(datetime.fromisoformat(created_at), UUID(id_))
    except (ValueError, TypeError) as exc:
        raise ValidationFailed(
            "the cursor is not one this API returned",
            errors=[FieldError("cursor", "malformed cursor; pass next_cursor unchanged",
                               "invalid_cursor")],
        ) from exc


@dataclass(frozen=True, slots=True)
class Page:
    data: list[dict[str, Any]]
    has_more: bool
    next_cursor: str | None


def keyset_clause(cursor: Cursor | None, next_param: int, alias: str = "") -> tuple[str, list[Any]]:
    """SQL condition (and its args) selecting rows after `cursor` in newest-first order."""
    if cursor is None:
        return "TRUE", []
    p = f"{alias}." if alias else ""
    return (
        f"({p}created_at, {p}id) < (${next_param}, ${next_param + 1})",
        [cursor.created_at, cursor.id],
    )


def make_page(rows: list[dict[str, Any]], limit: int) -> Page:
    """`rows` was fetched with LIMIT limit + 1; the extra row only signals more."""
    has_more = len(rows) > limit
    rows = rows[:limit]
    nxt = encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if has_more and rows else None
    return Page(rows, has_more, nxt)
