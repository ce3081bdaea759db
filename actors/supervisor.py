"""The Supervisor: places sub-accounts on a fixed pool of shards by consistent hashing,
creates the shards once, spread over the cluster's nodes, keeps them alive, and reconciles
what dead shards left behind: sends whose outcome is unknown are resolved by asking the
provider, never by resending blindly.

It holds no state of its own beyond actor handles (named, so a restarted Supervisor gets the
same shards back) and what it reads from PostgreSQL, so Ray may restart it on any node. While
it runs it keeps a heartbeat in Redis naming its Ray cluster, so a gateway started against
another cluster refuses to create a second Supervisor over the same database."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from actors import ray_api
from actors.metrics import Metrics
from actors.ring import Ring
from channels.base import OutboundMessage, ProviderCredentials
from hub.crypto import SecretBox
from hub.store import sending as store

log = logging.getLogger(__name__)

#: Sender shard groups: the message channels each group's shards send.
CHANNEL_GROUPS = {"sms": ("sms", "mms"), "email": ("email",), "voice": ("voice",)}


def sender_name(group: str, index: int) -> str:
    return f"hub-sender-{group}-{index}"


def scheduler_name(index: int) -> str:
    return f"hub-scheduler-{index}"


class Supervisor:
    def __init__(self, spec: dict[str, Any], pool: asyncpg.Pool, redis: aioredis.Redis,
                 box: SecretBox, metrics: Metrics) -> None:
        self.spec, self.pool, self.redis, self.box, self.metrics = spec, pool, redis, box, metrics
        self.sender_ring = Ring(spec["sender_shards"])
        self.scheduler_ring = Ring(spec["scheduler_shards"])
        self.senders: dict[str, list[Any]] = {}
        self.schedulers: list[Any] = []
        #: How long an unresolved in-doubt send waits before the provider's silence counts.
        self.grace = timedelta(seconds=float(spec.get("in_doubt_grace_s", 120.0)))

    def _shard_spec(self, owner: str, slots: tuple[int, ...], **extra: Any) -> dict[str, Any]:
        keys = ("database_url", "redis_url", "secret_key", "old_secret_keys", "public_url",
                "lease_s", "log_level")
        return {**{k: self.spec[k] for k in keys if k in self.spec}, "owner": owner,
                "slots": list(slots), **extra}

    async def create_shards(self) -> None:
        """Create (or, after a restart, get back) every shard. Shards of one kind go round
        robin over the alive nodes, offset per group so one node does not get every group's
        shard 0; the pin is soft, so a shard whose node is gone is restarted elsewhere."""
        nodes = ray_api.alive_nodes()

        def node(i: int) -> str | None:
            return nodes[i % len(nodes)] if nodes else None

        for g, (group, channels) in enumerate(CHANNEL_GROUPS.items()):
            self.senders[group] = [
                ray_api.create_shard("sender", sender_name(group, i), self._shard_spec(
                    f"sender:{group}:{i}", self.sender_ring.slots_of(i), channels=channels),
                    node_id=node(i + g))
                for i in range(self.sender_ring.shards)]
        self.schedulers = [
            ray_api.create_shard("scheduler", scheduler_name(i), self._shard_spec(
                f"scheduler:{i}", self.scheduler_ring.slots_of(i)),
                node_id=node(i + len(CHANNEL_GROUPS)))
            for i in range(self.scheduler_ring.shards)]
        await self.ping_all()

    def topology(self) -> dict[str, Any]:
        return {"senders": self.senders, "schedulers": self.schedulers,
                "sender_shards": self.sender_ring.shards,
                "scheduler_shards": self.scheduler_ring.shards}

    async def heartbeat(self, ttl_s: float) -> None:
        """Tell gateways which Ray cluster runs the Supervisor (see ray_api)."""
        value = json.dumps({"address": ray_api.cluster_address(),
                            "node": ray_api.current_node()})
        await self.redis.set(ray_api.SUPERVISOR_KEY, value, px=int(ttl_s * 1000))

    async def ping_all(self, timeout_s: float = 60.0) -> int:
        """Ping every shard (a restarted one starts its loop on the first call)."""
        shards = [h for hs in self.senders.values() for h in hs] + self.schedulers
        results = await ray_api.gather([(h, "ping", ()) for h in shards], timeout=timeout_s)
        down = sum(1 for r in results if isinstance(r, BaseException))
        for r in results:
            if isinstance(r, BaseException):
                log.warning("shard did not answer; Ray restarts it", extra={"error": repr(r)})
                self.metrics.restarted("shard")
        return down

    async def reconcile(self) -> dict[str, int]:
        """Resolve sends left `sending` under an expired lease (a shard died mid-call, or the
        provider timed out): found at the provider → sent; provably absent after the grace
        period → queued again; no way to ask (email) → failed with `outcome_unknown`."""
        from actors.shells import adapters_for

        resolved = {"sent": 0, "requeued": 0, "unknown": 0}
        async with self.pool.acquire() as conn, conn.transaction():
            stale = await store.stale_sending(conn, 200)
            if not stale:
                return resolved
            self.metrics.reclaimed("sending", len(stale))
            adapters = adapters_for(("sms", "voice"))
            now = datetime.now(UTC)
            for row in stale:
                outcome = await self._lookup(adapters, row)
                if outcome is not None:
                    await conn.execute(
                        """UPDATE messages SET status = 'sent', provider_message_id = $2,
                               in_doubt = false, sent_at = coalesce(sent_at, now()),
                               lease_owner = NULL, lease_expires_at = NULL
                           WHERE id = $1 AND status = 'sending'""", row["id"], outcome)
                    resolved["sent"] += 1
                elif row["channel"] in ("sms", "mms", "voice") and \
                        now - row["updated_at"] > self.grace:
                    await conn.execute(
                        """UPDATE messages SET status = 'queued', in_doubt = false,
                               lease_owner = NULL, lease_expires_at = NULL
                           WHERE id = $1 AND status = 'sending'""", row["id"])
                    resolved["requeued"] += 1
                elif row["channel"] == "email" and now - row["updated_at"] > self.grace:
                    await conn.execute(
                        """UPDATE messages SET status = 'failed', error_code = 'outcome_unknown',
                               error_message = 'the provider never confirmed this send',
                               lease_owner = NULL, lease_expires_at = NULL
                           WHERE id = $1 AND status = 'sending'""", row["id"])
                    resolved["unknown"] += 1
            for adapter in {id(a): a for a in adapters.values()}.values():
                with contextlib.suppress(Exception):
                    await adapter.close()
        if any(resolved.values()):
            log.info("in-doubt sends reconciled", extra=resolved)
        return resolved

    async def _lookup(self, adapters: dict[str, Any], row: dict[str, Any]) -> str | None:
        adapter = adapters.get(row["channel"])
        find = getattr(adapter, "find_sent", None)
        if find is None:
            return None
        creds = ProviderCredentials(row["provider"], row["account_id"],
                                    self.box.decrypt(row["secret_encrypted"]), row["base_url"],
                                    dict(row["config"] or {}))
        message = OutboundMessage(message_id=str(row["id"]), channel=row["channel"],
                                  to=row["to_address"], from_=row["from_address"],
                                  body=row["body"] or "")
        try:
            found = await find(creds, message, since=row["created_at"])
        except Exception as exc:  # a failed lookup proves nothing: try again later
            log.warning("in-doubt lookup failed", extra={"message_id": str(row["id"]),
                                                         "error": type(exc).__name__})
            return None
        return getattr(found, "provider_message_id", None) if found else None

    async def run(self, stop: asyncio.Event, interval_s: float = 2.0) -> None:
        while not stop.is_set():
            with contextlib.suppress(Exception):
                await self.heartbeat(ttl_s=ray_api.HEARTBEAT_TTL_S)
            with contextlib.suppress(Exception):  # a shard on a lost node waits for Ray
                await self.ping_all(timeout_s=10.0)
            try:
                await self.reconcile()
            except Exception:
                log.warning("reconcile failed", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)

    async def stop_shards(self) -> None:
        with contextlib.suppress(Exception):
            await self.redis.delete(ray_api.SUPERVISOR_KEY)
        shards = [h for hs in self.senders.values() for h in hs] + self.schedulers
        await ray_api.gather([(h, "stop", ()) for h in shards], timeout=60)
        for h in shards:
            ray_api.kill(h, restart=False)
