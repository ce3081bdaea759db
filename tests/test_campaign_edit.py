"""Editing a campaign through the real routes: a draft's content, audience and limits change
(checked as a create is, and what launch then sends), a launched campaign's name only, and
an edit racing a launch lands wholly before it or not at all."""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from hub import users
from hub.context import Hub
from hub.users import Role
from tests import test_browser as pages
from tests.conftest import Tenant, assert_problem, auth
from tests.test_browser import browser
from tests.test_campaigns import tenant
from tests.test_sending import carrier, carrier_log, carrier_requests, setup_sms, wait_for
from tests.test_users import sign_in

__all__ = ["browser", "carrier", "carrier_log", "tenant"]  # fixtures shared with those modules

ZONE = "Etc/GMT"  # the contacts' clock is UTC, so the windows below are UTC hours


def window(opens_in: int, hours: int = 4) -> dict[str, str]:
    """A daily window opening `opens_in` hours from now (0: open an hour ago)."""
    h = datetime.now(UTC).hour + (opens_in or -1)
    return {"window_start": f"{h % 24:02d}:00", "window_end": f"{(h + hours) % 24:02d}:00"}


async def contacts(hub: Hub, sa: str, tag: str, numbers: list[str]) -> list[str]:
    rows = await hub.pool.fetch(
        """INSERT INTO contacts (sub_account_id, phone, first_name, timezone, tags)
           SELECT $1, p, 'Pat', $3, ARRAY[$4] FROM unnest($2::text[]) AS p RETURNING id""",
        sa, numbers, ZONE, tag)
    return [str(r["id"]) for r in rows]


async def create(api: httpx.AsyncClient, tenant: Tenant, **extra: Any) -> dict[str, Any]:
    body = {"name": "Spring sale", "channel": "sms", "audience": {"tags_any": ["old"]},
            "body": "Old text, Reply STOP to opt out.", **window(0), **extra}
    r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/campaigns", headers=auth(tenant.sa1_key),
                       json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


async def patch(api: httpx.AsyncClient, tenant: Tenant, cid: str, body: dict[str, Any],
                key: str | None = None, sa: str | None = None) -> httpx.Response:
    return await api.patch(f"/v1/sub-accounts/{sa or tenant.sa1}/campaigns/{cid}",
                           headers=auth(key or tenant.sa1_key), json=body)


async def get(api: httpx.AsyncClient, tenant: Tenant, cid: str) -> dict[str, Any]:
    r = await api.get(f"/v1/sub-accounts/{tenant.sa1}/campaigns/{cid}",
                      headers=auth(tenant.sa1_key))
    assert r.status_code == 200, r.text
    return dict(r.json())


async def launch(api: httpx.AsyncClient, tenant: Tenant, cid: str) -> httpx.Response:
    return await api.post(f"/v1/sub-accounts/{tenant.sa1}/campaigns/{cid}/launch",
                          headers=auth(tenant.sa1_key))


async def sms_sender_without_carrier(api: httpx.AsyncClient, tenant: Tenant) -> None:
    """An SMS sender whose provider is nowhere: for campaigns that send nothing."""
    await setup_sms(api, tenant, "http://127.0.0.1:9")


async def test_an_edited_draft_sends_the_new_text_to_the_new_audience(
        hub: Hub, api: httpx.AsyncClient, tenant: Tenant, carrier: Any,
        carrier_log: httpx.AsyncClient) -> None:
    await setup_sms(api, tenant, carrier.url)
    await contacts(hub, tenant.sa1, "old", ["+14155550100", "+14155550101"])
    new = ["+14155550200", "+14155550201", "+14155550202"]
    await contacts(hub, tenant.sa1, "new", new)
    c = await create(api, tenant, rate_cap=40)
    r = await patch(api, tenant, c["id"], {"body": "New text for {{first_name}}. Reply STOP "
                                           "to opt out.", "audience": {"tags_any": ["new"]}})
    assert r.status_code == 200, r.text
    edited = r.json()
    assert edited["body"].startswith("New text") and edited["audience"]["tags_any"] == ["new"]
    unchanged = ("name", "channel", "window_start", "window_end", "rate_cap", "sender_ids",
                 "failure_threshold", "status", "created_at")
    assert {k: edited[k] for k in unchanged} == {k: c[k] for k in unchanged}
    assert (await launch(api, tenant, c["id"])).status_code == 200

    async def all_sent() -> list[dict[str, Any]] | None:
        reqs = await carrier_requests(carrier_log)
        return reqs if len(reqs) >= len(new) else None

    reqs = await wait_for(all_sent)
    assert sorted(q["to"] for q in reqs) == new
    assert {q["body"] for q in reqs} == {"New text for Pat. Reply STOP to opt out."}


async def test_a_partial_edit_keeps_the_other_fields_and_null_clears_only_optional_ones(
        hub: Hub, api: httpx.AsyncClient, tenant: Tenant) -> None:
    await sms_sender_without_carrier(api, tenant)
    start_at = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    c = await create(api, tenant, rate_cap=7, start_at=start_at,
                     window_start="10:00", window_end="18:00")
    r = await patch(api, tenant, c["id"], {"name": "Spring sale, final"})
    assert r.status_code == 200, r.text
    renamed = r.json()
    assert renamed["name"] == "Spring sale, final"
    same = {k: v for k, v in c.items() if k not in ("name", "updated_at")}
    assert {k: renamed[k] for k in same} == same
    # The feed hears the edit with the whole campaign, as it hears a launch.
    r = await api.get(f"/v1/sub-accounts/{tenant.sa1}/events", headers=auth(tenant.sa1_key))
    heard = [e for e in r.json()["data"] if e["topic"] == f"campaign:{c['id']}"]
    assert [e["event"] for e in heard] == ["campaign.created", "campaign.updated"]
    assert heard[-1]["data"]["name"] == "Spring sale, final"
    assert heard[-1]["data"]["body"] == c["body"] and "allowed_actions" in heard[-1]["data"]
    # Null clears what a create may leave out: no cap, no start, the sub-account's window.
    r = await api.patch(f"/v1/sub-accounts/{tenant.sa1}", headers=auth(tenant.agency_key),
                        json={"quiet_start": "21:00", "quiet_end": "08:00"})
    assert r.status_code == 200, r.text
    r = await patch(api, tenant, c["id"], {"rate_cap": None, "start_at": None,
                                           "window_start": None})
    assert r.status_code == 200, r.text
    cleared = r.json()
    assert (cleared["rate_cap"], cleared["start_at"]) == (None, None)
    assert (cleared["window_start"], cleared["window_end"]) == ("08:00:00", "18:00:00")
    assert cleared["body"] == c["body"] and cleared["name"] == "Spring sale, final"
    # ...but not what a campaign cannot be without.
    for field in ("name", "channel", "audience", "sender_ids", "failure_threshold"):
        assert_problem(await patch(api, tenant, c["id"], {field: None}), 422, field=field)
    assert await get(api, tenant, c["id"]) == cleared


async def test_an_invalid_edit_is_refused_naming_the_field_and_changes_nothing(
        hub: Hub, api: httpx.AsyncClient, tenant: Tenant) -> None:
    await sms_sender_without_carrier(api, tenant)
    other = await contacts(hub, tenant.sa2, "old", ["+14155550300"])
    c = await create(api, tenant)
    refusals: list[tuple[dict[str, Any], str]] = [
        ({"body": "Hi {{nickname}}"}, "body"),  # an unknown merge field
        ({"body": ""}, "body"),  # a text needs words
        ({"channel": "mms"}, "media_urls"),  # the new channel's content is missing
        ({"channel": "email", "subject": "Sale"}, "sender_ids"),  # no email sender
        ({"audience": {"contact_ids": other}}, "audience.contact_ids.0"),  # sa2's contact
        ({"window_start": "09:00", "window_end": "09:00"}, "window_start"),
        ({"template_id": str(uuid.uuid4())}, "template_id"),
        ({"start_at": "9999-01-01T00:00:00Z"}, "start_at"),
    ]
    for change, field in refusals:
        assert_problem(await patch(api, tenant, c["id"], change), 422, field=field)
    assert await get(api, tenant, c["id"]) == c
    # With content valid for it, the channel changes (MMS sends from the same SMS numbers).
    r = await patch(api, tenant, c["id"], {"channel": "mms",
                                           "media_urls": ["https://example.com/sale.jpg"]})
    assert r.status_code == 200, r.text
    assert (r.json()["channel"], r.json()["sender_ids"]) == ("mms", c["sender_ids"])


async def test_a_draft_turned_into_a_call_says_its_edited_body(
        hub: Hub, api: httpx.AsyncClient, tenant: Tenant) -> None:
    sms = await setup_sms(api, tenant, "http://127.0.0.1:9")
    r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/senders", headers=auth(tenant.sa1_key),
                       json={"provider_account_id": sms[0]["provider_account_id"],
                             "channel": "voice", "kind": "long_code",
                             "address": "+12125550199", "mps": 1})
    assert r.status_code == 201, r.text
    caller = r.json()["id"]
    c = await create(api, tenant)
    assert c["sender_ids"] == [sms[0]["id"]]
    # The SMS pool cannot call: the call goes out from the voice senders.
    r = await patch(api, tenant, c["id"], {"channel": "voice", "body": "Your order is ready"})
    assert r.status_code == 200, r.text
    assert (r.json()["sender_ids"], r.json()["voice"]["say"]) == ([caller],
                                                                  "Your order is ready")
    # The words came from the body, so they follow it; words of its own stay.
    r = await patch(api, tenant, c["id"], {"body": "Your order has shipped"})
    assert r.status_code == 200 and r.json()["voice"]["say"] == "Your order has shipped", r.text
    r = await patch(api, tenant, c["id"], {"voice": {"say": "Hello {{first_name}}"}})
    assert r.status_code == 200, r.text
    r = await patch(api, tenant, c["id"], {"body": "Unspoken"})
    assert r.status_code == 200 and r.json()["voice"]["say"] == "Hello {{first_name}}", r.text


async def test_a_launched_campaign_changes_its_name_only(
        hub: Hub, api: httpx.AsyncClient, tenant: Tenant) -> None:
    await sms_sender_without_carrier(api, tenant)
    await contacts(hub, tenant.sa1, "old", ["+14155550100"])
    # The window opens in two hours: the campaign runs, and sends nothing during the test.
    c = await create(api, tenant, **window(2))
    r = await launch(api, tenant, c["id"])
    assert r.status_code == 200 and r.json()["status"] == "running", r.text
    body = assert_problem(await patch(api, tenant, c["id"], {"name": "Renamed",
                                                             "body": "Other text"}),
                          409, "campaign_not_draft", field="body")
    assert "duplicate" in body["detail"] and [e["field"] for e in body["errors"]] == ["body"]
    r = await patch(api, tenant, c["id"], {"name": "Renamed"})
    assert r.status_code == 200, r.text
    now = await get(api, tenant, c["id"])
    assert (now["name"], now["body"], now["status"]) == ("Renamed", c["body"], "running")
    assert now["recipients_total"] == 1


async def test_another_sub_accounts_campaign_is_not_found_and_an_agent_may_not_edit(
        hub: Hub, api: httpx.AsyncClient, tenant: Tenant, gateway_url: str) -> None:
    await sms_sender_without_carrier(api, tenant)
    c = await create(api, tenant)
    change = {"body": "Changed. Reply STOP to opt out."}
    # sa2's key on sa1's campaign, and the agency key with sa1's campaign under sa2.
    assert_problem(await patch(api, tenant, c["id"], change, key=tenant.sa2_key), 404)
    assert_problem(await patch(api, tenant, c["id"], change, key=tenant.agency_key,
                               sa=tenant.sa2), 404, "campaign_not_found")
    agency, sa1 = uuid.UUID(tenant.agency_id), uuid.UUID(tenant.sa1)
    for email, role in (("agent@x.example", Role.AGENT), ("marketer@x.example", Role.MARKETER)):
        await users.do_create_user(hub, agency, email, "correct horse battery", "P",
                                   {sa1: role})
    agent = await sign_in(gateway_url, "agent@x.example", "correct horse battery")
    marketer = await sign_in(gateway_url, "marketer@x.example", "correct horse battery")
    try:
        url = f"/v1/sub-accounts/{tenant.sa1}/campaigns/{c['id']}"
        assert_problem(await agent.http.patch(url, json=change, headers=agent.headers()), 403)
        assert await get(api, tenant, c["id"]) == c
        r = await marketer.http.patch(url, json=change, headers=marketer.headers())
        assert r.status_code == 200 and r.json()["body"] == change["body"], r.text
    finally:
        await agent.http.aclose()
        await marketer.http.aclose()


async def test_an_edit_racing_a_launch_lands_wholly_before_it_or_not_at_all(
        hub: Hub, api: httpx.AsyncClient, tenant: Tenant) -> None:
    await sms_sender_without_carrier(api, tenant)
    await contacts(hub, tenant.sa1, "old", ["+14155550100", "+14155550101"])
    await contacts(hub, tenant.sa1, "new", ["+14155550200", "+14155550201", "+14155550202"])
    for _ in range(6):
        c = await create(api, tenant, **window(2))
        edit, launched = await asyncio.gather(
            patch(api, tenant, c["id"], {"body": "New text. Reply STOP to opt out.",
                                         "audience": {"tags_any": ["new"]}}),
            launch(api, tenant, c["id"]))
        assert launched.status_code == 200, launched.text
        now = await get(api, tenant, c["id"])
        assert now["status"] == "running"
        if edit.status_code == 200:  # the edit came first: the launch sent it
            assert (now["body"], now["recipients_total"]) == (edit.json()["body"], 3)
        else:  # the launch came first: nothing of the edit
            assert_problem(edit, 409, "campaign_not_draft")
            assert (now["body"], now["audience"], now["recipients_total"]) == \
                (c["body"], c["audience"], 2)
        recipients = await hub.pool.fetchval(
            "SELECT count(*) FROM campaign_recipients WHERE campaign_id = $1", uuid.UUID(c["id"]))
        assert recipients == now["recipients_total"]


@pytest.mark.skipif(pages.async_playwright is None, reason="Playwright is not installed")
@pytest.mark.skipif(not os.path.exists(pages.CHROMIUM), reason="no Chromium")
async def test_the_console_edits_a_draft_with_the_campaign_form(
        hub: Hub, api: httpx.AsyncClient, tenant: Tenant, gateway_url: str,
        browser: pages.Browser) -> None:
    await sms_sender_without_carrier(api, tenant)
    await contacts(hub, tenant.sa1, "old", ["+14155550100", "+14155550101"])
    picked = await contacts(hub, tenant.sa1, "new", ["+14155550200"])
    c = await create(api, tenant, rate_cap=7, window_start="10:00", window_end="18:00")
    by_ids = await create(api, tenant, name="Chosen few", audience={"contact_ids": picked})
    await users.do_create_user(hub, uuid.UUID(tenant.agency_id), "m@edit.example",
                               pages.PASSWORD, "M", {uuid.UUID(tenant.sa1): Role.MARKETER})
    page = await pages.sign_in(browser, gateway_url, "m@edit.example")
    base = f"{gateway_url}/app/sa/{tenant.sa1}/campaigns"
    await page.goto(f"{base}/{c['id']}")
    await page.get_by_role("link", name="Edit").click()
    await page.wait_for_url(f"{base}/{c['id']}/edit")
    body = page.get_by_label("Message", exact=True)
    await pages.expect(body).to_have_value(c["body"])
    await pages.expect(page.get_by_label("Has any of these tags")).to_have_value("old")
    await body.fill("New text for {{first_name}}. Reply STOP to opt out.")
    await page.get_by_label("Has any of these tags").fill("new")
    await pages.expect(page.locator("#audience-count")).to_contain_text("1 reachable")
    await page.get_by_role("button", name="Save and preview").click()
    await page.wait_for_url(f"{base}/{c['id']}")
    edited = await get(api, tenant, c["id"])
    assert edited["body"] == "New text for {{first_name}}. Reply STOP to opt out."
    assert edited["audience"]["tags_any"] == ["new"]
    kept = ("name", "channel", "window_start", "window_end", "rate_cap", "sender_ids",
            "start_at")
    assert {k: edited[k] for k in kept} == {k: c[k] for k in kept}

    # An audience of chosen contacts has no inputs on the form: saving keeps it.
    await page.goto(f"{base}/{by_ids['id']}/edit")
    await pages.expect(page.get_by_test_id("audience-kept")).to_be_visible()
    await page.get_by_label("Campaign name").fill("Chosen few, again")
    await page.get_by_role("button", name="Save and preview").click()
    await page.wait_for_url(f"{base}/{by_ids['id']}")
    renamed = await get(api, tenant, by_ids["id"])
    assert (renamed["name"], renamed["audience"]) == ("Chosen few, again", by_ids["audience"])

    # A launched campaign has no Edit, and its edit page says why.
    assert (await launch(api, tenant, c["id"])).status_code == 200
    await page.goto(f"{base}/{c['id']}")
    await pages.expect(page.get_by_role("link", name="Edit")).to_have_count(0)
    response = await page.goto(f"{base}/{c['id']}/edit")
    assert response is not None and response.status == 409
    await pages.expect(page.get_by_text("duplicate it instead")).to_be_visible()
    await page.context.close()
