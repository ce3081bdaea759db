"""Two send errors a user review found, against the real parts. A relay's hard bounce at RCPT
(550 5.1.1) suppresses the address, as a SendGrid bounce does, while a 4xx, a policy refusal
or a bare 550 does not. A SendGrid account pointed at a dead port backs off instead of
dialling it at the campaign's rate, says why the campaign does not move, and sends every
message once when the base URL is fixed."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope, Session
from aiosmtplib import SMTPResponseException

from actors.ring import sender_owner
from actors.sender import SenderConfig, SenderCore
from actors.shells import adapters_for
from channels.base import ErrorKind, SendError
from channels.smtp import classify_smtp_failure, unknown_mailbox
from hub import actions, campaign_actions, sending
from hub.context import Hub
from tests.conftest import Tenant, assert_problem, auth
from tests.test_review_edges import NoAuthRelay, _smtp_account
from tests.test_scheduler_tick import _principal
from tests.test_sending import carrier, carrier_log, carrier_requests, wait_for
from tests.test_smtp import closed_port, smtp_server
from tests.test_webhooks import add_sender

__all__ = ["carrier", "carrier_log"]  # fixtures

#: What the relay answers at RCPT, by the recipient's local part.
REPLIES = {
    "gone": "550 5.1.1 <gone@example.org>: Recipient address rejected: User unknown",
    "nomx": "556 5.1.10 Recipient address has null MX",
    "full": "552 5.2.2 Mailbox full",
    "spam": "550 5.7.1 Message rejected as spam",
    "bare": "550 Requested action not taken: mailbox unavailable",
}


class PickyRelay(NoAuthRelay):
    async def handle_RCPT(self, server: SMTPServer, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        reply = REPLIES.get(address.split("@")[0])
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"


@pytest.mark.parametrize(("reply", "bounce"), [
    (REPLIES["gone"], "5.1.1"), (REPLIES["nomx"], "5.1.10"),
    ("550 5.1.0 Address rejected", "5.1.0"), ("553 5.1.3 Bad address syntax", "5.1.3"),
    (REPLIES["full"], None), (REPLIES["spam"], None), (REPLIES["bare"], None),
    ("553 sorry, that domain isn't in my list of allowed rcpthosts", None),
    ("550 5.1.8 Bad sender's system address", None),
    # "Try again later", even about the address: re-queued, never a bounce (the e2e test
    # below cannot send one: a 4xx holds the whole sender back for a minute).
    ("450 4.1.1 Mailbox temporarily unavailable", None), ("451 4.2.1 Try again later", None),
])
def test_which_refusals_are_hard_bounces(reply: str, bounce: str | None) -> None:
    code, text = int(reply[:3]), reply[4:]
    error = classify_smtp_failure(SMTPResponseException(code, text), "recipient")
    assert unknown_mailbox(error) == bounce
    # The same words after DATA are a content refusal, never the address's fault.
    after_data = classify_smtp_failure(SMTPResponseException(code, text), "data")
    assert unknown_mailbox(after_data) is None
    assert unknown_mailbox(SendError(ErrorKind.REJECTED, reply, str(code))) is None


async def test_a_hard_bounce_suppresses_the_address_and_nothing_else_does(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant
) -> None:
    sa, h = f"/v1/sub-accounts/{tenant.sa1}", auth(tenant.sa1_key)
    async with smtp_server(PickyRelay()) as server:
        r = await api.post(f"{sa}/providers", headers=h, json=_smtp_account(server.port))
        assert r.status_code == 201, r.text
        await add_sender(api, tenant.sa1, tenant.sa1_key, r.json()["id"],
                         address="desk@example.com", channel="email", kind="email")

        async def send(to: str) -> httpx.Response:
            return await api.post(f"{sa}/messages", headers={**h, "Idempotency-Key": to},
                                  json={"channel": "email", "to": to, "subject": "Hello",
                                        "body": "See you at 3pm."})

        ids = {}
        for local in ("gone", "spam", "bare", "full", "ok"):
            r = await send(f"{local}@example.org")
            assert r.status_code == 202, r.text
            ids[local] = r.json()["id"]

        async def settled() -> dict[str, dict[str, Any]] | None:
            got = {k: (await api.get(f"{sa}/messages/{i}", headers=h)).json()
                   for k, i in ids.items()}
            done = all(m["status"] not in ("queued", "sending") for m in got.values())
            return got if done else None

        got = await wait_for(settled, timeout=60)
        assert {k: m["status"] for k, m in got.items()} == {
            "gone": "failed", "spam": "failed", "bare": "failed", "full": "failed",
            "ok": "sent"}

        r = await api.get(f"{sa}/suppressions", headers=h, params={"channel": "email"})
        assert r.status_code == 200, r.text
        rows = r.json()["data"]
        assert [(s["address"], s["source"], s["created_by"]) for s in rows] == [
            ("gone@example.org", "bounce", "smtp")]
        assert "5.1.1" in rows[0]["reason"]

        # The bounced address is refused up front now; the others still go out.
        assert_problem(await send("Gone@Example.org"), 409, "recipient_suppressed",
                       field="to")
        assert (await send("spam@example.org")).status_code == 202
        # Another sub-account of the agency is not affected.
        r = await api.get(f"/v1/sub-accounts/{tenant.sa2}/suppressions",
                          headers=auth(tenant.sa2_key), params={"channel": "email"})
        assert r.json()["data"] == []
        assert server.relay.received and all(
            rec.rcpt_tos == ["ok@example.org"] for rec in server.relay.received)


# ---------------------------------------------------------------- an unreachable provider


async def _campaign(hub: Hub, sa: dict[str, Any]) -> dict[str, Any]:
    """A campaign for the messages to belong to: its stats are what the page shows."""
    return await campaign_actions.do_create_campaign(hub, sa, {
        "name": "newsletter", "channel": "email", "audience": {"tags_any": ["news"]},
        "subject": "News", "body": "Hello", "failure_threshold": 1.0})


async def test_an_unreachable_provider_backs_off_says_why_and_loses_nothing(
    hub: Hub, carrier: Any, carrier_log: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A campaign's email at 50/s to a SendGrid account whose base_url is a dead port: in
    4 s the shard dials it a handful of times, not 200; the campaign's stats name the error;
    fixed, each message reaches the carrier exactly once. The sub-account sits on a slot no
    running shard owns, so only the SenderCore under test sends its messages."""
    slot, n = 9_201, 40
    owner = sender_owner("email", 0)
    principal = await _principal(hub)
    sa = await actions.do_create_sub_account(hub, principal, {"name": "unreachable"})
    await hub.pool.execute("UPDATE sub_accounts SET slot = $2 WHERE id = $1", sa["id"], slot)
    dead = f"http://127.0.0.1:{closed_port()}"
    provider = await actions.do_create_provider_account(hub, sa["id"], {
        "provider": "sendgrid", "name": "sg", "account_id": "mail",
        "secret": "SG.sandbox-key", "base_url": dead})
    sender = await actions.do_create_sender(hub, sa, {
        "provider_account_id": provider["id"], "channel": "email", "kind": "email",
        "address": "news@example.com", "mps": 50})
    c = await _campaign(hub, sa)
    messages = [await sending.do_send_message(
        hub, sa, {"channel": "email", "to": f"r{i}@example.org", "subject": "News",
                  "body": "Hello", "sender_id": sender["id"]},
        priority="bulk", lease_to=lambda channel, s: owner) for i in range(n)]
    await hub.pool.execute("UPDATE messages SET campaign_id = $1 WHERE id = ANY($2::uuid[])",
                           c["id"], [m["id"] for m in messages])

    caplog.set_level(logging.WARNING, logger="actors.sender")
    caplog.set_level(logging.INFO, logger="channels.sendgrid")  # last: the handler's level
    core = SenderCore(
        SenderConfig(owner=owner, channels=("email",), slots=(slot,),
                     public_url="http://127.0.0.1:9", lease_s=hub.settings.lease_s),
        hub.pool, hub.redis, hub.box, adapters_for(("email",)))
    stop = asyncio.Event()
    task = asyncio.create_task(core.run(stop))
    try:
        await asyncio.sleep(4.0)
        dials = [r for r in caplog.records
                 if r.name == "channels.sendgrid" and "connection_failed" in r.getMessage()]
        # At 50/s for 4 s a dial per request was about 200; backing off, a few steps.
        assert 1 <= len(dials) <= 12, len(dials)
        [warned, *_] = [r for r in caplog.records if r.name == "actors.sender"
                        and "could not be reached" in r.getMessage()]
        assert warned.sub_account_id == str(sa["id"])
        assert warned.provider_account_id == str(provider["id"])
        assert warned.target == dead.removeprefix("http://")
        assert "base URL" in warned.hint

        stats = await campaign_actions.campaign_stats(hub, sa, c["id"])
        assert stats["top_errors"][0]["code"] == "connection_failed"
        assert stats["counts"].get("failed", 0) == 0  # waiting, not failed

        await actions.do_update_provider_account(hub, sa["id"], provider["id"],
                                                 {"base_url": carrier.url})

        async def all_sent() -> bool:
            return bool(await hub.pool.fetchval(
                "SELECT count(*) = $2 FROM messages WHERE campaign_id = $1 AND status = 'sent'",
                c["id"], n))
        await wait_for(all_sent, timeout=60)
    finally:
        stop.set()
        await task
        for adapter in set(core.adapters.values()):
            await adapter.close()
    await asyncio.sleep(0.5)  # nothing more arrives
    to = [q["to"] for q in await carrier_requests(carrier_log) if q["channel"] == "email"]
    assert sorted(to) == sorted(m["to_address"] for m in messages)  # each exactly once
    stats = await campaign_actions.campaign_stats(hub, sa, c["id"])
    assert stats["top_errors"] == []  # sent: the reason it waited is gone
