"""The lean HTTP client of the Twilio create (`channels.http_post`), table-driven: a tiny
server on loopback answers each request as scripted, and the create must come back as the
outcome exactly-once rests on. A request that provably never left is CONNECTION_FAILED (a
retry is safe); once written, a lost, late or unreadable answer is IN_DOUBT, and the server
has seen the request exactly once: nothing is resent."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import ssl
import subprocess
from dataclasses import dataclass
from typing import Any

import pytest
from yarl import URL

from channels.base import ErrorKind, ProviderCredentials, SendError
from channels.http_post import Endpoint, NotSent, PostPool
from channels.twilio_client import TwilioTransport
from channels.twilio_errors import error_from_response

SID = "AC" + "9d" * 16
FORM = [("To", "+15551230009"), ("From", "+15550000009"), ("Body", "Hi & bye")]
CREATED = json.dumps({"sid": "SM" + "1" * 32, "status": "queued"}).encode()
HANG, CLOSE = "hang", "close"  # instead of answering: wait for the client to go, or close


def http(status: str, body: bytes = b"", *headers: str, length: bool = True) -> bytes:
    head = [f"HTTP/1.1 {status}", *headers]
    if length:
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


OK = http("201 Created", CREATED, "Content-Type: application/json")


class Scripted:
    """Answers the n-th request it reads with the n-th step: bytes to write (then the
    connection stays open unless the bytes say `Connection: close`), HANG or CLOSE; a
    `(bytes, CLOSE)` writes, then closes."""

    def __init__(self, *steps: Any) -> None:
        self.steps = list(steps)
        self.requests: list[bytes] = []
        self.connections = 0
        self.received = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"\r\nContent-Length: (\d+)\r\n", head)
                assert length is not None, head
                self.requests.append(head + await reader.readexactly(int(length[1])))
                self.received.set()
                step = self.steps[len(self.requests) - 1]
                answer, then = step if isinstance(step, tuple) else (step, None)
                if answer == HANG:
                    await reader.read()
                if answer in (HANG, CLOSE):
                    return
                writer.write(answer)
                await writer.drain()
                if then == CLOSE or b"Connection: close" in answer:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def serve(script: Scripted) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(script.handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def creates(base_url: str, count: int) -> list[tuple[str, str] | SendError]:
    """`count` creates one after another on one transport, each after the last has settled
    (so a connection the server closed is seen closed before the next one)."""
    transport = TwilioTransport(read_timeout=0.3)
    creds = ProviderCredentials("twilio", SID, "a-token", base_url=base_url)
    outcomes: list[tuple[str, str] | SendError] = []
    try:
        for _ in range(count):
            outcomes.append(await transport.create(creds, "Messages", FORM))
            await asyncio.sleep(0.05)
    finally:
        await transport.close()
    return outcomes


def kinds(outcomes: list[tuple[str, str] | SendError]) -> list[str]:
    return [o.kind.value if isinstance(o, SendError) else "created" for o in outcomes]


@dataclass(frozen=True)
class Case:
    name: str
    steps: tuple[Any, ...]
    outcomes: tuple[str, ...]  # one per create, in order
    connections: int = 1


IN_DOUBT, THROTTLED = ErrorKind.IN_DOUBT.value, ErrorKind.THROTTLED.value
CASES = [
    Case("created", (OK,), ("created",)),
    Case("kept_alive", (OK, OK, OK), ("created",) * 3),
    # Written, then the connection closed with no answer: it may have been created.
    Case("closed_after_the_request", (CLOSE,), (IN_DOUBT,)),
    # The same on a kept-alive connection: the request went out, so it is not resent.
    Case("kept_alive_closed_after_the_request", (OK, CLOSE), ("created", IN_DOUBT)),
    Case("no_answer_in_time", (HANG,), (IN_DOUBT,)),
    Case("not_http", (b"220 smtp.example ESMTP\r\n\r\n",), (IN_DOUBT,)),
    Case("answer_cut_short", ((http("201 Created", CREATED)[:-10], CLOSE),), (IN_DOUBT,)),
    Case("created_without_a_sid", (http("201 Created", b"{}"),), (IN_DOUBT,)),
    Case("created_garbled", (http("201 Created", b"{\"sid\": "),), (IN_DOUBT,)),
    Case("reset_after_a_partial_head", ((b"HTTP/1.1 201 Cre", CLOSE),), (IN_DOUBT,)),
    # A kept-alive connection the server closed while idle is seen closed, and not used.
    Case("idle_connection_closed_by_the_server", ((OK, CLOSE), OK), ("created",) * 2, 2),
    Case("connection_close_answer", (http("201 Created", CREATED, "Connection: close"), OK),
         ("created",) * 2, 2),
    Case("body_until_the_connection_closes",
         ((http("201 Created", CREATED, length=False), CLOSE),), ("created",)),
    Case("chunked", (http("201 Created", b"%x\r\n%s\r\n0\r\n\r\n" % (len(CREATED), CREATED),
                          "Transfer-Encoding: chunked", length=False),), ("created",)),
    Case("an_interim_answer_first", (b"HTTP/1.1 100 Continue\r\n\r\n" + OK,), ("created",)),
    # Bytes after the answer that nobody asked for: that connection is not used again.
    Case("unsolicited_bytes", (OK + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", OK),
         ("created",) * 2, 2),
    Case("throttled_and_closed",
         (http("429 Too Many Requests", b'{"code": 20429, "message": "Too Many"}',
               "Retry-After: 3", "Connection: close"), OK), (THROTTLED, "created"), 2),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_each_failure_is_never_sent_or_in_doubt(case: Case) -> None:
    script = Scripted(*case.steps)
    server, url = await serve(script)
    async with server:
        outcomes = await creates(url, len(case.outcomes))
    assert kinds(outcomes) == list(case.outcomes)
    assert len(script.requests) == len(case.outcomes)  # each create written once, none again
    assert script.connections == case.connections


async def test_answers_keep_their_status_headers_and_redirects_are_not_followed() -> None:
    moved = http("302 Found", b'{"message": "Moved"}', "Location: http://127.0.0.1:9/x")
    throttled = http("429 Too Many Requests", b'{"code": 20429, "message": "Slow"}',
                     "Retry-After: 3")
    script = Scripted(moved, throttled)
    server, url = await serve(script)
    async with server:
        outcomes = await creates(url, 2)
    assert outcomes == [error_from_response(302, b'{"message": "Moved"}'),
                        error_from_response(429, b'{"code": 20429, "message": "Slow"}',
                                            {"Retry-After": "3"})]
    assert isinstance(outcomes[1], SendError) and outcomes[1].retry_after == 3.0
    assert len(script.requests) == 2


async def test_the_request_on_the_wire() -> None:
    script = Scripted(OK)
    server, url = await serve(script)
    async with server:
        await creates(url + "/base", 1)
    (request,) = script.requests
    head, body = request.split(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == f"POST /base/2010-04-01/Accounts/{SID}/Messages.json HTTP/1.1"
    assert f"Host: {url.removeprefix('http://')}" in lines
    assert "Accept-Encoding: identity" in lines  # an answer is never compressed
    assert "Content-Type: application/x-www-form-urlencoded" in lines
    assert body == b"To=%2B15551230009&From=%2B15550000009&Body=Hi+%26+bye"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(("base_url", "kind"), [
    (f"http://127.0.0.1:{closed_port()}", ErrorKind.CONNECTION_FAILED),  # refused
    ("http://unresolvable.invalid", ErrorKind.CONNECTION_FAILED),  # no such host
    ("ftp://127.0.0.1", ErrorKind.CONFIG_INVALID),
])
async def test_what_never_left(base_url: str, kind: ErrorKind) -> None:
    (outcome,) = await creates(base_url, 1)
    assert isinstance(outcome, SendError) and outcome.kind is kind


async def test_a_closed_pool_sends_nothing_and_a_cancelled_post_drops_its_connection() -> None:
    script = Scripted(HANG, OK)
    server, url = await serve(script)
    async with server:
        pool = PostPool(read_timeout=5)
        endpoint = Endpoint(URL(url + "/x"), {})
        hung = asyncio.create_task(pool.post(endpoint, b"a=1"))
        await script.received.wait()
        hung.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hung
        assert (await pool.post(endpoint, b"a=2")).status == 201
        assert script.connections == 2  # the cancelled one was not reused
        await pool.close()
        with pytest.raises(NotSent):
            await pool.post(endpoint, b"a=3")
    assert len(script.requests) == 2


@pytest.fixture
def certificate(tmp_path: Any) -> tuple[str, str]:
    """A throwaway self-signed certificate for 127.0.0.1: (cert file, key file)."""
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    return cert, key


async def test_https_and_a_certificate_not_trusted(certificate: tuple[str, str]) -> None:
    cert, key = certificate
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    script = Scripted(OK, OK)
    server = await asyncio.start_server(script.handle, "127.0.0.1", 0, ssl=server_side)
    endpoint = Endpoint(URL(f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/x"), {})
    async with server:
        trusting = PostPool(tls=ssl.create_default_context(cafile=cert))
        try:
            assert [(await trusting.post(endpoint, b"a=%d" % i)).status for i in (1, 2)] == [
                201, 201]
        finally:
            await trusting.close()
        system = PostPool()  # the system's CAs do not know this certificate
        try:
            with pytest.raises(NotSent, match="SSLCertVerificationError"):
                await system.post(endpoint, b"a=3")
        finally:
            await system.close()
    # Both over one kept-alive connection; the untrusted one ended in the handshake.
    assert len(script.requests) == 2 and script.connections == 1
