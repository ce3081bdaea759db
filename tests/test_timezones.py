"""Contact time zones and send windows, including the DST days that break naive code."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from hub.errors import ValidationFailed
from hub.timezones import SendWindow, contact_timezone, is_quiet, validate_timezone

NEW_YORK = ZoneInfo("America/New_York")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")  # +10:30, DST +11:00: a 30-minute shift
KATHMANDU = ZoneInfo("Asia/Kathmandu")  # +05:45
DAYTIME = SendWindow(start=time(8), end=time(21))


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


# --- validate_timezone / contact_timezone -----------------------------------------------


def test_validate_timezone_accepts_iana_names_in_any_case() -> None:
    assert validate_timezone("America/New_York") == "America/New_York"
    assert validate_timezone(" america/new_york ") == "America/New_York"
    assert validate_timezone("UTC") == "UTC"


@pytest.mark.parametrize("name", ["EST-ish", "Mars/Olympus_Mons", "", "localtime", "../etc/passwd"])
def test_validate_timezone_rejects_non_zones(name: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        validate_timezone(name, field="contacts[0].timezone")
    assert [(e.field, e.code) for e in info.value.errors] == [
        ("contacts[0].timezone", "invalid_timezone")
    ]


def test_explicit_zone_wins_and_an_invalid_one_falls_through() -> None:
    assert contact_timezone("Europe/Paris", "+12125550123", "UTC") == ZoneInfo("Europe/Paris")
    assert contact_timezone("Nowhere/Else", "+12125550123", "UTC") == NEW_YORK


def test_us_numbers_give_their_area_codes_zone() -> None:
    assert contact_timezone(None, "+12125550123", "Europe/London") == NEW_YORK
    los_angeles = ZoneInfo("America/Los_Angeles")
    assert contact_timezone(None, "+14155550123", "Europe/London") == los_angeles


def test_several_zones_with_one_clock_are_one_answer() -> None:
    # +44 maps to London, Guernsey, Jersey and the Isle of Man: all keep the same clock.
    zone = contact_timezone(None, "+447911123456", "America/Chicago")
    london = ZoneInfo("Europe/London")
    for day in (utc(2025, 1, 15, 12), utc(2025, 7, 15, 12), utc(2025, 10, 27, 0, 30)):
        assert day.astimezone(zone).utcoffset() == day.astimezone(london).utcoffset()


def test_ambiguous_numbers_fall_back_to_the_sub_account_zone() -> None:
    # +7 spans eleven hours of clocks; NANP toll-free spans all of North America.
    assert contact_timezone(None, "+79123456789", "Europe/Berlin") == ZoneInfo("Europe/Berlin")
    assert contact_timezone(None, "+18003569377", "America/Denver") == ZoneInfo("America/Denver")
    # ...but the sub-account's own zone is preferred when the number allows it.
    assert contact_timezone(None, "+61412345678", "Australia/Perth") == ZoneInfo("Australia/Perth")
    assert contact_timezone(None, None, "Asia/Tokyo") == ZoneInfo("Asia/Tokyo")


def test_kathmandu_number_gets_its_quarter_hour_zone() -> None:
    zone = contact_timezone(None, "+9779812345678", "UTC")
    assert utc(2025, 1, 1).astimezone(zone).utcoffset() == timedelta(hours=5, minutes=45)


# --- SendWindow -----------------------------------------------------------------------------


def test_window_edges_are_start_inclusive_end_exclusive() -> None:
    assert DAYTIME.allows(utc(2025, 1, 15, 13, 0), NEW_YORK)  # 08:00 EST
    assert not DAYTIME.allows(utc(2025, 1, 15, 12, 59, 59), NEW_YORK)
    assert not DAYTIME.allows(utc(2025, 1, 16, 2, 0), NEW_YORK)  # 21:00 EST
    assert DAYTIME.allows(utc(2025, 1, 16, 1, 59, 59), NEW_YORK)


def test_next_open_is_now_when_open_and_next_morning_otherwise() -> None:
    now = utc(2025, 1, 15, 15)
    assert DAYTIME.next_open(now, NEW_YORK) == now
    assert DAYTIME.next_open(utc(2025, 1, 16, 3), NEW_YORK) == utc(2025, 1, 16, 13)  # 08:00 EST


def test_new_york_spring_forward() -> None:
    # 2025-03-09 02:00 EST → 03:00 EDT. 08:00 that morning is already EDT (12:00 UTC).
    assert DAYTIME.next_open(utc(2025, 3, 9, 5), NEW_YORK) == utc(2025, 3, 9, 12)
    # A window opening at 02:30, a time that does not exist that day, opens at the jump.
    early = SendWindow(start=time(2, 30), end=time(21))
    assert early.next_open(utc(2025, 3, 9, 6), NEW_YORK) == utc(2025, 3, 9, 7)  # 03:00 EDT


def test_new_york_fall_back() -> None:
    # 2025-11-02 02:00 EDT → 01:00 EST; 01:15 happens twice: the window opens at the first.
    window = SendWindow(start=time(1, 15), end=time(21))
    assert window.next_open(utc(2025, 11, 2, 4), NEW_YORK) == utc(2025, 11, 2, 5, 15)
    # A window of 01:00–01:30 closes at 01:30 EDT and reopens when the clock falls back.
    night = SendWindow(start=time(1), end=time(1, 30))
    assert not night.allows(utc(2025, 11, 2, 5, 30), NEW_YORK)
    assert night.next_open(utc(2025, 11, 2, 5, 30), NEW_YORK) == utc(2025, 11, 2, 6)
    assert DAYTIME.next_open(utc(2025, 11, 2, 5), NEW_YORK) == utc(2025, 11, 2, 13)  # 08:00 EST


def test_lord_howe_half_hour_dst() -> None:
    # 2025-10-05 02:00 +10:30 → 02:30 +11:00 (2025-10-04 15:30 UTC).
    window = SendWindow(start=time(2, 15), end=time(21))
    assert window.next_open(utc(2025, 10, 4, 15), LORD_HOWE) == utc(2025, 10, 4, 15, 30)
    assert DAYTIME.next_open(utc(2025, 10, 4, 11), LORD_HOWE) == utc(2025, 10, 4, 21)  # 08:00 +11
    # 2025-04-06 02:00 +11:00 → 01:30 +10:30 (2025-04-05 15:00 UTC): 01:30–01:45 recurs.
    short = SendWindow(start=time(1, 30), end=time(1, 45))
    assert short.next_open(utc(2025, 4, 5, 14, 45), LORD_HOWE) == utc(2025, 4, 5, 15)


def test_kathmandu_quarter_hour_offset() -> None:
    assert not DAYTIME.allows(utc(2025, 1, 1, 15, 15), KATHMANDU)  # 21:00 local
    assert DAYTIME.allows(utc(2025, 1, 1, 15, 14), KATHMANDU)
    assert DAYTIME.next_open(utc(2025, 1, 1, 15, 15), KATHMANDU) == utc(2025, 1, 2, 2, 15)


def test_window_wrapping_midnight() -> None:
    night_shift = SendWindow(start=time(22), end=time(2))
    tokyo = ZoneInfo("Asia/Tokyo")  # +09:00, no DST
    assert night_shift.allows(utc(2025, 6, 1, 14, 30), tokyo)  # 23:30
    assert night_shift.allows(utc(2025, 6, 1, 16, 0), tokyo)  # 01:00
    assert not night_shift.allows(utc(2025, 6, 1, 17, 0), tokyo)  # 02:00
    assert night_shift.next_open(utc(2025, 6, 1, 3), tokyo) == utc(2025, 6, 1, 13)  # 22:00


def test_samoa_skipped_day() -> None:
    # Samoa skipped 2011-12-30 (−10:00 → +14:00): from 21:00 on the 29th, the next 08:00 is
    # on the 31st.
    apia = ZoneInfo("Pacific/Apia")
    assert DAYTIME.next_open(utc(2011, 12, 30, 7), apia) == utc(2011, 12, 30, 18)


def test_equal_start_and_end_means_no_quiet_hours() -> None:
    always = SendWindow(start=time(9), end=time(9))
    assert always.allows(utc(2025, 1, 1, 3), NEW_YORK)
    assert always.next_open(utc(2025, 1, 1, 3), NEW_YORK) == utc(2025, 1, 1, 3)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError):
        DAYTIME.allows(datetime(2025, 1, 1, 12), NEW_YORK)
    with pytest.raises(ValueError):
        SendWindow(start=time(8, tzinfo=UTC), end=time(21))


def test_is_quiet_with_quiet_hours_wrapping_midnight() -> None:
    quiet = (time(21), time(8))
    local = datetime(2025, 1, 1)
    assert is_quiet(local.replace(hour=22), *quiet)
    assert is_quiet(local.replace(hour=3), *quiet)
    assert is_quiet(local.replace(hour=7, minute=59), *quiet)
    assert not is_quiet(local.replace(hour=8), *quiet)
    assert not is_quiet(local.replace(hour=20, minute=59), *quiet)
    assert is_quiet(local.replace(hour=21), *quiet)
    assert SendWindow.from_quiet_hours(*quiet) == DAYTIME
