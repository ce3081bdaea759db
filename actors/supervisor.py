"""The Supervisor: places sub-accounts on a fixed pool of shards by consistent hashing,
creates the shards once, spread over the cluster's nodes (and moves them when nodes leave or
join, `actors/placement.py`), keeps them alive, and reconciles
what dead shards left behind: sends whose outcome is unknown are resolved by asking the
provider, never by resending blindly; and texts accepted whose final receipt never came (a
callback that found no gateway listening is not retried) are looked up at the provider.

It holds no state of its own beyond actor handles (named, so a restarted Supervisor gets the
same shards back) and what it reads from PostgreSQL, so Ray may restart it on any node. While
it runs it keeps a heartbeat in Redis naming its Ray cluster, so a gateway started against
another cluster refuses to create a second Supervisor over the same database."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import redis.asyncio as aioredis

from actors import placement, ray_api
from actors.metrics import Metrics
from actors.ring import CHANNEL_GROUPS, Ring, sender_owner
from channels.base import OutboundMessage, ProviderCredentials, StatusUpdate
from hub import events
from hub.context import Tx
from hub.crypto import SecretBox
from hub.status import Status
from hub.store import sending as store
from hub.store import webhooks as webhook_store
from hub.webhook_actions import Receipt, apply_receipts

log = logging.getLogger(__name__)


def sender_name(group: str, index: int) -> str:
    return f"hub-sender-{group}-{index}"


def scheduler_name(index: int) -> str:
    return f"hub-scheduler-{index}"


#: What a receipt lookup applies: the outcomes after `sent`. Anything earlier is news to no one.
_RECEIPT_FINAL = frozenset({Status.DELIVERED, Status.READ, Status.UNDELIVERED, Status.FAILED})


class Supervisor:
    def __init__(self, spec: dict[str, Any], pool: asyncpg.Pool, redis: aioredis.Redis,
                 box: SecretBox, metrics: Metrics) -> None:
        self.spec, self.pool, self.redis, self.box, self.metrics = spec, pool, redis, box, metrics
        self.sender_ring = Ring(spec["sender_shards"])
        self.scheduler_ring = Ring(spec["scheduler_shards"])
        self.handles: dict[str, Any] = {}  # by shard name
        #: How long an unresolved in-doubt send waits before the provider's silence counts.
        self.grace = timedelta(seconds=float(spec.get("in_doubt_grace_s", 120.0)))
        #: How long an accepted text waits for its final receipt before Twilio is asked,
        #: how long it is asked about at most, and how often the reconciler looks for them.
        self.receipt_grace_s = float(spec.get("receipt_grace_s", 180.0))
        self.receipt_max_age_s = float(spec.get("receipt_max_age_s", 172_800.0))
        self.receipt_interval_s = float(spec.get("receipt_interval_s", 30.0))
        self._receipts_due = 0.0  # time.monotonic() of the next look

    def _shard_spec(self, owner: str, slots: tuple[int, ...], **extra: Any) -> dict[str, Any]:
        keys = ("database_url", "redis_url", "secret_key", "old_secret_keys", "public_url",
                "lease_s", "log_level")
        return {**{k: self.spec[k] for k in keys if k in self.spec}, "owner": owner,
                "slots": list(slots), **extra}

    def _shards(self) -> dict[str, tuple[str, dict[str, Any]]]:
        """Every shard of the hub, by name, in a fixed order: (kind, spec)."""
        out: dict[str, tuple[str, dict[str, Any]]] = {}
        for group, channels in CHANNEL_GROUPS.items():
            for i in range(self.sender_ring.shards):
                out[sender_name(group, i)] = ("sender", self._shard_spec(
                    sender_owner(group, i), self.sender_ring.slots_of(i), channels=channels))
        for i in range(self.scheduler_ring.shards):
            out[scheduler_name(i)] = ("scheduler", self._shard_spec(
                f"scheduler:{i}", self.scheduler_ring.slots_of(i),
                sender_shards=self.sender_ring.shards))
        return out

    async def create_shards(self) -> None:
        """Create (or, after a restart, get back) every shard, each softly pinned to the
        node the placement plan gives it over the alive nodes: round robin, so shards spread
        and as many shards as nodes run one per node. A shard whose node is gone is restarted
        by Ray anywhere; `rebalance` then moves it where the plan wants it."""
        targets = placement.plan(list(self._shards()), {}, ray_api.alive_nodes())
        for name, (kind, spec) in self._shards().items():
            self.handles[name] = ray_api.create_shard(kind, name, spec,
                                                      node_id=targets.get(name))
        await self.ping_all()

    async def rebalance(self) -> list[str]:
        """Move the shards that are not where the placement plan over the alive nodes puts
        them (their node left, or a node joined and the others are over their share); each
        one is stopped (its sends in flight finish, its leases go back), then created again
        on its node. Waits while Ray is still restarting a shard. Returns the shards moved."""
        shards = self._shards()
        placed = ray_api.actor_placement(list(shards))
        if len(placed) < len(shards):
            return []
        moves = placement.plan(list(shards), {n: p["node"] for n, p in placed.items()},
                               ray_api.alive_nodes())
        for name, node in moves.items():
            kind, spec = shards[name]
            old = self.handles[name]
            with contextlib.suppress(Exception):  # one that cannot drain is killed all the same
                await ray_api.call(old, "stop", timeout=30)
            ray_api.kill(old, restart=False)
            await ray_api.wait_name_free(name)
            self.handles[name] = ray_api.create_shard(kind, name, spec, node_id=node)
            log.info("shard moved", extra={"shard": name, "node": node})
        if moves:
            await self.ping_all()
        return list(moves)

    def topology(self) -> dict[str, Any]:
        h = self.handles
        return {"senders": {g: [h[sender_name(g, i)] for i in range(self.sender_ring.shards)]
                            for g in CHANNEL_GROUPS},
                "schedulers": [h[scheduler_name(i)] for i in range(self.scheduler_ring.shards)],
                "sender_shards": self.sender_ring.shards,
                "scheduler_shards": self.scheduler_ring.shards}

    async def heartbeat(self, ttl_s: float) -> None:
        """Tell gateways which Ray cluster runs the Supervisor (see ray_api)."""
        value = json.dumps({"address": ray_api.cluster_address(),
                            "node": ray_api.current_node()})
        await self.redis.set(ray_api.SUPERVISOR_KEY, value, px=int(ttl_s * 1000))

    async def ping_all(self, timeout_s: float = 60.0) -> int:
        """Ping every shard (a restarted one starts its loop on the first call)."""
        shards = list(self.handles.values())
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

        sent: list[tuple[UUID, str, str]] = []
        requeued: list[UUID] = []
        unknown: list[tuple[UUID, str | None, str]] = []
        async with self.pool.acquire() as conn, conn.transaction():
            stale = await store.stale_sending(conn, 200)
            if not stale:
                return {"sent": 0, "requeued": 0, "unknown": 0}
            self.metrics.reclaimed("sending", len(stale))
            adapters = adapters_for(("sms", "voice"))
            now = datetime.now(UTC)
            done: list[dict[str, Any]] = []
            for row in stale:
                outcome = await self._lookup(adapters, row)
                if outcome is not None:
                    sent.append((row["id"], outcome, "sent"))
                elif now - row["updated_at"] <= self.grace:
                    continue
                elif row["channel"] == "email":
                    unknown.append((row["id"], "outcome_unknown",
                                    "the provider never confirmed this send"))
                else:
                    requeued.append(row["id"])
                done.append(row)
            # Recorded as the sender records its own outcomes: history and realtime event.
            await store.record_accepted(conn, None, sent)
            await store.requeue_unsent(conn, requeued)
            await store.record_failed(conn, None, unknown)
            written = await store.status_events(
                conn, [r["id"] for r in done if r["priority"] != "bulk"])
            for adapter in {id(a): a for a in adapters.values()}.values():
                with contextlib.suppress(Exception):
                    await adapter.close()
        await events.publish(self.redis, written)
        resolved = {"sent": len(sent), "requeued": len(requeued), "unknown": len(unknown)}
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

    async def reconcile_receipts(self, per_account: int = 50, limit: int = 500
                                 ) -> dict[str, int]:
        """Ask Twilio about SMS/MMS that stayed `sent` past the receipt grace period, and
        apply a final status it reports as a receipt would be applied (hub.webhook_actions):
        same event key as the callback, so a late real receipt and the lookup are one
        history row and one move; forward-only; a throttled failure queued again; events
        published after the commit. Only Twilio messaging is asked: SendGrid has no
        per-message lookup, and voice calls are left to their callbacks."""
        from actors.shells import adapters_for

        rows = await store.unconfirmed_sent(self.pool, self.receipt_grace_s,
                                            self.receipt_max_age_s, per_account, limit)
        if not rows:
            return {"looked_up": 0, "moved": 0}
        adapter = adapters_for(("sms",))["sms"]
        try:
            creds = {r["provider_account_id"]: self._credentials(r) for r in rows}
            updates = await asyncio.gather(*(
                adapter.lookup(creds[r["provider_account_id"]], r["provider_message_id"],
                               message_id=str(r["id"])) for r in rows), return_exceptions=True)
        finally:
            await adapter.close()
        failed = [(r, u) for r, u in zip(rows, updates, strict=True)
                  if isinstance(u, BaseException)]
        if failed:  # a failed lookup proves nothing: asked again after the back-off
            log.warning("receipt lookups failed", extra={
                "failed": len(failed), "message_id": str(failed[0][0]["id"]),
                "sub_account_id": str(failed[0][0]["sub_account_id"]),
                "error": type(failed[0][1]).__name__})
        final = {r["id"]: u for r, u in zip(rows, updates, strict=True)
                 if isinstance(u, StatusUpdate) and u.status in _RECEIPT_FINAL}
        async with self.pool.acquire() as conn, conn.transaction():
            tx = Tx(conn)
            # Locked in id order, as the webhook applier locks them, before any write.
            locked = await webhook_store.callback_messages(conn, [r["id"] for r in rows],
                                                           "twilio", [])
            moved = await apply_receipts(tx, [Receipt(m, final[m["id"]]) for m in locked
                                              if m["id"] in final])
            await store.receipt_checked(conn, [r["id"] for r in rows])
            written = await events.append(conn, tx.pending) if tx.pending else []
        await events.publish(self.redis, written)
        outcome = {"looked_up": len(rows), "moved": len(moved)}
        log.info("missed receipts looked up", extra=outcome)
        return outcome

    def _credentials(self, row: dict[str, Any]) -> ProviderCredentials:
        return ProviderCredentials("twilio", row["account_id"],
                                   self.box.decrypt(row["secret_encrypted"]), row["base_url"],
                                   dict(row["config"] or {}))

    async def run(self, stop: asyncio.Event, interval_s: float = 2.0) -> None:
        while not stop.is_set():
            with contextlib.suppress(Exception):
                await self.heartbeat(ttl_s=ray_api.HEARTBEAT_TTL_S)
            with contextlib.suppress(Exception):  # a shard on a lost node waits for Ray
                await self.ping_all(timeout_s=10.0)
            try:
                await self.rebalance()
            except Exception:
                log.warning("rebalance failed", exc_info=True)
            try:
                await self.reconcile()
            except Exception:
                log.warning("reconcile failed", exc_info=True)
            if time.monotonic() >= self._receipts_due:
                self._receipts_due = time.monotonic() + self.receipt_interval_s
                try:
                    await self.reconcile_receipts()
                except Exception:
                    log.warning("receipt reconcile failed", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)

    async def stop_shards(self) -> None:
        with contextlib.suppress(Exception):
            await self.redis.delete(ray_api.SUPERVISOR_KEY)
        shards = list(self.handles.values())
        await ray_api.gather([(h, "stop", ()) for h in shards], timeout=60)
        for h in shards:
            ray_api.kill(h, restart=False)
