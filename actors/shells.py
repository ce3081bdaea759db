"""Thin actor shells: each builds its plain state object from a spec (plain data, so Ray can
ship it and restart the actor with it), starts its loop lazily, and forwards calls.
`actors/ray_api.py` turns them into Ray actors; tests may run them directly."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from config.logging import setup_logging

log = logging.getLogger(__name__)


class _Shell:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self._started: asyncio.Task[None] | None = None
        self._relay: asyncio.Task[None] | None = None

    async def _ensure(self) -> None:
        if self._started is None:
            self._started = asyncio.create_task(self._start())
        await asyncio.shield(self._started)

    async def _start(self) -> None:
        raise NotImplementedError

    async def _open(self) -> tuple[Any, Any, Any]:
        """Logging first (INFO to Ray's worker log file, warnings also relayed to the hub's
        log: `actors/log_relay.py`), then the pool, Redis and the secret box."""
        from actors import log_relay

        setup_logging(self.spec.get("log_level", "INFO"))
        pool, redis, box = await _open(self.spec)
        self._relay = log_relay.install(redis, self.spec.get("owner", "supervisor"))
        return pool, redis, box

    async def ping(self) -> str:
        await self._ensure()
        return "pong"


async def _open(spec: dict[str, Any]) -> tuple[Any, Any, Any]:
    import redis.asyncio as aioredis

    from hub import db
    from hub.crypto import SecretBox

    pool = await db.create_pool(spec["database_url"], min_size=1, max_size=spec.get("pool", 8))
    redis = aioredis.from_url(spec["redis_url"])
    box = SecretBox(spec["secret_key"], spec.get("old_secret_keys", []))
    return pool, redis, box


def _metrics() -> Any:
    from actors import ray_api
    from actors.metrics import Metrics

    try:
        return Metrics(ray_api.metric if ray_api.is_initialized() else None)
    except Exception:  # metrics must never stop sending
        return Metrics()


def adapters_for(channels: tuple[str, ...]) -> dict[str, Any]:
    """One adapter instance per channel, shared by every sub-account of the shard."""
    from channels.sendgrid import SendGridAdapter
    from channels.twilio_sms import TwilioSmsAdapter
    from channels.twilio_voice import TwilioVoiceAdapter

    out: dict[str, Any] = {}
    sms = TwilioSmsAdapter() if {"sms", "mms"} & set(channels) else None
    for ch in channels:
        if ch in ("sms", "mms"):
            out[ch] = sms
        elif ch == "voice":
            out[ch] = TwilioVoiceAdapter()
        elif ch == "email":
            out[ch] = EmailRouter(SendGridAdapter())
    return out


class EmailRouter:
    """Email goes to SendGrid or an SMTP relay depending on the provider account."""

    provider = "email"

    def __init__(self, sendgrid: Any) -> None:
        self.sendgrid = sendgrid
        self._smtp: Any = None

    async def send_batch(self, creds: Any, messages: Any) -> Any:
        if creds.provider == "smtp":
            if self._smtp is None:
                from channels.smtp import SmtpAdapter

                self._smtp = SmtpAdapter()
            return await self._smtp.send_batch(creds, messages)
        return await self.sendgrid.send_batch(creds, messages)

    async def close(self) -> None:
        await self.sendgrid.close()
        if self._smtp is not None:
            await self._smtp.close()


class SenderShell(_Shell):
    core: Any

    async def _start(self) -> None:
        from actors.sender import SenderConfig, SenderCore

        pool, redis, box = await self._open()
        channels = tuple(self.spec["channels"])
        config = SenderConfig(owner=self.spec["owner"], channels=channels,
                              slots=tuple(self.spec["slots"]),
                              public_url=self.spec["public_url"],
                              lease_s=self.spec.get("lease_s", 60.0))
        self.core = SenderCore(config, pool, redis, box, adapters_for(channels), _metrics())
        self._stop_event = asyncio.Event()
        self._loop = asyncio.create_task(self.core.run(self._stop_event))
        log.info("sender shard started", extra={"owner": config.owner,
                                                "slots": len(config.slots)})

    async def submit(self, messages: list[str] | list[dict[str, Any]]) -> int:
        await self._ensure()
        result: int = await self.core.submit(messages)
        return result

    async def cancel(self, message_ids: list[str]) -> list[str]:
        await self._ensure()
        result: list[str] = self.core.cancel(message_ids)
        return result

    async def stats(self) -> dict[str, Any]:
        await self._ensure()
        result: dict[str, Any] = self.core.stats()
        return result

    async def stop(self) -> None:
        if self._started is not None:
            self._stop_event.set()
            await self._loop


def sender_hand_off(sender_shards: int) -> Any:
    """The scheduler's `HandOff` over Ray: each message leased to the Sender shard the ring
    gives it, and handed to the shards by name (`ray_api.call_named`), one call per shard,
    all at once."""
    from actors import ray_api
    from actors.ring import CHANNEL_GROUPS, Ring, sender_owner, sender_shard
    from actors.scheduler import HandOff
    from actors.sender import SenderConfig
    from actors.supervisor import sender_name

    ring = Ring(sender_shards)
    names = {sender_owner(g, i): sender_name(g, i)
             for g in CHANNEL_GROUPS for i in range(sender_shards)}
    handles: dict[str, Any] = {}

    def owner(channel: str, slot: int) -> str:
        return sender_owner(*sender_shard(ring, channel, slot))

    async def send(by_owner: dict[str, list[dict[str, Any]]]) -> list[str]:
        owners = list(by_owner)
        results = await asyncio.gather(
            *(ray_api.call_named(handles, names[o], "submit", by_owner[o], timeout=10)
              for o in owners), return_exceptions=True)
        failed = []
        for o, result in zip(owners, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("hand-off to a sender shard failed; its leases are given back",
                            extra={"shard": names[o], "error": type(result).__name__})
                failed.append(o)
        return failed

    return HandOff(owner, send, room=SenderConfig.max_backlog)


class SchedulerShell(_Shell):
    core: Any

    async def _start(self) -> None:
        from actors.scheduler import SchedulerCore

        pool, redis, _ = await self._open()
        shards = self.spec.get("sender_shards")
        self.core = SchedulerCore(self.spec["owner"], tuple(self.spec["slots"]), pool, redis,
                                  lease_s=self.spec.get("lease_s", 60.0),
                                  hand_off=sender_hand_off(shards) if shards else None)
        self._stop_event = asyncio.Event()
        self._loop = asyncio.create_task(self.core.run(self._stop_event))
        log.info("scheduler shard started", extra={"owner": self.spec["owner"]})

    async def kick(self) -> int:
        """Run a tick now (after a launch or resume) instead of waiting for the next one."""
        await self._ensure()
        result: int = await self.core.tick()
        return result

    async def stop(self) -> None:
        if self._started is not None:
            self._stop_event.set()
            await self._loop


class SupervisorShell(_Shell):
    core: Any

    async def _start(self) -> None:
        from actors.supervisor import Supervisor

        pool, redis, box = await self._open()
        self.core = Supervisor(self.spec, pool, redis, box, _metrics())
        await self.core.create_shards()
        self._stop_event = asyncio.Event()
        self._loop = asyncio.create_task(self.core.run(self._stop_event))

    async def topology(self) -> dict[str, Any]:
        await self._ensure()
        result: dict[str, Any] = self.core.topology()
        return result

    async def reconcile(self) -> dict[str, int]:
        await self._ensure()
        result: dict[str, int] = await self.core.reconcile()
        return result

    async def stop(self) -> None:
        if self._started is not None:
            self._stop_event.set()
            await self._loop
            await self.core.stop_shards()
