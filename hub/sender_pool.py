"""Sticky sender choice for a campaign's number pool: each contact always hears from the same
number, and load spreads over the pool (optionally in proportion to each number's MPS).

Rendezvous (highest-random-weight) hashing: every (contact, sender) pair gets a score from a
stable hash and the contact goes to the highest-scoring sender. Adding a number moves only
the ~1/n of contacts that now score highest on it; removing one moves only its own contacts.
The hash is blake2b, never Python's ``hash()``, which is salted per process and would reshuffle
contacts between the numbers on every restart.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

_SPAN = float(2**52)  # u keeps 52 bits so that (h + 0.5) / _SPAN is exact and never 1.0


def _hash64(contact_key: str, sender_id: str) -> int:
    # Length-prefixing makes the encoding unambiguous: ("ab", "c") and ("a", "bc") differ.
    contact = contact_key.encode()
    data = len(contact).to_bytes(4, "big") + contact + sender_id.encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def choose_sender(contact_key: str, senders: Sequence[str]) -> str:
    """The sender that ``contact_key`` sticks to; independent of the order of ``senders``."""
    if not senders:
        raise ValueError("no senders to choose from")
    return max(senders, key=lambda s: (_hash64(contact_key, s), s))


def choose_weighted(contact_key: str, senders: Sequence[tuple[str, float]]) -> str:
    """Like `choose_sender`, but each sender gets a share of contacts proportional to its
    weight (e.g. its MPS). Senders of weight 0 get none; changing one sender's weight only
    moves contacts to or from that sender.

    Weighted rendezvous: score = weight / -ln(u), u uniform in (0, 1) from the hash — the
    maximum of such scores falls on each sender with probability weight / total.
    """
    best: tuple[float, str] | None = None
    for sender_id, weight in senders:
        if weight < 0 or not math.isfinite(weight):
            raise ValueError(f"weight of {sender_id!r} must be finite and >= 0, got {weight!r}")
        if weight == 0:
            continue
        u = ((_hash64(contact_key, sender_id) >> 12) + 0.5) / _SPAN
        score = (weight / -math.log(u), sender_id)
        if best is None or score > best:
            best = score
    if best is None:
        raise ValueError("no sender with a positive weight")
    return best[1]
