"""When a campaign's messages will leave: a dry-run timeline and the live ETA, from recipient
counts per time zone, the local send window and each sender's rate. Pure: takes `now`.

The model (the Sender shards pace by their token buckets and the scheduler by windows;
`Projection.due_times` gives the per-zone send times this model predicts):

- Sending starts at max(now, start_at). Each sender is a stream of its own rate: the k-th
  message of an uninterrupted run leaves k / rate seconds after the run starts, so no interval
  of L seconds holds more than ceil(rate × L) of its sends.
- A pool's recipients are shared between its senders in proportion to their rates, zone by
  zone (as `hub.sender_pool.choose_weighted` assigns contacts by MPS), and each sender drains
  its own share: the campaign finishes when its slowest sender does.
- A zone's recipients may leave only while `window.allows(t, zone)`; its open intervals are
  cut exactly where that answer changes (wall-clock start/end on each local day, both folds,
  and every UTC-offset change), so DST and windows that wrap midnight need no special case.
- A sender's rate goes to the open zone whose window closes first (earliest deadline first;
  ties by zone name). Any work-conserving order sends as much per second; this one leaves the
  least backlog behind when evenings arrive, so fewer contacts slip to tomorrow. A zone
  opening later with an earlier close takes over after the message in flight.
- Whatever is not sent within `horizon_days` is `unsendable`, and then `finish_at` is None.
  Projections run between 1970 and `_END`, so any start, even in the year 9999, is safe.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from itertools import pairwise
from zoneinfo import ZoneInfo

from hub.timezones import SendWindow, _offset_changes

# Time is kept exact (Fractions of a second): float drift would let a send land on a window's
# closing instant or a 3,601st send into an hour at 1/s.
_US = 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Where projections stop: the calendar ends on 9999-12-31, and local days around the last
#: instant projected must still be dates in every zone.
_END = datetime(9999, 12, 29, tzinfo=UTC)
_Run = tuple[str, Fraction, int, Fraction]  # zone, seconds after the origin, count, rate


@dataclass(frozen=True, slots=True)
class RecipientSlot:
    """`count` recipients whose quiet hours are computed in `tz`."""

    tz: ZoneInfo | str
    count: int = 1


#: Recipients per zone: `{ZoneInfo("Asia/Tokyo"): 40_000, "America/New_York": 60_000}`.
ZoneCounts = Mapping[ZoneInfo, int] | Mapping[str, int] | Mapping[ZoneInfo | str, int]


@dataclass(frozen=True, slots=True)
class TimelineBucket:
    start: datetime
    end: datetime
    sends: int
    by_zone: dict[str, int]


@dataclass(frozen=True, slots=True)
class SendRun:
    """One sender's `count` messages to `zone`'s recipients: the first at `start`, then one
    every 1 / `rate_per_s` seconds."""

    zone: str
    start: datetime  # rounded down to the microsecond, like every instant shown
    count: int
    rate_per_s: float

    def due_times(self) -> Iterator[datetime]:
        rate = _exact(self.rate_per_s)
        for j in range(self.count):  # floor: never later than the exact send
            yield self.start + timedelta(microseconds=j * _US * rate.denominator
                                         // rate.numerator)


@dataclass(frozen=True, slots=True)
class Projection:
    #: Fixed buckets (aligned to multiples of bucket_s since the epoch, UTC) from the first
    #: send to the last, empty buckets (nights) included.
    timeline: list[TimelineBucket]
    #: When the last message leaves; None if anything is still unsent at the horizon.
    finish_at: datetime | None
    #: Recipients not sent within the horizon (all of them when the rate is 0).
    unsendable: int
    first_send_at: datetime | None
    total: int
    #: All senders together.
    rate_per_s: float
    #: In order of start (then zone); runs of different senders may overlap.
    runs: list[SendRun] = field(default_factory=list)
    unsendable_by_zone: dict[str, int] = field(default_factory=dict)
    #: Plain-words reasons a marketer must see before launching (never a silent stall).
    warnings: list[str] = field(default_factory=list)

    def due_times(self, zone: ZoneInfo | str) -> Iterator[datetime]:
        """When each of `zone`'s recipients is due, in order: assign them to recipients (in any
        order) and claim by due time to send exactly as projected."""
        key = _key(zone)
        return heapq.merge(*(run.due_times() for run in self.runs if run.zone == key))


def project(
    recipients: ZoneCounts | Iterable[RecipientSlot],
    *,
    now: datetime,
    start_at: datetime | None,
    window: SendWindow,
    rate_per_s: float | Sequence[float],
    bucket_s: int = 3600,
    horizon_days: int = 14,
) -> Projection:
    """The projected send timeline (see the module docstring for the model). `rate_per_s` is
    one sender's messages per second, or one rate for each sender of a pool."""
    counts = _aggregate(recipients)
    origin = _aware(now, "now")
    if start_at is not None:
        origin = max(origin, _aware(start_at, "start_at"))
    rates = [rate_per_s] if isinstance(rate_per_s, int | float) else list(rate_per_s)
    if not all(math.isfinite(r) and r >= 0 for r in rates):
        raise ValueError("rate_per_s must be finite numbers >= 0")
    if bucket_s <= 0 or horizon_days <= 0:
        raise ValueError("bucket_s and horizon_days must be positive")
    total, pool_rate = sum(counts.values()), float(sum(rates))
    if total == 0:
        return Projection([], origin, 0, None, 0, pool_rate)
    if pool_rate == 0:
        return Projection([], None, total, None, total, pool_rate,
                          unsendable_by_zone=dict(counts), warnings=[
                              "nothing can be sent: the send rate is 0 messages per second "
                              "(no active sender, or a rate cap of 0)"])

    horizon = min(timedelta(days=horizon_days), max(_END - origin, timedelta(0)))
    stop = origin + horizon
    intervals = {key: _open_intervals(window, ZoneInfo(key), origin, stop) for key in counts}
    raw: list[_Run] = []
    left: dict[str, int] = {}
    exact = [_exact(r) for r in rates if r > 0]
    for rate, share in zip(exact, _split(counts, exact), strict=True):
        zones = [_Zone(key, intervals[key], n) for key, n in sorted(share.items())]
        raw += [(key, t, m, rate) for key, t, m in _simulate(zones, rate, _seconds(horizon))]
        for z in zones:
            if z.backlog:
                left[z.key] = left.get(z.key, 0) + z.backlog
    raw.sort(key=lambda run: (run[1], run[0]))  # by start, then zone
    runs = [SendRun(key, _at(origin, t), m, float(rate)) for key, t, m, rate in raw]
    unsendable = sum(left.values())
    finish = None
    if runs and not unsendable:
        finish = _at(origin, max(t + (m - 1) / rate for _, t, m, rate in raw))
    warnings = []
    if unsendable:
        warnings.append(
            f"{unsendable:,} of {total:,} recipients would still be waiting after "
            f"{horizon_days} days at {pool_rate:g} messages per second; raise the rate "
            "(more senders or a higher cap) or widen the send window")
    if unsendable and horizon < timedelta(days=horizon_days):
        warnings.append(f"sending would start too close to the end of the calendar to be "
                        f"projected past {_END:%Y-%m-%d}; check start_at")
    return Projection(
        timeline=_timeline(raw, (origin - _EPOCH) // timedelta(microseconds=1), bucket_s),
        finish_at=finish,
        unsendable=unsendable,
        first_send_at=runs[0].start if runs else None,
        total=total,
        rate_per_s=pool_rate,
        runs=runs,
        unsendable_by_zone=left,
        warnings=warnings,
    )


def eta(
    remaining_by_zone: ZoneCounts,
    now: datetime,
    window: SendWindow,
    rate_per_s: float | Sequence[float],
    *,
    start_at: datetime | None = None,
    horizon_days: int = 14,
) -> datetime | None:
    """When the last remaining recipient should leave, starting at max(now, start_at) (same
    model as `project`); None when that is beyond the horizon or the rate is 0."""
    return project(remaining_by_zone, now=now, start_at=start_at, window=window,
                   rate_per_s=rate_per_s, horizon_days=horizon_days).finish_at


# --- internals ------------------------------------------------------------------------------


def _key(tz: ZoneInfo | str) -> str:
    if isinstance(tz, str):
        return ZoneInfo(tz).key  # raises for a name that is not a zone
    return tz.key or str(tz)


def _aggregate(recipients: ZoneCounts | Iterable[RecipientSlot]) -> dict[str, int]:
    pairs: Iterable[tuple[ZoneInfo | str, int]]
    if isinstance(recipients, Mapping):
        pairs = recipients.items()
    else:
        pairs = ((slot.tz, slot.count) for slot in recipients)
    counts: dict[str, int] = {}
    for tz, n in pairs:
        if n < 0:
            raise ValueError(f"negative recipient count for {tz}")
        if n:
            key = _key(tz)
            counts[key] = counts.get(key, 0) + n
    return counts


def _split(counts: dict[str, int], rates: list[Fraction]) -> list[dict[str, int]]:
    """Each zone's recipients shared between senders in proportion to their rates, as
    `choose_weighted` shares a pool's contacts. The recipients of all zones, one zone after
    another, are apportioned as seats (`_dhondt`), and each zone gets what its recipients
    added: no sender gets less than its quota's whole part of the audience, and the odd
    recipient of small zones goes to the senders in turn, not always to the same one."""
    shares: list[dict[str, int]] = [{} for _ in rates]
    before, seen = [0] * len(rates), 0
    for key, n in sorted(counts.items()):
        seen += n
        after = _dhondt(seen, rates)
        for share, a, b in zip(shares, before, after, strict=True):
            if b > a:
                share[key] = b - a
        before = after
    return shares


def _dhondt(seats: int, rates: list[Fraction]) -> list[int]:
    """D'Hondt's apportionment of `seats` by `rates` (ties to the earlier sender): seats
    given one at a time to the highest rate / (seats so far + 1). That never takes a seat
    back as seats are added, and never gives less than a quota's whole part, so it can start
    from those and hand out the few left one at a time."""
    pool = sum(rates)
    given = [seats * r // pool for r in rates]
    heap = [(-r / (g + 1), i) for i, (r, g) in enumerate(zip(rates, given, strict=True))]
    heapq.heapify(heap)
    for _ in range(seats - sum(given)):
        _, i = heapq.heappop(heap)
        given[i] += 1
        heapq.heappush(heap, (-rates[i] / (given[i] + 1), i))
    return given


def _exact(rate: float) -> Fraction:
    return Fraction(repr(float(rate)))  # 0.1 is one tenth, not its binary neighbour


def _seconds(delta: timedelta) -> Fraction:
    return Fraction(delta // timedelta(microseconds=1), _US)


def _at(origin: datetime, seconds: Fraction) -> datetime:
    return origin + timedelta(microseconds=math.floor(seconds * _US))


def _aware(moment: datetime, name: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")
    # Clamped first: a zone's year 1 or 9999 may lie outside the calendar in UTC.
    return min(max(moment, _EPOCH), _END).astimezone(UTC)


def _open_intervals(
    window: SendWindow, tz: ZoneInfo, start: datetime, stop: datetime
) -> list[tuple[Fraction, Fraction]]:
    """The instants in [start, stop) at which `window` allows sending in `tz`, as merged
    [open, close) intervals in seconds after `start`."""
    if stop <= start:
        return []
    if window.always_open:
        return [(Fraction(0), _seconds(stop - start))]
    # `allows` can only change where the wall clock reaches start or end (either fold) or
    # where the offset jumps, so it is constant between consecutive cuts.
    cuts = {start, stop, *_offset_changes(tz, start, stop)}
    day = start.astimezone(tz).date() - timedelta(days=1)
    last = stop.astimezone(tz).date() + timedelta(days=1)
    while day <= last:
        for wall in (window.start, window.end):
            local = datetime.combine(day, wall, tzinfo=tz)
            for fold in (0, 1):
                cut = local.replace(fold=fold).astimezone(UTC)
                if start < cut < stop:
                    cuts.add(cut)
        day += timedelta(days=1)
    intervals: list[tuple[Fraction, Fraction]] = []
    for a, b in pairwise(sorted(cuts)):
        if not window.allows(a, tz):
            continue
        lo, hi = _seconds(a - start), _seconds(b - start)
        if intervals and intervals[-1][1] == lo:
            intervals[-1] = (intervals[-1][0], hi)
        else:
            intervals.append((lo, hi))
    return intervals


@dataclass(slots=True)
class _Zone:
    key: str
    intervals: list[tuple[Fraction, Fraction]]
    backlog: int
    at: int = 0  # index of the first interval that has not closed yet


def _simulate(zones: list[_Zone], rate: Fraction,
              horizon: Fraction) -> list[tuple[str, Fraction, int]]:
    """One sender's runs (zone, start, count) under earliest-deadline-first. Each step ends
    where a zone empties, a window closes or opens, so steps are O(zones × days), not
    O(messages)."""
    runs: list[tuple[str, Fraction, int]] = []
    t = Fraction(0)
    while True:
        best: _Zone | None = None
        best_close = change = horizon
        for z in zones:
            if not z.backlog:
                continue
            while z.at < len(z.intervals) and z.intervals[z.at][1] <= t:
                z.at += 1
            if z.at == len(z.intervals):
                continue  # no window left inside the horizon: these stay unsendable
            opens, closes = z.intervals[z.at]
            if opens <= t:
                if best is None or closes < best_close:
                    best, best_close = z, closes
                change = min(change, closes)
            else:
                change = min(change, opens)
        if best is None:
            if change >= horizon:
                return runs
            t = change  # every zone with work is in quiet hours: wait for the next opening
            continue
        # Sends at t, t + 1/rate, … strictly before `change` (at least one: t is in best's
        # window).
        count = min(best.backlog, math.ceil((change - t) * rate))
        if runs and runs[-1][0] == best.key and runs[-1][1] + runs[-1][2] / rate == t:
            runs[-1] = (best.key, runs[-1][1], runs[-1][2] + count)
        else:
            runs.append((best.key, t, count))
        best.backlog -= count
        t += count / rate


def _timeline(runs: list[_Run], origin_us: int, bucket_s: int) -> list[TimelineBucket]:
    """`runs` in order of start as buckets."""
    if not runs:
        return []
    # Exact arithmetic relative to the first bucket: a send on a bucket's edge belongs to the
    # later bucket, so no bucket ever holds more than ceil(rate × bucket_s) of a sender's sends.
    origin = Fraction(origin_us, _US)
    base = math.floor((origin + runs[0][1]) / bucket_s) * bucket_s
    shift = origin - base
    last = max(t + (m - 1) / rate for _, t, m, rate in runs)
    nbuckets = math.floor((shift + last) / bucket_s) + 1
    by_zone: list[dict[str, int]] = [{} for _ in range(nbuckets)]
    for key, t, m, rate in runs:
        j = 0
        while j < m:
            b = math.floor((shift + t + j / rate) / bucket_s)
            # This run's sends before the bucket's end.
            upto = min(m, math.ceil(((b + 1) * bucket_s - shift - t) * rate))
            counts = by_zone[b]
            counts[key] = counts.get(key, 0) + upto - j
            j = upto
    start = datetime.fromtimestamp(base, UTC)
    width = timedelta(seconds=bucket_s)
    return [TimelineBucket(start + i * width, start + (i + 1) * width, sum(c.values()), c)
            for i, c in enumerate(by_zone)]
