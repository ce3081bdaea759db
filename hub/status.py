"""The one message lifecycle every channel maps onto, and its forward-only merge rule.

Outbound: queued → scheduled → sending → sent → delivered → read, with the terminal
outcomes undelivered, failed and canceled. Inbound messages are `received`.

Provider callbacks carry no sequence number and arrive duplicated and out of order, so a
message's status is the *maximum* of every status ever reported for it under the rank
below. Taking the maximum makes the result independent of arrival order: whatever order
sent, delivered, undelivered, failed and read arrive in, the same final status results.
A positive handset confirmation outranks a negative one (a `delivered` seen at any time
beats `undelivered`, which beats `failed`), and `read` implies `delivered`.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    QUEUED = "queued"
    SCHEDULED = "scheduled"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    UNDELIVERED = "undelivered"
    FAILED = "failed"
    CANCELED = "canceled"
    RECEIVED = "received"


_RANK: dict[Status, int] = {
    Status.QUEUED: 0,
    Status.SCHEDULED: 1,
    Status.SENDING: 2,
    Status.SENT: 3,
    Status.FAILED: 4,
    Status.UNDELIVERED: 5,
    Status.DELIVERED: 6,
    Status.READ: 7,
}

#: Statuses after which no provider call for the message can happen any more.
FINAL: frozenset[Status] = frozenset(
    {Status.READ, Status.UNDELIVERED, Status.FAILED, Status.CANCELED, Status.RECEIVED}
)
#: Statuses from which a message may still be canceled: nothing has left for the provider.
CANCELABLE: frozenset[Status] = frozenset({Status.QUEUED, Status.SCHEDULED})
#: Outbound statuses reached only once the provider has accepted the message.
ACCEPTED: frozenset[Status] = frozenset(
    {Status.SENT, Status.DELIVERED, Status.READ, Status.UNDELIVERED}
)


def rank(status: Status) -> int:
    return _RANK.get(status, -1)


def can_transition(current: Status, new: Status) -> bool:
    """Whether a message in `current` moves when `new` is reported for it."""
    if current == new:
        return False
    if current in (Status.CANCELED, Status.RECEIVED) or new == Status.RECEIVED:
        return False
    if new == Status.CANCELED:
        return current in CANCELABLE
    return rank(new) > rank(current)


def merge(current: Status, new: Status) -> Status:
    """The status after `new` is reported for a message in `current`."""
    return new if can_transition(current, new) else current


def sql_rank_case(column: str = "status") -> str:
    """A SQL CASE expression giving `column`'s rank, for forward-only UPDATE guards."""
    arms = " ".join(f"WHEN '{s.value}' THEN {r}" for s, r in _RANK.items())
    return f"(CASE {column} {arms} ELSE -1 END)"
