"""Campaign messages leave only inside their contact's sending window, checked by the send
itself; and a campaign refused for its provider account's credentials keeps its recipients
for the resume. Real gateway, Ray shards, PostgreSQL and sandbox carrier; the carrier's
request log says who got what, and when."""

from __future__ import annotations

import collections
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from actors.lanes import Lanes, Outbound
from actors.limiter import NestedLimiter
from hub.campaigns import window_closes
from hub.context import Hub
from hub.timezones import SendWindow
from tests.conftest import Tenant, auth
from tests.test_campaigns import own_carrier, stats, tenant
from tests.test_sending import carrier, carrier_log, carrier_requests, setup_sms, wait_for

__all__ = ["carrier", "carrier_log", "own_carrier", "tenant"]  # fixtures of other modules

SID = "AC" + "b" * 32


def test_a_window_closes_when_its_quiet_hours_begin() -> None:
    la = ZoneInfo("America/Los_Angeles")
    window = SendWindow(time(8), time(20, 17))
    now = datetime(2026, 12, 3, 20, 16, 29, tzinfo=la).astimezone(UTC)
    closes = window_closes(window, now, la)
    assert closes == datetime(2026, 12, 3, 20, 17, tzinfo=la)
    assert window.next_open(closes, la) == datetime(2026, 12, 4, 8, tzinfo=la)
    # Across midnight, and in a spring-forward night (02:30 does not exist on 8 March).
    assert window_closes(SendWindow(time(22), time(2)), datetime(2026, 12, 4, 23, tzinfo=UTC),
                         UTC) == datetime(2026, 12, 5, 2, tzinfo=UTC)
    ny = ZoneInfo("America/New_York")
    assert window_closes(SendWindow(time(8), time(2, 30)),
                         datetime(2026, 3, 8, 1, 30, tzinfo=ny).astimezone(UTC), ny) == \
        datetime(2026, 3, 8, 3, 0, tzinfo=ny)
    assert window_closes(SendWindow(time(9), time(9)), now, la) is None  # always open


def test_lanes_give_back_what_would_leave_after_its_window_without_spending_tokens() -> None:
    lanes, limiter = Lanes(ahead=0.1), NestedLimiter()
    path = (("sub_account", "sa"), ("sender", "n1"))
    limiter.configure(("sender", "n1"), rate=1.0, burst=1)
    closing = [Outbound(f"c{i}", "sa", "bulk", path, send_until=2.5) for i in range(5)]
    open_ = [Outbound(f"o{i}", "sa", "bulk", path) for i in range(2)]
    lanes.push(closing + open_, now=0.0)
    taken, now = [], 0.0
    while now < 10.0:
        batch = lanes.take_timed(now, limiter, 10)
        taken += [(now, item.message_id) for item, _ in batch]
        lanes.complete(item.message_id for item, _ in batch)
        now = lanes.next_wakeup(now) or now + 0.05
    # One a second: c0, c1 and c2 (by 2.0 s) go in time; c3 and c4 would go at or after the
    # close and are set aside without a token, so o0 and o1 follow at once.
    assert [m for _, m in taken] == ["c0", "c1", "c2", "o0", "o1"]
    assert taken[3][0] <= 3.05
    assert [i.message_id for i in lanes.expired] == ["c3", "c4"]
    assert all(i in lanes for i in ("c3", "c4"))  # in flight until the owner gives them back
    lanes.complete(["c3", "c4"])
    assert not lanes.in_flight and len(lanes) == 0


async def _contacts(hub: Hub, sa: str, tag: str, first: int, n: int, zone: str
                    ) -> set[str]:
    """n contacts tagged `tag` in `zone`; their phones."""
    phones = [f"+1415{3000000 + first + i}" for i in range(n)]
    await hub.pool.execute(
        """INSERT INTO contacts (sub_account_id, phone, first_name, timezone, tags)
           SELECT $1, p, 'Pat', $4, ARRAY[$2] FROM unnest($3::text[]) p""",
        sa, tag, phones, zone)
    return set(phones)


async def _launch(api: httpx.AsyncClient, tenant: Tenant, tag: str, start: datetime,
                  end: datetime) -> dict[str, Any]:
    """Launches a campaign to `tag` whose window runs from `start` to `end`, read on the
    clock they are given in."""
    r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/campaigns", headers=auth(tenant.sa1_key),
                       json={"name": tag, "channel": "sms", "audience": {"tags_any": [tag]},
                             "body": "Hi {{first_name}}. Reply STOP to opt out.",
                             "window_start": f"{start:%H:%M:%S}",
                             "window_end": f"{end:%H:%M:%S}"})
    assert r.status_code == 201, r.text
    r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/campaigns/{r.json()['id']}/launch",
                       headers=auth(tenant.sa1_key))
    assert r.status_code == 200, r.text
    return r.json()


async def test_no_text_leaves_after_the_window_closes_and_the_rest_go_when_it_reopens(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, own_carrier: str
) -> None:
    # One number at 2 MPS shared by two campaigns. "Steady" may send for hours (its contacts
    # are on UTC+12); "closing" in UTC until `close`, then again from `reopen`: the
    # sub-account's quiet hours, as an admin sets them. The closing campaign's scheduler
    # plans on the number's full rate, but the other campaign takes half of it: what is
    # still queued at the close must be held back by the senders themselves.
    await setup_sms(api, tenant, own_carrier, mps=2)
    far = ZoneInfo("Etc/GMT-12")
    steady = await _contacts(hub, tenant.sa1, "steady", 0, 30, far.key)
    closing = await _contacts(hub, tenant.sa1, "closing", 1000, 50, "Etc/GMT")
    now = datetime.now(UTC).replace(microsecond=0)
    close, reopen = now + timedelta(seconds=20), now + timedelta(seconds=42)
    r = await api.patch(f"/v1/sub-accounts/{tenant.sa1}", headers=auth(tenant.agency_key),
                        json={"quiet_start": f"{close:%H:%M:%S}",
                              "quiet_end": f"{reopen:%H:%M:%S}"})
    assert r.status_code == 200, r.text
    await _launch(api, tenant, "steady", (now - timedelta(hours=1)).astimezone(far),
                  (now + timedelta(hours=2)).astimezone(far))
    c = await _launch(api, tenant, "closing", reopen, close)

    async def done() -> bool:
        return (await stats(api, tenant, c["id"]))["counts"].get("sent", 0) >= len(closing)

    await wait_for(done, timeout=150, every=0.5)
    async with httpx.AsyncClient(base_url=own_carrier, timeout=30) as log:
        requests = await carrier_requests(log)
    got = collections.Counter(q["to"] for q in requests)
    assert set(got) == steady | closing and max(got.values()) == 1
    times = sorted(q["time"] for q in requests if q["to"] in closing)
    early = [t for t in times if t < close.timestamp()]
    late = [t for t in times if t >= close.timestamp()]
    assert early and late, (len(early), len(late))
    assert min(late) >= reopen.timestamp(), \
        f"{sum(t < reopen.timestamp() for t in late)} texts while the window was closed"
    s = await stats(api, tenant, c["id"])
    assert s["counts"] == {"sent": len(closing)}, s["counts"]


async def test_a_campaign_refused_for_its_credentials_pauses_and_sends_all_once_fixed(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, carrier: Any,
    carrier_log: httpx.AsyncClient
) -> None:
    await carrier_log.post("/sandbox/config", json={"accounts": {SID: "the-right-token"}})
    try:
        (sender,) = await setup_sms(api, tenant, carrier.url, mps=50,
                                    account=(SID, "a-wrong-token"))
        phones = await _contacts(hub, tenant.sa1, "all", 0, 120, "Etc/GMT")
        now = datetime.now(UTC)
        c = await _launch(api, tenant, "all", now - timedelta(hours=1), now + timedelta(hours=2))

        async def settled() -> dict[str, Any] | None:
            s = await stats(api, tenant, c["id"])
            return s if s["status"] == "paused" and s["counts"] == {"pending": 120} else None

        s = await wait_for(settled, timeout=60, every=0.3)
        # Paused at the first refusal, saying what to do; no recipient failed or was lost.
        assert "20003" in s["paused_reason"], s["paused_reason"]
        assert "update the provider account, then resume" in s["paused_reason"]
        assert not await carrier_requests(carrier_log)

        h = auth(tenant.sa1_key)
        r = await api.patch(f"/v1/sub-accounts/{tenant.sa1}/providers/"
                            f"{sender['provider_account_id']}", headers=h,
                            json={"secret": "the-right-token"})
        assert r.status_code == 200, r.text
        r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/campaigns/{c['id']}/resume",
                           headers=h)
        assert r.status_code == 200, r.text

        async def finished() -> dict[str, Any] | None:
            s = await stats(api, tenant, c["id"])
            return s if s["status"] == "completed" else None

        s = await wait_for(finished, timeout=60, every=0.3)
        assert s["counts"] == {"sent": 120}, s["counts"]
        got = collections.Counter(q["to"] for q in await carrier_requests(carrier_log))
        assert set(got) == phones and max(got.values()) == 1
    finally:
        await carrier_log.post("/sandbox/config", json={"accounts": {}})
