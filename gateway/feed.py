"""The realtime feed's protocol without I/O: client frames, topic matching, the cursor that
makes replay + live delivery gapless, and the checks behind resync, heartbeats and abuse.

`gateway/realtime.py` does the I/O; everything here takes its inputs (and `now`) as
arguments so it is tested directly. The wire protocol is written down in docs/realtime.md.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from enum import Enum, IntEnum
from typing import Any
from uuid import UUID

from hub.events import iso


@dataclass(frozen=True, slots=True)
class FeedConfig:
    """Knobs of the feed; the defaults are the production values (tests shorten them)."""

    heartbeat_s: float = 25.0
    #: frames waiting for one client; a live event that does not fit closes it with 4009
    out_queue_max: int = 1000
    #: a `since` further back than this many events is answered with resync_required
    max_replay: int = 10_000
    replay_page: int = 500
    #: how often every connection's cursor is compared with its sub-account's head
    catchup_s: float = 5.0
    ticket_ttl_s: float = 30.0
    max_bad_frames: int = 10
    max_topics: int = 100
    #: how long a closing handshake may wait for a client that is not reading
    close_timeout_s: float = 10.0
    #: the event log keeps this many days; older events are pruned every `prune_every_s`
    retention_days: int = 30
    prune_every_s: float = 3600.0


class CloseCode(IntEnum):
    UNAUTHORIZED = 4001  # missing, invalid, expired or reused ticket; access gone
    ABUSE = 4003  # too many bad frames
    HEARTBEAT_TIMEOUT = 4008  # nothing heard from the client for 2 × heartbeat_s
    SLOW_CONSUMER = 4009  # the client's outgoing queue overflowed; resume with `since`
    INTERNAL = 1011


# --- topics ---------------------------------------------------------------------------

INBOX = "inbox"
ALL = "*"
_OBJECT_TOPIC = re.compile(r"^(conversation|campaign):(.+)$")
INBOX_PREFIXES = ("message.", "conversation.")


def parse_topic(raw: Any) -> str | None:
    """The canonical form of a client's topic, or None when it is not one we serve."""
    if not isinstance(raw, str):
        return None
    if raw in (INBOX, ALL):
        return raw
    m = _OBJECT_TOPIC.match(raw)
    if m is None:
        return None
    try:
        return f"{m.group(1)}:{UUID(m.group(2))}"
    except ValueError:
        return None


def topic_matches(topics: set[str] | frozenset[str], event_type: str,
                  event_topic: str | None) -> bool:
    if not topics:
        return False
    if ALL in topics:
        return True
    if INBOX in topics and event_type.startswith(INBOX_PREFIXES):
        return True
    return event_topic is not None and event_topic in topics


# --- client frames --------------------------------------------------------------------


class BadFrame(ValueError):
    """A client frame we cannot act on; `str(exc)` is the detail sent back."""


@dataclass(frozen=True, slots=True)
class Subscribe:
    topics: tuple[str, ...]
    since: int | None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    topics: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Pong:
    pass


ClientFrame = Subscribe | Unsubscribe | Ping | Pong


def _topics(frame: dict[str, Any], limit: int) -> tuple[str, ...]:
    raw = frame.get("topics")
    if not isinstance(raw, list) or not raw:
        raise BadFrame("`topics` must be a non-empty list")
    if len(raw) > limit:
        raise BadFrame(f"at most {limit} topics per frame")
    out = []
    for t in raw:
        topic = parse_topic(t)
        if topic is None:
            raise BadFrame(f"unknown topic {str(t)[:80]!r}; use inbox, *, "
                           "conversation:<id> or campaign:<id>")
        out.append(topic)
    return tuple(dict.fromkeys(out))


def parse_client_frame(text: str | None, max_topics: int = 100) -> ClientFrame:
    if text is None:
        raise BadFrame("frames are JSON text, not binary")
    try:
        frame = json.loads(text)
    except ValueError:
        raise BadFrame("the frame is not valid JSON") from None
    if not isinstance(frame, dict):
        raise BadFrame("a frame is a JSON object with a `type`")
    kind = frame.get("type")
    if kind == "ping":
        return Ping()
    if kind == "pong":
        return Pong()
    if kind == "subscribe":
        since = frame.get("since")
        if since is not None and (not isinstance(since, int) or isinstance(since, bool)
                                  or since < 0):
            raise BadFrame("`since` must be a non-negative integer seq or null")
        return Subscribe(_topics(frame, max_topics), since)
    if kind == "unsubscribe":
        return Unsubscribe(_topics(frame, max_topics))
    raise BadFrame(f"unknown frame type {str(kind)[:40]!r}; "
                   "send subscribe, unsubscribe, ping or pong")


class Strikes:
    """Counts bad frames; the connection is closed (4003) when the limit is reached."""

    def __init__(self, limit: int) -> None:
        self.limit, self.count = limit, 0

    def hit(self) -> bool:
        self.count += 1
        return self.count >= self.limit


# --- cursor, resume, liveness ---------------------------------------------------------


class Step(Enum):
    DUPLICATE = "duplicate"  # at or below the cursor: already passed
    NEXT = "next"  # exactly cursor + 1: deliver (or filter out) and advance
    GAP = "gap"  # beyond cursor + 1: fill from the log first


class Cursor:
    """The last seq of its sub-account's log a connection has passed (delivered, or skipped
    because no topic matched). Advancing only by one is what makes the feed gapless."""

    def __init__(self, last: int) -> None:
        self.last = last

    def classify(self, seq: int) -> Step:
        if seq <= self.last:
            return Step.DUPLICATE
        return Step.NEXT if seq == self.last + 1 else Step.GAP

    def advance(self, seq: int) -> None:
        if seq != self.last + 1:
            raise ValueError(f"cursor at {self.last} cannot advance to {seq}")
        self.last = seq


def needs_resync(since: int, oldest_seq: int, head: int, max_replay: int) -> bool:
    """Whether a client at `since` must refetch over REST instead of replaying.

    `oldest_seq` is the oldest seq still in the log (head + 1 when the log is empty):
    everything after `since` must still be there, `since` cannot be ahead of the log, and
    the replay must stay within `max_replay` events."""
    return since < oldest_seq - 1 or since > head or head - since > max_replay


@dataclass(slots=True)
class Liveness:
    """When to ping the client and when to give up on it (nothing heard for 2 intervals)."""

    heartbeat_s: float
    heard_at: float
    next_ping_at: float

    @classmethod
    def start(cls, now: float, heartbeat_s: float) -> Liveness:
        return cls(heartbeat_s, now, now + heartbeat_s)

    def heard(self, now: float) -> None:
        self.heard_at = now

    @property
    def deadline(self) -> float:
        return self.heard_at + 2 * self.heartbeat_s

    def timed_out(self, now: float) -> bool:
        return now > self.deadline

    def ping_due(self, now: float) -> bool:
        if now < self.next_ping_at:
            return False
        self.next_ping_at = now + self.heartbeat_s
        return True

    def wake_at(self) -> float:
        return min(self.next_ping_at, self.deadline)


# --- server frames --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LiveEvent:
    """An event as it fans out: parsed once per process, its frame serialized once."""

    seq: int
    type: str
    topic: str | None
    frame: str

    @classmethod
    def from_wire(cls, text: str | bytes) -> LiveEvent:
        """An event as `hub.events.Event.wire()` published it: only the short header is
        parsed; the frame goes to clients as it came."""
        if isinstance(text, bytes):
            text = text.decode()
        header, frame = text.split("\n", 1)
        head = json.loads(header)
        return cls(int(head["seq"]), str(head["event"]), head.get("topic"), frame)


def dump(frame: dict[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"))


def hello(sub_account_id: UUID, seq: int, heartbeat_s: float, now: datetime) -> str:
    return dump({"type": "hello", "sub_account_id": str(sub_account_id), "seq": seq,
                 "heartbeat_s": heartbeat_s, "server_time": iso(now)})


def subscribed(topics: set[str], since: int) -> str:
    return dump({"type": "subscribed", "topics": sorted(topics), "since": since})


def unsubscribed(topics: set[str]) -> str:
    return dump({"type": "unsubscribed", "topics": sorted(topics)})


def resync_required(oldest_seq: int, head: int, detail: str) -> str:
    return dump({"type": "resync_required", "oldest_seq": oldest_seq, "seq": head,
                 "detail": detail})


def error(code: str, detail: str) -> str:
    return dump({"type": "error", "code": code, "detail": detail})


PING = dump({"type": "ping"})
PONG = dump({"type": "pong"})
