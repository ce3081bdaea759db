"""Provider webhooks through the real gateway, PostgreSQL, Redis and sender shards: every
captured payload in tests/reference/payloads/ replayed with a signature recomputed for this
server's URL (and refused with a tampered one, writing nothing), the forward-only status
merge under every arrival order, forged and cross-tenant callbacks, receipts that beat the
send acknowledgement or the message itself, and inbound texts reaching the live feed."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twilio.request_validator import RequestValidator

from channels.base import ErrorKind, StatusUpdate
from channels.sandbox_callbacks import EventSigner
from channels.sendgrid import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_event_signature
from channels.twilio_sms import classify_twilio_error
from config.settings import Settings
from hub import twilio_signature
from hub.context import Hub
from hub.status import ACCEPTED, Status, can_transition, rank
from hub.store.sending import record_accepted
from hub.webhook_actions import Receipt, plan_merges
from tests.conftest import REFERENCE, Tenant, assert_problem, auth
from tests.test_realtime import Feed
from tests.test_sending import carrier, carrier_log, wait_for

__all__ = ["carrier", "carrier_log"]  # fixtures shared with test_sending

PAYLOADS = REFERENCE / "payloads"
COURIER = json.loads((PAYLOADS / "twilio_webhook_payloads_courier.json").read_text())
VOICE = json.loads((PAYLOADS / "twilio_voice_status_callback_samples.json").read_text())
SENDGRID = json.loads((PAYLOADS / "sendgrid_event_webhook_samples.json").read_text())
SIGNATURES = json.loads((PAYLOADS / "twilio_signature_vectors.json").read_text())
ERROR_CODES = json.loads((PAYLOADS / "twilio_error_codes_subset.json").read_text())

TOKEN = "test-twilio-token"
NUMBER = "+12028831111"  # the courier payloads' hub number
SHORT_CODE = "384387"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
TABLES = ("webhook_events", "messages", "message_events", "contacts", "conversations",
          "suppressions", "events")


# --- helpers ---------------------------------------------------------------------------


async def counts(hub: Hub) -> dict[str, int]:
    return {t: await hub.pool.fetchval(f"SELECT count(*) FROM {t}") for t in TABLES}


async def settled(hub: Hub) -> None:
    """Every stored webhook event has been applied (or parked as orphan/ignored)."""
    async def done() -> bool:
        return not await hub.pool.fetchval(
            "SELECT count(*) FROM webhook_events WHERE status = 'pending'")
    await wait_for(done, timeout=20, every=0.05)


async def add_provider(api: httpx.AsyncClient, tenant: Tenant, sa: str, key: str, *,
                       provider: str = "twilio", account_id: str = "acctid",
                       secret: str = TOKEN, config: dict[str, Any] | None = None,
                       base_url: str | None = None) -> str:
    body: dict[str, Any] = {"provider": provider, "name": provider, "account_id": account_id,
                            "secret": secret, "config": config or {}}
    if base_url:
        body["base_url"] = base_url
    r = await api.post(f"/v1/sub-accounts/{sa}/providers", headers=auth(key), json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def add_sender(api: httpx.AsyncClient, sa: str, key: str, provider_id: str,
                     address: str = NUMBER, channel: str = "sms",
                     kind: str = "long_code") -> str:
    r = await api.post(f"/v1/sub-accounts/{sa}/senders", headers=auth(key), json={
        "provider_account_id": provider_id, "channel": channel, "kind": kind,
        "address": address, "mps": 50})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def insert_message(hub: Hub, sa: str, provider_id: str, *, channel: str = "sms",
                         provider: str = "twilio", status: str = "sent",
                         provider_message_id: str | None = None, to: str = NUMBER,
                         id_: uuid.UUID | None = None, lease_owner: str | None = None,
                         priority: str = "transactional") -> uuid.UUID:
    """An outbound message as the send path leaves it (test data, written directly)."""
    mid: uuid.UUID = await hub.pool.fetchval(
        """INSERT INTO messages (id, sub_account_id, direction, channel, priority,
               provider_account_id, from_address, to_address, body, status, provider,
               provider_message_id, lease_owner, lease_expires_at)
           VALUES (coalesce($1, gen_random_uuid()), $2, 'outbound', $3, $4, $5, 'x', $6,
                   'hello', $7, $8, $9, $10, CASE WHEN $10::text IS NULL THEN NULL
                                                  ELSE now() + interval '1 minute' END)
           RETURNING id""",
        id_, uuid.UUID(sa), channel, priority, uuid.UUID(provider_id), to, status, provider,
        provider_message_id, lease_owner)
    return mid


async def message(hub: Hub, mid: uuid.UUID) -> dict[str, Any]:
    row = await hub.pool.fetchrow("SELECT * FROM messages WHERE id = $1", mid)
    assert row is not None
    return dict(row)


def signed_url(settings: Settings, path: str, query: str = "") -> str:
    return settings.base_url + path + (f"?{query}" if query else "")


async def post_twilio(api: httpx.AsyncClient, settings: Settings, path: str, body: str, *,
                      token: str | None = TOKEN, query: str = "",
                      signature: str | None = None) -> httpx.Response:
    """POST a raw form body exactly as captured, signed for this server's URL."""
    if signature is None and token is not None:
        params = dict(parse_qsl(body, keep_blank_values=True))
        signature = RequestValidator(token).compute_signature(
            signed_url(settings, path, query), params)
    headers = {**FORM, **({"X-Twilio-Signature": signature} if signature else {})}
    return await api.post(path + (f"?{query}" if query else ""), content=body.encode(),
                          headers=headers)


def tampered(signature: str) -> str:
    return ("A" if signature[0] != "A" else "B") + signature[1:]


INBOUND = "/v1/providers/twilio/sms/inbound"
STATUS = "/v1/providers/twilio/sms/status"
VOICE_STATUS = "/v1/providers/twilio/voice/status"
EVENTS = "/v1/providers/sendgrid/events"


# --- the captured Twilio payloads ------------------------------------------------------

# name → what the hub must make of it once applied
EXPECTED: dict[str, dict[str, Any]] = {
    "receiveValid": {"body": "Msg", "media": []},
    "receiveButtonIgnored": {"body": "Msg", "media": []},
    "receiveMedia": {"body": "", "media": ["cat.jpg", "dog.jpg"], "channel": "mms"},
    "receiveMediaWithMsg": {"body": "Msg", "media": ["cat.jpg", "dog.jpg"], "channel": "mms"},
    "receiveBase64": {"body": "QmFubm9uIEV4cGxhaW5zIFRoZSBXb3JsZCAuLi4K4oCcVGhlIENhbXAgb2YgdG"
                              "hlIFNhaW50c+KA", "media": []},
    "tmsReceiveExtra": {"body": "John Cruz", "media": [], "to": SHORT_CODE},
    "waReceivePrefixlessURN": {"body": "Msg", "media": []},
    "waReceiveValid": {"ignored": "WhatsApp"},
    "waReceiveBSUIDValid": {"ignored": "WhatsApp"},
    "waReceiveFromBSUID": {"ignored": "WhatsApp"},
    "waReceiveBSUIDInvalid": {"ignored": "WhatsApp"},
    "waReceiveButtonValid": {"ignored": "WhatsApp"},
    "statusStop": {"status": "failed", "error_code": "21610", "suppressed": True},
    "statusInvalid": {"http": 400},
    "statusValid": {"status": "delivered", "error_code": None},
    "statusRead": {"status": "read", "error_code": None},
    # Throttled after Twilio accepted it: queued again with back-off, not failed (hub/requeue.py).
    "statusRateLimit": {"status": "queued", "error_code": "63018"},
    "tmsStatusExtra": {"status": "sent", "error_code": None},
}


def test_every_courier_payload_has_an_expectation() -> None:
    assert {p["name"] for p in COURIER["twilio_form_payloads"]} == set(EXPECTED)


@pytest.mark.parametrize("payload", COURIER["twilio_form_payloads"], ids=lambda p: p["name"])
async def test_courier_payload_replayed_signed_and_tampered(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, settings: Settings,
    payload: dict[str, Any]
) -> None:
    expected = EXPECTED[payload["name"]]
    raw: str = payload["raw_body"]
    params = payload["params"]
    pa = await add_provider(api, tenant, tenant.sa1, tenant.sa1_key)  # AccountSid "acctid"
    await add_sender(api, tenant.sa1, tenant.sa1_key, pa)
    await hub.pool.execute(  # short codes are provisioned by Twilio, not typed in
        """INSERT INTO senders (sub_account_id, provider_account_id, channel, kind, address,
               mps) VALUES ($1, $2, 'sms', 'short_code', $3, 100)""",
        uuid.UUID(tenant.sa1), uuid.UUID(pa), SHORT_CODE)
    inbound = payload["kind"] == "inbound_message"
    path = INBOUND if inbound else STATUS
    mid = None
    if not inbound:
        mid = await insert_message(hub, tenant.sa1, pa, provider_message_id=params["MessageSid"])

    # Refused, writing nothing: the payload's own signature (another URL and token), a
    # tampered one, none, and a valid signature over a changed body.
    before = await counts(hub)
    own = payload["signed_example"]["X-Twilio-Signature"]
    assert_problem(await post_twilio(api, settings, path, raw, signature=own), 403)
    good = RequestValidator(TOKEN).compute_signature(signed_url(settings, path), params)
    assert_problem(await post_twilio(api, settings, path, raw, signature=tampered(good)), 403)
    assert_problem(await post_twilio(api, settings, path, raw, token=None), 403)
    changed = raw.replace("MessageSid=", "MessageSid=X", 1)
    assert_problem(await post_twilio(api, settings, path, changed, signature=good), 403)
    assert await counts(hub) == before

    r = await post_twilio(api, settings, path, raw)
    if expected.get("http") == 400:
        assert_problem(r, 400)
        assert await counts(hub) == before
        return
    assert r.status_code == (200 if inbound else 204), r.text
    if inbound:
        assert r.headers["content-type"].startswith("text/xml")
        assert r.text.endswith("<Response/>")
    await settled(hub)
    again = await post_twilio(api, settings, path, raw)  # Twilio's retry: a no-op
    assert again.status_code == r.status_code
    await settled(hub)
    inbox = await hub.pool.fetch("SELECT status, error, sub_account_id FROM webhook_events")
    assert len(inbox) == 1

    if "ignored" in expected:
        assert inbox[0]["status"] == "ignored" and expected["ignored"] in inbox[0]["error"]
        assert not await hub.pool.fetchval("SELECT count(*) FROM messages")
    elif inbound:
        assert inbox[0]["status"] == "applied" and str(inbox[0]["sub_account_id"]) == tenant.sa1
        rows = await hub.pool.fetch("SELECT * FROM messages")
        assert len(rows) == 1
        m = rows[0]
        assert (m["direction"], m["status"], m["provider_message_id"]) == (
            "inbound", "received", params["MessageSid"])
        assert m["body"] == expected["body"] and list(m["media_urls"]) == expected["media"]
        assert m["channel"] == expected.get("channel", "sms")
        assert m["from_address"] == "+14133881111" and m["to_address"] == expected.get(
            "to", NUMBER)
        contact = await hub.pool.fetchrow("SELECT * FROM contacts WHERE id = $1",
                                          m["contact_id"])
        assert contact["phone"] == "+14133881111"
        conv = await hub.pool.fetchrow("SELECT * FROM conversations WHERE id = $1",
                                       m["conversation_id"])
        assert conv["unread_count"] == 1 and conv["last_message_at"] is not None
    else:
        assert mid is not None
        m = await message(hub, mid)
        assert (m["status"], m["error_code"]) == (expected["status"], expected["error_code"])
        sup = await hub.pool.fetchrow("SELECT * FROM suppressions WHERE address = $1", NUMBER)
        if expected.get("suppressed"):
            assert sup is not None and sup["reason"] == "provider 21610"
            assert sup["channel"] == "sms" and sup["removed_at"] is None
        else:
            assert sup is None


def test_twilio_signature_vectors() -> None:
    for v in SIGNATURES["vectors"]:
        if "raw_body" in v:
            continue  # the JSON-body variant: no webhook of ours uses it
        params = v.get("params") or v.get("params_multi")
        sig = v.get("expected_signature") or v.get("signature")
        assert twilio_signature.valid(v["auth_token"], v["url"], params, sig) == v["valid"], \
            v["case"]


@pytest.mark.parametrize("sample", VOICE["samples"], ids=lambda s: s["label"])
async def test_voice_status_samples(hub: Hub, api: httpx.AsyncClient, tenant: Tenant,
                                    settings: Settings, sample: dict[str, Any]) -> None:
    params = sample["params"]
    pa = await add_provider(api, tenant, tenant.sa1, tenant.sa1_key,
                            account_id=params["AccountSid"])
    mid = await insert_message(hub, tenant.sa1, pa, channel="voice", status="sending",
                               provider_message_id=params["CallSid"])
    body = urlencode(params)
    query = f"message_id={mid}"
    assert_problem(await post_twilio(api, settings, VOICE_STATUS, body, token="wrong",
                                     query=query), 403)
    r = await post_twilio(api, settings, VOICE_STATUS, body, query=query)
    assert r.status_code == 204, r.text
    await settled(hub)
    m = await message(hub, mid)
    assert m["status"] == "delivered" and m["delivered_at"] is not None  # completed


async def test_error_code_table_only_21610_suppresses(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, settings: Settings
) -> None:
    pa = await add_provider(api, tenant, tenant.sa1, tenant.sa1_key)
    codes = sorted(ERROR_CODES["messaging_relevant"], key=int)
    ids = {}
    for i, code in enumerate(codes):
        ids[code] = await insert_message(hub, tenant.sa1, pa, provider_message_id=f"SMe{i:031x}",
                                         to=f"+1415555{i:04d}")

    async def post(code: str) -> None:
        body = urlencode({"MessageSid": f"SMe{codes.index(code):031x}",
                          "MessageStatus": "undelivered", "ErrorCode": code,
                          "AccountSid": "acctid"})
        r = await post_twilio(api, settings, STATUS, body, query=f"message_id={ids[code]}")
        assert r.status_code == 204, r.text

    await asyncio.gather(*(post(c) for c in codes))
    await settled(hub)
    rows = await hub.pool.fetch("SELECT id, status, error_code FROM messages")
    # Throttling after acceptance (30022, 63018…) is queued again, never a failure.
    throttled = {c for c in codes
                 if classify_twilio_error(None, c, "undelivered").kind == ErrorKind.THROTTLED}
    assert {"30022", "63018"} <= throttled
    assert {r["id"]: (r["status"], r["error_code"]) for r in rows} == {
        ids[c]: ("queued" if c in throttled else "undelivered", c) for c in codes}
    sups = await hub.pool.fetch("SELECT address, reason FROM suppressions")
    assert [(s["address"], s["reason"]) for s in sups] == [
        (f"+1415555{codes.index('21610'):04d}", "provider 21610")]


# --- the status lifecycle --------------------------------------------------------------

RECEIPTS = {"sent": "", "delivered": "", "undelivered": "30003", "failed": "30008", "read": ""}


async def test_every_arrival_order_with_duplicates_ends_the_same(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, settings: Settings
) -> None:
    pa = await add_provider(api, tenant, tenant.sa1, tenant.sa1_key)
    orders = list(itertools.permutations(RECEIPTS))
    assert len(orders) == 120
    mids = [await insert_message(hub, tenant.sa1, pa, status="sending",
                                 provider_message_id=f"SM{i:032x}") for i in range(len(orders))]
    gate = asyncio.Semaphore(16)

    async def replay(i: int, order: tuple[str, ...]) -> None:
        # Each callback applied before the next is sent, so the order really is `order`;
        # every third one is sent twice, and the first once more at the end.
        steps = [s for k, s in enumerate(order) for _ in range(2 if k % 3 == 0 else 1)]
        async with gate:
            for status in [*steps, order[0]]:
                body = urlencode({"MessageSid": f"SM{i:032x}", "MessageStatus": status,
                                  "ErrorCode": RECEIPTS[status], "AccountSid": "acctid"})
                r = await post_twilio(api, settings, STATUS, body, query=f"message_id={mids[i]}")
                assert r.status_code == 204, r.text

                async def applied() -> bool:
                    return not await hub.pool.fetchval(
                        "SELECT count(*) FROM webhook_events WHERE status = 'pending' "
                        "AND payload->>'url' LIKE $1", f"%{mids[i]}")
                await wait_for(applied, timeout=20, every=0.02)

    await asyncio.gather(*(replay(i, o) for i, o in enumerate(orders)))
    rows = await hub.pool.fetch(
        """SELECT m.status, m.error_code, m.delivered_at IS NOT NULL AS d,
                  m.read_at IS NOT NULL AS r, m.failed_at IS NULL AS not_failed,
                  (SELECT count(*) FROM message_events e WHERE e.message_id = m.id) AS n
           FROM messages m""")
    assert len(rows) == 120
    assert {tuple(r.values()) for r in rows} == {("read", None, True, True, True, 5)}
    assert await hub.pool.fetchval("SELECT count(*) FROM webhook_events") == 600
    moved = await hub.pool.fetch(
        """SELECT data->>'id' AS id, count(*) AS n FROM events
           WHERE type = 'message.status_updated' GROUP BY 1""")
    assert len(moved) == 120 and all(1 <= r["n"] <= 5 for r in moved)


def test_a_batch_of_receipts_ends_where_one_at_a_time_does() -> None:
    """The set-based merge (hub/webhook_actions.plan_merges) against the forward-only rule
    applied receipt by receipt (hub/status.can_transition), for every order of every subset
    of receipts, from every status a message can be in when they arrive: the same final
    status in any order, and exactly the one-by-one outcome in lifecycle order."""
    receipts = [(Status(s), RECEIPTS[s] or None) for s in RECEIPTS]
    mid = uuid.uuid4()

    def one_by_one(start: Status, order: Sequence[tuple[Status, str | None]]
                   ) -> tuple[Status, str | None, bool]:
        current, code, left = start, None, False
        for status, error in order:
            if can_transition(current, status):
                current, code = status, error
                left = left or status in ACCEPTED
        return current, code, left

    for start in (Status.SENDING, Status.SENT, Status.FAILED, Status.DELIVERED,
                  Status.CANCELED):
        for n in range(1, len(receipts) + 1):
            for order in itertools.permutations(receipts, n):
                batch = [Receipt({"id": mid, "status": start.value}, StatusUpdate(
                    "twilio", "SM1", status, status.value, error_code=error,
                    event_key=f"SM1:{status.value}")) for status, error in order]
                plan = plan_merges(batch, {(mid, r.update.event_key) for r in batch})
                final = Status(plan[0].status) if plan else start
                assert final == one_by_one(start, order)[0], (start, order)
                ordered = sorted(order, key=lambda x: rank(x[0]))
                expected = one_by_one(start, ordered)
                if plan:
                    assert (final, plan[0].error_code, plan[0].left) == expected
                else:
                    assert expected[0] == start


async def test_concurrent_receipts_for_the_same_messages_in_one_batch(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, settings: Settings
) -> None:
    """All five receipts of each message, and Twilio's retries of two of them, posted at
    once: they share inbox inserts and apply batches, and still end as one at a time."""
    pa = await add_provider(api, tenant, tenant.sa1, tenant.sa1_key)
    mids = [await insert_message(hub, tenant.sa1, pa, status="sending",
                                 provider_message_id=f"SMc{i:031x}") for i in range(40)]

    async def post(i: int, status: str) -> None:
        body = urlencode({"MessageSid": f"SMc{i:031x}", "MessageStatus": status,
                          "ErrorCode": RECEIPTS[status], "AccountSid": "acctid"})
        r = await post_twilio(api, settings, STATUS, body, query=f"message_id={mids[i]}")
        assert r.status_code == 204, r.text

    await asyncio.gather(*(post(i, s) for i in range(len(mids))
                           for s in [*RECEIPTS, "sent", "undelivered"]))
    await settled(hub)
    rows = await hub.pool.fetch(
        """SELECT m.status, m.error_code, m.sent_at IS NOT NULL AS s,
                  m.delivered_at IS NOT NULL AS d, m.read_at IS NOT NULL AS r,
                  m.failed_at IS NULL AS not_failed,
                  (SELECT count(*) FROM message_events e WHERE e.message_id = m.id) AS n
           FROM messages m""")
    assert {tuple(r.values()) for r in rows} == {("read", None, True, True, True, True, 5)}
    assert await hub.pool.fetchval("SELECT count(*) FROM webhook_events") == 40 * 5
    assert not await hub.pool.fetchval(
        "SELECT count(*) FROM webhook_events WHERE status <> 'applied'")


async def test_a_rotated_token_is_refused_at_once_and_the_new_one_accepted(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, settings: Settings
) -> None:
    """Provider accounts are cached on the webhook path; a token change still takes effect
    with the next callback, and the old token's signature writes nothing."""
    pa = await add_provider(api, tenant, tenant.sa1, tenant.sa1_key)
    mids = [await insert_message(hub, tenant.sa1, pa, provider_message_id=f"SMr{i:031x}")
            for i in range(3)]

    def body(i: int) -> str:
        return urlencode({"MessageSid": f"SMr{i:031x}", "MessageStatus": "delivered",
                          "AccountSid": "acctid"})

    r = await post_twilio(api, settings, STATUS, body(0), query=f"message_id={mids[0]}")
    assert r.status_code == 204  # the account is cached now
    await settled(hub)
    r = await api.patch(f"/v1/sub-accounts/{tenant.sa1}/providers/{pa}",
                        headers=auth(tenant.sa1_key), json={"secret": "rotated-token"})
    assert r.status_code == 200, r.text
    before = await counts(hub)
    assert_problem(await post_twilio(api, settings, STATUS, body(1),
                                     query=f"message_id={mids[1]}"), 403)
    assert await counts(hub) == before
    r = await post_twilio(api, settings, STATUS, body(2), token="rotated-token",
                          query=f"message_id={mids[2]}")
    assert r.status_code == 204, r.text
    await settled(hub)
    assert [(await message(hub, m))["status"] for m in mids] == ["delivered", "sent",
                                                                  "delivered"]


async def test_receipt_before_the_send_acknowledgement(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, settings: Settings
) -> None:
    pa = await add_provider(api, tenant, tenant.sa1, tenant.sa1_key)
    # The shard committed `sending` and is waiting for Twilio's answer; the receipt wins.
    mid = await insert_message(hub, tenant.sa1, pa, status="sending", lease_owner="shard-x")
    body = urlencode({"MessageSid": "SM" + "d" * 32, "MessageStatus": "delivered",
                      "AccountSid": "acctid"})
    r = await post_twilio(api, settings, STATUS, body, query=f"message_id={mid}")
    assert r.status_code == 204
    await settled(hub)
    m = await message(hub, mid)
    assert (m["status"], m["provider_message_id"]) == ("delivered", "SM" + "d" * 32)
    async with hub.pool.acquire() as conn:  # now the send path records Twilio's answer
        await record_accepted(conn, "shard-x", [(mid, "SM" + "d" * 32, "sent")])
    m = await message(hub, mid)
    assert (m["status"], m["lease_owner"]) == ("delivered", None)


async def test_orphan_receipt_is_kept_then_applied_when_the_message_appears(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, settings: Settings
) -> None:
    pa = await add_provider(api, tenant, tenant.sa1, tenant.sa1_key)
    pa2 = await add_provider(api, tenant, tenant.sa2, tenant.sa2_key, account_id="AC2",
                             secret="other-token")
    later, forged_for = uuid.uuid4(), uuid.uuid4()
    body = urlencode({"MessageSid": "SM" + "e" * 32, "MessageStatus": "delivered",
                      "AccountSid": "acctid"})
    r = await post_twilio(api, settings, STATUS, body, query=f"message_id={later}")
    assert r.status_code == 204
    # sub-account 1's valid signature on an id that will belong to sub-account 2
    forged = urlencode({"MessageSid": "SM" + "f" * 32, "MessageStatus": "failed",
                        "AccountSid": "acctid"})
    r = await post_twilio(api, settings, STATUS, forged, query=f"message_id={forged_for}")
    assert r.status_code == 204

    async def orphaned() -> bool:
        rows = await hub.pool.fetch("SELECT status, sub_account_id FROM webhook_events")
        return len(rows) == 2 and all(
            x["status"] == "orphan" and x["sub_account_id"] is None for x in rows)
    await wait_for(orphaned, timeout=20)

    await insert_message(hub, tenant.sa1, pa, status="sending", id_=later)
    await insert_message(hub, tenant.sa2, pa2, status="sent", id_=forged_for)

    async def resolved() -> bool:
        return not await hub.pool.fetchval(
            "SELECT count(*) FROM webhook_events WHERE status = 'orphan'")
    await wait_for(resolved, timeout=30, every=0.2)
    assert (await message(hub, later))["status"] == "delivered"
    assert (await message(hub, forged_for))["status"] == "sent"
    rows = {r["payload"]["url"].rsplit("=", 1)[1]: r for r in await hub.pool.fetch(
        "SELECT payload, status, sub_account_id, error FROM webhook_events")}
    assert rows[str(later)]["status"] == "applied"
    assert str(rows[str(later)]["sub_account_id"]) == tenant.sa1
    assert rows[str(forged_for)]["status"] == "ignored"


async def test_forged_and_cross_tenant_callbacks_change_nothing(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, settings: Settings
) -> None:
    await add_provider(api, tenant, tenant.sa1, tenant.sa1_key, account_id="AC-A",
                       secret="token-a")
    pa_b = await add_provider(api, tenant, tenant.sa2, tenant.sa2_key, account_id="AC-B",
                              secret="token-b")
    victim = await insert_message(hub, tenant.sa2, pa_b, provider_message_id="SM" + "1" * 32)
    # Sub-account 1 also registers B's Account SID and B's number with a token it chose.
    fake = await add_provider(api, tenant, tenant.sa1, tenant.sa1_key, account_id="AC-B",
                              secret="attacker-token")
    await add_sender(api, tenant.sa1, tenant.sa1_key, fake)
    await add_sender(api, tenant.sa2, tenant.sa2_key, pa_b)
    before = await counts(hub)

    def status_body(sid: str) -> str:
        return urlencode({"MessageSid": "SM" + "1" * 32, "MessageStatus": "undelivered",
                          "ErrorCode": "30003", "AccountSid": sid})

    q = f"message_id={victim}"
    # A's own valid signature, on B's message
    assert_problem(await post_twilio(api, settings, STATUS, status_body("AC-A"),
                                     token="token-a", query=q), 403)
    # B's Account SID signed with the token sub-account 1 registered for it
    assert_problem(await post_twilio(api, settings, STATUS, status_body("AC-B"),
                                     token="attacker-token", query=q), 403)
    # no message id: found by Twilio's SID, still B's message
    assert_problem(await post_twilio(api, settings, STATUS, status_body("AC-B"),
                                     token="attacker-token"), 403)
    assert_problem(await post_twilio(api, settings, STATUS, status_body("AC-B"),
                                     token="token-b", query=q + "&x=1",
                                     signature=RequestValidator("token-b").compute_signature(
                                         signed_url(settings, STATUS, q),
                                         dict(parse_qsl(status_body("AC-B"))))), 403)
    assert await counts(hub) == before
    assert (await message(hub, victim))["status"] == "sent"

    # An inbound text to B's number signed by Twilio (B's token) lands in sub-account 2 only.
    inbound = urlencode({"MessageSid": "SM" + "2" * 32, "AccountSid": "AC-B", "From":
                         "+14133881111", "To": NUMBER, "Body": "hi", "NumMedia": "0"})
    r = await post_twilio(api, settings, INBOUND, inbound, token="token-b")
    assert r.status_code == 200
    await settled(hub)
    owners = await hub.pool.fetch("SELECT sub_account_id FROM messages WHERE direction = "
                                  "'inbound'")
    assert [str(o["sub_account_id"]) for o in owners] == [tenant.sa2]
    # The genuine receipt from B still applies.
    r = await post_twilio(api, settings, STATUS, status_body("AC-B"), token="token-b", query=q)
    assert r.status_code == 204
    await settled(hub)
    assert (await message(hub, victim))["status"] == "undelivered"


async def test_inbound_to_a_number_inside_a_messaging_service(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, settings: Settings
) -> None:
    service = "MG" + "0123456789abcdef" * 2
    pa = await add_provider(api, tenant, tenant.sa1, tenant.sa1_key, account_id="AC-S")
    await add_sender(api, tenant.sa1, tenant.sa1_key, pa, address=service,
                     kind="messaging_service")
    form = {"MessageSid": "SM" + "3" * 32, "AccountSid": "AC-S", "From": "+14133881111",
            "To": "+12125550142", "MessagingServiceSid": service, "Body": "hello",
            "NumMedia": "0"}
    before = await counts(hub)
    unknown = urlencode({**form, "AccountSid": "AC-unknown"})
    assert_problem(await post_twilio(api, settings, INBOUND, unknown), 403)
    elsewhere = urlencode({**form, "MessagingServiceSid": "MG" + "f" * 32})
    assert_problem(await post_twilio(api, settings, INBOUND, elsewhere), 403)
    assert await counts(hub) == before
    r = await post_twilio(api, settings, INBOUND, urlencode(form))
    assert r.status_code == 200, r.text
    await settled(hub)
    m = await hub.pool.fetchrow("SELECT * FROM messages")
    assert (str(m["sub_account_id"]), m["to_address"], m["body"]) == (
        tenant.sa1, "+12125550142", "hello")
    assert m["sender_id"] is not None


# --- inbound texts through the carrier, onto the live feed ------------------------------


async def test_inbound_sms_creates_contact_conversation_and_reaches_the_feed(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, settings: Settings, carrier: Any,
    carrier_log: httpx.AsyncClient
) -> None:
    number = "+12125550163"
    state = carrier.carrier.state  # the account the carrier will sign this number's texts as
    sid = state.owner_of(number)
    pa = await add_provider(api, tenant, tenant.sa1, tenant.sa1_key, account_id=sid,
                            secret=state.token_for(sid), base_url=carrier.url)
    await add_sender(api, tenant.sa1, tenant.sa1_key, pa, address=number)
    await carrier_log.post("/sandbox/config", json={
        "inbound_url": f"{settings.base_url}{INBOUND}"})
    feed = await Feed.open(api, tenant.sa1_key)
    try:
        await feed.subscribe(["inbox"])  # what an agent's inbox listens to
        for n, body in enumerate(["Is the 3pm slot free?", "Also, parking?"], start=1):
            r = await carrier_log.post("/sandbox/inbound", json={
                "from": "+14155550199", "to": number, "body": body,
                "media_urls": ["https://media.example/cat.jpg"] if n == 2 else []})
            assert r.json()["status"] == 200, r.text
            frames = [await feed.recv() for _ in range(2)]
            assert [f["event"] for f in frames] == ["message.created", "conversation.updated"]
            created, conv = frames[0]["data"], frames[1]["data"]
            assert created["body"] == body and created["status"] == "received"
            assert created["direction"] == "inbound" and created["from_address"] == "+14155550199"
            assert conv["unread_count"] == n and conv["last_message_preview"] == body
            assert frames[0]["topic"] == frames[1]["topic"] == f"conversation:{conv['id']}"
        assert created["media_urls"] == ["https://media.example/cat.jpg"]
        assert created["channel"] == "mms"
    finally:
        await feed.close()
        await carrier_log.post("/sandbox/config", json={"inbound_url": None})
    contacts = (await api.get(f"/v1/sub-accounts/{tenant.sa1}/contacts",
                              headers=auth(tenant.sa1_key))).json()["data"]
    assert [c["phone"] for c in contacts] == ["+14155550199"]
    convs = (await api.get(f"/v1/sub-accounts/{tenant.sa1}/conversations",
                           headers=auth(tenant.sa1_key), params={"unread": True})).json()
    assert len(convs["data"]) == 1 and convs["data"][0]["unread_count"] == 2


# --- SendGrid ----------------------------------------------------------------------------


def _sign(key: Any, timestamp: str, body: bytes) -> str:
    if isinstance(key, EventSigner):
        return key.sign(timestamp, body)
    import base64
    return base64.b64encode(key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256())
                                     )).decode()


async def post_events(api: httpx.AsyncClient, account: str | None, body: bytes, key: Any, *,
                      timestamp: str | None = None,
                      signature: str | None = None) -> httpx.Response:
    ts = timestamp or str(int(time.time()))
    sig = signature or _sign(key, ts, body)
    return await api.post(EVENTS, params={"account": account} if account else None,
                          content=body, headers={"Content-Type": "application/json",
                                                 SIGNATURE_HEADER: sig, TIMESTAMP_HEADER: ts})


def test_sendgrid_signed_vectors_verify_as_documented() -> None:
    for v in SENDGRID["signed_vectors"]:
        assert verify_event_signature(v["public_key_b64_der"], v["raw_body"].encode(),
                                      v["signature"], v["timestamp"]) == v["valid"], v["case"]


async def test_one_sendgrid_request_many_recipients(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, carrier: Any
) -> None:
    """A mail/send request's X-Message-Id is every recipient's provider id: all are recorded
    as accepted, and an event naming only that id and an address reaches its one message."""
    signer = carrier.carrier.signer
    pa = await add_provider(api, tenant, tenant.sa1, tenant.sa1_key, provider="sendgrid",
                            account_id="sg-batch", secret="SG.key",
                            config={"event_webhook_public_key": signer.public_key})
    to = ["ann@example.com", "bo@example.com", "cy@example.com"]
    mids = [await insert_message(hub, tenant.sa1, pa, channel="email", provider="sendgrid",
                                 status="sending", to=a, lease_owner="sender-test")
            for a in to]
    async with hub.pool.acquire() as conn:
        await record_accepted(conn, "sender-test", [(m, "XBATCH01", "sent") for m in mids])
    rows = [await message(hub, m) for m in mids]
    assert [(r["status"], r["provider_message_id"]) for r in rows] == [("sent", "XBATCH01")] * 3
    event = {"email": "Bo@Example.com", "event": "delivered", "timestamp": int(time.time()),
             "sg_event_id": "ev-batch-1", "sg_message_id": "XBATCH01.filterdrecv-1.0"}
    body = json.dumps([event]).encode()
    assert (await post_events(api, pa, body, signer)).status_code == 204
    await settled(hub)
    assert [(await message(hub, m))["status"] for m in mids] == ["sent", "delivered", "sent"]


async def test_sendgrid_doc_events_replayed(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, carrier: Any
) -> None:
    signer = carrier.carrier.signer
    pa = await add_provider(api, tenant, tenant.sa1, tenant.sa1_key, provider="sendgrid",
                            account_id="sg", secret="SG.key",
                            config={"event_webhook_public_key": signer.public_key})
    mid = await insert_message(hub, tenant.sa1, pa, channel="email", provider="sendgrid",
                               provider_message_id="14c5d75ce93.dfd.64b469",
                               to="example@test.com")
    body = (json.dumps(SENDGRID["doc_events"], separators=(",", ":")) + "\r\n").encode()
    before = await counts(hub)
    assert_problem(await post_events(api, None, body, signer), 403)  # no account named
    assert_problem(await post_events(api, str(uuid.uuid4()), body, signer), 403)
    assert_problem(await post_events(api, pa, body, signer,
                                     signature=_sign(signer, "1", body)), 403)
    stale = str(int(time.time()) - 11 * 60)  # a valid signature, 11 minutes old: a replay
    assert_problem(await post_events(api, pa, body, signer, timestamp=stale), 403)
    assert_problem(await post_events(api, pa, body.replace(b"example", b"exbmple"), signer,
                                     signature=_sign(signer, str(int(time.time())), body)), 403)
    assert await counts(hub) == before

    r = await post_events(api, pa, body, signer)
    assert r.status_code == 204, r.text
    r = await post_events(api, pa, body, signer)  # SendGrid's retry
    assert r.status_code == 204
    await settled(hub)
    # 12 events, two of which share an sg_event_id (the bounce and its "blocked" variant)
    assert await hub.pool.fetchval("SELECT count(*) FROM webhook_events") == 11
    m = await message(hub, mid)
    assert m["status"] == "delivered"  # processed, dropped, delivered, deferred, bounce: max
    sup = await hub.pool.fetch("SELECT channel, address, source FROM suppressions "
                               "WHERE removed_at IS NULL")
    assert [(s["channel"], s["address"]) for s in sup] == [("email", "example@test.com")]
    statuses = dict(await hub.pool.fetch(
        "SELECT status, count(*) FROM webhook_events GROUP BY status"))
    assert set(statuses) == {"applied"}, statuses

    # The variants: odd shapes, no ids; stored and settled without a crash.
    for variant in SENDGRID["doc_event_variants"]:
        events = variant["event"] if isinstance(variant["event"], list) else [variant["event"]]
        r = await post_events(api, pa, json.dumps(events).encode(), signer)
        assert r.status_code == 204, (variant["label"], r.text)
    await settled(hub)
    assert not await hub.pool.fetchval("SELECT count(*) FROM webhook_events WHERE status = "
                                       "'pending' OR error LIKE '%Error%'")


async def test_sendgrid_signed_vector_batches(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant
) -> None:
    by_case = {v["case"]: v for v in SENDGRID["signed_vectors"]}
    generated = next(v for c, v in by_case.items() if c.startswith("GENERATED: all 12"))
    key = serialization.load_pem_private_key(generated["private_key_pem_TEST_ONLY"].encode(),
                                             password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    pa = await add_provider(api, tenant, tenant.sa1, tenant.sa1_key, provider="sendgrid",
                            account_id="sg", secret="SG.key",
                            config={"event_webhook_public_key": generated["public_key_b64_der"]})
    before = await counts(hub)
    for v in SENDGRID["signed_vectors"]:
        if v["public_key_b64_der"] != generated["public_key_b64_der"]:
            continue
        # As captured: valid or not, the signature time is long past.
        r = await post_events(api, pa, v["raw_body"].encode(), None, timestamp=v["timestamp"],
                              signature=v["signature"])
        assert_problem(r, 403)
    assert await counts(hub) == before
    for v in SENDGRID["signed_vectors"]:
        if v["public_key_b64_der"] == generated["public_key_b64_der"] and v["valid"]:
            r = await post_events(api, pa, v["raw_body"].encode(), key)  # signed now
            assert r.status_code == 204, (v["case"], r.text)
    await settled(hub)
    n_events = len({e.get("sg_event_id") for v in SENDGRID["signed_vectors"]
                    if v["public_key_b64_der"] == generated["public_key_b64_der"] and v["valid"]
                    for e in json.loads(v["raw_body"])})
    assert await hub.pool.fetchval("SELECT count(*) FROM webhook_events") == n_events


# --- the fast path (gateway/webhook_fastpath.py): FastAPI's answers, metrics and docs ------


async def test_fast_path_answers_problems_counts_routes_and_keeps_the_docs(
        api: httpx.AsyncClient, hub: Hub, settings: Settings) -> None:
    before = await counts(hub)
    forged = "MessageSid=SM" + "9" * 32 + "&MessageStatus=delivered&AccountSid=AC-nobody"
    assert_problem(await post_twilio(api, settings, STATUS, forged, signature="Zm9yZ2Vk"),
                   403, "webhook_signature_invalid")
    assert_problem(await api.post(STATUS, content=b"Body=\xff\xfe", headers=FORM), 400,
                   "bad_request")

    async def chunks() -> Any:  # no Content-Length: the limit applies as the body is read
        for _ in range(settings.max_body_bytes // 65536 + 2):
            yield b"x" * 65536
    assert_problem(await api.post(STATUS, content=chunks(), headers=FORM), 413,
                   "payload_too_large", "body")
    assert_problem(await api.post(EVENTS, content=b"[]", params={"account": "nope"}), 403,
                   "webhook_signature_invalid")
    assert_problem(await api.get(VOICE_STATUS), 405)  # other methods still reach FastAPI
    assert await counts(hub) == before

    metrics = (await api.get("/metrics")).text
    for route, status in ((STATUS, 403), (STATUS, 400), (STATUS, 413), (EVENTS, 403)):
        assert (f'hub_http_requests_total{{method="POST",route="{route}",status="{status}"}}'
                in metrics), (route, status)
    paths = (await api.get("/openapi.json")).json()["paths"]
    for path in (INBOUND, STATUS, VOICE_STATUS, EVENTS):
        assert "post" in paths[path], path
    assert [p["name"] for p in paths[EVENTS]["post"]["parameters"]] == ["account"]
