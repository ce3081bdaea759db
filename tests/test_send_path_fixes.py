"""Defects a user review found on the send path, each shown on the real gateway, Ray shards,
PostgreSQL and the sandbox carrier (whose request log is the ground truth): a one-off email
left `sending` after delivery, the reconciler's outcomes missing from the history and the
realtime log, campaign subjects and voice scripts sent unrendered, email HTML dropped, and a
resumed campaign judged on the failures it was paused for."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from hub.context import Hub
from tests.conftest import Tenant, auth
from tests.test_campaigns import make_campaign, stats, tenant
from tests.test_sending import carrier, carrier_log, carrier_requests, setup_sms, wait_for
from tests.test_webhooks import add_provider, add_sender

__all__ = ["carrier", "carrier_log", "tenant"]  # fixtures shared with other modules


async def setup_email(api: httpx.AsyncClient, tenant: Tenant, carrier_url: str) -> str:
    """A SendGrid account on the carrier and an email sender; returns the account's id."""
    pa = await add_provider(api, tenant, tenant.sa1, tenant.sa1_key, provider="sendgrid",
                            account_id="sg", secret="SG.test", base_url=carrier_url)
    await add_sender(api, tenant.sa1, tenant.sa1_key, pa, address="news@acme.example",
                     channel="email", kind="email")
    return pa


async def message(api: httpx.AsyncClient, tenant: Tenant, mid: Any) -> dict[str, Any]:
    r = await api.get(f"/v1/sub-accounts/{tenant.sa1}/messages/{mid}",
                      headers=auth(tenant.sa1_key))
    assert r.status_code == 200, r.text
    return dict(r.json())


async def history(hub: Hub, mid: Any) -> list[tuple[str, str | None]]:
    rows = await hub.pool.fetch("SELECT status, error_code FROM message_events "
                                "WHERE message_id = $1 ORDER BY id", uuid.UUID(str(mid)))
    return [(r["status"], r["error_code"]) for r in rows]


async def logged_statuses(hub: Hub, mid: Any) -> list[str]:
    """The statuses the realtime log carried for this message (what the feed publishes)."""
    rows = await hub.pool.fetch(
        """SELECT data->>'status' AS status FROM events
           WHERE type = 'message.status_updated' AND data->>'id' = $1 ORDER BY seq""",
        str(mid))
    return [r["status"] for r in rows]


# --- 1. a one-off email --------------------------------------------------------------------


async def test_a_one_off_email_is_recorded_sent_once(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, carrier: Any,
    carrier_log: httpx.AsyncClient
) -> None:
    await setup_email(api, tenant, carrier.url)
    r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/messages",
                       headers={**auth(tenant.sa1_key), "Idempotency-Key": "receipt"},
                       json={"channel": "email", "to": "pat@example.com",
                             "subject": "Your receipt", "body": "Thanks for your order"})
    assert r.status_code == 202, r.text
    mid = r.json()["id"]

    async def sent() -> dict[str, Any] | None:
        m = await message(api, tenant, mid)
        return m if m["status"] == "sent" else None

    final = await wait_for(sent, timeout=30)
    emails = [q for q in await carrier_requests(carrier_log) if q["channel"] == "email"]
    assert [(q["to"], q["subject"], q["message_id"]) for q in emails] == [
        ("pat@example.com", "Your receipt", mid)]
    assert final["provider_message_id"]
    assert ("sent", None) in await history(hub, mid)
    assert "sent" in await logged_statuses(hub, mid)


# --- 2. the reconciler's outcomes ----------------------------------------------------------


async def test_a_hung_send_found_at_the_provider_is_recorded_and_published(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, carrier: Any,
    carrier_log: httpx.AsyncClient
) -> None:
    await setup_sms(api, tenant, carrier.url)
    # The carrier takes the text and never answers: the shard gives up (in doubt) and the
    # Supervisor finds the text in the carrier's own records.
    await carrier_log.post("/sandbox/config", json={"hang_rate": 1.0, "hang_max_s": 120})
    try:
        r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/messages",
                           headers={**auth(tenant.sa1_key), "Idempotency-Key": "hung"},
                           json={"to": "+14155550161", "body": "Your code is 1234"})
        assert r.status_code == 202, r.text
        mid = r.json()["id"]

        async def sent() -> dict[str, Any] | None:
            m = await message(api, tenant, mid)
            return m if m["status"] == "sent" else None

        final = await wait_for(sent, timeout=90, every=0.5)
    finally:
        await carrier_log.post("/sandbox/config", json={"hang_rate": 0.0})
    texts = [q for q in await carrier_requests(carrier_log) if q["to"] == "+14155550161"]
    assert len(texts) == 1 and texts[0]["hung"]
    assert final["provider_message_id"] == texts[0]["provider_sid"]
    assert not await hub.pool.fetchval("SELECT in_doubt FROM messages WHERE id = $1",
                                       uuid.UUID(mid))
    assert ("sent", None) in await history(hub, mid)
    assert "sent" in await logged_statuses(hub, mid)


async def _stale_sending(hub: Hub, tenant: Tenant, channel: str, to: str,
                         subject: str | None = None) -> uuid.UUID:
    """A message as a shard that died after its `sending` commit leaves it: `sending`
    under a lease that expired a while ago, never seen by the provider."""
    sender = await hub.pool.fetchrow(
        "SELECT id, provider_account_id, address FROM senders WHERE sub_account_id = $1 "
        "AND channel = $2", uuid.UUID(tenant.sa1), channel)
    mid: uuid.UUID = await hub.pool.fetchval(
        """INSERT INTO messages (sub_account_id, direction, channel, priority, sender_id,
               provider_account_id, from_address, to_address, subject, body, status, attempts,
               slot, lease_owner, lease_expires_at, updated_at)
           SELECT $1, 'outbound', $2, 'transactional', $3, $4, $5, $6, $7,
                  'Left behind by a dead shard', 'sending', 1, s.slot, 'sender:gone:9',
                  now() - interval '30 s', now() - interval '60 s'
           FROM sub_accounts s WHERE s.id = $1 RETURNING id""",
        uuid.UUID(tenant.sa1), channel, sender["id"], sender["provider_account_id"],
        sender["address"], to, subject)
    return mid


async def test_requeued_and_unknown_outcomes_are_recorded_and_published(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, carrier: Any,
    carrier_log: httpx.AsyncClient
) -> None:
    await setup_sms(api, tenant, carrier.url)
    await setup_email(api, tenant, carrier.url)
    text = await _stale_sending(hub, tenant, "sms", "+14155550171")
    email = await _stale_sending(hub, tenant, "email", "lee@example.com", subject="Hello")

    async def settled() -> bool:
        return (await message(api, tenant, text))["status"] == "sent" and \
            (await message(api, tenant, email))["status"] == "failed"

    await wait_for(settled, timeout=60, every=0.5)
    # Not at the carrier: queued again, then sent once by a live shard.
    assert [q["to"] for q in await carrier_requests(carrier_log)].count("+14155550171") == 1
    assert await history(hub, text) == [("queued", None), ("sent", None)]
    assert await logged_statuses(hub, text) == ["queued", "sent"]
    # SendGrid cannot be asked: the outcome is unknown, and the history says so.
    failed = await message(api, tenant, email)
    assert failed["error_code"] == "outcome_unknown"
    assert await history(hub, email) == [("failed", "outcome_unknown")]
    assert await logged_statuses(hub, email) == ["failed"]
    assert not [q for q in await carrier_requests(carrier_log) if q["to"] == "lee@example.com"]


# --- 3, 4. campaign subjects and voice scripts --------------------------------------------


async def _launched_emails(api: httpx.AsyncClient, tenant: Tenant,
                           carrier_log: httpx.AsyncClient, campaign: dict[str, Any],
                           n: int) -> list[dict[str, Any]]:
    """Launch the campaign; the carrier's requests for its `n` emails."""
    r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/campaigns/{campaign['id']}/launch",
                       headers=auth(tenant.sa1_key))
    assert r.status_code == 200, r.text

    async def delivered() -> list[dict[str, Any]] | None:
        emails = [q for q in await carrier_requests(carrier_log) if q["channel"] == "email"]
        return emails if len(emails) == n else None

    found: list[dict[str, Any]] = await wait_for(delivered, timeout=30)
    return found


async def test_email_campaign_subjects_are_rendered_per_recipient(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, carrier: Any,
    carrier_log: httpx.AsyncClient
) -> None:
    await setup_email(api, tenant, carrier.url)
    await hub.pool.execute(
        """INSERT INTO contacts (sub_account_id, email, email_key, first_name, timezone, tags)
           VALUES ($1, 'pat@example.com', 'pat@example.com', 'Pat', 'Etc/GMT', '{all}'),
                  ($1, 'lee@example.com', 'lee@example.com', '', 'Etc/GMT', '{all}')""",
        uuid.UUID(tenant.sa1))
    c = await make_campaign(api, tenant, channel="email", body="Hi {{first_name}}",
                            subject='{{first_name | default: "Friend"}}, our spring offers '
                                    "are here")
    emails = await _launched_emails(api, tenant, carrier_log, c, 2)
    assert sorted((q["to"], q["subject"]) for q in emails) == [
        ("lee@example.com", "Friend, our spring offers are here"),
        ("pat@example.com", "Pat, our spring offers are here")]
    subjects = await hub.pool.fetch("SELECT to_address, subject FROM messages "
                                    "WHERE campaign_id = $1 ORDER BY to_address",
                                    uuid.UUID(c["id"]))
    assert [r["subject"] for r in subjects] == ["Friend, our spring offers are here",
                                                "Pat, our spring offers are here"]


async def test_voice_campaigns_say_the_rendered_script(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, carrier: Any,
    carrier_log: httpx.AsyncClient
) -> None:
    h = auth(tenant.sa1_key)
    pa = await add_provider(api, tenant, tenant.sa1, tenant.sa1_key, account_id="AC" + "b" * 32,
                            secret="sandbox-token", base_url=carrier.url)
    await add_sender(api, tenant.sa1, tenant.sa1_key, pa, address="+12125550190",
                     channel="voice", kind="long_code")
    await hub.pool.execute(
        """INSERT INTO contacts (sub_account_id, phone, first_name, custom_fields, timezone,
                                 tags)
           VALUES ($1, '+14155550191', 'Pat', '{"code": "42"}', 'Etc/GMT', '{all}')""",
        uuid.UUID(tenant.sa1))
    c = await make_campaign(api, tenant, channel="voice", body="Hello {{first_name}}",
                            voice={"say": "Hello {{first_name}}, code {{custom.code}}",
                                   "voicemail_say": "Sorry we missed you, {{first_name}}"})
    r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/campaigns/{c['id']}/launch", headers=h)
    assert r.status_code == 200, r.text

    async def called() -> list[dict[str, Any]] | None:
        calls = [q for q in await carrier_requests(carrier_log) if q["channel"] == "voice"]
        return calls or None

    calls = await wait_for(called, timeout=30)
    assert len(calls) == 1 and calls[0]["to"] == "+14155550191"
    # With a voicemail variant the call waits for AMD and asks the hub's route for its
    # TwiML (what each answerer hears: tests/test_voicemail_amd.py); nothing inline.
    assert calls[0]["twiml"] is None and calls[0]["machine_detection"] == "DetectMessageEnd"
    assert calls[0]["url"] == (f"{hub.settings.base_url}/v1/providers/twilio/voice/twiml"
                               f"?message_id={calls[0]['message_id']}")
    voice = await hub.pool.fetchval("SELECT voice FROM messages WHERE campaign_id = $1",
                                    uuid.UUID(c["id"]))
    assert (voice["say"], voice["voicemail_say"]) == ("Hello Pat, code 42",
                                                      "Sorry we missed you, Pat")


# --- 6. email HTML ------------------------------------------------------------------------


async def test_email_html_reaches_the_provider(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, carrier: Any,
    carrier_log: httpx.AsyncClient
) -> None:
    await setup_email(api, tenant, carrier.url)
    r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/messages",
                       headers={**auth(tenant.sa1_key), "Idempotency-Key": "html"},
                       json={"channel": "email", "to": "sam@example.com", "subject": "Receipt",
                             "body": "Thanks", "html": "<p>Thanks, <b>Sam</b></p>"})
    assert r.status_code == 202, r.text
    await hub.pool.execute(
        """INSERT INTO contacts (sub_account_id, email, email_key, first_name, timezone, tags)
           VALUES ($1, 'pat@example.com', 'pat@example.com', 'Pat', 'Etc/GMT', '{all}')""",
        uuid.UUID(tenant.sa1))
    c = await make_campaign(api, tenant, channel="email", subject="News", body="Hi",
                            html="<h1>Hi {{first_name}}</h1>")
    # The campaign's answers show the HTML part it keeps (found by review R5).
    assert c["html"] == "<h1>Hi {{first_name}}</h1>"
    got = await api.get(f"/v1/sub-accounts/{tenant.sa1}/campaigns/{c['id']}",
                        headers=auth(tenant.sa1_key))
    assert got.json()["html"] == c["html"], got.text
    emails = await _launched_emails(api, tenant, carrier_log, c, 2)
    assert sorted((q["to"], q["html"], q["body"]) for q in emails) == [
        ("pat@example.com", "<h1>Hi Pat</h1>", "Hi"),
        ("sam@example.com", "<p>Thanks, <b>Sam</b></p>", "Thanks")]


# --- 7. the sender's display name ---------------------------------------------------------


async def test_an_email_leaves_with_its_senders_display_name(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, carrier: Any,
    carrier_log: httpx.AsyncClient
) -> None:
    # Found by review R6: the sender's from_name was stored but every email left without it.
    pa = await add_provider(api, tenant, tenant.sa1, tenant.sa1_key, provider="sendgrid",
                            account_id="sg", secret="SG.test", base_url=carrier.url)
    r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/senders", headers=auth(tenant.sa1_key),
                       json={"provider_account_id": pa, "channel": "email", "kind": "email",
                             "address": "clinic@acme.example", "from_name": "Acme Clinic"})
    assert r.status_code == 201, r.text
    r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/messages",
                       headers={**auth(tenant.sa1_key), "Idempotency-Key": "named"},
                       json={"channel": "email", "to": "pat@example.com",
                             "subject": "Your visit", "body": "See you at 10"})
    assert r.status_code == 202, r.text

    async def sent() -> list[dict[str, Any]] | None:
        emails = [q for q in await carrier_requests(carrier_log) if q["channel"] == "email"]
        return emails or None

    emails = await wait_for(sent, timeout=30)
    assert [(q["to"], q["from_name"]) for q in emails] == [("pat@example.com", "Acme Clinic")]


# --- 5. a resumed campaign -----------------------------------------------------------------


async def test_a_resumed_campaign_is_judged_on_outcomes_since_the_resume(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, carrier: Any,
    carrier_log: httpx.AsyncClient
) -> None:
    # Slow enough that the pause comes with fewer outcomes than the window holds (200).
    await setup_sms(api, tenant, carrier.url, mps=20)
    await hub.pool.execute(  # 300 recipients, all in a zone whose window is open
        """INSERT INTO contacts (sub_account_id, phone, first_name, timezone, tags)
           SELECT $1, '+1415' || (4000000 + i)::text, 'Pat', 'Etc/GMT', ARRAY['all']
           FROM generate_series(1, 300) i""", uuid.UUID(tenant.sa1))
    rows = await hub.pool.fetch("SELECT phone FROM contacts WHERE sub_account_id = $1 "
                                "ORDER BY phone", uuid.UUID(tenant.sa1))
    # The carrier refuses 40% of the numbers as unreachable (Twilio 21211)...
    await carrier_log.post("/sandbox/config", json={
        "reject_to": {r["phone"]: 21211 for i, r in enumerate(rows) if i % 5 < 2}})
    c = await make_campaign(api, tenant, failure_threshold=0.2)
    base = f"/v1/sub-accounts/{tenant.sa1}/campaigns/{c['id']}"
    h = auth(tenant.sa1_key)
    try:
        assert (await api.post(f"{base}/launch", headers=h)).status_code == 200

        async def paused() -> dict[str, Any] | None:
            s = await stats(api, tenant, c["id"])
            return s if s["status"] == "paused" else None

        s = await wait_for(paused, timeout=60, every=0.3)
    finally:  # ...until the marketer fixes the list
        await carrier_log.post("/sandbox/config", json={"reject_to": {}})
    assert "paused automatically" in s["paused_reason"]
    settled = sum(s["counts"].get(k, 0) for k in ("sent", "failed"))
    assert 0 < settled <= 200, s["counts"]
    failed_before = s["counts"].get("failed", 0)
    r = await api.post(f"{base}/resume", headers=h)
    assert r.status_code == 200 and r.json()["status"] == "running", r.text

    seen: list[dict[str, Any]] = []

    async def finished() -> dict[str, Any] | None:
        seen.append(await stats(api, tenant, c["id"]))
        return seen[-1] if seen[-1]["status"] in ("completed", "paused") else None

    try:
        end = await wait_for(finished, timeout=90, every=0.3)
    except AssertionError:
        raise AssertionError(f"neither completed nor paused: {seen[-1]}") from None
    assert end["status"] == "completed", (end["status"], end.get("paused_reason"))
    assert end["counts"].get("failed", 0) <= failed_before + 20  # in flight at the pause
    tos = [q["to"] for q in await carrier_requests(carrier_log)]
    assert len(tos) == len(set(tos))
