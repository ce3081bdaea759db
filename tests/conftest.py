"""Test servers: the same embedded PostgreSQL and Redis the product starts (or DATABASE_URL /
REDIS_URL when set), started once per run, and the real gateway on a loopback port."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn

from config.settings import Settings
from hub import db
from hub.actions import do_create_agency, do_create_sub_account
from hub.context import Hub
from hub.crypto import hash_api_key
from hub.embedded import Services, start_services
from hub.store import tenants
from hub.tenancy import Principal

REFERENCE = Path(__file__).parent / "reference"
TABLES = ("agencies", "idempotency_keys")  # everything else cascades from agencies


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def settings() -> Settings:
    data_dir = Path(os.environ.get("HUB_TEST_DATA_DIR") or tempfile.mkdtemp(prefix="hubtest-"))
    port = _free_port()
    return Settings(environment="development", data_dir=data_dir, port=port,
                    public_url=f"http://127.0.0.1:{port}", max_body_bytes=200_000,
                    max_import_bytes=64_000_000, lease_s=5.0, in_doubt_grace_s=5.0, sender_shards=2,
                    scheduler_shards=1)


@pytest.fixture(scope="session")
def services(settings: Settings) -> Iterator[Services]:
    services = start_services(settings)
    asyncio.run(db.migrate(services.database_url))
    yield services
    services.stop()


class _ServerThread(threading.Thread):
    def __init__(self, server: uvicorn.Server) -> None:
        super().__init__(daemon=True)
        self.server = server

    def run(self) -> None:
        asyncio.run(self.server.serve())


@pytest.fixture(scope="session")
def gateway_url(settings: Settings, services: Services) -> Iterator[str]:
    from actors import ray_api
    from gateway.app import SERVER_OPTIONS, create_app

    ray_api.init(settings.ray_address)  # once per run, from the main thread

    app = create_app(settings, services.database_url, services.redis_url)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=settings.port,
                                           **SERVER_OPTIONS))
    thread = _ServerThread(server)
    thread.start()
    for _ in range(3000):
        if server.started:
            break
        if not thread.is_alive():
            raise RuntimeError("the gateway failed to start")
        threading.Event().wait(0.05)
    if not server.started:
        raise RuntimeError("the gateway did not start in time")
    yield f"http://127.0.0.1:{settings.port}"
    server.should_exit = True
    thread.join(30)
    ray_api.shutdown()


@pytest.fixture(scope="session")
async def hub(settings: Settings, services: Services) -> AsyncIterator[Hub]:
    h = await Hub.open(settings, services.database_url, services.redis_url)
    yield h
    await h.close()


@pytest.fixture(autouse=True)
async def _clean(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Each database test starts from empty tables."""
    if "hub" not in request.fixturenames and "api" not in request.fixturenames:
        yield
        return
    h: Hub = request.getfixturevalue("hub")
    # The previous test's gateway and shards may still be applying or sending; PostgreSQL
    # can pick the TRUNCATE as a deadlock's victim. Their work is being wiped: try again.
    for attempt in range(5):
        try:
            await h.pool.execute(f"TRUNCATE {', '.join(TABLES)} CASCADE")
            break
        except asyncpg.exceptions.DeadlockDetectedError:
            if attempt == 4:
                raise
            await asyncio.sleep(0.2)
    yield


@dataclass
class Tenant:
    """An agency with two sub-accounts, and keys at both levels."""

    agency_id: str
    agency_key: str
    sa1: str
    sa2: str
    sa1_key: str
    sa2_key: str


async def make_tenant(hub: Hub, client: httpx.AsyncClient, name: str = "Agency") -> Tenant:
    agency, key = await do_create_agency(hub, name)
    key_row = await tenants.find_api_key(hub.pool, hash_api_key(key))
    assert key_row is not None
    principal = Principal(key_row["id"], agency["id"], None)
    sas = [await do_create_sub_account(hub, principal, {"name": f"{name} {i}"}) for i in (1, 2)]
    keys = []
    for sa in sas:
        r = await client.post(f"/v1/sub-accounts/{sa['id']}/api-keys", json={"name": "k"},
                              headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 201, r.text
        keys.append(r.json()["key"])
    return Tenant(str(agency["id"]), key, str(sas[0]["id"]), str(sas[1]["id"]), *keys)


@pytest.fixture
async def api(gateway_url: str, hub: Hub) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway_url, timeout=30) as client:
        yield client


@pytest.fixture
async def tenant(hub: Hub, api: httpx.AsyncClient) -> Tenant:
    return await make_tenant(hub, api)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_problem(r: httpx.Response, status: int, code: str | None = None,
                   field: str | None = None) -> dict[str, Any]:
    """The response is an RFC 9457 problem with this status, code and named field."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body: dict[str, Any] = r.json()
    assert body["status"] == status and body["title"] and body["detail"] and body["type"]
    if code is not None:
        assert body["code"] == code, body
    if field is not None:
        assert field in [e["field"] for e in body.get("errors", [])], body
    return body
