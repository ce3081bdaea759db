"""Shard placement: the plan (plain), and the Supervisor applying it on a real multi-node
Ray cluster (`ray.cluster_utils.Cluster`): as many shards as nodes land one per node; the
shard of a node removed without grace runs on a node left, spread over every node left; a
node that joins gets its share.

The cluster runs in a process of its own (a pytest session may already have a local Ray).
The shards are the hub's real shard actors, created by the Supervisor; they point at no
database, so they keep retrying their start, which placement does not depend on."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from actors import placement

ROOT = Path(__file__).resolve().parent.parent


def test_plan_is_one_per_node_keeps_what_is_placed_and_fills_a_new_node() -> None:
    shards = ["s0", "s1", "s2", "s3"]
    nodes = ["n3", "n1", "n2", "n0"]
    first = placement.plan(shards, {}, nodes)
    assert first == {"s0": "n0", "s1": "n1", "s2": "n2", "s3": "n3"}
    assert placement.plan(shards, first, nodes) == {}  # in place: nothing moves
    # n2 is lost, Ray restarted s2 beside s0: it moves to n1 only if n0 is over its share.
    lost = {**first, "s2": "n0"}
    assert placement.plan(shards, lost, ["n0", "n1", "n3"]) == {}  # 2, 1, 1: within 2 each
    # A node joins: the node over its new share gives one shard to it, nothing else moves.
    assert placement.plan(shards, lost, ["n0", "n1", "n3", "n9"]) == {"s2": "n9"}
    # Every shard of a lost node goes to the least loaded nodes left.
    three = placement.plan(shards, {"s0": "n0", "s1": "n0"}, ["n0", "n1", "n2"])
    assert three == {"s2": "n1", "s3": "n2"}
    assert placement.plan(shards, {}, []) == {}


def _placed(names: list[str]) -> dict[str, str]:
    from actors import ray_api

    return {n: p["node"] for n, p in ray_api.actor_placement(names).items()}


async def _settle(sup: Any, names: list[str], timeout: float = 120.0) -> dict[str, str]:
    """Let the Supervisor rebalance until every shard runs and nothing moves."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        moved = await sup.rebalance()
        placed = _placed(names)
        if not moved and len(placed) == len(names):
            return placed
        await asyncio.sleep(0.5)
    raise AssertionError(f"shards did not settle: {_placed(names)}")


async def _scenario() -> dict[str, Any]:
    import ray
    from ray.cluster_utils import Cluster

    from actors import ray_api
    from actors.metrics import Metrics
    from actors.supervisor import Supervisor
    from tests.chaos.stack import HEALTH_CHECK

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False, "_system_config": HEALTH_CHECK})
    try:
        for _ in range(3):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace=ray_api.NAMESPACE, log_to_driver=False)
        # One shard of each kind: four shards on four nodes. They point at no database.
        sup = Supervisor({"database_url": "postgresql://127.0.0.1:1/none",
                          "redis_url": "redis://127.0.0.1:1/0", "secret_key": "k" * 32,
                          "log_level": "ERROR", "sender_shards": 1, "scheduler_shards": 1},
                         None, None, None, Metrics())  # type: ignore[arg-type]
        await sup.create_shards()
        names = list(sup.handles)
        out: dict[str, Any] = {"names": names, "created": await _settle(sup, names)}
        victim = next(n for n in cluster.worker_nodes
                      if n.node_id in set(out["created"].values()))
        cluster.remove_node(victim, allow_graceful=False)
        out["removed"] = victim.node_id
        for _ in range(240):  # Ray's health checks notice the node is gone
            if victim.node_id not in ray_api.alive_nodes():
                break
            await asyncio.sleep(0.5)
        out["after_loss"] = await _settle(sup, names)
        out["left"] = ray_api.alive_nodes()
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        out["after_join"] = await _settle(sup, names)
        out["nodes"] = ray_api.alive_nodes()
        return out
    finally:
        ray.shutdown()
        cluster.shutdown()


def _run() -> None:
    print("PLACEMENT " + json.dumps(asyncio.run(_scenario())), flush=True)


@pytest.mark.slow
def test_shards_one_per_node_replaced_after_a_node_leaves_and_spread_when_one_joins() -> None:
    workdir = tempfile.mkdtemp(prefix="hubplace-")
    try:  # a Ray temp dir of our own, so no other `ray.init()` joins this cluster
        proc = subprocess.run(
            [sys.executable, "-c", "from tests.test_placement import _run; _run()"],
            cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
            env={**os.environ, "RAY_TMPDIR": workdir})
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("PLACEMENT ")]
    assert lines, f"exit {proc.returncode}:\n{proc.stderr[-4000:]}"
    r = json.loads(lines[0].removeprefix("PLACEMENT "))
    assert len(r["names"]) == 4
    assert len(set(r["created"].values())) == 4, r  # four shards, four nodes: one each
    loads = collections.Counter(r["after_loss"].values())
    assert r["removed"] not in loads, r  # the lost node's shard runs elsewhere
    assert set(loads) == set(r["left"]) and max(loads.values()) == 2, r  # spread: 2, 1, 1
    assert len(set(r["after_join"].values())) == 4, r  # a new node: one each again
    assert set(r["after_join"].values()) == set(r["nodes"]), r
