"""The `hub` command as a newcomer runs it: its own embedded servers in a fresh data folder."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

HUB = str(Path(sys.executable).with_name("hub"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Short path: PostgreSQL's unix socket path must stay under ~100 bytes.
    path = Path(f"/tmp/hubcli-{os.getpid()}-{_free_port()}")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _run(args: list[str], data_dir: Path, port: int) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(HUB_DATA_DIR=str(data_dir), HUB_PORT=str(port), HUB_ENVIRONMENT="development")
    return subprocess.run([HUB, *args], env=env, capture_output=True, text=True, timeout=420,
                          stdin=subprocess.DEVNULL)


def test_demo_exit_seeds_serves_and_stops_its_servers(data_dir: Path) -> None:
    port = _free_port()
    done = _run(["demo", "--exit"], data_dir, port)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads((data_dir / "demo.json").read_text())
    assert info["url"] == f"http://127.0.0.1:{port}" and info["agency_api_key"].startswith("sbk_")
    assert info["carrier_url"].startswith("http://127.0.0.1:")
    assert "summary" in done.stderr and "sms:" in done.stderr and "email:" in done.stderr
    # SendGrid's signed event batches reach the hub: emails are seen delivered.
    assert re.search(r"email: delivered [1-9]", done.stderr), done.stderr[-3000:]
    # Its embedded Redis was stopped on exit (PostgreSQL is checked by the restart below).
    redis_pid = int((data_dir / "redis" / "redis.pid").read_text()) \
        if (data_dir / "redis" / "redis.pid").exists() else None
    if redis_pid:
        with pytest.raises(ProcessLookupError):
            os.kill(redis_pid, 0)
    # A second run reuses the seeded agency (same key) from the same data folder: the data
    # survived the restart of both servers.
    # A fresh port: the first may be taken by now (Ray hands out ephemeral ports too).
    again = _run(["demo", "--exit"], data_dir, _free_port())
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((data_dir / "demo.json").read_text())["agency_api_key"] == \
        info["agency_api_key"]


def test_admin_create_agency_prints_a_working_key(data_dir: Path) -> None:
    port = _free_port()
    done = _run(["admin", "create-agency", "Northwind"], data_dir, port)
    assert done.returncode == 0, done.stderr[-3000:]
    created = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(created) == {"agency_id", "api_key"}
    # Serve on the same data folder and use the key.
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(HUB_DATA_DIR=str(data_dir), HUB_PORT=str(port), HUB_ACTORS="false")
    server = subprocess.Popen([HUB, "serve"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            for _ in range(600):
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if server.poll() is not None:
                    pytest.fail(f"hub serve exited: {server.stderr.read()[-3000:]}")
                time.sleep(0.1)
            r = client.post("/v1/sub-accounts", json={"name": "Downtown"},
                            headers={"Authorization": f"Bearer {created['api_key']}"})
            assert r.status_code == 201, r.text
        # The applier's metrics live in the data folder, one folder per port, gone on exit.
        metrics = data_dir / "run" / f"applier-metrics-{port}"
        assert metrics.is_dir()
    finally:
        server.terminate()
        server.wait(30)
    assert not metrics.exists()


def test_migrate_is_idempotent(data_dir: Path) -> None:
    port = _free_port()
    first = _run(["migrate"], data_dir, port)
    assert first.returncode == 0 and "0001_initial" in first.stderr, first.stderr[-2000:]
    second = _run(["migrate"], data_dir, port)
    assert second.returncode == 0 and "up to date" in second.stderr, second.stderr[-2000:]


def test_production_refuses_the_default_secret(data_dir: Path) -> None:
    env = {**os.environ, "HUB_ENVIRONMENT": "production", "HUB_DATA_DIR": str(data_dir)}
    env.pop("HUB_SECRET_KEY", None)
    done = subprocess.run([HUB, "migrate"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "HUB_SECRET_KEY" in done.stderr
