"""Consistent hashing of sub-account slots onto a fixed pool of shards.

Every sub-account has a stable slot (0..SLOTS-1, stored on its row); the ring places each
shard at many virtual points, and a slot belongs to the first shard point after its own hash.
Growing the pool from n to n+1 shards moves about 1/(n+1) of the slots."""

from __future__ import annotations

import bisect
import hashlib
from functools import cached_property

SLOTS = 1024

#: Sender shard groups: the message channels each group's shards send.
CHANNEL_GROUPS = {"sms": ("sms", "mms"), "email": ("email",), "voice": ("voice",)}
GROUP_OF = {channel: group for group, channels in CHANNEL_GROUPS.items()
            for channel in channels}


def _point(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


class Ring:
    def __init__(self, shards: int, vnodes: int = 128) -> None:
        if shards < 1:
            raise ValueError("a ring needs at least one shard")
        self.shards = shards
        points = sorted((_point(f"shard-{s}-{v}"), s) for s in range(shards)
                        for v in range(vnodes))
        self._keys = [p for p, _ in points]
        self._owners = [s for _, s in points]

    def shard_for_slot(self, slot: int) -> int:
        i = bisect.bisect(self._keys, _point(f"slot-{slot}")) % len(self._keys)
        return self._owners[i]

    @cached_property
    def _table(self) -> list[int]:
        return [self.shard_for_slot(s) for s in range(SLOTS)]

    def slots_of(self, shard: int) -> tuple[int, ...]:
        return tuple(s for s, owner in enumerate(self._table) if owner == shard)

    def shard_of(self, slot: int) -> int:
        return self._table[slot]


def sender_owner(group: str, index: int) -> str:
    """The lease owner of Sender shard `index` of `group`: the shard's own leases carry it,
    and so do the messages created already leased to it."""
    return f"sender:{group}:{index}"


def sender_shard(ring: Ring, channel: str, slot: int) -> tuple[str, int]:
    """The Sender shard, (group, index), that sends a message of `channel` for a
    sub-account on `slot`: the one mapping the Supervisor, the gateway and the scheduler
    share."""
    return GROUP_OF[channel], ring.shard_of(slot)
