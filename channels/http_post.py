"""A lean keep-alive HTTP/1.1 client for the one hot request: the Twilio create, a small form
POST whose answer is a small JSON. One asyncio Protocol per connection, httptools to read the
answer, a LIFO list of idle connections per (scheme, host, port), TLS through asyncio's ssl.
aiohttp's request path cost a busy Sender shard about 100 µs of CPU per create
(BENCHMARKS.md); the head of the request is encoded once per endpoint here.

What exactly-once rests on is where a failure happened, and the errors say it:
- `NotSent`: no byte of the request left. The connection could not be made (refused, DNS,
  TLS handshake, connect timeout) or the pool is closed. A retry is safe.
- `InvalidEndpoint`: the URL cannot be POSTed to (not http or https, no host): fix config.
- Anything after the request was written may have been acted on: `AnswerLost` (the
  connection closed before a whole answer, an answer the parser refuses) and `TimeoutError`
  (no whole answer within the read timeout). That includes a kept-alive connection the
  server closed just as the request went out: it is never resent here.
An idle connection is reused only when it is still open and was idle less than
`idle_timeout`, so the last case stays rare. Redirects are answers like any other.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping

import httptools
from multidict import CIMultiDict
from yarl import URL

Key = tuple[str, str, int]


class NotSent(Exception):
    """No byte of the request was written: retrying is safe."""


class InvalidEndpoint(ValueError):
    """The URL cannot be POSTed to; nothing was sent."""


class AnswerLost(ConnectionError):
    """The request was written and no whole answer came back: it may have been acted on."""


class Answer:
    __slots__ = ("body", "raw_headers", "status")

    def __init__(self, status: int, body: bytes, raw_headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.body = body
        self.raw_headers = raw_headers

    def headers(self) -> CIMultiDict[str]:
        return CIMultiDict((k.decode("latin-1"), v.decode("latin-1"))
                           for k, v in self.raw_headers)


class Endpoint:
    """One URL and its fixed headers, POSTed many times: the request head is encoded once.
    A URL that cannot be used raises InvalidEndpoint when it is posted to, not here."""

    __slots__ = ("head", "key", "problem")

    def __init__(self, url: URL, headers: Mapping[str, str]) -> None:
        self.key: Key = (url.scheme, url.raw_host or "", url.port or 0)
        self.head = b""
        self.problem: str | None = None
        if url.scheme not in ("http", "https") or not url.raw_host:
            self.problem = f"not an http(s) URL with a host: {url.scheme}://{url.raw_host}"
            return
        lines = [f"POST {url.raw_path_qs} HTTP/1.1", f"Host: {url.host_port_subcomponent}",
                 # Twilio may compress what a client accepts; this one reads bodies as sent.
                 "Accept-Encoding: identity"]
        lines += [f"{k}: {v}" for k, v in headers.items()
                  if k.lower() not in ("host", "accept-encoding", "content-length")]
        if any(c in text for kv in headers.items() for text in kv for c in "\r\n\0"):
            self.problem = "a header holds a line break"
            return
        self.head = ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")


class PostPool:
    """Keep-alive connections by (scheme, host, port). The caller bounds concurrency: every
    POST in flight holds one connection, and one is opened when none is idle."""

    def __init__(self, *, connect_timeout: float = 5.0, read_timeout: float = 15.0,
                 idle_timeout: float = 15.0, tls: ssl.SSLContext | None = None) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.idle_timeout = idle_timeout
        self._idle: dict[Key, list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._closed = False
        self._tls = tls  # None: the system's trusted CAs, made on the first https connection

    async def post(self, endpoint: Endpoint, body: bytes) -> Answer:
        if endpoint.problem is not None:
            raise InvalidEndpoint(endpoint.problem)
        conn = self._reuse(endpoint.key) or await self._connect(endpoint.key)
        try:
            answer = await conn.exchange(endpoint.head, body, self.read_timeout)
        except BaseException:
            conn.abort()  # its state is unknown (a timeout, a cancel): never reused
            raise
        if conn.reusable():
            conn.idle_since = asyncio.get_running_loop().time()
            self._idle.setdefault(endpoint.key, []).append(conn)
        else:
            conn.close()
        return answer

    async def close(self) -> None:
        """Close every connection; POSTs in flight end in AnswerLost, later ones in NotSent."""
        self._closed = True
        for conn in list(self._open):
            conn.abort()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports call connection_lost

    def _reuse(self, key: Key) -> _Connection | None:
        if self._closed:
            raise NotSent("the HTTP pool is closed")
        idle = self._idle.get(key)
        if not idle:
            return None
        fresh_since = asyncio.get_running_loop().time() - self.idle_timeout
        while idle:
            conn = idle.pop()
            if conn.idle_since >= fresh_since and conn.reusable():
                return conn
            conn.close()
        return None

    async def _connect(self, key: Key) -> _Connection:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self), host, port,
                    ssl=self._tls_context() if scheme == "https" else None)
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            raise NotSent(f"could not connect to {host}:{port}: "
                          f"{type(exc).__name__} {exc}".rstrip()) from exc
        if self._closed:
            conn.abort()
            raise NotSent("the HTTP pool is closed")
        return conn

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    def _opened(self, conn: _Connection) -> None:
        self._open.add(conn)

    def _lost(self, conn: _Connection) -> None:
        self._open.discard(conn)
        for idle in self._idle.values():
            if conn in idle:
                idle.remove(conn)


class _Connection(asyncio.Protocol):
    """One connection: at most one request in flight, its answer parsed as it arrives."""

    def __init__(self, pool: PostPool) -> None:
        self._pool = pool
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Answer] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._headers_done = False
        self._keep_alive = False
        self._broken = False  # lost, or sent bytes nobody asked for
        self.idle_since = 0.0

    # --- the pool's side ---

    async def exchange(self, head: bytes, body: bytes, read_timeout: float) -> Answer:
        assert self._transport is not None and self._waiter is None
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        self._transport.write(b"".join((head, b"%d\r\n\r\n" % len(body), body)))
        self._timer = loop.call_later(read_timeout, self._timed_out)
        try:
            return await waiter
        finally:
            self._timer.cancel()
            self._waiter = None

    def reusable(self) -> bool:
        return (not self._broken and self._transport is not None
                and not self._transport.is_closing() and self._keep_alive)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._pool._opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._broken = True
        self._pool._lost(self)
        if self._waiter is not None and not self._waiter.done():
            if exc is None and self._headers_done and self._until_eof():
                self._finish()  # an answer without a length ends when the connection does
            else:
                self._waiter.set_exception(AnswerLost(
                    "the connection closed before a whole answer"
                    + (f" ({type(exc).__name__})" if exc else "")))

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            self.abort()  # bytes nobody asked for: this connection cannot be trusted
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if not self._waiter.done():
                self._waiter.set_exception(AnswerLost(f"an answer that is not HTTP: {exc}"))
            self.abort()

    # --- httptools callbacks ---

    def on_message_begin(self) -> None:
        if self._waiter is None or self._waiter.done():
            self._broken = True  # a second answer to one request
        self._headers, self._body, self._headers_done = [], [], False

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._keep_alive = self._parser.should_keep_alive()  # reset once the call returns
        if self._parser.get_status_code() >= 200:  # a 1xx is followed by the real answer
            self._finish()

    # --- ---

    def _finish(self) -> None:
        assert self._waiter is not None
        if not self._waiter.done():
            self._waiter.set_result(Answer(self._parser.get_status_code(),
                                           b"".join(self._body), self._headers))

    def _until_eof(self) -> bool:
        return not any(k.lower() in (b"content-length", b"transfer-encoding")
                       for k, _ in self._headers)

    def _timed_out(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(TimeoutError())
        self.abort()
