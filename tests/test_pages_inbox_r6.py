"""The inbox page through the real gateway and PostgreSQL: every unread thread is reachable
(an Unread filter, and "Load more" past the first 100 threads, with the API's cursors), a
long thread reaches its oldest messages with "Show older", an MMS shows its pictures (web
addresses only, escaped), and nothing of another sub-account."""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import AsyncIterator

import pytest

from hub import users
from hub.context import Hub
from hub.users import Role
from tests.conftest import Tenant
from tests.test_pages_errors import HX, assert_page
from tests.test_users import PASSWORD, Browser, sign_in

THREADS = 105  # more than the list's page (100)
UNREAD = 5  # the oldest threads: beyond the first page of "All"
MESSAGES = 205  # more than a thread shows at once (200)


@pytest.fixture
async def agent(hub: Hub, tenant: Tenant, gateway_url: str) -> AsyncIterator[Browser]:
    await users.do_create_user(hub, uuid.UUID(tenant.agency_id), "a@inbox.example", PASSWORD,
                               "Agent", {uuid.UUID(tenant.sa1): Role.AGENT})
    b = await sign_in(gateway_url, "a@inbox.example")
    yield b
    await b.http.aclose()


async def seed_threads(hub: Hub, sa: str) -> list[str]:
    """THREADS threads, one contact each, newest activity first; the UNREAD oldest unread."""
    sa_id = uuid.UUID(sa)
    ids = []
    for i in range(THREADS):
        contact = await hub.pool.fetchval(
            "INSERT INTO contacts (sub_account_id, phone, first_name) VALUES ($1, $2, $3) "
            "RETURNING id", sa_id, f"+1415555{i:04d}", f"Person{i:03d}")
        ids.append(str(await hub.pool.fetchval(
            "INSERT INTO conversations (sub_account_id, contact_id, channel, unread_count, "
            "last_message_at, last_message_preview) VALUES ($1, $2, 'sms', $3, "
            "now() - make_interval(mins => $4), $5) RETURNING id",
            sa_id, contact, 1 if i >= THREADS - UNREAD else 0, i, f"Hello {i}")))
    return ids


def threads(page: str) -> list[str]:
    return re.findall(r'&(?:amp;)?c=([0-9a-f-]{36})" data-testid="conversation"', page)


def link(page: str, testid: str) -> str:
    found = re.search(rf'hx-get="([^"]+)"[^>]*data-testid="{testid}"', page)
    assert found, page
    return html.unescape(found.group(1))


async def test_unread_threads_beyond_the_first_page_are_reachable(
    hub: Hub, tenant: Tenant, agent: Browser
) -> None:
    ids = await seed_threads(hub, tenant.sa1)
    url = f"/app/sa/{tenant.sa1}/inbox"
    page = await agent.http.get(url)
    assert page.status_code == 200, page.text
    assert f'data-testid="unread-all">{UNREAD}<' in page.text
    first = threads(page.text)
    assert first == ids[:100]
    assert not set(first) & set(ids[-UNREAD:])  # the badge's threads are not among them

    # The Unread filter lists exactly them, and keeps itself in the tabs' links.
    unread = await agent.http.get(url, params={"unread": "true"})
    assert threads(unread.text) == ids[-UNREAD:]
    assert f'href="{url}?tab=mine&amp;unread=true"' in unread.text
    assert 'data-testid="load-more"' not in unread.text
    assert 'aria-current="page" data-testid="filter-unread"' in unread.text
    mine = await agent.http.get(url, params={"unread": "true", "tab": "mine"})
    assert threads(mine.text) == [] and "No unread conversations here." in mine.text

    # "Load more" appends the rest after the API's cursor: every thread once.
    rest = await agent.http.get(link(page.text, "load-more"), headers=HX)
    assert rest.status_code == 200 and "<html" not in rest.text and "<nav" not in rest.text
    assert threads(rest.text) == ids[100:] and 'data-testid="load-more"' not in rest.text
    # Without script, the same link opens the next page, with a way back.
    plain = re.search(r'<a class="button" href="([^"]+)"[^>]*data-testid="load-more"',
                      page.text)
    assert plain
    nxt = await agent.http.get(html.unescape(plain.group(1)))
    assert threads(nxt.text) == ids[100:] and "Back to the first page" in nxt.text
    assert_page(await agent.http.get(url, params={"cursor": "garbage"}), 422, "cursor")
    r = await agent.http.get(f"{url}/more", params={"cursor": "garbage"}, headers=HX)
    assert r.status_code == 422 and "cursor" in r.text

    # Another sub-account sees none of them.
    assert_page(await agent.http.get(f"/app/sa/{tenant.sa2}/inbox", params={"unread": "true"}),
                404, "no such sub-account")


async def test_a_long_thread_shows_older_messages_and_pictures_safely(
    hub: Hub, tenant: Tenant, agent: Browser
) -> None:
    sa_id = uuid.UUID(tenant.sa1)
    contact = await hub.pool.fetchval(
        "INSERT INTO contacts (sub_account_id, phone, first_name) VALUES ($1, '+14155550100', "
        "'Ann') RETURNING id", sa_id)
    conv = await hub.pool.fetchval(
        "INSERT INTO conversations (sub_account_id, contact_id, channel, last_message_at) "
        "VALUES ($1, $2, 'sms', now()) RETURNING id", sa_id, contact)
    await hub.pool.executemany(
        "INSERT INTO messages (sub_account_id, conversation_id, contact_id, direction, channel, "
        "from_address, to_address, body, media_urls, status, created_at) VALUES ($1, $2, $3, "
        "'inbound', 'mms', '+14155550100', '+12125550100', $4, $5, 'received', "
        "now() - make_interval(secs => $6))",
        [(sa_id, conv, contact, f"Message {i:03d}" if i else "",
          ['https://media.example/a.jpg?x=1&y="2"', "javascript:alert(1)",
           "http://[broken"] if i == 0 else [],
          MESSAGES - i) for i in range(MESSAGES)])
    messages_url = f"/app/sa/{tenant.sa1}/inbox/thread/{conv}/messages"
    page = await agent.http.get(f"/app/sa/{tenant.sa1}/inbox", params={"c": str(conv)})
    assert page.status_code == 200, page.text
    shown = re.findall(r"Message (\d{3})", page.text)
    assert shown == [f"{i:03d}" for i in range(MESSAGES - 200, MESSAGES)]

    older = await agent.http.get(link(page.text, "show-older"), headers=HX)
    assert older.status_code == 200 and "<ol" not in older.text
    assert re.findall(r"Message (\d{3})", older.text) == [
        f"{i:03d}" for i in range(1, MESSAGES - 200)]
    assert 'data-testid="show-older"' not in older.text
    # The oldest, an MMS with a picture and no text: the image and a link, escaped; the
    # javascript: address is neither linked nor shown, only counted.
    src = 'https://media.example/a.jpg?x=1&amp;y=&#34;2&#34;'
    assert f'<img src="{src}"' in older.text and f'<a href="{src}"' in older.text
    assert "javascript:" not in older.text and "2 attachments not shown" in older.text
    assert '<p class="text"></p>' not in older.text
    assert_page(await agent.http.get(messages_url, params={"before": "garbage"}), 422,
                "cursor")
    # Another sub-account's thread is not there.
    other = await agent.http.get(f"/app/sa/{tenant.sa2}/inbox/thread/{conv}/messages")
    assert other.status_code == 404
