"""`hub bench campaign`: one bulk SMS campaign end to end (REST launch, the Ray scheduler and
sender shards, PostgreSQL, Redis) against the sandbox carrier in its own process, beside the
raw HTTP ceiling to that carrier measured in the same run. The machine is noisy: read ratios.

Process layout (so that no two parts share a GIL): this process seeds, drives the REST API and
samples memory; the gateway is `hub serve` (it starts Ray and the shards); the carrier is
`hub carrier`; the raw ceiling runs in a process of its own. The hub's memory is the sum over
the gateway, every process under it (GCS, raylet, Ray workers and agents) and the embedded
PostgreSQL and Redis; the carrier and this process are left out. CPU is counted for every part,
the carrier and this process included (`cpu_ticks`), from launch until the carrier has every
message, with the WAL PostgreSQL wrote meanwhile.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import psutil
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from channels.twilio_client import TwilioTransport
from config.settings import Settings
from hub import actions, db
from hub.context import Hub
from hub.embedded import Services, start_services

ACCOUNT_SID = "AC" + "b0" * 16
AUTH_TOKEN = "bench-auth-token"
BODY = "Hi {{first_name}}, 20% off this week. Reply STOP to opt out."
#: Connections one Sender shard opens to a provider: the raw ceiling uses as many.
HUB_CONCURRENCY: int = inspect.signature(TwilioTransport).parameters["concurrency"].default
#: Keys of the JSON result line (the smoke test checks them); REPLY_FIELDS with replies.
RESULT_FIELDS = (
    "recipients", "expected_sends", "carrier_accepted", "hub_sent", "senders", "sender_mps",
    "concurrency", "seed_seconds", "launch_seconds", "first_send_seconds", "send_seconds",
    "send_rate_per_s", "steady_rate_per_s", "completion_seconds", "raw_ceiling_req_per_s",
    "raw_runs_req_per_s", "ratio_to_raw", "steady_ratio_to_raw", "idle_rss_mb",
    "peak_rss_mb", "peak_rss_by_group_mb", "peak_pss_mb", "hub_processes", "row_versions",
    "cpu_seconds", "cpu_s_by_group", "wal_bytes")
REPLY_FIELDS = ("replies", "replies_found", "replies_during_bulk", "reply_p50_ms",
                "reply_p95_ms", "reply_p99_ms", "reply_max_ms")
SEED_CHUNK = 100_000
STALL_S = 120.0  # no carrier progress for this long: the campaign stalled, stop and say so
#: The gateway's Ray, unless the environment says otherwise: a Ray of its own (without an
#: address Ray joins whatever local cluster another program started), and actor processes at
#: the same CPU priority as the carrier, PostgreSQL and the raw-ceiling client (Ray starts
#: workers at nice 15, which on a busy machine leaves the Sender shards the scraps).
RAY_ENV = {"RAY_ADDRESS": "local", "RAY_worker_niceness": "0"}


class BenchError(RuntimeError):
    """The benchmark could not run or finish; the message says where to look."""


# --- processes ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Children:
    """The carrier and gateway processes this benchmark starts, with their logs."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        out = (self.log_dir / f"{name}.log").open("wb")
        self._logs.append(out)
        proc = subprocess.Popen([sys.executable, "-m", "hub.cli", *args], env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def tail(self, name: str, chars: int = 3000) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def wait_http(self, name: str, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2) as client:
            while time.monotonic() < deadline:
                if self.procs[name].poll() is not None:
                    raise BenchError(f"{name} exited:\n{self.tail(name)}")
                with contextlib.suppress(httpx.TransportError):
                    if client.get(url).status_code == 200:
                        return
                time.sleep(0.2)
        raise BenchError(f"{name} did not answer {url} within {timeout:.0f} s:\n"
                         f"{self.tail(name)}")

    def stop(self) -> None:
        """SIGTERM each (the gateway shuts Ray down on the way out), then make sure nothing
        it spawned outlives it."""
        for proc in reversed(self.procs.values()):
            if proc.poll() is not None:
                continue
            try:
                spawned = psutil.Process(proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                spawned = []
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            _, alive = psutil.wait_procs(spawned, timeout=10)
            for p in alive:
                with contextlib.suppress(psutil.Error):
                    p.kill()
        for out in self._logs:
            out.close()


# --- memory -------------------------------------------------------------------------------


def _pid_file(path: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(path.read_text().split()[0])
    return None


def _pss(pid: int) -> int:
    """Proportional set size: shared pages (PostgreSQL's buffers, libraries) counted once
    across processes. Reading it costs ~1 ms a process, so it is sampled less often."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup", "rb") as f:
        for line in f:
            if line.startswith(b"Pss:"):
                return int(line.split()[1]) * 1024
    return 0


class HubMemory:
    """Samples the hub's memory every `every_s` in a thread: RSS summed over its processes
    (shared pages count once per process that maps them, so PostgreSQL's shared buffers
    count many times), and PSS (each page once) every `pss_every` samples."""

    def __init__(self, gateway_pid: int, settings: Settings, every_s: float = 0.5,
                 pss_every: int = 10) -> None:
        self.gateway_pid, self.every_s, self.pss_every = gateway_pid, every_s, pss_every
        data_dir = settings.data_dir.resolve()
        # Servers given by URL are someone else's: only embedded ones count as the hub's.
        self.pg_pid_file = None if settings.database_url else data_dir / "pg" / "postmaster.pid"
        self.redis_pid_file = None if settings.redis_url else data_dir / "redis" / "redis.pid"
        self.peak_rss, self.peak_pss, self.samples = 0, 0, 0
        self.peak_groups: dict[str, int] = {}
        self.processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hub-memory", daemon=True)

    def groups(self) -> dict[str, list[psutil.Process]]:
        out: dict[str, list[psutil.Process]] = {"gateway": [], "ray": [], "postgres": [],
                                                "redis": []}
        with contextlib.suppress(psutil.Error):
            gateway = psutil.Process(self.gateway_pid)
            out["gateway"], out["ray"] = [gateway], gateway.children(recursive=True)
        for name, pid_file in (("postgres", self.pg_pid_file), ("redis", self.redis_pid_file)):
            pid = _pid_file(pid_file) if pid_file else None
            with contextlib.suppress(psutil.Error):
                if pid:
                    root = psutil.Process(pid)
                    out[name] = [root, *root.children(recursive=True)]
        return out

    def sample(self, with_pss: bool) -> int:
        rss: dict[str, int] = {}
        pss = n = 0
        for name, procs in self.groups().items():
            rss[name] = 0
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    rss[name] += p.memory_info().rss
                    n += 1
                    if with_pss:
                        pss += _pss(p.pid)
        total = sum(rss.values())
        if total > self.peak_rss:
            self.peak_rss, self.peak_groups, self.processes = total, rss, n
        self.peak_pss = max(self.peak_pss, pss)
        self.samples += 1
        return total

    def idle(self, seconds: float = 2.0) -> int:
        """The hub at rest (everything started, nothing sending): the median of a few
        samples, taken before the sampling thread starts."""
        values = []
        for _ in range(max(1, int(seconds / self.every_s))):
            values.append(self.sample(with_pss=False))
            time.sleep(self.every_s)
        self.peak_rss = self.peak_pss = 0
        return sorted(values)[len(values) // 2]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            self.sample(with_pss=i % self.pss_every == 0)
            i += 1
            self._stop.wait(self.every_s)


# --- CPU ----------------------------------------------------------------------------------


def cpu_ticks(roots: dict[str, int | None]) -> dict[str, int]:
    """CPU clock ticks used so far (user + system, with children that exited) by each part
    of the machine: each root's process tree, except that under the gateway each Ray actor
    worker counts by its class (its title, `ray::SenderShell`), a `python -m` helper by its
    module and the rest as Ray's daemons (GCS, raylet, agents, log monitor); `machine` is
    every core's busy time (/proc/stat), so the rest of the machine is `machine` minus the
    groups. Read before and after a run, the difference is what the run cost each part."""
    ticks: dict[str, int] = {}
    seen: set[int] = set()
    for name, pid in roots.items():
        if pid is None:  # a server the hub did not start (DATABASE_URL, REDIS_URL)
            continue
        try:
            root = psutil.Process(pid)
            # The bench's own children (the gateway, the carrier) are roots of their own.
            procs = [root] if name == "bench" else [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        for p in procs:
            with contextlib.suppress(psutil.Error, OSError, IndexError, ValueError):
                group = name
                if name == "gateway" and p.pid != pid:
                    cmd = p.cmdline() or [""]
                    group = (cmd[0].split(".")[0].split()[0] if cmd[0].startswith("ray::")
                             else cmd[cmd.index("-m") + 1] if "-m" in cmd[:-1]
                             else "ray daemons")
                fields = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
                if p.pid not in seen:  # utime, stime, cutime, cstime
                    ticks[group] = ticks.get(group, 0) + sum(map(int, fields[11:15]))
                    seen.add(p.pid)
    with open("/proc/stat") as f:  # user nice system idle iowait irq softirq steal
        cpu = [int(v) for v in f.readline().split()[1:9]]
    ticks["machine"] = sum(cpu) - cpu[3] - cpu[4]
    return ticks


def cpu_split(before: dict[str, int], after: dict[str, int]) -> dict[str, float]:
    """CPU seconds per group between two `cpu_ticks` readings, busiest first, with `other`
    (the rest of the machine) last."""
    hz = os.sysconf("SC_CLK_TCK")
    spent = {g: (after[g] - before.get(g, 0)) / hz for g in after if g != "machine"}
    out = {g: round(s, 2) for g, s in sorted(spent.items(), key=lambda kv: -kv[1])}
    out["other"] = round((after["machine"] - before["machine"]) / hz - sum(spent.values()), 2)
    return out


# --- the raw ceiling ----------------------------------------------------------------------


def raw_ceiling(carrier_url: str, n: int, concurrency: int, from_: str) -> float:
    """Plain form POSTs of the hub's Twilio Messages.json request to the carrier,
    `concurrency` at a time: the most any sender could get through. Measured with aiohttp and
    with the hub's own lean client (`channels.http_post`), the faster kept, so that a faster
    sender never reads better against a slower baseline. Run in its own process."""
    import aiohttp
    from yarl import URL

    from channels.http_post import Endpoint, PostPool
    from channels.twilio_client import form_body

    endpoint = f"{carrier_url}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
    auth = "Basic " + base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
    slots = asyncio.Semaphore(concurrency)

    def form(i: int) -> dict[str, str]:
        return {"To": f"+1999{i % 10_000_000:07d}", "From": from_,
                "Body": f"Hi Pat{i}, 20% off this week. Reply STOP to opt out.",
                "StatusCallback": "http://127.0.0.1:9/v1/providers/twilio/sms/status"
                                  f"?message_id=raw-{i}"}

    async def timed(post: Callable[[int], Awaitable[int]]) -> float:
        async def one(i: int) -> None:
            async with slots:
                if (status := await post(i)) != 201:
                    raise RuntimeError(f"the carrier answered {status}")

        await asyncio.gather(*(one(i) for i in range(200)))  # warm the pool
        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return n / (time.perf_counter() - started)

    async def with_aiohttp() -> float:
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector,
                                         headers={"Authorization": auth}) as session:

            async def post(i: int) -> int:
                async with session.post(endpoint, data=form(i)) as r:
                    await r.read()
                    return r.status

            return await timed(post)

    async def lean() -> float:
        pool = PostPool()
        target = Endpoint(URL(endpoint), {
            "Authorization": auth, "Content-Type": "application/x-www-form-urlencoded"})

        async def post(i: int) -> int:
            return (await pool.post(target, form_body(list(form(i).items())))).status

        try:
            return await timed(post)
        finally:
            await pool.close()

    async def main() -> float:
        rates = {"aiohttp": await with_aiohttp(), "http_post": await lean()}
        print("raw ceiling, req/s: " + ", ".join(f"{k} {v:,.0f}" for k, v in rates.items()),
              file=sys.stderr)
        return max(rates.values())

    return asyncio.run(main())


# --- the benchmark ------------------------------------------------------------------------


def _percentile(values: list[float], p: float) -> float:
    """Nearest rank: with 100 samples p99 is the second largest."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def open_window_now() -> tuple[str, str]:
    """A sending window around the current UTC hour, for contacts in Etc/GMT."""
    h = datetime.now(UTC).hour
    return f"{(h - 1) % 24:02d}:00", f"{(h + 3) % 24:02d}:00"


def quiet_hours_away_from_now(zone: str = "UTC") -> dict[str, str]:
    """One quiet hour on `zone`'s clock, of the night (21:00–08:00, where real quiet hours
    fall) and the farthest such from now. The sending hours it leaves hold every window these
    tests give: daytime ones (10:00–18:00) and those that follow the clock, from an hour
    before now to seven after (`open_window_now`), even when the hour turns between setting
    it and creating a campaign. Quiet hours around now would refuse those windows."""
    middle = datetime.now(ZoneInfo(zone)).hour + 3  # of the windows that follow the clock

    def distance(hour: int) -> int:
        return min((hour - middle) % 24, (middle - hour) % 24)

    q = max(((21 + i) % 24 for i in range(11)), key=distance)
    return {"quiet_start": f"{q:02d}:00", "quiet_end": f"{(q + 1) % 24:02d}:00"}


def sending_hours_now() -> dict[str, str]:
    """Quiet hours that leave `open_window_now` inside the sending hours, whatever the time
    of day and even if the hour turns before the campaign is created: a campaign's window
    must lie inside them."""
    return quiet_hours_away_from_now("UTC")


@dataclass
class Live:
    """What the bench knows while the campaign runs."""

    accepted: int = 0  # the carrier's count, the ground truth
    hub_counts: dict[str, int] = field(default_factory=dict)  # from the realtime feed
    status: str = "running"
    all_accepted_at: float | None = None  # perf_counter
    #: (`cpu_ticks`, WAL position) at launch and when every message was accepted
    readings: list[tuple[dict[str, int], int]] = field(default_factory=list)
    at_speed: asyncio.Event = field(default_factory=asyncio.Event)  # a tenth is out


@dataclass
class CampaignBench:
    recipients: int = 100_000
    senders: int = 10
    mps: float = 1000.0
    replies: int = 0
    reply_every_s: float = 0.2
    raw_requests: int = 0  # 0: min(recipients, 20,000), at least 2,000

    def run(self, settings: Settings, console: Console) -> dict[str, Any]:
        own_dir = not os.environ.get("HUB_DATA_DIR")
        data_dir = Path(tempfile.mkdtemp(prefix="hubbench-", dir="/tmp" if Path(
            "/tmp").is_dir() else None)) if own_dir else settings.data_dir.resolve()
        settings = settings.model_copy(update={"data_dir": data_dir})
        children = Children(data_dir / "bench-logs")
        services: Services | None = None
        try:
            with console.status("starting PostgreSQL, Redis, the carrier and the gateway "
                                "(Ray)…"):
                services = start_services(settings)
                asyncio.run(db.migrate(services.database_url))
                carrier_url, gateway_url = self._start(children, settings, services)
            return asyncio.run(self._measure(settings, services, children, carrier_url,
                                             gateway_url, console))
        finally:
            children.stop()
            if services is not None:
                services.stop()
            if own_dir:
                shutil.rmtree(data_dir, ignore_errors=True)

    def _start(self, children: Children, settings: Settings,
               services: Services) -> tuple[str, str]:
        carrier_port, port = _free_port(), _free_port()
        env = dict(os.environ)
        children.start("carrier", ["carrier"], {**env, "HUB_CARRIER_PORT": str(carrier_port)})
        children.start("gateway", ["serve"], {
            **env, "HUB_DATA_DIR": str(settings.data_dir), "HUB_HOST": "127.0.0.1",
            "HUB_PORT": str(port), "HUB_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "DATABASE_URL": services.database_url, "REDIS_URL": services.redis_url,
            "HUB_ACTORS": "true", **RAY_ENV, **{k: env[k] for k in RAY_ENV if k in env}})
        carrier_url, gateway_url = f"http://127.0.0.1:{carrier_port}", f"http://127.0.0.1:{port}"
        children.wait_http("carrier", f"{carrier_url}/sandbox/healthz", 60)
        children.wait_http("gateway", f"{gateway_url}/readyz", 300)
        return carrier_url, gateway_url

    async def _measure(self, settings: Settings, services: Services, children: Children,
                       carrier_url: str, gateway_url: str, console: Console) -> dict[str, Any]:
        hub = await Hub.open(settings, services.database_url, services.redis_url)
        try:
            _, key = await actions.do_create_agency(hub, "bench")
            async with httpx.AsyncClient(base_url=gateway_url, timeout=600, headers={
                    "Authorization": f"Bearer {key}"}) as api:
                sa = (await _ok(api.post("/v1/sub-accounts", json={
                    "name": "bench", **sending_hours_now()})))["id"]
                numbers = await self._senders(api, sa, carrier_url)
            started = time.perf_counter()
            conversations = await self._seed(hub, sa)
            seed_s = time.perf_counter() - started
        finally:
            await hub.close()
        async with httpx.AsyncClient(base_url=gateway_url, timeout=600, headers={
                "Authorization": f"Bearer {key}"}) as api, \
                httpx.AsyncClient(base_url=carrier_url, timeout=60) as carrier:
            await carrier.post("/sandbox/config", json={"callbacks_enabled": False})
            raw_runs = [await self._raw(carrier_url, numbers[0])]
            await carrier.delete("/sandbox/requests")
            memory = HubMemory(children.procs["gateway"].pid, settings)
            idle = await asyncio.to_thread(memory.idle)
            roots = {"gateway": memory.gateway_pid, "carrier": children.procs["carrier"].pid,
                     "bench": os.getpid(), **{name: _pid_file(f) if f else None for name, f in (
                         ("postgres", memory.pg_pid_file), ("redis", memory.redis_pid_file))}}
            conn = await asyncpg.connect(services.database_url)

            async def reading() -> tuple[dict[str, int], int]:
                wal = await conn.fetchval(
                    "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint")
                return cpu_ticks(roots), int(wal)

            memory.start()
            try:
                run = await self._campaign(api, carrier, sa, conversations, console, reading)
            finally:
                memory.stop()
                await conn.close()
            raw_runs.append(await self._raw(carrier_url, numbers[0]))
        result = self._result(run, raw_runs, memory, idle, seed_s)
        result["row_versions"] = await _row_versions(services.database_url)
        if result.get("cpu_s_by_group"):
            _print_cpu(console, result)
        return result

    async def _senders(self, api: httpx.AsyncClient, sa: str, carrier_url: str) -> list[str]:
        provider = await _ok(api.post(f"/v1/sub-accounts/{sa}/providers", json={
            "provider": "twilio", "name": "sandbox", "account_id": ACCOUNT_SID,
            "secret": AUTH_TOKEN, "base_url": carrier_url}))
        numbers = [str(72000 + i) for i in range(self.senders)]  # short codes: digits only
        for number in numbers:
            await _ok(api.post(f"/v1/sub-accounts/{sa}/senders", json={
                "provider_account_id": provider["id"], "channel": "sms", "kind": "short_code",
                "address": number, "mps": self.mps}))
        return numbers

    async def _seed(self, hub: Hub, sa: str) -> list[str]:
        """The audience (tag `bulk`) by INSERT … SELECT, 100k rows a statement (the pool's
        command timeout), and the agents' contacts (tag `agent`, outside the audience) with
        a conversation each. Returns the conversations."""
        for first in range(1, self.recipients + 1, SEED_CHUNK):
            await hub.pool.execute(
                """INSERT INTO contacts (sub_account_id, phone, first_name, timezone, tags)
                   SELECT $1, '+1' || (ARRAY['212','312','415','617'])[1 + i % 4]
                                   || (2000000 + i)::text,
                          'Pat' || i, 'Etc/GMT', ARRAY['bulk']
                   FROM generate_series($2::int, $3::int) i""",
                sa, first, min(first + SEED_CHUNK - 1, self.recipients))
        rows = await hub.pool.fetch(
            """WITH agents AS (
                   INSERT INTO contacts (sub_account_id, phone, first_name, timezone, tags)
                   SELECT $1, '+1646' || (5550000 + i)::text, 'Agent' || i, 'Etc/GMT',
                          ARRAY['agent']
                   FROM generate_series(1, $2) i RETURNING id)
               INSERT INTO conversations (sub_account_id, contact_id, channel)
               SELECT $1, id, 'sms' FROM agents RETURNING id""", sa, self.replies)
        await hub.pool.execute("ANALYZE contacts")
        return [str(r["id"]) for r in rows]

    async def _raw(self, carrier_url: str, from_: str) -> float:
        n = self.raw_requests or max(2000, min(self.recipients, 20_000))
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            return await asyncio.get_running_loop().run_in_executor(
                pool, raw_ceiling, carrier_url, n, HUB_CONCURRENCY, from_)

    async def _campaign(self, api: httpx.AsyncClient, carrier: httpx.AsyncClient, sa: str,
                        conversations: list[str], console: Console,
                        reading: Callable[[], Awaitable[tuple[dict[str, int], int]]],
                        ) -> dict[str, Any]:
        start, end = open_window_now()
        c = await _ok(api.post(f"/v1/sub-accounts/{sa}/campaigns", json={
            "name": f"bench {self.recipients:,}", "channel": "sms",
            "audience": {"tags_any": ["bulk"]}, "body": BODY,
            "window_start": start, "window_end": end}))
        base = f"/v1/sub-accounts/{sa}/campaigns/{c['id']}"
        live = Live()
        sent: list[tuple[float, str]] = []
        feed = asyncio.create_task(_follow_feed(api, sa, c["id"], live))
        replying = asyncio.create_task(self._replies(api, sa, conversations, live, sent))
        try:
            live.readings.append(await reading())
            launched_wall = time.time()
            launched = time.perf_counter()
            await _ok(api.post(f"{base}/launch",
                               headers={"Idempotency-Key": f"launch-{c['id']}"}))
            launch_s = time.perf_counter() - launched
            await self._watch(api, carrier, base, live, launched, console, reading)
            during_bulk = await replying
        finally:
            feed.cancel()
            replying.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await feed
        campaign = await _ok(api.get(base))
        stats = await _ok(api.get(f"{base}/stats"))
        times = await _carrier_times(carrier, {mid for _, mid in sent})
        return {"launched": launched, "launched_wall": launched_wall, "launch_s": launch_s,
                "live": live, "campaign": campaign, "stats": stats, "times": times,
                "replies": sent, "replies_during_bulk": during_bulk,
                "feed_error": repr(feed.exception()) if feed.done() and not feed.cancelled()
                and feed.exception() else None}

    async def _watch(self, api: httpx.AsyncClient, carrier: httpx.AsyncClient, base: str,
                     live: Live, launched: float, console: Console,
                     reading: Callable[[], Awaitable[tuple[dict[str, int], int]]]) -> None:
        """Until the carrier has every message and the campaign says completed; a campaign
        that stops moving is reported, not waited on forever."""
        expected = self.recipients + self.replies
        columns = (TextColumn("{task.description:<34}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[rate]:>9}"), TimeElapsedColumn())
        last_change, last_count = time.monotonic(), -1
        with Progress(*columns, console=console, refresh_per_second=4) as bar:
            hub_task = bar.add_task("hub: sent (realtime feed)", total=self.recipients,
                                    rate="")
            carrier_task = bar.add_task("carrier: accepted (/sandbox/stats)", total=expected,
                                        rate="")
            tick = 0
            while True:
                stats = (await carrier.get("/sandbox/stats")).json()
                live.accepted = int(stats["accepted"]["total"])
                now = time.perf_counter()
                if live.accepted >= min(self.recipients, max(1000, self.recipients // 10)):
                    live.at_speed.set()
                if live.accepted >= expected and live.all_accepted_at is None:
                    live.all_accepted_at = now
                    live.readings.append(await reading())
                if tick % 2 == 0:
                    live.status = (await _ok(api.get(base)))["status"]
                tick += 1
                elapsed = max(now - launched, 1e-9)
                bar.update(carrier_task, completed=live.accepted,
                           rate=f"{live.accepted / elapsed:,.0f}/s")
                bar.update(hub_task, completed=_hub_sent(live.hub_counts), rate=live.status)
                if live.accepted != last_count:
                    last_change, last_count = time.monotonic(), live.accepted
                if live.all_accepted_at is not None and live.status == "completed":
                    counts = (await _ok(api.get(f"{base}/stats")))["counts"]
                    bar.update(hub_task, completed=_hub_sent(counts))
                    return
                if live.status in ("completed", "canceled", "paused") and \
                        time.monotonic() - last_change > 5:
                    return  # finished short of the expected count: reported in the result
                if time.monotonic() - last_change > STALL_S:
                    detail = await api.get(f"{base}/stats")
                    raise BenchError(f"the campaign stalled at {live.accepted:,} of "
                                     f"{expected:,} accepted: {detail.text}")
                await asyncio.sleep(0.5)

    async def _replies(self, api: httpx.AsyncClient, sa: str, conversations: list[str],
                       live: Live, sent: list[tuple[float, str]]) -> int:
        """Agent replies, one every `reply_every_s`, once the bulk send is at full speed.
        Each is timed from just before its POST (wall clock, as the carrier logs). Returns
        how many were posted while bulk messages were still going out."""
        if not conversations:
            return 0
        await live.at_speed.wait()

        async def reply(i: int, conversation: str) -> None:
            t0 = time.time()
            msg = await _ok(api.post(
                f"/v1/sub-accounts/{sa}/conversations/{conversation}/messages",
                json={"body": f"Thanks, see you at 3pm (reply {i})"},
                headers={"Idempotency-Key": f"bench-reply-{i}"}))
            sent.append((t0, msg["id"]))

        tasks, during_bulk = [], 0
        for i, conversation in enumerate(conversations):
            if live.accepted < self.recipients:
                during_bulk += 1
            tasks.append(asyncio.create_task(reply(i, conversation)))
            await asyncio.sleep(self.reply_every_s)
        await asyncio.gather(*tasks)
        return during_bulk

    def _result(self, run: dict[str, Any], raw_runs: list[float], memory: HubMemory,
                idle: int, seed_s: float) -> dict[str, Any]:
        live: Live = run["live"]
        times, campaign = run["times"], run["campaign"]
        launched, wall = run["launched"], run["launched_wall"]
        bulk_first, bulk_last = times["bulk_first"], times["bulk_last"]
        send_s = (bulk_last - wall) if bulk_last else float("nan")
        steady = (times["bulk"] - 1) / (bulk_last - bulk_first) \
            if bulk_last and bulk_first and bulk_last > bulk_first else float("nan")
        completion = (datetime.fromisoformat(campaign["completed_at"]) -
                      datetime.fromisoformat(campaign["launched_at"])).total_seconds() \
            if campaign.get("completed_at") else float("nan")
        raw = max(raw_runs)
        mb = 1024 * 1024
        result: dict[str, Any] = {
            "recipients": self.recipients, "expected_sends": self.recipients + self.replies,
            "carrier_accepted": live.accepted,
            "hub_sent": _hub_sent(run["stats"]["counts"]), "senders": self.senders,
            "sender_mps": self.mps, "concurrency": HUB_CONCURRENCY,
            "seed_seconds": round(seed_s, 2), "launch_seconds": round(run["launch_s"], 2),
            "first_send_seconds": round(bulk_first - wall, 2) if bulk_first else None,
            "send_seconds": round(send_s, 2),
            "send_rate_per_s": round(self.recipients / send_s, 1),
            "steady_rate_per_s": round(steady, 1),
            "completion_seconds": round(completion, 2),
            "raw_ceiling_req_per_s": round(raw, 1),
            "raw_runs_req_per_s": [round(r, 1) for r in raw_runs],
            "ratio_to_raw": round(self.recipients / send_s / raw, 3),
            "steady_ratio_to_raw": round(steady / raw, 3),
            "idle_rss_mb": round(idle / mb), "peak_rss_mb": round(memory.peak_rss / mb),
            "peak_rss_by_group_mb": {k: round(v / mb) for k, v in memory.peak_groups.items()},
            "peak_pss_mb": round(memory.peak_pss / mb), "hub_processes": memory.processes,
            "campaign_status": campaign["status"], "memory_samples": memory.samples,
            "watch_seconds": round(time.perf_counter() - launched, 2),
            "feed_error": run["feed_error"],
        }
        if len(live.readings) == 2 and live.all_accepted_at is not None:
            (before, wal_before), (after, wal_after) = live.readings
            result.update({"cpu_seconds": round(live.all_accepted_at - launched, 2),
                           "cpu_s_by_group": cpu_split(before, after),
                           "wal_bytes": wal_after - wal_before})
        if self.replies:
            latencies = [(times["replies"][mid] - t0) * 1000 for t0, mid in run["replies"]
                         if mid in times["replies"]]
            result.update({
                "replies": self.replies, "replies_found": len(latencies),
                "replies_during_bulk": run["replies_during_bulk"]})
            for p in (50, 95, 99):
                result[f"reply_p{p}_ms"] = round(_percentile(latencies, p), 1) \
                    if latencies else None
            result["reply_max_ms"] = round(max(latencies), 1) if latencies else None
        return result


# --- helpers ------------------------------------------------------------------------------


async def _ok(response: Any) -> dict[str, Any]:
    r: httpx.Response = await response
    if r.status_code >= 300:
        raise BenchError(f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text}")
    body: dict[str, Any] = r.json()
    return body


async def _row_versions(database_url: str) -> dict[str, dict[str, int]]:
    """Row versions the send path wrote in this run's own database (rows inserted, updated,
    of them HOT). Read 11 s after the run: a backend that went idle reports its counts
    within 10 s (PostgreSQL's PGSTAT_IDLE_INTERVAL)."""
    await asyncio.sleep(11.0)
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            """SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables
               WHERE relname IN ('messages', 'campaign_recipients')""")
    finally:
        await conn.close()
    return {r["relname"]: {"inserted": r["n_tup_ins"], "updated": r["n_tup_upd"],
                           "hot": r["n_tup_hot_upd"]} for r in rows}


def _print_cpu(console: Console, result: dict[str, Any]) -> None:
    """CPU of each part over the campaign (launch → every message accepted), per 1,000."""
    mb = result["wal_bytes"] / 2**20
    table = Table(title=f"CPU from launch to every message accepted "
                        f"({result['cpu_seconds']:.1f} s), WAL {mb:,.0f} MB")
    for column in ("process group", "CPU s", "ms per 1,000 messages", "cores"):
        table.add_column(column, justify="left" if column == "process group" else "right")
    per_1k = 1000 * 1000 / result["expected_sends"]
    for group, seconds in result["cpu_s_by_group"].items():
        table.add_row(group, f"{seconds:.2f}", f"{seconds * per_1k:.0f}",
                      f"{seconds / result['cpu_seconds']:.2f}")
    console.print(table)


def _hub_sent(counts: dict[str, int]) -> int:
    return sum(counts.get(s, 0) for s in ("sent", "delivered", "read", "undelivered"))


async def _follow_feed(api: httpx.AsyncClient, sa: str, campaign_id: str, live: Live) -> None:
    """The campaign's `campaign.progress` events from the realtime feed, as a dashboard
    would get them (about one a second, with the counts)."""
    import websockets

    ticket = (await _ok(api.post("/v1/realtime/tickets", json={"sub_account_id": sa})))
    url = str(api.base_url).replace("http", "ws", 1).rstrip("/")
    async with websockets.connect(f"{url}/v1/realtime?ticket={ticket['ticket']}",
                                  max_size=None) as ws:
        await ws.send(json.dumps({"type": "subscribe", "topics": [f"campaign:{campaign_id}"],
                                  "since": None}))
        async for raw in ws:
            frame = json.loads(raw)
            if frame["type"] == "ping":
                await ws.send('{"type": "pong"}')
            elif frame["type"] == "event" and frame["event"] == "campaign.progress":
                live.hub_counts = frame["data"]["counts"]


async def _carrier_times(carrier: httpx.AsyncClient, reply_ids: set[str]) -> dict[str, Any]:
    """When the carrier logged the first and last bulk message and each reply. Without
    replies only the two ends of the log are read (the log of 1M sends is large)."""
    total = (await carrier.get("/sandbox/stats")).json()["log_size"]
    out: dict[str, Any] = {"bulk_first": None, "bulk_last": None, "bulk": total,
                           "replies": {}}
    if not total:
        return out
    if not reply_ids:
        first = (await carrier.get("/sandbox/requests", params={"limit": 1})).json()
        last = (await carrier.get("/sandbox/requests", params={"since": total - 1})).json()
        out["bulk_first"] = first["requests"][0]["time"]
        out["bulk_last"] = last["requests"][-1]["time"]
        return out
    bulk_times: list[float] = []
    since = 0
    while since < total:
        page = (await carrier.get("/sandbox/requests",
                                  params={"since": since, "limit": 50_000})).json()
        if not page["requests"]:
            break
        for q in page["requests"]:
            if q.get("message_id") in reply_ids:
                out["replies"][q["message_id"]] = q["time"]
            else:
                bulk_times.append(q["time"])
        since = page["next_since"]
    out["bulk"] = len(bulk_times)
    if bulk_times:
        out["bulk_first"], out["bulk_last"] = min(bulk_times), max(bulk_times)
    return out

