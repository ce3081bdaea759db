"""The webhook inbox's claim and wake-up (hub/store/webhooks.py): one statement finds the
due rows, locks them and marks the status callbacks among them applied; the applier is
woken once an insert that stored something has committed."""

from __future__ import annotations

import asyncio
import json
import uuid
from urllib.parse import urlencode

import httpx

from config.settings import Settings
from hub.context import Hub
from hub.store import webhooks as store
from tests.conftest import Tenant
from tests.test_webhooks import STATUS, add_provider, insert_message, post_twilio

KINDS = ("sms_status", "voice_status")


async def test_claim_marks_status_rows_applied_and_leaves_other_kinds(hub: Hub) -> None:
    async with hub.pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:  # never committed: the session's applier cannot see these rows
            ids = {}
            for kind, attempts in (("sms_status", 0), ("voice_status", 2),
                                   ("sms_inbound", 0)):
                ids[kind] = await conn.fetchval(
                    """INSERT INTO webhook_events (provider, kind, event_key, payload,
                           next_attempt_at, attempts, status, error)
                       VALUES ('twilio', $1, $2, $3::jsonb, now() - interval '1 hour', $4,
                               CASE WHEN $4 > 0 THEN 'orphan' ELSE 'pending' END,
                               'an earlier try')
                       RETURNING id""",
                    kind, f"claim-test:{uuid.uuid4()}", json.dumps({}), attempts)
            claimed = await store.claim(conn, None, 10_000, KINDS)
            mine = {r["id"]: r for r in claimed if r["id"] in ids.values()}
            # Returned as they were before the claim.
            assert set(mine) == set(ids.values())
            assert mine[ids["voice_status"]]["status"] == "orphan"
            assert mine[ids["voice_status"]]["attempts"] == 2
            now = {r["id"]: dict(r) for r in await conn.fetch(
                "SELECT id, status, attempts, error, applied_at, next_attempt_at "
                "FROM webhook_events WHERE id = ANY($1::bigint[])", list(ids.values()))}
            for kind in KINDS:
                row = now[ids[kind]]
                assert row["status"] == "applied"
                assert row["error"] is None and row["next_attempt_at"] is None
                assert row["applied_at"] is not None
            assert now[ids["sms_status"]]["attempts"] == 1
            assert now[ids["voice_status"]]["attempts"] == 3
            inbound = now[ids["sms_inbound"]]
            assert (inbound["status"], inbound["attempts"]) == ("pending", 0)

            # An outcome other than applied is recorded over the claim's, attempts kept.
            await store.finish_many(conn, [store.Finished(
                ids["sms_status"], "orphan", "no message with this id yet")])
            row = await conn.fetchrow(
                "SELECT status, attempts, applied_at FROM webhook_events WHERE id = $1",
                ids["sms_status"])
            assert (row["status"], row["attempts"], row["applied_at"]) == ("orphan", 1, None)
            # Claimed by id, a row already claimed is not claimed again.
            assert await store.claim(conn, [ids["voice_status"]], 10, KINDS) == []
        finally:
            await tx.rollback()


async def test_the_applier_is_woken_once_the_insert_has_committed(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, settings: Settings
) -> None:
    pa = await add_provider(api, tenant, tenant.sa1, tenant.sa1_key)
    mid = await insert_message(hub, tenant.sa1, pa, status="sending")
    body = urlencode({"MessageSid": "SM" + "a" * 32, "MessageStatus": "sent",
                      "AccountSid": "acctid"})
    woken: asyncio.Queue[str] = asyncio.Queue()
    async with hub.pool.acquire() as conn:
        try:
            await conn.add_listener(store.INBOX_CHANNEL,
                                    lambda *a: woken.put_nowait(a[2]))
            r = await post_twilio(api, settings, STATUS, body, query=f"message_id={mid}")
            assert r.status_code == 204
            assert await asyncio.wait_for(woken.get(), 30) == store.INBOX_CHANNEL
            # What the wake-up announced is committed: visible to another session.
            assert await hub.pool.fetchval(
                "SELECT count(*) FROM webhook_events WHERE payload->>'url' LIKE $1",
                f"%{mid}%") == 1
        finally:
            conn.terminate()  # ends the LISTEN with the session
