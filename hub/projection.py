"""When a campaign's messages will leave: a dry-run timeline and the live ETA, from recipient
counts per time zone, the local send window and one shared send rate. Pure: takes `now`.

The model, which the scheduler follows by pacing recipients with `Projection.due_times`:

- Sending starts at max(now, start_at). One sender stream leaves at `rate_per_s`: the k-th
  message of an uninterrupted run leaves k / rate seconds after the run starts, so no interval
  of L seconds holds more than ceil(rate × L) sends.
- A zone's recipients may leave only while `window.allows(t, zone)`; its open intervals are
  cut exactly where that answer changes (wall-clock start/end on each local day, both folds,
  and every UTC-offset change), so DST and windows that wrap midnight need no special case.
- The rate goes to the open zone whose window closes first (earliest deadline first; ties by
  zone name). Any work-conserving order sends as much per second; this one leaves the least
  backlog behind when evenings arrive, so fewer contacts slip to tomorrow. A zone opening
  later with an earlier close takes over after the message in flight.
- Whatever is not sent within `horizon_days` is `unsendable`, and then `finish_at` is None.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
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
_Run = tuple[str, Fraction, int]  # zone, seconds after the origin, count


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
    """`count` messages to `zone`'s recipients: the first at `start`, then one every 1/rate s."""

    zone: str
    start: datetime  # rounded down to the microsecond, like every instant shown
    count: int


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
    rate_per_s: float
    runs: list[SendRun] = field(default_factory=list)
    unsendable_by_zone: dict[str, int] = field(default_factory=dict)
    #: Plain-words reasons a marketer must see before launching (never a silent stall).
    warnings: list[str] = field(default_factory=list)

    def due_times(self, zone: ZoneInfo | str) -> Iterator[datetime]:
        """When each of `zone`'s recipients is due, in order: assign them to recipients (in any
        order) and claim by due time to send exactly as projected."""
        key = _key(zone)
        rate = _exact(self.rate_per_s)
        for run in self.runs:
            if run.zone == key:
                for j in range(run.count):  # floor: never later than the exact send
                    yield run.start + timedelta(microseconds=j * _US * rate.denominator
                                                // rate.numerator)


def project(
    recipients: ZoneCounts | Iterable[RecipientSlot],
    *,
    now: datetime,
    start_at: datetime | None,
    window: SendWindow,
    rate_per_s: float,
    bucket_s: int = 3600,
    horizon_days: int = 14,
) -> Projection:
    """The projected send timeline (see the module docstring for the model)."""
    counts = _aggregate(recipients)
    origin = _aware(now, "now")
    if start_at is not None:
        origin = max(origin, _aware(start_at, "start_at"))
    if not (math.isfinite(rate_per_s) and rate_per_s >= 0):
        raise ValueError("rate_per_s must be a finite number >= 0")
    if bucket_s <= 0 or horizon_days <= 0:
        raise ValueError("bucket_s and horizon_days must be positive")
    total = sum(counts.values())
    if total == 0:
        return Projection([], origin, 0, None, 0, rate_per_s)
    if rate_per_s == 0:
        return Projection([], None, total, None, total, rate_per_s,
                          unsendable_by_zone=dict(counts), warnings=[
                              "nothing can be sent: the send rate is 0 messages per second "
                              "(no active sender, or a rate cap of 0)"])

    rate = _exact(rate_per_s)
    stop = origin + timedelta(days=horizon_days)
    zones = [_Zone(key, _open_intervals(window, ZoneInfo(key), origin, stop), n)
             for key, n in sorted(counts.items())]
    raw = _simulate(zones, rate, _seconds(stop - origin))
    runs = [SendRun(key, _at(origin, t), m) for key, t, m in raw]
    left = {z.key: z.backlog for z in zones if z.backlog}
    unsendable = sum(left.values())
    finish = None
    if runs and not unsendable:
        _, t, m = raw[-1]
        finish = _at(origin, t + (m - 1) / rate)
    warnings = []
    if unsendable:
        warnings.append(
            f"{unsendable:,} of {total:,} recipients would still be waiting after "
            f"{horizon_days} days at {rate_per_s:g} messages per second; raise the rate "
            "(more senders or a higher cap) or widen the send window")
    return Projection(
        timeline=_timeline(raw, (origin - _EPOCH) // timedelta(microseconds=1), rate, bucket_s),
        finish_at=finish,
        unsendable=unsendable,
        first_send_at=runs[0].start if runs else None,
        total=total,
        rate_per_s=rate_per_s,
        runs=runs,
        unsendable_by_zone=left,
        warnings=warnings,
    )


def eta(
    remaining_by_zone: ZoneCounts,
    now: datetime,
    window: SendWindow,
    rate_per_s: float,
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


def _exact(rate: float) -> Fraction:
    return Fraction(repr(float(rate)))  # 0.1 is one tenth, not its binary neighbour


def _seconds(delta: timedelta) -> Fraction:
    return Fraction(delta // timedelta(microseconds=1), _US)


def _at(origin: datetime, seconds: Fraction) -> datetime:
    return origin + timedelta(microseconds=math.floor(seconds * _US))


def _aware(moment: datetime, name: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")
    return moment.astimezone(UTC)


def _open_intervals(
    window: SendWindow, tz: ZoneInfo, start: datetime, stop: datetime
) -> list[tuple[Fraction, Fraction]]:
    """The instants in [start, stop) at which `window` allows sending in `tz`, as merged
    [open, close) intervals in seconds after `start`."""
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


def _simulate(zones: list[_Zone], rate: Fraction, horizon: Fraction) -> list[_Run]:
    """Runs (zone, start, count) under earliest-deadline-first. Each step ends where a zone
    empties, a window closes or opens, so steps are O(zones × days), not O(messages)."""
    runs: list[_Run] = []
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


def _timeline(runs: list[_Run], origin_us: int, rate: Fraction,
              bucket_s: int) -> list[TimelineBucket]:
    if not runs:
        return []
    # Exact arithmetic relative to the first bucket: a send on a bucket's edge belongs to the
    # later bucket, so no bucket ever holds more than ceil(rate × bucket_s) sends.
    origin = Fraction(origin_us, _US)
    base = math.floor((origin + runs[0][1]) / bucket_s) * bucket_s
    shift = origin - base
    _, t, m = runs[-1]
    nbuckets = math.floor((shift + t + (m - 1) / rate) / bucket_s) + 1
    by_zone: list[dict[str, int]] = [{} for _ in range(nbuckets)]
    for key, t, m in runs:
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
