"""Campaigns end to end: real gateway, Ray scheduler and sender shards, PostgreSQL and the
sandbox carrier, whose request log says who got what."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from actors import ray_api
from actors.scheduler import Drain, record_counts, window_size
from actors.sender import sender_burst
from actors.supervisor import scheduler_name, sender_name
from hub import actions
from hub.bench_campaign import quiet_hours_away_from_now
from hub.campaigns import FailureWindow
from hub.context import Hub
from tests.conftest import Tenant, assert_problem, auth, make_tenant
from tests.test_sending import carrier, carrier_log, carrier_requests, setup_sms, wait_for

__all__ = ["carrier", "carrier_log"]  # fixtures shared with test_sending

ZONES = ("Etc/GMT", "Etc/GMT-1", "Etc/GMT-12")  # UTC, UTC+1, UTC+12


async def sending_hours_now(api: httpx.AsyncClient, tenant: Tenant, zone: str = "UTC"
                            ) -> dict[str, Any]:
    """Gives the tenant's first sub-account `quiet_hours_away_from_now` through the API, as
    an admin would (so they are checked as an admin's are); returns the sub-account."""
    r = await api.patch(f"/v1/sub-accounts/{tenant.sa1}", headers=auth(tenant.agency_key),
                        json=quiet_hours_away_from_now(zone))
    assert r.status_code == 200, r.text
    return dict(r.json())


async def sending_hours_now_for(hub: Hub, sa_id: Any) -> dict[str, Any]:
    """`sending_hours_now` for tests that drive the actions without the gateway: the same
    `do_update_sub_account` the route calls. Returns the sub-account's row."""
    hours = {k: datetime.strptime(v, "%H:%M").time()
             for k, v in quiet_hours_away_from_now().items()}
    return await actions.do_update_sub_account(hub, sa_id, hours)


@pytest.fixture
async def tenant(hub: Hub, api: httpx.AsyncClient) -> Tenant:
    """The conftest tenant, its first sub-account given `sending_hours_now`."""
    made = await make_tenant(hub, api)
    await sending_hours_now(api, made)
    return made


def open_window_now() -> tuple[str, str]:
    """A local window open now in UTC and UTC+1, closed in UTC+12."""
    h = datetime.now(UTC).hour
    return f"{(h - 1) % 24:02d}:00", f"{(h + 3) % 24:02d}:00"


async def seed_contacts(hub: Hub, sa: str, n: int) -> None:
    """n contacts over three zones, with a phone each except every 500th (email only)."""
    await hub.pool.execute(
        """INSERT INTO contacts (sub_account_id, phone, email, email_key, first_name, timezone,
                                 tags)
           SELECT $1, CASE WHEN i % 500 = 0 THEN NULL
                           ELSE '+1' || (ARRAY['212','312','415','617'])[1 + i % 4]
                                || (2000000 + i)::text END,
                  'c' || i || '@example.com', 'c' || i || '@example.com', 'Pat' || i,
                  ($2::text[])[1 + i % 3], ARRAY['all', CASE WHEN i % 2 = 0 THEN 'even'
                                                            ELSE 'odd' END]
           FROM generate_series(1, $3) i""", sa, list(ZONES), n)


async def make_campaign(api: httpx.AsyncClient, tenant: Tenant, **extra: Any) -> dict[str, Any]:
    start, end = open_window_now()
    body = {"name": "Spring sale", "channel": "sms", "audience": {"tags_any": ["all"]},
            "body": "Hi {{first_name}}, 20% off this week. Reply STOP to opt out.",
            "window_start": start, "window_end": end, **extra}
    r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/campaigns", headers=auth(tenant.sa1_key),
                       json=body)
    assert r.status_code == 201, r.text
    return r.json()


async def stats(api: httpx.AsyncClient, tenant: Tenant, cid: str) -> dict[str, Any]:
    r = await api.get(f"/v1/sub-accounts/{tenant.sa1}/campaigns/{cid}/stats",
                      headers=auth(tenant.sa1_key))
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.slow
async def test_10k_campaign_each_eligible_recipient_exactly_once(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, carrier: Any,
    carrier_log: httpx.AsyncClient
) -> None:
    n = 10_000
    await setup_sms(api, tenant, carrier.url,
                    numbers=("+12125550100", "+12125550101", "+12125550102"), mps=2000)
    await seed_contacts(hub, tenant.sa1, n)
    suppressed = [f"+1{('212', '312', '415', '617')[i % 4]}{2000000 + i}" for i in range(7, 707, 7)]
    await hub.pool.execute(
        """INSERT INTO suppressions (sub_account_id, channel, address, reason, source, created_by)
           SELECT $1, 'sms', unnest($2::text[]), 'STOP', 'opt_out', 'test'""",
        tenant.sa1, suppressed)
    c = await make_campaign(api, tenant)
    assert c["status"] == "draft" and c["allowed_actions"] == ["launch"]
    dry = (await api.post(f"/v1/sub-accounts/{tenant.sa1}/campaigns/{c['id']}/dry-run",
                          headers=auth(tenant.sa1_key))).json()
    # The dry run counts who would be sent: no one without a number, no one suppressed.
    assert dry["recipients"] == n - n // 500 - len(suppressed)
    assert set(dry["by_zone"]) == set(ZONES)
    # UTC+12 is outside its window now, so the projection ends hours later, when it opens.
    first, finish = (datetime.fromisoformat(dry[k]) for k in ("first_send_at", "finish_at"))
    assert (finish - first).total_seconds() > 3600 and dry["timeline"]

    r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/campaigns/{c['id']}/launch",
                       headers=auth(tenant.sa1_key))
    assert r.status_code == 200, r.text
    launched = r.json()
    assert launched["status"] == "running"
    no_phone = n // 500
    assert launched["recipients_total"] == n
    assert launched["skipped_total"] == no_phone + len(suppressed)

    rows = await hub.pool.fetch("SELECT id, phone, timezone FROM contacts WHERE sub_account_id=$1",
                                tenant.sa1)
    quiet = {r["phone"] for r in rows if r["timezone"] == "Etc/GMT-12" and r["phone"]}
    eligible = {r["phone"] for r in rows if r["phone"]} - set(suppressed) - quiet

    async def all_sent() -> bool:
        s = await stats(api, tenant, c["id"])
        return s["counts"].get("sent", 0) >= len(eligible)

    await wait_for(all_sent, timeout=300, every=0.5)
    await asyncio.sleep(1.0)  # let anything extra (there must be none) arrive
    got = collections.Counter(q["to"] for q in await carrier_requests(carrier_log))
    assert set(got) == eligible, (len(set(got) - eligible), len(eligible - set(got)))
    assert max(got.values()) == 1, "a contact was texted twice"
    assert not set(got) & set(suppressed) and not set(got) & quiet
    s = await stats(api, tenant, c["id"])
    assert s["status"] == "running"  # the UTC+12 zone waits for its window to open
    assert s["counts"]["pending"] == len(quiet - set(suppressed))
    assert s["eta"] is not None
    recipients = (await api.get(f"/v1/sub-accounts/{tenant.sa1}/campaigns/{c['id']}/recipients",
                                headers=auth(tenant.sa1_key),
                                params={"status": "skipped", "limit": 1000})).json()
    reasons = collections.Counter(x["skip_reason"] for x in recipients["data"])
    assert reasons == {"suppressed": len(suppressed), "no_phone": no_phone}


async def test_pause_resume_cancel_and_invalid_transitions(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, carrier: Any,
    carrier_log: httpx.AsyncClient
) -> None:
    await setup_sms(api, tenant, carrier.url, mps=20)  # slow: 20 messages a second
    await seed_contacts(hub, tenant.sa1, 600)
    c = await make_campaign(api, tenant, audience={"tags_all": ["all", "even"]})
    base = f"/v1/sub-accounts/{tenant.sa1}/campaigns/{c['id']}"
    h = auth(tenant.sa1_key)
    assert_problem(await api.post(f"{base}/pause", headers=h), 409, "invalid_transition")
    assert (await api.post(f"{base}/launch", headers=h)).json()["status"] == "running"
    assert_problem(await api.post(f"{base}/launch", headers=h), 409, "invalid_transition")

    async def some_sent() -> bool:
        return (await stats(api, tenant, c["id"]))["counts"].get("sent", 0) >= 20

    await wait_for(some_sent)
    paused = (await api.post(f"{base}/pause", headers=h)).json()
    assert paused["status"] == "paused" and paused["allowed_actions"] == ["resume", "cancel"]
    await asyncio.sleep(1.5)
    before = len(await carrier_requests(carrier_log))
    await asyncio.sleep(1.5)
    assert len(await carrier_requests(carrier_log)) == before, "sending went on while paused"
    assert (await api.post(f"{base}/resume", headers=h)).json()["status"] == "running"

    async def more_sent() -> bool:
        return len(await carrier_requests(carrier_log)) >= before + 20

    await wait_for(more_sent)
    canceled = (await api.post(f"{base}/cancel", headers=h)).json()
    assert canceled["status"] == "canceled"
    await asyncio.sleep(1.5)
    final = collections.Counter(q["to"] for q in await carrier_requests(carrier_log))
    await asyncio.sleep(1.5)
    assert collections.Counter(q["to"] for q in await carrier_requests(carrier_log)) == final
    assert max(final.values()) == 1
    s = await stats(api, tenant, c["id"])
    assert s["counts"].get("sent", 0) == sum(final.values())
    assert s["counts"].get("canceled", 0) > 0
    assert_problem(await api.post(f"{base}/resume", headers=h), 409, "invalid_transition")


async def test_a_contact_deleted_mid_campaign_is_skipped_and_the_campaign_completes(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, carrier: Any,
    carrier_log: httpx.AsyncClient
) -> None:
    """Two contacts are texted; a third, at UTC+12, waits hours for its window and is
    deleted meanwhile: it is skipped, and the campaign completes instead of waiting for a
    recipient that no longer exists."""
    await setup_sms(api, tenant, carrier.url)
    phones = ["+14155556001", "+14155556002", "+14155556003"]
    await hub.pool.execute(
        """INSERT INTO contacts (sub_account_id, phone, first_name, timezone, tags)
           SELECT $1, p, 'Pat', z, ARRAY['all'] FROM unnest($2::text[], $3::text[]) AS u(p, z)""",
        tenant.sa1, phones, ["UTC", "UTC", "Etc/GMT-12"])
    c = await make_campaign(api, tenant)
    base = f"/v1/sub-accounts/{tenant.sa1}/campaigns/{c['id']}"
    h = auth(tenant.sa1_key)
    assert (await api.post(f"{base}/launch", headers=h)).json()["status"] == "running"

    async def two_sent() -> bool:
        return (await stats(api, tenant, c["id"]))["counts"].get("sent", 0) == 2

    await wait_for(two_sent)
    assert (await api.get(base, headers=h)).json()["status"] == "running"  # one waits
    late = await hub.pool.fetchval("SELECT id FROM contacts WHERE phone = $1", phones[2])
    r = await api.delete(f"/v1/sub-accounts/{tenant.sa1}/contacts/{late}", headers=h)
    assert r.status_code == 204, r.text

    async def completed() -> bool:
        return (await api.get(base, headers=h)).json()["status"] == "completed"

    await wait_for(completed, timeout=30)
    skipped = (await api.get(f"{base}/recipients", headers=h,
                             params={"status": "skipped"})).json()["data"]
    assert [s["skip_reason"] for s in skipped] == ["contact_deleted"]
    assert sorted(q["to"] for q in await carrier_requests(carrier_log)) == phones[:2]


@pytest.mark.slow
async def test_sender_and_scheduler_killed_mid_campaign_still_exactly_once(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, carrier: Any,
    carrier_log: httpx.AsyncClient
) -> None:
    await setup_sms(api, tenant, carrier.url, numbers=("+12125550100", "+12125550101"),
                    mps=150)
    await seed_contacts(hub, tenant.sa1, 3_000)
    c = await make_campaign(api, tenant)
    await api.post(f"/v1/sub-accounts/{tenant.sa1}/campaigns/{c['id']}/launch",
                   headers=auth(tenant.sa1_key))

    async def a_third_sent() -> bool:
        return (await stats(api, tenant, c["id"]))["counts"].get("sent", 0) >= 600

    await wait_for(a_third_sent)
    # Whichever shards host this sub-account die without warning: every SMS sender and the
    # campaign's scheduler. Ray restarts them; they resume from PostgreSQL.
    for i in range(2):
        ray_api.kill(ray_api.get_actor(sender_name("sms", i)), restart=True)
    ray_api.kill(ray_api.get_actor(scheduler_name(0)), restart=True)
    rows = await hub.pool.fetch("SELECT phone, timezone FROM contacts WHERE sub_account_id=$1",
                                tenant.sa1)
    eligible = {r["phone"] for r in rows if r["phone"] and r["timezone"] != "Etc/GMT-12"}

    async def all_sent() -> bool:
        s = await stats(api, tenant, c["id"])
        return s["counts"].get("sent", 0) >= len(eligible)

    await wait_for(all_sent, timeout=300, every=0.5)
    await asyncio.sleep(1.0)
    got = collections.Counter(q["to"] for q in await carrier_requests(carrier_log))
    assert set(got) == eligible
    assert max(got.values()) == 1, "a contact was texted twice after the crash"


@pytest.fixture
def own_carrier() -> Iterator[str]:
    """A carrier in a process of its own, as the real one is. The session's carrier is a
    thread of the test process and shares its GIL with the gateway: while the gateway is
    busy, requests wait in its socket and are logged together, which says nothing about
    how the hub spaced them."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "hub.cli", "carrier"],
                            env={**os.environ, "HUB_CARRIER_PORT": str(port)},
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/sandbox/healthz", timeout=2).status_code == 200:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, "no carrier"
            time.sleep(0.2)
        httpx.post(f"{url}/sandbox/config", json={"callbacks_enabled": False}, timeout=10)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


async def test_sender_rate_limit_is_held_and_used(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, own_carrier: str
) -> None:
    mps = 25.0
    await setup_sms(api, tenant, own_carrier, mps=mps)
    await seed_contacts(hub, tenant.sa1, 400)
    c = await make_campaign(api, tenant)
    await api.post(f"/v1/sub-accounts/{tenant.sa1}/campaigns/{c['id']}/launch",
                   headers=auth(tenant.sa1_key))

    rows = await hub.pool.fetch("SELECT phone, timezone FROM contacts WHERE sub_account_id=$1",
                                tenant.sa1)
    eligible = [r for r in rows if r["phone"] and r["timezone"] != "Etc/GMT-12"]

    async def done() -> bool:
        return (await stats(api, tenant, c["id"]))["counts"].get("sent", 0) >= len(eligible)

    await wait_for(done, timeout=120, every=0.5)
    async with httpx.AsyncClient(base_url=own_carrier, timeout=30) as log:
        times = sorted(q["time"] for q in await carrier_requests(log))
    assert len(times) == len(eligible)
    burst = sender_burst(mps)
    # No one-second window holds more than the limit plus its burst.
    j = 0
    worst, worst_at = 0, 0
    for i, t in enumerate(times):
        while times[j] < t - 1.0:
            j += 1
        if i - j + 1 > worst:
            worst, worst_at = i - j + 1, j
    gaps = [round((b - a) * 1000) for a, b in
            itertools.pairwise(times[worst_at:worst_at + worst])]
    print(f"\nworst 1 s window {worst} (limit {mps} + burst {burst}); gaps (ms) {gaps}")
    assert worst <= mps + burst, worst
    # While backlogged the sender uses at least 90% of its allowed rate.
    steady = times[int(burst) + 1:]
    achieved = (len(steady) - 1) / (steady[-1] - steady[0])
    longest = max(itertools.pairwise(steady), key=lambda p: p[1] - p[0])
    print(f"sustained {achieved:.2f}/s of {mps}/s; longest pause {longest[1] - longest[0]:.2f} s"
          f" after {longest[0] - steady[0]:.1f} s of {steady[-1] - steady[0]:.1f} s")
    assert achieved >= 0.9 * mps, achieved


async def test_campaign_pauses_itself_when_failures_spike(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, carrier: Any,
    carrier_log: httpx.AsyncClient
) -> None:
    await setup_sms(api, tenant, carrier.url, mps=100)
    await seed_contacts(hub, tenant.sa1, 600)
    rows = await hub.pool.fetch("SELECT phone FROM contacts WHERE sub_account_id = $1 AND "
                                "phone IS NOT NULL ORDER BY phone", tenant.sa1)
    # The carrier refuses 40% of the numbers as unreachable (Twilio 21211).
    await carrier_log.post("/sandbox/config", json={
        "reject_to": {r["phone"]: 21211 for i, r in enumerate(rows) if i % 5 < 2}})
    try:
        c = await make_campaign(api, tenant, failure_threshold=0.2)
        await api.post(f"/v1/sub-accounts/{tenant.sa1}/campaigns/{c['id']}/launch",
                       headers=auth(tenant.sa1_key))

        async def paused() -> dict[str, Any] | None:
            s = await stats(api, tenant, c["id"])
            return s if s["status"] == "paused" else None

        s = await wait_for(paused, timeout=120, every=0.3)
    finally:
        await carrier_log.post("/sandbox/config", json={"reject_to": {}})
    assert "paused automatically" in s["paused_reason"] and "21211" in s["paused_reason"]
    assert s["top_errors"][0]["code"] == "21211"
    assert s["allowed_actions"] == ["resume", "cancel"]
    assert s["counts"].get("pending", 0) > 0, "it paused before finishing the audience"


def test_the_window_follows_what_the_senders_achieve_not_their_nominal_mps() -> None:
    drain = Drain(span_s=5.0)
    assert drain.rate() is None
    # 10 numbers x 1,000 MPS nominal; the senders get 1,500 messages a second through.
    backlog, t = 0, 0.0
    for _ in range(20):  # every half second: 750 sent, 750 created in their place
        created = 750 if t else 4_000
        backlog += created - (750 if t else 0)
        drain.observe(t, backlog, created)
        t += 0.5
    rate = drain.rate()
    assert rate is not None and abs(rate - 1_500) < 1.0
    window = window_size(rate, nominal=10_000, window_s=5.0, min_window=2_000)
    assert window == 15_000  # seconds of the achieved rate (x2), not 50,000 of nominal
    assert window_size(None, 10_000, 5.0, 2_000) == 2_000  # before any rate is known
    assert window_size(50.0, 20, 5.0, 2_000) == 2_000  # a slow number: the floor
    assert window_size(5_000.0, 1_000, 5.0, 500) == 5_000  # never past the nominal rate


def test_a_drain_seen_only_after_a_restart_counts_the_backlog_it_found() -> None:
    drain = Drain(span_s=5.0)
    drain.observe(0.0, 3_000, 0)  # messages left by the previous incarnation
    drain.observe(2.0, 1_000, 0)
    assert drain.rate() == 1_000


def test_outcome_counts_feed_the_failure_window_evenly() -> None:
    # 1,000 outcomes with 9% failures since the last look: under a 20% threshold, whatever
    # order they came in.
    window = FailureWindow(size=200, threshold=0.2)
    record_counts(window, ok=910, failed=90)
    assert window.samples == 200 and 17 <= window.failures <= 19 and not window.tripped()
    record_counts(window, ok=60, failed=40)
    assert window.tripped()
    record_counts(window, ok=0, failed=0)  # nothing new: nothing changes
    assert window.samples == 200
