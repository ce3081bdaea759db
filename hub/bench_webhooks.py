"""`python -m hub.bench_webhooks`: provider webhooks under load, each figure beside a baseline
measured in the same run (the machine is shared and noisy: read ratios).

1. Ingest: signed Twilio status callbacks through the real gateway (signature check against
   the provider account's encrypted token, durable inbox row, deduplication, 204) beside a
   bare FastAPI app whose one POST endpoint reads the body and answers 204. Same requests,
   same aiohttp client, same concurrency, each server a uvicorn process of its own
   (1 worker, uvloop + httptools) on loopback. Afterwards every callback is counted as
   stored, applied and its message delivered, and the time the background apply took after
   the last acknowledgement is reported.
2. Webhook → WebSocket: realtime clients (default 500: 50 sub-accounts × 10 clients, each
   subscribed to `inbox` of its own sub-account, so every event reaches 10 clients) in
   client processes of their own; callbacks are posted at a fixed rate spread round-robin
   over the sub-accounts' messages; latency = the client's receive time − the time the
   callback POST was sent (CLOCK_MONOTONIC, system-wide on Linux), matched by message id.
   Every client must get every event of its sub-account: misses are counted.

Process layout: this process seeds PostgreSQL, pre-computes and signs the requests and
drives them (aiohttp); the gateway, the webhook applier (hub/applier.py, as `hub serve`
runs it), the bare app and each WebSocket client process (hub/bench_webhooks_clients.py)
run apart, so no two share a GIL. `--workers N` runs both
the gateway and the bare app with N uvicorn workers. The report and the keys of the JSON
result line are in hub/bench_webhooks_report.py. The Ray actors are off (HUB_ACTORS=false):
status callbacks never reach them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlencode
from uuid import UUID

import aiohttp
import psutil
from fastapi import FastAPI, Request, Response
from rich.console import Console
from twilio.request_validator import RequestValidator

from config.settings import Settings
from hub.bench_webhooks_clients import BenchError, ClientProcs
from hub.bench_webhooks_report import TARGETS, print_report
from hub.embedded import Services

STATUS_PATH = "/v1/providers/twilio/sms/status"
FORM = "application/x-www-form-urlencoded"
API_VERSION = "2010-04-01"
def _percentile(values: Sequence[float], p: float) -> float:
    """Nearest rank: with 100 samples p99 is the second largest."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


# --- the servers --------------------------------------------------------------------------


def bare_app() -> FastAPI:
    """The baseline: FastAPI with one POST endpoint that reads the body and answers 204."""
    app = FastAPI()

    @app.post(STATUS_PATH, status_code=204, response_class=Response)
    async def status(request: Request) -> Response:
        await request.body()
        return Response(status_code=204)

    return app


def gateway_app() -> FastAPI:
    """The gateway as `hub serve` builds it, from the environment (one per worker); the
    applier runs beside it."""
    from config.logging import setup_logging
    from gateway.app import create_app

    settings = Settings()
    setup_logging(settings.log_level, settings.log_json)
    assert settings.database_url and settings.redis_url
    return create_app(settings, settings.database_url, settings.redis_url,
                      apply_webhooks=False)


def serve(role: str, port: int, loop: str, workers: int) -> None:
    """A child process: the gateway (settings from the environment) or the bare app, on
    uvicorn with `workers` worker processes, httptools and the given event loop."""
    import uvicorn

    from gateway.app import SERVER_OPTIONS

    factory = "hub.bench_webhooks:gateway_app" if role == "gateway" else \
        "hub.bench_webhooks:bare_app"
    uvicorn.run(factory, factory=True, host="127.0.0.1", port=port, loop=loop,
                http="httptools", ws="auto", workers=workers, access_log=False,
                **{**SERVER_OPTIONS, "lifespan": "on" if role == "gateway" else "off"})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Children:
    """The server processes this benchmark starts, with their logs."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []

    def start(self, name: str, args: list[str], env: dict[str, str]) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        out = (self.log_dir / f"{name}.log").open("wb")
        self._logs.append(out)
        self.procs[name] = subprocess.Popen(
            [sys.executable, *args], env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT)

    def tail(self, name: str, chars: int = 3000) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    async def wait_http(self, name: str, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as client:
            while time.monotonic() < deadline:
                if self.procs[name].poll() is not None:
                    raise BenchError(f"{name} exited:\n{self.tail(name)}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with client.get(url) as r:
                        if r.status < 500:
                            return
                await asyncio.sleep(0.1)
        raise BenchError(f"{name} did not answer {url} within {timeout:.0f} s:\n"
                         f"{self.tail(name)}")

    def stop(self) -> None:
        for proc in reversed(self.procs.values()):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        for out in self._logs:
            out.close()


class Profiler:
    """py-spy sampling one process (collapsed stacks, for `--profile DIR`); a no-op without
    a folder."""

    def __init__(self, folder: Path | None, pid: int, name: str) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        if folder is None:
            return
        folder.mkdir(parents=True, exist_ok=True)
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        self.proc = subprocess.Popen(
            [spy, "record", "--pid", str(pid), "--subprocesses", "--rate", "250",
             "--format", "raw",
             "--output", str(folder / f"{name}.txt"), "--nonblocking"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class CpuMeter:
    """CPU seconds (user + system) spent by each part of the system under test, and by the
    whole machine: the figure per request does not depend on how much of the two cores
    other work left us, so it says where the time goes even on a noisy machine."""

    def __init__(self, settings: Settings, children: Children) -> None:
        self.data_dir = settings.data_dir.resolve()
        self.children = children
        self.extra: dict[str, list[int]] = {}  # more groups (the client processes)

    def _pid(self, path: Path) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int(path.read_text().split()[0])
        return None

    def groups(self) -> dict[str, list[psutil.Process]]:
        out: dict[str, list[psutil.Process]] = {}
        for name, proc in self.children.procs.items():
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(proc.pid)  # and its workers, if it has several
                out[name] = [root, *root.children(recursive=True)]
        for name, pid_file in (("postgres", self.data_dir / "pg" / "postmaster.pid"),
                               ("redis", self.data_dir / "redis" / "redis.pid")):
            pid = self._pid(pid_file)
            with contextlib.suppress(psutil.Error):
                if pid:
                    root = psutil.Process(pid)
                    out[name] = [root, *root.children(recursive=True)]
        out["bench"] = [psutil.Process()]
        for name, pids in self.extra.items():
            out[name] = []
            for pid in pids:
                with contextlib.suppress(psutil.Error):
                    out[name].append(psutil.Process(pid))
        return out

    def snapshot(self) -> dict[str, Any]:
        """Per process (so that a backend that exits between two snapshots is not counted
        negative), plus the machine's busy time."""
        per: dict[str, dict[int, float]] = {}
        for name, procs in self.groups().items():
            per[name] = {}
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    t = p.cpu_times()
                    per[name][p.pid] = t.user + t.system
        m = psutil.cpu_times()
        busy = m.user + m.nice + m.system + m.irq + m.softirq + getattr(m, "steal", 0.0)
        return {"per": per, "busy": busy, "at": time.monotonic()}

    @staticmethod
    def diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
        """CPU seconds per group between two snapshots; `machine` is every process on the
        machine (ours included), `wall` the elapsed time."""
        out: dict[str, float] = {}
        for name, pids in b["per"].items():
            before = a["per"].get(name, {})
            out[name] = sum(t - before.get(pid, 0.0) for pid, t in pids.items())
        out["machine"] = b["busy"] - a["busy"]
        out["wall"] = b["at"] - a["at"]
        return out


def _cpu_report(used: dict[str, float], requests: int, parts: Sequence[str]) -> dict[str, Any]:
    """CPU ms per request for each part, and how busy the machine was meanwhile."""
    ours = sum(used.get(p, 0.0) for p in parts)
    wall = max(used["wall"], 1e-9)
    return {
        "cpu_ms_per_request": {p: round(used.get(p, 0.0) * 1000 / max(requests, 1), 3)
                               for p in parts},
        "cores_used": {"ours": round(ours / wall, 2),
                       "others": round(max(0.0, used["machine"] - ours) / wall, 2)},
        "seconds": round(wall, 2),
    }


# --- seeding ------------------------------------------------------------------------------


@dataclass
class Target:
    """One outbound message a status callback will name."""

    message_id: str
    provider_sid: str
    to: str


@dataclass
class Tenant:
    """A sub-account with its own Twilio account (SID + token), one sender number and
    messages in status `sent`."""

    sub_account_id: UUID
    provider_account_id: UUID
    account_sid: str
    token: str
    from_: str
    messages: list[Target] = field(default_factory=list)


async def seed_tenant(hub: Any, principal: Any, index: int, messages: int) -> Tenant:
    """The sub-account and its provider account through the hub's actions (the token is
    encrypted with the hub's SecretBox), then sender, contacts, conversations and messages
    by SQL."""
    from hub import actions

    sa = await actions.do_create_sub_account(hub, principal, {"name": f"bench {index}"})
    sid, token = "AC" + f"{index:032x}", f"bench-token-{index}-{os.urandom(8).hex()}"
    pa = await actions.do_create_provider_account(hub, sa["id"], {
        "provider": "twilio", "name": "bench", "account_id": sid, "secret": token})
    number = f"+1212555{1000 + index % 9000:04d}"
    sender = await hub.pool.fetchval(
        """INSERT INTO senders (sub_account_id, provider_account_id, channel, kind, address,
               mps) VALUES ($1, $2, 'sms', 'long_code', $3, 100) RETURNING id""",
        sa["id"], pa["id"], number)
    rows = await hub.pool.fetch(
        """WITH c AS (
               INSERT INTO contacts (sub_account_id, phone, first_name)
               SELECT $1, '+1646' || (2000000 + i)::text, 'Pat' || i
               FROM generate_series(1, $2) i RETURNING id, phone),
           v AS (
               INSERT INTO conversations (sub_account_id, contact_id, channel, last_message_at,
                                          last_message_preview)
               SELECT $1, id, 'sms', now(), $5 FROM c RETURNING id, contact_id)
           INSERT INTO messages (sub_account_id, conversation_id, contact_id, direction, channel,
               priority, sender_id, provider_account_id, from_address, to_address, body, status,
               provider, provider_message_id, sent_at)
           SELECT $1, v.id, c.id, 'outbound', 'sms', 'transactional', $3, $4, $6, c.phone, $5,
                  'sent', 'twilio', 'SM' || md5(c.id::text || random()::text), now()
           FROM v JOIN c ON c.id = v.contact_id
           RETURNING id, provider_message_id, to_address""",
        sa["id"], messages, sender, pa["id"], "Your appointment is confirmed for 3pm.",
        number)
    return Tenant(sa["id"], pa["id"], sid, token, number,
                  [Target(str(r["id"]), r["provider_message_id"], r["to_address"])
                   for r in rows])


# --- signed requests ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Signed:
    """One status callback exactly as Twilio would post it."""

    message_id: str
    path: str  # with the query string
    body: bytes
    headers: dict[str, str]


def sign_callbacks(base_url: str, tenant: Tenant, targets: Sequence[Target],
                   status: str = "delivered") -> list[Signed]:
    """Form bodies shaped like Twilio's messaging status callbacks, signed over the public
    URL + path + query with the account's auth token."""
    validator = RequestValidator(tenant.token)
    done = time.strftime("%y%m%d%H%M", time.gmtime())
    out = []
    for t in targets:
        params = {"SmsSid": t.provider_sid, "SmsStatus": status, "MessageStatus": status,
                  "To": t.to, "MessageSid": t.provider_sid, "AccountSid": tenant.account_sid,
                  "From": tenant.from_, "ApiVersion": API_VERSION, "RawDlrDoneDate": done}
        path = f"{STATUS_PATH}?message_id={t.message_id}"
        signature = validator.compute_signature(base_url + path, params)
        out.append(Signed(t.message_id, path, urlencode(params).encode(), {
            "Content-Type": FORM, "X-Twilio-Signature": signature,
            "I-Twilio-Idempotency-Token": f"{t.provider_sid}-{status}"}))
    return out


# --- the ingest driver --------------------------------------------------------------------


@dataclass
class Drive:
    seconds: float
    latencies: list[float]  # seconds, per request
    statuses: Counter[int]
    last_ack: float  # monotonic

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    @property
    def errors(self) -> int:
        return sum(n for s, n in self.statuses.items() if not 200 <= s < 300)


async def drive(base_url: str, requests: Sequence[Signed], concurrency: int) -> Drive:
    """POST every request, `concurrency` at a time over kept-alive connections; closed loop
    (each worker sends its next request when the previous one is answered)."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    last_ack = 0.0
    clock = time.perf_counter
    async with aiohttp.ClientSession(base_url, connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=600)) as session:
        queue = iter(requests)

        async def worker() -> None:
            nonlocal last_ack
            for r in queue:
                t = clock()
                for attempt in range(3):
                    try:
                        async with session.post(r.path, data=r.body,
                                                headers=r.headers) as resp:
                            await resp.read()
                            statuses[resp.status] += 1
                        break
                    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                        if attempt == 2:  # a reused connection the server had closed
                            raise
                done = clock()
                latencies.append(done - t)
                last_ack = time.monotonic()

        started = clock()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = clock() - started
    return Drive(seconds, latencies, statuses, last_ack)


async def wait_applied(hub: Any, provider_accounts: list[UUID], expected: int,
                       timeout: float) -> tuple[float, dict[str, int]]:
    """Poll until `expected` inbox rows of these accounts are applied; (when, counts)."""
    deadline = time.monotonic() + timeout
    while True:
        row = await hub.pool.fetchrow(
            """SELECT count(*) AS stored, count(*) FILTER (WHERE status = 'applied') AS applied
               FROM webhook_events WHERE provider_account_id = ANY($1::uuid[])""",
            provider_accounts)
        now = time.monotonic()
        if row["applied"] >= expected or now > deadline:
            return now, {"stored": row["stored"], "applied": row["applied"]}
        await asyncio.sleep(0.02)


async def delivered(hub: Any, provider_accounts: list[UUID]) -> int:
    n: int = await hub.pool.fetchval(
        """SELECT count(*) FROM messages WHERE provider_account_id = ANY($1::uuid[])
           AND status = 'delivered'""", provider_accounts)
    return n


# --- the paced poster ---------------------------------------------------------------------


@dataclass
class Posted:
    sent_at: dict[str, float]  # message id → monotonic time just before the POST
    sent_wall: dict[str, float]  # the same as wall-clock time (for the database's clock)
    acks: list[float]
    statuses: Counter[int]
    first: float
    last: float
    errors: dict[str, int]  # client-side exceptions by type, retried ones included


async def post_paced(base_url: str, requests: Sequence[Signed], rate: float,
                     connections: int = 256) -> Posted:
    """Open loop: request i leaves at start + i / rate whatever the answers do (several per
    wake-up when the loop falls behind); a slow server shows as latency, not as a lower
    offered rate."""
    sent_at: dict[str, float] = {}
    sent_wall: dict[str, float] = {}
    acks: list[float] = []
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(base_url, connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=600)) as session:

        async def post(r: Signed) -> None:
            sent_wall[r.message_id] = time.time()
            t = sent_at[r.message_id] = time.monotonic()
            for attempt in range(3):
                try:
                    async with session.post(r.path, data=r.body, headers=r.headers) as resp:
                        await resp.read()
                        statuses[resp.status] += 1
                    break
                except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                    # A kept-alive connection the server closed as we reused it: the request
                    # never reached the app, so send it again (Twilio retries too). The
                    # latency still counts from the first attempt.
                    errors[type(exc).__name__] += 1
                    if attempt == 2:
                        statuses[0] += 1
                        return
                except (aiohttp.ClientError, TimeoutError) as exc:
                    errors[type(exc).__name__] += 1
                    statuses[0] += 1  # no answer: an error, not a latency
                    return
            acks.append(time.monotonic() - t)

        tasks = []
        start = time.monotonic() + 0.05
        i, n = 0, len(requests)
        while i < n:
            now = time.monotonic()
            while i < n and start + i / rate <= now:
                tasks.append(asyncio.create_task(post(requests[i])))
                i += 1
            if i < n:
                await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        await asyncio.gather(*tasks)
    times = sorted(sent_at.values())
    return Posted(sent_at, sent_wall, acks, statuses, times[0], times[-1], dict(errors))


# --- the benchmark ------------------------------------------------------------------------


@dataclass
class WebhookBench:
    callbacks: int = 5_000
    concurrency: int = 64
    clients: int = 500
    sub_accounts: int = 0  # 0: clients // 10, at most 50, at least 1
    rate: float = 1000.0
    seconds: float = 10.0
    client_procs: int = 2
    gateway_loop: str = "uvloop"
    workers: int = 1  # uvicorn workers of the gateway, and of the bare app alike
    profile_dir: Path | None = None
    extra_messages: int = 0  # older messages of another sub-account, seeded first

    @property
    def warmup(self) -> int:
        return min(2000, max(100, self.callbacks // 10))

    @property
    def n_sub_accounts(self) -> int:
        return self.sub_accounts or max(1, min(50, self.clients // 10))

    def run(self, settings: Settings, console: Console) -> dict[str, Any]:
        from hub import db
        from hub.embedded import start_services

        own_dir = not os.environ.get("HUB_DATA_DIR")
        data_dir = Path(tempfile.mkdtemp(prefix="hubbench-wh-")) if own_dir \
            else settings.data_dir.resolve()
        settings = settings.model_copy(update={"data_dir": data_dir})
        children = Children(data_dir / "bench-logs")
        services: Services | None = None
        try:
            with console.status("starting PostgreSQL and Redis…"):
                services = start_services(settings)
                asyncio.run(db.migrate(services.database_url))
            import uvloop

            result: dict[str, Any] = uvloop.run(self._main(settings, services, children,
                                                           console))
            return result
        finally:
            children.stop()
            if services is not None:
                services.stop()
            if own_dir:
                shutil.rmtree(data_dir, ignore_errors=True)

    async def _start(self, children: Children, settings: Settings,
                     services: Services) -> tuple[str, str]:
        gw_port, bare_port = _free_port(), _free_port()
        gateway_url, bare_url = f"http://127.0.0.1:{gw_port}", f"http://127.0.0.1:{bare_port}"
        env = {**os.environ, "HUB_DATA_DIR": str(settings.data_dir), "HUB_HOST": "127.0.0.1",
               "HUB_PORT": str(gw_port), "HUB_PUBLIC_URL": gateway_url,
               "DATABASE_URL": services.database_url, "REDIS_URL": services.redis_url,
               "HUB_ACTORS": "false"}
        module = "hub.bench_webhooks"
        workers = ["--workers", str(self.workers)]
        children.start("gateway", ["-m", module, "--serve", "gateway", "--port", str(gw_port),
                                   "--loop", self.gateway_loop, *workers], env)
        children.start("applier", ["-m", "hub.applier"], env)
        children.start("bare", ["-m", module, "--serve", "bare", "--port", str(bare_port),
                                "--loop", "uvloop", *workers], env)
        await children.wait_http("gateway", f"{gateway_url}/readyz", 120)
        await children.wait_http("bare", f"{bare_url}/", 60)
        return gateway_url, bare_url

    async def _main(self, settings: Settings, services: Services, children: Children,
                    console: Console) -> dict[str, Any]:
        from hub import actions
        from hub.context import Hub
        from hub.crypto import hash_api_key
        from hub.store import tenants
        from hub.tenancy import Principal

        with console.status("starting the gateway and the bare app…"):
            gateway_url, bare_url = await self._start(children, settings, services)
        hub = await Hub.open(settings, services.database_url, services.redis_url)
        try:
            with console.status("seeding…"):
                seed_started = time.perf_counter()
                agency, key = await actions.do_create_agency(hub, "bench webhooks")
                key_row = await tenants.find_api_key(hub.pool, hash_api_key(key))
                assert key_row is not None
                principal = Principal(key_row["id"], agency["id"], None)
                if self.extra_messages:  # a table with history: these rows come first
                    await seed_tenant(hub, principal, 9000, self.extra_messages)
                ingest = await seed_tenant(hub, principal, 0, self.warmup + self.callbacks)
                per_sa = math.ceil(self.rate * self.seconds / self.n_sub_accounts)
                ws_tenants = [await seed_tenant(hub, principal, 1 + i, per_sa)
                              for i in range(self.n_sub_accounts)]
                await hub.pool.execute("ANALYZE")
                seed_s = time.perf_counter() - seed_started
            result: dict[str, Any] = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                                      "seed_seconds": round(seed_s, 2),
                                      "extra_messages": self.extra_messages}
            result.update(await self._ingest(hub, ingest, gateway_url, bare_url, children,
                                             console))
            result.update(await self._websockets(hub, key, ws_tenants, gateway_url, children,
                                                 console))
            if os.environ.get("HUB_DATA_DIR"):  # someone else's data folder: leave it clean
                with console.status("deleting the bench agency…"):
                    await hub.pool.execute("DELETE FROM agencies WHERE id = $1",
                                           agency["id"], timeout=3600)
        finally:
            await hub.close()
        result["targets"] = {
            f"ingest_ratio >= {TARGETS['ingest_ratio']}":
                result["ingest_ratio"] >= TARGETS["ingest_ratio"],
            f"ws_p50_ms <= {TARGETS['ws_p50_ms']:g}": result["ws_p50_ms"] <= TARGETS["ws_p50_ms"],
            f"ws_p99_ms <= {TARGETS['ws_p99_ms']:g}": result["ws_p99_ms"] <= TARGETS["ws_p99_ms"],
            "no missed deliveries": result["ws_missed"] == 0,
            "every callback applied": result["applied"] == result["callbacks"]
            + result["warmup_callbacks"] and result["delivered"] == result["applied"],
        }
        return result

    async def _ingest(self, hub: Any, tenant: Tenant, gateway_url: str, bare_url: str,
                      children: Children, console: Console) -> dict[str, Any]:
        with console.status(f"signing {self.warmup + self.callbacks:,} callbacks…"):
            signed = sign_callbacks(gateway_url, tenant, tenant.messages)
        warm, timed = signed[:self.warmup], signed[self.warmup:]
        accounts = [tenant.provider_account_id]
        bare_runs: list[tuple[Drive, dict[str, Any]]] = []
        meter = CpuMeter(hub.settings, children)

        async def bare_run() -> None:
            await drive(bare_url, warm, self.concurrency)
            before = meter.snapshot()
            run = await drive(bare_url, timed, self.concurrency)
            bare_runs.append((run, _cpu_report(meter.diff(before, meter.snapshot()),
                                               len(timed), ("bare", "bench"))))

        with console.status("bare app (baseline), run 1…"):
            await bare_run()
        with console.status(f"gateway: {len(warm):,} warm-up callbacks…"):
            warm_drive = await drive(gateway_url, warm, self.concurrency)
            if warm_drive.errors:
                raise BenchError(f"the gateway answered {dict(warm_drive.statuses)}:\n"
                                 f"{children.tail('gateway')}")
            await wait_applied(hub, accounts, len(warm), max(120, len(warm) / 20))
        with console.status(f"gateway: {len(timed):,} signed callbacks…"):
            profiler = Profiler(self.profile_dir, children.procs["gateway"].pid, "ingest")
            before = meter.snapshot()
            try:
                gw = await drive(gateway_url, timed, self.concurrency)
            finally:
                profiler.stop()
        with console.status("waiting for the inbox to drain…"):
            done_at, counts = await wait_applied(hub, accounts, len(signed),
                                                 max(300, len(signed) / 20))
            gw_cpu = _cpu_report(meter.diff(before, meter.snapshot()), len(timed),
                                 ("gateway", "applier", "postgres", "redis", "bench"))
            n_delivered = await delivered(hub, accounts)
        with console.status("bare app (baseline), run 2…"):
            await bare_run()
        # The two baseline runs bracket the gateway's; the machine's load moves, so the
        # ratio is against their mean, and the CPU each part spent per request (which does
        # not depend on how much of the machine others left us) gives a second ratio.
        bare_rate = sum(d.rate for d, _ in bare_runs) / len(bare_runs)
        bare_latencies = [x for d, _ in bare_runs for x in d.latencies]
        bare_cpu = {
            "cpu_ms_per_request": {
                part: round(sum(c["cpu_ms_per_request"][part] for _, c in bare_runs)
                            / len(bare_runs), 3) for part in ("bare", "bench")},
            "cores_used": {"others": [c["cores_used"]["others"] for _, c in bare_runs]},
        }
        gw_total = sum(gw_cpu["cpu_ms_per_request"].values())
        bare_total = sum(bare_cpu["cpu_ms_per_request"].values())
        return {
            "callbacks": len(timed), "warmup_callbacks": len(warm),
            "concurrency": self.concurrency, "gateway_loop": self.gateway_loop,
            "workers": self.workers,
            "gateway_req_per_s": round(gw.rate, 1),
            "gateway_p50_ms": _ms(_percentile(gw.latencies, 50)),
            "gateway_p99_ms": _ms(_percentile(gw.latencies, 99)),
            "gateway_errors": gw.errors,
            "bare_req_per_s": round(bare_rate, 1),
            "bare_runs_req_per_s": [round(d.rate, 1) for d, _ in bare_runs],
            "bare_p50_ms": _ms(_percentile(bare_latencies, 50)),
            "bare_p99_ms": _ms(_percentile(bare_latencies, 99)),
            "ingest_ratio": round(gw.rate / bare_rate, 3),
            "ingest_cpu_ratio": round(bare_total / gw_total, 3),
            "stored": counts["stored"], "applied": counts["applied"], "delivered": n_delivered,
            "apply_drain_seconds": round(done_at - gw.last_ack, 2),
            "gateway_cpu": gw_cpu, "bare_cpu": bare_cpu,
        }

    async def _websockets(self, hub: Any, key: str, tenants: list[Tenant], gateway_url: str,
                          children: Children, console: Console) -> dict[str, Any]:
        n_sa = len(tenants)
        per_sa_clients = [0] * n_sa
        assignment: list[list[tuple[int, str]]] = [[] for _ in range(self.client_procs)]
        client_sa: dict[int, int] = {}
        for cid in range(self.clients):
            sa = cid % n_sa
            # Each process holds an even share of every sub-account's clients.
            assignment[per_sa_clients[sa] % self.client_procs].append(
                (cid, str(tenants[sa].sub_account_id)))
            per_sa_clients[sa] += 1
            client_sa[cid] = sa
        total = min(int(self.rate * self.seconds), sum(len(t.messages) for t in tenants))
        plan: list[Signed] = []
        event_sa: dict[str, int] = {}
        signed = [sign_callbacks(gateway_url, t, t.messages) for t in tenants]
        for i in range(total):
            sa = i % n_sa
            plan.append(signed[sa][i // n_sa])
            event_sa[plan[-1].message_id] = sa

        with console.status(f"connecting {self.clients} WebSocket clients in "
                            f"{self.client_procs} processes…"):
            procs = ClientProcs(gateway_url, key, [a for a in assignment if a])
        try:
            with console.status(f"connecting {self.clients} WebSocket clients in "
                                f"{len(procs.procs)} processes…"):
                connected, errors = await procs.ready()
            if connected != self.clients:
                raise BenchError(f"only {connected} of {self.clients} clients connected: "
                                 f"{errors}\n{children.tail('gateway')}")
            await asyncio.sleep(1.0)  # let connection set-up settle
            meter = CpuMeter(hub.settings, children)
            meter.extra["clients"] = [p.pid for p in procs.procs if p.pid is not None]
            before = meter.snapshot()
            with console.status(f"posting {total:,} callbacks at {self.rate:,.0f}/s…"):
                profiler = Profiler(self.profile_dir, children.procs["gateway"].pid, "ws")
                try:
                    posted = await post_paced(gateway_url, plan, self.rate)
                finally:
                    profiler.stop()
            expected_deliveries = sum(per_sa_clients[event_sa[r.message_id]] for r in plan)
            with console.status("waiting for every delivery…"):
                accounts = [t.provider_account_id for t in tenants]
                acked = sum(n for s, n in posted.statuses.items() if 200 <= s < 300)
                _, counts = await wait_applied(hub, accounts, acked, max(120, total / 20))
                for _ in range(75):  # 15 s: longer than the feed's 5 s catch-up interval
                    if await procs.count() >= expected_deliveries:
                        break
                    await asyncio.sleep(0.2)
                ws_cpu = _cpu_report(meter.diff(before, meter.snapshot()), total,
                                     ("gateway", "applier", "postgres", "redis", "bench",
                                      "clients"))
                received, closed, other = await procs.results()
        finally:
            procs.stop()
        stages = await _stages(hub, tenants, posted)

        latencies: list[float] = []
        deliveries = missed = duplicates = 0
        expected_by_sa: dict[int, set[str]] = {}
        for mid, sa in event_sa.items():
            expected_by_sa.setdefault(sa, set()).add(mid)
        for cid, frames in received.items():
            seen: set[str] = set()
            for mid, t in frames:
                if mid in seen:
                    duplicates += 1
                    continue
                seen.add(mid)
                if mid in posted.sent_at and event_sa[mid] == client_sa[cid]:
                    deliveries += 1
                    latencies.append(t - posted.sent_at[mid])
            missed += len(expected_by_sa.get(client_sa[cid], set()) - seen)
        span = max(posted.last - posted.first, 1e-9)
        return {
            "ws_clients": self.clients, "ws_sub_accounts": n_sa,
            "ws_clients_per_sub_account": sorted(set(per_sa_clients)),
            "ws_client_processes": len(procs.procs),
            "ws_rate_per_s": self.rate, "ws_seconds": self.seconds, "ws_events_posted": total,
            "ws_post_rate_per_s": round((total - 1) / span, 1) if total > 1 else 0.0,
            "ws_post_errors": sum(n for s, n in posted.statuses.items() if not 200 <= s < 300),
            "ws_post_client_errors": posted.errors,
            "ws_post_ack_p50_ms": _ms(_percentile(posted.acks, 50)),
            "ws_post_ack_p99_ms": _ms(_percentile(posted.acks, 99)),
            "ws_applied": counts["applied"],
            "ws_expected_deliveries": expected_deliveries, "ws_deliveries": deliveries,
            "ws_missed": missed, "ws_duplicates": duplicates,
            "ws_closed": len(closed), "ws_closed_codes": dict(Counter(closed.values())),
            "ws_other_frames": other,
            "ws_p50_ms": _ms(_percentile(latencies, 50)),
            "ws_p90_ms": _ms(_percentile(latencies, 90)),
            "ws_p99_ms": _ms(_percentile(latencies, 99)),
            "ws_max_ms": _ms(max(latencies)) if latencies else float("nan"),
            **stages, "ws_cpu": ws_cpu,
        }


async def _stages(hub: Any, tenants: list[Tenant], posted: Posted) -> dict[str, float]:
    """Where the webhook → WebSocket time goes, from the database's clock (the same machine's
    wall clock): POST sent → inbox row committed (`received_at` is the insert's transaction
    start) and POST sent → apply transaction started (the event's `created_at`)."""
    accounts = [t.provider_account_id for t in tenants]
    rows = await hub.pool.fetch(
        """SELECT (regexp_match(payload->>'url', 'message_id=([0-9a-f-]+)'))[1] AS mid,
                  extract(epoch FROM received_at) AS stored,
                  extract(epoch FROM applied_at) AS applied
           FROM webhook_events WHERE provider_account_id = ANY($1::uuid[])""", accounts)
    events = await hub.pool.fetch(
        """SELECT data->>'id' AS mid, extract(epoch FROM created_at) AS created FROM events
           WHERE sub_account_id = ANY($1::uuid[]) AND type = 'message.status_updated'""",
        [t.sub_account_id for t in tenants])
    stored, started = [], []
    for r in rows:
        sent = posted.sent_wall.get(r["mid"])
        if sent is not None:
            stored.append(float(r["stored"]) - sent)
    for e in events:
        sent = posted.sent_wall.get(e["mid"])
        if sent is not None:
            started.append(float(e["created"]) - sent)
    return {"ws_stored_p50_ms": _ms(_percentile(stored, 50)),
            "ws_stored_p99_ms": _ms(_percentile(stored, 99)),
            "ws_apply_start_p50_ms": _ms(_percentile(started, 50)),
            "ws_apply_start_p99_ms": _ms(_percentile(started, 99))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hub.bench_webhooks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--callbacks", type=int, default=5_000,
                        help="timed signed callbacks for the ingest figure")
    parser.add_argument("--concurrency", type=int, default=64,
                        help="requests in flight for the ingest figure")
    parser.add_argument("--clients", type=int, default=500, help="WebSocket clients")
    parser.add_argument("--sub-accounts", type=int, default=0,
                        help="sub-accounts the clients and events are spread over "
                             "(default clients / 10, at most 50)")
    parser.add_argument("--rate", type=float, default=1000.0,
                        help="callbacks per second during the WebSocket run")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="length of the WebSocket run")
    parser.add_argument("--client-procs", type=int, default=2,
                        help="processes the WebSocket clients are spread over")
    parser.add_argument("--gateway-loop", choices=("uvloop", "asyncio"), default="uvloop",
                        help="the gateway's event loop (`hub serve` runs uvloop)")
    parser.add_argument("--extra-messages", type=int, default=0, metavar="M",
                        help="seed M older messages in another sub-account first (a messages "
                             "table with history)")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="sample the gateway with py-spy during both runs (collapsed "
                             "stacks in DIR)")
    parser.add_argument("--serve", choices=("gateway", "bare"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1,
                        help="uvicorn worker processes of the gateway, and of the bare app "
                             "alike (like for like)")
    parser.add_argument("--loop", default="uvloop", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port, args.loop, max(1, args.workers))
        return 0

    import logging

    from config.logging import setup_logging

    console = Console(stderr=True)
    settings = Settings()
    setup_logging("WARNING", settings.log_json)
    logging.getLogger("hub").setLevel(logging.WARNING)
    plan = WebhookBench(callbacks=args.callbacks, concurrency=args.concurrency,
                        clients=args.clients, sub_accounts=args.sub_accounts, rate=args.rate,
                        seconds=args.seconds, client_procs=max(1, args.client_procs),
                        gateway_loop=args.gateway_loop, workers=max(1, args.workers),
                        profile_dir=args.profile,
                        extra_messages=max(0, args.extra_messages))
    return run_and_report(lambda: plan.run(settings, console), print_report, console)


def run_and_report(run: Callable[[], dict[str, Any]],
                   report: Callable[[dict[str, Any], Console], None], console: Console) -> int:
    """A benchmark's exit code: its table on stderr and its JSON result as the last line of
    stdout, or why it failed."""
    try:
        result = run()
    except BenchError as exc:
        console.print(f"[red]benchmark failed:[/red] {exc}")
        return 1
    except KeyboardInterrupt:
        return 130
    report(result, console)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
