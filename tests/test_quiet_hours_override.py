"""Quiet hours are a compliance setting a campaign may narrow but never widen, and every
time-of-day field takes a wall-clock "HH:MM" only: review R5's findings, through the real
routes and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from hub import db
from hub.context import Hub
from hub.timezones import SendWindow
from tests.conftest import Tenant, assert_problem, auth
from tests.test_campaign_fixes import call, create, created, setup


def test_a_window_is_inside_another_only_if_every_hour_it_allows_is() -> None:
    day, night = SendWindow(time(8), time(21)), SendWindow(time(22), time(6))
    cases = [
        (SendWindow(time(9), time(17)), day, True),
        (SendWindow(time(8), time(21)), day, True),
        (SendWindow(time(1), time(4)), day, False),
        (SendWindow(time(20), time(9)), day, False),  # wraps out past 21:00
        (SendWindow(time(7, 59, 59), time(12)), day, False),
        (SendWindow(time(23), time(5)), night, True),
        (SendWindow(time(23), time(7)), night, False),
        (SendWindow(time(2), time(23)), night, False),  # starts inside, ends past 06:00
        (SendWindow(time(3), time(4)), SendWindow(time(5), time(5)), True),  # no quiet hours
    ]
    for window, outer, inside in cases:
        assert window.inside(outer) is inside, (window, outer)


async def _quiet(api: httpx.AsyncClient, tenant: Tenant, start: str, end: str
                 ) -> httpx.Response:
    return await api.patch(f"/v1/sub-accounts/{tenant.sa1}", headers=auth(tenant.agency_key),
                           json={"quiet_start": start, "quiet_end": end})


def _outside(r: httpx.Response, field: str) -> str:
    """The message of a 422 naming `field` as reaching outside the sending hours."""
    problem = assert_problem(r, 422, field=field)
    (error,) = problem["errors"]
    assert error["code"] == "outside_sending_hours", problem
    return str(error["message"])


async def test_the_r5_window_at_night_is_refused_on_create_and_on_edit(
        hub: Hub, api: httpx.AsyncClient, tenant: Tenant) -> None:
    await setup(hub, api, tenant)
    assert (await _quiet(api, tenant, "21:00", "08:00")).status_code == 200
    message = _outside(await create(api, tenant, window_start="01:00", window_end="04:00"),
                       "window_start")
    assert "08:00–21:00" in message and "Settings" in message, message
    # One end alone takes the other from the sending hours: 02:00–21:00 starts too early,
    # 20:00–09:00 starts inside and runs on through the night.
    _outside(await create(api, tenant, window_start="02:00"), "window_start")
    _outside(await create(api, tenant, window_start="20:00", window_end="09:00"), "window_end")
    # A window inside the sending hours is kept as given; none at all takes them whole.
    kept = await created(api, tenant, window_start="09:30", window_end="17:00")
    assert (kept["window_start"], kept["window_end"]) == ("09:30:00", "17:00:00")
    default = await created(api, tenant)
    assert (default["window_start"], default["window_end"]) == ("08:00:00", "21:00:00")
    # The edit of a draft is checked as the create is, and leaves the draft as it was.
    r = await api.patch(f"/v1/sub-accounts/{tenant.sa1}/campaigns/{kept['id']}",
                        headers=auth(tenant.sa1_key),
                        json={"window_start": "02:00", "window_end": "04:00"})
    _outside(r, "window_start")
    same = await call(api, tenant, "GET", f"/campaigns/{kept['id']}")
    assert (same["window_start"], same["window_end"]) == ("09:30:00", "17:00:00")


async def test_a_dry_run_never_plans_a_text_inside_quiet_hours(
        hub: Hub, api: httpx.AsyncClient, tenant: Tenant) -> None:
    await setup(hub, api, tenant, phones=40)  # contacts on UTC
    assert (await _quiet(api, tenant, "21:00", "08:00")).status_code == 200
    _outside(await create(api, tenant, window_start="02:00", window_end="04:00"),
             "window_start")
    for window in ({}, {"window_start": "10:00", "window_end": "10:05"}):
        c = await created(api, tenant, rate_cap=0.05, **window)  # 40 texts take 13 minutes
        dry = await call(api, tenant, "POST", f"/campaigns/{c['id']}/dry-run")
        assert sum(b["sends"] for b in dry["timeline"]) == 40, dry
        hours = SendWindow(time(8), time(21))
        for bucket in dry["timeline"]:
            if bucket["sends"]:
                start = datetime.fromisoformat(bucket["start"]).astimezone(UTC)
                assert hours.contains(start.time()), bucket


async def test_new_quiet_hours_are_refused_while_a_launched_campaign_reaches_outside_them(
        hub: Hub, api: httpx.AsyncClient, tenant: Tenant) -> None:
    await setup(hub, api, tenant)
    start_at = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    c = await created(api, tenant, window_start="09:00", window_end="17:00", start_at=start_at)
    draft = await created(api, tenant, window_start="09:00", window_end="17:00")
    launched = await call(api, tenant, "POST", f"/campaigns/{c['id']}/launch")
    assert launched["status"] == "scheduled"
    # Quiet until 10:00 would cut the scheduled campaign's 09:00 start: refused, unchanged.
    problem = assert_problem(await _quiet(api, tenant, "18:00", "10:00"), 409,
                             "outside_sending_hours", field="quiet_start")
    assert "Sale" in problem["detail"], problem
    sa = await call(api, tenant, "GET", "")
    assert (sa["quiet_start"], sa["quiet_end"]) == ("21:00:00", "08:00:00")
    # Hours that still contain it are taken; a name change is not a change of hours.
    assert (await _quiet(api, tenant, "17:00", "09:00")).status_code == 200
    assert (await call(api, tenant, "PATCH", "", json={"name": "Renamed"}))["name"] == "Renamed"
    # Once it is canceled nothing launched reaches outside: the admin's hours are taken.
    await call(api, tenant, "POST", f"/campaigns/{c['id']}/cancel")
    assert (await _quiet(api, tenant, "18:00", "10:00")).status_code == 200
    # A draft does not hold them back; it is refused at launch until edited to fit.
    r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/campaigns/{draft['id']}/launch",
                       headers=auth(tenant.sa1_key))
    assert_problem(r, 409, "outside_sending_hours", field="window_start")
    assert (await call(api, tenant, "GET", f"/campaigns/{draft['id']}"))["status"] == "draft"
    await call(api, tenant, "PATCH", f"/campaigns/{draft['id']}",
               json={"window_start": "10:00", "window_end": "17:00"})
    r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/campaigns/{draft['id']}/launch",
                       headers=auth(tenant.sa1_key))
    assert r.status_code == 200, r.text


async def test_quiet_hours_cannot_be_turned_off(
        hub: Hub, api: httpx.AsyncClient, tenant: Tenant) -> None:
    await setup(hub, api, tenant)
    # Equal to the other given, or to the one stored (21:00-08:00, also a new sub-account's
    # default): a 422 naming the fields given, and this sub-account keeps its hours.
    both = ["quiet_start", "quiet_end"]
    for body, fields in (({"quiet_start": "05:00", "quiet_end": "05:00"}, both),
                         ({"quiet_end": "21:00"}, ["quiet_end"]),
                         ({"quiet_start": "08:00"}, ["quiet_start"])):
        for r, named in ((await api.patch(f"/v1/sub-accounts/{tenant.sa1}",
                                          headers=auth(tenant.agency_key), json=body), fields),
                         (await api.post("/v1/sub-accounts", headers=auth(tenant.agency_key),
                                         json={"name": "Staff only", **body}), both)):
            problem = assert_problem(r, 422, "validation_failed")
            assert [(e["field"], e["code"]) for e in problem["errors"]] == \
                [(f, "empty_quiet_hours") for f in named], problem
            assert "cannot be turned off" in problem["detail"], problem
    sa = await call(api, tenant, "GET", "")
    assert (sa["quiet_start"], sa["quiet_end"]) == ("21:00:00", "08:00:00")
    names = [s["name"] for s in (await api.get(
        "/v1/sub-accounts", headers=auth(tenant.agency_key))).json()["data"]]
    assert "Staff only" not in names, names
    # Nor are they stored by any other way in.
    with pytest.raises(asyncpg.CheckViolationError):
        await hub.pool.execute("UPDATE sub_accounts SET quiet_end = quiet_start WHERE id = $1",
                               tenant.sa1)
    # The shortest quiet hours are a minute; campaigns may then send every other minute.
    assert (await _quiet(api, tenant, "23:59", "00:00")).status_code == 200
    c = await created(api, tenant)
    assert (c["window_start"], c["window_end"]) == ("00:00:00", "23:59:00")


async def test_a_sub_account_stored_without_quiet_hours_takes_the_default_ones(
        hub: Hub, api: httpx.AsyncClient, tenant: Tenant) -> None:
    """Equal quiet hours stored before they were refused (the Settings page once took them)
    made every campaign created without its own window fail, naming "21:00–21:00"."""
    await setup(hub, api, tenant)
    migration = dict(db.migration_files())["0022_quiet_hours_differ"]
    async with hub.pool.acquire() as conn:
        await conn.execute(
            "ALTER TABLE sub_accounts DROP CONSTRAINT sub_accounts_quiet_hours_differ")
        try:
            await conn.execute("UPDATE sub_accounts SET quiet_start = '21:00', "
                               "quiet_end = '21:00' WHERE id = $1", tenant.sa1)
        finally:
            await conn.execute(migration)  # puts the constraint back
    sa = await call(api, tenant, "GET", "")
    assert (sa["quiet_start"], sa["quiet_end"]) == ("21:00:00", "08:00:00")
    c = await created(api, tenant)
    assert (c["window_start"], c["window_end"]) == ("08:00:00", "21:00:00")
    _outside(await create(api, tenant, window_start="01:00", window_end="04:00"),
             "window_start")


WALL_CLOCK = "wall_clock_time"
BAD_TIMES: list[Any] = [21, 8, 0, "21:00+05:00", "08:00:00Z", "08:00+05:00", "24:00", "8am",
                        "08:00:00.250", True]


@pytest.mark.parametrize("value", BAD_TIMES)
async def test_a_time_of_day_is_a_wall_clock_string_or_a_422_naming_its_field(
        hub: Hub, api: httpx.AsyncClient, tenant: Tenant, value: Any) -> None:
    await setup(hub, api, tenant)
    for field in ("quiet_start", "quiet_end"):
        r = await api.patch(f"/v1/sub-accounts/{tenant.sa1}", headers=auth(tenant.agency_key),
                            json={field: value})
        problem = assert_problem(r, 422, field=field)
        (error,) = problem["errors"]
        assert error["code"] == WALL_CLOCK and "08:00" in error["message"], problem
    sa = await call(api, tenant, "GET", "")
    assert (sa["quiet_start"], sa["quiet_end"]) == ("21:00:00", "08:00:00")
    r = await api.post("/v1/sub-accounts", headers=auth(tenant.agency_key),
                       json={"name": "Night shift", "quiet_start": value})
    assert [e["code"] for e in assert_problem(r, 422, field="quiet_start")["errors"]] == \
        [WALL_CLOCK]
    draft = await created(api, tenant)
    for field in ("window_start", "window_end"):
        r = await create(api, tenant, **{field: value})
        assert [e["code"] for e in assert_problem(r, 422, field=field)["errors"]] == [WALL_CLOCK]
        r = await api.patch(f"/v1/sub-accounts/{tenant.sa1}/campaigns/{draft['id']}",
                            headers=auth(tenant.sa1_key), json={field: value})
        assert [e["code"] for e in assert_problem(r, 422, field=field)["errors"]] == [WALL_CLOCK]
