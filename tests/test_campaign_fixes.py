"""Campaign semantics a user review found wrong, through the real routes and PostgreSQL:
the sub-account's quiet hours, empty windows, the ETA of a scheduled campaign, unknown merge
fields, what a dry run counts as unsendable, and contradictory audiences."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from hub.context import Hub
from tests.conftest import Tenant, assert_problem, auth
from tests.test_campaigns import sending_hours_now

ZONE = "Etc/GMT"  # the contacts' clock is UTC, so windows below are UTC hours


async def setup(hub: Hub, api: httpx.AsyncClient, tenant: Tenant, phones: int = 3) -> list[str]:
    """An SMS sender (5/s; nothing is sent in these tests) and `phones` contacts tagged
    "all" in UTC; returns their numbers."""
    h = auth(tenant.sa1_key)
    p = await api.post(f"/v1/sub-accounts/{tenant.sa1}/providers", headers=h, json={
        "provider": "twilio", "name": "p", "account_id": "AC" + "f" * 32, "secret": "token",
        "base_url": "http://127.0.0.1:9"})
    assert p.status_code == 201, p.text
    s = await api.post(f"/v1/sub-accounts/{tenant.sa1}/senders", headers=h, json={
        "provider_account_id": p.json()["id"], "channel": "sms", "kind": "toll_free",
        "address": "+18335550100", "mps": 5})
    assert s.status_code == 201, s.text
    numbers = [f"+1415555{i:04d}" for i in range(phones)]
    await hub.pool.execute(
        """INSERT INTO contacts (sub_account_id, phone, first_name, timezone, tags)
           SELECT $1, p, 'Pat', $3, ARRAY['all'] FROM unnest($2::text[]) AS p""",
        tenant.sa1, numbers, ZONE)
    return numbers


async def create(api: httpx.AsyncClient, tenant: Tenant, **extra: Any) -> httpx.Response:
    body = {"name": "Sale", "channel": "sms", "audience": {"tags_any": ["all"]},
            "body": "Hi {{first_name}}, 20% off. Reply STOP to opt out.", **extra}
    return await api.post(f"/v1/sub-accounts/{tenant.sa1}/campaigns",
                          headers=auth(tenant.sa1_key), json=body)


async def created(api: httpx.AsyncClient, tenant: Tenant, **extra: Any) -> dict[str, Any]:
    r = await create(api, tenant, **extra)
    assert r.status_code == 201, r.text
    return dict(r.json())


async def call(api: httpx.AsyncClient, tenant: Tenant, method: str, path: str,
               **kwargs: Any) -> dict[str, Any]:
    r = await api.request(method, f"/v1/sub-accounts/{tenant.sa1}{path}",
                          headers=auth(tenant.sa1_key), **kwargs)
    assert r.status_code == 200, r.text
    return dict(r.json())


def hour(offset: int, now: datetime | None = None) -> str:
    """The UTC hour `offset` hours from `now`, as HH:00."""
    return f"{((now or datetime.now(UTC)).hour + offset) % 24:02d}:00"


async def test_a_campaign_without_a_window_keeps_the_sub_accounts_quiet_hours(
        hub: Hub, api: httpx.AsyncClient, tenant: Tenant) -> None:
    await setup(hub, api, tenant)
    now = datetime.now(UTC)
    # Quiet from an hour ago until two hours from now (UTC, the contacts' clock).
    quiet = {"quiet_start": hour(-1, now), "quiet_end": hour(2, now)}
    await call(api, tenant, "PATCH", "", json=quiet)
    c = await created(api, tenant)
    assert (c["window_start"], c["window_end"]) == (f"{hour(2, now)}:00", f"{hour(-1, now)}:00")
    dry = await call(api, tenant, "POST", f"/campaigns/{c['id']}/dry-run")
    opens = datetime.fromisoformat(dry["first_send_at"])
    assert opens.minute == 0 and f"{opens.hour:02d}:00" == hour(2, now), dry
    assert now + timedelta(hours=1) < opens <= now + timedelta(hours=2)
    # The window stored is what launch and the scheduler use: recipients wait for it.
    launched = await call(api, tenant, "POST", f"/campaigns/{c['id']}/launch")
    assert (launched["window_start"], launched["window_end"]) == (c["window_start"],
                                                                  c["window_end"])
    stats = await call(api, tenant, "GET", f"/campaigns/{c['id']}/stats")
    assert datetime.fromisoformat(stats["eta"]) >= opens, stats
    # A window the marketer gives (inside the sending hours) is the campaign's own; one end
    # alone takes the other's.
    own = await created(api, tenant, window_start=hour(4, now), window_end=hour(8, now))
    assert (own["window_start"], own["window_end"]) == (f"{hour(4, now)}:00",
                                                        f"{hour(8, now)}:00")
    half = await created(api, tenant, window_end=hour(8, now))
    assert (half["window_start"], half["window_end"]) == (f"{hour(2, now)}:00",
                                                          f"{hour(8, now)}:00")


async def test_an_empty_window_is_refused_naming_the_field(
        hub: Hub, api: httpx.AsyncClient, tenant: Tenant) -> None:
    await setup(hub, api, tenant)
    r = await create(api, tenant, window_start="09:00", window_end="09:00")
    assert "09:00" in assert_problem(r, 422, field="window_start")["detail"]
    assert [e["code"] for e in r.json()["errors"]] == ["empty_window"]
    # Equal quiet hours on the sub-account would give no window to default to either: they
    # are refused where they are set, and nothing changes.
    for quiet in ({"quiet_start": "07:00", "quiet_end": "07:00"}, {"quiet_start": "08:00"}):
        r = await api.patch(f"/v1/sub-accounts/{tenant.sa1}", headers=auth(tenant.agency_key),
                            json=quiet)
        assert {e["code"] for e in assert_problem(r, 422, field="quiet_start")["errors"]} == \
            {"empty_quiet_hours"}
    sa = await call(api, tenant, "GET", "")
    assert (sa["quiet_start"], sa["quiet_end"]) == ("21:00:00", "08:00:00")
    # Every hour but the last minute is more than the sending hours allow.
    r = await create(api, tenant, window_start="00:00", window_end="23:59")
    assert_problem(r, 422, "validation_failed", field="window_start")


async def test_the_eta_of_a_scheduled_campaign_is_not_before_its_start(
        hub: Hub, api: httpx.AsyncClient, tenant: Tenant) -> None:
    await setup(hub, api, tenant)
    await sending_hours_now(api, tenant)  # the window follows the clock
    start_at = datetime.now(UTC) + timedelta(hours=2)
    # The window opens within the hour: counted from now, the three would be done by then.
    c = await created(api, tenant, start_at=start_at.isoformat(), window_start=hour(1),
                      window_end=hour(6))
    launched = await call(api, tenant, "POST", f"/campaigns/{c['id']}/launch")
    assert launched["status"] == "scheduled"
    stats = await call(api, tenant, "GET", f"/campaigns/{c['id']}/stats")
    eta = datetime.fromisoformat(stats["eta"])
    dry = await call(api, tenant, "POST", f"/campaigns/{c['id']}/dry-run")
    assert start_at <= eta == datetime.fromisoformat(dry["finish_at"]), (stats, dry)


async def test_unknown_merge_fields_are_refused_and_custom_ones_allowed(
        hub: Hub, api: httpx.AsyncClient, tenant: Tenant) -> None:
    await setup(hub, api, tenant)
    r = await create(api, tenant, body="Hi {{frist_name}}, see {{ custom.plan }}")
    problem = assert_problem(r, 422, field="body")
    assert [e["code"] for e in problem["errors"]] == ["unknown_merge_field"]
    message = problem["errors"][0]["message"]
    assert "frist_name" in message and "custom.plan" not in message
    assert all(k in message for k in ("first_name", "last_name", "phone", "email", "custom."))
    r = await create(api, tenant, channel="email", body="Hello", subject="For {{ nmae }}")
    assert_problem(r, 422, field="subject")
    # The texts rendered per recipient besides body and subject are checked the same way.
    r = await create(api, tenant, channel="email", body="Hello", subject="Hi",
                     html="<p>{{ frist_name }}</p>")
    assert_problem(r, 422, "validation_failed", "html")
    r = await create(api, tenant, channel="voice", body="Hello",
                     voice={"say": "Hello {{ first_name", "voicemail_say": "{{ nmae }}"})
    problem = assert_problem(r, 422, field="voice.say")
    assert "voice.voicemail_say" in [e["field"] for e in problem["errors"]]
    await created(api, tenant, body="Hi {{ first_name | default: 'there' }} {{ last_name }}, "
                  "{{ phone }} {{ email }}: {{ custom.plan }} {{ custom.anything.at_all }}")


async def test_the_dry_run_counts_the_contacts_launch_skips(
        hub: Hub, api: httpx.AsyncClient, tenant: Tenant) -> None:
    numbers = await setup(hub, api, tenant, phones=4)
    await hub.pool.execute(
        """INSERT INTO suppressions (sub_account_id, channel, address, reason, source, created_by)
           VALUES ($1, 'sms', $2, 'STOP', 'opt_out', 'test')""", tenant.sa1, numbers[0])
    await hub.pool.execute(
        """INSERT INTO contacts (sub_account_id, email, email_key, timezone, tags)
           VALUES ($1, 'x@example.com', 'x@example.com', $2, ARRAY['all'])""",
        tenant.sa1, ZONE)
    await sending_hours_now(api, tenant)  # the window follows the clock
    c = await created(api, tenant, window_start=hour(0), window_end=hour(3))
    dry = await call(api, tenant, "POST", f"/campaigns/{c['id']}/dry-run")
    assert (dry["recipients"], dry["unsendable"]) == (3, 2), dry
    assert any("1 suppressed" in w and "1 without a phone number" in w
               for w in dry["warnings"]), dry["warnings"]
    launched = await call(api, tenant, "POST", f"/campaigns/{c['id']}/launch")
    assert (launched["recipients_total"], launched["skipped_total"]) == (5, 2)


async def test_all_contacts_with_narrowing_criteria_is_refused(
        hub: Hub, api: httpx.AsyncClient, tenant: Tenant) -> None:
    await setup(hub, api, tenant)
    r = await create(api, tenant, audience={"all_contacts": True, "tags_any": ["vip"]})
    assert [e["code"] for e in assert_problem(r, 422, field="audience.tags_any")["errors"]] \
        == ["conflicting_criteria"]
    r = await create(api, tenant, audience={"all_contacts": True, "tags_all": ["a"],
                                            "filters": [{"field": "custom.x", "op": "exists"}]})
    assert {e["field"] for e in assert_problem(r, 422)["errors"]} == {
        "audience.tags_all", "audience.filters"}
    # Everyone but a tag is what all_contacts with exclude_tags says.
    await created(api, tenant, audience={"all_contacts": True, "exclude_tags": ["vip"]})


async def test_the_dry_run_warns_of_merge_fields_blank_for_some_recipients(
        hub: Hub, api: httpx.AsyncClient, tenant: Tenant) -> None:
    numbers = await setup(hub, api, tenant, phones=4)
    await hub.pool.execute(
        """UPDATE contacts SET custom_fields = '{"plan": "gold", "tier": {"name": "A"}}'
           WHERE sub_account_id = $1 AND phone = ANY($2)""", tenant.sa1, numbers[:1])
    await hub.pool.execute(
        """UPDATE contacts SET custom_fields = '{"plan": " "}', first_name = ''
           WHERE sub_account_id = $1 AND phone = $2""", tenant.sa1, numbers[1])
    await sending_hours_now(api, tenant)  # the window follows the clock
    c = await created(api, tenant, window_start=hour(0), window_end=hour(3),
                      body="Hi {{ first_name }}, {{ custom.plan }} ({{ custom.tier.name }}) "
                           "{{ custom.city | default: 'near you' }}")
    dry = await call(api, tenant, "POST", f"/campaigns/{c['id']}/dry-run")
    gaps = [w for w in dry["warnings"] if "empty gap" in w]
    assert gaps == ["{{ first_name }} is blank for 1 of the 4 recipients and has no default: "
                    "they get an empty gap",
                    "{{ custom.plan }} is blank for 3 of the 4 recipients and has no default: "
                    "they get an empty gap",
                    "{{ custom.tier.name }} is blank for 3 of the 4 recipients and has no "
                    "default: they get an empty gap"], dry["warnings"]


async def test_a_draft_can_be_deleted_and_any_campaign_duplicated(
        hub: Hub, api: httpx.AsyncClient, tenant: Tenant) -> None:
    await setup(hub, api, tenant)
    h = auth(tenant.sa1_key)
    campaigns = f"/v1/sub-accounts/{tenant.sa1}/campaigns"
    draft = await created(api, tenant, window_start="09:00", window_end="17:00", rate_cap=2)
    assert (await api.delete(f"{campaigns}/{draft['id']}", headers=h)).status_code == 204
    assert_problem(await api.get(f"{campaigns}/{draft['id']}", headers=h), 404,
                   "campaign_not_found")

    sent = await created(api, tenant, window_start="09:00", window_end="17:00", rate_cap=2)
    refused = await api.post(f"{campaigns}/{sent['id']}/cancel", headers=h)
    assert "deleted" in assert_problem(refused, 409, "invalid_transition")["detail"]
    r = await api.post(f"{campaigns}/{sent['id']}/launch", headers=h)
    assert r.status_code == 200, r.text
    assert (await api.post(f"{campaigns}/{sent['id']}/cancel", headers=h)).status_code == 200
    assert_problem(await api.delete(f"{campaigns}/{sent['id']}", headers=h), 409,
                   "campaign_not_draft")
    relaunch = await api.post(f"{campaigns}/{sent['id']}/launch", headers=h)
    assert "duplicate it" in assert_problem(relaunch, 409, "invalid_transition")["detail"]

    r = await api.post(f"{campaigns}/{sent['id']}/duplicate", headers=h)
    assert r.status_code == 201, r.text
    copy = r.json()
    assert copy["id"] != sent["id"] and copy["status"] == "draft"
    assert copy["name"] == "Sale (copy)" and copy["recipients_total"] == 0
    same = ("channel", "audience", "body", "sender_ids", "window_start", "window_end",
            "rate_cap", "failure_threshold")
    assert {k: copy[k] for k in same} == {k: sent[k] for k in same}
    assert (await api.post(f"{campaigns}/{copy['id']}/launch", headers=h)).status_code == 200
    other = auth(tenant.sa2_key)
    assert (await api.post(f"/v1/sub-accounts/{tenant.sa2}/campaigns/{sent['id']}/duplicate",
                           headers=other)).status_code == 404


async def test_a_campaign_that_is_not_running_has_no_current_rate(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant
) -> None:
    await setup(hub, api, tenant)
    c = (await create(api, tenant)).json()
    h, sa = auth(tenant.sa1_key), f"/v1/sub-accounts/{tenant.sa1}"
    r = await api.post(f"{sa}/campaigns/{c['id']}/launch", headers=h)
    assert r.status_code == 200, r.text
    # One message the campaign sent a moment ago, as a Sender shard records it.
    await hub.pool.execute(
        """INSERT INTO messages (sub_account_id, campaign_id, direction, channel, priority,
                                 from_address, to_address, body, status, sent_at)
           VALUES ($1, $2, 'outbound', 'sms', 'bulk', '+18335550100', '+14155559999', 'Hi',
                   'sent', now())""", tenant.sa1, c["id"])
    running = (await api.get(f"{sa}/campaigns/{c['id']}/stats", headers=h)).json()
    assert running["status"] == "running" and running["current_rate_per_s"] == 0.1
    r = await api.post(f"{sa}/campaigns/{c['id']}/pause", headers=h)
    assert r.status_code == 200, r.text
    paused = (await api.get(f"{sa}/campaigns/{c['id']}/stats", headers=h)).json()
    assert paused["status"] == "paused" and paused["current_rate_per_s"] == 0
