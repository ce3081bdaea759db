"""Provider webhooks: Twilio inbound SMS/MMS and message/call status callbacks, SendGrid's
signed Event Webhook. No API key: the provider's signature is the authentication.

Each request verifies the signature on the raw body, stores the event in the durable inbox
(hub/inbox.py: concurrent requests share one INSERT) and answers 2xx once it is committed.
The requests are served by gateway/webhook_fastpath.py ahead of FastAPI's routing; the
routes here document them in the OpenAPI schema and run the same code without it.
The inbox's applier applies events in batches, and also whatever a crash or restart left
pending, and retries orphans. `hub serve` runs it in a process of its own (hub/applier.py);
an app built with `apply_webhooks=True` (the default, as the tests build it) runs it in a
background task. Either way only one applier leads at a time.

One more Twilio route is served by FastAPI itself: `POST /twilio/voice/twiml`, the TwiML
of a call with a voicemail variant, which Twilio requests once answering-machine detection
has decided. It stores nothing (the call's progress comes through its status callbacks).

SendGrid: configure the Event Webhook URL as
`{public_url}/v1/providers/sendgrid/events?account=<provider account id>` and store the
webhook's verification key (base64 DER, as SendGrid shows it) in the provider account's
`config.event_webhook_public_key`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, FastAPI, HTTPException, Request, Response

from channels.base import VoiceScript
from channels.twilio_voice import build_twiml
from gateway.webhook_fastpath import PREFIX, TWILIO_SIGNATURE, respond
from hub import applier, inbox, twilio_signature
from hub.store import calls
from hub.webhook_actions import as_uuid


async def hand_off(app: FastAPI, messages: list[dict[str, Any]]) -> None:
    """Give just-queued messages (compliance replies) to their sender shards; the shards
    claim them from PostgreSQL anyway, so this only saves latency."""
    actors = getattr(app.state, "actors", None)
    if actors is None:
        return
    groups: dict[tuple[str, int], list[str]] = defaultdict(list)
    for m in messages:
        groups[(m["channel"], m["slot"])].append(str(m["id"]))
    for (channel, slot), ids in groups.items():
        await actors.submit(channel, slot, ids)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    async def hand_to_app(messages: list[dict[str, Any]]) -> None:
        await hand_off(app, messages)

    app.state.inbox = inbox.Inbox(app.state.hub)
    if app.state.apply_webhooks:
        app.state.jobs.spawn(applier.lead(app.state.hub, hand_to_app))  # cancelled with jobs
    yield


router = APIRouter(prefix=PREFIX, tags=["provider webhooks"], lifespan=_lifespan)


@router.post("/twilio/sms/inbound", response_class=Response, status_code=200,
             responses={200: {"content": {"text/xml": {}}}})
async def twilio_sms_inbound(request: Request) -> Response:
    """An incoming SMS/MMS (form post signed with X-Twilio-Signature). Answers empty TwiML:
    compliance replies are sent through the API, not as TwiML."""
    return await respond(request, "sms_inbound")


@router.post("/twilio/sms/status", status_code=204, response_class=Response)
async def twilio_sms_status(request: Request) -> Response:
    """A message status callback (our `?message_id=` names the message)."""
    return await respond(request, "sms_status")


@router.post("/twilio/voice/status", status_code=204, response_class=Response)
async def twilio_voice_status(request: Request) -> Response:
    """A call progress callback."""
    return await respond(request, "voice_status")


@router.post("/twilio/voice/twiml", response_class=Response, status_code=200,
             responses={200: {"content": {"text/xml": {}}}})
async def twilio_voice_twiml(request: Request, message_id: str | None = None) -> Response:
    """What a call with a voicemail variant plays (form post signed with
    X-Twilio-Signature by the account that placed the call, once answering-machine
    detection has decided): `voicemail_say` / `voicemail_play_url` when `AnsweredBy` is
    `machine_end_*`, a hang-up for `fax`, else `say` / `play_url`. 403 for an unknown
    message or a signature that is not its account's."""
    try:
        pairs = parse_qsl((await request.body()).decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError:
        raise HTTPException(400, "the form body is not UTF-8") from None
    box: inbox.Inbox = request.app.state.inbox
    query = request.scope["query_string"].decode("latin-1")
    url = box.hub.settings.base_url + request.scope["path"] + (f"?{query}" if query else "")
    signature = request.headers.get(TWILIO_SIGNATURE.decode())
    # One answer for an unknown call and a wrong signature: message ids are not confirmed.
    refused = inbox.Rejected("unknown call, or X-Twilio-Signature is not its account's")
    mid = as_uuid(message_id)
    call = await calls.call_script(box.hub.pool, mid) if mid else None
    if call is None or call["channel"] != "voice" or call["provider"] != "twilio":
        raise refused
    fresh = False
    while True:  # cached tokens may be stale (rotated): read the account again, once
        account, fresh = await box.accounts.by_id(call["provider_account_id"], fresh=fresh)
        if account and twilio_signature.valid(box.accounts.token(account), url, pairs,
                                              signature):
            break
        if fresh:
            raise refused
        fresh = True
    script = VoiceScript(**call["voice"]) if call["voice"] else VoiceScript(say=call["body"])
    twiml = build_twiml(script, dict(pairs).get("AnsweredBy") or "human")
    return Response(str(twiml), media_type="text/xml")


@router.post("/sendgrid/events", status_code=204, response_class=Response)
async def sendgrid_events(request: Request, account: str | None = None) -> Response:
    """A SendGrid Event Webhook batch, ECDSA-signed; `account` is the provider account id
    the webhook URL was configured with. Signatures older than 10 minutes are refused."""
    return await respond(request, "sendgrid_events")
