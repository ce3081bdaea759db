"""The SMTP adapter against a real aiosmtpd relay on 127.0.0.1: a table of message in,
relay behaviour, message as the relay received it and the SendResult; then connection
reuse, a dropped pooled connection, and credentials kept out of logs and errors."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import email
import email.policy
import ipaddress
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from aiosmtplib import SMTPResponseException
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from channels.base import ErrorKind, OutboundMessage, ProviderCredentials, SendResult
from channels.smtp import SmtpAdapter, classify_smtp_failure
from hub.status import Status

USER, PASSWORD = "relay-user", "s3cret-Pa55word!"


# ---------------------------------------------------------------- the relay


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    peer: Any
    tls: bool
    authenticated: bool


@dataclass
class Relay:
    """What the test relay does: reply overrides per stage, hangs, and what it received."""

    rcpt_reply: str | None = None
    data_reply: str | None = None
    hang_rcpt: bool = False
    hang_data: bool = False
    received: list[Received] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle_RCPT(self, server: SMTPServer, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if self.hang_rcpt:
            await self.release.wait()
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTPServer, session: Session,
                          envelope: Envelope) -> str:
        if self.hang_data:
            await self.release.wait()
        if self.data_reply:
            return self.data_reply
        assert isinstance(envelope.content, bytes)
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.received.append(Received(str(envelope.mail_from), list(envelope.rcpt_tos),
                                      message, session.peer, _over_tls(server),
                                      bool(session.authenticated)))
        return "250 2.0.0 Ok: queued as TEST1"


def _over_tls(server: SMTPServer) -> bool:
    transport = server.transport
    return transport is not None and transport.get_extra_info("ssl_object") is not None


def authenticator(server: SMTPServer, session: Session, envelope: Envelope, mechanism: str,
                  auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and auth_data == (USER.encode(),
                                                                PASSWORD.encode())
    return AuthResult(success=ok, handled=False)


@dataclass
class Server:
    port: int
    relay: Relay
    protocols: list[CountedSMTP]

    @property
    def connections_used(self) -> int:
        """Distinct client connections that carried a message."""
        return len({r.peer for r in self.relay.received})


class CountedSMTP(SMTPServer):
    lost = False

    def connection_lost(self, error: Exception | None) -> None:
        self.lost = True
        super().connection_lost(error)


class Busy(asyncio.Protocol):
    """A relay over its per-client connection limit: 421 at the greeting."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(b"421 4.7.0 Too many concurrent connections from your IP\r\n")
        transport.close()


@asynccontextmanager
async def smtp_server(relay: Relay, *, auth: bool = False, starttls: ssl.SSLContext | None = None,
                      implicit_tls: ssl.SSLContext | None = None,
                      max_connections: int | None = None) -> AsyncIterator[Server]:
    protocols: list[CountedSMTP] = []

    def factory() -> asyncio.BaseProtocol:
        live = sum(1 for p in protocols if not p.lost)
        if max_connections is not None and live >= max_connections:
            return Busy()
        proto = CountedSMTP(
            relay, hostname="relay.test", authenticator=authenticator if auth else None,
            auth_require_tls=starttls is not None, tls_context=starttls,
            require_starttls=starttls is not None,
        )
        protocols.append(proto)
        return proto

    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, "127.0.0.1", 0, ssl=implicit_tls)
    try:
        yield Server(server.sockets[0].getsockname()[1], relay, protocols)
    finally:
        relay.release.set()
        server.close()
        for proto in protocols:
            if proto.transport is not None:
                proto.transport.close()


@pytest.fixture(scope="module")
def tls_contexts(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    """A server context with a self-signed certificate for 127.0.0.1, made here."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    folder: Path = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    return ctx


def creds(port: int, *, user: str = "", password: str = "", **config: Any) -> ProviderCredentials:
    return ProviderCredentials("smtp", user, password,
                               config={"host": "127.0.0.1", "port": port, "start_tls": "never",
                                       "helo_hostname": "hub.test", **config})


def msg(mid: str = "m-1", **kw: Any) -> OutboundMessage:
    base: dict[str, Any] = dict(message_id=mid, channel="email", to="ada@example.org",
                                from_="news@acme.test", from_name="Acme News",
                                subject="Hello", body="Plain body")
    return OutboundMessage(**{**base, **kw})


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- the table

Check = Callable[[Received], None]


def plain_text(r: Received) -> None:
    m = r.message
    assert (r.mail_from, r.rcpt_tos) == ("news@acme.test", ["ada@example.org"])
    assert m.get_content_type() == "text/plain" and m.get_content().strip() == "Plain body"
    assert str(m["From"]) == "Acme News <news@acme.test>" and str(m["To"]) == "ada@example.org"
    assert m["Subject"] == "Hello"
    assert m["Message-ID"] == "<m-1@acme.test>" and m["X-Hub-Message-Id"] == "m-1"
    assert m["Date"] and "List-Unsubscribe" not in m  # transactional: no unsubscribe offer


def html_alternative(r: Received) -> None:
    m = r.message
    assert m.get_content_type() == "multipart/alternative"
    parts = {p.get_content_type(): p.get_content().strip() for p in m.iter_parts()}
    assert parts == {"text/plain": "Plain body", "text/html": "<p>Hi <b>Ada</b></p>"}


def one_click(r: Received) -> None:
    m = r.message
    assert m["List-Unsubscribe"] == (
        "<https://hub.test/u/tok-m-bulk-" + "x" * 120 + ">, "
        "<mailto:unsub@acme.test?subject=unsubscribe%20m-bulk>")
    assert m["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert m["Subject"] == "Hi Ada, your Ümlaut offer"
    assert m.get_content().strip() == "Dear Ada, see 10% off"


def plain_http_unsubscribe(r: Received) -> None:
    assert r.message["List-Unsubscribe"] == "<http://hub.test/u/1>"
    assert "List-Unsubscribe-Post" not in r.message  # RFC 8058 one-click is HTTPS only


def authenticated(r: Received) -> None:
    assert r.authenticated and not r.tls


def tls_authenticated(r: Received) -> None:
    assert r.authenticated and r.tls


def over_tls(r: Received) -> None:
    assert r.tls


@dataclass
class Case:
    name: str
    message: OutboundMessage
    relay: Relay = field(default_factory=Relay)
    server: dict[str, Any] = field(default_factory=dict)  # auth / starttls / implicit_tls
    config: dict[str, Any] = field(default_factory=dict)
    login: tuple[str, str] = ("", "")
    received: Check | None = None  # None: the relay must have received nothing
    kind: ErrorKind | None = None
    code: str | None = None
    text: str | None = None  # a fragment of the error message
    closed: bool = False


BULK_URL = "https://hub.test/u/tok-m-bulk-" + "x" * 120

CASES = [
    Case("plain text", msg(), received=plain_text),
    Case("html alternative", msg(html="<p>Hi <b>Ada</b></p>"), received=html_alternative),
    Case("bulk: one-click List-Unsubscribe, substitutions",
         msg("m-bulk", subject="Hi -name-, your Ümlaut offer", body="Dear -name-, see -pct- off",
             unsubscribe_url=BULK_URL, substitutions={"-name-": "Ada", "-pct-": "10%"}),
         config={"unsubscribe_mailto": "unsub@acme.test"}, received=one_click),
    Case("http unsubscribe has no one-click",
         msg(unsubscribe_url="http://hub.test/u/1"), received=plain_http_unsubscribe),
    Case("AUTH without TLS on loopback", msg(), server={"auth": True},
         login=(USER, PASSWORD), received=authenticated),
    Case("535 bad password", msg(), server={"auth": True}, login=(USER, "wrong"),
         kind=ErrorKind.CONFIG_INVALID, code="535"),
    Case("STARTTLS always + AUTH, self-signed, validate_certs off", msg(),
         server={"auth": True, "starttls": True}, login=(USER, PASSWORD),
         config={"start_tls": "always", "validate_certs": False}, received=tls_authenticated),
    Case("STARTTLS auto upgrades when offered", msg(), server={"starttls": True},
         config={"start_tls": "auto", "validate_certs": False}, received=over_tls),
    Case("implicit TLS", msg(), server={"implicit_tls": True},
         config={"use_tls": True, "validate_certs": False}, received=over_tls),
    Case("self-signed certificate with validation on", msg(), server={"starttls": True},
         config={"start_tls": "always"}, kind=ErrorKind.CONFIG_INVALID, text="certificate"),
    Case("STARTTLS always, relay does not offer it", msg(), config={"start_tls": "always"},
         kind=ErrorKind.CONFIG_INVALID, text="STARTTLS"),
    Case("451 at RCPT", msg(), relay=Relay(rcpt_reply="451 4.7.1 Greylisted, try later"),
         kind=ErrorKind.THROTTLED, code="451", text="Greylisted"),
    Case("451 after the body", msg(), relay=Relay(data_reply="451 4.3.0 Queue full"),
         kind=ErrorKind.THROTTLED, code="451"),
    Case("550 5.1.1 user unknown", msg(),
         relay=Relay(rcpt_reply="550 5.1.1 <ada@example.org>: Recipient address rejected: "
                                "User unknown"),
         kind=ErrorKind.MESSAGE_INVALID, code="550",
         text="550 5.1.1 <ada@example.org>: Recipient address rejected: User unknown"),
    Case("550 5.7.1 relay denied", msg(), relay=Relay(rcpt_reply="550 5.7.1 Relaying denied"),
         kind=ErrorKind.REJECTED, code="550", text="550 5.7.1 Relaying denied"),
    Case("554 content rejected after the body", msg(),
         relay=Relay(data_reply="554 5.7.1 Message rejected as spam"),
         kind=ErrorKind.REJECTED, code="554", text="rejected as spam"),
    Case("closed port", msg(), closed=True, kind=ErrorKind.CONNECTION_FAILED),
    Case("hang after DATA", msg(), relay=Relay(hang_data=True), kind=ErrorKind.IN_DOUBT),
    Case("hang before DATA", msg(), relay=Relay(hang_rcpt=True),
         kind=ErrorKind.CONNECTION_FAILED),
    Case("line break in the subject", msg(subject="Hi\r\nBcc: all@example.org"),
         kind=ErrorKind.MESSAGE_INVALID),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_send(case: Case, tls_contexts: ssl.SSLContext) -> None:
    adapter = SmtpAdapter(timeout=0.5 if case.relay.hang_data or case.relay.hang_rcpt else 5.0,
                          throttle_backoff=90.0)
    server_kw: dict[str, Any] = {
        "auth": case.server.get("auth", False),
        "starttls": tls_contexts if case.server.get("starttls") else None,
        "implicit_tls": tls_contexts if case.server.get("implicit_tls") else None,
    }
    try:
        async with smtp_server(case.relay, **server_kw) as server:
            port = closed_port() if case.closed else server.port
            c = creds(port, user=case.login[0], password=case.login[1], **case.config)
            [result] = await adapter.send_batch(c, [case.message])
    finally:
        await adapter.close()
    assert result.message_id == case.message.message_id
    if case.kind is None:
        assert result.ok, result.error
        assert result.status == Status.SENT
        assert result.provider_message_id == f"<{case.message.message_id}@acme.test>"
        [received] = case.relay.received
        assert case.received is not None
        case.received(received)
    else:
        assert result.error is not None and result.error.kind == case.kind, result.error
        assert case.relay.received == []
        if case.code:
            assert result.error.provider_code == case.code
        if case.text:
            assert case.text in result.error.message
        if case.kind == ErrorKind.THROTTLED:
            assert result.error.retry_after == 90.0


# ---------------------------------------------------------------- classification


@pytest.mark.parametrize(("code", "text", "phase", "kind"), [
    (421, "4.3.2 Service shutting down", "connect", ErrorKind.THROTTLED),
    (454, "4.7.0 Temporary authentication failure", "auth", ErrorKind.THROTTLED),
    (535, "5.7.8 Authentication credentials invalid", "auth", ErrorKind.CONFIG_INVALID),
    (530, "5.7.0 Authentication required", "sender", ErrorKind.CONFIG_INVALID),
    (553, "5.7.1 Sender address rejected: not owned by user", "sender",
     ErrorKind.CONFIG_INVALID),
    (554, "No SMTP service here", "connect", ErrorKind.CONFIG_INVALID),
    (550, "5.1.1 User unknown", "recipient", ErrorKind.MESSAGE_INVALID),
    (553, "Mailbox name not allowed", "recipient", ErrorKind.MESSAGE_INVALID),
    (550, "Mailbox unavailable", "recipient", ErrorKind.REJECTED),
    (552, "5.3.4 Message size exceeds fixed limit", "data", ErrorKind.MESSAGE_INVALID),
    (552, "Message size exceeds fixed maximum", "data", ErrorKind.MESSAGE_INVALID),
    (552, "5.2.2 Mailbox full", "recipient", ErrorKind.REJECTED),
    (550, "5.7.1 Message rejected due to content", "data", ErrorKind.REJECTED),
])
def test_classify_replies(code: int, text: str, phase: Any, kind: ErrorKind) -> None:
    error = classify_smtp_failure(SMTPResponseException(code, text), phase)
    assert (error.kind, error.provider_code) == (kind, str(code))
    assert text in error.message


def test_classify_transport_by_phase() -> None:
    assert classify_smtp_failure(TimeoutError(), "recipient").kind == ErrorKind.CONNECTION_FAILED
    assert classify_smtp_failure(TimeoutError(), "data").kind == ErrorKind.IN_DOUBT
    assert classify_smtp_failure(ConnectionResetError(), "data").kind == ErrorKind.IN_DOUBT
    assert classify_smtp_failure(ConnectionRefusedError(), "connect").kind == (
        ErrorKind.CONNECTION_FAILED)


# ---------------------------------------------------------------- the pool


async def test_connections_are_reused_within_the_pool_size() -> None:
    adapter = SmtpAdapter(pool_size=3)
    relay = Relay()
    try:
        async with smtp_server(relay) as server:
            c = creds(server.port)
            first = await adapter.send_batch(c, [msg(f"a{i}", to=f"u{i}@example.org")
                                                 for i in range(12)])
            second = await adapter.send_batch(c, [msg(f"b{i}", to=f"v{i}@example.org")
                                                  for i in range(8)])
    finally:
        await adapter.close()
    assert [r.message_id for r in first] == [f"a{i}" for i in range(12)]
    assert all(r.ok for r in first + second)
    got = sorted(r.message["X-Hub-Message-Id"] for r in relay.received)
    assert got == sorted([f"a{i}" for i in range(12)] + [f"b{i}" for i in range(8)])
    assert server.connections_used <= 3
    assert len(server.protocols) <= 3  # no connection was opened beyond the pool


async def test_a_refused_recipient_keeps_the_connection_and_order() -> None:
    """A 550 for one recipient fails that message only; RSET keeps the connection usable."""

    class PickyRelay(Relay):
        async def handle_RCPT(self, server: SMTPServer, session: Session, envelope: Envelope,
                              address: str, rcpt_options: list[str]) -> str:
            if address.startswith("bad"):
                return "550 5.1.1 User unknown"
            envelope.rcpt_tos.append(address)
            return "250 OK"

    adapter = SmtpAdapter(pool_size=1)
    relay = PickyRelay()
    try:
        async with smtp_server(relay) as server:
            results = await adapter.send_batch(creds(server.port), [
                msg("m0", to="a@example.org"), msg("m1", to="bad@example.org"),
                msg("m2", to="c@example.org")])
    finally:
        await adapter.close()
    assert [(r.message_id, r.ok) for r in results] == [("m0", True), ("m1", False),
                                                        ("m2", True)]
    assert results[1].error is not None
    assert results[1].error.kind == ErrorKind.MESSAGE_INVALID
    assert len(server.protocols) == 1


async def test_a_pooled_connection_the_relay_dropped_is_replaced() -> None:
    adapter = SmtpAdapter(pool_size=2)
    relay = Relay()
    try:
        async with smtp_server(relay) as server:
            c = creds(server.port)
            assert all(r.ok for r in await adapter.send_batch(c, [msg("m1"), msg("m2")]))
            for proto in server.protocols:  # the relay closes its idle connections
                assert proto.transport is not None
                proto.transport.close()
            results = await adapter.send_batch(c, [msg("m3"), msg("m4")])
    finally:
        await adapter.close()
    assert all(r.ok for r in results), results
    assert sorted(r.message["X-Hub-Message-Id"] for r in relay.received) == [
        "m1", "m2", "m3", "m4"]


async def _until(condition: Callable[[], bool]) -> None:
    """Wait for the relay to observe something, giving up after a generous 5 s."""
    for _ in range(250):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the relay never saw it")


async def test_idle_connections_are_closed_and_close_quits_the_rest() -> None:
    relay = Relay()
    async with smtp_server(relay) as server:
        idle = SmtpAdapter(pool_size=2, idle_timeout=0.1)
        try:
            assert all(r.ok for r in await idle.send_batch(creds(server.port),
                                                           [msg("m1"), msg("m2")]))
            # the reaper closes connections idle longer than idle_timeout
            await _until(lambda: all(p.transport is None for p in server.protocols))
        finally:
            await idle.close()
        kept = SmtpAdapter(pool_size=2)
        assert all(r.ok for r in await kept.send_batch(creds(server.port), [msg("m3")]))
        assert any(p.transport is not None for p in server.protocols)
        await kept.close()
        await _until(lambda: all(p.transport is None for p in server.protocols))


async def test_a_relay_capping_connections_gets_everything_over_fewer() -> None:
    adapter = SmtpAdapter(pool_size=4)
    relay = Relay()
    try:
        async with smtp_server(relay, max_connections=2) as server:
            results = await adapter.send_batch(creds(server.port),
                                               [msg(f"m{i}", to=f"u{i}@example.org")
                                                for i in range(12)])
    finally:
        await adapter.close()
    assert [r.message_id for r in results] == [f"m{i}" for i in range(12)]
    assert all(r.ok for r in results), [r.error for r in results if r.error]
    assert sorted(r.message["X-Hub-Message-Id"] for r in relay.received) == sorted(
        f"m{i}" for i in range(12))
    assert server.connections_used <= 2


async def test_a_dead_relay_fails_the_batch_without_hammering_it() -> None:
    adapter = SmtpAdapter(pool_size=2)
    try:
        results = await adapter.send_batch(creds(closed_port()),
                                           [msg(f"m{i}") for i in range(50)])
    finally:
        await adapter.close()
    assert [r.message_id for r in results] == [f"m{i}" for i in range(50)]
    assert {r.error.kind for r in results if r.error} == {ErrorKind.CONNECTION_FAILED}
    assert all(r.error for r in results)


async def test_missing_host_is_config_invalid() -> None:
    adapter = SmtpAdapter()
    c = ProviderCredentials("smtp", "", "", config={})
    [result] = await adapter.send_batch(c, [msg()])
    await adapter.close()
    assert result.error is not None and result.error.kind == ErrorKind.CONFIG_INVALID


# ---------------------------------------------------------------- credentials


async def test_password_never_reaches_logs_errors_or_repr(
        caplog: pytest.LogCaptureFixture, tls_contexts: ssl.SSLContext) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="aiosmtplib")
    adapter = SmtpAdapter()
    results: list[SendResult] = []
    try:
        async with smtp_server(Relay(), auth=True) as server:
            for password in (PASSWORD, PASSWORD + "-wrong"):
                c = creds(server.port, user=USER, password=password)
                results += await adapter.send_batch(c, [msg()])
                assert password not in repr(c)
        async with smtp_server(Relay(), auth=True, starttls=tls_contexts) as server:
            c = creds(server.port, user=USER, password=PASSWORD, start_tls="always",
                      validate_certs=False)
            results += await adapter.send_batch(c, [msg()])
    finally:
        await adapter.close()
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].error is not None
    assert results[1].error.kind == ErrorKind.CONFIG_INVALID
    for secret in (PASSWORD, PASSWORD + "-wrong"):
        encoded = [base64.b64encode(secret.encode()).decode(),
                   base64.b64encode(f"\0{USER}\0{secret}".encode()).decode()]
        assert secret not in caplog.text
        assert all(secret not in str(r.error) for r in results)
        # aiosmtpd ("mail.log") is the test relay echoing what it was sent; ours must not.
        ours = "\n".join(r.getMessage() for r in caplog.records if r.name != "mail.log")
        assert not any(e in ours for e in encoded)
