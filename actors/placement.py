"""Where each shard should run: a deterministic plan over the alive nodes, plain Python (the
Supervisor applies it with Ray; tests check it without).

Every node gets at most its fair share, ceil(shards / nodes), so n shards on n nodes run
one per node. A shard already on an alive node within that share stays where it is (moving
a shard means stopping it); the rest, whose node is gone or that are over a node's share,
go to the least loaded nodes, ties broken by node id, shards taken in their fixed order."""

from __future__ import annotations

import math


def plan(shards: list[str], placed: dict[str, str], nodes: list[str]) -> dict[str, str]:
    """Shards to (re)place → their node. `shards` in a fixed order; `placed` maps each
    running shard to its node (a shard not in it is placed too); `nodes` are alive."""
    if not nodes:
        return {}
    nodes = sorted(nodes)
    share = math.ceil(len(shards) / len(nodes))
    load = dict.fromkeys(nodes, 0)
    homeless: list[str] = []
    for shard in shards:
        node = placed.get(shard)
        if node in load and load[node] < share:
            load[node] += 1
        else:
            homeless.append(shard)
    moves: dict[str, str] = {}
    for shard in homeless:
        node = min(nodes, key=lambda n: (load[n], n))
        load[node] += 1
        moves[shard] = node
    return moves
