"""Several gateway replicas: two real `hub serve` processes beside the session's gateway,
sharing its PostgreSQL, Redis and Ray cluster. They join the one Supervisor rather than
starting their own; a webhook may land on any of them; every WebSocket client, on any
replica, receives every event of its sub-account exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import redis.asyncio as aioredis

from actors import ray_api
from config.settings import Settings
from hub.context import Hub
from hub.embedded import Services
from tests.conftest import Tenant, _free_port, auth
from tests.test_realtime import Feed
from tests.test_sending import carrier, carrier_log, carrier_requests, setup_sms, wait_for
from tests.test_webhooks import INBOUND, TOKEN, add_provider, add_sender, post_twilio

__all__ = ["carrier", "carrier_log"]  # fixtures shared with test_sending

ROOT = Path(__file__).resolve().parent.parent
ACCOUNT = "AC" + "b" * 32
NUMBER = "+12125550177"


def serve(settings: Settings, services: Services, *, ray_address: str,
          log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start `hub serve` on a free port against the session's servers."""
    port = _free_port()
    env = dict(os.environ)
    env.update({"DATABASE_URL": services.database_url, "REDIS_URL": services.redis_url,
                "HUB_PORT": str(port), "HUB_PUBLIC_URL": settings.base_url,
                "HUB_DATA_DIR": str(settings.data_dir), "HUB_LEASE_S": str(settings.lease_s),
                "HUB_IN_DOUBT_GRACE_S": str(settings.in_doubt_grace_s),
                "HUB_SENDER_SHARDS": str(settings.sender_shards),
                "HUB_SCHEDULER_SHARDS": str(settings.scheduler_shards),
                "RAY_ADDRESS": ray_address})
    proc = subprocess.Popen([sys.executable, "-m", "hub.cli", "serve"], cwd=ROOT, env=env,
                            stdout=log_path.open("wb"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(proc: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"hub serve exited: {log_path.read_text()[-3000:]}"
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise AssertionError("hub serve did not become ready")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture(scope="module")
def replicas(settings: Settings, services: Services, gateway_url: str,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Two `hub serve` replicas joined to the session's Ray cluster."""
    logs = tmp_path_factory.mktemp("replicas")
    before = ray_api.actor_placement([ray_api.SUPERVISOR])[ray_api.SUPERVISOR]
    nodes = ray_api.alive_nodes()
    started = [serve(settings, services, ray_address=ray_api.cluster_address(),
                     log_path=logs / f"replica-{i}.log") for i in range(2)]
    try:
        for i, (proc, url) in enumerate(started):
            wait_ready(proc, url, logs / f"replica-{i}.log")
        yield {"urls": [url for _, url in started], "supervisor_before": before,
               "nodes_before": nodes, "logs": logs}
    finally:
        for proc, _ in started:
            stop(proc)


@pytest.fixture
async def clients(replicas: dict[str, Any]) -> AsyncIterator[list[httpx.AsyncClient]]:
    async with httpx.AsyncClient(base_url=replicas["urls"][0], timeout=30) as a, \
            httpx.AsyncClient(base_url=replicas["urls"][1], timeout=30) as b:
        yield [a, b]


async def test_second_serve_joins_the_cluster_and_its_one_supervisor(
    replicas: dict[str, Any], clients: list[httpx.AsyncClient], hub: Hub,
    api: httpx.AsyncClient, tenant: Tenant, carrier: Any, carrier_log: httpx.AsyncClient
) -> None:
    # The same Supervisor process as before the replicas started, on the same nodes: they
    # joined rather than starting a Ray of their own.
    now = ray_api.actor_placement([ray_api.SUPERVISOR])[ray_api.SUPERVISOR]
    assert now == replicas["supervisor_before"]
    assert ray_api.alive_nodes() == replicas["nodes_before"]
    # Each replica hands its messages to the shared shards: each text reaches the carrier.
    await setup_sms(api, tenant, carrier.url)
    sent = []
    for i, client in enumerate(clients):
        r = await client.post(f"/v1/sub-accounts/{tenant.sa1}/messages",
                              headers={**auth(tenant.sa1_key), "Idempotency-Key": f"r{i}"},
                              json={"channel": "sms", "to": f"+1415555{2670 + i}",
                                    "body": f"from replica {i}"})
        assert r.status_code == 202, r.text
        sent.append(r.json()["to_address"])

    async def both_accepted() -> list[dict[str, Any]] | None:
        got = await carrier_requests(carrier_log)
        return got if len(got) >= 2 else None

    got = await wait_for(both_accepted, timeout=60)
    await asyncio.sleep(0.5)
    assert sorted(q["to"] for q in await carrier_requests(carrier_log)) == sorted(sent)
    assert {q["body"] for q in got} == {"from replica 0", "from replica 1"}


async def test_a_supervisor_in_another_ray_cluster_is_refused(
    services: Services, replicas: dict[str, Any], hub: Hub
) -> None:
    """Without RAY_ADDRESS a `hub serve` would start a Ray of its own; over the same database
    that would be a second Supervisor and a second set of shards with the same lease owners.
    The running Supervisor's heartbeat in Redis names its cluster, so the joiner refuses."""
    beat = json.loads(await hub.redis.get(ray_api.SUPERVISOR_KEY))
    assert beat["address"] == ray_api.cluster_address()  # ours: joining is allowed
    assert ray_api.live_supervisor_elsewhere(services.redis_url) is None
    # The same check against a Redis whose heartbeat names another cluster (database 1 of
    # the same server, so the session's own key is untouched).
    other = services.redis_url.rsplit("/", 1)[0] + "/1"
    client = aioredis.from_url(other)
    try:
        await client.set(ray_api.SUPERVISOR_KEY, json.dumps({"address": "10.9.8.7:6379"}),
                         ex=60)
        spec = {"redis_url": other}
        with pytest.raises(RuntimeError, match=re.escape("RAY_ADDRESS=10.9.8.7:6379")):
            await asyncio.get_running_loop().run_in_executor(
                None, ray_api.get_or_create_supervisor, spec)
    finally:
        await client.delete(ray_api.SUPERVISOR_KEY)
        await client.aclose()
    now = ray_api.actor_placement([ray_api.SUPERVISOR])[ray_api.SUPERVISOR]
    assert now == replicas["supervisor_before"]


def inbound_form(sid: str, from_: str, body: str) -> str:
    return urlencode({"ToCountry": "US", "SmsMessageSid": sid, "NumMedia": "0",
                      "SmsSid": sid, "SmsStatus": "received", "Body": body, "To": NUMBER,
                      "NumSegments": "1", "MessageSid": sid, "AccountSid": ACCOUNT,
                      "From": from_, "ApiVersion": "2010-04-01"})


async def test_webhooks_on_any_replica_reach_every_feed_exactly_once(
    replicas: dict[str, Any], clients: list[httpx.AsyncClient], hub: Hub,
    api: httpx.AsyncClient, tenant: Tenant, settings: Settings
) -> None:
    pa = await add_provider(api, tenant, tenant.sa1, tenant.sa1_key, account_id=ACCOUNT,
                            secret=TOKEN)
    await add_sender(api, tenant.sa1, tenant.sa1_key, pa, address=NUMBER)
    gateways = [api, *clients]
    feeds = [await Feed.open(g, tenant.sa1_key) for g in gateways]
    other = await Feed.open(clients[1], tenant.sa2_key)  # another sub-account's agent
    try:
        for f in [*feeds, other]:
            await f.subscribe(["*"])
        start = await hub.pool.fetchval("SELECT event_seq FROM sub_accounts WHERE id = $1",
                                        uuid.UUID(tenant.sa1))
        texts = 12
        for i in range(texts):
            form = inbound_form("SM" + uuid.uuid4().hex, f"+1415555{3100 + i}", f"hello {i}")
            # Twilio retries: the same webhook lands on one replica, then on another.
            first, again = clients[i % 2], gateways[(i + 1) % 3]
            for g in (first, again):
                r = await post_twilio(g, settings, INBOUND, form)
                assert r.status_code == 200, r.text

        async def applied() -> int | None:
            n = await hub.pool.fetchval(
                """SELECT count(*) FROM messages WHERE sub_account_id = $1
                   AND direction = 'inbound'""", uuid.UUID(tenant.sa1))
            return n if n >= texts else None

        assert await wait_for(applied, timeout=60) == texts
        await asyncio.sleep(1.0)
        head = await hub.pool.fetchval("SELECT event_seq FROM sub_accounts WHERE id = $1",
                                       uuid.UUID(tenant.sa1))
        assert head > start
        received = [await f.events_until(head) for f in feeds]
    finally:
        for f in [*feeds, other]:
            await f.close()
    expected = list(range(start + 1, head + 1))
    for frames in received:
        assert [f["seq"] for f in frames] == expected  # each once, in order, none missing
        assert [f["id"] for f in frames] == [f["id"] for f in received[0]]
    created = [f for f in received[0] if f["event"] == "message.created"]
    assert sorted(f["data"]["body"] for f in created) == sorted(f"hello {i}"
                                                                 for i in range(texts))
    assert not other.pending  # nothing of sub-account 1 reached sub-account 2's client
