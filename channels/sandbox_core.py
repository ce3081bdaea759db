"""The sandbox carrier's state: the request log (the ground truth tests count on), sender
queues, account tokens, opt-outs and the counters behind `/sandbox/stats`."""

from __future__ import annotations

import asyncio
import math
import random
import secrets
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from channels.sandbox_config import CarrierConfig

#: (epoch seconds, provider status, provider error code)
Step = tuple[float, str, int | None]

T = TypeVar("T")

OPT_OUT_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT",
                           "REVOKE", "OPTOUT"})
OPT_IN_WORDS = frozenset({"START", "YES", "UNSTOP"})


@dataclass(slots=True)
class Sent:
    """One accepted send, one recipient. Everything but `timeline` is in the log."""

    index: int
    channel: str  # sms | mms | email | voice
    to: str
    from_: str | None
    provider_sid: str
    account_sid: str
    time: float  # when the request was accepted (epoch seconds)
    body: str | None = None
    subject: str | None = None
    status_callback: str | None = None
    message_id: str | None = None  # ours, from StatusCallback ?message_id= or custom_args
    sent_at: float | None = None  # when it left the sender's queue
    outcome: str = ""  # the provider's planned final status
    error_code: int | None = None
    hung: bool = False
    media_urls: tuple[str, ...] = ()
    messaging_service_sid: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    timeline: list[Step] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index, "channel": self.channel, "to": self.to, "from": self.from_,
            "body": self.body, "subject": self.subject, "provider_sid": self.provider_sid,
            "account_sid": self.account_sid, "status_callback": self.status_callback,
            "time": self.time, "message_id": self.message_id, "sent_at": self.sent_at,
            "outcome": self.outcome, "error_code": self.error_code, "hung": self.hung,
            "media_urls": list(self.media_urls),
            "messaging_service_sid": self.messaging_service_sid, **self.extra,
        }

    def status_at(self, now: float, initial: str) -> tuple[str, int | None]:
        status, code = initial, None
        for at, step_status, step_code in self.timeline:
            if at > now:
                break
            status, code = step_status, step_code
        return status, code


class CarrierState:
    """Plain state, no I/O; the HTTP handlers and callback tasks share one instance."""

    def __init__(self, config: CarrierConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.log: list[Sent] = []
        self.by_sid: dict[str, Sent] = {}
        self.inbound: dict[str, dict[str, Any]] = {}  # inbound message resources by SID
        self.counts: Counter[str] = Counter()
        self.tokens: dict[str, str] = {}  # account SID → last token it authenticated with
        self.owner: dict[str, str] = {}  # sender number → account SID that last used it
        self.opted_out: set[tuple[str, str]] = set()  # (contact, sender)
        self._next_free: dict[str, float] = {}  # sender → when its queue is empty
        self.closing = asyncio.Event()

    # --- configuration -------------------------------------------------------------------

    def configure(self, patch: Mapping[str, Any]) -> CarrierConfig:
        config = self.config.updated(patch)
        if "seed" in patch:
            self.rng.seed(config.seed)
        self.config = config
        return config

    def token_for(self, account_sid: str) -> str:
        """The token that signs this account's callbacks, as Twilio uses the account's."""
        return (self.config.accounts.get(account_sid) or self.tokens.get(account_sid)
                or self.config.default_auth_token)

    def owner_of(self, number: str) -> str:
        return self.owner.get(number) or self.config.default_account_sid

    # --- random draws --------------------------------------------------------------------

    def chance(self, rate: float) -> bool:
        return rate > 0.0 and self.rng.random() < rate

    @staticmethod
    def sid(prefix: str) -> str:
        """A new SID. Ids are not drawn from the seeded RNG, which decides outcomes only: a
        carrier restarted with the same seed must not hand out a SID again (Twilio never
        does, and the hub's unique (provider, SID, recipient) index counts on it)."""
        return prefix + secrets.token_hex(16)

    def quirks(self, items: list[tuple[float, T]]) -> list[tuple[float, T]]:
        """One message's callbacks, (time, payload) in time order, after the out-of-order
        rate (payloads reversed over the same times) and the duplicate rate."""
        if len(items) > 1 and self.chance(self.config.out_of_order_rate):
            items = list(zip([at for at, _ in items], [p for _, p in reversed(items)],
                             strict=True))
        if self.config.duplicate_rate > 0:
            doubled: list[tuple[float, T]] = []
            for item in items:
                doubled.append(item)
                if self.chance(self.config.duplicate_rate):
                    doubled.append(item)
            items = doubled
        return items

    def api_fault(self) -> int | None:
        """429, a 5xx, or None: whether this API request is refused before it is read."""
        c = self.config
        if self.chance(c.rate_limit_rate):
            return 429
        if self.chance(c.server_error_rate):
            return self.rng.choice(c.server_error_statuses)
        return None

    def outcome(self) -> Literal["delivered", "undelivered", "failed"]:
        c = self.config
        if c.undelivered_rate == 0.0 and c.failed_rate == 0.0:
            return "delivered"
        x = self.rng.random()
        if x < c.failed_rate:
            return "failed"
        if x < c.failed_rate + c.undelivered_rate:
            return "undelivered"
        return "delivered"

    def latency(self) -> float:
        return self.config.latency.sample(self.rng)

    def retry_after(self) -> int:
        return max(1, math.ceil(self.config.retry_after_s))

    # --- sender queues -------------------------------------------------------------------

    def _mps(self, sender: str) -> float:
        return self.config.mps_by_sender.get(sender) or self.config.mps

    def schedule(self, sender: str, now: float) -> float | None:
        """When a message from `sender` leaves its queue, or None when the queue is full.
        Like Twilio, messages beyond the sender's MPS wait; only a full queue refuses."""
        mps = self._mps(sender)
        if mps <= 0:
            return now
        free = self._next_free.get(sender, 0.0)
        slot = free if free > now else now
        limit = self.config.queue_limit
        if limit and math.ceil((slot - now) * mps - 1e-9) >= limit:  # messages waiting
            return None
        self._next_free[sender] = slot + 1.0 / mps
        return slot

    def queue_retry_after(self, sender: str, now: float) -> int:
        """Seconds until a full queue has room again."""
        mps = self._mps(sender) or 1.0
        wait = self._next_free.get(sender, now) - now - (self.config.queue_limit - 1) / mps
        return max(1, math.ceil(wait))

    def queue_depth(self, now: float) -> dict[str, int]:
        depth = {}
        for sender, free in self._next_free.items():
            if free > now:
                depth[sender] = math.ceil((free - now) * (self._mps(sender) or 1.0))
        return depth

    # --- the log ---------------------------------------------------------------------------

    def record(self, sent: Sent) -> Sent:
        sent.index = len(self.log)
        self.log.append(sent)
        self.by_sid[sent.provider_sid] = sent
        self.counts[f"accepted.{sent.channel}"] += 1
        if sent.hung:
            self.counts["hung"] += 1
        return sent

    def rejected(self, status: int) -> None:
        self.counts[f"rejected.{status}"] += 1

    def clear(self) -> None:
        """A fresh start for the next test: log, counters, sender queues and opt-outs."""
        self.log.clear()
        self._next_free.clear()
        self.opted_out.clear()
        self.by_sid.clear()
        self.inbound.clear()
        self.counts.clear()

    def stats(self) -> dict[str, Any]:
        accepted = {k.split(".", 1)[1]: v for k, v in self.counts.items()
                    if k.startswith("accepted.")}
        rejected = {k.split(".", 1)[1]: v for k, v in self.counts.items()
                    if k.startswith("rejected.")}
        others = {k: v for k, v in self.counts.items()
                  if not k.startswith(("accepted.", "rejected."))}
        return {"accepted": {**accepted, "total": sum(accepted.values())},
                "rejected": {**rejected, "total": sum(rejected.values())},
                "log_size": len(self.log), "queued": self.queue_depth(time.time()),
                "opted_out": len(self.opted_out), **others}

    # --- opt-out ---------------------------------------------------------------------------

    def note_inbound_keyword(self, contact: str, sender: str, body: str) -> None:
        """Twilio's default opt-out handling for a contact texting a sender."""
        if not self.config.honor_opt_out:
            return
        word = body.strip().upper()
        if word in OPT_OUT_WORDS:
            self.opted_out.add((contact, sender))
        elif word in OPT_IN_WORDS:
            self.opted_out.discard((contact, sender))

    async def hang(self) -> None:
        """Hold a request open: until the client gives up, the carrier stops or the limit."""
        try:
            await asyncio.wait_for(self.closing.wait(), self.config.hang_max_s)
        except TimeoutError:
            pass
