"""The campaign domain as a marketer meets it: which buttons work, when a failing campaign
stops itself, when each time zone's messages will leave, who is in the audience, and what the
sample contact would receive."""

from __future__ import annotations

import re
import time as clock
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from hub.campaigns import (
    Action,
    CampaignStatus,
    FailureWindow,
    allowed_actions,
    audience_sql,
    check_content,
    parse_audience,
    transition,
)
from hub.contacts import custom_key
from hub.errors import Conflict, ValidationFailed
from hub.projection import Projection, RecipientSlot, eta, project
from hub.timezones import SendWindow

S, A = CampaignStatus, Action
DAYTIME = SendWindow(time(8), time(21))
NEW_YORK, LOS_ANGELES, TOKYO = (ZoneInfo("America/New_York"), ZoneInfo("America/Los_Angeles"),
                                ZoneInfo("Asia/Tokyo"))


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


# --- status machine --------------------------------------------------------------------------

DOCUMENTED = {
    (S.DRAFT, A.LAUNCH): S.RUNNING,
    (S.SCHEDULED, A.START): S.RUNNING,
    (S.SCHEDULED, A.PAUSE): S.PAUSED,
    (S.SCHEDULED, A.CANCEL): S.CANCELED,
    (S.RUNNING, A.PAUSE): S.PAUSED,
    (S.RUNNING, A.AUTO_PAUSE): S.PAUSED,
    (S.RUNNING, A.CANCEL): S.CANCELED,
    (S.RUNNING, A.COMPLETE): S.COMPLETED,
    (S.PAUSED, A.RESUME): S.RUNNING,
    (S.PAUSED, A.CANCEL): S.CANCELED,
    (S.PAUSED, A.COMPLETE): S.COMPLETED,
}
PARTICIPLE = {"launch": "launched", "pause": "paused", "resume": "resumed", "cancel": "canceled"}


@pytest.mark.parametrize("status", list(S))
@pytest.mark.parametrize("action", list(A))
def test_every_status_and_action_transitions_or_says_what_is_possible(
    status: CampaignStatus, action: Action
) -> None:
    expected = DOCUMENTED.get((status, action))
    if expected is not None:
        assert transition(status, action) is expected
        return
    with pytest.raises(Conflict) as info:
        transition(status, action)
    assert info.value.code == "invalid_transition"
    detail = info.value.detail
    assert status.value in detail
    possible = allowed_actions(status)
    if possible:
        assert all(PARTICIPLE[a] in detail for a in possible), detail
    else:
        assert "it can only be viewed" in detail


def test_refusals_read_as_plain_sentences() -> None:
    def refusal(status: str, action: str) -> str:
        with pytest.raises(Conflict) as info:
            transition(status, action)
        return info.value.detail

    assert refusal("completed", "pause") == (
        "a completed campaign cannot be paused; it can only be viewed")
    assert refusal("paused", "pause") == (
        "the campaign is already paused; it can be resumed or canceled")
    assert refusal("running", "resume") == (
        "the campaign is already running; it can be paused or canceled")
    assert refusal("draft", "cancel") == (
        "a draft campaign cannot be canceled; it can only be launched or deleted")
    assert "duplicate it" in refusal("completed", "launch")


def test_allowed_actions_are_the_buttons_that_work() -> None:
    assert {s.value: allowed_actions(s) for s in S} == {
        "draft": ["launch"],
        "scheduled": ["pause", "cancel"],
        "running": ["pause", "cancel"],
        "paused": ["resume", "cancel"],
        "completed": [],
        "canceled": [],
    }
    for status in S:
        works = [a.value for a in A if (status, a) in DOCUMENTED]
        assert allowed_actions(status, internal=True) == works


def test_launch_and_resume_wait_for_a_future_start() -> None:
    now = utc(2025, 6, 1, 12)
    assert transition("draft", "launch", now=now, start_at=now + timedelta(hours=1)) is S.SCHEDULED
    assert transition("draft", "launch", now=now, start_at=now - timedelta(hours=1)) is S.RUNNING
    # Paused before its start time: resuming puts it back on the schedule, not on air.
    assert transition("paused", "resume", now=now, start_at=now + timedelta(days=1)) is S.SCHEDULED
    assert transition("paused", "resume", now=now, start_at=now) is S.RUNNING


def test_an_unknown_action_names_the_field() -> None:
    with pytest.raises(ValidationFailed) as info:
        transition("running", "explode")
    assert [(e.field, e.code) for e in info.value.errors] == [("action", "invalid_action")]


# --- failure-rate auto-pause -----------------------------------------------------------------


def test_failure_window_waits_for_min_samples_before_tripping() -> None:
    window = FailureWindow(size=200, threshold=0.2, min_samples=50)
    for _ in range(49):
        window.record(False, "30007")
    assert window.rate() == 1.0 and not window.tripped()  # 49 messages prove too little
    window.record(False, "30007")
    assert window.tripped()


def test_failure_window_trips_at_the_threshold_not_below() -> None:
    window = FailureWindow(size=200, threshold=0.2, min_samples=50)
    for i in range(200):
        window.record(i < 161, None if i < 161 else "30003")  # 39 failures of 200, last
    assert not window.tripped()
    window.record(False, "30003")  # slides out a success: 40 of 200 = 20%
    assert window.rate() == pytest.approx(0.2) and window.tripped()


def test_old_failures_slide_out_of_the_window() -> None:
    window = FailureWindow(size=100, threshold=0.2, min_samples=50)
    for _ in range(100):
        window.record(False, "30005")
    for _ in range(100):
        window.record(True)
    assert (window.rate(), window.tripped(), window.failures) == (0.0, False, 0)


def test_reason_names_the_share_threshold_and_top_error() -> None:
    window = FailureWindow()
    for _ in range(154):
        window.record(True)
    for code in ["30007"] * 30 + ["30003"] * 16:
        window.record(False, code)
    assert window.tripped()
    assert window.reason() == ("paused automatically: 23% of the last 200 messages failed "
                               "(threshold 20%); top error 30007 carrier filtering")
    # A campaign-wide counter can name the top error instead.
    campaign_wide = {"30003": 500, "30007": 12}
    assert window.reason(campaign_wide).endswith("top error 30003 handset unreachable")


def test_window_that_could_never_trip_is_refused() -> None:
    with pytest.raises(ValueError):
        FailureWindow(size=20, min_samples=50)


# --- projection ------------------------------------------------------------------------------


def assert_sends_only_inside_windows(p: Projection, window: SendWindow) -> None:
    """Every bucket with sends for a zone contains an instant the zone's window is open, and
    every individual due time is inside it."""
    for bucket in p.timeline:
        for zone in bucket.by_zone:
            assert window.next_open(bucket.start, ZoneInfo(zone)) < bucket.end, (zone, bucket)
    for run in p.runs:
        tz = ZoneInfo(run.zone)
        last = run.start + timedelta(seconds=(run.count - 1) / p.rate_per_s)
        assert window.allows(run.start, tz) and window.allows(last, tz), run


def sent_per_zone(p: Projection) -> dict[str, int]:
    totals: dict[str, int] = {}
    for bucket in p.timeline:
        assert bucket.sends == sum(bucket.by_zone.values())
        for zone, n in bucket.by_zone.items():
            totals[zone] = totals.get(zone, 0) + n
    return totals


THREE_ZONES = {NEW_YORK: 30_000, LOS_ANGELES: 20_000, TOKYO: 50_000}
# 06:00 UTC: 15:00 in Tokyo, 01:00 in New York, 22:00 in Los Angeles.
ONLY_TOKYO_OPEN = utc(2025, 3, 4, 6)


def test_three_zones_start_where_it_is_daytime_and_stay_in_local_hours() -> None:
    rate = 1.0
    p = project(THREE_ZONES, now=ONLY_TOKYO_OPEN, start_at=None, window=DAYTIME,
                rate_per_s=rate)
    assert p.first_send_at == ONLY_TOKYO_OPEN
    assert set(p.timeline[0].by_zone) == {"Asia/Tokyo"}
    assert sent_per_zone(p) == {z.key: n for z, n in THREE_ZONES.items()}
    assert (p.unsendable, p.total) == (0, 100_000)
    for bucket in p.timeline:
        assert bucket.sends <= rate * 3600  # the rate cap holds in every hour
        for zone in bucket.by_zone:  # hour buckets: each send's local hour is 08–20
            assert 8 <= bucket.start.astimezone(ZoneInfo(zone)).hour < 21, (zone, bucket)
    assert_sends_only_inside_windows(p, DAYTIME)
    for tz, n in THREE_ZONES.items():
        due = list(p.due_times(tz))
        assert len(due) == n and due == sorted(due)
        assert all(DAYTIME.allows(t, tz) for t in due[:: max(1, n // 500)])
    last = p.timeline[-1]
    assert last.sends and p.finish_at is not None and last.start <= p.finish_at < last.end


def test_eta_agrees_with_the_timeline_before_and_during_the_send() -> None:
    rate = 1.0
    p = project(THREE_ZONES, now=ONLY_TOKYO_OPEN, start_at=None, window=DAYTIME,
                rate_per_s=rate)
    assert p.finish_at is not None
    assert eta(THREE_ZONES, ONLY_TOKYO_OPEN, DAYTIME, rate) == p.finish_at
    # Live stats on the hour, mid-send (7 h: Tokyo just closed with work left; 20 h: night
    # in Tokyo): what is left, projected from then, ends exactly when the plan ends.
    for hours in (1, 7, 20, 26):
        later = ONLY_TOKYO_OPEN + timedelta(hours=hours)
        remaining = {z.key: n for z, n in THREE_ZONES.items()}
        for bucket in p.timeline:
            if bucket.end <= later:
                for zone, n in bucket.by_zone.items():
                    remaining[zone] -= n
        assert eta(remaining, later, DAYTIME, rate) == p.finish_at, hours


def test_the_zone_whose_evening_comes_first_goes_first() -> None:
    # 17:00 UTC: 13:00 in New York, 10:00 in Los Angeles. New York closes three hours sooner,
    # so it is served first, and both finish today (an even split would leave New Yorkers
    # waiting until tomorrow).
    p = project({NEW_YORK: 18_000, LOS_ANGELES: 18_000}, now=utc(2025, 6, 2, 17),
                start_at=None, window=DAYTIME, rate_per_s=1.0)
    assert [(r.zone, r.count) for r in p.runs] == [("America/New_York", 18_000),
                                                   ("America/Los_Angeles", 18_000)]
    assert p.finish_at is not None and p.finish_at < utc(2025, 6, 3, 4)  # 21:00 in LA


def test_backlog_spills_into_the_next_days_window() -> None:
    rate = 0.1  # 4,680 per 13-hour day
    now = utc(2025, 6, 2, 4)  # midnight in New York
    p = project({"America/New_York": 10_000}, now=now, start_at=None, window=DAYTIME,
                rate_per_s=rate)
    per_day: dict[str, int] = {}
    for bucket in p.timeline:
        day = bucket.start.astimezone(NEW_YORK).date().isoformat()
        per_day[day] = per_day.get(day, 0) + bucket.sends
    assert per_day == {"2025-06-02": 4_680, "2025-06-03": 4_680, "2025-06-04": 640}
    assert p.first_send_at == utc(2025, 6, 2, 12)  # 08:00 EDT
    assert_sends_only_inside_windows(p, DAYTIME)


def test_dst_morning_in_new_york_opens_at_local_eight() -> None:
    # 9 March 2025: clocks jump 02:00 EST → 03:00 EDT, so 08:00 is 12:00 UTC, not 13:00.
    p = project({"America/New_York": 4_680}, now=utc(2025, 3, 9, 5), start_at=None,
                window=DAYTIME, rate_per_s=0.1)
    assert p.first_send_at == utc(2025, 3, 9, 12)
    assert p.finish_at is not None and p.finish_at < utc(2025, 3, 10, 1)  # 21:00 EDT
    assert p.finish_at.astimezone(NEW_YORK).date().day == 9
    assert_sends_only_inside_windows(p, DAYTIME)


@pytest.mark.parametrize(("night_of", "hours"), [
    (utc(2025, 3, 8, 12), 7),  # spring forward: the 22:00–06:00 night is an hour short
    (utc(2025, 11, 1, 12), 9),  # fall back: an hour longer
])
def test_overnight_window_across_a_dst_change(night_of: datetime, hours: int) -> None:
    night = SendWindow(time(22), time(6))  # wraps midnight
    p = project({"America/New_York": 100_000}, now=night_of, start_at=None, window=night,
                rate_per_s=1.0)
    first = p.runs[0]
    assert first.start.astimezone(NEW_YORK).time() == time(22)
    assert first.count == hours * 3600
    assert_sends_only_inside_windows(p, night)


def test_zero_rate_never_finishes_and_says_why() -> None:
    p = project(THREE_ZONES, now=ONLY_TOKYO_OPEN, start_at=None, window=DAYTIME, rate_per_s=0)
    assert (p.finish_at, p.first_send_at, p.unsendable, p.timeline) == (None, None, 100_000, [])
    assert "rate is 0" in p.warnings[0]
    assert eta(THREE_ZONES, ONLY_TOKYO_OPEN, DAYTIME, 0) is None


def test_too_slow_for_the_horizon_reports_who_would_wait() -> None:
    p = project({TOKYO: 100_000}, now=ONLY_TOKYO_OPEN, start_at=None, window=DAYTIME,
                rate_per_s=0.05, horizon_days=7)
    assert p.finish_at is None
    assert p.unsendable == 100_000 - sum(b.sends for b in p.timeline) > 0
    assert p.unsendable_by_zone == {"Asia/Tokyo": p.unsendable}
    assert "would still be waiting after 7 days" in p.warnings[0]


def test_future_start_sends_nothing_before_it() -> None:
    now = utc(2025, 6, 2, 15)
    start = utc(2025, 6, 4, 7)  # 03:00 in New York: wait for 08:00 local
    p = project([RecipientSlot(NEW_YORK, 500), RecipientSlot("America/New_York", 500)],
                now=now, start_at=start, window=DAYTIME, rate_per_s=2.0)
    assert p.first_send_at == utc(2025, 6, 4, 12)
    assert sent_per_zone(p) == {"America/New_York": 1_000}
    assert p.finish_at == utc(2025, 6, 4, 12) + timedelta(seconds=999 / 2)
    # A start inside the window starts right then.
    p = project({NEW_YORK: 10}, now=now, start_at=utc(2025, 6, 4, 14, 30), window=DAYTIME,
                rate_per_s=2.0)
    assert p.first_send_at == utc(2025, 6, 4, 14, 30)


def test_without_quiet_hours_it_sends_straight_through() -> None:
    now = utc(2025, 6, 2, 3)
    p = project({TOKYO: 7_201}, now=now, start_at=None, window=SendWindow(time(0), time(0)),
                rate_per_s=1.0)
    assert p.finish_at == now + timedelta(hours=2)
    assert [b.sends for b in p.timeline] == [3_600, 3_600, 1]


def test_nothing_to_send_is_finished_at_once() -> None:
    p = project({}, now=ONLY_TOKYO_OPEN, start_at=None, window=DAYTIME, rate_per_s=1)
    assert (p.finish_at, p.unsendable, p.timeline) == (ONLY_TOKYO_OPEN, 0, [])


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError):
        project({TOKYO: 1}, now=datetime(2025, 1, 1), start_at=None, window=DAYTIME,
                rate_per_s=1)


TEN_ZONES = ["America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles",
             "Europe/London", "Europe/Berlin", "Asia/Kolkata", "Asia/Kathmandu", "Asia/Tokyo",
             "Australia/Sydney"]


def test_100k_recipients_over_ten_zones_project_quickly() -> None:
    counts = {zone: 10_000 for zone in TEN_ZONES}
    started = clock.perf_counter()
    p = project(counts, now=utc(2025, 10, 30, 9), start_at=None, window=DAYTIME,
                rate_per_s=0.5)  # two and a half days, across Europe's DST change
    elapsed = clock.perf_counter() - started
    print(f"projected 100k recipients over 10 zones in {elapsed * 1000:.1f} ms "
          f"({len(p.runs)} runs, {len(p.timeline)} buckets)")
    assert sent_per_zone(p) == counts
    assert p.unsendable == 0 and p.finish_at is not None
    assert max(b.sends for b in p.timeline) == 1_800
    assert_sends_only_inside_windows(p, DAYTIME)  # Kathmandu's +05:45 and Europe's DST too


ODD_ZONES = {"Asia/Kathmandu": 900, "Australia/Lord_Howe": 700, "Pacific/Chatham": 500,
             "America/St_Johns": 800, "Europe/London": 1_100, "America/New_York": 1_000}


@pytest.mark.parametrize(("now", "window", "rate"), [
    (utc(2025, 3, 8, 20), DAYTIME, 0.05),  # US spring forward
    (utc(2025, 4, 5, 9, 17), SendWindow(time(9, 30), time(17, 45)), 0.02),  # Lord Howe, ±30 min
    (utc(2025, 10, 25, 23, 59), SendWindow(time(20), time(2)), 0.1),  # wraps; EU fall back
    (utc(2025, 11, 2, 4), SendWindow(time(1, 30), time(1, 45)), 0.5),  # NY's 01:30 twice
])
def test_schedule_is_valid_greedy_and_inside_every_window(
    now: datetime, window: SendWindow, rate: float
) -> None:
    """Every due time is inside its zone's window, sends are at least 1/rate apart, and the
    sender only idles while every zone still waiting is in quiet hours."""
    p = project(ODD_ZONES, now=now, start_at=None, window=window, rate_per_s=rate)
    assert p.unsendable == 0
    sends = sorted((t, zone) for zone in ODD_ZONES for t in p.due_times(zone))
    assert len(sends) == sum(ODD_ZONES.values())
    assert all(window.allows(t, ZoneInfo(zone)) for t, zone in sends)
    step = timedelta(seconds=1 / rate)
    slack = timedelta(microseconds=2)  # due times are rounded down to the microsecond
    waiting = dict(ODD_ZONES)
    free_at, nxt = now, sends[0][0]
    for i, (t, zone) in enumerate(sends):
        if t > free_at + slack:  # idle from free_at to t: nobody waiting could have gone
            for other, n in waiting.items():
                if n:
                    assert window.next_open(free_at, ZoneInfo(other)) >= t - slack, other
        waiting[zone] -= 1
        nxt = sends[i + 1][0] if i + 1 < len(sends) else t + step
        assert nxt - t >= step - slack
        free_at = t + step
    assert p.finish_at == sends[-1][0]


# --- audience --------------------------------------------------------------------------------

EVIL = "vip'); DROP TABLE contacts; --"


def test_audience_sql_carries_every_user_value_as_a_parameter() -> None:
    audience = parse_audience({
        "tags_any": [EVIL, "newsletter"],
        "tags_all": ["opted-in"],
        "exclude_tags": ["do-not-text"],
        "contact_ids": ["0b7c4b5e-1111-4a5e-9d3c-2d7a0f6c9e01"],
        "filters": [
            {"field": f"custom.{EVIL}", "op": "eq", "value": "gold' OR '1'='1"},
            {"field": "custom.score", "op": "neq", "value": 5},
            {"field": "custom.plan", "op": "exists"},
            {"field": "custom.tier", "op": "in", "value": ["a", "b"]},
            {"field": "timezone", "op": "in", "value": ["america/new_york"]},
            {"field": "phone_region", "op": "in", "value": ["de"]},
        ],
    })
    sql, params = audience_sql(audience, param_offset=1)
    for text in (EVIL, "gold", "newsletter", "opted-in", "do-not-text", "score", "plan", "tier",
                 "0b7c4b5e", "America/New_York", "+49"):
        assert text not in sql
    assert [int(n) for n in re.findall(r"\$(\d+)", sql)] == list(range(2, 2 + len(params)))
    assert [EVIL, "newsletter"] in params and "gold' OR '1'='1" in params
    assert custom_key(EVIL) in params  # the key as stored, a parameter too
    assert "5" in params and ["America/New_York"] in params and ["+49%"] in params
    assert re.fullmatch(r"[\w\s$:()\[\]&@>=<!.',%*-]+", sql.replace("''", "")), sql


def test_all_contacts_is_explicit_and_an_empty_audience_is_refused() -> None:
    assert audience_sql(parse_audience({"all_contacts": True})) == ("TRUE", [])
    with pytest.raises(ValidationFailed) as info:
        parse_audience({"exclude_tags": ["x"]})
    assert [(e.field, e.code) for e in info.value.errors] == [("audience", "empty_audience")]


def test_bad_filters_name_the_exact_field() -> None:
    with pytest.raises(ValidationFailed) as info:
        parse_audience({
            "tags_any": ["ok", ""],
            "contact_ids": ["0b7c4b5e-1111-4a5e-9d3c-2d7a0f6c9e01", "nope"],
            "filters": [
                {"field": "custom.plan", "op": "like", "value": "%gold%"},
                {"field": "email", "op": "eq", "value": "a@b.c"},
                {"field": "timezone", "op": "in", "value": ["Europe/Paris", "Mars/Base"]},
                {"field": "phone_region", "op": "eq", "value": "US"},
                {"field": "custom.plan", "op": "eq", "value": ["gold"]},
            ],
            "segment": "x",
        })
    assert [(e.field, e.code) for e in info.value.errors] == [
        ("audience.segment", "unknown_field"),
        ("audience.tags_any.1", "invalid_tag"),
        ("audience.contact_ids.1", "invalid_uuid"),
        ("audience.filters.0.op", "invalid_filter_op"),
        ("audience.filters.1.field", "invalid_filter_field"),
        ("audience.filters.2.value.1", "invalid_timezone"),
        ("audience.filters.3.op", "invalid_filter_op"),
        ("audience.filters.4.value", "invalid_value"),
    ]
    assert "eq or neq or exists or in" in info.value.errors[3].message


def test_explicit_contact_lists_are_capped_at_100k() -> None:
    ids = ["0b7c4b5e-1111-4a5e-9d3c-2d7a0f6c9e01"] * 100_001
    with pytest.raises(ValidationFailed) as info:
        parse_audience({"contact_ids": ids})
    assert [(e.field, e.code) for e in info.value.errors] == [("audience.contact_ids",
                                                               "too_many")]
    assert len(parse_audience({"contact_ids": ids[:100_000]}).contact_ids) == 1  # deduplicated


def test_zone_and_shared_calling_code_filters_are_refined_per_contact() -> None:
    by_zone = parse_audience({"filters": [{"field": "timezone", "op": "in",
                                           "value": ["America/Toronto"]}]})
    assert by_zone.needs_refinement  # a contact without an explicit zone gets it from the number
    assert by_zone.admits("America/Toronto", "+14162345678")
    assert not by_zone.admits("America/New_York", "+12122345678")
    canada = parse_audience({"filters": [{"field": "phone_region", "op": "in", "value": ["CA"]}]})
    assert canada.needs_refinement and audience_sql(canada)[1] == [["+1%"]]  # +1 is shared
    assert canada.admits("America/Toronto", "+14162345678")
    assert not canada.admits("America/New_York", "+12122345678")
    germany = parse_audience({"filters": [{"field": "phone_region", "op": "in", "value": ["DE"]}]})
    assert not germany.needs_refinement


def test_audience_round_trips_through_json() -> None:
    data = {"all_contacts": False, "tags_any": ["a"], "tags_all": [], "exclude_tags": ["b"],
            "contact_ids": [], "filters": [{"field": "custom.plan", "op": "in",
                                            "value": ["gold", 3, True]}]}
    assert parse_audience(data).to_json() == data


# --- content ---------------------------------------------------------------------------------


def test_sms_reports_segments_encoding_and_blank_merge_fields() -> None:
    check = check_content("sms", "Hi {{ first_name }}, 20% off {{ custom.plan }} today 🎉",
                          None, [], {"first_name": "Ana"})
    assert check.body == "Hi Ana, 20% off  today 🎉"
    assert (check.encoding, check.segments, check.missing) == ("UCS-2", 1, ["custom.plan"])
    assert any("UCS-2" in w for w in check.warnings)
    assert any("custom.plan" in w for w in check.warnings)
    plain = check_content("sms", "x" * 161, None, [], {})
    assert (plain.encoding, plain.segments, plain.warnings) == ("GSM-7", 2, [])


def test_sms_body_over_1600_after_merging_is_refused() -> None:
    with pytest.raises(ValidationFailed) as info:
        check_content("sms", "{{ custom.story }}", None, [], {"custom": {"story": "y" * 1601}})
    assert [(e.field, e.code) for e in info.value.errors] == [("body", "too_long")]
    assert "1,601" in info.value.errors[0].message


def test_template_syntax_errors_name_body_or_subject() -> None:
    with pytest.raises(ValidationFailed) as info:
        check_content("email", "Hi {first_name}}", "Sale {{ when", [], {})
    assert [(e.field, e.code) for e in info.value.errors] == [
        ("body", "invalid_template"), ("subject", "invalid_template")]


@pytest.mark.parametrize(("channel", "body", "subject", "media", "errors"), [
    ("email", "Hello", None, [], [("subject", "required")]),
    ("email", "Hello", "{{ custom.missing }}", [], [("subject", "required")]),
    ("mms", "", None, [f"https://cdn.example/{i}.jpg" for i in range(11)],
     [("media_urls", "too_many")]),
    ("mms", "Hi", None, [], [("media_urls", "required")]),
    ("sms", "Hi", None, ["https://cdn.example/a.jpg"], [("media_urls", "not_allowed")]),
    ("voice", "  ", None, [], [("voice.say", "required")]),
    ("voice", "", None, ["ftp://x/a.mp3"], [("media_urls.0", "invalid_url")]),
])
def test_each_channel_needs_its_own_parts(
    channel: str, body: str, subject: str | None, media: list[str],
    errors: list[tuple[str, str]],
) -> None:
    with pytest.raises(ValidationFailed) as info:
        check_content(channel, body, subject, media, {})
    assert [(e.field, e.code) for e in info.value.errors] == errors


def test_valid_mms_email_and_voice_pass() -> None:
    media = [f"https://cdn.example/{i}.jpg" for i in range(10)]
    assert check_content("mms", "", None, media, {}).segments is None
    email = check_content("email", "Hi {{ first_name }}", "For {{ first_name }}", [],
                          {"first_name": "Ana"})
    assert (email.subject, email.body) == ("For Ana", "Hi Ana")
    assert check_content("voice", "", None, ["https://cdn.example/msg.mp3"], {}).body == ""
    assert check_content("voice", "Hello {{ first_name }}", None, [], {}).missing == ["first_name"]
