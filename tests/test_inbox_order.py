"""Conversations list by latest activity, as an inbox does (the API's pages and the web
inbox alike), and a message's history is one entry per change of status with its source.
Real gateway, PostgreSQL, sender shards and the sandbox carrier posting signed callbacks."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from channels.sandbox import run_carrier_in_thread
from channels.sandbox_config import CarrierConfig, Latency
from config.settings import Settings
from hub.context import Hub
from hub.store import conversations as conv_store
from hub.store.messaging import status_changes
from tests.conftest import Tenant, assert_problem, auth
from tests.test_sending import setup_sms, wait_for

NUMBER = "+12125550188"
T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def live_carrier() -> Iterator[Any]:
    """A carrier that posts signed status callbacks (and inbound texts) to the gateway."""
    handle = run_carrier_in_thread(CarrierConfig(seed=31, latency=Latency(kind="fixed",
                                                                          seconds=0.05)))
    yield handle
    handle.stop()


async def _sender(api: httpx.AsyncClient, tenant: Tenant, carrier: Any) -> None:
    """The number's account as the carrier knows it, so its callbacks verify."""
    state = carrier.carrier.state
    sid = state.owner_of(NUMBER)
    await setup_sms(api, tenant, carrier.url, numbers=(NUMBER,),
                    account=(sid, state.token_for(sid)))


async def _conversations(api: httpx.AsyncClient, tenant: Tenant, **params: Any
                         ) -> list[dict[str, Any]]:
    """Every page of the list, following next_cursor."""
    url, h = f"/v1/sub-accounts/{tenant.sa1}/conversations", auth(tenant.sa1_key)
    out: list[dict[str, Any]] = []
    cursor = None
    for _ in range(50):
        r = await api.get(url, headers=h, params={**params, **({"cursor": cursor} if cursor
                                                               else {})})
        assert r.status_code == 200, r.text
        page = r.json()
        out += page["data"]
        cursor = page["next_cursor"]
        assert page["has_more"] == (cursor is not None)
        if cursor is None:
            return out
    raise AssertionError("the pages never ended")


async def test_a_thread_with_a_new_inbound_message_comes_first(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, settings: Settings, live_carrier: Any
) -> None:
    await _sender(api, tenant, live_carrier)
    h = auth(tenant.sa1_key)
    people = [f"+1415555{3000 + i}" for i in range(3)]
    threads = []
    for i, to in enumerate(people):  # the oldest thread first
        r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/messages",
                           headers={**h, "Idempotency-Key": f"order-{i}"},
                           json={"to": to, "body": f"Hello {i}"})
        assert r.status_code == 202, r.text
        threads.append(r.json()["conversation_id"])
    listed = [c["id"] for c in await _conversations(api, tenant)]
    assert listed == threads[::-1]

    # The oldest thread's contact writes back, through the carrier as Twilio would post it.
    live_carrier.configure(inbound_url=f"{settings.base_url}/v1/providers/twilio/sms/inbound")
    try:
        r = await api.post(f"{live_carrier.url}/sandbox/inbound", json={
            "from": people[0], "to": NUMBER, "body": "Still open on Sunday?"})
        assert r.json()["status"] == 200, r.text
    finally:
        live_carrier.configure(inbound_url=None)

    async def moved() -> list[str] | None:
        ids = [c["id"] for c in await _conversations(api, tenant)]
        return ids if ids[0] == threads[0] else None

    assert await wait_for(moved, timeout=20) == [threads[0], threads[2], threads[1]]
    # The web inbox lists them in the same order.
    rows = await conv_store.inbox_page(hub.pool, uuid.UUID(tenant.sa1), "all", "someone", 100)
    assert [str(r["id"]) for r in rows] == [threads[0], threads[2], threads[1]]


async def _threads(hub: Hub, tenant: Tenant) -> list[dict[str, Any]]:
    """Eight threads (written directly: test data) whose latest messages tie, differ, or
    are missing; returned in the order an inbox lists them."""
    sa = uuid.UUID(tenant.sa1)
    specs = [  # (last message, created, assignee, unread)
        (T0 + timedelta(minutes=5), T0, "ana", 1),
        (T0 + timedelta(minutes=9), T0 + timedelta(seconds=1), None, 0),
        (T0 + timedelta(minutes=5), T0 + timedelta(seconds=2), None, 2),  # ties with #0
        (None, T0 + timedelta(seconds=3), "ana", 0),
        (T0 + timedelta(minutes=1), T0 + timedelta(seconds=4), "bo", 0),
        (None, T0 + timedelta(seconds=5), None, 0),
        (T0 + timedelta(minutes=7), T0 + timedelta(seconds=6), "ana", 3),
        (T0 - timedelta(days=300), T0 + timedelta(seconds=7), None, 1),
    ]
    out = []
    for i, (last, created, assignee, unread) in enumerate(specs):
        contact = await hub.pool.fetchval(
            "INSERT INTO contacts (sub_account_id, phone) VALUES ($1, $2) RETURNING id",
            sa, f"+1415555{4000 + i}")
        row = await hub.pool.fetchrow(
            """INSERT INTO conversations (sub_account_id, contact_id, channel, unread_count,
                   last_message_at, assignee, created_at)
               VALUES ($1, $2, 'sms', $3, $4, $5, $6) RETURNING *""",
            sa, contact, unread, last, assignee, created)
        out.append(dict(row))
    never = datetime.min.replace(tzinfo=UTC)
    return sorted(out, key=lambda c: (c["last_message_at"] or never, c["created_at"], c["id"]),
                  reverse=True)


async def test_three_pages_give_every_thread_once_in_activity_order(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant
) -> None:
    expected = await _threads(hub, tenant)
    pages = []
    cursor = None
    while True:
        r = await api.get(f"/v1/sub-accounts/{tenant.sa1}/conversations",
                          headers=auth(tenant.sa1_key),
                          params={"limit": 3, **({"cursor": cursor} if cursor else {})})
        pages.append([c["id"] for c in r.json()["data"]])
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    assert [len(p) for p in pages] == [3, 3, 2]
    assert [i for p in pages for i in p] == [str(c["id"]) for c in expected]
    # Threads without a message come last, the newest of them first.
    assert [c["last_message_at"] for c in expected[-2:]] == [None, None]
    assert expected[-2]["created_at"] > expected[-1]["created_at"]
    # The other sub-account sees none of them.
    other = await api.get(f"/v1/sub-accounts/{tenant.sa2}/conversations",
                          headers=auth(tenant.sa2_key))
    assert other.json()["data"] == []


@pytest.mark.parametrize("params", [
    {"assignee": "ana"}, {"unassigned": "true"}, {"unassigned": "false"},
    {"unread": "true"}, {"unread": "false"}, {"unassigned": "true", "unread": "true"},
])
async def test_filters_page_in_activity_order(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, params: dict[str, str]
) -> None:
    expected = await _threads(hub, tenant)

    def keep(c: dict[str, Any]) -> bool:
        ok = True
        if "assignee" in params:
            ok = ok and c["assignee"] == params["assignee"]
        if "unassigned" in params:
            ok = ok and (c["assignee"] is None) == (params["unassigned"] == "true")
        if "unread" in params:
            ok = ok and (c["unread_count"] > 0) == (params["unread"] == "true")
        return ok

    want = [str(c["id"]) for c in expected if keep(c)]
    assert len(want) >= 2  # the filter leaves something to page through
    got = [c["id"] for c in await _conversations(api, tenant, limit=1, **params)]
    assert got == want
    one = expected[3]
    by_contact = await _conversations(api, tenant, contact_id=str(one["contact_id"]))
    assert [c["id"] for c in by_contact] == [str(one["id"])]


async def test_a_cursor_from_elsewhere_or_garbled_is_a_422_naming_cursor(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant
) -> None:
    await _threads(hub, tenant)
    h, base = auth(tenant.sa1_key), f"/v1/sub-accounts/{tenant.sa1}"
    conv_cursor = (await api.get(f"{base}/conversations", headers=h,
                                 params={"limit": 2})).json()["next_cursor"]
    contact_cursor = (await api.get(f"{base}/contacts", headers=h,
                                    params={"limit": 2})).json()["next_cursor"]
    assert conv_cursor and contact_cursor
    for url, cursor in [(f"{base}/conversations", "not-a-cursor"),
                        (f"{base}/conversations", contact_cursor),
                        (f"{base}/contacts", conv_cursor),
                        (f"{base}/conversations", conv_cursor[:-6])]:
        r = await api.get(url, headers=h, params={"cursor": cursor})
        assert_problem(r, 422, field="cursor")


async def test_a_delivered_text_has_one_history_entry_per_status_with_its_source(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, live_carrier: Any
) -> None:
    await _sender(api, tenant, live_carrier)
    h = auth(tenant.sa1_key)
    r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/messages",
                       headers={**h, "Idempotency-Key": "history-1"},
                       json={"to": "+14155553100", "body": "Your order is ready"})
    assert r.status_code == 202, r.text
    mid = r.json()["id"]

    async def delivered() -> dict[str, Any] | None:
        m = (await api.get(f"/v1/sub-accounts/{tenant.sa1}/messages/{mid}", headers=h)).json()
        return m if m["status"] == "delivered" else None

    detail = await wait_for(delivered, timeout=30)
    # The log holds the hub's record of the send's answer and the carrier's `sent` receipt:
    # the same status twice. The history says it once.
    sent_rows = await hub.pool.fetchval(
        "SELECT count(*) FROM message_events WHERE message_id = $1 AND status = 'sent'",
        uuid.UUID(mid))
    assert sent_rows == 2
    history = detail["history"]
    assert [e["status"] for e in history] == ["queued", "sent", "delivered"]
    assert history[0]["source"] == "hub" and history[0]["provider_status"] is None
    assert history[-1]["source"] == "provider" and history[-1]["provider_status"] == "delivered"
    assert history[-1]["error_code"] is None
    assert all(a["occurred_at"] <= b["occurred_at"] for a, b in itertools.pairwise(history))


async def test_a_text_queued_again_after_throttling_shows_each_attempt_once(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, live_carrier: Any
) -> None:
    """Twilio accepts, then fails with 30022 (rate limit): the hub queues the text again.
    Its history shows each attempt, never the throttled `failed`, which moved nothing."""
    await _sender(api, tenant, live_carrier)
    live_carrier.configure(mps=10.0, queue_limit=2, queue_overflow="30022")
    try:
        h = auth(tenant.sa1_key)
        ids = []
        for i in range(12):
            r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/messages",
                               headers={**h, "Idempotency-Key": f"throttled-history-{i}"},
                               json={"to": f"+1415555{3200 + i}", "body": f"Order {i}"})
            assert r.status_code == 202, r.text
            ids.append(uuid.UUID(r.json()["id"]))

        async def delivered() -> bool:
            return bool(await hub.pool.fetchval(
                "SELECT bool_and(status = 'delivered') FROM messages WHERE id = ANY($1)", ids))

        await wait_for(delivered, timeout=120, every=0.5)
    finally:
        live_carrier.configure(mps=0.0, queue_limit=0, queue_overflow="429")
    requeued = 0
    for mid in ids:
        attempts = await hub.pool.fetchval(
            """SELECT count(*) FROM message_events
               WHERE message_id = $1 AND provider_status = 'requeued'""", mid)
        requeued += attempts
        history = (await api.get(f"/v1/sub-accounts/{tenant.sa1}/messages/{mid}",
                                 headers=h)).json()["history"]
        statuses = [e["status"] for e in history]
        assert statuses[-1] == "delivered" and "failed" not in statuses, history
        assert statuses.count("queued") == 1 + attempts
        assert [e for e in history if e["provider_status"] == "requeued"] == [
            e for e in history[1:] if e["status"] == "queued"]
        assert all(e["error_code"] == "30022" and e["source"] == "hub"
                   for e in history if e["provider_status"] == "requeued")
    assert requeued, "the carrier never throttled: the test proves nothing"


def _event(status: str, key: str | None = None, provider_status: str | None = None,
           code: str | None = None) -> dict[str, Any]:
    return {"status": status, "provider_status": provider_status, "error_code": code,
            "event_key": key, "occurred_at": T0}


@pytest.mark.parametrize(("log", "expected"), [
    # The receipt overtook the send's answer; then a late, repeated `sent`.
    ([_event("queued"), _event("delivered", "SM1:delivered:", "delivered"),
      _event("delivered"), _event("sent", "SM1:sent:", "sent")],
     [("queued", "hub"), ("delivered", "provider")]),
    # A failure the provider reports, with its code.
    ([_event("queued"), _event("sent"), _event("undelivered", "SM1:undelivered:30003",
                                               "undelivered", "30003")],
     [("queued", "hub"), ("sent", "hub"), ("undelivered", "provider")]),
    # Throttled after acceptance: queued again (not failed), the retired attempt's late
    # receipt moves nothing, the second attempt is delivered.
    ([_event("queued"), _event("sent"), _event("failed", "SM1:failed:30022", "failed", "30022"),
      _event("queued", "SM1:requeued", "requeued", "30022"),
      _event("sent", "SM1:sent:", "sent"), _event("sent"),
      _event("delivered", "SM2:delivered:", "delivered")],
     [("queued", "hub"), ("sent", "hub"), ("queued", "hub"), ("sent", "hub"),
      ("delivered", "provider")]),
    # The throttled receipt beat the send's answer: the re-queue is still an entry.
    ([_event("queued"), _event("failed", "SM1:failed:30022", "failed", "30022"),
      _event("queued", "SM1:requeued", "requeued", "30022"), _event("sent"),
      _event("delivered", "SM2:delivered:", "delivered")],
     [("queued", "hub"), ("queued", "hub"), ("sent", "hub"), ("delivered", "provider")]),
    # Canceled before it was sent; an opt-out's cancel repeated.
    ([_event("queued"), _event("canceled"), _event("canceled")], [("queued", "hub"),
                                                                 ("canceled", "hub")]),
])
def test_history_is_one_entry_per_change(log: list[dict[str, Any]],
                                         expected: list[tuple[str, str]]) -> None:
    assert [(e["status"], e["source"]) for e in status_changes(log)] == expected
