"""`python -m hub.bench_density`: many sub-accounts on one machine.

1. Density: N sub-accounts (10,000 by default), each with a provider account, a sender and a
   live campaign (one contact whose window is open, sent at once, and one whose window
   opens hours later, so the campaign stays running). Reports the hub's memory before and
   after, per sub-account, by process group (gateway, Ray, PostgreSQL, Redis).
2. Cold start: for fresh sub-accounts that the shards have never seen, the time from the
   REST send to the carrier accepting their first message, beside a second (warm) message.
3. With `--throughput`: `hub bench campaign`'s run (hub/bench_campaign.py) once on a
   one-node Ray and once on a two-node local cluster (`ray.cluster_utils.Cluster`).

Process layout as in hub/bench_campaign.py: this process seeds and measures; the gateway is
`hub serve` (it starts Ray and the shards); the carrier is `hub carrier`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time
from datetime import time as dt_time
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
import psutil
from rich.console import Console

from config.settings import Settings
from hub import actions, campaign_actions, db
from hub.bench_campaign import (
    CampaignBench,
    Children,
    HubMemory,
    _free_port,
    _ok,
    _percentile,
    open_window_now,
    sending_hours_now,
)
from hub.context import Hub
from hub.crypto import hash_api_key
from hub.embedded import Services, start_services
from hub.store import tenants
from hub.tenancy import Principal

console = Console(stderr=True)
MB = 1024 * 1024


async def _gather_limited(n: int, coros: list[Any]) -> list[Any]:
    sem = asyncio.Semaphore(n)

    async def one(c: Any) -> Any:
        async with sem:
            return await c

    return list(await asyncio.gather(*(one(c) for c in coros)))


class Density:
    def __init__(self, sub_accounts: int, cold: int, concurrency: int,
                 max_wait: float, settle: float = 0.0) -> None:
        self.n, self.cold, self.concurrency = sub_accounts, cold, concurrency
        self.max_wait, self.settle = max_wait, settle

    def run(self, settings: Settings) -> dict[str, Any]:
        data_dir = Path(tempfile.mkdtemp(prefix="hubdensity-"))
        settings = settings.model_copy(update={"data_dir": data_dir, "database_url": None,
                                               "redis_url": None})
        children = Children(data_dir / "logs")
        services: Services | None = None
        try:
            services = start_services(settings)
            asyncio.run(db.migrate(services.database_url))
            carrier_port, port = _free_port(), _free_port()
            env = dict(os.environ)
            children.start("carrier", ["carrier"], {**env, "HUB_CARRIER_PORT": str(carrier_port)})
            children.start("gateway", ["serve"], {
                **env, "HUB_DATA_DIR": str(data_dir), "HUB_PORT": str(port),
                "HUB_PUBLIC_URL": f"http://127.0.0.1:{port}", "HUB_LOG_LEVEL": "WARNING",
                "DATABASE_URL": services.database_url, "REDIS_URL": services.redis_url})
            carrier, gateway = f"http://127.0.0.1:{carrier_port}", f"http://127.0.0.1:{port}"
            children.wait_http("carrier", f"{carrier}/sandbox/healthz", 60)
            children.wait_http("gateway", f"{gateway}/readyz", 600)
            memory = HubMemory(children.procs["gateway"].pid, settings)
            return asyncio.run(self._measure(settings, services, memory, carrier, gateway))
        finally:
            children.stop()
            if services is not None:
                services.stop()
            shutil.rmtree(data_dir, ignore_errors=True)

    async def _measure(self, settings: Settings, services: Services, memory: HubMemory,
                       carrier_url: str, gateway_url: str) -> dict[str, Any]:
        out: dict[str, Any] = {"sub_accounts": self.n}
        hub = await Hub.open(settings, services.database_url, services.redis_url)
        agency, key = await actions.do_create_agency(hub, "density")
        key_row = await tenants.find_api_key(hub.pool, hash_api_key(key))
        assert key_row is not None
        principal = Principal(key_row["id"], agency["id"], None)
        async with httpx.AsyncClient(base_url=gateway_url, timeout=600, headers={
                "Authorization": f"Bearer {key}"}) as api, \
                httpx.AsyncClient(base_url=carrier_url, timeout=120) as carrier:
            await carrier.post("/sandbox/config", json={"callbacks_enabled": False})
            await asyncio.sleep(5)  # let the shards settle before the baseline
            idle = self._memory(memory)
            out["idle"] = idle
            t = time.perf_counter()
            sas = await self._sub_accounts(hub, principal, api, carrier_url, self.n, 0)
            out["seed_seconds"] = round(time.perf_counter() - t, 1)
            await self._contacts(hub, sas)
            t = time.perf_counter()
            start, end = open_window_now()
            await _gather_limited(self.concurrency, [self._launch(hub, api, sa, start, end)
                                                     for sa in sas])
            out["launch_seconds"] = round(time.perf_counter() - t, 1)
            accepted = await self._wait_accepted(carrier, self.n, self.max_wait)
            out["first_messages_accepted"] = accepted
            out["first_messages_seconds"] = round(time.perf_counter() - t, 1)
            live = await hub.pool.fetchval(
                "SELECT count(*) FROM campaigns WHERE status = 'running'")
            out["live_campaigns"] = live
            await asyncio.sleep(5)
            loaded = self._memory(memory)
            out["loaded"] = loaded
            out["per_sub_account_kb"] = {
                k.removesuffix("_mb"): round((loaded[k] - idle[k]) * 1024 / self.n, 1)
                for k in loaded}
            # Launching 10,000 campaigns leaves PostgreSQL checkpointing and vacuuming for a
            # while: `settle` measures the sends against the live campaigns' steady state.
            await asyncio.sleep(self.settle)
            out["settled_s"] = self.settle
            psutil.cpu_percent(percpu=True)
            out["cold_start"] = await self._cold_start(hub, principal, api, carrier,
                                                       carrier_url)
            out["cores_busy_during_cold_start"] = round(
                sum(psutil.cpu_percent(percpu=True)) / 100, 2)
        await hub.close()
        return out

    @staticmethod
    def _memory(memory: HubMemory) -> dict[str, float]:
        """RSS by process group and PSS in total (MB), the median of a few samples."""
        samples = []
        for _ in range(3):
            memory.sample(with_pss=True)
            samples.append((memory.peak_groups, memory.peak_pss))
            memory.peak_rss = memory.peak_pss = 0
            time.sleep(0.5)
        groups, pss = samples[len(samples) // 2]
        out = {f"rss_{k}_mb": round(v / MB, 1) for k, v in groups.items()}
        out["rss_total_mb"] = round(sum(groups.values()) / MB, 1)
        out["rss_hub_mb"] = round((groups.get("gateway", 0) + groups.get("ray", 0)) / MB, 1)
        out["pss_total_mb"] = round(pss / MB, 1)
        return out

    async def _sub_accounts(self, hub: Hub, principal: Principal, api: httpx.AsyncClient,
                            carrier_url: str, n: int, offset: int) -> list[str]:
        async def one(i: int) -> str:
            sa = await actions.do_create_sub_account(hub, principal, {
                "name": f"sa {i}", **{k: dt_time.fromisoformat(v)
                                      for k, v in sending_hours_now().items()}})
            sa_id = str(sa["id"])
            p = await _ok(api.post(f"/v1/sub-accounts/{sa_id}/providers", json={
                "provider": "twilio", "name": "sandbox", "account_id": "AC" + "d" * 32,
                "secret": "sandbox-token", "base_url": carrier_url}))
            await _ok(api.post(f"/v1/sub-accounts/{sa_id}/senders", json={
                "provider_account_id": p["id"], "channel": "sms", "kind": "toll_free",
                "address": f"+1833{5000000 + i}", "mps": 5}))
            return sa_id

        return await _gather_limited(self.concurrency, [one(offset + i) for i in range(n)])

    @staticmethod
    async def _contacts(hub: Hub, sas: list[str]) -> None:
        """Two contacts per sub-account: one in UTC (window open now), one in UTC+12
        (window closed for hours: its recipient keeps the campaign running)."""
        await hub.pool.execute(
            """INSERT INTO contacts (sub_account_id, phone, first_name, timezone, tags)
               SELECT sa, '+1415' || (2000000 + 2 * i + z)::text, 'Pat',
                      (ARRAY['Etc/GMT', 'Etc/GMT-12'])[1 + z], ARRAY['all']
               FROM unnest($1::uuid[]) WITH ORDINALITY AS s(sa, i), (VALUES (0), (1)) AS v(z)
            """, [UUID(s) for s in sas])

    @staticmethod
    async def _launch(hub: Hub, api: httpx.AsyncClient, sa: str, start: str, end: str) -> None:
        """Created over REST; launched by the same action the REST launch runs, without its
        scheduler kick (a kick waits for a whole tick: 10,000 of them would serialise the
        launches; the scheduler's next tick picks the campaign up all the same)."""
        c = await _ok(api.post(f"/v1/sub-accounts/{sa}/campaigns", json={
            "name": "live", "channel": "sms", "audience": {"tags_any": ["all"]},
            "body": "Hi {{first_name}}, news. Reply STOP to opt out.",
            "window_start": start, "window_end": end}))
        sub_account = await tenants.get_sub_account(hub.pool, UUID(sa))
        await campaign_actions.do_launch_campaign(hub, sub_account, UUID(c["id"]))

    @staticmethod
    async def _wait_accepted(carrier: httpx.AsyncClient, n: int,
                             timeout: float) -> int:
        """How many first messages the carrier accepted: all n, or as many as by the
        timeout."""
        started = time.monotonic()
        accepted = 0
        while time.monotonic() - started < timeout:
            accepted = (await carrier.get("/sandbox/stats")).json()["accepted"]["total"]
            if accepted >= n:
                break
            await asyncio.sleep(1.0)
        return accepted

    async def _cold_start(self, hub: Hub, principal: Principal, api: httpx.AsyncClient,
                          carrier: httpx.AsyncClient, carrier_url: str) -> dict[str, Any]:
        """One message at a time, so nothing queues: REST send → carrier accepted, and
        REST send → its 202 (persisted and handed to the shard), which is part of it."""
        sas = await self._sub_accounts(hub, principal, api, carrier_url, self.cold,
                                       offset=self.n + 1)
        times: dict[str, list[float]] = {"cold": [], "warm": [], "cold_202": [], "warm_202": []}
        for kind in ("cold", "warm"):
            for i, sa in enumerate(sas):
                to = f"+1628{5000000 + i * 2 + (kind == 'warm')}"
                since = (await carrier.get("/sandbox/stats")).json()["log_size"]
                t = time.time()
                await _ok(api.post(f"/v1/sub-accounts/{sa}/messages", json={
                    "channel": "sms", "to": to, "body": "Your code is 1234"},
                    headers={"Idempotency-Key": uuid4().hex}))
                times[f"{kind}_202"].append((time.time() - t) * 1000)
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    rows = (await carrier.get("/sandbox/requests",
                                              params={"since": since})).json()["requests"]
                    hit = [r for r in rows if r["to"] == to]
                    if hit:
                        times[kind].append((hit[0]["time"] - t) * 1000)
                        break
                    await asyncio.sleep(0.002)
        return {kind: {"n": len(v), "p50_ms": round(statistics.median(v), 1),
                       "p95_ms": round(_percentile(v, 95), 1), "max_ms": round(max(v), 1)}
                for kind, v in times.items() if v}


def throughput(recipients: int) -> dict[str, Any]:
    """hub bench campaign on one node, then on a two-node local cluster, same run."""
    from ray.cluster_utils import Cluster

    settings = Settings(log_level="WARNING")
    out: dict[str, Any] = {}
    bench = CampaignBench(recipients=recipients)
    os.environ.pop("RAY_ADDRESS", None)
    out["one_node"] = bench.run(settings, console)
    cluster = Cluster(initialize_head=True, head_node_args={"include_dashboard": False})
    try:
        cluster.add_node()
        cluster.wait_for_nodes()
        os.environ["RAY_ADDRESS"] = cluster.address
        out["two_nodes"] = bench.run(settings, console)
    finally:
        os.environ.pop("RAY_ADDRESS", None)
        cluster.shutdown()
    one, two = out["one_node"]["send_rate_per_s"], out["two_nodes"]["send_rate_per_s"]
    out["two_over_one"] = round(two / one, 2) if one else None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sub-accounts", type=int, default=10_000)
    parser.add_argument("--cold", type=int, default=30, help="fresh sub-accounts timed")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-wait", type=float, default=900.0,
                        help="seconds to wait for every sub-account's first message")
    parser.add_argument("--settle", type=float, default=0.0,
                        help="seconds to wait after the first messages before timing sends")
    parser.add_argument("--throughput", action="store_true",
                        help="also campaign throughput on one node vs a two-node cluster")
    parser.add_argument("--recipients", type=int, default=20_000,
                        help="audience of the throughput campaign")
    args = parser.parse_args()
    # Ray state of our own, so that no other `ray.init()` on this machine joins our clusters.
    ray_tmp = tempfile.mkdtemp(prefix="hubdensity-ray-")
    os.environ.setdefault("RAY_TMPDIR", ray_tmp)
    try:
        run(args)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def run(args: argparse.Namespace) -> None:
    result: dict[str, Any] = {}
    if args.sub_accounts:
        result["density"] = Density(args.sub_accounts, args.cold, args.concurrency,
                                    args.max_wait, args.settle).run(
                                        Settings(log_level="WARNING"))
        d = result["density"]
        console.print(f"{d['sub_accounts']:,} sub-accounts, {d['live_campaigns']:,} live "
                      f"campaigns, {d['first_messages_accepted']:,} first messages sent in "
                      f"{d['first_messages_seconds']} s; per sub-account: "
                      f"{d['per_sub_account_kb']} KB")
        console.print(f"cold start: {d['cold_start']}")
    if args.throughput:
        result["throughput"] = throughput(args.recipients)
        t = result["throughput"]
        console.print(f"send rate one node {t['one_node']['send_rate_per_s']:,.0f}/s, two "
                      f"nodes {t['two_nodes']['send_rate_per_s']:,.0f}/s "
                      f"(×{t['two_over_one']})")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
