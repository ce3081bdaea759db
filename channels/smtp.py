"""SMTP relays over aiosmtplib: a bounded pool of authenticated connections per relay,
one SMTP transaction per message, and the one classification of what can go wrong.

Classification (RFC 5321 §4.2.1; enhanced codes RFC 3463), in `classify_smtp_failure`:

- any 4xx reply (421, 450, 451, 452, 454 …) is "try again later" → THROTTLED with a
  default back-off; nothing was accepted, so a retry cannot duplicate.
- 5xx during AUTH (534, 535, 538 …), a 530 "authentication required", a refused
  MAIL FROM (the sender is configuration) or a 5xx greeting/EHLO → CONFIG_INVALID.
- 5xx naming the recipient's address — enhanced code 5.1.x ("5.1.1 user unknown"), or 553
  "mailbox name not allowed" — and "message too big" (5.3.4, or a bare 552 after the
  body) → MESSAGE_INVALID; a full mailbox (552 5.2.2) is REJECTED, not the address. A bare
  550 without an enhanced code is ambiguous in RFC 5321 (mailbox unavailable *or* policy),
  and an authenticated relay rarely knows its recipients, so it is REJECTED, as is every
  other 5xx (5.7.x policy, content refusals, 554). The reply code is `provider_code`, the
  reply text the message.
- of those MESSAGE_INVALID refusals at RCPT, the ones that say the mailbox does not exist
  (`unknown_mailbox`: 5.1.0 other address status, 5.1.1 bad mailbox, 5.1.2 bad domain,
  5.1.3 bad address syntax, 5.1.6 moved with no forwarding address, 5.1.10 null MX) are
  hard bounces: the hub suppresses the address, as it does for a SendGrid bounce. A bare
  550 or 553, a full mailbox and any policy refusal (5.7.x) do not suppress.
- no connection (refused, DNS, timeout before the greeting) → CONNECTION_FAILED; a timeout
  or disconnect before DATA → CONNECTION_FAILED (nothing was delivered). Once the DATA
  command has gone out the relay may have queued the message even if we never saw its
  reply → IN_DOUBT. aiosmtplib sends DATA and the body in one call, so a timeout while
  waiting for the 354 is also IN_DOUBT: the conservative side, because a duplicate is
  worse than a stall.
- a certificate that fails validation, a missing STARTTLS with `start_tls: "always"`, or
  credentials about to cross an unencrypted link to a non-loopback host → CONFIG_INVALID.

Config (ProviderCredentials.config): host, port (587, or 465 with use_tls), start_tls
"auto"|"always"|"never", use_tls (implicit TLS), validate_certs (default true),
helo_hostname, unsubscribe_mailto, allow_plaintext_auth. account_id/secret are the AUTH
username/password (no AUTH when account_id is empty).

`check_relay` opens one connection exactly as a send does and names the setting that failed.
"""

from __future__ import annotations

import asyncio
import email.errors
import email.policy
import hashlib
import hmac
import ipaddress
import logging
import os
import re
import socket
import ssl
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Literal

from aiosmtplib import (
    SMTP,
    SMTPException,
    SMTPRecipientsRefused,
    SMTPResponseException,
    SMTPServerDisconnected,
)

from channels.base import (
    ErrorKind,
    OutboundMessage,
    ProviderCredentials,
    SendError,
    SendResult,
)
from channels.email_common import (
    HeaderValueError,
    apply_substitutions,
    check_address,
    check_header_value,
    list_unsubscribe_headers,
    message_id_header,
)
from hub.status import Status

log = logging.getLogger(__name__)

PROVIDER = "smtp"
Phase = Literal["connect", "auth", "sender", "recipient", "data"]
TlsMode = Literal["auto", "always", "never"]
TlsUsed = Literal["implicit", "starttls", "none"]

# Encode on creation with 78-column lines and 7-bit transfer encodings (no 8BITMIME needed);
# write headers with the 998-octet RFC 5322 limit so a long List-Unsubscribe URL stays one
# token instead of being folded into RFC 2047 encoded words no mail client would follow.
_BUILD_POLICY = email.policy.SMTP.clone(cte_type="7bit")
_WIRE_POLICY = _BUILD_POLICY.clone(max_line_length=998)
_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
_AUTH_PHASE_CONFIG_CODES = frozenset({530, 534, 535, 538})
#: RFC 3463 address statuses (X.1.d; X.1.10 from RFC 7505) meaning "no such mailbox".
_UNKNOWN_MAILBOX_DETAILS = frozenset({"0", "1", "2", "3", "6", "10"})
_BOUNCE_REPLY = re.compile(r"^5\d\d 5\.1\.(\d{1,3})\b")
_PROCESS_KEY = os.urandom(32)  # keys the password fingerprint in pool keys
TIMEOUT_S = 30.0  # each SMTP command's, and a whole relay check's


class PlaintextAuthRefused(SMTPException):
    """Credentials would cross an unencrypted connection to a non-loopback relay."""


# ---------------------------------------------------------------- classification


def classify_smtp_failure(
    exc: BaseException, phase: Phase, *, backoff: float = 60.0
) -> SendError:
    """The one place an SMTP failure becomes an outcome (see the module docstring)."""
    if isinstance(exc, SMTPRecipientsRefused) and exc.recipients:
        exc = exc.recipients[0]
    if isinstance(exc, SMTPResponseException) and 400 <= exc.code < 600:
        return _classify_reply(exc.code, exc.message, phase, backoff)
    if _caused_by(exc, ssl.SSLCertVerificationError):
        return SendError(ErrorKind.CONFIG_INVALID, f"TLS certificate rejected: {exc}")
    if isinstance(exc, PlaintextAuthRefused):
        return SendError(ErrorKind.CONFIG_INVALID, str(exc))
    transport = isinstance(exc, OSError | TimeoutError | SMTPServerDisconnected)
    if phase == "data":
        return SendError(ErrorKind.IN_DOUBT, f"lost after DATA: {_describe(exc)}")
    if not transport and phase in ("connect", "auth"):
        # e.g. STARTTLS required but not offered, no common AUTH mechanism
        return SendError(ErrorKind.CONFIG_INVALID, _describe(exc))
    if not transport:  # e.g. an address the relay's extensions cannot carry
        return SendError(ErrorKind.MESSAGE_INVALID, _describe(exc))
    return SendError(ErrorKind.CONNECTION_FAILED, _describe(exc))


def _classify_reply(code: int, text: str, phase: Phase, backoff: float) -> SendError:
    reply = f"{code} {text}".strip()[:500]
    if code < 500:
        return SendError(ErrorKind.THROTTLED, reply, str(code), retry_after=backoff)
    if phase in ("connect", "auth", "sender") or code in _AUTH_PHASE_CONFIG_CODES:
        return SendError(ErrorKind.CONFIG_INVALID, reply, str(code))
    enhanced = _ENHANCED.match(text)
    subject, detail = (enhanced.group(2), enhanced.group(3)) if enhanced else ("", "")
    bad_address = phase == "recipient" and (subject == "1" or code == 553)
    too_big = (subject, detail) == ("3", "4") or (code == 552 and phase == "data"
                                                  and not enhanced)
    if bad_address or too_big:
        return SendError(ErrorKind.MESSAGE_INVALID, reply, str(code))
    return SendError(ErrorKind.REJECTED, reply, str(code))


def unknown_mailbox(error: SendError) -> str | None:
    """The enhanced code of a refusal at RCPT saying the mailbox does not exist (a hard
    bounce, see the module docstring), else None. Only `_classify_reply` makes these
    errors, with the reply ("550 5.1.1 …") as the message."""
    if error.kind != ErrorKind.MESSAGE_INVALID:
        return None
    reply = _BOUNCE_REPLY.match(error.message)
    if reply is None or reply.group(1) not in _UNKNOWN_MAILBOX_DETAILS:
        return None
    return f"5.1.{reply.group(1)}"


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return (f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:500]


# ---------------------------------------------------------------- the message


def build_email(
    msg: OutboundMessage, *, now: datetime, unsubscribe_mailto: str | None = None
) -> EmailMessage:
    """Text (and an HTML alternative), From with from_name, Subject, Date, our Message-ID
    and X-Hub-Message-Id, and the RFC 8058 headers for bulk mail. Substitutions are
    applied the way SendGrid applies them. Raises HeaderValueError for a malformed one."""
    for name, address in (("to", msg.to), ("from", msg.from_)):
        check_address(name, address)
        if not address.isascii():
            raise HeaderValueError(f"{name} needs SMTPUTF8, which this adapter does not use")
    subject = apply_substitutions(msg.subject or "", msg.substitutions)
    text = apply_substitutions(msg.body, msg.substitutions)
    html = apply_substitutions(msg.html or "", msg.substitutions)
    if not text and not html:
        raise HeaderValueError("a text or HTML body is required")
    em = EmailMessage(policy=_BUILD_POLICY)
    try:
        em["From"] = Address(display_name=msg.from_name or "", addr_spec=msg.from_)
        em["To"] = Address(addr_spec=msg.to)
    except (ValueError, email.errors.MessageError) as exc:
        raise HeaderValueError(f"address rejected: {exc}") from None
    em["Subject"] = check_header_value("subject", subject)
    em["Date"] = format_datetime(now)
    em["Message-ID"] = message_id_header(msg.message_id, msg.from_)
    em["X-Hub-Message-Id"] = check_header_value("message id", msg.message_id)
    headers = list_unsubscribe_headers(
        msg.unsubscribe_url, message_id=msg.message_id, mailto=unsubscribe_mailto
    )
    for name, value in headers.items():
        em[name] = value
    if text:
        em.set_content(text)
        if html:
            em.add_alternative(html, subtype="html")
    else:
        em.set_content(html, subtype="html")
    return em


def _wire_bytes(em: EmailMessage) -> bytes:
    return em.as_bytes(policy=_WIRE_POLICY)


# ---------------------------------------------------------------- relay and pool


@dataclass(frozen=True, slots=True)
class Relay:
    host: str
    port: int
    start_tls: TlsMode
    use_tls: bool
    validate_certs: bool
    helo_hostname: str
    allow_plaintext_auth: bool
    unsubscribe_mailto: str | None

    @classmethod
    def from_creds(cls, creds: ProviderCredentials) -> Relay:
        c = creds.config
        host = str(c.get("host") or "")
        if not host:
            raise ValueError("SMTP config has no host")
        use_tls = _flag(c.get("use_tls"), False)
        mode = str(c.get("start_tls") or "auto").lower()
        if mode not in ("auto", "always", "never"):
            raise ValueError("start_tls must be auto, always or never")
        port = int(str(c.get("port") or (465 if use_tls else 587)))
        mailto = c.get("unsubscribe_mailto")
        return cls(
            host=host, port=port, start_tls=mode, use_tls=use_tls,  # type: ignore[arg-type]
            validate_certs=_flag(c.get("validate_certs"), True),
            helo_hostname=str(c.get("helo_hostname") or socket.gethostname() or "localhost"),
            allow_plaintext_auth=_flag(c.get("allow_plaintext_auth"), False),
            unsubscribe_mailto=str(mailto) if mailto else None,
        )

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def _flag(value: object, default: bool) -> bool:
    if value is None or value == "":
        return default
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


class _OpenFailed(Exception):
    def __init__(self, phase: Phase, cause: BaseException) -> None:
        super().__init__(phase)
        self.phase: Phase = phase
        self.cause = cause


class _Pool:
    """At most `size` open connections to one relay as one user. Idle connections are
    reused newest first, checked with NOOP after `health_after` seconds of idleness and
    closed after `idle_timeout`. The pool never stores the password: a new connection
    authenticates with the credentials of the call that needs it."""

    def __init__(self, relay: Relay, *, size: int, timeout: float, idle_timeout: float,
                 health_after: float) -> None:
        self.relay = relay
        self._gate = asyncio.Semaphore(size)
        self._idle: list[tuple[SMTP, float]] = []
        self._timeout = timeout
        self._idle_timeout = idle_timeout
        self._health_after = health_after

    async def acquire(self, creds: ProviderCredentials) -> tuple[SMTP, bool]:
        """A connection ready for MAIL FROM, and whether it was reused."""
        await self._gate.acquire()
        try:
            while self._idle:
                smtp, since = self._idle.pop()
                idle_for = time.monotonic() - since
                if not smtp.is_connected or idle_for > self._idle_timeout:
                    await _quit(smtp)
                    continue
                if idle_for > self._health_after:
                    try:
                        await smtp.noop()
                    except (SMTPException, OSError, TimeoutError):
                        smtp.close()
                        continue
                return smtp, True
            return await self._open(creds), False
        except BaseException:
            self._gate.release()
            raise

    def release(self, smtp: SMTP, healthy: bool) -> None:
        if healthy and smtp.is_connected:
            self._idle.append((smtp, time.monotonic()))
        else:
            smtp.close()
        self._gate.release()

    async def prune(self) -> None:
        now = time.monotonic()
        stale = [s for s, since in self._idle if now - since > self._idle_timeout]
        self._idle = [(s, t) for s, t in self._idle if s not in stale]
        for smtp in stale:
            await _quit(smtp)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for smtp, _ in idle:
            await _quit(smtp)

    async def _open(self, creds: ProviderCredentials) -> SMTP:
        return await _connect(self.relay, creds, self._timeout)


async def _connect(r: Relay, creds: ProviderCredentials, timeout: float) -> SMTP:
    """A connection ready for MAIL FROM: greeting, EHLO, STARTTLS as configured, and AUTH
    when the account has a username. Raises _OpenFailed naming the phase."""
    smtp = SMTP(
        hostname=r.host, port=r.port, use_tls=r.use_tls,
        start_tls=False if r.use_tls else {"auto": None, "always": True,
                                           "never": False}[r.start_tls],
        validate_certs=r.validate_certs, timeout=timeout, local_hostname=r.helo_hostname,
    )
    try:
        await smtp.connect()
    except Exception as exc:
        raise _OpenFailed("connect", exc) from None
    if creds.account_id:
        try:
            if not (_encrypted(smtp) or r.is_loopback or r.allow_plaintext_auth):
                raise PlaintextAuthRefused(
                    "refusing to send SMTP credentials over an unencrypted connection")
            await smtp.login(creds.account_id, creds.secret)
        except Exception as exc:
            smtp.close()
            raise _OpenFailed("auth", exc) from None
        except asyncio.CancelledError:
            smtp.close()
            raise
    return smtp


def _encrypted(smtp: SMTP) -> bool:
    return smtp.get_transport_info("sslcontext") is not None


async def _quit(smtp: SMTP) -> None:
    if smtp.is_connected:
        try:
            await smtp.quit(timeout=1.0)
        except (SMTPException, OSError, TimeoutError):
            pass
    smtp.close()


def _fingerprint(secret: str) -> str:
    return hmac.new(_PROCESS_KEY, secret.encode(), hashlib.sha256).hexdigest()[:16]


# ---------------------------------------------------------------- checking a relay


@dataclass(frozen=True, slots=True)
class RelayCheck:
    """What a check found working: the relay, how the link was encrypted, and AUTH."""

    host: str
    port: int
    tls: TlsUsed
    authenticated: bool


class RelayCheckFailed(Exception):
    """The first step of a check that failed: the setting to look at, a stable code, and
    what happened and what to do (with the password masked)."""

    def __init__(self, field: str, code: str, message: str) -> None:
        super().__init__(message)
        self.field, self.code, self.message = field, code, message


async def check_relay(creds: ProviderCredentials, timeout: float = TIMEOUT_S) -> RelayCheck:
    """Connect, EHLO, STARTTLS and AUTH exactly as a send does, send nothing, QUIT.
    Takes at most `timeout` in all; raises RelayCheckFailed."""
    try:
        relay = Relay.from_creds(creds)
    except ValueError as exc:
        raise RelayCheckFailed("config", "invalid", str(exc)) from None
    try:
        async with asyncio.timeout(timeout):
            smtp = await _connect(relay, creds, timeout)
    except _OpenFailed as failed:
        field, code, message = _check_failure(relay, failed.phase, failed.cause)
        if creds.secret:
            message = message.replace(creds.secret, "***")
        raise RelayCheckFailed(field, code, message) from None
    except TimeoutError:
        raise RelayCheckFailed("config.port", "timeout", (
            f"{relay.host}:{relay.port} took more than {timeout:g} s to greet, set up TLS and "
            "authenticate; check the host and port, and that this server may reach them"
        )) from None
    tls: TlsUsed = ("implicit" if relay.use_tls else "starttls") if _encrypted(smtp) else "none"
    await _quit(smtp)
    return RelayCheck(relay.host, relay.port, tls, bool(creds.account_id))


def _check_failure(r: Relay, phase: Phase, exc: BaseException) -> tuple[str, str, str]:
    """(setting, code, message) for a connection that could not be opened."""
    what = _describe(exc)
    if phase == "connect":
        if _caused_by(exc, socket.gaierror):
            return "config.host", "host_not_found", (
                f"{r.host} does not resolve ({what}); check the host name")
        if _caused_by(exc, ssl.SSLCertVerificationError):
            return "config.validate_certs", "certificate_rejected", (
                f"the relay's TLS certificate was rejected ({what}); the host must be a name "
                "the certificate holds, and the certificate one this server trusts")
        if isinstance(exc, SMTPResponseException):
            return "config.host", "relay_refused", (
                f"the relay refused the connection ({what}); try again later, or ask its "
                "operator to allow this server")
        if not isinstance(exc, OSError | TimeoutError | SMTPServerDisconnected):
            return "config.start_tls", "tls_unavailable", (
                f"{what}; the relay offers no STARTTLS here: set start_tls to auto or never, "
                "or use_tls for implicit TLS (port 465)")
        return "config.port", "unreachable", (
            f"no SMTP relay answered at {r.host}:{r.port} ({what}); check the host and port, "
            "and that this server may reach them")
    if isinstance(exc, PlaintextAuthRefused):
        return "config.allow_plaintext_auth", "plaintext_auth_refused", (
            f"{exc}; use a relay with STARTTLS or implicit TLS, or set allow_plaintext_auth "
            "if the network between is trusted")
    if isinstance(exc, SMTPResponseException):
        return "secret", "auth_failed", (
            f"the relay refused the username or password ({what}); check both")
    if not isinstance(exc, OSError | TimeoutError | SMTPServerDisconnected):
        return "account_id", "auth_unavailable", (
            f"{what}; the relay offers no AUTH: leave account_id and secret empty for a "
            "relay that trusts this server, or enable TLS if it offers AUTH only over TLS")
    return "config.port", "unreachable", f"the relay went away during AUTH ({what})"


# ---------------------------------------------------------------- the adapter


@dataclass(slots=True)
class _BatchState:
    live: int  # workers still sending
    relay_error: SendError | None = None


class SmtpAdapter:
    """One pool per (relay, TLS settings, username, password fingerprint): a changed
    password never rides on a connection authenticated with the old one.

    A batch runs up to `pool_size` workers, one SMTP transaction per message. A worker
    that cannot get a connection hands its message back to the others (relays often cap
    connections per client with a 421); when none can connect, the rest of the batch fails
    at once with that error instead of dialling a dead relay once per message."""

    provider = PROVIDER

    def __init__(
        self,
        *,
        pool_size: int = 4,
        timeout: float = TIMEOUT_S,
        idle_timeout: float = 60.0,
        health_after: float = 10.0,
        throttle_backoff: float = 60.0,
    ) -> None:
        self._pool_size = pool_size
        self._timeout = timeout
        self._idle_timeout = idle_timeout
        self._health_after = health_after
        self._backoff = throttle_backoff
        self._pools: dict[tuple[object, ...], _Pool] = {}
        self._reaper: asyncio.Task[None] | None = None

    async def send_batch(
        self, creds: ProviderCredentials, messages: Sequence[OutboundMessage]
    ) -> list[SendResult]:
        try:
            relay = Relay.from_creds(creds)
        except ValueError as exc:
            error = SendError(ErrorKind.CONFIG_INVALID, str(exc))
            return [SendResult(m.message_id, error=error) for m in messages]
        pool = self._pool_for(relay, creds)
        self._start_reaper()
        results: list[SendResult | None] = [None] * len(messages)
        todo = deque(range(len(messages)))
        workers = min(self._pool_size, len(messages))
        state = _BatchState(live=0)

        async def worker() -> None:
            while todo:
                i = todo.popleft()
                m = messages[i]
                if state.relay_error is not None:
                    results[i] = SendResult(m.message_id, error=state.relay_error)
                    continue
                result, relay_down = await self._send_one(pool, creds, m)
                if relay_down and state.live > 1:
                    # No connection for this worker (the relay may cap connections per
                    # client): hand the message back to the workers that have one.
                    todo.appendleft(i)
                    state.live -= 1
                    return
                if relay_down:
                    state.relay_error = result.error  # no worker can connect: fail the rest
                results[i] = result

        while todo:  # a worker may hand a message back after its peers finished
            state.live = min(workers, len(todo))
            await asyncio.gather(*(worker() for _ in range(state.live)))
        return [r for r in results if r is not None]

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.close()

    def _pool_for(self, relay: Relay, creds: ProviderCredentials) -> _Pool:
        key = (relay.host, relay.port, relay.start_tls, relay.use_tls, relay.validate_certs,
               relay.helo_hostname, creds.account_id, _fingerprint(creds.secret))
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = _Pool(
                relay, size=self._pool_size, timeout=self._timeout,
                idle_timeout=self._idle_timeout, health_after=self._health_after,
            )
        return pool

    def _start_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(max(self._idle_timeout / 2, 0.5))
            for pool in list(self._pools.values()):
                await pool.prune()

    async def _send_one(
        self, pool: _Pool, creds: ProviderCredentials, m: OutboundMessage
    ) -> tuple[SendResult, bool]:
        """The result, and whether the failure was the relay's (connect/auth) rather
        than this message's."""
        try:
            em = build_email(m, now=datetime.now(UTC),
                             unsubscribe_mailto=pool.relay.unsubscribe_mailto)
            data = _wire_bytes(em)
        except (HeaderValueError, ValueError, UnicodeError, email.errors.MessageError) as exc:
            return _failed(m, SendError(ErrorKind.MESSAGE_INVALID, str(exc)), creds), False
        for attempt in (1, 2):
            try:
                smtp, reused = await pool.acquire(creds)
            except _OpenFailed as failed:
                error = classify_smtp_failure(failed.cause, failed.phase, backoff=self._backoff)
                # INFO: the Sender shard warns once per account and back-off step.
                log.info("smtp %s failed relay=%s:%d kind=%s", failed.phase,
                            pool.relay.host, pool.relay.port, error.kind.value)
                return _failed(m, error, creds), True
            phase: Phase = "sender"
            healthy = False
            try:
                size = [f"SIZE={len(data)}"] if smtp.supports_extension("size") else []
                await smtp.mail(m.from_, options=size)
                phase = "recipient"
                await smtp.rcpt(m.to)
                phase = "data"
                response = await smtp.data(data)
                healthy = True
                log.debug("smtp accepted message_id=%s reply=%s", m.message_id, response.code)
                return SendResult(m.message_id, em["Message-ID"], Status.SENT), False
            except SMTPServerDisconnected as exc:
                if reused and attempt == 1 and phase == "sender":
                    continue  # a pooled connection the relay had dropped: nothing was sent
                error = classify_smtp_failure(exc, phase, backoff=self._backoff)
                return _failed(m, error, creds), False
            except Exception as exc:
                error = classify_smtp_failure(exc, phase, backoff=self._backoff)
                if isinstance(exc, SMTPResponseException | SMTPRecipientsRefused):
                    healthy = await _reset(smtp)
                return _failed(m, error, creds), False
            finally:
                pool.release(smtp, healthy)
        raise AssertionError("unreachable")  # pragma: no cover


async def _reset(smtp: SMTP) -> bool:
    """RSET after a refused transaction, so the connection can carry the next message."""
    if not smtp.is_connected:
        return False
    try:
        await smtp.rset()
    except (SMTPException, OSError, TimeoutError):
        return False
    return smtp.is_connected


def _failed(m: OutboundMessage, error: SendError, creds: ProviderCredentials) -> SendResult:
    if creds.secret and creds.secret in error.message:
        error = SendError(error.kind, error.message.replace(creds.secret, "***"),
                          error.provider_code, error.retry_after)
    return SendResult(m.message_id, error=error)
