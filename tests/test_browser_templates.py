"""The campaign form's template picker in Debian's Chromium (set up as in test_browser.py): a
marketer sees the chosen channel's templates only, picks one to fill the message, and the
campaign remembers it; on the draft's edit, "None" forgets it and keeps the text."""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx

from hub import users
from hub.context import Hub
from hub.users import Role
from tests import test_browser as pages
from tests.conftest import Tenant, auth
from tests.test_browser import browser
from tests.test_campaign_edit import get, sms_sender_without_carrier, tenant

pytestmark = pages.pytestmark
__all__ = ["browser", "tenant"]  # fixtures shared with those modules


async def saved(api: httpx.AsyncClient, tenant: Tenant, **fields: Any) -> dict[str, Any]:
    r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/templates",
                       headers=auth(tenant.sa1_key), json=fields)
    assert r.status_code == 201, r.text
    return dict(r.json())


async def test_the_campaign_form_fills_the_message_from_a_picked_template(
        hub: Hub, api: httpx.AsyncClient, tenant: Tenant, gateway_url: str,
        browser: pages.Browser) -> None:
    await sms_sender_without_carrier(api, tenant)
    spring = await saved(api, tenant, name="Spring sale", channel="sms",
                         body="Hi {{first_name}}, spring sale! Reply STOP to opt out.")
    news = await saved(api, tenant, name="Newsletter", channel="email",
                       subject="News for {{first_name}}", body="Plain news",
                       html="<p>News</p>")
    await users.do_create_user(hub, uuid.UUID(tenant.agency_id), "m@tpl.example",
                               pages.PASSWORD, "M", {uuid.UUID(tenant.sa1): Role.MARKETER})
    page = await pages.sign_in(browser, gateway_url, "m@tpl.example")
    base = f"{gateway_url}/app/sa/{tenant.sa1}/campaigns"
    await page.goto(f"{base}/new")
    picker = page.get_by_label("Start from a saved template")
    body = page.get_by_label("Message", exact=True)

    # An SMS campaign is offered the SMS template only.
    await pages.expect(picker.locator("option", has_text="Newsletter")).to_be_disabled()
    await pages.expect(picker.locator("option", has_text="Spring sale")).to_be_enabled()
    # An email one the email template, which fills the subject and the HTML part too.
    await page.get_by_label("Channel").select_option("email")
    await pages.expect(picker.locator("option", has_text="Spring sale")).to_be_disabled()
    await picker.select_option(label="Newsletter")
    await pages.expect(page.get_by_label("Subject")).to_have_value(news["subject"])
    await pages.expect(body).to_have_value("Plain news")
    await pages.expect(page.get_by_label(re.compile("^HTML version"))).to_have_value(
        "<p>News</p>")
    # Back to SMS: the email template is no longer picked.
    await page.get_by_label("Channel").select_option("sms")
    await pages.expect(picker).to_have_value("")
    await picker.select_option(label="Spring sale")
    await pages.expect(body).to_have_value(spring["body"])
    await pages.expect(page.locator("#preview")).to_contain_text("spring sale")
    await page.get_by_label("Campaign name").fill("Spring")
    await page.get_by_role("button", name="Create and preview").click()
    await page.wait_for_url(re.compile(re.escape(base) + r"/[0-9a-f-]{36}$"))
    cid = page.url.rsplit("/", 1)[1]
    made = await get(api, tenant, cid)
    assert (made["template_id"], made["body"], made["channel"]) == \
        (spring["id"], spring["body"], "sms")

    # The draft's edit shows its template; "None" forgets it and keeps the text.
    await page.goto(f"{base}/{cid}/edit")
    await pages.expect(picker).to_have_value(spring["id"])
    await picker.select_option(label="None: write the message here")
    await pages.expect(body).to_have_value(spring["body"])
    await page.get_by_role("button", name="Save and preview").click()
    await page.wait_for_url(f"{base}/{cid}")
    edited = await get(api, tenant, cid)
    assert (edited["template_id"], edited["body"]) == (None, spring["body"])
    await page.context.close()
