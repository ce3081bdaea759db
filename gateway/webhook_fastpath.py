"""The provider webhooks' fast path: a pure-ASGI middleware that serves the four provider
routes itself, before FastAPI's routing, request objects and dependency solving (most of
a callback's CPU when they ran: see BENCHMARKS.md, "Webhook ingest").

It reads the body (within `BodyLimit`, which wraps it), parses the form with the stdlib,
hands it to the inbox (hub/inbox.py: signature check, group-committed insert) and answers
once the insert has committed. Errors are the same RFC 9457 problems as everywhere
(`gateway.errors.problem_for`), and it labels the request with its route for the `Metrics`
middleware, so dashboards and alerts see the same series. Every other request, and any
other method on these paths (405), goes on to FastAPI. The routes stay declared in
gateway/routes/webhooks.py, which documents them in the OpenAPI schema and serves them
through `respond` (the same code) when the app is built without this middleware.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from channels.sendgrid import SIGNATURE_HEADER, TIMESTAMP_HEADER
from channels.twilio_sms import InvalidCallback
from gateway.errors import problem_for
from hub import inbox

PREFIX = "/v1/providers"
#: path → what the inbox calls it
KINDS = {
    f"{PREFIX}/twilio/sms/inbound": "sms_inbound",
    f"{PREFIX}/twilio/sms/status": "sms_status",
    f"{PREFIX}/twilio/voice/status": "voice_status",
    f"{PREFIX}/sendgrid/events": "sendgrid_events",
}
EMPTY_TWIML = b'<?xml version="1.0" encoding="UTF-8"?><Response/>'
TWILIO_SIGNATURE = b"x-twilio-signature"
_SENDGRID_SIGNATURE = SIGNATURE_HEADER.lower().encode("latin-1")
_SENDGRID_TIMESTAMP = TIMESTAMP_HEADER.lower().encode("latin-1")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def handle(box: inbox.Inbox, kind: str, scope: Scope, body: bytes) -> Response:
    """Verify and store one provider callback; the response once it is committed. Raises
    what `problem_for` maps: Rejected (403, nothing written), 400 for a body that is not a
    UTF-8 form or a callback we cannot read, 422 for a SendGrid body that is not JSON."""
    query = scope["query_string"].decode("latin-1")
    if kind == "sendgrid_events":
        await box.receive_sendgrid(dict(parse_qsl(query)).get("account"), body,
                                   _header(scope, _SENDGRID_SIGNATURE),
                                   _header(scope, _SENDGRID_TIMESTAMP))
        return Response(status_code=204)
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError:
        raise HTTPException(400, "the form body is not UTF-8") from None
    # Twilio signs the URL it was configured with, so check against our public URL, never
    # the Host header a proxy hands us; the query string is kept byte for byte.
    url = box.hub.settings.base_url + scope["path"] + (f"?{query}" if query else "")
    try:
        await box.receive_twilio(kind, url, pairs, _header(scope, TWILIO_SIGNATURE))
    except InvalidCallback as exc:
        raise HTTPException(400, str(exc)) from None
    if kind == "sms_inbound":
        return Response(EMPTY_TWIML, media_type="text/xml")
    return Response(status_code=204)


async def respond(request: Request, kind: str) -> Response:
    """`handle` for a FastAPI route (errors go to the app's exception handlers)."""
    return await handle(request.app.state.inbox, kind, request.scope, await request.body())


class ProviderWebhooks:
    """Serves POSTs to the provider webhook paths; passes everything else to `app`.
    `routes` (path → the declared route) gives the Metrics middleware its route label."""

    def __init__(self, app: ASGIApp, routes: dict[str, Any]) -> None:
        self.app, self.routes = app, routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = KINDS.get(scope["path"]) if scope["type"] == "http" else None
        if kind is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        scope["route"] = self.routes[scope["path"]]
        try:
            body = await _body(receive)
            response = await handle(scope["app"].state.inbox, kind, scope, body)
        except ClientDisconnect:
            return
        except Exception as exc:
            response = problem_for(exc, scope["path"])
        await response(scope, receive, send)


async def _body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)
