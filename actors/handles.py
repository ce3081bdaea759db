"""The gateway's side of the actors: start or join the Supervisor, learn the shard topology
once, name the Sender shard a new message is leased to (`owner`: the message is created
already leased to it), and hand just-persisted messages to that shard (the fast path; a
hand-off that never arrives only costs time: the lease expires and the shard claims the
message from PostgreSQL). Shards are called by name: one the Supervisor moved to another
node is looked up again."""

from __future__ import annotations

import logging
from typing import Any

from actors import ray_api
from actors.ring import Ring, sender_owner, sender_shard
from actors.supervisor import scheduler_name, sender_name
from config.settings import Settings

log = logging.getLogger(__name__)


def supervisor_spec(settings: Settings, database_url: str, redis_url: str) -> dict[str, Any]:
    return {
        "database_url": database_url, "redis_url": redis_url,
        "secret_key": settings.secret_key.get_secret_value(),
        "old_secret_keys": [s.get_secret_value() for s in settings.old_secret_keys],
        "public_url": settings.base_url, "lease_s": settings.lease_s,
        "in_doubt_grace_s": settings.in_doubt_grace_s,
        "receipt_grace_s": settings.receipt_grace_s,
        "receipt_max_age_s": settings.receipt_max_age_s,
        "sender_shards": settings.sender_shards,
        "scheduler_shards": settings.scheduler_shards, "log_level": settings.log_level,
    }


class ActorHandles:
    def __init__(self, topology: dict[str, Any]) -> None:
        self.sender_ring = Ring(topology["sender_shards"])
        self.scheduler_ring = Ring(topology["scheduler_shards"])
        self.handles: dict[str, Any] = {  # by shard name
            sender_name(group, i): h
            for group, hs in topology["senders"].items() for i, h in enumerate(hs)}
        self.handles.update({scheduler_name(i): h
                             for i, h in enumerate(topology["schedulers"])})

    @classmethod
    async def connect(cls, settings: Settings, database_url: str,
                      redis_url: str) -> ActorHandles:
        ray_api.init(settings.ray_address)
        supervisor = ray_api.get_or_create_supervisor(
            supervisor_spec(settings, database_url, redis_url))
        topology = await ray_api.call(supervisor, "topology", timeout=300)
        log.info("actors ready", extra={"sender_shards": topology["sender_shards"],
                                        "scheduler_shards": topology["scheduler_shards"]})
        return cls(topology)

    async def _call(self, name: str, method: str, *args: Any, timeout: float) -> Any:
        return await ray_api.call_named(self.handles, name, method, *args, timeout=timeout)

    def owner(self, channel: str, slot: int) -> str:
        """The lease owner of the Sender shard that sends `channel` for `slot`."""
        return sender_owner(*sender_shard(self.sender_ring, channel, slot))

    async def submit(self, channel: str, slot: int,
                     messages: list[str] | list[dict[str, Any]]) -> bool:
        """Best effort; False when the shard could not be reached (the caller gives the
        leases back, so that the shard's claims find the messages at once). `messages`:
        ids, or lane rows (`SenderCore.submit`)."""
        name = sender_name(*sender_shard(self.sender_ring, channel, slot))
        try:
            await self._call(name, "submit", messages, timeout=10)
            return True
        except Exception as exc:
            log.warning("hand-off to sender shard failed; it will claim the message itself",
                        extra={"error": type(exc).__name__})
            return False

    async def kick(self, slot: int) -> None:
        try:
            await self._call(scheduler_name(self.scheduler_ring.shard_of(slot)), "kick",
                             timeout=30)
        except Exception as exc:
            log.warning("scheduler kick failed; its next tick will pick the campaign up",
                        extra={"error": type(exc).__name__})
