"""The web pages' errors and previews a user review found wrong, through the real gateway,
PostgreSQL and shards: errors under /app in words (a page, or an htmx fragment) while the API
keeps its problem documents; the campaign form's audience errors in the form's words; the
reply box's preview of the thread's own contact and channel; a past start date; an empty dry
run; a paused campaign's rate; a voice campaign's script."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from hub import users
from hub.context import Hub
from hub.users import Role
from tests.conftest import Tenant, assert_problem, auth
from tests.test_users import Browser, sign_in

HX = {"HX-Request": "true"}


@pytest.fixture
async def marketer(hub: Hub, tenant: Tenant, gateway_url: str) -> AsyncIterator[Browser]:
    await users.do_create_user(hub, uuid.UUID(tenant.agency_id), "m@pages.example",
                               "correct horse battery", "Marketer",
                               {uuid.UUID(tenant.sa1): Role.MARKETER})
    b = await sign_in(gateway_url, "m@pages.example")
    yield b
    await b.http.aclose()


def assert_page(r: httpx.Response, status: int, *words: str) -> str:
    """An HTML error page in the site's layout, in words, with a way back."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("text/html"), r.headers
    assert "<!doctype html>" in r.text and "urn:switchboard:problem" not in r.text
    assert '<a href="/app">Back to your sub-accounts</a>' in r.text
    for w in words:
        assert w in r.text, r.text
    return r.text


async def test_page_errors_are_pages_in_words_and_the_api_keeps_problems(
    marketer: Browser, tenant: Tenant, api: httpx.AsyncClient
) -> None:
    http, sa = marketer.http, tenant.sa1
    assert_page(await http.get(f"/app/sa/{sa}/inbox", params={"c": "not-a-uuid"}), 422,
                "“not-a-uuid” is not a valid conversation id")
    assert_page(await http.get("/app/sa/not-a-uuid/inbox"), 422,
                "“not-a-uuid” is not a valid sub-account id")
    assert_page(await http.get(f"/app/sa/{sa}/inbox", params={"tab": "bogus"}), 422,
                "“bogus” is not a valid inbox tab")
    assert_page(await http.get("/app/nonexistent"), 404, "Page not found")
    assert_page(await http.get(f"/app/sa/{tenant.sa2}/inbox"), 404, "no such sub-account")
    assert_page(await http.get(f"/app/sa/{sa}/campaigns/{uuid.uuid4()}"), 404)

    # An htmx partial gets a fragment to show where its answer was going, with the status.
    r = await http.get(f"/app/sa/{sa}/inbox/list", params={"tab": "bogus"}, headers=HX)
    assert r.status_code == 422 and r.headers["content-type"].startswith("text/html")
    assert r.text.startswith('<p class="error" role="alert"') and "<html" not in r.text
    assert "“bogus” is not a valid inbox tab" in r.text
    r = await http.get(f"/app/sa/{sa}/inbox/thread/{uuid.uuid4()}", headers=HX)
    assert r.status_code == 404 and "There is no such conversation here." in r.text
    assert "<html" not in r.text
    # ...which htmx swaps in: the layout tells it to swap error answers too.
    home = await http.get(f"/app/sa/{sa}/campaigns")
    assert 'name="htmx-config"' in home.text and '"[45]..", "swap": true' in home.text

    # The API keeps its problem documents, for keys and for the pages' own script alike.
    assert_problem(await api.get("/v1/sub-accounts/not-a-uuid", headers=auth(tenant.sa1_key)),
                   422, "validation_failed", "sa")
    assert_problem(await api.get("/v1/nonexistent"), 404, "not_found")
    r = await http.get(f"/v1/sub-accounts/{sa}/campaigns/{uuid.uuid4()}",
                       headers={"Accept": "application/json"})
    assert_problem(r, 404)
    # A script asking /app for JSON only gets the problem too.
    r = await http.get(f"/app/sa/{sa}/inbox", params={"tab": "bogus"},
                       headers={"Accept": "application/json"})
    assert_problem(r, 422, "validation_failed", "tab")


async def test_the_audience_step_names_the_form_field_in_words(
    marketer: Browser, tenant: Tenant
) -> None:
    url = f"/app/sa/{tenant.sa1}/campaigns/audience-count"
    r = await marketer.http.get(url, params={"regions": "us, XX"})
    assert r.status_code == 200
    assert "Country: “XX” is not a two-letter region code" in r.text, r.text
    assert "audience.filters" not in r.text
    r = await marketer.http.get(url, params={"custom_value": "gold"})
    assert "Custom field: name the custom field" in r.text, r.text
    r = await marketer.http.get(url, params={"custom_field": "tier", "custom_value": "gold"})
    assert 'data-testid="audience-count">0<' in r.text, r.text


async def add_thread(hub: Hub, sa: str, channel: str, first: str, **address: str) -> str:
    contact = await hub.pool.fetchval(
        "INSERT INTO contacts (sub_account_id, phone, email, first_name) VALUES ($1, $2, $3, $4)"
        " RETURNING id", uuid.UUID(sa), address.get("phone"), address.get("email"), first)
    conv = await hub.pool.fetchval(
        "INSERT INTO conversations (sub_account_id, contact_id, channel) VALUES ($1, $2, $3) "
        "RETURNING id", uuid.UUID(sa), contact, channel)
    return str(conv)


async def test_the_reply_preview_is_for_the_threads_contact_on_its_channel(
    hub: Hub, marketer: Browser, tenant: Tenant
) -> None:
    sms = await add_thread(hub, tenant.sa1, "sms", "Mia", phone="+14155550101")
    email = await add_thread(hub, tenant.sa1, "email", "Ana", email="ana@x.example")
    await add_thread(hub, tenant.sa1, "sms", "Kenji", phone="+14155550102")  # the newest
    url = f"/app/sa/{tenant.sa1}/compose/check"
    body = "Hi {{first_name}}, your order is ready."
    r = await marketer.http.get(url, params={"conversation": sms, "body": body}, headers=HX)
    assert "Preview for Mia" in r.text and "Hi Mia, your order" in r.text, r.text
    assert 'data-testid="segments"' in r.text
    r = await marketer.http.get(url, params={"conversation": email, "body": body,
                                             "subject": "Your order"}, headers=HX)
    assert "Preview for Ana" in r.text and "Hi Ana, your order" in r.text, r.text
    assert 'data-testid="segments"' not in r.text  # an email has no segments
    assert "Your order" in r.text
    r = await marketer.http.get(url, params={"conversation": str(uuid.uuid4()), "body": body},
                                headers=HX)
    assert r.status_code == 404 and "no such conversation" in r.text


async def test_the_compose_check_warns_of_a_start_in_the_past(
    marketer: Browser, tenant: Tenant
) -> None:
    url = f"/app/sa/{tenant.sa1}/compose/check"
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    r = await marketer.http.get(url, params={"body": "Hello", "start_at": past})
    assert "Starts now: the start date is in the past." in r.text, r.text
    r = await marketer.http.get(url, params={"body": "Hello", "start_at": future})
    assert "Hello" in r.text and "in the past" not in r.text


async def senders(api: httpx.AsyncClient, tenant: Tenant) -> None:
    h = auth(tenant.sa1_key)
    p = await api.post(f"/v1/sub-accounts/{tenant.sa1}/providers", headers=h, json={
        "provider": "twilio", "name": "p", "account_id": "AC" + "f" * 32, "secret": "token",
        "base_url": "http://127.0.0.1:9"})
    assert p.status_code == 201, p.text
    for channel, kind, address in (("sms", "toll_free", "+18335550100"),
                                   ("voice", "caller_id", "+18335550101")):
        s = await api.post(f"/v1/sub-accounts/{tenant.sa1}/senders", headers=h, json={
            "provider_account_id": p.json()["id"], "channel": channel, "kind": kind,
            "address": address, "mps": 4})
        assert s.status_code == 201, s.text


async def campaign(api: httpx.AsyncClient, tenant: Tenant, **extra: Any) -> str:
    body = {"name": "Sale", "channel": "sms", "audience": {"tags_any": ["nobody"]},
            "body": "Hi {{first_name}}", **extra}
    r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/campaigns",
                       headers=auth(tenant.sa1_key), json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def test_campaign_pages_empty_dry_run_paused_rate_and_voice_script(
    hub: Hub, api: httpx.AsyncClient, marketer: Browser, tenant: Tenant
) -> None:
    await senders(api, tenant)
    page = f"/app/sa/{tenant.sa1}/campaigns"
    empty = await campaign(api, tenant)
    r = await marketer.http.get(f"{page}/{empty}")
    assert r.status_code == 200, r.text
    assert "No recipient matches this audience" in r.text
    assert "first send" not in r.text and "<svg" not in r.text

    await hub.pool.execute("INSERT INTO contacts (sub_account_id, phone, first_name, tags) "
                           "VALUES ($1, '+14155550103', 'Pat', ARRAY['vip'])",
                           uuid.UUID(tenant.sa1))
    later = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    paused = await campaign(api, tenant, audience={"tags_any": ["vip"]}, start_at=later)
    for action in ("launch", "pause"):
        r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/campaigns/{paused}/{action}",
                           headers=auth(tenant.sa1_key))
        assert r.status_code == 200, r.text
    for url in (f"{page}/{paused}", f"{page}/{paused}/live"):
        r = await marketer.http.get(url)
        assert 'data-testid="status">paused<' in r.text, r.text
        assert "Rate now" not in r.text and "Not sending now (paused)" in r.text

    voice = await campaign(api, tenant, channel="voice", body="unused text",
                           voice={"say": "Hello {{first_name}}, your table is ready.",
                                  "voicemail_say": "Please call us back."})
    r = await marketer.http.get(f"{page}/{voice}")
    assert "Hello {{first_name}}, your table is ready." in r.text, r.text
    assert "Please call us back." in r.text and "unused text" not in r.text
