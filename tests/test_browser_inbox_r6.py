"""The inbox in Debian's Chromium (set up as in test_browser.py), with an agent who has a
thread open: an MMS picture arrives and is shown (an image and a link, only for web
addresses); then the contact texts STOP and the open thread says so and shuts its reply box
at once, without a reload."""

from __future__ import annotations

from typing import Any

import httpx

from tests import test_browser
from tests.test_browser import NUMBERS, World, screenshots, sign_in

pytestmark = test_browser.pytestmark
# test_browser's fixtures, registered here under the names its tests use.
live_carrier = test_browser.live_carrier
world = test_browser.world
browser = test_browser.browser
expect = test_browser.expect
PICTURE = "https://media.example/pics/cat.jpg?size=large&x=1"
CONTACT = "+14155550177"


async def inbound(world: World, body: str, media: list[str] | None = None) -> None:
    async with httpx.AsyncClient(base_url=world.carrier.url) as c:
        r = await c.post("/sandbox/inbound", json={
            "from": CONTACT, "to": NUMBERS["sa1"], "body": body, "media_urls": media or []})
        assert r.json()["status"] == 200, r.text


async def test_an_open_thread_shows_pictures_and_shuts_the_reply_box_on_stop(
    world: World, browser: Any
) -> None:
    t = world.tenant
    agent = await sign_in(browser, world.base, "agent@b.example")
    await inbound(world, "Hi, a question about my order")
    await agent.get_by_test_id("conversation").filter(has_text="question").click()
    await expect(agent.locator(".bubble.in")).to_have_count(1)
    send = agent.get_by_role("button", name="Send")
    reply = agent.get_by_label("Reply")
    await expect(send).to_be_enabled()
    await expect(reply).to_be_enabled()
    await expect(agent.get_by_test_id("opted-out")).to_be_hidden()

    # A picture with no text, and an address that is not a web one: the picture is shown
    # (image and link), the other is only counted, never put in an href or src.
    await inbound(world, "", [PICTURE, "javascript:alert(1)"])
    picture = agent.locator(".bubble.in").nth(1)
    await expect(picture.locator("img")).to_have_attribute("src", PICTURE)
    await expect(picture.get_by_test_id("media-link")).to_have_attribute("href", PICTURE)
    await expect(picture.get_by_test_id("media-refused")).to_contain_text("1 attachment")
    assert "javascript:" not in (await picture.inner_html())
    assert await picture.locator("p.text").count() == 0  # no empty text bubble

    # STOP while the thread is open: the notice shows and the reply box shuts, live.
    await inbound(world, "STOP")
    await expect(agent.get_by_test_id("opted-out")).to_be_visible()
    await expect(send).to_be_disabled()
    await expect(reply).to_be_disabled()
    await expect(reply).to_have_attribute("aria-describedby", "reply-blocked")
    await screenshots(agent, world.shots, "agent-inbox-mms-opted-out")
    # START reopens it, as the server does.
    await inbound(world, "START")
    await expect(agent.get_by_test_id("opted-out")).to_be_hidden()
    await expect(send).to_be_enabled()
    await expect(reply).to_be_enabled()
    assert t.sa1 in agent.url
    await agent.context.close()
