"""The realtime feed: single-use tickets over REST, then one WebSocket per client that replays
from the durable event log and continues live from Redis without gap or duplicate.

One `FeedHub` per process holds one Redis subscription per sub-account with connected
clients and fans each event out to that sub-account's `Session`s without ever waiting on
them; each session orders, filters and sends on its own tasks, so a slow client holds up
nobody else. The protocol itself (frames, close codes, resume rules) is docs/realtime.md;
its I/O-free parts live in `gateway/feed.py`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Body, FastAPI, Request, WebSocket
from prometheus_client import Counter, Gauge
from pydantic import BaseModel
from redis.asyncio.client import PubSub

from config.settings import Settings
from gateway import feed as proto
from gateway import sessions
from gateway.deps import HubDep, PrincipalDep
from gateway.feed import CloseCode, Cursor, FeedConfig, LiveEvent, Step
from gateway.schemas import Input
from hub import events
from hub.context import Hub
from hub.errors import ValidationFailed
from hub.tenancy import Principal, sub_account_for
from hub.users import Role, may_see_event

log = logging.getLogger(__name__)

CONNECTIONS = Gauge("hub_ws_connections", "Open realtime WebSocket connections")
EVENTS_SENT = Counter("hub_ws_events_sent_total", "Event frames sent to realtime clients")
CLOSED = Counter("hub_ws_closed_total", "Realtime connections closed, by close code", ["code"])

TICKET_KEY = "hub:ws-ticket:"
MAX_PENDING_CONTROLS = 100
SUBSCRIBE_WAIT_S = 5.0

router = APIRouter(tags=["realtime"])


def config_for(app: FastAPI) -> FeedConfig:
    """`app.state.feed_config` when set before start-up (tests shorten intervals), else the
    settings' (HUB_FEED_*, HUB_EVENT_RETENTION_DAYS)."""
    cfg = getattr(app.state, "feed_config", None)
    return cfg if isinstance(cfg, FeedConfig) else feed_config(app.state.hub.settings)


def feed_config(settings: Settings) -> FeedConfig:
    return FeedConfig(heartbeat_s=settings.feed_heartbeat_s,
                      out_queue_max=settings.feed_buffer,
                      ticket_ttl_s=settings.feed_ticket_ttl_s,
                      retention_days=settings.event_retention_days)


# --- tickets --------------------------------------------------------------------------


class TicketIn(Input):
    sub_account_id: UUID | None = None


class TicketOut(BaseModel):
    ticket: str
    expires_at: datetime
    sub_account_id: UUID


def _ticket_key(ticket: str) -> str:
    # Stored hashed: a look at Redis does not hand out usable tickets.
    return TICKET_KEY + hashlib.sha256(ticket.encode()).hexdigest()


async def issue_ticket(hub: Hub, principal: Principal, sub_account_id: UUID,
                       ttl_s: float) -> str:
    value = json.dumps({"key_id": str(principal.key_id), "agency_id": str(principal.agency_id),
                        "sub_account_id": str(sub_account_id)})
    for _ in range(3):
        ticket = secrets.token_urlsafe(32)
        if await hub.redis.set(_ticket_key(ticket), value, px=int(ttl_s * 1000), nx=True):
            return ticket
    raise RuntimeError("could not store a realtime ticket")


@dataclass(frozen=True, slots=True)
class Grant:
    """What a connection follows, and on whose authority: the API key that asked for its
    ticket, or the login session of its cookie (the SHA-256 stored for it). The feed drops
    the connection once that authority is gone (`FeedHub._drop_revoked`)."""

    sub_account_id: UUID
    key_id: UUID | None = None
    login: bytes | None = None
    role: Role | None = None  # a login's role in the sub-account; None for an API key


async def redeem_ticket(hub: Hub, ticket: str | None) -> Grant | None:
    """The grant of a ticket, consuming it; None when missing, unknown, expired, already
    used, or asked for by a key revoked since."""
    if not ticket or len(ticket) > 200:
        return None
    raw = await hub.redis.getdel(_ticket_key(ticket))
    if raw is None:
        return None
    data = json.loads(raw)
    grant = Grant(UUID(data["sub_account_id"]), UUID(data["key_id"]))
    return grant if not await _revoked(hub.pool, [grant]) else None


async def _revoked(pool: Any, grants: list[Grant]) -> set[Grant]:
    """Those of `grants` whose key was revoked, or whose login session ended (logout,
    expiry) or no longer holds a role in the sub-account. One query, however many."""
    keys = [g for g in grants if g.key_id is not None]
    logins = [g for g in grants if g.login is not None]
    rows = await pool.fetch(
        """SELECT k.id AS key_id, NULL::bytea AS login, NULL::uuid AS sa
           FROM unnest($1::uuid[]) AS k(id)
           WHERE NOT EXISTS (SELECT 1 FROM api_keys a WHERE a.id = k.id
                             AND a.revoked_at IS NULL)
           UNION ALL
           SELECT NULL, l.h, l.sa FROM unnest($2::bytea[], $3::uuid[]) AS l(h, sa)
           WHERE NOT EXISTS (SELECT 1 FROM user_sessions s JOIN user_grants g
                                 ON g.user_id = s.user_id AND g.sub_account_id = l.sa
                             WHERE s.token_hash = l.h AND s.expires_at > now())""",
        list({g.key_id for g in keys}), [g.login for g in logins],
        [g.sub_account_id for g in logins])
    gone_keys = {r["key_id"] for r in rows if r["key_id"] is not None}
    gone_logins = {(bytes(r["login"]), r["sa"]) for r in rows if r["login"] is not None}
    return {g for g in grants if g.key_id in gone_keys
            or (g.login is not None and (g.login, g.sub_account_id) in gone_logins)}


@router.post("/v1/realtime/tickets", status_code=201, response_model=TicketOut)
async def create_ticket(
    request: Request, hub: HubDep, principal: PrincipalDep,
    body: Annotated[TicketIn | None, Body(description="sub_account_id is required for agency "
                                          "keys; sub-account keys default to their own")] = None,
) -> TicketOut:
    """A single-use ticket for `WebSocket /v1/realtime?ticket=…`, valid for 30 seconds."""
    sa_id = (body.sub_account_id if body else None) or principal.sub_account_id
    if sa_id is None:
        raise ValidationFailed.field("sub_account_id", "required with an agency API key",
                                     "missing")
    sub_account = await sub_account_for(hub.pool, principal, sa_id)
    ttl = request.app.state.feed.config.ticket_ttl_s
    ticket = await issue_ticket(hub, principal, sub_account["id"], ttl)
    return TicketOut(ticket=ticket, expires_at=datetime.now(UTC) + timedelta(seconds=ttl),
                     sub_account_id=sub_account["id"])


# --- the WebSocket --------------------------------------------------------------------


@router.websocket("/v1/realtime")
async def realtime(websocket: WebSocket, ticket: str | None = None,
                   sub_account: str | None = None) -> None:
    # Accept first and close with a code: browsers see 4001, not a failed handshake.
    await websocket.accept()
    feed: FeedHub = websocket.app.state.feed
    try:
        if ticket is None and sub_account is not None:
            # The pages: the login session's cookie, only from the hub's own Origin.
            login = await sessions.websocket_grant(websocket, sub_account)
            grant = Grant(login[0], login=login[1], role=login[2]) if login else None
        else:
            grant = await redeem_ticket(feed.hub, ticket)
    except Exception:
        log.warning("realtime ticket check failed", exc_info=True)
        await _close(websocket, CloseCode.INTERNAL, "try again", feed.config)
        return
    if grant is None:
        await _close(websocket, CloseCode.UNAUTHORIZED,
                     "ticket missing, invalid, expired or already used (or, with a session, "
                     "a sub-account not granted or a foreign Origin)", feed.config)
        return
    await Session(websocket, feed, grant).run()


async def _close(websocket: WebSocket, code: int, reason: str, cfg: FeedConfig) -> None:
    CLOSED.labels(str(code)).inc()
    try:
        # Waits for the socket to drain: a client that is not reading gets a bounded wait.
        await asyncio.wait_for(websocket.close(code, reason), cfg.close_timeout_s)
    except Exception:
        log.debug("realtime close did not complete", exc_info=True)


class _Close(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


@dataclass(frozen=True, slots=True)
class _Out:
    text: str
    is_event: bool = False


class Session:
    """One client connection. Four tasks: the receiver (client frames), the pump (the only
    writer of the cursor: subscriptions, live events, log replay), the sender (drains the
    bounded queue to the socket) and the heartbeat."""

    def __init__(self, websocket: WebSocket, feed: FeedHub, grant: Grant) -> None:
        self.ws, self.feed, self.cfg = websocket, feed, feed.config
        self.grant, self.sub_account_id = grant, grant.sub_account_id
        self.out: asyncio.Queue[_Out] = asyncio.Queue(maxsize=self.cfg.out_queue_max)
        self.topics: set[str] = set()
        self.cursor: Cursor | None = None  # None until the first subscribe
        self._live: deque[LiveEvent] = deque()
        self._controls: deque[proto.Subscribe | proto.Unsubscribe] = deque()
        self._check = False
        self._wake = asyncio.Event()
        self._pump_idle = False  # the pump waits for work: push_live may deliver itself
        self._failed: _Close | None = None  # a close decided outside the pump's task
        self._loop = asyncio.get_running_loop()
        self.liveness = proto.Liveness.start(self._loop.time(), self.cfg.heartbeat_s)
        self.strikes = proto.Strikes(self.cfg.max_bad_frames)

    # Called by the FeedHub; never blocks.
    def push_live(self, event: LiveEvent) -> None:
        if (self._pump_idle and self.cursor is not None and self._failed is None
                and not (self._live or self._controls or self._check)
                and self.cursor.classify(event.seq) is Step.NEXT):
            # The common case, done here rather than by waking the pump: the pump has
            # nothing queued, so delivering now keeps the order it would give.
            try:
                self._deliver(event, live=True)
            except _Close as c:
                self._failed = c
                self._wake.set()
            return
        if len(self._live) >= self.cfg.out_queue_max:
            self._check = True  # dropped here, read back from the log by the pump
        else:
            self._live.append(event)
        self._wake.set()

    def revoke(self) -> None:
        """The key or login behind this connection is gone: close it (4001)."""
        self._failed = _Close(CloseCode.UNAUTHORIZED, "the API key was revoked or the login "
                              "ended; sign in again for a new ticket")
        self._wake.set()

    def request_check(self) -> None:
        self._check = True
        self._wake.set()

    @property
    def position(self) -> int | None:
        return self.cursor.last if self.cursor else None

    async def run(self) -> None:
        CONNECTIONS.inc()
        try:
            outcome = await self._serve()
        finally:
            CONNECTIONS.dec()
        if isinstance(outcome, _Close):
            if outcome.code != CloseCode.UNAUTHORIZED:
                log.info("realtime connection closed by the hub",
                         extra={"sub_account": str(self.sub_account_id), "code": outcome.code,
                                "reason": outcome.reason})
            await _close(self.ws, outcome.code, outcome.reason, self.cfg)
        else:
            CLOSED.labels(str(outcome)).inc()

    async def _serve(self) -> _Close | int:
        """Runs the connection; returns how the hub closes it, or the client's close code."""
        tasks: list[asyncio.Task[Any]] = []
        try:
            await self.feed.attach(self)
            bounds = await events.log_bounds(self.feed.hub.pool, self.sub_account_id)
            if bounds is None:
                return _Close(CloseCode.UNAUTHORIZED, "the sub-account no longer exists")
            self._send_now(_Out(proto.hello(self.sub_account_id, bounds[1],
                                            self.cfg.heartbeat_s, datetime.now(UTC))))
            tasks = [asyncio.create_task(c) for c in (
                self._receive(), self._pump(), self._send(), self._heartbeat())]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            # If several ended together, the hub's own close decision wins.
            task = min(done, key=lambda t: not isinstance(t.exception(), _Close))
            exc = task.exception()
            if exc is None:
                result: int = task.result()  # the client left (receiver or sender)
                return result
            if isinstance(exc, _Close):
                return exc
            log.error("realtime connection failed", exc_info=exc,
                      extra={"sub_account": str(self.sub_account_id)})
            return _Close(CloseCode.INTERNAL, "internal error; reconnect with since")
        except _Close as c:
            return c
        except Exception:
            log.exception("realtime connection failed to start",
                          extra={"sub_account": str(self.sub_account_id)})
            return _Close(CloseCode.INTERNAL, "internal error; reconnect with since")
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.feed.detach(self)

    # --- queueing frames

    def _send_now(self, item: _Out) -> None:
        """For live events and replies: a full queue means the client is not keeping up."""
        try:
            self.out.put_nowait(item)
        except asyncio.QueueFull:
            raise _Close(CloseCode.SLOW_CONSUMER,
                         "too far behind; reconnect and resume with since") from None

    async def _put(self, item: _Out) -> None:
        """For replay from the log, which goes at the client's pace, within reason."""
        try:
            await asyncio.wait_for(self.out.put(item), 2 * self.cfg.heartbeat_s)
        except TimeoutError:
            raise _Close(CloseCode.SLOW_CONSUMER,
                         "not reading; reconnect and resume with since") from None

    # --- the four tasks

    async def _receive(self) -> int:
        while True:
            msg = await self.ws.receive()
            if msg["type"] == "websocket.disconnect":
                return int(msg.get("code") or 1005)
            self.liveness.heard(self._loop.time())
            try:
                frame = proto.parse_client_frame(msg.get("text"), self.cfg.max_topics)
            except proto.BadFrame as e:
                self._send_now(_Out(proto.error("bad_frame", str(e))))
                if self.strikes.hit():
                    raise _Close(CloseCode.ABUSE, "too many bad frames") from None
                continue
            if isinstance(frame, proto.Ping):
                self._send_now(_Out(proto.PONG))
            elif isinstance(frame, proto.Subscribe | proto.Unsubscribe):
                if len(self._controls) >= MAX_PENDING_CONTROLS:
                    raise _Close(CloseCode.ABUSE, "too many pending subscription changes")
                self._controls.append(frame)
                self._wake.set()

    async def _send(self) -> int:
        while True:
            item = await self.out.get()
            try:
                await self.ws.send_text(item.text)
            except Exception:
                return 1006  # the client is gone
            if item.is_event:
                EVENTS_SENT.inc()

    async def _heartbeat(self) -> None:
        while True:
            now = self._loop.time()
            if self.liveness.timed_out(now):
                raise _Close(CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout")
            if self.liveness.ping_due(now) and not self.out.full():
                self.out.put_nowait(_Out(proto.PING))
            await asyncio.sleep(max(0.01, self.liveness.wake_at() - now))

    async def _pump(self) -> None:
        while True:
            self._pump_idle = True
            try:
                await self._wake.wait()
            finally:
                self._pump_idle = False
            self._wake.clear()
            if self._failed is not None:
                raise self._failed
            while self._controls:
                await self._control(self._controls.popleft())
            if self.cursor is None:  # not subscribed yet: `since` will read the log
                self._live.clear()
                self._check = False
                continue
            while self._live and not self._controls:
                await self._on_live(self._live.popleft())
            if self._controls:
                self._wake.set()
            elif self._check:
                self._check = False
                await self._fill(upto=None)

    # --- the pump's steps

    async def _control(self, frame: proto.Subscribe | proto.Unsubscribe) -> None:
        if isinstance(frame, proto.Unsubscribe):
            self.topics.difference_update(frame.topics)
            await self._put(_Out(proto.unsubscribed(self.topics)))
            return
        if len(self.topics | set(frame.topics)) > self.cfg.max_topics:
            await self._put(_Out(proto.error(
                "too_many_topics", f"at most {self.cfg.max_topics} topics per connection")))
            return
        if self.cursor is not None:  # later subscribes join at the current position
            self.topics.update(frame.topics)
            await self._put(_Out(proto.subscribed(self.topics, self.cursor.last)))
            return
        oldest, head = await self._bounds()
        since = head if frame.since is None else frame.since
        if proto.needs_resync(since, oldest, head, self.cfg.max_replay):
            await self._put(_Out(proto.resync_required(oldest, head, self._why(since, oldest,
                                                                               head))))
            return
        self.topics.update(frame.topics)
        self.cursor = Cursor(since)
        await self._put(_Out(proto.subscribed(self.topics, since)))
        await self._fill(upto=head)

    def _why(self, since: int, oldest: int, head: int) -> str:
        if since > head:
            return "`since` is ahead of the log; refetch over REST"
        if since < oldest - 1:
            return "events after `since` are no longer kept; refetch over REST"
        return f"more than {self.cfg.max_replay} events to replay; refetch over REST"

    async def _bounds(self) -> tuple[int, int]:
        bounds = await events.log_bounds(self.feed.hub.pool, self.sub_account_id)
        if bounds is None:
            raise _Close(CloseCode.UNAUTHORIZED, "the sub-account no longer exists")
        return bounds

    async def _on_live(self, event: LiveEvent) -> None:
        if self.cursor is None:
            return
        step = self.cursor.classify(event.seq)
        if step is Step.GAP:  # a pub/sub message was lost or overtaken: read the log
            await self._fill(upto=event.seq - 1)
            if self.cursor is None:
                return
            step = self.cursor.classify(event.seq)
        if step is Step.NEXT:
            self._deliver(event, live=True)

    def _deliver(self, event: LiveEvent, *, live: bool) -> _Out | None:
        assert self.cursor is not None
        self.cursor.advance(event.seq)
        if not (proto.topic_matches(self.topics, event.type, event.topic)
                and may_see_event(self.grant.role, event.type)):
            return None
        item = _Out(event.frame, is_event=True)
        if live:
            self._send_now(item)
            return None
        return item

    async def _fill(self, upto: int | None) -> None:
        """Deliver from the log, in order, everything after the cursor (up to `upto`)."""
        pool, page_size = self.feed.hub.pool, self.cfg.replay_page
        while self.cursor is not None and (upto is None or self.cursor.last < upto):
            limit = page_size if upto is None else min(page_size, upto - self.cursor.last)
            page = await events.list_after(pool, self.sub_account_id, self.cursor.last, limit)
            for e in page:
                if self.cursor.classify(e.seq) is not Step.NEXT:
                    await self._lost_position()
                    return
                item = self._deliver(LiveEvent(e.seq, e.type, e.topic, e.frame()), live=False)
                if item is not None:
                    await self._put(item)
            if len(page) < limit:
                if upto is not None:  # the log no longer holds what we need
                    await self._lost_position()
                return

    async def _lost_position(self) -> None:
        """The log was pruned past this connection: it must refetch and subscribe again."""
        oldest, head = await self._bounds()
        self.cursor = None
        self.topics.clear()
        self._live.clear()
        await self._put(_Out(proto.resync_required(
            oldest, head, "events this connection had not seen are no longer kept; refetch "
                          "over REST and subscribe again")))


# --- the process-wide broker ----------------------------------------------------------


class FeedHub:
    """One per gateway process: one Redis pub/sub connection, subscribed to the channel of
    each sub-account with connected clients, dispatching to their sessions. Redis pub/sub is
    at-most-once, so after a reconnect, and every `catchup_s`, sessions compare their cursor
    with the log's head and read what they missed."""

    def __init__(self, hub: Hub, config: FeedConfig) -> None:
        self.hub, self.config = hub, config
        self._sessions: dict[UUID, set[Session]] = {}
        self._pubsub: PubSub | None = None
        self._lock = asyncio.Lock()  # orders SUBSCRIBE / UNSUBSCRIBE with the sessions map
        self._active: set[str] = set()
        self._sent: dict[str, int] = {}  # SUBSCRIBE commands sent, per channel
        self._confirmed: dict[str, int] = {}  # and confirmations received
        self._waiters: dict[str, list[tuple[int, asyncio.Future[None]]]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(c) for c in (
            self._read_forever(), self._catch_up_forever(), self._prune_forever())]

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._drop_connection()

    async def attach(self, session: Session) -> None:
        """Register `session`; returns once its sub-account's channel is subscribed (or
        Redis is unreachable: the log catches the session up then)."""
        sa = session.sub_account_id
        self._sessions.setdefault(sa, set()).add(session)
        channel = events.channel_for(sa)
        await self._sync(sa)
        await self._wait_subscribed(channel, self._sent.get(channel, 0))

    async def detach(self, session: Session) -> None:
        sa = session.sub_account_id
        group = self._sessions.get(sa)
        if group is None:
            return
        group.discard(session)
        if not group:
            del self._sessions[sa]
            await self._sync(sa)

    async def _sync(self, sa: UUID) -> None:
        channel = events.channel_for(sa)
        async with self._lock:
            pubsub, wanted = self._pubsub, sa in self._sessions
            if pubsub is None or wanted == (channel in self._active):
                return
            try:
                if wanted:
                    self._active.add(channel)
                    self._sent[channel] = self._sent.get(channel, 0) + 1
                    await pubsub.subscribe(channel)
                else:
                    self._active.discard(channel)
                    await pubsub.unsubscribe(channel)
            except Exception:  # the reader notices too, reconnects and resubscribes
                log.warning("realtime: Redis (un)subscribe failed", exc_info=True)

    async def _wait_subscribed(self, channel: str, n: int) -> None:
        if n == 0 or self._confirmed.get(channel, 0) >= n:
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(channel, []).append((n, fut))
        await asyncio.wait([fut], timeout=SUBSCRIBE_WAIT_S)

    def _on_message(self, msg: dict[str, Any]) -> None:
        channel = msg["channel"].decode() if isinstance(msg["channel"], bytes) else msg["channel"]
        try:
            sa = UUID(channel.rsplit(":", 1)[-1])
        except ValueError:
            return
        if msg["type"] == "message":
            group = self._sessions.get(sa)
            if not group:
                return
            try:
                event = LiveEvent.from_wire(msg["data"])
            except (ValueError, KeyError, TypeError):
                log.warning("realtime: unreadable event on %s", channel)
                return
            for s in list(group):
                s.push_live(event)
        elif msg["type"] == "subscribe":
            count = self._confirmed[channel] = self._confirmed.get(channel, 0) + 1
            waiting = self._waiters.pop(channel, [])
            for n, fut in waiting:
                if n <= count and not fut.done():
                    fut.set_result(None)
            if rest := [(n, f) for n, f in waiting if n > count]:
                self._waiters[channel] = rest
            # A (re)subscription can follow lost messages: let the sessions check the log.
            for s in list(self._sessions.get(sa, ())):
                s.request_check()

    async def _read_forever(self) -> None:
        delay = 0.1
        while True:
            try:
                pubsub = await self._connect()
                delay = 0.1
                while True:
                    msg = await pubsub.get_message(timeout=None)
                    if msg is not None:
                        self._on_message(msg)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("realtime: Redis pub/sub lost; reconnecting (clients catch up "
                            "from the event log)", exc_info=True)
            await self._drop_connection()
            for group in list(self._sessions.values()):
                for s in list(group):
                    s.request_check()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _connect(self) -> PubSub:
        async with self._lock:
            pubsub = self.hub.redis.pubsub()
            await pubsub.connect()
            self._pubsub = pubsub
            channels = [events.channel_for(sa) for sa in self._sessions]
            if channels:
                for c in channels:
                    self._sent[c] = self._sent.get(c, 0) + 1
                self._active.update(channels)
                await pubsub.subscribe(*channels)
            return pubsub

    async def _drop_connection(self) -> None:
        async with self._lock:
            pubsub, self._pubsub = self._pubsub, None
            self._active.clear()
            self._sent.clear()
            self._confirmed.clear()
            for waiting in self._waiters.values():
                for _, fut in waiting:
                    if not fut.done():
                        fut.set_result(None)
            self._waiters.clear()
        if pubsub is not None:
            try:
                await asyncio.wait_for(pubsub.aclose(), 5)
            except Exception:
                log.debug("realtime: closing the old pub/sub failed", exc_info=True)

    async def _catch_up_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.catchup_s)
            if not self._sessions:
                continue
            try:
                head_of = await events.heads(self.hub.pool, list(self._sessions))
            except Exception:
                log.warning("realtime: catch-up check failed", exc_info=True)
                continue
            for sa, group in list(self._sessions.items()):
                head = head_of.get(sa)
                for s in list(group):
                    if head is not None and s.position is not None and s.position < head:
                        s.request_check()
            await self._drop_revoked()

    async def _drop_revoked(self) -> None:
        """Close the connections whose key was revoked or whose login ended since they
        opened (checked with the catch-up, every `catchup_s`)."""
        sessions = [s for group in self._sessions.values() for s in group]
        try:
            gone = await _revoked(self.hub.pool, [s.grant for s in sessions])
        except Exception:
            log.warning("realtime: revocation check failed", exc_info=True)
            return
        for s in sessions:
            if s.grant in gone:
                s.revoke()

    async def _prune_forever(self) -> None:
        while True:
            try:
                await events.prune_events(self.hub.pool, self.config.retention_days)
            except Exception:
                log.warning("event log pruning failed", exc_info=True)
            await asyncio.sleep(self.config.prune_every_s)
