"""`python -m hub.bench_ingest_floor` as an operator runs it, at a tiny size: it starts its own
PostgreSQL, Redis (fsync always) and servers, finishes and cleans up. No timing thresholds
(the machine is shared); what must hold is that each floor stored every request once, kept
the duplicates out and (B) refused a forged signature, so its figures are for real work."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_every_variant_stores_each_request_once() -> None:
    # Its own servers and data folder: nothing from a surrounding hub or test run.
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "HUB_DATA_DIR")}
    done = subprocess.run([sys.executable, "-m", "hub.bench_ingest_floor", "--requests",
                           "200", "--rounds", "1"], env=env, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])

    assert result["requests"] == 200 and len(result["rounds"]) == 1
    (row,) = result["rounds"]
    distinct = result["requests"] + result["warmup"]
    assert [run["errors"] for run in row["bare"]["runs"]] == [0, 0]
    for variant in ("pg", "pg_signed", "redis"):
        run = row[variant]
        assert run["errors"] == run["resent_errors"] == 0, (variant, run)
        # The warm-up and the timed requests, each once, though 100 were sent twice.
        assert run["expected"] == distinct and run["stored"] == distinct, (variant, run)
        assert run["req_per_s"] > 0 and run["ratio"] > 0
        assert run["rows_per_commit"] >= 1
    assert row["redis"]["dedupe_keys"] == distinct
    # Durable before the 204: PostgreSQL flushes its WAL at commit, Redis fsyncs each write.
    durability = result["durability"]
    assert durability["fsync"] == "on" and durability["synchronous_commit"] == "on"
    assert durability["redis appendonly"] == "yes"
    assert durability["redis appendfsync"] == "always"
    assert row["pg_signed"]["tampered_status"] == 403
    assert "C. Redis" in done.stderr
