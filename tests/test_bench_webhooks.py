"""`python -m hub.bench_webhooks` as an operator runs it, at a tiny size: it starts its own
PostgreSQL, Redis, gateway, bare app and WebSocket client processes, finishes, cleans up and
prints every figure. No timing thresholds (the machine is shared); what must hold is that
every callback was stored and applied and every client got every event of its sub-account."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from hub.bench_webhooks_report import RESULT_FIELDS


def _run(*args: str, timeout: float = 300) -> tuple[dict[str, Any], str]:
    # Its own servers and data folder: nothing from a surrounding hub or test run.
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "RAY_ADDRESS", "HUB_DATA_DIR")}
    done = subprocess.run([sys.executable, "-m", "hub.bench_webhooks", *args], env=env,
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def test_bench_webhooks_ingests_everything_and_reaches_every_client() -> None:
    result, stderr = _run("--callbacks", "200", "--clients", "20", "--rate", "100",
                          "--seconds", "2")
    missing = [f for f in RESULT_FIELDS if result.get(f) is None]
    assert not missing, (missing, result)

    # Ingest: every signed callback accepted, stored once, applied, its message delivered.
    assert result["callbacks"] == 200 and result["gateway_errors"] == 0
    total = result["callbacks"] + result["warmup_callbacks"]
    assert result["stored"] == result["applied"] == result["delivered"] == total, result
    assert result["gateway_req_per_s"] > 0 and result["bare_req_per_s"] > 0
    assert len(result["bare_runs_req_per_s"]) == 2 and result["ingest_ratio"] > 0
    for run in ("gateway_cpu", "bare_cpu"):
        assert result[run]["cpu_ms_per_request"], result[run]

    # Webhook → WebSocket: 2 sub-accounts × 10 clients, 200 events, each to 10 clients.
    assert result["ws_sub_accounts"] == 2 and result["ws_clients_per_sub_account"] == [10]
    assert result["ws_events_posted"] == 200 and result["ws_post_errors"] == 0
    assert result["ws_applied"] == 200
    assert result["ws_expected_deliveries"] == 2000
    assert result["ws_deliveries"] == 2000, result
    assert result["ws_missed"] == 0 and result["ws_duplicates"] == 0
    assert result["ws_closed"] == 0
    assert 0 < result["ws_p50_ms"] <= result["ws_p99_ms"] <= result["ws_max_ms"]
    assert result["targets"]["no missed deliveries"] is True
    assert result["targets"]["every callback applied"] is True
    assert "gateway / bare" in stderr and "POST sent → client received" in stderr
