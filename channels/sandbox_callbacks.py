"""How the sandbox carrier calls back: signed Twilio form posts and signed SendGrid event
batches, on one shared aiohttp session, in background tasks that never hold up a request.

Delivery follows Twilio's default connection policy: connect 5 s, read 15 s, one retry on a
connection error, timeout or 5xx (all configurable); 4xx is an answer, not a failure."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twilio.request_validator import RequestValidator

from channels.sandbox_core import CarrierState

log = logging.getLogger(__name__)

TWILIO_USER_AGENT = "TwilioProxy/1.1"
SENDGRID_SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
SENDGRID_TIMESTAMP = "X-Twilio-Email-Event-Webhook-Timestamp"


@dataclass(slots=True)
class TwilioCallback:
    at: float  # epoch seconds
    url: str
    params: dict[str, str]
    account_sid: str
    before: Callable[[], None] | None = None  # a side effect at delivery time (opt-out)


class EventSigner:
    """SendGrid's signed Event Webhook: ECDSA P-256 / SHA-256 over timestamp + raw body."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey | str | None = None) -> None:
        if isinstance(private_key, str):
            loaded = serialization.load_pem_private_key(private_key.encode(), password=None)
            if not isinstance(loaded, ec.EllipticCurvePrivateKey):
                raise ValueError("the SendGrid signing key must be an EC (P-256) key")
            private_key = loaded
        self._key = private_key or ec.generate_private_key(ec.SECP256R1())
        der = self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        #: What SendGrid shows under Mail Settings → Signed Event Webhook: base64 DER.
        self.public_key = base64.b64encode(der).decode()

    def sign(self, timestamp: str, body: bytes) -> str:
        signature = self._key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return base64.b64encode(signature).decode()


class CallbackSender:
    def __init__(self, state: CarrierState, signer: EventSigner) -> None:
        self.state = state
        self.signer = signer
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._events: list[dict[str, Any]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=256, limit_per_host=0)
        self._session = aiohttp.ClientSession(connector=connector,
                                              headers={"User-Agent": TWILIO_USER_AGENT})
        self._flusher = asyncio.create_task(self._flush_loop())

    async def close(self) -> None:
        tasks = [*self._tasks, *([self._flusher] if self._flusher else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- Twilio ----------------------------------------------------------------------------

    def twilio_series(self, callbacks: list[TwilioCallback]) -> None:
        """Deliver one message's callbacks in the given order, each at its time."""
        if callbacks:
            self.spawn(self._run_series(callbacks))

    async def _run_series(self, callbacks: list[TwilioCallback]) -> None:
        for cb in callbacks:
            delay = cb.at - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if cb.before is not None:
                cb.before()
            await self.post_twilio(cb.url, cb.params, cb.account_sid)

    async def post_twilio(self, url: str, params: dict[str, str], account_sid: str) -> int | None:
        status, _ = await self.request_twilio(url, params, account_sid)
        return status

    async def request_twilio(self, url: str, params: dict[str, str],
                             account_sid: str) -> tuple[int | None, str]:
        """A signed Twilio form post (a callback, or a call's request for its TwiML); the
        HTTP status (None if no answer came) and the body answered."""
        token = self.state.token_for(account_sid)
        signature = RequestValidator(token).compute_signature(url, params)
        sid = params.get("MessageSid") or params.get("CallSid")
        status = params.get("MessageStatus") or params.get("CallStatus")
        sequence = params.get("SequenceNumber", "")
        headers = {"Content-Type": "application/x-www-form-urlencoded",
                   "X-Twilio-Signature": signature,
                   "I-Twilio-Idempotency-Token": f"{sid}-{status}-{sequence}"}
        answer = await self._post(url, urlencode(params).encode(), headers)
        self.state.counts["callbacks.twilio"] += 1
        return answer

    # --- SendGrid --------------------------------------------------------------------------

    def email_series(self, events: list[tuple[float, dict[str, Any]]]) -> None:
        if events:
            self.spawn(self._run_events(events))

    async def _run_events(self, events: list[tuple[float, dict[str, Any]]]) -> None:
        for at, event in events:
            delay = at - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self._events.append(event)
            if len(self._events) >= self.state.config.sendgrid_batch_size:
                self._flush()

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.state.config.sendgrid_batch_interval_s)
            if self._events:
                self._flush()

    def _flush(self) -> None:
        batch, self._events = self._events, []
        url = self.state.config.sendgrid_event_url
        if url:
            self.spawn(self.post_events(url, batch))

    async def post_events(self, url: str, batch: list[dict[str, Any]]) -> int | None:
        # SendGrid's body ends with CRLF; the signature covers the exact bytes sent.
        body = (json.dumps(batch, separators=(",", ":")) + "\r\n").encode()
        timestamp = str(int(time.time()))
        headers = {"Content-Type": "application/json",
                   SENDGRID_SIGNATURE: self.signer.sign(timestamp, body),
                   SENDGRID_TIMESTAMP: timestamp, "User-Agent": "SendGrid Event API"}
        status, _ = await self._post(url, body, headers)
        self.state.counts["callbacks.sendgrid_batches"] += 1
        self.state.counts["callbacks.sendgrid_events"] += len(batch)
        return status

    # --- transport -------------------------------------------------------------------------

    async def _post(self, url: str, body: bytes, headers: dict[str, str]
                    ) -> tuple[int | None, str]:
        assert self._session is not None, "the carrier is not started"
        c = self.state.config
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=c.callback_connect_timeout_s,
                                        sock_read=c.callback_read_timeout_s)
        status: int | None = None
        text = ""
        for attempt in range(c.callback_retries + 1):
            if attempt:
                self.state.counts["callbacks.retried"] += 1
                await asyncio.sleep(c.callback_retry_delay_s * 2 ** (attempt - 1))
            try:
                async with self._session.post(url, data=body, headers=headers,
                                              timeout=timeout) as resp:
                    text = (await resp.read()).decode("utf-8", "replace")
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                status = None
                log.debug("callback to %s failed: %r", url, exc)
                continue
            if status < 500:
                self.state.counts["callbacks.delivered"] += 1
                return status, text
        self.state.counts["callbacks.failed"] += 1
        return status, text
