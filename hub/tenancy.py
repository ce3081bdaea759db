"""Who is calling, and which sub-accounts they may touch.

Agency keys act on every sub-account of their agency; sub-account keys on their own only.
A sub-account outside the caller's reach is reported as not found, never as forbidden, so
that ids of other tenants leak nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

from hub.crypto import API_KEY_PREFIX, hash_api_key
from hub.errors import Forbidden, NotFound, Unauthorized
from hub.store import tenants

Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: UUID
    agency_id: UUID
    sub_account_id: UUID | None  # None: an agency key

    @property
    def is_agency(self) -> bool:
        return self.sub_account_id is None

    @property
    def actor(self) -> str:
        """How this caller is named in audit columns (never the key itself)."""
        return f"api_key:{self.key_id}"

    def require_agency(self) -> None:
        if not self.is_agency:
            raise Forbidden("this action needs an agency API key", code="agency_key_required")


async def authenticate(pool: asyncpg.Pool, authorization: str | None,
                       sub_account_id: UUID | None = None) -> tuple[Principal, Row | None]:
    """The caller, and the row of `sub_account_id` when one is given (the route's), read
    with the key in one round trip for `sub_account_for` to check."""
    if not authorization:
        raise Unauthorized("send `Authorization: Bearer <api key>`", code="missing_api_key")
    scheme, _, key = authorization.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key.startswith(API_KEY_PREFIX):
        raise Unauthorized("send `Authorization: Bearer <api key>`", code="invalid_api_key")
    row = await tenants.find_api_key(pool, hash_api_key(key), sub_account_id)
    if row is None:
        raise Unauthorized("this API key is unknown or revoked", code="invalid_api_key")
    return Principal(row["id"], row["agency_id"], row["sub_account_id"]), row["sub_account"]


async def sub_account_for(pool: asyncpg.Pool, principal: Principal, sub_account_id: UUID,
                          read: Row | None = None) -> Row:
    """The sub-account, if `principal` may act on it; otherwise NotFound. `read`: its row
    if already read (`authenticate`), else it is read here."""
    if principal.sub_account_id is not None and principal.sub_account_id != sub_account_id:
        raise NotFound("no such sub-account", code="sub_account_not_found")
    row = read if read is not None and read["id"] == sub_account_id else \
        await tenants.get_sub_account(pool, sub_account_id)
    if row is None or row["agency_id"] != principal.agency_id:
        raise NotFound("no such sub-account", code="sub_account_not_found")
    return row
