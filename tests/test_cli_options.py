"""The `hub` command's options, and `hub serve` stopped by a supervisor (SIGTERM), which
shuts down as Ctrl-C does with Ray running."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.test_cli import HUB, _free_port


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = Path(f"/tmp/hubsig-{os.getpid()}-{_free_port()}")  # short: PostgreSQL's socket
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_sigterm_closes_realtime_clients_with_1012_and_stops_cleanly(data_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(HUB_DATA_DIR=str(data_dir), HUB_ENVIRONMENT="development")
    created = subprocess.run([HUB, "admin", "create-agency", "Northwind"], env=env,
                             capture_output=True, text=True, timeout=300,
                             stdin=subprocess.DEVNULL)
    assert created.returncode == 0, created.stderr[-3000:]
    key = json.loads(created.stdout.strip().splitlines()[-1])["api_key"]

    port = _free_port()  # by option, not HUB_PORT: --port is what is tested here too
    stderr_path = data_dir / "serve.stderr"
    with stderr_path.open("w") as stderr:
        server = subprocess.Popen([HUB, "serve", "--port", str(port)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=stderr,
                                  stdin=subprocess.DEVNULL)
    try:
        h = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            for _ in range(3000):
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert server.poll() is None, stderr_path.read_text()[-3000:]
                time.sleep(0.1)
            sa = client.post("/v1/sub-accounts", json={"name": "Downtown"}, headers=h)
            assert sa.status_code == 201, sa.text
            ticket = client.post("/v1/realtime/tickets", headers=h,
                                 json={"sub_account_id": sa.json()["id"]})
            assert ticket.status_code == 201, ticket.text
        postgres_pid = int((data_dir / "pg" / "postmaster.pid").read_text().split()[0])
        with connect(f"ws://127.0.0.1:{port}/v1/realtime?ticket={ticket.json()['ticket']}",
                     open_timeout=10) as ws:
            assert json.loads(ws.recv(10))["type"] == "hello"
            server.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed):
                while True:
                    ws.recv(60)
        assert ws.close_code == 1012, (ws.close_code, ws.close_reason)
        assert server.wait(120) == 0, stderr_path.read_text()[-3000:]
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(30)
    log = stderr_path.read_text()
    assert "Traceback" not in log and "SystemExit" not in log, log[-3000:]
    with pytest.raises(ProcessLookupError):
        os.kill(postgres_pid, 0)


@pytest.mark.parametrize("command", ["serve", "demo"])
def test_help_shows_the_listening_options_and_the_environment(command: str) -> None:
    done = subprocess.run([HUB, command, "--help"], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    for word in ("--host", "--port", "HUB_PORT", "HUB_DATA_DIR", "DATABASE_URL",
                 "RAY_ADDRESS", "HUB_PUBLIC_URL"):
        assert word in done.stdout, (word, done.stdout)


@pytest.mark.parametrize("args", [
    ["import", "--rows", "-5"], ["import", "--rows", "0"], ["adapters", "--rounds", "0"],
    ["campaign", "--mps", "0"], ["campaign", "--senders", "0"],
    ["webhooks", "--seconds", "-1"], ["webhooks", "--workers", "0"],
])
def test_bench_counts_below_one_are_usage_errors(args: list[str]) -> None:
    done = subprocess.run([HUB, "bench", *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 2 and "Invalid value for '" + args[1] + "'" in done.stderr, \
        done.stderr
    assert "Traceback" not in done.stderr
