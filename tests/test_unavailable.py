"""PostgreSQL going away answers 503 with Retry-After, not 500, and the gateway serves
again once it is back (found by review R4: with PostgreSQL stopped, REST and webhooks
answered 500 "internal").

The gateway under test reaches the session's PostgreSQL through a TCP relay this test
owns, so "PostgreSQL stopped" is the relay closing every connection and refusing new
ones, without disturbing the other tests' server."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import uvicorn

from config.settings import Settings
from hub.embedded import Services
from tests.conftest import Tenant, _ServerThread, assert_problem, auth


class Relay:
    """Bytes both ways between 127.0.0.1:`port` and PostgreSQL, until `cut`."""

    def __init__(self, database_url: str) -> None:
        parts = urlsplit(database_url)
        self.socket_dir = parse_qs(parts.query).get("host", [None])[0]
        self.target = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self.server: asyncio.Server | None = None
        self.port = 0
        self.links: set[asyncio.StreamWriter] = set()

    async def _upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.socket_dir and self.socket_dir.startswith("/"):
            return await asyncio.open_unix_connection(
                f"{self.socket_dir}/.s.PGSQL.{self.target[1]}")
        return await asyncio.open_connection(*self.target)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await self._upstream()
        self.links.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.links:
            w.transport.abort()
        self.links.clear()
        await self.server.wait_closed()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"


@pytest.fixture
async def outage(settings: Settings, services: Services) -> AsyncIterator[tuple[str, Relay]]:
    from gateway.app import SERVER_OPTIONS, create_app

    relay = Relay(services.database_url)
    await relay.start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(settings.model_copy(update={"actors": False, "port": port}),
                     relay.url, services.redis_url)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **SERVER_OPTIONS))
    thread = _ServerThread(server)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the gateway failed to start"
        await asyncio.sleep(0.05)
    yield f"http://127.0.0.1:{port}", relay
    server.should_exit = True
    await asyncio.to_thread(thread.join, 30)
    with contextlib.suppress(Exception):
        await relay.cut()


async def test_postgres_away_is_a_503_with_retry_after_then_served_again(
    outage: tuple[str, Relay], tenant: Tenant
) -> None:
    url, relay = outage
    path = f"/v1/sub-accounts/{tenant.sa1}/contacts"
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        assert (await client.get(path, headers=auth(tenant.sa1_key))).status_code == 200
        await relay.cut()
        for _ in range(3):  # pooled connections dropped, then new ones refused
            r = await client.get(path, headers=auth(tenant.sa1_key))
            body = assert_problem(r, 503, "unavailable")
            assert r.headers["retry-after"] == "5" and "Retry" in body["detail"]
        r = await client.post(path, headers={**auth(tenant.sa1_key), "Idempotency-Key": "k1"},
                              json={"phone": "+14155550142"})
        assert_problem(r, 503, "unavailable")
        await relay.start()  # back, on the same port

        async def served() -> int:
            return (await client.get(path, headers=auth(tenant.sa1_key))).status_code

        for _ in range(100):
            if await served() == 200:
                break
            await asyncio.sleep(0.1)
        assert await served() == 200
        r = await client.post(path, headers={**auth(tenant.sa1_key), "Idempotency-Key": "k1"},
                              json={"phone": "+14155550142"})
        assert r.status_code == 201, r.text  # the refused write left nothing behind


def _database_up(exposition: str) -> float:
    return next(float(line.split()[1]) for line in exposition.splitlines()
                if line.startswith("hub_database_up "))


async def test_metrics_say_the_queue_gauges_are_stale_while_postgres_is_away(
    outage: tuple[str, Relay]
) -> None:
    """/metrics still answers without PostgreSQL, keeping the queue gauges' last reading;
    `hub_database_up` turns 0 so that an alert fires instead of a frozen queue age."""
    url, relay = outage
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        r = await client.get("/metrics")
        assert r.status_code == 200 and _database_up(r.text) == 1
        assert 'hub_queue_depth{channel="sms"}' in r.text
        await relay.cut()
        r = await client.get("/metrics")
        assert r.status_code == 200 and _database_up(r.text) == 0
        assert 'hub_queue_depth{channel="sms"}' in r.text  # the last reading, kept
        await relay.start()
        for _ in range(100):
            if _database_up((await client.get("/metrics")).text) == 1:
                break
            await asyncio.sleep(0.1)
        assert _database_up((await client.get("/metrics")).text) == 1
