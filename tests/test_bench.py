"""The benchmark commands as an operator runs them, at a small size: they start what they need,
finish, clean up, and print every figure. No timing thresholds (the machine is shared)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from hub.bench_campaign import REPLY_FIELDS, RESULT_FIELDS

HUB = str(Path(sys.executable).with_name("hub"))


def _run(*args: str, timeout: float = 240) -> tuple[dict[str, Any], str]:
    # Its own servers, Ray and data folder: nothing from a surrounding hub or test run.
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "RAY_ADDRESS", "HUB_DATA_DIR")}
    done = subprocess.run([HUB, "bench", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def test_bench_campaign_sends_everything_and_reports_every_figure() -> None:
    result, stderr = _run("campaign", "--recipients", "2000", "--reply-latency",
                          "--replies", "5", "--reply-every", "0.1")
    missing = [f for f in (*RESULT_FIELDS, *REPLY_FIELDS) if result.get(f) is None]
    assert not missing, (missing, result)
    # The carrier's log is the ground truth: every recipient and every reply, once.
    assert result["expected_sends"] == 2005
    assert result["carrier_accepted"] == 2005, result
    assert result["hub_sent"] == 2000 and result["campaign_status"] == "completed"
    assert result["replies_found"] == 5
    # Memory was found in every part of the hub, not just the gateway.
    groups = result["peak_rss_by_group_mb"]
    assert set(groups) == {"gateway", "ray", "postgres", "redis"}
    assert all(mb > 0 for mb in groups.values()), groups
    assert result["raw_ceiling_req_per_s"] > 0 and result["ratio_to_raw"] > 0
    # The send path's row versions were read from this run's database.
    assert result["row_versions"]["messages"]["inserted"] == 2005, result["row_versions"]
    # CPU was counted per part of the machine over the campaign, and the WAL it wrote.
    cpu = result["cpu_s_by_group"]
    assert cpu["ray::SenderShell"] > 0 and cpu["postgres"] > 0 and "other" in cpu, cpu
    assert result["wal_bytes"] > 0 and "CPU from launch" in stderr
    assert "send rate" in stderr and "agent replies" in stderr


def test_bench_adapters_prints_a_table_and_the_carrier_counts() -> None:
    result, stderr = _run("adapters", "--messages", "300", "--rounds", "1", timeout=120)
    assert result["twilio_sms_accepted"] == 300
    assert result["raw_aiohttp_req_per_s"] > 0 and result["twilio_sms_msgs_per_s"] > 0
    assert "Twilio SMS" in stderr
