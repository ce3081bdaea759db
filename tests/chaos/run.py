"""Chaos scenarios against a whole hub on a multi-node Ray cluster on this machine; the sandbox
carrier's request log is the ground truth of what was sent.

    python -m tests.chaos.run node_loss pg_restart redis_restart replica_kill --rounds 3

Prints one `CHAOS {json}` line per round: recipients, lost, duplicated, whether the campaign
completed, receipts and inbound messages lost or applied twice, and the longest pause in
sending (the recovery time). tests/test_chaos.py runs it and asserts on those lines.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx

from actors import ray_api
from actors.ring import Ring
from actors.supervisor import CHANNEL_GROUPS, scheduler_name, sender_name
from hub.context import Hub
from tests.chaos.stack import Stack
from tests.conftest import Tenant, auth, make_tenant
from tests.test_campaigns import make_campaign, sending_hours_now, stats
from tests.test_sending import setup_sms

log = logging.getLogger("chaos")
CALLBACKS = {"callbacks_enabled": True, "callback_retries": 8, "callback_retry_delay_s": 0.25,
             "latency": 0.3}


class Round:
    """One campaign under one fault, counted from the carrier's log."""

    def __init__(self, stack: Stack, hub: Hub, api: httpx.AsyncClient,
                 carrier: httpx.AsyncClient, n: int, mps: float, base: int) -> None:
        self.stack, self.hub, self.api, self.carrier = stack, hub, api, carrier
        self.n, self.mps = n, mps
        self.base = base  # phone numbers of this round: +1415 base+1 … base+n
        # The round's own sender numbers: an inbound text finds its sub-account by number.
        self.numbers = (f"+1646{base + 1}", f"+1646{base + 2}")
        self.tenant: Tenant | None = None
        self.phones: list[str] = []
        self.inbound: list[asyncio.Task[httpx.Response]] = []
        self.result: dict[str, Any] = {}

    async def prepare(self, tenant: Tenant, callbacks: bool) -> None:
        self.tenant = tenant
        await self.carrier.delete("/sandbox/requests")
        await self.carrier.post("/sandbox/config", json={
            **(CALLBACKS if callbacks else {"callbacks_enabled": False}),
            "inbound_url": f"{self.stack.proxy.url}/v1/providers/twilio/sms/inbound"})
        await setup_sms(self.api, tenant, self.stack.carrier.url, numbers=self.numbers,
                        mps=self.mps / len(self.numbers))
        await self.hub.pool.execute(
            """INSERT INTO contacts (sub_account_id, phone, first_name, timezone, tags)
               SELECT $1, '+1415' || ($3 + i)::text, 'Pat' || i, 'Etc/GMT',
                      ARRAY['all'] FROM generate_series(1, $2) i""", UUID(tenant.sa1), self.n,
            self.base)
        self.phones = [f"+1415{self.base + i}" for i in range(1, self.n + 1)]

    async def launch(self) -> str:
        assert self.tenant is not None
        c = await make_campaign(self.api, self.tenant)
        r = await self.api.post(f"/v1/sub-accounts/{self.tenant.sa1}/campaigns/{c['id']}/launch",
                                headers=auth(self.tenant.sa1_key))
        assert r.status_code == 200, r.text
        self.campaign = c["id"]
        return str(c["id"])

    async def accepted(self) -> list[dict[str, Any]]:
        r = await self.carrier.get("/sandbox/requests", params={"limit": 1_000_000})
        rows: list[dict[str, Any]] = r.json()["requests"]
        return rows

    async def wait_accepted(self, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while len(await self.accepted()) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {count} sends accepted")
            await asyncio.sleep(0.1)

    def send_inbound(self, k: int) -> None:
        """k contacts text us (signed inbound webhooks through the proxy, retried by the
        carrier like Twilio's connection overrides would)."""
        client = httpx.AsyncClient(base_url=self.stack.carrier.url, timeout=180)
        for i in range(k):
            body = {"from": self.phones[i], "to": self.numbers[0], "body": f"question {i}"}
            self.inbound.append(asyncio.create_task(client.post("/sandbox/inbound", json=body)))

    async def finish(self, fault_at: float, timeout: float = 240) -> dict[str, Any]:
        """Wait for the campaign to complete (or the timeout), then count."""
        assert self.tenant is not None
        deadline = time.monotonic() + timeout
        status, counts = "?", {}
        while time.monotonic() < deadline:
            s = await stats(self.api, self.tenant, self.campaign)
            status, counts = s["status"], s["counts"]
            unsent = counts.get("queued", 0) + counts.get("sending", 0)
            if status == "completed" and unsent:
                self.result["completed_while_unsent"] = unsent  # a bug: must never happen
            if status == "completed" and not unsent:
                break
            await asyncio.sleep(0.5)
        completed_at = time.time()
        row = await self.hub.pool.fetchrow(
            "SELECT extract(epoch FROM completed_at) AS at FROM campaigns WHERE id = $1",
            UUID(self.campaign))
        if row and row["at"] is not None:
            self.result["completed_after_fault_s"] = round(float(row["at"]) - fault_at, 2)
        await asyncio.sleep(2.0)  # anything extra (there must be none) arrives by now
        rows = await self.accepted()
        got = collections.Counter(q["to"] for q in rows)
        eligible = set(self.phones)
        times = sorted(q["time"] for q in rows)
        gaps = [b - a for a, b in itertools.pairwise(times) if b > fault_at - 1]
        self.result.update({
            "recipients": self.n, "accepted": len(rows),
            "lost": len(eligible - set(got)),
            "duplicated": sum(c - 1 for c in got.values() if c > 1),
            "strangers": len(set(got) - eligible),
            "campaign": status, "completed": status == "completed", "hub_counts": counts,
            "send_pause_s": round(max(gaps, default=0.0), 2),
            "fault_to_complete_s": round(completed_at - fault_at, 1),
            "hung": sum(1 for q in rows if q.get("hung")),
        })
        return self.result

    async def receipts(self, timeout: float = 120) -> None:
        """Every send's delivery receipt applied once; every inbound text stored once."""
        assert self.tenant is not None
        sa = UUID(self.tenant.sa1)
        deadline = time.monotonic() + timeout
        delivered = 0
        while time.monotonic() < deadline:
            delivered = await self.hub.pool.fetchval(
                """SELECT count(*) FROM messages WHERE sub_account_id = $1
                   AND direction = 'outbound' AND status = 'delivered'""", sa)
            if delivered >= self.n:
                break
            await asyncio.sleep(0.5)
        answers = await asyncio.gather(*self.inbound, return_exceptions=True)
        inbound = await self.hub.pool.fetch(
            """SELECT provider_message_id, count(*) AS n FROM messages
               WHERE sub_account_id = $1 AND direction = 'inbound'
               GROUP BY provider_message_id""", sa)
        # A provider receipt recorded twice (a retry not recognised as the same event).
        twice = await self.hub.pool.fetchval(
            """SELECT count(*) FROM (SELECT 1 FROM message_events
                 WHERE sub_account_id = $1 AND event_key IS NOT NULL
                 GROUP BY message_id, provider_status, error_code HAVING count(*) > 1) d""",
            sa)
        receipts = await self.hub.pool.fetchval(
            """SELECT count(*) FROM message_events WHERE sub_account_id = $1
               AND event_key IS NOT NULL""", sa)
        carrier_stats = (await self.carrier.get("/sandbox/stats")).json()
        # A callback that beat its send's commit during the fault waits as an orphan and is
        # retried with back-off (1, 2, 4 … s): every one must be applied in the end.
        while True:
            pending = await self.hub.pool.fetchval(
                "SELECT count(*) FROM webhook_events WHERE sub_account_id = $1 AND status IN "
                "('pending', 'orphan')", sa)
            if not pending or time.monotonic() > deadline + 60:
                break
            await asyncio.sleep(0.5)
        ok = sum(1 for a in answers if isinstance(a, httpx.Response) and a.status_code == 200
                 and a.json().get("status") == 200)
        self.result.update({
            "receipts_lost": self.n - delivered, "receipts_applied_twice": twice,
            "receipts_recorded": receipts,
            "callbacks_retried": carrier_stats.get("callbacks.retried", 0),
            "callbacks_given_up": carrier_stats.get("callbacks.failed", 0),
            "webhooks_unapplied": pending, "inbound_sent": len(self.inbound),
            "inbound_accepted_by_hub": ok, "inbound_stored": len(inbound),
            "inbound_lost": len(self.inbound) - len(inbound),
            "inbound_duplicated": sum(r["n"] - 1 for r in inbound),
        })


# --- scenarios ---------------------------------------------------------------------------


def shard_names() -> list[str]:
    return [sender_name(g, i) for g in CHANNEL_GROUPS for i in range(2)] + [
        scheduler_name(0), ray_api.SUPERVISOR]


async def node_loss(rd: Round, new_tenant: Callable[[], Awaitable[Tenant]]) -> None:
    """A worker node that hosts the campaign's SMS sender is cut off without grace."""
    workers = set(rd.stack.worker_node_ids())
    placement = ray_api.actor_placement(shard_names())
    tenant, target = None, None
    for _ in range(10):  # a sub-account whose SMS sender shard lives on a worker node
        t = await new_tenant()
        for sa, other, key, okey in ((t.sa1, t.sa2, t.sa1_key, t.sa2_key),
                                     (t.sa2, t.sa1, t.sa2_key, t.sa1_key)):
            slot = await rd.hub.pool.fetchval("SELECT slot FROM sub_accounts WHERE id = $1",
                                              UUID(sa))
            shard = sender_name("sms", Ring(2).shard_of(slot))
            node = placement.get(shard, {}).get("node")
            if node in workers:
                tenant, target = Tenant(t.agency_id, t.agency_key, sa, other, key, okey), node
                break
        if tenant:
            break
    if tenant is None or target is None:  # both SMS shards on the head: take the busiest worker
        tenant = await new_tenant()
        target = max(workers, key=lambda w: sum(p["node"] == w for p in placement.values()))
    await rd.prepare(tenant, callbacks=False)
    await rd.launch()
    await rd.wait_accepted(rd.n // 4)
    rd.result["killed_node_hosted"] = sorted(n for n, p in placement.items()
                                             if p["node"] == target)
    fault_at = time.time()
    pids = [p["pid"] for p in placement.values() if p["node"] == target and p["pid"]]
    rd.result["processes_surviving_the_crash"] = rd.stack.crash_node(target, pids)
    rd.stack.add_node()  # Ray installs signal handlers: the main thread only
    await rd.finish(fault_at)
    # The campaign needs only its SMS shard back; the Supervisor restores the others on its
    # own schedule (under load, after the campaign completed): give it a while.
    names, deadline = shard_names(), time.monotonic() + 60
    after = ray_api.actor_placement(names)
    while len(after) < len(names) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        after = ray_api.actor_placement(names)
    rd.result["actors_alive_after"] = len(after)
    rd.result["nodes_hosting_after"] = len({p["node"] for p in after.values()})


async def service_restart(rd: Round, tenant: Tenant, crash: Callable[[], None],
                          start: Callable[[], None], down_s: float = 3.0) -> None:
    await rd.prepare(tenant, callbacks=True)
    await rd.launch()
    await rd.wait_accepted(rd.n // 4)
    fault_at = time.time()
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, crash)
    rd.send_inbound(5)  # contacts text in while it is down
    await asyncio.sleep(down_s)
    await loop.run_in_executor(None, start)
    rd.result["down_s"] = round(time.time() - fault_at, 2)
    await rd.finish(fault_at)
    await rd.receipts()


async def replica_kill(rd: Round, tenant: Tenant) -> None:
    """Two `hub serve` replicas behind the proxy take the callbacks; one is SIGKILLed while
    they stream in. The carrier's retries land on the other."""
    stack = rd.stack
    while len(stack.replicas) < 2:
        stack.spawn_replica()
    for replica in stack.replicas:
        await asyncio.get_running_loop().run_in_executor(None, stack.wait_ready, replica)
    stack.proxy.upstreams = [r.url for r in stack.replicas]
    await rd.prepare(tenant, callbacks=True)
    await rd.launch()
    await rd.wait_accepted(rd.n // 4)
    victim, survivor = stack.replicas
    before = dict(stack.proxy.by_upstream)
    failed_before = stack.proxy.failed
    fault_at = time.time()
    stack.kill_replica(victim)
    rd.send_inbound(5)
    stack.spawn_replica()  # the next round's second replica boots meanwhile
    await rd.finish(fault_at)
    await rd.receipts()
    rd.result["proxy_502s"] = stack.proxy.failed - failed_before
    rd.result["survivor_requests"] = (stack.proxy.by_upstream.get(survivor.url, 0)
                                      - before.get(survivor.url, 0))
    stack.proxy.upstreams = [stack.gateway_url]


async def run(stack: Stack, scenarios: list[str], rounds: int, n: int, mps: float) -> int:
    failures = 0
    hub = await Hub.open(stack.settings, stack.pg.url, stack.redis.url)
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=60) as api, \
            httpx.AsyncClient(base_url=stack.carrier.url, timeout=60) as carrier:
        counter = 0

        async def new_tenant() -> Tenant:
            nonlocal counter
            counter += 1
            made = await make_tenant(hub, api, f"Chaos {counter}")
            await sending_hours_now(api, made)  # the campaigns' windows follow the clock
            return made

        for scenario in scenarios:
            for i in range(rounds):
                rd = Round(stack, hub, api, carrier, n, mps,
                           base=3_000_000 + 10_000 * (counter + 1))
                started = time.monotonic()
                try:
                    if scenario == "node_loss":
                        await node_loss(rd, new_tenant)
                    elif scenario == "pg_restart":
                        await service_restart(rd, await new_tenant(), stack.pg.crash,
                                              stack.pg.start)
                    elif scenario == "redis_restart":
                        await service_restart(rd, await new_tenant(), stack.redis.crash,
                                              stack.redis.start)
                    elif scenario == "replica_kill":
                        await replica_kill(rd, await new_tenant())
                    else:
                        raise ValueError(f"unknown scenario {scenario}")
                except Exception as exc:
                    failures += 1
                    log.exception("round failed")
                    rd.result["error"] = repr(exc)[:500]
                rd.result.update(scenario=scenario, round=i,
                                 seconds=round(time.monotonic() - started, 1))
                print("CHAOS " + json.dumps(rd.result), flush=True)
    await hub.close()
    return failures


def main(scenarios: list[str], rounds: int, n: int, mps: float) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="hubchaos-"))
    # A Ray temp dir of our own: `Cluster` records its address in <temp>/ray_current_cluster,
    # where any `ray.init()` on this machine would otherwise find and join it.
    os.environ["RAY_TMPDIR"] = str(workdir)
    stack = Stack(workdir).start()
    try:
        return asyncio.run(run(stack, scenarios, rounds, n, mps))
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="+",
                        choices=["node_loss", "pg_restart", "redis_restart", "replica_kill"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--recipients", type=int, default=300)
    parser.add_argument("--mps", type=float, default=100.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    log.setLevel(logging.INFO)
    sys.exit(main(args.scenarios, args.rounds, args.recipients, args.mps) and 1)
