"""SendGrid v3 mail/send: batched sends (one request per 1,000 recipients sharing a
from/subject/content), response classification, Event Webhook parsing and its ECDSA check.

Decisions, each kept in one place below:

- Status: a 202 and the `processed` event both mean "SendGrid has it" → `sent`;
  `delivered` means the receiving server accepted it → `delivered`. `deferred` is recorded
  as `sent` (it proves SendGrid holds the message, and the forward-only merge never lets it
  undo a later status). Opens and clicks are engagement only, never `read`: `read` is a
  handset receipt for SMS/WhatsApp, while an email "open" is an image fetch that privacy
  proxies fake and image blocking hides.
- Bounces: `bounce` (type "bounce") → `undelivered` + suppression. A bounce of type
  "blocked" is the receiving server refusing for now (reputation, content, rate) — it says
  nothing about the address, so `undelivered` without suppression. `dropped` → `failed`,
  suppressed only when SendGrid names the address as the reason (bounced, unsubscribed,
  spam-reporting or invalid address), not for content drops.
- `group_resubscribe` yields nothing: channels/base.py has no re-opt-in event, and keeping
  the contact suppressed is the safe side. Unknown events are skipped.
- Matching callbacks: each personalization carries our id as the `message_id` custom arg,
  which SendGrid copies onto every event, so callbacks match by our id first. The
  provider id is the request's `X-Message-Id`, the part of `sg_message_id` before
  ".filter…" — the fallback when an event lacks our custom arg.
- One bad personalization makes SendGrid reject the whole request with a 400 (nothing is
  accepted). When the 400 names personalizations (`personalizations.N…`), those messages
  fail as MESSAGE_INVALID and the rest are sent again without them (safe: nothing of the
  rejected request was accepted). A 400 about a shared field (from, subject, content) fails
  the whole group. A 413 is about the shared content and fails the group.
- 5xx: SendGrid documents 500/503 as "not accepted, retry later" → THROTTLED with back-off.
  502/504 come from a proxy that may have lost SendGrid's answer to a request it processed
  → IN_DOUBT (reconcile by the arriving `processed` event), as is any other 5xx.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import lru_cache
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric import ec
from sendgrid.helpers.eventwebhook import EventWebhook
from sendgrid.helpers.mail import (
    ApiKeyIncludedException,
    Content,
    CustomArg,
    From,
    Header,
    Mail,
    Personalization,
    Substitution,
    To,
)

from channels.base import (
    CallbackEvent,
    EngagementEvent,
    ErrorKind,
    OutboundMessage,
    ProviderCredentials,
    SendError,
    SendResult,
    StatusUpdate,
    SuppressionEvent,
)
from channels.email_common import HeaderValueError, check_address, list_unsubscribe_headers
from hub.status import Status

log = logging.getLogger(__name__)

PROVIDER = "sendgrid"
DEFAULT_BASE_URL = "https://api.sendgrid.com"
MAX_PERSONALIZATIONS = 1000  # mail/send schema: personalizations.maxItems
MESSAGE_ID_ARG = "message_id"  # our id, as a custom arg on every personalization
SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"

_THROTTLE_DEFAULT = 5.0  # seconds, a 429 without rate-limit headers
_SERVER_ERROR_BACKOFF = 30.0  # seconds, a 500/503 without Retry-After
_MAX_400_ROUNDS = 3  # resends after dropping the personalizations a 400 named
_PERSONALIZATION_FIELD = re.compile(r"^personalizations\.(\d+)(?:\.|$)")


# ---------------------------------------------------------------- request body


def build_mail_body(
    messages: Sequence[OutboundMessage], *, unsubscribe_mailto: str | None = None
) -> dict[str, Any]:
    """One mail/send body: the first message's from/subject/content, one personalization
    per message (its recipient, substitutions, custom args with our id, and its own
    List-Unsubscribe headers). The messages must share from/subject/content."""
    if not 1 <= len(messages) <= MAX_PERSONALIZATIONS:
        raise ValueError(f"a request holds 1 to {MAX_PERSONALIZATIONS} personalizations")
    first = messages[0]
    mail = Mail(from_email=From(first.from_, first.from_name), subject=first.subject)
    if first.body:
        mail.add_content(Content("text/plain", first.body))
    if first.html:
        mail.add_content(Content("text/html", first.html))
    for index, message in enumerate(messages):
        p = Personalization()
        p.add_to(To(message.to))
        for key, value in message.substitutions.items():
            p.add_substitution(Substitution(key, value))
        for key, value in {**message.custom_args, MESSAGE_ID_ARG: message.message_id}.items():
            p.add_custom_arg(CustomArg(key, value))
        headers = list_unsubscribe_headers(
            message.unsubscribe_url, message_id=message.message_id, mailto=unsubscribe_mailto
        )
        for name, value in headers.items():
            p.add_header(Header(name, value))
        # Mail.add_personalization inserts at index 0 by default; keep our order.
        mail.add_personalization(p, index=index)
    body: dict[str, Any] = mail.get()
    return body


def _group_key(m: OutboundMessage) -> tuple[str, str, str, str, str]:
    return (m.from_, m.from_name or "", m.subject or "", m.body, m.html or "")


def _check_message(m: OutboundMessage, mailto: str | None) -> str | None:
    """Why SendGrid would refuse this message on its own, before it can spoil a batch."""
    try:
        check_address("to", m.to)
        check_address("from", m.from_)
        list_unsubscribe_headers(m.unsubscribe_url, message_id=m.message_id, mailto=mailto)
    except HeaderValueError as exc:
        return str(exc)
    if not m.subject:
        return "subject is required"
    if not m.body and not m.html:
        return "a text or HTML body is required"
    try:
        for text in (m.body, m.html):
            if text:
                Content("text/plain", text)  # the library refuses content holding an API key
    except ApiKeyIncludedException:
        return "the content contains a SendGrid API key"
    return None


# ---------------------------------------------------------------- classification


def classify_sendgrid_response(
    status: int,
    body: bytes | str,
    headers: Mapping[str, str],
    *,
    now: float | None = None,
) -> SendError | None:
    """The one place an HTTP answer from mail/send becomes an outcome. None means accepted."""
    if 200 <= status < 300:  # 202; 200 in sandbox mode
        return None
    h = {k.lower(): v for k, v in headers.items()}
    detail = _error_detail(body) or f"HTTP {status}"
    code = str(status)
    if status in (401, 403, 404, 405):  # bad key/scopes, or a wrong base_url
        return SendError(ErrorKind.CONFIG_INVALID, detail, code)
    if status in (400, 413):
        return SendError(ErrorKind.MESSAGE_INVALID, detail, code)
    if status == 429:
        wait = _retry_after(h, now) or _THROTTLE_DEFAULT
        return SendError(ErrorKind.THROTTLED, detail, code, retry_after=wait)
    if status in (500, 503):
        wait = _retry_after(h, now) or _SERVER_ERROR_BACKOFF
        return SendError(ErrorKind.THROTTLED, detail, code, retry_after=wait)
    if status >= 500:
        return SendError(ErrorKind.IN_DOUBT, detail, code)
    return SendError(ErrorKind.REJECTED, detail, code)


def _retry_after(h: Mapping[str, str], now: float | None) -> float | None:
    now = time.time() if now is None else now
    reset = h.get("x-ratelimit-reset", "").strip()
    if reset.isdigit():
        return max(float(reset) - now, 1.0)
    value = h.get("retry-after", "").strip()
    if not value:
        return None
    if value.isdigit():
        return max(float(value), 1.0)
    try:
        return max(parsedate_to_datetime(value).timestamp() - now, 1.0)
    except (TypeError, ValueError):
        return None


def _errors(body: bytes | str) -> list[dict[str, Any]]:
    try:
        data = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError):
        return []
    errors = data.get("errors") if isinstance(data, dict) else None
    return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []


def _error_detail(body: bytes | str) -> str:
    parts = []
    for e in _errors(body):
        field, message = e.get("field"), str(e.get("message") or "error")
        parts.append(f"{field}: {message}" if field and field != "null" else message)
    return "; ".join(parts)[:1000]


def _bad_personalizations(body: bytes | str) -> dict[int, str]:
    """Personalization index → SendGrid's message, for the errors of a 400 that name one."""
    bad: dict[int, str] = {}
    for e in _errors(body):
        match = _PERSONALIZATION_FIELD.match(str(e.get("field") or ""))
        if match:
            bad.setdefault(int(match.group(1)), f"{e.get('field')}: {e.get('message')}")
    return bad


def _requests(idx: list[int], messages: Sequence[OutboundMessage]) -> list[list[int]]:
    """Split one group into mail/send requests: at most MAX_PERSONALIZATIONS each, and no
    recipient twice in a request. The request's X-Message-Id is every recipient's provider
    id, so (X-Message-Id, recipient) names exactly one message."""
    chunks: list[list[int]] = []
    seen: list[set[str]] = []
    for i in idx:
        address = messages[i].to.lower()
        for chunk, addresses in zip(chunks, seen, strict=True):
            if len(chunk) < MAX_PERSONALIZATIONS and address not in addresses:
                break
        else:
            chunk, addresses = [], set()
            chunks.append(chunk)
            seen.append(addresses)
        chunk.append(i)
        addresses.add(address)
    return chunks


# ---------------------------------------------------------------- the adapter


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: bytes
    headers: dict[str, str]  # names in lower case


class SendGridAdapter:
    """mail/send over aiohttp. Holds one HTTP session; the API key comes with each call."""

    provider = PROVIDER

    def __init__(
        self,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
        max_concurrent_requests: int = 4,
    ) -> None:
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout, sock_connect=connect_timeout,
            sock_read=read_timeout,
        )
        self._max_concurrent = max_concurrent_requests
        self._session: aiohttp.ClientSession | None = None

    async def send_batch(
        self, creds: ProviderCredentials, messages: Sequence[OutboundMessage]
    ) -> list[SendResult]:
        mailto = _config_str(creds, "unsubscribe_mailto")
        results: list[SendResult | None] = [None] * len(messages)
        groups: dict[tuple[str, str, str, str, str], list[int]] = {}
        for i, m in enumerate(messages):
            problem = _check_message(m, mailto)
            if problem:
                results[i] = _failed(m, SendError(ErrorKind.MESSAGE_INVALID, problem))
            else:
                groups.setdefault(_group_key(m), []).append(i)
        chunks = [c for idx in groups.values() for c in _requests(idx, messages)]
        gate = asyncio.Semaphore(self._max_concurrent)

        async def run(chunk: list[int]) -> None:
            async with gate:
                sent = await self._send_chunk(creds, [messages[i] for i in chunk], mailto)
            for i, result in zip(chunk, sent, strict=True):
                results[i] = result

        await asyncio.gather(*(run(c) for c in chunks))
        return [r for r in results if r is not None]

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _send_chunk(
        self, creds: ProviderCredentials, msgs: list[OutboundMessage], mailto: str | None
    ) -> list[SendResult]:
        out: dict[int, SendResult] = {}
        pending = list(range(len(msgs)))
        error: SendError | None = None
        for _ in range(_MAX_400_ROUNDS + 1):
            try:
                body = build_mail_body([msgs[i] for i in pending], unsubscribe_mailto=mailto)
            except Exception as exc:  # the helpers refuse something _check_message let by
                error = SendError(ErrorKind.MESSAGE_INVALID, f"{type(exc).__name__}: {exc}")
                break
            answer = await self._post(creds, body)
            if isinstance(answer, SendError):
                error = answer
                break
            error = classify_sendgrid_response(answer.status, answer.body, answer.headers)
            if error is None:
                x_message_id = answer.headers.get("x-message-id")
                for i in pending:
                    out[i] = SendResult(msgs[i].message_id, x_message_id, Status.SENT)
                pending = []
                break
            bad = _bad_personalizations(answer.body) if answer.status == 400 else {}
            bad = {k: v for k, v in bad.items() if k < len(pending)}
            if not bad:
                break  # a shared field (from, subject, content) is wrong: the group fails
            for k, detail in bad.items():
                i = pending[k]
                out[i] = _failed(msgs[i], SendError(ErrorKind.MESSAGE_INVALID, detail, "400"))
            pending = [i for k, i in enumerate(pending) if k not in bad]
            if not pending:
                break
        for i in pending:
            assert error is not None
            out[i] = _failed(msgs[i], _redact(error, creds.secret))
        return [out[i] for i in range(len(msgs))]

    async def _post(self, creds: ProviderCredentials, body: dict[str, Any]) -> _Answer | SendError:
        url = f"{(creds.base_url or DEFAULT_BASE_URL).rstrip('/')}/v3/mail/send"
        headers = {"Authorization": f"Bearer {creds.secret}", "Content-Type": "application/json"}
        on_behalf_of = _config_str(creds, "on_behalf_of")  # a subuser of the parent account
        if on_behalf_of:
            headers["on-behalf-of"] = on_behalf_of
        payload = json.dumps(body, separators=(",", ":")).encode()
        started = time.monotonic()
        n = len(body["personalizations"])
        try:
            async with self._get_session().post(url, data=payload, headers=headers) as resp:
                answer = _Answer(resp.status, await resp.read(),
                                 {k.lower(): v for k, v in resp.headers.items()})
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            # Nothing was sent: no connection (refused, DNS, TLS) or none in time.
            return _transport_error(ErrorKind.CONNECTION_FAILED, exc, creds.secret)
        except aiohttp.InvalidURL as exc:
            return _transport_error(ErrorKind.CONFIG_INVALID, exc, creds.secret)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The request went out; SendGrid may have accepted it. Reconcile, never resend.
            return _transport_error(ErrorKind.IN_DOUBT, exc, creds.secret)
        log.info(
            "sendgrid mail/send status=%s personalizations=%d x_message_id=%s duration_ms=%d",
            answer.status, n, answer.headers.get("x-message-id"),
            (time.monotonic() - started) * 1000,
        )
        return answer

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session


def _failed(m: OutboundMessage, error: SendError) -> SendResult:
    return SendResult(m.message_id, error=error)


def _config_str(creds: ProviderCredentials, key: str) -> str | None:
    value = creds.config.get(key)
    return str(value) if value else None


def _redact(error: SendError, secret: str) -> SendError:
    if secret and secret in error.message:
        return SendError(error.kind, error.message.replace(secret, "***"), error.provider_code,
                         error.retry_after)
    return error


def _transport_error(kind: ErrorKind, exc: BaseException, secret: str) -> SendError:
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    # INFO: the Sender shard warns once per provider account and back-off step, naming the
    # sub-account and the host (a dead base_url is otherwise one warning per request).
    log.info("sendgrid mail/send %s: %s", kind.value, type(exc).__name__)
    return _redact(SendError(kind, detail[:500]), secret)


# ---------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class _Outcome:
    status: Status | None = None
    suppress: str | None = None  # SuppressionEvent.reason
    engagement: str | None = None  # EngagementEvent.kind


#: The one table from a SendGrid event (bounce and dropped qualified, see _table_key) to ours.
EVENT_TABLE: dict[str, _Outcome] = {
    "processed": _Outcome(status=Status.SENT),
    "deferred": _Outcome(status=Status.SENT),  # recorded; never moves a message past sent
    "delivered": _Outcome(status=Status.DELIVERED),
    "bounce": _Outcome(status=Status.UNDELIVERED, suppress="bounce"),
    "blocked": _Outcome(status=Status.UNDELIVERED),  # temporary refusal: not the address
    "dropped": _Outcome(status=Status.FAILED, suppress="dropped"),
    "dropped_content": _Outcome(status=Status.FAILED),  # dropped for a non-address reason
    "spamreport": _Outcome(suppress="spamreport"),
    "unsubscribe": _Outcome(suppress="unsubscribe"),
    "group_unsubscribe": _Outcome(suppress="group_unsubscribe"),
    "group_resubscribe": _Outcome(),  # no re-opt-in event in channels/base.py
    "open": _Outcome(engagement="open"),
    "click": _Outcome(engagement="click"),
}

#: `dropped` reasons that are about the address (SendGrid's own suppression lists).
_ADDRESS_DROP_REASONS = frozenset(
    {"bounced address", "unsubscribed address", "spam reporting address", "invalid",
     "invalid address"}
)
_FILTER_SUFFIX = re.compile(r"\.(?=[a-z]*filter)")


def _table_key(name: str, ev: Mapping[str, Any]) -> str:
    if name == "bounce":
        return "blocked" if str(ev.get("type", "")).lower() == "blocked" else "bounce"
    if name == "dropped":
        reason = str(ev.get("reason", "")).strip().lower()
        return "dropped" if reason in _ADDRESS_DROP_REASONS else "dropped_content"
    return name


def parse_events(body: bytes) -> list[CallbackEvent]:
    """An Event Webhook POST (a JSON array) → our callback events, in order. Raises
    ValueError for a body that is not JSON; verify the signature before calling."""
    data = json.loads(body)
    items = data if isinstance(data, list) else [data]
    events: list[CallbackEvent] = []
    for ev in items:
        if isinstance(ev, dict):
            events.extend(_convert(ev))
    return events


def _convert(ev: Mapping[str, Any]) -> list[CallbackEvent]:
    name = str(ev.get("event", "")).strip().lower()
    key = _table_key(name, ev)
    outcome = EVENT_TABLE.get(key)
    if outcome is None:
        log.debug("sendgrid event %r ignored", name)
        return []
    event_key = event_key_of(ev)
    message_id = _text(ev.get(MESSAGE_ID_ARG))
    address = _text(ev.get("email")) or ""
    out: list[CallbackEvent] = []
    if outcome.status is not None:
        out.append(StatusUpdate(
            provider=PROVIDER, provider_message_id=provider_message_id(ev),
            status=outcome.status, provider_status=key, message_id=message_id,
            error_code=_text(ev.get("status")) if name in ("bounce", "dropped") else None,
            event_key=event_key, occurred_at=_occurred_at(ev.get("timestamp")),
        ))
    if outcome.suppress is not None:
        # One SendGrid event can yield a status and a suppression: keep their keys apart.
        suffix = "#suppression" if outcome.status is not None else ""
        out.append(SuppressionEvent(PROVIDER, "email", address, outcome.suppress, message_id,
                                    event_key + suffix))
    if outcome.engagement is not None:
        out.append(EngagementEvent(PROVIDER, outcome.engagement, message_id, address,
                                   _text(ev.get("url")), event_key))
    return out


def provider_message_id(ev: Mapping[str, Any]) -> str:
    """The request's X-Message-Id: `sg_message_id` is `<x-message-id>.filter…`; events
    without one (asynchronous bounces, legacy) fall back to the smtp-id's local part."""
    sg_message_id = _text(ev.get("sg_message_id")) or ""
    smtp_id = (_text(ev.get("smtp-id")) or "").strip("<>").partition("@")[0]
    if smtp_id and sg_message_id.startswith(smtp_id + "."):
        return smtp_id
    if sg_message_id:
        return _FILTER_SUFFIX.split(sg_message_id, maxsplit=1)[0]
    return smtp_id


def event_key_of(ev: Mapping[str, Any]) -> str:
    """`sg_event_id`, else a natural key: a hash of sg_message_id + event + timestamp + email
    (hashed so that dedup tables and logs never hold the address)."""
    sg_event_id = _text(ev.get("sg_event_id"))
    if sg_event_id:
        return sg_event_id
    parts = [_text(ev.get(k)) or "" for k in ("sg_message_id", "smtp-id", "event", "timestamp",
                                               "email", "url")]
    return "nk:" + hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:40]


def _text(value: object) -> str | None:
    if value is None or isinstance(value, dict | list):
        return None
    return str(value)


def _occurred_at(value: object) -> datetime | None:
    try:
        return datetime.fromtimestamp(float(str(value)), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


# ---------------------------------------------------------------- signature


@lru_cache(maxsize=64)
def _public_key(public_key_b64: str) -> ec.EllipticCurvePublicKey | None:
    try:
        key = EventWebhook().convert_public_key_to_ecdsa(public_key_b64.strip())
    except (ValueError, TypeError):
        log.warning("sendgrid event webhook public key cannot be loaded")
        return None
    return key if isinstance(key, ec.EllipticCurvePublicKey) else None


def verify_event_signature(
    public_key_b64: str, payload: bytes, signature: str, timestamp: str
) -> bool:
    """SendGrid's ECDSA P-256/SHA-256 signature over timestamp + the raw body, checked with
    the library's EventWebhook. Any malformed input is simply "not verified"."""
    if not (public_key_b64 and signature and timestamp):
        return False
    key = _public_key(public_key_b64)
    if key is None:
        return False
    try:
        text = payload.decode("utf-8")
        base64.b64decode(signature, validate=True)
        return bool(EventWebhook().verify_signature(text, signature, timestamp, public_key=key))
    except (UnicodeDecodeError, binascii.Error, ValueError):
        return False
