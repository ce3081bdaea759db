"""What the dry run and the stats ETA say against what is then sent (a user review compared
them on the demo): the real gateway, PostgreSQL, Ray shards and sandbox carrier, and the
projection itself for the pool model and far-future starts."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from hub.context import Hub
from hub.projection import project
from hub.sender_pool import choose_weighted
from hub.timezones import SendWindow
from tests.conftest import Tenant, assert_problem, auth
from tests.test_campaigns import open_window_now, own_carrier, tenant
from tests.test_sending import carrier, carrier_log, carrier_requests, setup_sms, wait_for
from tests.test_webhooks import add_provider, add_sender

__all__ = ["carrier", "carrier_log", "own_carrier", "tenant"]  # fixtures

NOW = datetime(2026, 3, 2, 15, tzinfo=UTC)
ALWAYS = SendWindow(time(0), time(0))
DAYTIME = SendWindow(time(8), time(21))
TWO_SEGMENTS = "Spring sale: " + "everything must go, " * 9  # 193 GSM-7 characters


async def contacts(hub: Hub, tenant: Tenant, n: int, zone: str = "Etc/GMT") -> None:
    await hub.pool.execute(
        """INSERT INTO contacts (sub_account_id, phone, email, email_key, first_name,
                                 timezone, tags)
           SELECT $1, '+1415555' || lpad(i::text, 4, '0'), 'c' || i || '@example.com',
                  'c' || i || '@example.com', 'Pat', $3, ARRAY['all']
           FROM generate_series(1, $2) i""", tenant.sa1, n, zone)


async def call(api: httpx.AsyncClient, tenant: Tenant, method: str, path: str,
               **kwargs: Any) -> dict[str, Any]:
    r = await api.request(method, f"/v1/sub-accounts/{tenant.sa1}/campaigns{path}",
                          headers=auth(tenant.sa1_key), **kwargs)
    assert r.status_code in (200, 201), r.text
    return dict(r.json())


async def campaign(api: httpx.AsyncClient, tenant: Tenant, **extra: Any) -> dict[str, Any]:
    start, end = open_window_now()  # open now in UTC, closed in New York
    return await call(api, tenant, "POST", "", json={
        "name": "Sale", "channel": "sms", "audience": {"tags_any": ["all"]},
        "body": "Hi {{first_name}}, 20% off. Reply STOP to opt out.",
        "window_start": start, "window_end": end, **extra})


def at(value: str) -> datetime:
    return datetime.fromisoformat(value)


# --- 1. the rate cap and sender MPS count segments, as the Sender shard does ----------------


async def test_a_two_segment_text_at_a_cap_of_two_leaves_once_a_second(
        hub: Hub, api: httpx.AsyncClient, tenant: Tenant, own_carrier: str) -> None:
    await setup_sms(api, tenant, own_carrier, mps=50)
    await contacts(hub, tenant, 6)
    c = await campaign(api, tenant, body=TWO_SEGMENTS, rate_cap=2)
    dry = await call(api, tenant, "POST", f"/{c['id']}/dry-run")
    assert dry["rate_per_s"] == 1.0, dry
    assert at(dry["finish_at"]) - at(dry["first_send_at"]) == timedelta(seconds=5)
    await call(api, tenant, "POST", f"/{c['id']}/launch")
    stats = await call(api, tenant, "GET", f"/{c['id']}/stats")
    assert stats["max_rate_per_s"] == 1.0, stats
    async with httpx.AsyncClient(base_url=own_carrier, timeout=30) as log:
        async def all_six() -> list[float] | None:
            times = sorted(q["time"] for q in await carrier_requests(log))
            return times if len(times) == 6 else None
        times = await wait_for(all_six, timeout=60, every=0.5)
    span = times[-1] - times[0]
    print(f"\nprojected 5.0 s, carrier saw {span:.2f} s")
    assert span >= 4.5, span  # 2 segments a second: one message a second, not two


async def test_the_mps_of_each_sender_counts_segments_too(
        hub: Hub, api: httpx.AsyncClient, tenant: Tenant) -> None:
    pa = await add_provider(api, tenant, tenant.sa1, tenant.sa1_key, account_id="AC" + "f" * 32,
                            base_url="http://127.0.0.1:9")
    await add_sender(api, tenant.sa1, tenant.sa1_key, pa)  # 50 MPS
    await contacts(hub, tenant, 3)
    c = await campaign(api, tenant, body="x" * 400)  # 3 segments of 153 characters
    dry = await call(api, tenant, "POST", f"/{c['id']}/dry-run")
    assert dry["rate_per_s"] == 50 / 3, dry


# --- 2. a pool: shares by MPS, each sender at its own rate ----------------------------------


def test_a_pool_projects_the_weighted_assignment_and_its_slowest_sender() -> None:
    # The scheduler assigns contacts with choose_weighted (by MPS): simulate that assignment
    # of real contact keys, sender by sender, and compare with the projection.
    pool = [("long-code", 1.0), ("toll-free", 3.0)]
    keys = [f"contact-{i}" for i in range(20_000)]
    share = Counter(choose_weighted(k, pool) for k in keys)
    actual = max((share[s] - 1) / mps for s, mps in pool)
    p = project({"Etc/GMT": len(keys)}, now=NOW, start_at=None, window=ALWAYS,
                rate_per_s=[mps for _, mps in pool])
    assert p.finish_at is not None and p.rate_per_s == 4.0
    projected = (p.finish_at - NOW).total_seconds()
    print(f"\nprojected {projected:.1f} s; by choose_weighted's assignment {actual:.1f} s")
    assert abs(projected - actual) <= 0.02 * actual
    # Each sender drains its share (5,000 and 15,000) at its own rate; the runs say so.
    by_rate: Counter[float] = Counter()
    for run in p.runs:
        by_rate[run.rate_per_s] += run.count
    assert by_rate == {1.0: 5_000, 3.0: 15_000}
    assert p.finish_at == max(max(run.due_times()) for run in p.runs)
    assert sum(b.sends for b in p.timeline) == len(keys)


def test_small_zones_odd_recipients_go_to_the_senders_in_turn() -> None:
    # Two each, a second apart: not all four on the first number (+3 s), nor one stream of 2/s
    # (+1.5 s).
    p = project({z: 1 for z in ("Etc/GMT", "Etc/GMT-1", "Etc/GMT-2", "Etc/GMT-3")}, now=NOW,
                start_at=None, window=ALWAYS, rate_per_s=[1, 1])
    assert p.finish_at == NOW + timedelta(seconds=1), p.runs
    # A sender of rate 0 gets no one; a pool of only such senders sends nothing.
    assert project({"Etc/GMT": 3}, now=NOW, start_at=None, window=ALWAYS,
                   rate_per_s=[0, 1]).finish_at == NOW + timedelta(seconds=2)
    assert project({"Etc/GMT": 3}, now=NOW, start_at=None, window=ALWAYS,
                   rate_per_s=[]).unsendable == 3


def test_every_zones_recipients_are_all_shared_out() -> None:
    zones = {"Asia/Tokyo": 7, "America/New_York": 1, "Europe/Paris": 13, "Etc/GMT": 2}
    for rates in ([1, 100], [1, 1, 1], [0.5, 2, 3, 0.1], [7]):
        p = project(zones, now=NOW, start_at=None, window=DAYTIME, rate_per_s=rates)
        got: Counter[str] = Counter()
        for run in p.runs:
            got[run.zone] += run.count
        assert got == zones and p.unsendable == 0, (rates, got)


# --- 3. email has no quiet hours, in the scheduler and so in the projection -----------------


async def test_an_email_campaign_at_night_is_projected_and_sent_now(
        hub: Hub, api: httpx.AsyncClient, tenant: Tenant, carrier: Any,
        carrier_log: httpx.AsyncClient) -> None:
    pa = await add_provider(api, tenant, tenant.sa1, tenant.sa1_key, provider="sendgrid",
                            account_id="sg", secret="SG.test", base_url=carrier.url)
    await add_sender(api, tenant.sa1, tenant.sa1_key, pa, address="news@acme.example",
                     channel="email", kind="email")
    await contacts(hub, tenant, 3)
    h = datetime.now(UTC).hour
    closed = {"window_start": f"{(h + 2) % 24:02d}:00", "window_end": f"{(h + 5) % 24:02d}:00"}
    c = await campaign(api, tenant, channel="email", subject="News", **closed)
    before = datetime.now(UTC)
    dry = await call(api, tenant, "POST", f"/{c['id']}/dry-run")
    assert before <= at(dry["first_send_at"]) <= at(dry["finish_at"]) < before + \
        timedelta(minutes=1), dry
    await call(api, tenant, "POST", f"/{c['id']}/launch")

    async def sent() -> bool:
        return len([q for q in await carrier_requests(carrier_log)
                    if q["channel"] == "email"]) == 3
    await wait_for(sent, timeout=30)  # the window opens in over an hour


# --- 4. queued messages leave now, at the rate ---------------------------------------------


async def test_the_eta_counts_queued_messages_as_leaving_now(
        hub: Hub, api: httpx.AsyncClient, tenant: Tenant, carrier: Any,
        carrier_log: httpx.AsyncClient) -> None:
    await setup_sms(api, tenant, carrier.url)
    await contacts(hub, tenant, 2)
    # The contacts' window is open; the sub-account's zone (New York) is in quiet hours. At
    # 0.02 segments a second the second message waits 50 s in the shard, queued.
    c = await campaign(api, tenant, rate_cap=0.02)
    await call(api, tenant, "POST", f"/{c['id']}/launch")

    async def one_sent_one_queued() -> dict[str, Any] | None:
        s = await call(api, tenant, "GET", f"/{c['id']}/stats")
        n = s["counts"]
        return s if n.get("sent") == 1 and n.get("queued", 0) + n.get("sending", 0) == 1 \
            else None
    now = datetime.now(UTC)
    stats = await wait_for(one_sent_one_queued, timeout=40)
    assert now <= at(stats["eta"]) <= datetime.now(UTC) + timedelta(seconds=50), stats
    await call(api, tenant, "POST", f"/{c['id']}/cancel")


# --- 5. start_at: at most a year ahead, and any stored one projects --------------------------


async def test_a_start_more_than_a_year_ahead_is_refused_naming_start_at(
        hub: Hub, api: httpx.AsyncClient, tenant: Tenant) -> None:
    await setup_sms(api, tenant, "http://127.0.0.1:9")
    await contacts(hub, tenant, 2)
    r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/campaigns", headers=auth(tenant.sa1_key),
                       json={"name": "Sale", "channel": "sms", "audience": {"tags_any": ["all"]},
                             "body": "Hi", "start_at": "9999-12-31T23:59:59Z"})
    assert [e["code"] for e in assert_problem(r, 422, field="start_at")["errors"]] == \
        ["too_far_ahead"]
    within = datetime.now(UTC) + timedelta(days=360)
    c = await campaign(api, tenant, start_at=within.isoformat())
    # One stored before the bound still projects (nothing within reach) instead of a 500.
    await hub.pool.execute("UPDATE campaigns SET start_at = '9999-12-31 23:59:59+00'")
    assert (await call(api, tenant, "POST", f"/{c['id']}/launch"))["status"] == "scheduled"
    dry = await call(api, tenant, "POST", f"/{c['id']}/dry-run")
    assert (dry["finish_at"], dry["unsendable"]) == (None, 2) and "start_at" in \
        dry["warnings"][-1], dry
    assert (await call(api, tenant, "GET", f"/{c['id']}/stats"))["eta"] is None


def test_any_start_is_safe_to_project() -> None:
    zones = {"Asia/Tokyo": 3, "America/New_York": 2, "Pacific/Kiritimati": 1}
    for start in (datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),
                  datetime(9999, 12, 31, 23, tzinfo=ZoneInfo("America/New_York")),
                  datetime.max.replace(tzinfo=ZoneInfo("Pacific/Kiritimati"))):
        for window in (DAYTIME, ALWAYS):
            p = project(zones, now=NOW, start_at=start, window=window, rate_per_s=1)
            assert (p.finish_at, p.unsendable, p.timeline) == (None, 6, []), start
    # Near the end of the calendar, what fits before it is still projected.
    late = datetime(9999, 12, 20, tzinfo=UTC)
    p = project(zones, now=NOW, start_at=late, window=DAYTIME, rate_per_s=1)
    assert p.unsendable == 0 and p.finish_at is not None and late < p.finish_at
    # A start before the epoch, in a zone ahead of UTC, is simply "now".
    early = datetime.min.replace(tzinfo=ZoneInfo("Asia/Tokyo"))
    assert project(zones, now=NOW, start_at=early, window=ALWAYS,
                   rate_per_s=1).first_send_at == NOW
