"""The Contacts pages through the real gateway and PostgreSQL: the list with search, the tag
filter and "Load more" paging over a seeded sub-account; opt-outs per channel and the
conversations of one contact; a CSV import uploaded as the page's script does, followed to
the end with its bad row shown; and nothing of another sub-account, nor anything at all
before signing in."""

from __future__ import annotations

import asyncio
import html
import re
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest

from hub import users
from hub.context import Hub
from hub.store import imports as import_store
from hub.users import Role
from tests.conftest import Tenant, assert_problem, auth
from tests.test_pages_errors import HX, assert_page
from tests.test_users import PASSWORD, Browser, sign_in

SEEDED = 55  # more than a page (50)


@pytest.fixture
async def people(hub: Hub, tenant: Tenant,
                 gateway_url: str) -> AsyncIterator[tuple[Browser, Browser]]:
    """A marketer and an agent of the tenant's first sub-account."""
    agency = uuid.UUID(tenant.agency_id)
    for email, role in (("m@contacts.example", Role.MARKETER),
                        ("a@contacts.example", Role.AGENT)):
        await users.do_create_user(hub, agency, email, PASSWORD, "Person",
                                   {uuid.UUID(tenant.sa1): role})
    marketer = await sign_in(gateway_url, "m@contacts.example")
    agent = await sign_in(gateway_url, "a@contacts.example")
    yield marketer, agent
    await marketer.http.aclose()
    await agent.http.aclose()


async def seed(hub: Hub, sa: str) -> dict[str, str]:
    """SEEDED numbered contacts, then three named ones (the newest): returns their ids."""
    sa_id = uuid.UUID(sa)
    await hub.pool.executemany(
        "INSERT INTO contacts (sub_account_id, phone, first_name, tags, created_at) "
        "VALUES ($1, $2, $3, $4, now() - make_interval(mins => $5))",
        [(sa_id, f"+1415555{i:04d}", f"Person{i:02d}", ["lead"] if i % 5 else ["vip"],
          SEEDED - i) for i in range(SEEDED)])
    ids = {}
    for n, (name, phone, email, tags) in enumerate((
            ("Zed", "+12125550199", None, ["vip", "gold"]),
            ("Mia", "+12125550142", "Mia@Example.com", []),
            ("Noor", None, "noor@example.com", ["lead"]))):
        ids[name] = str(await hub.pool.fetchval(
            "INSERT INTO contacts (sub_account_id, phone, email, email_key, first_name, tags, "
            "created_at) VALUES ($1, $2, $3, lower($3), $4, $5, now() + make_interval(secs => $6))"
            " RETURNING id", sa_id, phone, email, name, tags, n + 1))
    return ids


def names(page: str) -> list[str]:
    return re.findall(r'data-testid="contact">\s*<td><a href="[^"]+">([^<]+)</a>', page)


async def test_list_search_tags_paging_and_one_contact(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, people: tuple[Browser, Browser]
) -> None:
    marketer, agent = people
    ids = await seed(hub, tenant.sa1)
    h = auth(tenant.sa1_key)
    r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/suppressions", headers=h, json={
        "channel": "sms", "address": "+12125550142", "reason": "asked us on the phone"})
    assert r.status_code == 201, r.text
    conv = await hub.pool.fetchval(
        "INSERT INTO conversations (sub_account_id, contact_id, channel, last_message_at, "
        "last_message_preview) VALUES ($1, $2, 'sms', $3, 'See you at 5') RETURNING id",
        uuid.UUID(tenant.sa1), uuid.UUID(ids["Mia"]), datetime(2026, 3, 1, 9, 30, tzinfo=UTC))
    url = f"/app/sa/{tenant.sa1}/contacts"

    page = await marketer.http.get(url)
    assert page.status_code == 200, page.text
    assert f'data-testid="contact-count">{SEEDED + 3}<' in page.text
    first = names(page.text)
    assert len(first) == 50 and first[:3] == ["Noor", "Mia", "Zed"], first
    assert 'aria-current="page">Contacts<' in page.text
    # Mia: opted out of SMS with the reason, voice still open, email subscribed; her last
    # message is her last activity.
    mia = page.text[page.text.index(">Mia<"):page.text.index(">Zed<")]
    assert "SMS: opted out" in mia and "asked us on the phone" in mia, mia
    assert "Voice: subscribed" in mia and "Email: subscribed" in mia
    assert "2026-03-01 09:30 UTC" in mia
    noor = page.text[page.text.index(">Noor<"):page.text.index(">Mia<")]
    assert "SMS: no address" in noor and "Email: subscribed" in noor

    # "Load more" fetches the rest after the API's cursor: every contact once.
    more = re.search(r'hx-get="([^"]+)"[^>]*data-testid="load-more"', page.text)
    assert more, page.text
    rest = await marketer.http.get(html.unescape(more.group(1)), headers=HX)
    assert rest.status_code == 200 and "<html" not in rest.text
    second = names(rest.text)
    assert len(second) == SEEDED + 3 - 50 and 'data-testid="load-more"' not in rest.text
    assert sorted(first + second) == sorted(
        ["Zed", "Mia", "Noor"] + [f"Person{i:02d}" for i in range(SEEDED)])
    # Without script the same link opens the next page, with a way back to the first.
    plain = re.search(r'<a class="button" href="([^"]+)"', page.text)
    assert plain
    nxt = await marketer.http.get(html.unescape(plain.group(1)))
    assert names(nxt.text) == second and "Back to the first page" in nxt.text

    # Search by part of a name, a phone written any way, an email's start; the tag filter.
    assert names((await marketer.http.get(url, params={"q": "zed"})).text) == ["Zed"]
    assert names((await marketer.http.get(url, params={"q": "(212) 555-0142"})).text) == ["Mia"]
    assert names((await marketer.http.get(url, params={"q": "noor@"})).text) == ["Noor"]
    r = await marketer.http.get(url, params={"tag": "vip"})
    vips = names(r.text)
    assert vips[0] == "Zed" and len(vips) == 1 + SEEDED // 5
    # The count says how many match, beside how many there are.
    assert f'data-testid="match-count">{1 + SEEDED // 5}<' in r.text
    assert f'data-testid="contact-count">{SEEDED + 3}<' in r.text
    r = await marketer.http.get(url, params={"q": "zed"})
    assert 'data-testid="match-count">1<' in r.text
    assert 'data-testid="match-count"' not in page.text  # unfiltered: the total alone
    r = await marketer.http.get(url, params={"q": "nobody", "tag": "gold"})
    assert names(r.text) == [] and "No contact matches “nobody” with the tag “gold”" in r.text
    assert_page(await marketer.http.get(url, params={"cursor": "garbage"}), 422,
                "cursor")

    # One contact: fields, tags, opt-outs with the reason, and the way to the conversation.
    r = await agent.http.get(f"{url}/{ids['Mia']}")
    assert r.status_code == 200, r.text
    assert 'data-testid="contact-name">Mia<' in r.text and "Mia@Example.com" in r.text
    sms = r.text[r.text.index('data-testid="subscription-sms"'):]
    assert "opted out" in sms[:300] and "asked us on the phone" in sms[:300], sms[:300]
    assert f'href="/app/sa/{tenant.sa1}/inbox?c={conv}" data-testid="conversation-link"' in r.text
    assert "See you at 5" in r.text
    r = await marketer.http.get(f"{url}/{ids['Zed']}")
    assert '<span class="pill">gold</span>' in r.text and "No conversations" in r.text
    assert_page(await marketer.http.get(f"{url}/not-a-uuid"), 422,
                "“not-a-uuid” is not a valid contact id")


async def test_an_empty_sub_account_says_to_import_and_only_marketers_may(
    tenant: Tenant, people: tuple[Browser, Browser]
) -> None:
    marketer, agent = people
    url = f"/app/sa/{tenant.sa1}/contacts"
    r = await marketer.http.get(url)
    assert 'data-testid="no-contacts"' in r.text and "Import a CSV file" in r.text
    assert "data-import-form" in r.text and 'name="file"' in r.text
    r = await agent.http.get(url)
    assert 'data-testid="no-contacts"' in r.text and "data-import-form" not in r.text
    assert "Ask an admin or a marketer" in r.text


async def upload(b: Browser, sa: str, csv: bytes, filename: str = "list.csv") -> httpx.Response:
    """What the page's script sends: multipart, with the session cookie and CSRF token."""
    return await b.http.post(f"/v1/sub-accounts/{sa}/contacts/imports",
                             headers={**b.headers(), "Accept": "application/json"},
                             files={"file": (filename, csv, "text/csv")})


async def test_import_shows_progress_then_the_bad_row_and_its_report(
    hub: Hub, tenant: Tenant, people: tuple[Browser, Browser]
) -> None:
    marketer, agent = people
    url = f"/app/sa/{tenant.sa1}/contacts"
    csv = (b"phone,email,first name,tags\n"
           b"+12125550001,ada@example.com,Ada,vip\n"
           b"+12125550002,,Bob,\n"
           b"12,carol@example.com,Carol,\n")  # row 3: not a phone number
    r = await upload(marketer, tenant.sa1, csv)
    assert r.status_code == 202, r.text
    job = r.json()["id"]
    progress = f"{url}/imports/{job}"

    deadline = time.monotonic() + 60
    while True:  # as the page polls it
        part = await marketer.http.get(progress, headers=HX)
        assert part.status_code == 200 and "<html" not in part.text
        if 'data-status="completed"' in part.text or time.monotonic() > deadline:
            break
        assert 'hx-trigger="every 1s"' in part.text
        await asyncio.sleep(0.2)
    assert 'data-status="completed"' in part.text, part.text
    assert "hx-trigger" not in part.text  # done: the page stops polling
    assert 'aria-valuenow="100.0"' in part.text
    assert "3 rows: 2 created, 0 updated, 1 not imported." in part.text, part.text
    bad = re.findall(r'data-testid="import-error"><td>(\d+)</td><td>([^<]+)</td><td>([^<]+)<',
                     part.text)
    assert len(bad) == 1 and bad[0][:2] == ("3", "phone"), bad
    # The page itself shows the same, under the form, with the new contacts in the list.
    page = await marketer.http.get(url, params={"import_id": job})
    assert "Import of list.csv" in page.text and bad[0][2] in page.text
    assert sorted(names(page.text)) == ["Ada", "Bob"]
    # The error report the page links to, with the same session.
    link = re.search(r'href="([^"]+)"[^>]*data-testid="error-report"', page.text)
    assert link
    report = await marketer.http.get(html.unescape(link.group(1)))
    assert report.status_code == 200, report.text
    assert [(e["row_number"], e["field"]) for e in report.json()["data"]] == [(3, "phone")]

    # A job still waiting: the bar at 0 and the page keeps polling.
    waiting = await import_store.create(hub.pool, uuid.UUID(tenant.sa1), "later.csv", b"x\n")
    part = await agent.http.get(f"{url}/imports/{waiting['id']}", headers=HX)
    assert "Waiting to start" in part.text and 'hx-trigger="every 1s"' in part.text
    assert 'aria-valuenow="0.0"' in part.text and "0 of ? rows read" in part.text
    # An agent may watch, not upload (the API's role table); a bad upload says why.
    assert_problem(await upload(agent, tenant.sa1, csv), 403, "role_forbidden")
    assert_problem(await upload(marketer, tenant.sa1, b"  \n"), 422, field="file")


async def test_another_sub_accounts_contacts_and_imports_are_not_found(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, people: tuple[Browser, Browser]
) -> None:
    marketer, _ = people
    theirs = await seed(hub, tenant.sa2)
    r = await api.post(f"/v1/sub-accounts/{tenant.sa2}/contacts/imports", content=b"phone\n1\n",
                       headers={**auth(tenant.sa2_key), "Content-Type": "text/csv"})
    assert r.status_code == 202, r.text
    mine = f"/app/sa/{tenant.sa1}/contacts"
    page = await marketer.http.get(mine)
    assert names(page.text) == [] and 'data-testid="contact-count">0<' in page.text
    assert_page(await marketer.http.get(f"{mine}/{theirs['Zed']}"), 404,
                "There is no such contact here.")
    assert_page(await marketer.http.get(mine, params={"import_id": r.json()["id"]}), 404,
                "There is no such import here.")
    part = await marketer.http.get(f"{mine}/imports/{r.json()['id']}", headers=HX)
    assert part.status_code == 404 and "<html" not in part.text
    assert_page(await marketer.http.get(f"/app/sa/{tenant.sa2}/contacts"), 404,
                "no such sub-account")
    assert_page(await marketer.http.get(f"/app/sa/{tenant.sa2}/contacts/{theirs['Zed']}"), 404,
                "no such sub-account")


async def test_signed_out_visitors_are_sent_to_sign_in(api: httpx.AsyncClient,
                                                       tenant: Tenant) -> None:
    for path in ("/contacts", f"/contacts/{uuid.uuid4()}", f"/contacts/imports/{uuid.uuid4()}"):
        url = f"/app/sa/{tenant.sa1}{path}"
        r = await api.get(url)
        assert r.status_code == 303, r.text
        assert r.headers["location"] == f"/app/login?next={url}"
