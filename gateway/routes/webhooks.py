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

from fastapi import APIRouter, FastAPI, Request, Response

from gateway.webhook_fastpath import PREFIX, respond
from hub import applier, inbox


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


@router.post("/sendgrid/events", status_code=204, response_class=Response)
async def sendgrid_events(request: Request, account: str | None = None) -> Response:
    """A SendGrid Event Webhook batch, ECDSA-signed; `account` is the provider account id
    the webhook URL was configured with. Signatures older than 10 minutes are refused."""
    return await respond(request, "sendgrid_events")
