"""Users, login sessions, CSRF, roles and the WebSocket's cookie + Origin check, against the
real gateway; plus conversation assignment and the `hub admin create-user` command."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from config.settings import Settings
from hub import users
from hub.context import Hub
from hub.embedded import Services
from hub.users import ADMIN, ANY, INBOX, MARKETING, Role, roles_for_route
from tests.conftest import Tenant, assert_problem, auth

PASSWORD = "correct horse battery"
SA = "/v1/sub-accounts/{sa}"


@dataclass
class Browser:
    """One signed-in person: their own cookie jar and the page's CSRF token."""

    http: httpx.AsyncClient
    csrf: str
    email: str

    def headers(self, csrf: bool = True) -> dict[str, str]:
        return {"X-CSRF-Token": self.csrf} if csrf else {}


async def sign_in(base_url: str, email: str, password: str = PASSWORD) -> Browser:
    http = httpx.AsyncClient(base_url=base_url, timeout=30)
    form = await http.get("/app/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token, form.text
    r = await http.post("/app/login", data={"email": email, "password": password,
                                            "csrf_token": token.group(1), "next": "/app"})
    assert r.status_code == 303, r.text
    home = await http.get("/app", follow_redirects=True)
    csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"', home.text)
    assert csrf, home.text
    return Browser(http, csrf.group(1), email)


@dataclass
class People:
    admin: Browser
    marketer: Browser
    agent: Browser
    other_agent: Browser  # an agent of the tenant's second sub-account only


@pytest.fixture
async def people(hub: Hub, tenant: Tenant, gateway_url: str) -> AsyncIterator[People]:
    agency = uuid.UUID(tenant.agency_id)
    sa1, sa2 = uuid.UUID(tenant.sa1), uuid.UUID(tenant.sa2)
    for email, grants in (("admin@x.example", {sa1: Role.ADMIN}),
                          ("marketer@x.example", {sa1: Role.MARKETER}),
                          ("agent@x.example", {sa1: Role.AGENT}),
                          ("agent2@x.example", {sa2: Role.AGENT})):
        await users.do_create_user(hub, agency, email, PASSWORD, email.split("@")[0], grants)
    p = People(*[await sign_in(gateway_url, e) for e in (
        "admin@x.example", "marketer@x.example", "agent@x.example", "agent2@x.example")])
    yield p
    for b in (p.admin, p.marketer, p.agent, p.other_agent):
        await b.http.aclose()


async def add_conversation(hub: Hub, sa: str, phone: str = "+14155550100",
                           unread: int = 0) -> str:
    contact = await hub.pool.fetchval(
        "INSERT INTO contacts (sub_account_id, phone, first_name) VALUES ($1, $2, 'Pat') "
        "RETURNING id", uuid.UUID(sa), phone)
    conv = await hub.pool.fetchval(
        "INSERT INTO conversations (sub_account_id, contact_id, channel, unread_count) "
        "VALUES ($1, $2, 'sms', $3) RETURNING id", uuid.UUID(sa), contact, unread)
    return str(conv)


CAMPAIGN = {"name": "Spring", "channel": "sms", "audience": {"all_contacts": True},
            "body": "Hi {{first_name}}"}


# --- the role table --------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "roles"), [
    ("GET", SA, ANY),
    ("PATCH", SA, ADMIN),
    ("POST", SA + "/campaigns", MARKETING),
    ("POST", SA + "/campaigns/{campaign_id}/launch", MARKETING),
    ("GET", SA + "/campaigns/{campaign_id}/stats", ANY),
    ("GET", SA + "/templates/{template_id}/preview", ANY),
    ("POST", SA + "/templates", MARKETING),
    ("DELETE", SA + "/templates/{template_id}", MARKETING),
    ("POST", SA + "/providers", ADMIN),
    ("PATCH", SA + "/providers/{provider_id}", ADMIN),
    ("GET", SA + "/providers", ADMIN),
    ("GET", SA + "/senders", ANY),
    ("POST", SA + "/senders", ADMIN),
    ("POST", SA + "/conversations/{conversation_id}/messages", ANY),
    ("PUT", SA + "/conversations/{conversation_id}/assignment", INBOX),
    ("POST", SA + "/messages", MARKETING),
    ("POST", SA + "/suppressions", ANY),
    ("DELETE", SA + "/suppressions/{suppression_id}", ADMIN),
    ("POST", SA + "/api-keys", ADMIN),
    ("GET", "/v1/sub-accounts", frozenset()),
    ("POST", "/v1/realtime/tickets", frozenset()),
])
def test_role_table(method: str, path: str, roles: frozenset[Role]) -> None:
    assert roles_for_route(method, path) == roles


def test_every_sub_account_route_the_pages_use_has_a_rule(settings: Settings) -> None:
    """A new route is refused to sessions until someone decides who may call it; the
    routes behind the pages must all be decided."""
    from gateway.app import create_app

    app = create_app(settings, "postgresql://unused", "redis://unused")
    paths = {(m.upper(), path) for path, ops in app.openapi()["paths"].items() for m in ops}
    used = [("POST", SA + "/campaigns"), ("POST", SA + "/campaigns/{campaign_id}/launch"),
            ("POST", SA + "/campaigns/{campaign_id}/pause"),
            ("POST", SA + "/conversations/{conversation_id}/messages"),
            ("PUT", SA + "/conversations/{conversation_id}/assignment"),
            ("POST", SA + "/conversations/{conversation_id}/read"),
            ("DELETE", SA + "/suppressions/{suppression_id}"), ("PATCH", SA)]
    for method, path in used:
        assert roles_for_route(method, path), (method, path)
        assert (method, path) in paths, (method, path)


# --- passwords, login, cookies ---------------------------------------------------------


async def test_login_sets_an_http_only_lax_cookie_and_stores_only_hashes(
    hub: Hub, tenant: Tenant, gateway_url: str
) -> None:
    await users.do_create_user(hub, uuid.UUID(tenant.agency_id), "Ann@X.example", PASSWORD,
                               "Ann", {uuid.UUID(tenant.sa1): Role.AGENT})
    stored = await hub.pool.fetchval("SELECT password_hash FROM users WHERE email = $1",
                                     "ann@x.example")
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    async with httpx.AsyncClient(base_url=gateway_url) as http:
        form = await http.get("/app/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert token
        r = await http.post("/app/login", data={"email": "ann@x.example", "password": PASSWORD,
                                                "csrf_token": token.group(1)})
        assert r.status_code == 303
        cookie = next(v for k, v in r.headers.multi_items()
                      if k == "set-cookie" and v.startswith("sb_session="))
        attrs = cookie.lower()
        assert "httponly" in attrs and "samesite=lax" in attrs and "path=/" in attrs
        assert "secure" not in attrs  # the public URL is http here
        value = cookie.split(";", 1)[0].split("=", 1)[1]
        rows = await hub.pool.fetch("SELECT token_hash, expires_at FROM user_sessions")
        assert len(rows) == 1 and bytes(rows[0]["token_hash"]) == users.hash_token(value)
        assert value.encode() not in bytes(rows[0]["token_hash"])


def test_cookie_is_secure_when_the_public_url_is_https() -> None:
    from gateway.sessions import cookie_secure

    assert cookie_secure(Settings(public_url="https://hub.example.com"))
    assert not cookie_secure(Settings(public_url="http://127.0.0.1:8000"))


async def test_wrong_password_unknown_email_and_missing_form_token_are_refused(
    hub: Hub, tenant: Tenant, gateway_url: str
) -> None:
    await users.do_create_user(hub, uuid.UUID(tenant.agency_id), "bo@x.example", PASSWORD,
                               "Bo", {uuid.UUID(tenant.sa1): Role.AGENT})
    async with httpx.AsyncClient(base_url=gateway_url) as http:
        for email, password in (("bo@x.example", "wrong password!"),
                                ("nobody@x.example", PASSWORD)):
            form = await http.get("/app/login")  # each answer carries a fresh form token
            token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
            assert token
            r = await http.post("/app/login", data={"email": email, "password": password,
                                                    "csrf_token": token.group(1)})
            assert r.status_code == 401 and "Wrong email or password" in r.text
            assert "sb_session=" not in r.headers.get("set-cookie", "")
    async with httpx.AsyncClient(base_url=gateway_url) as fresh:  # no login-form cookie
        r = await fresh.post("/app/login", data={"email": "bo@x.example",
                                                 "password": PASSWORD, "csrf_token": "forged"})
        assert r.status_code == 403 and "sb_session=" not in r.headers.get("set-cookie", "")
    assert await hub.pool.fetchval("SELECT count(*) FROM user_sessions") == 0


async def test_short_password_and_bad_email_are_named(hub: Hub, tenant: Tenant) -> None:
    from hub.errors import ValidationFailed

    with pytest.raises(ValidationFailed) as short:
        await users.do_create_user(hub, uuid.UUID(tenant.agency_id), "c@x.example", "short",
                                   "", {})
    assert short.value.errors[0].field == "password"
    with pytest.raises(ValidationFailed) as bad:
        await users.do_create_user(hub, uuid.UUID(tenant.agency_id), "not-an-email", PASSWORD,
                                   "", {})
    assert bad.value.errors[0].field == "email"


# --- CSRF ------------------------------------------------------------------------------


async def test_cookie_writes_need_the_csrf_token_and_reads_do_not(
    people: People, tenant: Tenant
) -> None:
    m = people.marketer
    url = f"/v1/sub-accounts/{tenant.sa1}/campaigns"
    assert (await m.http.get(url)).status_code == 200
    missing = await m.http.post(url, json=CAMPAIGN)
    assert_problem(missing, 403, "csrf_failed")
    wrong = await m.http.post(url, json=CAMPAIGN, headers={"X-CSRF-Token": "x" * 43})
    assert_problem(wrong, 403, "csrf_failed")
    other = await m.http.post(url, json=CAMPAIGN, headers=people.agent.headers())
    assert_problem(other, 403, "csrf_failed")  # another session's token is no good either
    # Nothing was created by the refused requests: the one that passes creates one
    # (or says, by name, what the campaign still lacks: this sub-account has no sender).
    ok = await m.http.post(url, json=CAMPAIGN, headers=m.headers())
    assert_problem(ok, 422, field="sender_ids")


async def test_logout_needs_the_token_then_ends_the_session(people: People,
                                                             tenant: Tenant) -> None:
    a = people.agent
    refused = await a.http.post("/app/logout", data={"csrf_token": "nope"})
    assert refused.status_code == 403 and "The form expired" in refused.text  # a page
    r = await a.http.post("/app/logout", data={"csrf_token": a.csrf})
    assert r.status_code == 303 and r.headers["location"] == "/app/login"
    assert "sb_session" not in a.http.cookies  # the answer cleared it
    page = await a.http.get(f"/app/sa/{tenant.sa1}/inbox")
    assert page.status_code == 303 and page.headers["location"].startswith("/app/login")


async def test_logged_out_cookie_value_no_longer_works(hub: Hub, people: People,
                                                       tenant: Tenant) -> None:
    a = people.admin
    value = a.http.cookies.get("sb_session")
    assert value
    await a.http.post("/app/logout", data={"csrf_token": a.csrf})
    async with httpx.AsyncClient(base_url=str(a.http.base_url),
                                 cookies={"sb_session": value}) as replay:
        r = await replay.get(f"/v1/sub-accounts/{tenant.sa1}")
        assert_problem(r, 401, "session_expired")


async def test_expired_session_is_refused(hub: Hub, people: People, tenant: Tenant) -> None:
    url = f"/v1/sub-accounts/{tenant.sa1}/conversations"
    assert (await people.agent.http.get(url)).status_code == 200
    await hub.pool.execute("UPDATE user_sessions SET expires_at = now() - interval '1 s'")
    assert_problem(await people.agent.http.get(url), 401, "session_expired")


# --- roles and isolation ---------------------------------------------------------------


async def test_roles_are_enforced_on_the_routes_the_pages_use(
    hub: Hub, people: People, tenant: Tenant
) -> None:
    sa = f"/v1/sub-accounts/{tenant.sa1}"
    # An agent cannot create or launch campaigns.
    r = await people.agent.http.post(f"{sa}/campaigns", json=CAMPAIGN,
                                     headers=people.agent.headers())
    assert_problem(r, 403, "role_forbidden")
    r = await people.agent.http.post(f"{sa}/campaigns/{uuid.uuid4()}/launch",
                                     headers=people.agent.headers())
    assert_problem(r, 403, "role_forbidden")
    # A marketer cannot touch providers; an admin can.
    provider = {"provider": "twilio", "name": "p", "account_id": "AC" + "b" * 32,
                "secret": "tok-secret-value"}
    r = await people.marketer.http.post(f"{sa}/providers", json=provider,
                                        headers=people.marketer.headers())
    assert_problem(r, 403, "role_forbidden")
    r = await people.admin.http.post(f"{sa}/providers", json=provider,
                                     headers=people.admin.headers())
    assert r.status_code == 201, r.text
    assert "tok-secret-value" not in r.text
    # The admin's settings page lists it without the secret.
    page = await people.admin.http.get(f"/app/sa/{tenant.sa1}/settings")
    assert page.status_code == 200 and "AC" + "b" * 32 in page.text
    assert "tok-secret-value" not in page.text
    # Suppression removal is for admins.
    s = await people.agent.http.post(f"{sa}/suppressions", headers=people.agent.headers(),
                                     json={"channel": "sms", "address": "+14155550199",
                                           "reason": "asked on the phone"})
    assert s.status_code == 201, s.text
    assert s.json()["created_by"].startswith("user:")
    r = await people.agent.http.delete(f"{sa}/suppressions/{s.json()['id']}",
                                       params={"reason": "oops"},
                                       headers=people.agent.headers())
    assert_problem(r, 403, "role_forbidden")
    r = await people.admin.http.delete(f"{sa}/suppressions/{s.json()['id']}",
                                       params={"reason": "re-subscribed in writing"},
                                       headers=people.admin.headers())
    assert r.status_code == 200 and r.json()["removed_by"].startswith("user:")


async def test_a_user_sees_only_granted_sub_accounts(hub: Hub, people: People,
                                                     tenant: Tenant) -> None:
    conv = await add_conversation(hub, tenant.sa1)
    agent2 = people.other_agent
    for path in (f"/v1/sub-accounts/{tenant.sa1}", f"/v1/sub-accounts/{tenant.sa1}/conversations",
                 f"/v1/sub-accounts/{tenant.sa1}/conversations/{conv}"):
        assert_problem(await agent2.http.get(path), 404, "sub_account_not_found")
    r = await agent2.http.put(f"/v1/sub-accounts/{tenant.sa1}/conversations/{conv}/assignment",
                              json={"assignee": "me"}, headers=agent2.headers())
    assert_problem(r, 404, "sub_account_not_found")
    assert (await agent2.http.get(f"/v1/sub-accounts/{tenant.sa2}/conversations")).json()[
        "data"] == []
    # Agency-wide routes and tickets are for API keys, never a session.
    assert_problem(await agent2.http.get("/v1/sub-accounts"), 403, "api_key_required")
    r = await agent2.http.post("/v1/realtime/tickets", json={"sub_account_id": tenant.sa2},
                               headers=agent2.headers())
    assert_problem(r, 403, "api_key_required")
    # The pages agree.
    assert (await agent2.http.get(f"/app/sa/{tenant.sa1}/inbox")).status_code == 404
    assert (await people.agent.http.get(f"/app/sa/{tenant.sa1}/campaigns")).status_code == 403
    page = await people.agent.http.get(f"/app/sa/{tenant.sa1}/inbox")
    assert page.status_code == 200 and "Pat" in page.text


async def test_home_lists_every_granted_sub_account(hub: Hub, tenant: Tenant,
                                                     gateway_url: str) -> None:
    await users.do_create_user(hub, uuid.UUID(tenant.agency_id), "two@x.example", PASSWORD,
                               "Two", {uuid.UUID(tenant.sa1): Role.ADMIN,
                                       uuid.UUID(tenant.sa2): Role.AGENT})
    b = await sign_in(gateway_url, "two@x.example")
    try:
        home = await b.http.get("/app")
        assert home.status_code == 200
        assert "Agency 1" in home.text and "Agency 2" in home.text
        assert f"/app/sa/{tenant.sa1}/settings" in home.text  # admin there
        assert f"/app/sa/{tenant.sa2}/settings" not in home.text  # an agent here
        assert (await b.http.get(f"/app/sa/{tenant.sa2}/settings")).status_code == 403
    finally:
        await b.http.aclose()


async def test_api_keys_work_unchanged_beside_a_cookie(people: People, tenant: Tenant) -> None:
    # Authorization wins: the cookie is not even looked at, so no CSRF token is needed.
    r = await people.agent.http.post(f"/v1/sub-accounts/{tenant.sa1}/campaigns",
                                     json=CAMPAIGN, headers=auth(tenant.sa1_key))
    assert_problem(r, 422, field="sender_ids")  # got past auth and roles to validation
    r = await people.agent.http.get("/v1/sub-accounts", headers=auth(tenant.agency_key))
    assert r.status_code == 200 and len(r.json()["data"]) == 2


# --- assignment and read ---------------------------------------------------------------


async def test_assignment_and_read_publish_conversation_updates(
    hub: Hub, api: httpx.AsyncClient, people: People, tenant: Tenant
) -> None:
    conv = await add_conversation(hub, tenant.sa1, unread=2)
    base = f"/v1/sub-accounts/{tenant.sa1}/conversations/{conv}"
    before = await hub.pool.fetchval("SELECT event_seq FROM sub_accounts WHERE id = $1",
                                     uuid.UUID(tenant.sa1))
    me = str(await hub.pool.fetchval("SELECT id FROM users WHERE email = 'agent@x.example'"))
    r = await people.agent.http.put(f"{base}/assignment", json={"assignee": me},
                                    headers=people.agent.headers())
    assert r.status_code == 200 and r.json()["assignee"] == me
    r = await people.marketer.http.put(f"{base}/assignment", json={"assignee": None},
                                       headers=people.marketer.headers())
    assert_problem(r, 403, "role_forbidden")
    r = await api.post(f"{base}/read", headers=auth(tenant.sa1_key))
    assert r.status_code == 200 and r.json()["unread_count"] == 0
    again = await api.post(f"{base}/read", headers=auth(tenant.sa1_key))
    assert again.status_code == 200  # nothing to clear: no new event
    events = await hub.pool.fetch(
        "SELECT type, topic, data FROM events WHERE sub_account_id = $1 AND seq > $2 "
        "ORDER BY seq", uuid.UUID(tenant.sa1), before)
    assert [(e["type"], e["topic"]) for e in events] == \
        [("conversation.updated", f"conversation:{conv}")] * 2
    assert events[0]["data"]["assignee"] == me and events[1]["data"]["unread_count"] == 0
    r = await api.put(f"{base}/assignment", json={"assignee": None}, headers=auth(tenant.sa1_key))
    assert r.status_code == 200 and r.json()["assignee"] is None
    # Another sub-account's key, an unknown id, and a bad body.
    assert_problem(await api.put(f"{base}/assignment", json={"assignee": None},
                                 headers=auth(tenant.sa2_key)), 404)
    assert_problem(await api.put(
        f"/v1/sub-accounts/{tenant.sa1}/conversations/{uuid.uuid4()}/assignment",
        json={"assignee": None}, headers=auth(tenant.sa1_key)), 404, "conversation_not_found")
    assert_problem(await api.put(f"{base}/assignment", json={"assignee": "x" * 201},
                                 headers=auth(tenant.sa1_key)), 422, field="assignee")


# --- the WebSocket ---------------------------------------------------------------------


async def _ws(base: str, sa: str, cookie: str | None, origin: str | None) -> dict[str, Any]:
    headers = {}
    if cookie:
        headers["Cookie"] = f"sb_session={cookie}"
    if origin:
        headers["Origin"] = origin
    url = base.replace("http://", "ws://") + f"/v1/realtime?sub_account={sa}"
    async with connect(url, additional_headers=headers, compression=None) as ws:
        try:
            frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 10))
        except Exception as exc:  # closed before any frame
            return {"closed": getattr(getattr(exc, "rcvd", None), "code", None)}
        if frame["type"] != "hello":
            return frame
        await ws.close()
        return frame


async def test_websocket_takes_the_cookie_only_from_our_origin(
    settings: Settings, people: People, tenant: Tenant, gateway_url: str
) -> None:
    cookie = people.agent.http.cookies.get("sb_session")
    origin = settings.base_url
    ok = await _ws(gateway_url, tenant.sa1, cookie, origin)
    assert ok["type"] == "hello" and ok["sub_account_id"] == tenant.sa1
    assert await _ws(gateway_url, tenant.sa1, cookie, "https://evil.example") == \
        {"closed": 4001}
    assert await _ws(gateway_url, tenant.sa1, cookie, None) == {"closed": 4001}
    assert await _ws(gateway_url, tenant.sa2, cookie, origin) == {"closed": 4001}  # not granted
    assert await _ws(gateway_url, tenant.sa1, "forged", origin) == {"closed": 4001}


async def test_logging_out_closes_the_pages_open_feed(
    settings: Settings, people: People, tenant: Tenant, gateway_url: str
) -> None:
    """A socket opened with the cookie is closed (4001) once its login ends, within the
    feed's catch-up interval (5 s here), not left streaming the sub-account's events."""
    a = people.agent
    cookie = a.http.cookies.get("sb_session")
    url = gateway_url.replace("http://", "ws://") + f"/v1/realtime?sub_account={tenant.sa1}"
    async with connect(url, compression=None, additional_headers={
            "Cookie": f"sb_session={cookie}", "Origin": settings.base_url}) as ws:
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "hello"
        r = await a.http.post("/app/logout", data={"csrf_token": a.csrf})
        assert r.status_code == 303, r.text

        async def until_closed() -> None:
            while True:  # heartbeats come every 25 s: none is due before the close
                await ws.recv()

        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(until_closed(), 15)
        assert ws.close_code == 4001


# --- the command -----------------------------------------------------------------------


def test_admin_create_user_command(services: Services, settings: Settings,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncpg

    from hub.cli import app

    async def agency_with_sub_account() -> tuple[str, str]:
        conn = await asyncpg.connect(services.database_url)
        try:
            agency = await conn.fetchval(
                "INSERT INTO agencies (name) VALUES ('CLI') RETURNING id")
            sa = await conn.fetchval(
                "INSERT INTO sub_accounts (agency_id, name) VALUES ($1, 'One') RETURNING id",
                agency)
            return str(agency), str(sa)
        finally:
            await conn.close()

    agency, sa = asyncio.run(agency_with_sub_account())
    env = {"DATABASE_URL": services.database_url, "REDIS_URL": services.redis_url,
           "HUB_DATA_DIR": str(settings.data_dir)}
    runner = CliRunner()
    args = ["admin", "create-user", "cli@x.example", "--agency", agency,
            "--grant", f"{sa}:marketer", "--password", PASSWORD, "--name", "Cli"]
    done = runner.invoke(app, args, env=env)
    assert done.exit_code == 0, done.output
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["email"] == "cli@x.example" and out["grants"] == {sa: "marketer"}
    again = runner.invoke(app, args, env=env)
    assert again.exit_code == 1 and "exists" in again.output
    bad = runner.invoke(app, ["admin", "create-user", "x@x.example", "--agency", agency,
                              "--grant", f"{sa}:owner", "--password", PASSWORD], env=env)
    assert bad.exit_code == 2


# --- events follow the routes ------------------------------------------------------------


async def test_events_about_provider_accounts_are_for_those_who_may_read_them(
    settings: Settings, api: httpx.AsyncClient, people: People, tenant: Tenant,
    gateway_url: str
) -> None:
    """`GET /providers` is for admins; its events were not: an agent read the provider
    account's SID, base URL and config through `GET /events` and the feed."""
    sa = tenant.sa1
    p = await api.post(f"/v1/sub-accounts/{sa}/providers", headers=auth(tenant.sa1_key), json={
        "provider": "twilio", "name": "main", "account_id": "AC" + "e" * 32,
        "secret": "a-token", "base_url": "http://127.0.0.1:9"})
    assert p.status_code == 201, p.text
    c = await api.post(f"/v1/sub-accounts/{sa}/contacts", headers=auth(tenant.sa1_key),
                       json={"phone": "+14155550123", "first_name": "Pat"})
    assert c.status_code == 201, c.text

    async def rest_types(headers: dict[str, str], http: httpx.AsyncClient) -> set[str]:
        r = await http.get(f"/v1/sub-accounts/{sa}/events?limit=1000", headers=headers)
        assert r.status_code == 200, r.text
        return {e["event"] for e in r.json()["data"]}

    assert {"provider_account.created", "contact.created"} <= \
        await rest_types(auth(tenant.sa1_key), api)
    assert {"provider_account.created", "contact.created"} <= \
        await rest_types(people.admin.headers(), people.admin.http)
    for b in (people.marketer, people.agent):
        seen = await rest_types(b.headers(), b.http)
        assert "contact.created" in seen and "provider_account.created" not in seen

    async def feed_types(b: Browser) -> set[str]:
        url = gateway_url.replace("http://", "ws://") + f"/v1/realtime?sub_account={sa}"
        headers = {"Cookie": f"sb_session={b.http.cookies.get('sb_session')}",
                   "Origin": settings.base_url}
        seen: set[str] = set()
        async with connect(url, additional_headers=headers, compression=None) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "hello"
            await ws.send(json.dumps({"type": "subscribe", "topics": ["*"], "since": 0}))
            while "contact.created" not in seen:  # logged after the provider account's
                frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if frame["type"] == "event":
                    seen.add(frame["event"])
        return seen

    assert "provider_account.created" in await feed_types(people.admin)
    assert "provider_account.created" not in await feed_types(people.agent)
    assert "provider_account.created" not in await feed_types(people.marketer)
