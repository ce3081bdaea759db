"""The realtime feed end to end: real gateways, Redis and PostgreSQL, a real WebSocket client.

What a client must be able to count on: tickets are single-use, short-lived and scoped like
REST; after any disconnect, `since` brings back every missed event exactly once and in
order; nothing of another sub-account ever arrives; topics filter as documented; a cursor
the log can no longer serve says resync_required; silent or slow clients are cut off with
their own close codes; lost pub/sub messages are recovered from the log.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterator
from typing import Any
from uuid import UUID

import httpx
import pytest
import uvicorn
from prometheus_client import REGISTRY
from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from config.settings import Settings
from gateway import feed as protocol
from gateway.feed import FeedConfig
from gateway.realtime import feed_config
from hub import events
from hub.context import Hub
from hub.embedded import Services
from tests.conftest import Tenant, _free_port, _ServerThread, assert_problem, auth, make_tenant

#: A second gateway with short intervals and small bounds, sharing the same Redis and
#: PostgreSQL (so tickets and events cross between the two, as between replicas).
TUNED = FeedConfig(heartbeat_s=0.6, out_queue_max=32, ticket_ttl_s=1.0, catchup_s=0.3,
                   max_replay=300, replay_page=50, close_timeout_s=10.0)


@pytest.fixture(scope="module")
def tuned_url(settings: Settings, services: Services) -> Iterator[str]:
    from gateway.app import create_app

    # The realtime feed needs no actors; the main gateway already runs them.
    app = create_app(settings.model_copy(update={"actors": False}), services.database_url,
                     services.redis_url)
    app.state.feed_config = TUNED
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                           lifespan="on"))
    thread = _ServerThread(server)
    thread.start()
    for _ in range(400):
        if server.started:
            break
        assert thread.is_alive(), "the tuned gateway failed to start"
        threading.Event().wait(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture
async def tuned_api(tuned_url: str, hub: Hub) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=tuned_url, timeout=30) as client:
        yield client


# --- a test client --------------------------------------------------------------------


async def get_ticket(api: httpx.AsyncClient, key: str, sa: str | None = None) -> str:
    r = await api.post("/v1/realtime/tickets", headers=auth(key),
                       json={"sub_account_id": sa} if sa else None)
    assert r.status_code == 201, r.text
    ticket: str = r.json()["ticket"]
    return ticket


def ws_url(api: httpx.AsyncClient, ticket: str | None) -> str:
    base = str(api.base_url).rstrip("/").replace("http://", "ws://")
    return f"{base}/v1/realtime" + (f"?ticket={ticket}" if ticket is not None else "")


WS_OPTIONS: dict[str, Any] = {"compression": None, "ping_interval": None, "max_size": None}


class Feed:
    """A feed client that answers the server's pings and hands back every other frame."""

    def __init__(self, ws: ClientConnection, hello: dict[str, Any]) -> None:
        self.ws, self.hello = ws, hello
        self.pending: deque[dict[str, Any]] = deque()

    @classmethod
    async def open(cls, api: httpx.AsyncClient, key: str, sa: str | None = None,
                   **options: Any) -> Feed:
        ws = await connect(ws_url(api, await get_ticket(api, key, sa)),
                           **{**WS_OPTIONS, **options})
        hello = json.loads(await ws.recv())
        assert hello["type"] == "hello", hello
        return cls(ws, hello)

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(frame))

    async def recv(self) -> dict[str, Any]:
        if self.pending:
            return self.pending.popleft()
        while True:
            frame: dict[str, Any] = json.loads(await asyncio.wait_for(self.ws.recv(), 15))
            if frame["type"] != "ping":
                return frame
            await self.send({"type": "pong"})

    async def subscribe(self, topics: list[str], since: int | None = None) -> dict[str, Any]:
        """The subscription's answer (subscribed or resync_required); events that arrive
        before it are kept for `recv`."""
        await self.send({"type": "subscribe", "topics": topics, "since": since})
        early: list[dict[str, Any]] = []
        while True:
            frame = await self.recv()
            if frame["type"] in ("subscribed", "resync_required"):
                self.pending.extend(early)
                return frame
            early.append(frame)

    async def events(self, n: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while len(out) < n:
            frame = await self.recv()
            assert frame["type"] == "event", frame
            out.append(frame)
        return out

    async def events_until(self, last_seq: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while not out or out[-1]["seq"] < last_seq:
            out.extend(await self.events(1))
        return out

    async def close_code(self) -> int | None:
        """Read (without answering pings) until the server closes; its close code."""
        async def drain() -> None:
            while True:
                await self.ws.recv()

        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(drain(), 20)
        return self.ws.close_code

    async def close(self) -> None:
        await self.ws.close()


async def refused_code(url: str) -> int | None:
    async with connect(url, **WS_OPTIONS) as ws:
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        return ws.close_code


async def emit(hub: Hub, sa: str, n: int, *, type_: str = "note.added", topic: str | None = None,
               batch: int = 10, **data: Any) -> None:
    """`n` events in transactions of `batch`, published after each commit as writers do."""
    for start in range(0, n, batch):
        async with hub.transaction() as tx:
            for i in range(start, min(n, start + batch)):
                tx.emit(UUID(sa), type_, {"i": i, **data}, topic=topic)


async def head(hub: Hub, sa: str) -> int:
    seq: int = await hub.pool.fetchval("SELECT event_seq FROM sub_accounts WHERE id = $1",
                                       UUID(sa))
    return seq


def seqs(frames: list[dict[str, Any]]) -> list[int]:
    return [f["seq"] for f in frames]


def closed_count(code: int) -> float:
    return REGISTRY.get_sample_value("hub_ws_closed_total", {"code": str(code)}) or 0.0


# --- tickets --------------------------------------------------------------------------


async def test_ticket_is_single_use_and_required(api: httpx.AsyncClient,
                                                 tenant: Tenant) -> None:
    ticket = await get_ticket(api, tenant.sa1_key)
    async with connect(ws_url(api, ticket), **WS_OPTIONS) as ws:
        hello = json.loads(await ws.recv())
    assert hello["type"] == "hello" and hello["sub_account_id"] == tenant.sa1
    assert hello["heartbeat_s"] == 25 and isinstance(hello["seq"], int) and hello["server_time"]

    assert await refused_code(ws_url(api, ticket)) == 4001  # used once already
    assert await refused_code(ws_url(api, None)) == 4001
    assert await refused_code(ws_url(api, "not-a-ticket")) == 4001


async def test_ticket_scoped_like_rest(hub: Hub, api: httpx.AsyncClient, tenant: Tenant) -> None:
    own = await api.post("/v1/realtime/tickets", headers=auth(tenant.sa1_key))
    assert own.status_code == 201, own.text
    assert own.json()["sub_account_id"] == tenant.sa1 and own.json()["expires_at"]

    r = await api.post("/v1/realtime/tickets", headers=auth(tenant.sa1_key),
                       json={"sub_account_id": tenant.sa2})
    assert_problem(r, 404, "sub_account_not_found")
    r = await api.post("/v1/realtime/tickets", headers=auth(tenant.agency_key))
    assert_problem(r, 422, "validation_failed", field="sub_account_id")
    other = await make_tenant(hub, api, "Other agency")
    r = await api.post("/v1/realtime/tickets", headers=auth(other.agency_key),
                       json={"sub_account_id": tenant.sa1})
    assert_problem(r, 404, "sub_account_not_found")
    assert_problem(await api.post("/v1/realtime/tickets"), 401)

    feed = await Feed.open(api, tenant.agency_key, tenant.sa2)  # an agency key reaches it
    assert feed.hello["sub_account_id"] == tenant.sa2
    await feed.close()


async def test_ticket_of_a_key_revoked_since_is_refused(hub: Hub, api: httpx.AsyncClient,
                                                        tenant: Tenant) -> None:
    made = await api.post(f"/v1/sub-accounts/{tenant.sa1}/api-keys",
                          headers=auth(tenant.sa1_key), json={"name": "kiosk"})
    assert made.status_code == 201, made.text
    key = made.json()
    kept, revoked = [await get_ticket(api, key["key"]) for _ in range(2)]
    feed_ok = await connect(ws_url(api, kept), **WS_OPTIONS)
    assert json.loads(await feed_ok.recv())["type"] == "hello"  # the key is live: it works
    await feed_ok.close()
    r = await api.delete(f"/v1/sub-accounts/{tenant.sa1}/api-keys/{key['id']}",
                         headers=auth(tenant.sa1_key))
    assert r.status_code in (200, 204), r.text
    assert await refused_code(ws_url(api, revoked)) == 4001


async def test_an_open_connection_closes_when_its_key_is_revoked(
    hub: Hub, api: httpx.AsyncClient, tuned_api: httpx.AsyncClient, tenant: Tenant
) -> None:
    """Revoking a key closes the connections it opened (4001), on every replica, within
    the feed's catch-up interval; a connection of another key stays."""
    made = await api.post(f"/v1/sub-accounts/{tenant.sa1}/api-keys",
                          headers=auth(tenant.sa1_key), json={"name": "wallboard"})
    assert made.status_code == 201, made.text
    key = made.json()
    doomed = await Feed.open(tuned_api, key["key"])
    kept = await Feed.open(tuned_api, tenant.sa1_key)
    for feed in (doomed, kept):
        assert (await feed.subscribe(["inbox"]))["type"] == "subscribed"
    r = await api.delete(f"/v1/sub-accounts/{tenant.sa1}/api-keys/{key['id']}",
                         headers=auth(tenant.sa1_key))
    assert r.status_code in (200, 204), r.text
    async def until_closed() -> None:
        while True:  # answering pings
            await doomed.recv()

    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(until_closed(), 10)
    assert doomed.ws.close_code == 4001
    await emit(hub, tenant.sa1, 1, topic="inbox")
    [event] = await kept.events(1)
    assert event["event"] == "note.added"
    await kept.close()


def test_feed_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("FEED_HEARTBEAT_S", "7.5"), ("FEED_BUFFER", "64"),
                        ("FEED_TICKET_TTL_S", "12"), ("EVENT_RETENTION_DAYS", "90")):
        monkeypatch.setenv(f"HUB_{name}", value)
    cfg = feed_config(Settings())
    assert (cfg.heartbeat_s, cfg.out_queue_max, cfg.ticket_ttl_s, cfg.retention_days) == (
        7.5, 64, 12.0, 90)
    monkeypatch.setenv("HUB_FEED_BUFFER", "3")  # too small to hold a replay page
    with pytest.raises(ValidationError, match="feed_buffer"):
        Settings()


async def test_ticket_expires(tuned_api: httpx.AsyncClient, tenant: Tenant) -> None:
    ticket = await get_ticket(tuned_api, tenant.sa1_key)
    await asyncio.sleep(TUNED.ticket_ttl_s + 0.3)
    assert await refused_code(ws_url(tuned_api, ticket)) == 4001


# --- delivery -------------------------------------------------------------------------


async def test_resume_after_disconnect_delivers_every_missed_event_once_in_order(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant
) -> None:
    first = await Feed.open(api, tenant.sa1_key)
    ack = await first.subscribe(["*"])
    start = ack["since"]
    await emit(hub, tenant.sa1, 50)
    seen = await first.events(50)
    assert seqs(seen) == list(range(start + 1, start + 51))
    last = seen[-1]["seq"]
    await first.close()

    await emit(hub, tenant.sa1, 200)  # while the client is away

    async def live_meanwhile() -> None:
        for _ in range(20):
            await emit(hub, tenant.sa1, 5, live=True)
            await asyncio.sleep(0.005)

    producer = asyncio.create_task(live_meanwhile())
    second = await Feed.open(api, tenant.sa1_key)
    ack = await second.subscribe(["*"], since=last)
    assert ack == {"type": "subscribed", "topics": ["*"], "since": last}
    await producer
    end = await head(hub, tenant.sa1)
    got = await second.events_until(end)
    assert seqs(got) == list(range(last + 1, end + 1))  # contiguous: no gap, no duplicate
    assert len({f["id"] for f in got}) == len(got) == 300
    assert got[-1]["data"]["live"] is True

    await emit(hub, tenant.sa1, 3)  # and it carries on live
    assert seqs(await second.events(3)) == [end + 1, end + 2, end + 3]
    await second.close()


async def test_another_sub_accounts_events_never_arrive(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant
) -> None:
    conversation_of_sa1 = f"conversation:{uuid.uuid4()}"
    a = await Feed.open(api, tenant.sa1_key)
    b = await Feed.open(api, tenant.sa2_key)
    await a.subscribe(["*"])
    # Naming another sub-account's object in a topic reaches nothing of it.
    ack_b = await b.subscribe(["*", conversation_of_sa1])
    await asyncio.gather(emit(hub, tenant.sa1, 150, owner="one", topic=conversation_of_sa1),
                         emit(hub, tenant.sa2, 150, owner="two"))
    got_a, got_b = await asyncio.gather(a.events(150), b.events(150))
    assert {f["data"]["owner"] for f in got_a} == {"one"}
    assert {f["data"]["owner"] for f in got_b} == {"two"}
    assert seqs(got_b) == list(range(ack_b["since"] + 1, ack_b["since"] + 151))

    await emit(hub, tenant.sa1, 1, owner="one", topic=conversation_of_sa1)
    await emit(hub, tenant.sa2, 1, owner="two", end=True)
    nxt = await b.events(1)
    assert nxt[0]["data"] == {"i": 0, "owner": "two", "end": True}
    await a.close()
    await b.close()


async def test_topics_filter_events(hub: Hub, api: httpx.AsyncClient, tenant: Tenant) -> None:
    c1, c2, k1 = (str(uuid.uuid4()) for _ in range(3))
    conv = await Feed.open(api, tenant.sa1_key)
    inbox = await Feed.open(api, tenant.sa1_key)
    camp = await Feed.open(api, tenant.sa1_key)
    everything = await Feed.open(api, tenant.sa1_key)
    await conv.subscribe([f"conversation:{c1}"])
    await inbox.subscribe(["inbox"])
    await camp.subscribe([f"campaign:{k1}"])
    await everything.subscribe(["*"])

    async def one(type_: str, topic: str | None, **data: Any) -> None:
        async with hub.transaction() as tx:
            tx.emit(UUID(tenant.sa1), type_, data, topic=topic)

    await one("message.created", f"conversation:{c1}", n=1)
    await one("message.created", f"conversation:{c2}", n=2)
    await one("conversation.updated", f"conversation:{c1}", n=3)
    await one("campaign.progress", f"campaign:{k1}", n=4)
    r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/contacts", headers=auth(tenant.sa1_key),
                       json={"phone": "+14155550123", "first_name": "Ada"})
    assert r.status_code == 201, r.text
    await one("message.status_updated", f"conversation:{c2}", n=5)
    await one("campaign.progress", f"campaign:{k1}", n=6, end=True)
    await one("message.created", f"conversation:{c1}", n=7, end=True)

    async def until_end(feed: Feed) -> list[tuple[str, Any]]:
        out = []
        while True:
            f = (await feed.events(1))[0]
            out.append((f["event"], f["data"].get("n")))
            if f["data"].get("end"):
                return out

    assert await until_end(conv) == [
        ("message.created", 1), ("conversation.updated", 3), ("message.created", 7)]
    assert await until_end(inbox) == [
        ("message.created", 1), ("message.created", 2), ("conversation.updated", 3),
        ("message.status_updated", 5), ("message.created", 7)]
    assert await until_end(camp) == [("campaign.progress", 4), ("campaign.progress", 6)]
    everything_got = [await everything.events(1) for _ in range(8)]
    assert [f[0]["event"] for f in everything_got][4] == "contact.created"

    # Unsubscribing stops a topic; the others keep flowing.
    await conv.send({"type": "unsubscribe", "topics": [f"conversation:{c1}"]})
    assert (await conv.recv()) == {"type": "unsubscribed", "topics": []}
    await conv.subscribe([f"campaign:{k1}"])
    await one("message.created", f"conversation:{c1}", n=8)
    await one("campaign.progress", f"campaign:{k1}", n=9, end=True)
    assert await until_end(conv) == [("campaign.progress", 9)]
    for f in (conv, inbox, camp, everything):
        await f.close()


async def test_fifty_clients_each_get_all_500_events_once_in_order(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant
) -> None:
    feeds = await asyncio.gather(*(Feed.open(api, tenant.sa2_key) for _ in range(50)))
    acks = await asyncio.gather(*(f.subscribe(["*"]) for f in feeds))
    start = acks[0]["since"]
    assert {a["since"] for a in acks} == {start}
    await asyncio.gather(*(emit(hub, tenant.sa2, 100, batch=10, producer=p) for p in range(5)))
    received = await asyncio.gather(*(f.events(500) for f in feeds))
    for got in received:
        assert seqs(got) == list(range(start + 1, start + 501))
    await asyncio.gather(*(f.close() for f in feeds))


# --- resync ---------------------------------------------------------------------------


async def test_since_older_than_the_log_keeps_needs_resync(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant
) -> None:
    base = await head(hub, tenant.sa1)
    await emit(hub, tenant.sa1, 60)
    await hub.pool.execute(
        "UPDATE events SET created_at = now() - interval '10 days' "
        "WHERE sub_account_id = $1 AND seq <= $2", UUID(tenant.sa1), base + 40)
    assert await events.prune_events(hub.pool, keep_days=7) == base + 40
    oldest = base + 41

    feed = await Feed.open(api, tenant.sa1_key)
    answer = await feed.subscribe(["*"], since=base + 10)
    assert answer["type"] == "resync_required" and answer["oldest_seq"] == oldest
    assert answer["seq"] == base + 60
    ahead = await feed.subscribe(["*"], since=base + 1000)
    assert ahead["type"] == "resync_required"
    # The oldest cursor the log can still serve replays everything after it.
    ok = await feed.subscribe(["*"], since=oldest - 1)
    assert ok["type"] == "subscribed"
    assert seqs(await feed.events(20)) == list(range(oldest, base + 61))
    await feed.close()


async def test_replay_longer_than_the_max_needs_resync(
    hub: Hub, tuned_api: httpx.AsyncClient, tenant: Tenant
) -> None:
    base = await head(hub, tenant.sa1)
    await emit(hub, tenant.sa1, TUNED.max_replay + 10, batch=100)
    feed = await Feed.open(tuned_api, tenant.sa1_key)
    answer = await feed.subscribe(["*"], since=base)
    assert answer["type"] == "resync_required" and answer["oldest_seq"] <= base + 1
    since = base + 10  # exactly max_replay behind: served, in replay pages
    assert (await feed.subscribe(["*"], since=since))["type"] == "subscribed"
    got = await feed.events(TUNED.max_replay)
    assert seqs(got) == list(range(since + 1, since + TUNED.max_replay + 1))
    await feed.close()


# --- liveness and back-pressure -------------------------------------------------------


async def test_silent_client_is_closed_with_4008(tuned_api: httpx.AsyncClient,
                                                 tenant: Tenant) -> None:
    answering = await Feed.open(tuned_api, tenant.sa1_key)
    silent = await Feed.open(tuned_api, tenant.sa1_key)
    assert silent.hello["heartbeat_s"] == TUNED.heartbeat_s

    async def answer_pings() -> None:
        while True:
            await answering.recv()  # answers each ping with a pong

    answerer = asyncio.create_task(answer_pings())
    frames = []
    with pytest.raises(ConnectionClosed):
        while True:
            frames.append(json.loads(await asyncio.wait_for(silent.ws.recv(), 10)))
    assert silent.ws.close_code == 4008
    assert {"type": "ping"} in frames  # it was pinged, and never answered

    # A client that answers the pings stays connected well past the timeout.
    answerer.cancel()
    await asyncio.gather(answerer, return_exceptions=True)
    await answering.send({"type": "ping"})
    while (await answering.recv())["type"] != "pong":
        pass
    await answering.close()


async def test_slow_consumer_is_closed_with_4009_and_resumes(
    hub: Hub, tuned_api: httpx.AsyncClient, tenant: Tenant
) -> None:
    before = closed_count(4009)
    slow = await Feed.open(tuned_api, tenant.sa1_key, max_queue=1)
    start = (await slow.subscribe(["*"]))["since"]

    async def keep_alive() -> None:  # it talks, but never reads
        while True:
            await slow.send({"type": "ping"})
            await asyncio.sleep(0.2)

    talker = asyncio.create_task(keep_alive())
    blob = os.urandom(32_000).hex()  # incompressible, 64 kB per event
    for _ in range(300):
        await emit(hub, tenant.sa1, 10, blob=blob)
        if closed_count(4009) > before:
            break
    talker.cancel()
    assert closed_count(4009) > before, "the queue never overflowed"

    got: list[dict[str, Any]] = []
    with pytest.raises(ConnectionClosed):
        while True:
            frame = json.loads(await asyncio.wait_for(slow.ws.recv(), 20))
            if frame["type"] == "event":
                got.append(frame)
    assert slow.ws.close_code == 4009
    assert seqs(got) == list(range(start + 1, start + 1 + len(got)))

    # It comes back with `since` and gets the rest, in order.
    again = await Feed.open(tuned_api, tenant.sa1_key)
    last = got[-1]["seq"] if got else start
    assert (await again.subscribe(["*"], since=last))["type"] == "subscribed"
    end = await head(hub, tenant.sa1)
    assert seqs(await again.events_until(end)) == list(range(last + 1, end + 1))
    await again.close()


# --- lost pub/sub messages ------------------------------------------------------------


async def test_events_lost_by_pubsub_are_read_from_the_log(
    hub: Hub, tuned_api: httpx.AsyncClient, tenant: Tenant
) -> None:
    feed = await Feed.open(tuned_api, tenant.sa1_key)
    start = (await feed.subscribe(["*"]))["since"]

    # Committed but never published (say the publish hit a Redis blip), on a quiet account:
    # the periodic catch-up check finds it.
    async with hub.pool.acquire() as conn, conn.transaction():
        await events.append(conn, [events.PendingEvent(UUID(tenant.sa1), "note.added",
                                                       {"unpublished": True})])
    got = await feed.events(1)
    assert got[0]["seq"] == start + 1 and got[0]["data"] == {"unpublished": True}

    # Redis drops every pub/sub connection while events are being written.
    await hub.redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    await emit(hub, tenant.sa1, 30, batch=3)
    assert seqs(await feed.events(30)) == list(range(start + 2, start + 32))

    channel = events.channel_for(tenant.sa1)
    for _ in range(100):  # the gateway subscribed again
        counts = dict(await hub.redis.pubsub_numsub(channel))
        if counts.get(channel.encode(), 0) >= 1:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the gateway did not resubscribe after Redis dropped it")
    await emit(hub, tenant.sa1, 2)
    assert seqs(await feed.events(2)) == [start + 32, start + 33]
    await feed.close()


# --- protocol errors and metrics ------------------------------------------------------


async def test_bad_frames_are_answered_then_the_abuser_is_closed(
    api: httpx.AsyncClient, tenant: Tenant
) -> None:
    feed = await Feed.open(api, tenant.sa1_key)
    await feed.send({"type": "ping"})
    assert await feed.recv() == {"type": "pong"}
    await feed.ws.send("{not json")
    err = await feed.recv()
    assert err["type"] == "error" and err["code"] == "bad_frame" and err["detail"]
    for bad in ({"type": "shout"}, {"type": "subscribe", "topics": ["contacts"]},
                {"type": "subscribe", "topics": ["*"], "since": -1}, ["subscribe"]):
        await feed.ws.send(json.dumps(bad))
        assert (await feed.recv())["code"] == "bad_frame"
    for _ in range(5):
        await feed.ws.send("?")
    assert await feed.close_code() == 4003


async def test_metrics_count_connections_events_and_closes(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant
) -> None:
    assert await refused_code(ws_url(api, "expired-or-made-up")) == 4001
    feed = await Feed.open(api, tenant.sa1_key)
    await feed.subscribe(["*"])
    await emit(hub, tenant.sa1, 1)
    await feed.events(1)
    text = (await api.get("/metrics")).text
    assert "hub_ws_connections " in text
    assert "hub_ws_events_sent_total " in text
    assert 'hub_ws_closed_total{code="4001"}' in text
    await feed.close()


# --- the protocol's pure parts (gateway/protocol.py) --------------------------------------


@pytest.mark.parametrize(("raw", "topic"), [
    ("inbox", "inbox"), ("*", "*"),
    ("conversation:6F9619FF-8B86-D011-B42D-00C04FC964FF",
     "conversation:6f9619ff-8b86-d011-b42d-00c04fc964ff"),
    ("campaign:6f9619ff8b86d011b42d00c04fc964ff", "campaign:6f9619ff-8b86-d011-b42d-00c04fc964ff"),
    ("conversation:42", None), ("contact:6f9619ff-8b86-d011-b42d-00c04fc964ff", None),
    ("Inbox", None), ("", None), (7, None),
])
def test_topics_are_parsed_to_one_canonical_form(raw: Any, topic: str | None) -> None:
    assert protocol.parse_topic(raw) == topic


@pytest.mark.parametrize(("topics", "event_type", "event_topic", "matches"), [
    ({"*"}, "contact.created", None, True),
    ({"inbox"}, "message.created", "conversation:a", True),
    ({"inbox"}, "conversation.updated", None, True),
    ({"inbox"}, "campaign.progress", "campaign:b", False),
    ({"inbox"}, "contact.created", None, False),
    ({"conversation:a"}, "message.created", "conversation:a", True),
    ({"conversation:a"}, "message.created", "conversation:b", False),
    ({"campaign:b"}, "campaign.progress", "campaign:b", True),
    (set(), "message.created", "conversation:a", False),
])
def test_topic_matching_rules(topics: set[str], event_type: str, event_topic: str | None,
                              matches: bool) -> None:
    assert protocol.topic_matches(topics, event_type, event_topic) is matches


@pytest.mark.parametrize(("since", "oldest", "head", "resync"), [
    (10, 1, 20, False), (0, 1, 20, False),  # everything still there
    (40, 41, 60, False), (39, 41, 60, True),  # pruned up to 40
    (60, 61, 60, False), (59, 61, 60, True),  # empty log at head 60
    (61, 1, 60, True),  # ahead of the log
    (0, 1, 300, False), (0, 1, 301, True),  # max_replay 300
])
def test_resume_rules(since: int, oldest: int, head: int, resync: bool) -> None:
    assert protocol.needs_resync(since, oldest, head, max_replay=300) is resync


def test_cursor_advances_only_by_one() -> None:
    cursor = protocol.Cursor(5)
    assert [cursor.classify(s) for s in (4, 5, 6, 8)] == [
        protocol.Step.DUPLICATE, protocol.Step.DUPLICATE, protocol.Step.NEXT, protocol.Step.GAP]
    cursor.advance(6)
    with pytest.raises(ValueError):
        cursor.advance(8)


def test_liveness_pings_each_interval_and_times_out_after_two() -> None:
    life = protocol.Liveness.start(now=100.0, heartbeat_s=25)
    assert not life.ping_due(110) and life.ping_due(125) and not life.ping_due(126)
    assert not life.timed_out(150) and life.timed_out(150.1)
    life.heard(140)
    assert not life.timed_out(189) and life.timed_out(190.1)


@pytest.mark.parametrize(("text", "parsed"), [
    ('{"type":"ping"}', protocol.Ping()), ('{"type":"pong"}', protocol.Pong()),
    ('{"type":"subscribe","topics":["*","*"],"since":null}', protocol.Subscribe(("*",), None)),
    ('{"type":"subscribe","topics":["inbox"],"since":7}', protocol.Subscribe(("inbox",), 7)),
    ('{"type":"unsubscribe","topics":["inbox"]}', protocol.Unsubscribe(("inbox",))),
    ('{"type":"subscribe","topics":[],"since":null}', None),
    ('{"type":"subscribe","topics":["inbox"],"since":true}', None),
    ('{"type":"subscribe","topics":["inbox"],"since":"7"}', None),
    ('{"type":"hello"}', None), ("[]", None), ("nope", None), (None, None),
])
def test_client_frames(text: str | None, parsed: protocol.ClientFrame | None) -> None:
    if parsed is None:
        with pytest.raises(protocol.BadFrame):
            protocol.parse_client_frame(text)
    else:
        assert protocol.parse_client_frame(text) == parsed


def test_published_event_reaches_clients_as_the_frame_the_log_replays() -> None:
    """The live path splices the writer's JSON into the frame and only parses a short
    header; the frame must be the one a replay from the log builds, field for field."""
    from datetime import UTC, datetime

    data = {"id": uuid.uuid4(), "body": "caf\u00e9 \"quoted\"\nline", "n": 3, "at": None}
    text = events.compact(data)
    written = events.Event(uuid.uuid4(), uuid.uuid4(), 42, "message.created",
                           f"conversation:{uuid.uuid4()}", data, datetime.now(UTC), text)
    live = protocol.LiveEvent.from_wire(written.wire().encode())
    replayed = events.Event(written.id, written.sub_account_id, 42, written.type,
                            written.topic, json.loads(text), written.created_at)
    assert (live.seq, live.type, live.topic) == (42, "message.created", written.topic)
    assert live.frame == replayed.frame()
    assert json.loads(live.frame) == {"type": "event", **replayed.to_json()}
    no_topic = events.Event(written.id, written.sub_account_id, 43, "contact.created", None,
                            {"id": "c"}, written.created_at)
    assert protocol.LiveEvent.from_wire(no_topic.wire()).topic is None


async def test_event_times_are_written_as_the_rest_api_writes_them(
    api: httpx.AsyncClient, tenant: Tenant
) -> None:
    """ISO 8601 with a `T` and UTC as `Z`, in the snapshot and the frame: the snapshot's
    times were `str()` ('2026-12-03 22:47:24+00:00'), which Safari's Date refuses."""
    feed = await Feed.open(api, tenant.sa1_key)
    try:
        assert feed.hello["server_time"].endswith("Z"), feed.hello
        await feed.subscribe(["*"])
        r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/contacts",
                           headers=auth(tenant.sa1_key),
                           json={"phone": "+14155550177", "first_name": "Iso"})
        assert r.status_code == 201, r.text
        while (frame := (await feed.events(1))[0])["event"] != "contact.created":
            pass
    finally:
        await feed.close()
    assert frame["data"]["created_at"] == r.json()["created_at"]
    assert frame["data"]["updated_at"] == r.json()["updated_at"]
    assert frame["created_at"].endswith("Z") and "T" in frame["created_at"]
