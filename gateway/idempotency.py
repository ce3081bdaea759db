"""`Idempotency-Key` for POSTs: the key, the request fingerprint and the response are stored
in the same transaction as the effect, so a replay after any crash sees either nothing (and
runs again) or the committed response. Same key with another body: 422."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel

from hub.context import Hub
from hub.errors import FieldError, ValidationFailed
from hub.store import idempotency as store
from hub.tenancy import Principal

Work = Callable[[], Awaitable[tuple[int, BaseModel]]]


def fingerprint(method: str, path: str, body: BaseModel | bytes | None) -> bytes:
    if isinstance(body, BaseModel):
        payload = json.dumps(body.model_dump(mode="json", exclude_unset=True),
                             sort_keys=True).encode()
    else:
        payload = body or b""
    return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + payload).digest()


async def run(hub: Hub, principal: Principal, key: str | None, method: str, path: str,
              body: BaseModel | bytes | None, work: Work) -> JSONResponse:
    if key is None:
        status, model = await work()
        return JSONResponse(model.model_dump(mode="json"), status_code=status)
    if not key.strip():
        raise ValidationFailed.field("Idempotency-Key", "must not be blank", "invalid")
    scope = str(principal.key_id)
    digest = fingerprint(method, path, body)
    async with hub.transaction() as tx:
        if await store.claim(tx.conn, scope, key, digest):
            status, model = await work()  # joins this transaction
            content: Any = model.model_dump(mode="json")
            await store.save(tx.conn, scope, key, status, content)
            return JSONResponse(content, status_code=status)
        first = await store.stored(tx.conn, scope, key)
    assert first is not None
    if bytes(first["request_hash"]) != digest:
        raise ValidationFailed(
            "this Idempotency-Key was already used with a different request; use a new key "
            "for a new request",
            code="idempotency_key_reused",
            errors=[FieldError("Idempotency-Key", "already used with a different request",
                               "idempotency_key_reused")],
        ) from None
    return JSONResponse(first["response"], status_code=first["status_code"],
                        headers={"Idempotent-Replayed": "true"})
