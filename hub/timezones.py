"""A contact's time zone, and the daily send window bulk traffic must respect in it.

Quiet hours are the complement of a `SendWindow`: a window of 08:00–21:00 means bulk messages
leave between 08:00 (inclusive) and 21:00 (exclusive) on the contact's wall clock, and never
in the quiet hours 21:00–08:00. Everything here takes `now` as an argument and does no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, available_timezones

from hub.errors import ValidationFailed
from hub.phones import phone_timezones

INVALID_TIMEZONE = "invalid_timezone"

# Files under the zoneinfo path that are not zones a person lives in.
_NOT_ZONES = frozenset({"localtime", "Factory", "posixrules"})
# Instants on which candidate zones must show the same offset to count as one clock.
_PROBES = tuple(
    datetime(year, month, day, 12, tzinfo=UTC)
    for year in (2025, 2026) for month in range(1, 13) for day in (1, 15)
)


@lru_cache(maxsize=1)
def _zone_names() -> dict[str, str]:
    """Lowercased name → IANA key, so "america/new_york" from a CSV is accepted."""
    return {name.lower(): name for name in available_timezones() - _NOT_ZONES}


def validate_timezone(name: str, *, field: str = "timezone") -> str:
    """The IANA key for `name` (case-insensitive; links like US/Eastern kept as given), or
    ValidationFailed naming `field` with code ``invalid_timezone``."""
    key = _zone_names().get(name.strip().lower())
    if key is None:
        raise ValidationFailed.field(
            field, "not an IANA time zone name such as America/New_York", INVALID_TIMEZONE
        )
    return key


@lru_cache(maxsize=4096)
def _one_clock(zones: tuple[str, ...], preferred: str) -> str | None:
    """The zone to use for a number that maps to `zones`, or None to fall back.

    Several zones that keep the same clock all year (+44 → London, Guernsey, Jersey, Isle of
    Man) are one answer: the preferred zone if among them, else the first alphabetically.
    Zones that differ (+7 → 16 zones, NANP toll-free → all of North America) are no answer,
    unless the sub-account's own zone is among them: guessing one would put texts at 3 am.
    """
    if len(zones) == 1:
        return zones[0]
    if preferred in zones:
        return preferred
    infos = [ZoneInfo(z) for z in zones]
    for probe in _PROBES:
        if len({probe.astimezone(info).utcoffset() for info in infos}) > 1:
            return None
    return min(zones)


def contact_timezone(
    explicit: str | None, phone_e164: str | None, sub_account_tz: str
) -> ZoneInfo:
    """The zone quiet hours are computed in: the contact's explicit zone if it is a valid IANA
    name; else the number's zone when the number pins one clock (see `_one_clock`); else the
    sub-account's zone."""
    names = _zone_names()
    if explicit:
        key = names.get(explicit.strip().lower())
        if key is not None:
            return ZoneInfo(key)
    fallback = validate_timezone(sub_account_tz, field="sub_account.timezone")
    if phone_e164:
        zones = tuple(z for z in phone_timezones(phone_e164) if z.lower() in names)
        chosen = _one_clock(zones, fallback) if zones else None
        if chosen is not None:
            return ZoneInfo(chosen)
    return ZoneInfo(fallback)


def _require_aware(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        # A naive datetime would silently be read in the server's zone.
        raise ValueError("expected a timezone-aware datetime (UTC)")
    return moment.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class SendWindow:
    """Wall-clock hours in which bulk sending is allowed: [start, end), every day.

    start > end wraps midnight (22:00–02:00). start == end never closes: a zero-length
    window would stall a campaign forever, which is never what was meant. New campaigns are
    refused such a window (`hub.campaigns.campaign_window`), and sub-accounts such quiet
    hours (`hub.actions`, migration 0022): it reads as "never" as much as "always";
    campaigns stored with one before that keep sending at any hour.
    """

    start: time = time(8)
    end: time = time(21)

    def __post_init__(self) -> None:
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("send window times are wall-clock times; give them no tzinfo")

    @classmethod
    def from_quiet_hours(cls, quiet_start: time, quiet_end: time) -> SendWindow:
        """The window that is open outside quiet hours [quiet_start, quiet_end)."""
        return cls(start=quiet_end, end=quiet_start)

    @property
    def always_open(self) -> bool:
        return self.start == self.end

    def contains(self, wall: time) -> bool:
        """Whether the wall-clock time `wall` is inside the window."""
        if self.start < self.end:
            return self.start <= wall < self.end
        if self.start > self.end:
            return wall >= self.start or wall < self.end
        return True

    def inside(self, outer: SendWindow) -> bool:
        """Whether every wall-clock time this window allows, `outer` allows too (either may
        wrap midnight). Measured as arcs of the day from `outer`'s start."""
        if outer.always_open:
            return True
        if self.always_open:
            return False
        offset = _seconds_after(outer.start, self.start)
        return offset + _seconds_after(self.start, self.end) <= \
            _seconds_after(outer.start, outer.end)

    def allows(self, utc_now: datetime, tz: tzinfo) -> bool:
        """Whether a bulk message may leave at `utc_now` for a contact in `tz`."""
        if self.always_open:
            return True
        return self.contains(_require_aware(utc_now).astimezone(tz).time())

    def next_open(self, utc_now: datetime, tz: tzinfo) -> datetime:
        """The first instant (UTC) at or after `utc_now` at which the window is open in `tz`.

        Correct across DST: if the opening time falls in a spring-forward gap the window
        opens when the clocks jump; if it occurs twice in a fall-back overlap, at the first
        occurrence; if clocks jump back into the window, it reopens at the jump.
        """
        now = _require_aware(utc_now)
        if self.allows(now, tz):
            return now
        # Two days cover every ordinary case; a skipped calendar day (Samoa, 2011) needs more.
        for horizon in (2, 8):
            opening = self._first_opening(now, tz, horizon)
            if opening is not None:
                return opening
        # Impossible for a non-empty window: fail loudly rather than stall a campaign.
        raise RuntimeError(f"send window {self} never opens in {tz} after {now}")

    def _first_opening(self, now: datetime, tz: tzinfo, days: int) -> datetime | None:
        # The window can only open where the wall clock reaches `start` (some day's start,
        # converted with either fold) or where the clock jumps (an offset change).
        candidates = _offset_changes(tz, now, now + timedelta(days=days))
        today = now.astimezone(tz).date()
        for n in range(-1, days + 1):
            local = datetime.combine(today + timedelta(days=n), self.start, tzinfo=tz)
            candidates.append(local.astimezone(UTC))
            candidates.append(local.replace(fold=1).astimezone(UTC))
        opening = [c for c in candidates if c > now and self.allows(c, tz)]
        return min(opening, default=None)


_DAY = 24 * 3600


def _seconds_after(first: time, then: time) -> int:
    """Seconds from wall-clock `first` forward to `then`, wrapping midnight: under a day."""
    def secs(t: time) -> int:
        return t.hour * 3600 + t.minute * 60 + t.second

    return (secs(then) - secs(first)) % _DAY


_SAMPLE = timedelta(hours=6)  # no zone changes its offset twice within six hours


def _offset_at(tz: tzinfo, timestamp: int) -> timedelta | None:
    return datetime.fromtimestamp(timestamp, tz).utcoffset()


def _offset_changes(tz: tzinfo, start: datetime, stop: datetime) -> list[datetime]:
    """The instants in (start, stop] at which `tz`'s UTC offset changes (tzdata transitions
    fall on whole seconds, so a bisection over integer timestamps finds them exactly)."""
    changes: list[datetime] = []
    t = math.floor(start.timestamp())
    end = math.ceil(stop.timestamp())
    step = int(_SAMPLE.total_seconds())
    offset = _offset_at(tz, t)
    while t < end:
        nxt = t + step
        nxt_offset = _offset_at(tz, nxt)
        if nxt_offset != offset:
            lo, hi = t, nxt  # old offset at lo, new offset at hi
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if _offset_at(tz, mid) == offset:
                    lo = mid
                else:
                    hi = mid
            changes.append(datetime.fromtimestamp(hi, UTC))
        t, offset = nxt, nxt_offset
    return changes


def is_quiet(local_now: datetime, quiet_start: time, quiet_end: time) -> bool:
    """Whether the wall-clock time of `local_now` is inside quiet hours [quiet_start,
    quiet_end), which may wrap midnight (21:00–08:00)."""
    return not SendWindow.from_quiet_hours(quiet_start, quiet_end).contains(local_now.time())
