"""The twilio SDK wired for the hub: one aiohttp pool shared by every provider account, real
timeouts, response headers kept for Retry-After, and each account's base URL applied.

How a base URL reaches the SDK: every product domain of `twilio.rest.Client` is a
`twilio.base.domain.Domain` whose public `base_url` attribute prefixes every request it
builds (`Domain.absolute_url`). Messages and Calls live on the `api` domain, so
`client.api.base_url = "http://127.0.0.1:8025"` points them, and the paging links they
follow, at the sandbox carrier or a regional edge; no URL rewriting, no private API.
Edge and region come from the account's config only (the SDK would otherwise read
TWILIO_EDGE / TWILIO_REGION from the process environment), and are ignored when a base
URL is set because the SDK's host rewriting assumes a *.twilio.com host.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from typing import Any, TypeVar, cast

import aiohttp
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from channels.base import ErrorKind, ProviderCredentials, SendError, SendResult
from channels.twilio_errors import error_from_exception

log = logging.getLogger(__name__)
T = TypeVar("T")

# Per task: the SDK raises TwilioRestException without the response headers, and
# Retry-After lives there. Each send runs in its own task, so this cannot leak across sends.
_response_headers: ContextVar[Mapping[str, str] | None] = ContextVar(
    "twilio_response_headers", default=None)


class HubTwilioHttpClient(AsyncTwilioHttpClient):
    """AsyncTwilioHttpClient with the three things the hub needs that it lacks: a
    ClientTimeout (the stock client passes `timeout=None`, which aiohttp reads as "wait
    forever"), one tuned connection pool created in the running loop, and the response
    headers of the last request in this task. It never logs the Authorization header."""

    def __init__(self, *, max_connections: int = 128, connect_timeout: float = 5.0,
                 read_timeout: float = 15.0) -> None:
        super().__init__(pool_connections=False, timeout=read_timeout, logger=log)
        self._client_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout)
        self._max_connections = max_connections
        self._pool: aiohttp.ClientSession | None = None

    def _session(self) -> aiohttp.ClientSession:
        if self._pool is None:  # created here, inside the running event loop
            connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0,
                                             ttl_dns_cache=300)
            self._pool = aiohttp.ClientSession(connector=connector,
                                               timeout=self._client_timeout)
        return self._pool

    async def request(self, method: str, url: str, params: dict[str, object] | None = None,
                      data: dict[str, object] | None = None,
                      headers: dict[str, str] | None = None,
                      auth: tuple[str, str] | None = None,
                      timeout: float | None = None,
                      allow_redirects: bool = False) -> Response:
        _response_headers.set(None)
        headers = dict(headers or {})
        if auth is not None:
            raw = f"{auth[0]}:{auth[1]}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
        request_timeout = self._client_timeout if timeout is None else aiohttp.ClientTimeout(
            total=timeout, sock_connect=self._client_timeout.sock_connect)
        log.debug("twilio request %s %s", method, url.split("?", 1)[0])
        async with self._session().request(
                method.upper(), url, params=cast(Any, params), data=data, headers=headers,
                timeout=request_timeout, allow_redirects=allow_redirects) as resp:
            text = await resp.text()
        _response_headers.set(resp.headers)
        log.debug("twilio response %s", resp.status)
        return Response(resp.status, text, resp.headers)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


class TwilioClients:
    """One SDK Client per (account SID, base URL), reused; least recently used evicted.
    A rotated auth token replaces the cached client."""

    def __init__(self, http: HubTwilioHttpClient, max_clients: int = 1024) -> None:
        self._http = http
        self._max = max_clients
        self._clients: OrderedDict[tuple[str, str], Client] = OrderedDict()

    def get(self, creds: ProviderCredentials) -> Client:
        key = (creds.account_id, creds.base_url or "")
        client = self._clients.get(key)
        if client is None or client.password != creds.secret:
            client = self._build(creds)
            self._clients[key] = client
            while len(self._clients) > self._max:
                self._clients.popitem(last=False)
        else:
            self._clients.move_to_end(key)
        return client

    def _build(self, creds: ProviderCredentials) -> Client:
        client = Client(creds.account_id, creds.secret, http_client=self._http)
        edge, region = creds.config.get("edge"), creds.config.get("region")
        client.edge = None if creds.base_url else (str(edge) if edge else None)
        client.region = None if creds.base_url else (str(region) if region else None)
        if creds.base_url:
            client.api.base_url = creds.base_url.rstrip("/")
        return client


class TwilioTransport:
    """What the Twilio adapters share: the pool, the clients and a bound on concurrency."""

    def __init__(self, *, concurrency: int = 64, connect_timeout: float = 5.0,
                 read_timeout: float = 15.0) -> None:
        self.http = HubTwilioHttpClient(max_connections=concurrency,
                                        connect_timeout=connect_timeout,
                                        read_timeout=read_timeout)
        self.clients = TwilioClients(self.http)
        self._slots = asyncio.Semaphore(concurrency)

    async def attempt(self, call: Callable[[], Awaitable[T]]) -> T | SendError:
        """Run one SDK call; a failure comes back as the SendError it means."""
        async with self._slots:
            try:
                return await call()
            except Exception as exc:
                return error_from_exception(exc, _response_headers.get())

    async def close(self) -> None:
        await self.http.close()


def log_outcomes(channel: str, results: Sequence[SendResult]) -> None:
    """One line per batch, not per message: a wrong token on a 100k campaign is one
    warning. Message ids only; never numbers or credentials."""
    failed = [r for r in results if r.error is not None]
    if not failed:
        log.debug("twilio %s: %d accepted", channel, len(results))
        return
    kinds = Counter(r.error.kind.value for r in failed if r.error is not None)
    serious = {ErrorKind.CONFIG_INVALID.value, ErrorKind.IN_DOUBT.value} & set(kinds)
    first = failed[0]
    assert first.error is not None
    log.log(logging.WARNING if serious else logging.INFO,
            "twilio %s: %d accepted, %d failed %s; e.g. message_id=%s kind=%s code=%s",
            channel, len(results) - len(failed), len(failed), dict(kinds), first.message_id,
            first.error.kind.value, first.error.provider_code)
