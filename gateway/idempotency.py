"""`Idempotency-Key` for POSTs: the key, the request fingerprint and the response are stored
in the same transaction as the effect, so a replay after any crash sees either nothing (and
runs again) or the committed response. Same key with another body: 422.

The record is one INSERT after the work. A request whose key is already taken ran its work
for nothing: it rolls it back and answers from the record. A second request racing the
first blocks on the key's unique index until the first commits (then replays) or rolls back
(then its own effect is the one).

A key belongs to the account the request acts on, not to the API key that makes it (as
Stripe scopes keys per account): a retry made with another key of the account, after a
rotation say, replays instead of sending twice."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

from fastapi.responses import JSONResponse
from pydantic import BaseModel

from hub.context import Hub
from hub.errors import Conflict, FieldError, HubError, ValidationFailed
from hub.store import idempotency as store
from hub.tenancy import Principal

Work = Callable[[], Awaitable[tuple[int, BaseModel]]]

_SUB_ACCOUNT_PATH = re.compile(r"/v1/sub-accounts/([^/]+)")


def scope(principal: Principal, path: str) -> str:
    """The account a request acts on: the sub-account its path names (the route has checked
    that the caller may act on it), else the caller's own (the agency, for an agency key)."""
    sub_account = principal.sub_account_id
    if named := _SUB_ACCOUNT_PATH.search(path):
        with contextlib.suppress(ValueError):  # its route has refused a malformed id
            sub_account = UUID(named[1])
    return f"sub_account:{sub_account}" if sub_account is not None else \
        f"agency:{principal.agency_id}"


def fingerprint(method: str, path: str, body: BaseModel | bytes | None) -> bytes:
    if isinstance(body, BaseModel):
        payload = json.dumps(body.model_dump(mode="json", exclude_unset=True),
                             sort_keys=True).encode()
    else:
        payload = body or b""
    return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + payload).digest()


async def run(hub: Hub, principal: Principal, key: str | None, method: str, path: str,
              body: BaseModel | bytes | None, work: Work,
              shown_once: str | None = None) -> JSONResponse:
    """`shown_once`: a field of the response holding a secret, which is answered once and
    never stored; a replay then says so (409) instead of answering without it."""
    if key is None:
        status, model = await work()
        return JSONResponse(model.model_dump(mode="json"), status_code=status)
    if not key.strip():
        raise ValidationFailed.field("Idempotency-Key", "must not be blank", "invalid")
    account = scope(principal, path)
    digest = fingerprint(method, path, body)
    try:
        async with hub.transaction() as tx:
            status, model = await work()  # joins this transaction
            content: Any = model.model_dump(mode="json")
            kept = {**content, shown_once: None} if shown_once else content
            if await store.save(tx.conn, account, key, digest, status, kept):
                return JSONResponse(content, status_code=status)
            raise _Taken(await store.stored(tx.conn, account, key))  # undoes this work
    except _Taken as taken:
        first = taken.first
    except HubError:
        # The work may have failed on the first request's effect (the same unique contact,
        # say), which commits with its key: then that request's answer is this one's too.
        first = await store.stored(hub.pool, account, key)
        if first is None:
            raise
    assert first is not None
    if bytes(first["request_hash"]) != digest:
        raise ValidationFailed(
            "this Idempotency-Key was already used with a different request; use a new key "
            "for a new request",
            code="idempotency_key_reused",
            errors=[FieldError("Idempotency-Key", "already used with a different request",
                               "idempotency_key_reused")],
        ) from None
    if shown_once:
        raise Conflict(
            f"this Idempotency-Key already created {first['response'].get('id')}; its "
            f"`{shown_once}` was shown once, in that answer, and is not kept. If the answer "
            "was lost, revoke it and create another",
            code="secret_shown_once",
        )
    return JSONResponse(first["response"], status_code=first["status_code"],
                        headers={"Idempotent-Replayed": "true"})


class _Taken(Exception):
    """Another request committed this key first: roll this one's work back, answer as it."""

    def __init__(self, first: dict[str, Any] | None) -> None:
        self.first = first
