"""Twilio's REST API for the hub: one aiohttp pool shared by every provider account, real
timeouts, and each account's base URL applied. Creating a message or a call (the hot path) is
one direct form POST; fetches and lists (reconciliation) go through the official SDK, on the
same pool, with the response headers kept for Retry-After.

How a base URL reaches the SDK: every product domain of `twilio.rest.Client` is a
`twilio.base.domain.Domain` whose public `base_url` attribute prefixes every request it
builds (`Domain.absolute_url`). Messages and Calls live on the `api` domain, so
`client.api.base_url = "http://127.0.0.1:8025"` points them, and the paging links they
follow, at the sandbox carrier or a regional edge; no URL rewriting, no private API.
Edge and region come from the account's config only (the SDK would otherwise read
TWILIO_EDGE / TWILIO_REGION from the process environment), and are ignored when a base
URL is set because the SDK's host rewriting assumes a *.twilio.com host.

The direct POST asks the same client, once per account, for its URL (`Version.absolute_url`,
then `get_hostname` for edge and region) and its headers (`get_headers`, plus Basic auth), so
both paths reach the same host with the same headers. The SDK stays the oracle for the
form fields (tests/test_twilio_wire.py); on the hot path its request layers cost a quarter
of the adapter's rate (BENCHMARKS.md, channel adapters). The direct POST goes through its
own lean keep-alive pool (`channels.http_post`), not aiohttp's, whose request path was the
largest cost of a busy Sender shard.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import aiohttp
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client
from yarl import URL

from channels.base import ProviderCredentials, SendError, SendResult
from channels.http_post import Endpoint, PostPool
from channels.twilio_errors import error_from_exception, error_from_response

log = logging.getLogger(__name__)
T = TypeVar("T")

# Per task: the SDK raises TwilioRestException without the response headers, and
# Retry-After lives there. Each send runs in its own task, so this cannot leak across sends.
_response_headers: ContextVar[Mapping[str, str] | None] = ContextVar(
    "twilio_response_headers", default=None)


class HubTwilioHttpClient(AsyncTwilioHttpClient):
    """AsyncTwilioHttpClient with the three things the hub needs that it lacks: a
    ClientTimeout (the stock client passes `timeout=None`, which aiohttp reads as "wait
    forever"), one tuned connection pool created in the running loop (the SDK's fetches
    and lists; creates have their own), and the response headers of the last request in
    this task. It never logs the Authorization header."""

    def __init__(self, *, max_connections: int = 128, connect_timeout: float = 5.0,
                 read_timeout: float = 15.0) -> None:
        super().__init__(pool_connections=False, timeout=read_timeout, logger=log)
        self._client_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout)
        self._max_connections = max_connections
        self._pool: aiohttp.ClientSession | None = None

    def pool(self) -> aiohttp.ClientSession:
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
            headers["Authorization"] = basic_auth(*auth)
        request_timeout = self._client_timeout if timeout is None else aiohttp.ClientTimeout(
            total=timeout, sock_connect=self._client_timeout.sock_connect)
        log.debug("twilio request %s %s", method, url.split("?", 1)[0])
        async with self.pool().request(
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


@dataclass(frozen=True, slots=True)
class TwilioAccount:
    """One account's SDK client (fetch and list) and what a direct create needs."""

    client: Client
    secret: str = field(repr=False)
    urls: Mapping[str, URL]  # by resource: Messages, Calls
    endpoints: Mapping[str, Endpoint] = field(repr=False)  # the same, with the SDK's headers


class TwilioAccounts:
    """One TwilioAccount per (account SID, base URL), reused; least recently used evicted.
    A rotated auth token replaces the cached one."""

    def __init__(self, http: HubTwilioHttpClient, max_accounts: int = 1024) -> None:
        self._http = http
        self._max = max_accounts
        self._accounts: OrderedDict[tuple[str, str], TwilioAccount] = OrderedDict()

    def get(self, creds: ProviderCredentials) -> TwilioAccount:
        key = (creds.account_id, creds.base_url or "")
        account = self._accounts.get(key)
        if account is None or account.secret != creds.secret:
            account = self._build(creds)
            self._accounts[key] = account
            while len(self._accounts) > self._max:
                self._accounts.popitem(last=False)
        else:
            self._accounts.move_to_end(key)
        return account

    def _build(self, creds: ProviderCredentials) -> TwilioAccount:
        client = Client(creds.account_id, creds.secret, http_client=self._http)
        edge, region = creds.config.get("edge"), creds.config.get("region")
        client.edge = None if creds.base_url else (str(edge) if edge else None)
        client.region = None if creds.base_url else (str(region) if region else None)
        if creds.base_url:
            client.api.base_url = creds.base_url.rstrip("/")
        headers = client.get_headers("POST", {"Accept": "application/json"})
        headers["Authorization"] = basic_auth(creds.account_id, creds.secret)
        urls = {resource: URL(client.get_hostname(client.api.v2010.absolute_url(
                    f"Accounts/{creds.account_id}/{resource}.json")))
                for resource in ("Messages", "Calls")}
        endpoints = {resource: Endpoint(url, headers) for resource, url in urls.items()}
        return TwilioAccount(client, creds.secret, urls, endpoints)


class TwilioTransport:
    """What the Twilio adapters share: the pools (creates; the SDK's calls), the accounts and
    a bound on concurrency, which also bounds each pool's connections."""

    def __init__(self, *, concurrency: int = 64, connect_timeout: float = 5.0,
                 read_timeout: float = 15.0) -> None:
        self.http = HubTwilioHttpClient(max_connections=concurrency,
                                        connect_timeout=connect_timeout,
                                        read_timeout=read_timeout)
        self.posts = PostPool(connect_timeout=connect_timeout, read_timeout=read_timeout)
        self.accounts = TwilioAccounts(self.http)
        self._slots = asyncio.Semaphore(concurrency)

    async def create(self, creds: ProviderCredentials, resource: str,
                     form: Sequence[tuple[str, str]]) -> tuple[str, str] | SendError:
        """POST one Messages or Calls resource: its (sid, status), or the SendError the
        failure means. A 2xx answer without a sid may have created it: IN_DOUBT."""
        account = self.accounts.get(creds)
        body = form_body(form)
        async with self._slots:
            try:
                answer = await self.posts.post(account.endpoints[resource], body)
                if not 200 <= answer.status < 300:
                    return error_from_response(answer.status, answer.body, answer.headers())
                created = json.loads(answer.body.decode())
                return str(created["sid"]), str(created.get("status") or "")
            except Exception as exc:
                return error_from_exception(exc)

    async def attempt(self, call: Callable[[], Awaitable[T]]) -> T | SendError:
        """Run one SDK call (fetch, list); a failure comes back as the SendError it means."""
        async with self._slots:
            try:
                return await call()
            except Exception as exc:
                return error_from_exception(exc, _response_headers.get())

    async def close(self) -> None:
        await self.posts.close()
        await self.http.close()


#: `urllib.parse.quote_plus` as one table over the bytes of a field's UTF-8 (each byte read
#: as the Latin-1 character of the same number): unreserved characters stay, a space becomes
#: `+`, every other byte `%XX`.
_QUOTE_PLUS = str.maketrans({
    b: chr(b) if chr(b).isascii() and (chr(b).isalnum() or chr(b) in "_.-~")
    else "+" if b == 0x20 else f"%{b:02X}" for b in range(256)})


def form_body(form: Sequence[tuple[str, str]]) -> bytes:
    """`urlencode(form).encode()`, byte for byte, in less than half its time: urllib quotes
    one byte at a time in Python, this one field at a time with `str.translate` (a busy Sender
    shard spent about 4% of its samples in urlencode). A field that is not valid UTF-8 (a
    lone surrogate) raises UnicodeEncodeError, as urlencode does."""
    return "&".join([f"{_quote_plus(k)}={_quote_plus(v)}" for k, v in form]).encode("ascii")


def _quote_plus(value: str) -> str:
    raw = value if value.isascii() else value.encode().decode("latin-1")
    return raw.translate(_QUOTE_PLUS)


def basic_auth(user: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


def log_outcomes(channel: str, results: Sequence[SendResult]) -> None:
    """One INFO line per batch, not per message. Message ids only; never numbers or
    credentials. The operator's warning for a refusal is the Sender shard's, which names
    the sub-account and campaign (actors/sender.py); this is the adapter's detail."""
    failed = [r for r in results if r.error is not None]
    if not failed:
        log.debug("twilio %s: %d accepted", channel, len(results))
        return
    kinds = Counter(r.error.kind.value for r in failed if r.error is not None)
    first = failed[0]
    assert first.error is not None
    log.info("twilio %s: %d accepted, %d failed %s; e.g. message_id=%s kind=%s code=%s",
            channel, len(results) - len(failed), len(failed), dict(kinds), first.message_id,
            first.error.kind.value, first.error.provider_code)
