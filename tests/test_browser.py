"""The pages in a real browser: Debian's Chromium driven by Playwright against the real
gateway, Ray shards and the sandbox carrier (with its signed callbacks and inbound texts).

A marketer builds and launches a campaign and watches the progress bar reach 100%; an
agent receives an inbound SMS live, replies, and sees the tick reach delivered; another
sub-account's agent sees none of it. Screenshots of both pages at desktop and phone widths
land in `$HUB_SCREENSHOT_DIR` (default: the test data folder's screenshots/).

Skipped, saying why, when no Chromium is installed (`apt-get install -y chromium`)."""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from channels.sandbox import run_carrier_in_thread
from channels.sandbox_config import CarrierConfig, Latency
from config.settings import Settings
from hub import users
from hub.context import Hub
from hub.timezones import contact_timezone
from hub.users import Role
from tests.conftest import Tenant, auth
from tests.test_campaigns import sending_hours_now
from tests.test_sending import carrier_requests, wait_for

CHROMIUM = os.environ.get("HUB_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
try:
    from playwright.async_api import Browser, Page, async_playwright, expect
except ImportError:  # pragma: no cover - the test extras install it
    async_playwright = None  # type: ignore[assignment]

pytestmark = [
    pytest.mark.skipif(async_playwright is None,
                       reason="Playwright is not installed: pip install -e '.[test]'"),
    pytest.mark.skipif(not os.path.exists(CHROMIUM),
                       reason=f"no Chromium at {CHROMIUM}: install Debian's chromium "
                              "(apt-get install -y chromium) or set HUB_CHROMIUM"),
]

PASSWORD = "browser-test-password"
NUMBERS = {"sa1": "+12125550100", "sa2": "+12125550200"}
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}
TIMEOUT_MS = 90_000


@dataclass
class World:
    base: str
    tenant: Tenant
    carrier: Any
    shots: Path


@pytest.fixture(scope="module")
def live_carrier(settings: Settings) -> Iterator[Any]:
    """A carrier that posts signed status callbacks and inbound texts to the gateway."""
    handle = run_carrier_in_thread(CarrierConfig(
        seed=11, latency=Latency(kind="fixed", seconds=0.2),
        inbound_url=f"{settings.base_url}/v1/providers/twilio/sms/inbound"))
    yield handle
    handle.stop()


@pytest.fixture
async def world(hub: Hub, api: httpx.AsyncClient, tenant: Tenant, live_carrier: Any,
                settings: Settings) -> World:
    state = live_carrier.carrier.state
    for name, sa, key in (("sa1", tenant.sa1, tenant.sa1_key),
                          ("sa2", tenant.sa2, tenant.sa2_key)):
        sid = state.owner_of(NUMBERS[name])
        p = await api.post(f"/v1/sub-accounts/{sa}/providers", headers=auth(key), json={
            "provider": "twilio", "name": "Sandbox Twilio", "account_id": sid,
            "secret": state.token_for(sid), "base_url": live_carrier.url})
        assert p.status_code == 201, p.text
        s = await api.post(f"/v1/sub-accounts/{sa}/senders", headers=auth(key), json={
            "provider_account_id": p.json()["id"], "channel": "sms", "kind": "toll_free",
            "address": NUMBERS[name], "mps": 50})
        assert s.status_code == 201, s.text
    agency = uuid.UUID(tenant.agency_id)
    for email, sa, role in (("admin@b.example", tenant.sa1, Role.ADMIN),
                            ("marketer@b.example", tenant.sa1, Role.MARKETER),
                            ("agent@b.example", tenant.sa1, Role.AGENT),
                            ("agent2@b.example", tenant.sa2, Role.AGENT)):
        await users.do_create_user(hub, agency, email, PASSWORD, email.split("@")[0].title(),
                                   {uuid.UUID(sa): role})
    async with httpx.AsyncClient(base_url=live_carrier.url) as c:
        await c.delete("/sandbox/requests")
    shots = Path(os.environ.get("HUB_SCREENSHOT_DIR") or settings.data_dir / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before any I/O
    return World(str(api.base_url).rstrip("/"), tenant, live_carrier, shots)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


async def sign_in(browser: Browser, base: str, email: str) -> Page:
    context = await browser.new_context(viewport=DESKTOP)
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    await page.goto(f"{base}/app/login")
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(re.compile(r".*/app/sa/.*"))
    return page


async def screenshots(page: Page, shots: Path, name: str) -> list[Path]:
    """The page at desktop and phone widths; both files must be real images."""
    out = []
    for label, size in (("desktop", DESKTOP), ("phone", PHONE)):
        await page.set_viewport_size(size)
        # Usable at this width: nothing sticks out sideways.
        overflow = await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"{name} is {overflow}px too wide at {label} width"
        path = shots / f"{name}-{label}.png"
        await page.screenshot(path=str(path), full_page=True)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        out.append(path)
    await page.set_viewport_size(DESKTOP)
    return out


async def add_contacts(api: httpx.AsyncClient, tenant: Tenant, n: int) -> None:
    for i in range(n):
        r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/contacts",
                           headers=auth(tenant.sa1_key),
                           json={"phone": f"+1415555{i:04d}", "first_name": f"Vip{i}",
                                 "tags": ["vip"] if i < n - 2 else ["lead"],
                                 "custom_fields": {"tier": ("gold", "silver", "")[min(i // 6, 2)]}})
        assert r.status_code == 201, r.text


async def test_marketer_builds_launches_and_watches_a_campaign_finish(
    world: World, api: httpx.AsyncClient, browser: Browser
) -> None:
    t = world.tenant
    # The contacts' clock (their numbers' zone): the form's window is open now on it.
    clock = contact_timezone(None, "+14155550000", "America/New_York")
    await sending_hours_now(api, t, clock.key)
    await add_contacts(api, t, 22)  # 20 tagged vip, 2 leads left out; 12 of the vips tiered
    page = await sign_in(browser, world.base, "marketer@b.example")
    assert page.url.endswith(f"/app/sa/{t.sa1}/campaigns")
    await page.get_by_role("link", name="New campaign").click()

    await page.get_by_label("Campaign name").fill("Spring VIPs")
    await page.get_by_label("Has any of these tags").fill("vip")
    await expect(page.get_by_test_id("audience-count")).to_have_text("20")
    await page.get_by_text("More filters").click()
    await page.get_by_label("Custom field").fill("tier")
    await expect(page.get_by_test_id("audience-count")).to_have_text("12")  # any value
    await page.get_by_label("is (empty: has any value").fill("gold, silver")
    await expect(page.get_by_test_id("audience-count")).to_have_text("12")
    await page.get_by_label("is (empty: has any value").fill("gold")
    await expect(page.get_by_test_id("audience-count")).to_have_text("6")
    await page.get_by_label("Phone number's country").fill("ca")
    await expect(page.get_by_test_id("audience-count")).to_have_text("0")
    await page.get_by_label("Phone number's country").fill("us")
    await expect(page.get_by_test_id("audience-count")).to_have_text("6")
    body = page.get_by_label("Message", exact=True)
    await body.fill("Hi {{first_name}}! 20% off this week. Reply STOP to opt out.")
    await expect(page.get_by_test_id("segments")).to_contain_text("1 segment")
    await expect(page.get_by_test_id("segments")).to_contain_text("GSM-7")
    await expect(page.locator("#preview")).to_contain_text("Hi Vip")  # a real contact's name
    await body.fill("Hi {{first_name}}! 20% off this week 🎉 " + "x" * 60)
    await expect(page.get_by_test_id("segments")).to_contain_text("2 segments")
    await expect(page.get_by_test_id("segments")).to_contain_text("UCS-2")
    await body.fill("Hi {{first_name}}! 20% off this week. Reply STOP to opt out.")
    # Hours around now on the contacts' clock: they are sent at once, whatever the hour.
    h = datetime.now(clock).hour
    await page.get_by_label("Send from (contact's local time)").fill(f"{(h - 1) % 24:02d}:00")
    await page.get_by_label("until").fill(f"{(h + 3) % 24:02d}:00")
    await page.get_by_role("button", name="Create and preview").click()

    await page.wait_for_url(re.compile(r".*/campaigns/[0-9a-f-]{36}$"))
    await expect(page.get_by_role("heading", name="Dry run: when it would go out")).to_be_visible()
    await expect(page.locator("svg.chart rect.bar").first).to_be_attached()
    await expect(page.get_by_test_id("status")).to_have_text("draft")
    await expect(page.get_by_role("button", name="Pause")).to_have_count(0)
    await screenshots(page, world.shots, "campaign-console-draft")

    # The live view listens to the campaign's topic on the feed; collect what it hears.
    frames: list[str] = []
    page.on("websocket", lambda ws: ws.on("framereceived", lambda f: frames.append(str(f))))
    await page.get_by_role("button", name="Launch").click()
    await expect(page.get_by_test_id("progress-pct")).to_have_text("100.0%", timeout=TIMEOUT_MS)
    await expect(page.get_by_test_id("progress")).to_have_attribute("aria-valuenow", "100.0")
    await expect(page.get_by_test_id("status")).to_have_text("completed", timeout=TIMEOUT_MS)
    campaign_id = page.url.rsplit("/", 1)[1]
    heard = [json.loads(f) for f in frames if '"type":"event"' in f.replace(" ", "")]
    assert {e["event"] for e in heard if e["topic"] == f"campaign:{campaign_id}"} & {
        "campaign.progress", "campaign.updated"}, frames[:5]
    # Only valid actions: a finished campaign has none.
    for name in ("Launch", "Pause", "Resume", "Cancel"):
        await expect(page.get_by_role("button", name=name)).to_have_count(0)
    await screenshots(page, world.shots, "campaign-console-done")

    async with httpx.AsyncClient(base_url=world.carrier.url) as c:
        sent = [r for r in await carrier_requests(c) if r.get("from") == NUMBERS["sa1"]]
    # The filters typed in the audience step reached the API: the vips of tier gold, in the US.
    assert sorted(r["to"] for r in sent) == [f"+1415555{i:04d}" for i in range(6)]
    assert all(r["body"].startswith("Hi Vip") for r in sent)

    await page.goto(f"{world.base}/app/sa/{t.sa1}/campaigns")
    await expect(page.locator(".pill-completed")).to_have_text("completed")
    await page.context.close()


async def test_agent_gets_a_text_live_replies_and_sees_it_delivered(
    world: World, browser: Browser
) -> None:
    t = world.tenant
    agent = await sign_in(browser, world.base, "agent@b.example")
    assert agent.url.endswith(f"/app/sa/{t.sa1}/inbox")
    other = await sign_in(browser, world.base, "agent2@b.example")
    assert other.url.endswith(f"/app/sa/{t.sa2}/inbox")
    await expect(agent.get_by_test_id("no-conversations")).to_be_visible()

    async with httpx.AsyncClient(base_url=world.carrier.url) as c:
        r = await c.post("/sandbox/inbound", json={
            "from": "+14155550123", "to": NUMBERS["sa1"], "body": "Is my order ready?"})
        assert r.json()["status"] == 200, r.text
    # Live: no reload, the thread appears with its unread badge.
    item = agent.get_by_test_id("conversation")
    await expect(item).to_contain_text("Is my order ready?")
    await expect(agent.get_by_test_id("unread-all")).to_contain_text("1")
    await screenshots(agent, world.shots, "agent-inbox-list")

    await item.click()
    await expect(agent.locator(".bubble.in")).to_contain_text("Is my order ready?")
    await expect(agent.get_by_test_id("unread-all")).to_have_count(0)  # opened = read
    reply = agent.get_by_label("Reply")
    await reply.fill("Yes! It is ready for pickup at 5pm.")
    await expect(agent.locator("#reply-check")).to_contain_text("1 segment")
    await agent.get_by_role("button", name="Send").click()
    out = agent.locator("#messages li.bubble.out").filter(has_text="ready for pickup")
    await expect(out).to_be_visible()
    await expect(out).to_have_attribute("data-status", "delivered", timeout=TIMEOUT_MS)
    await expect(out.get_by_test_id("tick")).to_contain_text("delivered")
    await screenshots(agent, world.shots, "agent-inbox-thread")

    # Take the thread: it moves to Mine.
    await agent.get_by_label("Assigned to").select_option(label="Agent (me)")
    await expect(agent.get_by_test_id("tab-mine")).to_be_visible()
    await wait_for(lambda: _assigned(world, t), timeout=30)
    await agent.get_by_test_id("tab-mine").click()
    await expect(agent.get_by_test_id("conversation")).to_contain_text("ready for pickup")

    # The feed drops: the banner says so, and a text sent meanwhile still arrives.
    await agent.goto(f"{world.base}/app/sa/{t.sa1}/inbox")
    await expect(agent.get_by_test_id("conversation")).to_have_count(1)
    await agent.evaluate("window.switchboardFeed.ws.close()")
    await expect(agent.locator("#reconnecting")).to_be_visible()
    async with httpx.AsyncClient(base_url=world.carrier.url) as c:
        await c.post("/sandbox/inbound", json={
            "from": "+14155550124", "to": NUMBERS["sa1"], "body": "STOP"})
    await expect(agent.locator("#reconnecting")).to_be_hidden()
    await expect(agent.get_by_test_id("conversation")).to_have_count(2)

    # The opted-out contact's thread refuses replies and says why.
    await agent.get_by_test_id("conversation").filter(has_text="+14155550124").click()
    await expect(agent.get_by_test_id("opted-out")).to_contain_text("opted out")
    await expect(agent.get_by_role("button", name="Send")).to_be_disabled()

    # The other sub-account's agent saw none of it, live or after a reload.
    await expect(other.get_by_test_id("no-conversations")).to_be_visible()
    await other.reload()
    await expect(other.get_by_test_id("no-conversations")).to_be_visible()
    assert "Is my order ready?" not in await other.content()
    await screenshots(other, world.shots, "agent-inbox-other-sub-account")
    for page in (agent, other):
        await page.context.close()


async def test_admin_settings_keep_secrets_hidden_and_remove_suppressions_with_a_reason(
    world: World, browser: Browser
) -> None:
    t = world.tenant
    page = await sign_in(browser, world.base, "admin@b.example")
    await page.get_by_role("link", name="Settings").click()
    await expect(page.get_by_role("heading", name="Provider accounts")).to_be_visible()
    await expect(page.get_by_text("set (hidden)")).to_be_visible()
    token = world.carrier.carrier.state.token_for(
        world.carrier.carrier.state.owner_of(NUMBERS["sa1"]))
    assert token not in await page.content()

    await page.get_by_label("Quiet hours start").fill("22:30")
    await page.get_by_label("Answer to HELP").fill("Call us on +1 212 555 0100.")
    async with page.expect_navigation():  # the page reloads once the API said yes
        await page.get_by_role("button", name="Save").click()
    await expect(page.get_by_label("Quiet hours start")).to_have_value("22:30")
    async with httpx.AsyncClient(base_url=world.base) as c:
        sa = (await c.get(f"/v1/sub-accounts/{t.sa1}", headers=auth(t.sa1_key))).json()
    assert sa["quiet_start"].startswith("22:30") and sa["help_text"].startswith("Call us")

    await page.get_by_label("Number or email", exact=True).fill("+14155550999")
    await page.get_by_label("Reason", exact=True).fill("asked us on the phone")
    async with page.expect_navigation():  # the page reloads once the API said yes
        await page.get_by_role("button", name="Suppress").click()
    await expect(page.get_by_text("+14155550999")).to_be_visible()
    await page.get_by_label("Search by number or email").fill("+1999")
    await page.get_by_role("button", name="Search").click()
    await expect(page.get_by_text("No active suppressions match")).to_be_visible()
    await page.get_by_label("Search by number or email").fill("+1415555099")
    await page.get_by_role("button", name="Search").click()
    await expect(page.get_by_text("+14155550999")).to_be_visible()
    await screenshots(page, world.shots, "admin-settings")
    await page.get_by_label("Reason for removal").fill("re-subscribed in writing")
    async with page.expect_navigation():
        await page.get_by_role("button", name="Remove", exact=True).click()
    await expect(page.get_by_text("No active suppressions match")).to_be_visible()
    async with httpx.AsyncClient(base_url=world.base) as c:
        gone = (await c.get(f"/v1/sub-accounts/{t.sa1}/suppressions", headers=auth(t.sa1_key),
                            params={"include_removed": True})).json()["data"]
    assert [(s["address"], s["removed_reason"]) for s in gone] == \
        [("+14155550999", "re-subscribed in writing")]
    assert gone[0]["removed_by"].startswith("user:")
    await page.context.close()


async def _assigned(world: World, t: Tenant) -> bool:
    async with httpx.AsyncClient(base_url=world.base) as c:
        r = await c.get(f"/v1/sub-accounts/{t.sa1}/conversations", headers=auth(t.sa1_key))
    return any(c["assignee"] for c in r.json()["data"])


async def test_the_campaign_form_says_what_is_wrong_once_on_the_field(
    world: World, api: httpx.AsyncClient, browser: Browser
) -> None:
    t = world.tenant
    await add_contacts(api, t, 3)
    page = await sign_in(browser, world.base, "marketer@b.example")
    await page.goto(f"{world.base}/app/sa/{t.sa1}/campaigns/new")
    await page.get_by_label("Campaign name").fill("Typos")
    box = page.locator("[data-form-error]")
    create = page.get_by_role("button", name="Create and preview")

    # A bad country: the live count and the submit both say it in the form's words, once,
    # and the field is marked.
    await page.get_by_text("More filters").click()
    regions = page.get_by_label("Phone number's country")
    await regions.fill("us, XX")
    await expect(page.locator("#audience-count")).to_contain_text(
        "Country: “XX” is not a two-letter region code")
    await create.click()
    await expect(box).to_have_text("Country: “XX” is not a two-letter region code such as "
                                   "US or GB")
    await expect(regions).to_have_attribute("aria-invalid", "true")
    await regions.fill("us")

    # An unknown merge field: said once, on the message.
    body = page.get_by_label("Message", exact=True)
    await body.fill("Hi {{frist_name}}!")
    await expect(page.locator("#preview .error")).to_contain_text("unknown merge field")
    await create.click()
    await expect(box).to_contain_text("Message: unknown merge field {{ frist_name }}")
    assert (await box.text_content() or "").count("unknown merge field") == 1
    await expect(body).to_have_attribute("aria-invalid", "true")
    await expect(regions).not_to_have_attribute("aria-invalid", "true")
    await body.fill("Hi {{first_name}}!")

    # A custom value without a field name is not dropped in silence.
    value = page.get_by_label("is (empty: has any value")
    await value.fill("gold")
    await expect(page.locator("#audience-count")).to_contain_text("Custom field: name the")
    await create.click()
    await expect(box).to_contain_text("Custom field: name the custom field")
    await expect(page.get_by_label("Custom field")).to_have_attribute("aria-invalid", "true")
    await value.fill("")

    # A start in the past: the compose check warns (the browser sends the instant it means).
    await page.get_by_label("Start (empty: as soon as launched)").fill("2020-01-02T03:04")
    await expect(page.locator("#preview")).to_contain_text("Starts now: the start date is in "
                                                           "the past.")

    await page.get_by_label("Start (empty: as soon as launched)").fill("")

    # MMS: its media field instead of a subject, checked live, sent from the SMS numbers.
    await page.get_by_label("Channel").select_option("mms")
    await expect(page.get_by_label("Subject")).to_be_hidden()
    media = page.get_by_label("Picture or media URLs")
    await media.fill("ftp://example.com/sale.jpg")
    await expect(page.locator("#preview")).to_contain_text("Media URLs: must be an http(s) URL")
    await media.fill("https://example.com/sale.jpg")
    await expect(page.locator("#preview")).to_contain_text("Hi Vip")
    await create.click()
    await page.wait_for_url(re.compile(r".*/campaigns/[0-9a-f-]{36}$"))
    await expect(page.get_by_text("Media: https://example.com/sale.jpg")).to_be_visible()
    await page.go_back()

    # An htmx request that fails shows the error fragment where its answer was going.
    await page.evaluate("htmx.ajax('GET', location.pathname.replace('/campaigns/new', "
                        "'/inbox/list?tab=bogus'), {target: '#audience-count'})")
    await expect(page.locator("#audience-count")).to_contain_text(
        "“bogus” is not a valid inbox tab")
    await page.context.close()
