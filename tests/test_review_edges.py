"""Four edges a review found, each against the real parts: an SMTP relay without AUTH
configured through the API and sent through by a sender shard; an SMTP account's settings
checked before the first send; a CSV naming one field twice; and a Twilio receipt holding
a NUL that arrives before its message."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from channels.base import ProviderCredentials
from channels.smtp import RelayCheckFailed, check_relay
from config.settings import Settings
from hub import imports
from hub.context import Hub
from hub.errors import ValidationFailed
from tests.conftest import Tenant, assert_problem, auth
from tests.test_sending import wait_for
from tests.test_smtp import PASSWORD, USER, Relay, closed_port, smtp_server
from tests.test_webhooks import (
    STATUS,
    add_provider,
    add_sender,
    insert_message,
    message,
    post_twilio,
)

NUL = "\x00"


class NoAuthRelay(Relay):
    """An internal relay that trusts its clients: its EHLO offers no AUTH at all."""

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname  # what aiosmtpd's EHLO does when there is no hook
        return [r for r in responses if not r[4:].startswith("AUTH")]


def _smtp_account(port: int | None, *, host: str = "127.0.0.1", **body: Any) -> dict[str, Any]:
    return {"provider": "smtp", "name": "relay", **body,
            "config": {"host": host, "port": port, "start_tls": "never",
                       "helo_hostname": "hub.test"}}


# --- 1. an SMTP relay without AUTH ----------------------------------------------------------


async def test_smtp_account_takes_both_credentials_or_neither(
    api: httpx.AsyncClient, tenant: Tenant
) -> None:
    url, h = f"/v1/sub-accounts/{tenant.sa1}/providers", auth(tenant.sa1_key)
    r = await api.post(url, headers=h, json=_smtp_account(25, account_id="", secret=""))
    assert r.status_code == 201, r.text
    assert (r.json()["account_id"], r.json()["secret_set"]) == ("", False)
    bare = r.json()["id"]
    r = await api.post(url, headers=h, json=_smtp_account(25))  # omitted: the same
    assert r.status_code == 201 and not r.json()["secret_set"], r.text

    for body, field in (({"account_id": "user"}, "secret"), ({"secret": "pw"}, "account_id")):
        r = await api.post(url, headers=h, json=_smtp_account(25, **body))
        assert_problem(r, 422, "validation_failed", field=field)
    for provider in ("twilio", "sendgrid"):
        r = await api.post(url, headers=h, json={"provider": provider, "name": "p",
                                                 "account_id": "AC1"})
        assert_problem(r, 422, field="secret")

    # Patching keeps the rule on what the account becomes, and changes nothing if broken.
    r = await api.patch(f"{url}/{bare}", headers=h, json={"secret": "pw"})
    assert_problem(r, 422, field="account_id")
    r = await api.patch(f"{url}/{bare}", headers=h, json={"account_id": "u", "secret": "pw"})
    assert r.status_code == 200 and r.json()["secret_set"], r.text
    r = await api.patch(f"{url}/{bare}", headers=h, json={"account_id": ""})
    assert_problem(r, 422, field="account_id")
    assert (await api.get(f"{url}/{bare}", headers=h)).json()["account_id"] == "u"
    r = await api.patch(f"{url}/{bare}", headers=h, json={"account_id": "", "secret": ""})
    assert r.status_code == 200 and not r.json()["secret_set"], r.text


async def test_an_email_goes_out_through_a_relay_without_auth(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant
) -> None:
    sa, h = f"/v1/sub-accounts/{tenant.sa1}", auth(tenant.sa1_key)
    async with smtp_server(NoAuthRelay()) as server:
        r = await api.post(f"{sa}/providers", headers=h, json=_smtp_account(server.port))
        assert r.status_code == 201, r.text
        await add_sender(api, tenant.sa1, tenant.sa1_key, r.json()["id"],
                         address="desk@example.com", channel="email", kind="email")
        r = await api.post(f"{sa}/messages", headers={**h, "Idempotency-Key": "relay-1"},
                           json={"channel": "email", "to": "ada@example.org",
                                 "subject": "Your booking", "body": "See you at 3pm."})
        assert r.status_code == 202, r.text
        mid = r.json()["id"]

        async def done() -> dict[str, Any] | None:
            m: dict[str, Any] = (await api.get(f"{sa}/messages/{mid}", headers=h)).json()
            return m if m["status"] not in ("queued", "sending") else None
        m = await wait_for(done, timeout=60)
        assert m["status"] == "sent", {k: m[k] for k in ("status", "error_code", "error_message")}
        [got] = server.relay.received
        assert (got.rcpt_tos, got.authenticated) == (["ada@example.org"], False)
        assert got.message["X-Hub-Message-Id"] == mid


# --- 2. checking an SMTP account's settings ----------------------------------------------


async def test_checking_an_smtp_account_names_what_works_and_what_to_fix(
    api: httpx.AsyncClient, tenant: Tenant
) -> None:
    url, h = f"/v1/sub-accounts/{tenant.sa1}/providers", auth(tenant.sa1_key)

    async def check(body: dict[str, Any]) -> httpx.Response:
        r = await api.post(url, headers=h, json=body)
        assert r.status_code == 201, r.text
        return await api.post(f"{url}/{r.json()['id']}/test", headers=h)

    async with smtp_server(NoAuthRelay()) as open_relay, \
            smtp_server(Relay(), auth=True) as auth_relay:
        r = await check(_smtp_account(open_relay.port))
        assert r.status_code == 200, r.text
        assert r.json() == {"host": "127.0.0.1", "port": open_relay.port, "tls": "none",
                            "authenticated": False}
        r = await check(_smtp_account(auth_relay.port, account_id=USER, secret=PASSWORD))
        assert r.status_code == 200 and r.json()["authenticated"] is True, r.text

        r = await check(_smtp_account(auth_relay.port, account_id=USER, secret="wrong-Pa55"))
        problem = assert_problem(r, 422, field="secret")
        assert problem["errors"][0]["code"] == "auth_failed" and "535" in r.text
        assert "wrong-Pa55" not in r.text
        r = await check(_smtp_account(open_relay.port, account_id=USER, secret=PASSWORD))
        assert_problem(r, 422, field="account_id")  # this relay offers no AUTH
        assert PASSWORD not in r.text
        r = await check({**_smtp_account(open_relay.port), "config": {
            "host": "127.0.0.1", "port": open_relay.port, "start_tls": "always"}})
        assert_problem(r, 422, field="config.start_tls")
        assert not (open_relay.relay.received or auth_relay.relay.received)  # nothing sent

    r = await check(_smtp_account(closed_port()))
    assert_problem(r, 422, field="config.port")
    r = await check(_smtp_account(587, host="no-such-relay.invalid"))
    assert_problem(r, 422, field="config.host")

    # Other providers have nothing to check here; another sub-account's account is unknown.
    twilio = await add_provider(api, tenant, tenant.sa1, tenant.sa1_key)
    assert_problem(await api.post(f"{url}/{twilio}/test", headers=h), 409,
                   "provider_test_unsupported")
    r = await api.post(f"/v1/sub-accounts/{tenant.sa2}/providers", headers=auth(tenant.sa2_key),
                       json=_smtp_account(25))
    other = r.json()["id"]
    assert_problem(await api.post(f"{url}/{other}/test", headers=h), 404)
    assert_problem(await api.post(f"/v1/sub-accounts/{tenant.sa2}/providers/{other}/test",
                                  headers=h), 404, "sub_account_not_found")


async def test_a_relay_that_never_greets_fails_the_check_within_its_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts, says nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        creds = ProviderCredentials("smtp", "", "", config={"host": "127.0.0.1", "port": port})
        with pytest.raises(RelayCheckFailed) as failed:
            await check_relay(creds, timeout=0.5)
        assert failed.value.field == "config.port", failed.value.message
    finally:
        server.close()


# --- 3. a CSV naming one field twice --------------------------------------------------------


@pytest.mark.parametrize("header, named", [
    ("phone,email,Email", "columns 2 (`email`) and 3 (`Email`) are both email"),
    ("Phone Number,first_name,Mobile", "columns 1 (`Phone Number`) and 3 (`Mobile`)"),
    ("email,Tags,tag", "are both tags"),
    ("phone,Plan, Plan ", "columns 2 (`Plan`) and 3 (`Plan`) are both plan"),
    ("phone,Plan,plan", "columns 2 (`Plan`) and 3 (`plan`) are both plan"),
])
def test_a_field_named_twice_refuses_the_file(header: str, named: str) -> None:
    with pytest.raises(ValidationFailed) as refused:
        imports.parse_csv(f"{header}\n+12125550100,a@example.com,x\n".encode(), "US")
    assert named in refused.value.detail and refused.value.errors[0].code == "duplicate_column"


def test_unnamed_and_distinct_columns_are_not_duplicates() -> None:
    records, errors, total = imports.parse_csv(
        b"phone,,Plan,tier,\n+12125550100,,gold,silver,\n", "US")
    assert (len(records), total) == (1, 1)
    assert records[0][8] == {"plan": "gold", "tier": "silver"}
    assert all(e[0] == 0 for e in errors), errors  # only notes on renamed columns


async def test_an_import_naming_a_field_twice_fails_saying_which_columns(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant
) -> None:
    url, h = f"/v1/sub-accounts/{tenant.sa1}/contacts/imports", auth(tenant.sa1_key)
    r = await api.post(url, headers={**h, "Content-Type": "text/csv"},
                       content=b"phone,Mobile\n+12125550100,+12125550101\n")
    assert r.status_code == 202, r.text

    async def finished() -> dict[str, Any] | None:
        job: dict[str, Any] = (await api.get(f"{url}/{r.json()['id']}", headers=h)).json()
        return job if job["status"] in ("completed", "failed") else None
    job = await wait_for(finished, timeout=60)
    assert job["status"] == "failed", job
    assert "columns 1 (`phone`) and 2 (`Mobile`) are both phone" in job["error"], job
    assert await hub.pool.fetchval("SELECT count(*) FROM contacts") == 0


# --- 4. a NUL in a receipt that beats its message ----------------------------------------


async def test_an_early_receipt_holding_a_nul_is_applied_when_its_message_appears(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, settings: Settings
) -> None:
    pa = await add_provider(api, tenant, tenant.sa1, tenant.sa1_key)
    later = uuid.uuid4()
    body = urlencode({"MessageSid": "SM" + "9" * 32, "MessageStatus": "undelivered",
                      "AccountSid": "acctid", "ErrorCode": "30003", "To": f"+1{NUL}",
                      "ErrorMessage": f"Unreachable{NUL}handset"})
    r = await post_twilio(api, settings, STATUS, body, query=f"message_id={later}")
    assert r.status_code == 204, r.text

    async def orphaned() -> bool:
        return bool(await hub.pool.fetchval(
            "SELECT status = 'orphan' FROM webhook_events"))
    await wait_for(orphaned, timeout=20)

    await insert_message(hub, tenant.sa1, pa, status="sent", id_=later)

    async def final() -> dict[str, Any] | None:
        row = await hub.pool.fetchrow("SELECT status, error, payload FROM webhook_events")
        return dict(row) if row and row["status"] not in ("orphan", "pending") else None
    row = await wait_for(final, timeout=30, every=0.2)
    assert row["status"] == "applied", row
    m = await message(hub, later)
    assert (m["status"], m["error_code"]) == ("undelivered", "30003"), m
    payload = json.loads(row["payload"]) if isinstance(row["payload"], str) else row["payload"]
    assert payload["form"]["ErrorMessage"] == "Unreachable\ufffdhandset"
