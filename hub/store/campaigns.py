"""SQL for campaigns: create, materialise recipients at launch, claim due recipients into
messages, pause/cancel, and the counts behind stats and progress."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from hub.campaigns import UNANSWERED_CALLS
from hub.pagination import Cursor, keyset_clause
from hub.store import sql

Conn = asyncpg.Connection | asyncpg.Pool
Row = dict[str, Any]

COLS = (
    "id, sub_account_id, name, channel, status, audience, template_id, body, subject, html, "
    "media_urls, voice, sender_ids, start_at, window_start, window_end, rate_cap, "
    "failure_threshold, paused_reason, recipients_total, skipped_total, created_at, "
    "updated_at, launched_at, completed_at"
)


async def insert(conn: Conn, sub_account_id: UUID, fields: Row) -> Row:
    query, args = sql.insert("campaigns", {"sub_account_id": sub_account_id}, fields, COLS)
    return dict(await conn.fetchrow(query, *args))


async def update(conn: Conn, sub_account_id: UUID, id_: UUID, fields: Row) -> Row:
    query, args = sql.update("campaigns", {"id": id_, "sub_account_id": sub_account_id},
                             fields, COLS)
    return dict(await conn.fetchrow(query, *args))


async def get(conn: Conn, sub_account_id: UUID, id_: UUID, *, lock: bool = False) -> Row | None:
    row = await conn.fetchrow(
        f"SELECT {COLS} FROM campaigns WHERE id = $1 AND sub_account_id = $2"
        + (" FOR UPDATE" if lock else ""),
        id_, sub_account_id,
    )
    return dict(row) if row else None


async def using_sender(conn: Conn, sub_account_id: UUID, sender_id: UUID) -> list[Row]:
    """The launched campaigns not yet completed or canceled whose sender pool holds
    `sender_id`. (A draft checks its senders when it is launched.)"""
    rows = await conn.fetch(
        """SELECT id, name, status FROM campaigns
           WHERE sub_account_id = $1 AND $2 = ANY(sender_ids)
             AND status IN ('scheduled', 'running', 'paused')
           ORDER BY created_at""", sub_account_id, sender_id)
    return [dict(r) for r in rows]


async def list_page(conn: Conn, sub_account_id: UUID, status: str | None,
                    cursor: Cursor | None, limit: int) -> list[Row]:
    cond, args = keyset_clause(cursor, 3)
    rows = await conn.fetch(
        f"""SELECT {COLS} FROM campaigns WHERE sub_account_id = $1
              AND ($2::text IS NULL OR status = $2) AND {cond}
            ORDER BY created_at DESC, id DESC LIMIT {limit + 1}""",
        sub_account_id, status, *args,
    )
    return [dict(r) for r in rows]


async def set_status(conn: Conn, id_: UUID, status: str, *, paused_reason: str | None = None,
                     extra: str = "") -> Row:
    row = await conn.fetchrow(
        f"""UPDATE campaigns SET status = $2, paused_reason = $3, updated_at = now() {extra}
            WHERE id = $1 RETURNING {COLS}""",
        id_, status, paused_reason,
    )
    return dict(row)


def _address_sql(channel: str) -> tuple[str, str]:
    """(the contact's address column for this channel, the suppression channel)."""
    if channel == "email":
        return "c.email_key", "email"
    return "c.phone", "voice" if channel == "voice" else "sms"


#: Audience contacts materialised per statement: each stays far below the pool's command
#: timeout however large the audience (a million contacts in one INSERT took over 60 s on a
#: busy machine).
MATERIALISE_CHUNK = 50_000


async def materialise(conn: asyncpg.Connection, campaign: Row, audience_where: str,
                      audience_args: list[Any], due_at: datetime) -> tuple[int, int]:
    """Insert one recipient row per audience contact (unique per campaign and contact);
    contacts without an address for the channel, or suppressed, are recorded as skipped
    with the reason. In contact-id order, `MATERIALISE_CHUNK` contacts a statement, inside
    the caller's transaction. Returns (total, skipped)."""
    address, sup_channel = _address_sql(campaign["channel"])
    n = len(audience_args)
    total = 0
    last: UUID | None = None
    while True:
        row = await conn.fetchrow(
            f"""WITH batch AS (
                    SELECT c.id, c.sub_account_id, {address} AS address
                    FROM contacts c
                    WHERE c.sub_account_id = ${n + 2} AND ({audience_where})
                      AND (${n + 5}::uuid IS NULL OR c.id > ${n + 5})
                    ORDER BY c.id LIMIT ${n + 6}),
                ins AS (
                    INSERT INTO campaign_recipients
                        (campaign_id, contact_id, sub_account_id, status, skip_reason, due_at)
                    SELECT ${n + 1}, b.id, b.sub_account_id,
                           CASE WHEN b.address IS NULL OR sup.id IS NOT NULL THEN 'skipped'
                                ELSE 'pending' END,
                           CASE WHEN b.address IS NULL THEN 'no_{'email' if sup_channel == 'email'
                                                                 else 'phone'}'
                                WHEN sup.id IS NOT NULL THEN 'suppressed' END,
                           ${n + 3}
                    FROM batch b
                    LEFT JOIN suppressions sup ON sup.sub_account_id = b.sub_account_id
                         AND sup.channel = ${n + 4} AND sup.address = b.address
                         AND sup.removed_at IS NULL
                    ON CONFLICT DO NOTHING RETURNING 1)
                SELECT (SELECT count(*) FROM ins) AS inserted,
                       (SELECT id FROM batch ORDER BY id DESC LIMIT 1) AS last,
                       (SELECT count(*) FROM batch) AS seen""",
            *audience_args, campaign["id"], campaign["sub_account_id"], due_at, sup_channel,
            last, MATERIALISE_CHUNK,
        )
        total += int(row["inserted"])
        if row["seen"] < MATERIALISE_CHUNK:
            break
        last = row["last"]
    skipped = int(await conn.fetchval(
        "SELECT count(*) FROM campaign_recipients WHERE campaign_id = $1 AND status = 'skipped'",
        campaign["id"]))
    await conn.execute(
        """UPDATE campaigns SET recipients_total = $2, skipped_total = $3 WHERE id = $1""",
        campaign["id"], total, skipped)
    return total, skipped


#: The columns of a live campaign that the scheduler's tick reads (not its audience).
TICK_COLS = (
    "id, sub_account_id, channel, status, body, subject, html, voice, sender_ids, "
    "start_at, window_start, window_end, rate_cap, failure_threshold, recipients_total, "
    "updated_at"
)


async def active_for_slots(conn: Conn, slots: list[int], claim_batch: int, *,
                           idle_too: bool) -> list[Row]:
    """The live campaigns of the slots, one statement for all: each with its backlog
    (messages queued or sending) and what it costs the rate limits (`backlog_cost`: a
    text's segments, one for anything else), the recipients due now (counted up to
    `claim_batch`) and whether any recipient is pending. Without `idle_too`, running
    campaigns that only wait for their recipients' windows (nothing queued, sending or
    due, but some pending) are left out."""
    rows = await conn.fetch(
        f"""SELECT * FROM (
                SELECT {', '.join('c.' + c.strip() for c in TICK_COLS.split(','))},
                       s.timezone AS sa_timezone, s.slot,
                       b.backlog, b.backlog_cost,
                       (SELECT count(*) FROM (
                           SELECT 1 FROM campaign_recipients r WHERE r.campaign_id = c.id
                             AND r.status = 'pending' AND r.due_at <= now()
                           LIMIT $2) d) AS due,
                       EXISTS (SELECT 1 FROM campaign_recipients r WHERE r.campaign_id = c.id
                                 AND r.status = 'pending') AS pending_left
                FROM campaigns c JOIN sub_accounts s ON s.id = c.sub_account_id
                CROSS JOIN LATERAL (
                    SELECT count(*) AS backlog,
                           coalesce(sum(greatest(m.segments, 1)), 0)::bigint AS backlog_cost
                    FROM messages m WHERE m.campaign_id = c.id
                      AND m.status IN ('queued', 'sending')) b
                WHERE c.status IN ('scheduled', 'running') AND s.slot = ANY($1::int[])) a
            WHERE $3 OR status = 'scheduled' OR backlog > 0 OR due > 0 OR NOT pending_left""",
        slots, claim_batch, idle_too,
    )
    return [dict(r) for r in rows]


async def lock_running(conn: asyncpg.Connection, campaign_ids: list[UUID]) -> set[UUID]:
    """Share-lock the campaigns and return those still running: a pause or cancel (which
    locks its campaign for update) waits for the caller's fill to commit and then takes its
    messages back, or the fill sees it and leaves the campaign alone."""
    rows = await conn.fetch(
        """SELECT id FROM campaigns WHERE id = ANY($1::uuid[]) AND status = 'running'
           ORDER BY id FOR SHARE""", campaign_ids)
    return {r["id"] for r in rows}


async def claim_due(conn: asyncpg.Connection, wants: list[tuple[UUID, int, str]]) -> list[Row]:
    """Claim due pending recipients of several campaigns, (campaign, how many, suppression
    channel) each, with their contact's fields and whether they have been suppressed since
    launch. The claim is the row lock (`FOR UPDATE SKIP LOCKED`) and nothing is written: the
    caller's transaction defers, skips or queues every row it claimed, and until it commits
    other claimers skip them."""
    if not wants:
        return []
    rows = await conn.fetch(
        """WITH want AS (
               SELECT * FROM unnest($1::uuid[], $2::int[], $3::text[])
                   AS w(campaign_id, n, channel)),
           picked AS (
               SELECT w.campaign_id, p.contact_id FROM want w CROSS JOIN LATERAL (
                   SELECT r.contact_id FROM campaign_recipients r
                   WHERE r.campaign_id = w.campaign_id AND r.status = 'pending'
                     AND r.due_at <= now()
                   ORDER BY r.due_at LIMIT w.n FOR UPDATE SKIP LOCKED) p)
           SELECT picked.campaign_id, c.id AS contact_id, c.phone, c.email, c.first_name,
                  c.last_name, c.timezone, c.custom_fields,
                  EXISTS (SELECT 1 FROM suppressions s WHERE s.sub_account_id = c.sub_account_id
                          AND s.removed_at IS NULL AND s.channel = w.channel
                          AND s.address = CASE WHEN w.channel = 'email' THEN c.email_key
                                               ELSE c.phone END) AS suppressed
           FROM picked JOIN want w ON w.campaign_id = picked.campaign_id
           JOIN contacts c ON c.id = picked.contact_id""",
        [w[0] for w in wants], [w[1] for w in wants], [w[2] for w in wants],
    )
    return [dict(r) for r in rows]


async def defer(conn: asyncpg.Connection, rows: list[tuple[UUID, UUID, datetime]]) -> None:
    """Quiet hours: move claimed recipients, (campaign, contact, when), to the next time
    their window opens."""
    if rows:
        await conn.execute(
            """UPDATE campaign_recipients r SET due_at = u.due
               FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[])
                   AS u(campaign_id, contact_id, due)
               WHERE r.campaign_id = u.campaign_id AND r.contact_id = u.contact_id""",
            *map(list, zip(*rows, strict=True)))


#: After a `skipped` CTE of recipients (their campaign_id): each campaign's skipped count.
_COUNT_SKIPPED = """UPDATE campaigns c SET skipped_total = skipped_total + k.n
    FROM (SELECT campaign_id, count(*) AS n FROM skipped GROUP BY campaign_id) k
    WHERE c.id = k.campaign_id"""


async def skip(conn: asyncpg.Connection, rows: list[tuple[UUID, UUID, str]]) -> None:
    """Claimed recipients, (campaign, contact, reason), that will never be sent."""
    if rows:
        await conn.execute(
            f"""WITH skipped AS (
                   UPDATE campaign_recipients r SET status = 'skipped', skip_reason = u.reason
                   FROM unnest($1::uuid[], $2::uuid[], $3::text[])
                       AS u(campaign_id, contact_id, reason)
                   WHERE r.campaign_id = u.campaign_id AND r.contact_id = u.contact_id
                   RETURNING r.campaign_id)
               {_COUNT_SKIPPED}""",
            *map(list, zip(*rows, strict=True)))


async def skip_contact(conn: asyncpg.Connection, contact_id: UUID, reason: str) -> None:
    """A contact gone (deleted): its recipients still pending, in every campaign, will never
    be sent."""
    await conn.execute(
        f"""WITH skipped AS (
               UPDATE campaign_recipients r SET status = 'skipped', skip_reason = $2
               WHERE r.contact_id = $1 AND r.status = 'pending'
               RETURNING r.campaign_id)
           {_COUNT_SKIPPED}""", contact_id, reason)


async def create_messages(conn: asyncpg.Connection, messages: list[Row],
                          lease_s: float) -> list[Row]:
    """Create the claimed recipients' messages (queued, bulk), of any number of campaigns,
    with their conversations, and mark the recipients queued; returns the messages created
    (id, lease_owner, lease_expires_at). A message with a `lease_owner` is created leased to
    that Sender shard for `lease_s`, so the shard takes it without writing it again. The
    message id is derived from (campaign, contact), and the unique (campaign_id,
    contact_id) index makes a second attempt a no-op: one message per recipient, whatever
    restarts in between. `send_until`: when the message's sending window closes, or None."""
    if not messages:
        return []
    col = {k: [m[k] for m in messages] for k in messages[0]}
    # The thread shows the campaign's message as its latest, as it does a single send's
    # (no event per thread: a campaign touches too many at once for the live feed).
    await conn.execute(
        """INSERT INTO conversations (sub_account_id, contact_id, channel, last_message_at,
               last_message_preview)
           SELECT DISTINCT ON (sa, contact, channel) sa, contact, channel, now(),
                  left(body, 140)
           FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[])
                AS u(sa, contact, channel, body)
           ON CONFLICT (sub_account_id, contact_id, channel) DO UPDATE
               SET last_message_at = excluded.last_message_at,
                   last_message_preview = excluded.last_message_preview,
                   updated_at = now()""",
        col["sub_account_id"], col["contact_id"], col["conv_channel"], col["body"])
    # Every value comes with its row, and the two lookups are subqueries on unique keys: the
    # plan cannot turn them into a scan of every conversation (which a join did, at 1,000
    # rows a statement, as soon as the small tables had no statistics).
    rows = await conn.fetch(
        """INSERT INTO messages (id, sub_account_id, conversation_id, contact_id, campaign_id,
               direction, channel, priority, sender_id, provider_account_id, from_address,
               to_address, subject, html, body, media_urls, voice, status, segments, encoding,
               slot, lease_owner, lease_expires_at, provider, send_until)
           SELECT u.id, u.sub_account_id,
                  (SELECT conv.id FROM conversations conv
                   WHERE conv.sub_account_id = u.sub_account_id
                     AND conv.contact_id = u.contact_id AND conv.channel = u.conv_channel),
                  u.contact_id, u.campaign_id, 'outbound', u.channel, 'bulk', u.sender_id,
                  u.provider_account_id, u.from_address, u.to_address, u.subject, u.html,
                  u.body,
                  (SELECT cp.media_urls FROM campaigns cp WHERE cp.id = u.campaign_id),
                  u.voice, 'queued', u.segments, u.encoding, u.slot, u.lease_owner,
                  CASE WHEN u.lease_owner IS NOT NULL THEN now() + make_interval(secs => $19) END,
                  u.provider, u.send_until
           FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::uuid[], $6::text[],
                       $7::uuid[], $8::uuid[], $9::text[], $10::text[], $11::text[],
                       $12::text[], $13::jsonb[], $14::int[], $15::text[], $16::int[],
                       $17::text[], $18::text[], $20::text[], $21::timestamptz[])
                AS u(id, campaign_id, sub_account_id, conv_channel, contact_id, channel,
                     sender_id, provider_account_id, from_address, to_address, subject, body,
                     voice, segments, encoding, slot, lease_owner, html, provider, send_until)
           ON CONFLICT DO NOTHING RETURNING id, lease_owner, lease_expires_at""",
        *(col[k] for k in ("id", "campaign_id", "sub_account_id", "conv_channel", "contact_id",
                           "channel", "sender_id", "provider_account_id", "from_address",
                           "to_address", "subject", "body", "voice", "segments", "encoding",
                           "slot", "lease_owner", "html")), lease_s, col["provider"],
        col["send_until"])
    await conn.execute(
        """UPDATE campaign_recipients r SET status = 'queued', message_id = u.id
           FROM unnest($1::uuid[], $2::uuid[], $3::uuid[]) AS u(campaign_id, contact_id, id)
           WHERE r.campaign_id = u.campaign_id AND r.contact_id = u.contact_id""",
        col["campaign_id"], col["contact_id"], col["id"])
    return [dict(r) for r in rows]


async def start(conn: asyncpg.Connection, campaign_ids: list[UUID], status: str) -> list[Row]:
    """Scheduled campaigns whose start time came begin running; returns those started."""
    rows = await conn.fetch(
        f"""UPDATE campaigns SET status = $2, updated_at = now()
            WHERE id = ANY($1::uuid[]) AND status = 'scheduled' RETURNING {COLS}""",
        campaign_ids, status)
    return [dict(r) for r in rows]


async def complete(conn: asyncpg.Connection, campaign_ids: list[UUID], status: str) -> list[Row]:
    """Complete the running campaigns with nothing pending, queued or sending (checked here,
    in the update itself); returns those completed."""
    rows = await conn.fetch(
        f"""UPDATE campaigns c SET status = $2, paused_reason = NULL, updated_at = now(),
                   completed_at = now()
            WHERE c.id = ANY($1::uuid[]) AND c.status = 'running'
              AND NOT EXISTS (SELECT 1 FROM campaign_recipients r WHERE r.campaign_id = c.id
                                AND r.status = 'pending')
              AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.campaign_id = c.id
                                AND m.status IN ('queued', 'sending'))
            RETURNING {', '.join('c.' + c.strip() for c in COLS.split(','))}""",
        campaign_ids, status)
    return [dict(r) for r in rows]


async def counts(conn: Conn, campaign_id: UUID) -> dict[str, int]:
    """Recipients of one campaign by outcome (see `counts_many`)."""
    return (await counts_many(conn, [campaign_id])).get(campaign_id, {})


async def counts_many(conn: Conn, campaign_ids: list[UUID]) -> dict[UUID, dict[str, int]]:
    """Recipients by outcome, per campaign: pending and skipped from the recipients, the
    rest from their messages' statuses. Each campaign is counted on its own (a lateral
    subquery keyed by its id), as one campaign's counts would be."""
    rows = await conn.fetch(
        """SELECT k.id AS campaign_id, n.status, n.n FROM unnest($1::uuid[]) AS k(id)
           CROSS JOIN LATERAL (
               SELECT status, count(*) AS n FROM campaign_recipients
               WHERE campaign_id = k.id AND status IN ('pending', 'skipped', 'canceled')
               GROUP BY status
               UNION ALL
               SELECT status, count(*) FROM messages WHERE campaign_id = k.id
               GROUP BY status) n""",
        campaign_ids)
    out: dict[UUID, dict[str, int]] = {}
    for r in rows:
        c = out.setdefault(r["campaign_id"], {})
        c[r["status"]] = c.get(r["status"], 0) + int(r["n"])
    return out


#: Message statuses a campaign's failure window counts as sent well, and as failed.
_SUCCEEDED = ("sent", "delivered", "read")
_FAILED = ("failed", "undelivered")
#: A call nobody took (`UNANSWERED_CALLS`): tried, and not failed.
_UNANSWERED = (f"(m.channel = 'voice' AND m.status IN {(*_FAILED, 'canceled')} "
               "AND m.error_code IS NOT NULL AND m.error_code = ANY($4::text[]))")


async def recent_outcomes(conn: Conn, runs: list[tuple[UUID, datetime]],
                          size: int) -> dict[UUID, tuple[int, int]]:
    """(campaign, when its run began) → (succeeded, failed) among the last `size` messages
    the run sent or tried, as they stand now. A late `undelivered` receipt counts against
    its own message, wherever that was in the run; what settled before the run began (a
    resume) is history the marketer has seen. A call that rang busy or unanswered counts
    as tried and not failed: it says nothing about the campaign's setup."""
    rows = await conn.fetch(
        f"""SELECT k.id, w.ok, w.failed
            FROM unnest($1::uuid[], $2::timestamptz[]) AS k(id, at)
            CROSS JOIN LATERAL (
                SELECT count(*) FILTER (WHERE NOT last.failed) AS ok,
                       count(*) FILTER (WHERE last.failed) AS failed
                FROM (SELECT m.status IN {_FAILED} AND NOT {_UNANSWERED} AS failed
                      FROM messages m
                      WHERE m.campaign_id = k.id
                        AND (m.status IN {_SUCCEEDED + _FAILED} OR {_UNANSWERED})
                        AND coalesce(m.sent_at, m.failed_at) >= k.at
                      ORDER BY coalesce(m.sent_at, m.failed_at) DESC LIMIT $3) last) w""",
        [r[0] for r in runs], [r[1] for r in runs], size, sorted(UNANSWERED_CALLS))
    return {r["id"]: (int(r["ok"]), int(r["failed"])) for r in rows}


async def unqueue(conn: asyncpg.Connection, campaign_id: UUID) -> int:
    """Pause: messages not yet sending go back to pending recipients. Their ids are
    deterministic, so resuming recreates exactly the same messages."""
    ids = await conn.fetch(
        """DELETE FROM messages WHERE campaign_id = $1 AND status = 'queued'
           RETURNING contact_id""", campaign_id)
    await conn.execute(
        """UPDATE campaign_recipients SET status = 'pending', message_id = NULL,
                  due_at = least(due_at, now())
           WHERE campaign_id = $1 AND contact_id = ANY($2::uuid[])""",
        campaign_id, [r["contact_id"] for r in ids])
    return len(ids)


async def pause_running(conn: asyncpg.Connection, reasons: dict[UUID, str],
                        status: str) -> list[Row]:
    """Pause these campaigns, each with its reason, if they are still running, and take
    back their queued messages (`unqueue`); returns those paused (COLS). The row lock of
    the update orders it against a user's pause or cancel, and against itself."""
    rows = await conn.fetch(
        f"""UPDATE campaigns c SET status = $3, paused_reason = u.reason, updated_at = now()
            FROM unnest($1::uuid[], $2::text[]) AS u(id, reason)
            WHERE c.id = u.id AND c.status = 'running'
            RETURNING {', '.join('c.' + c.strip() for c in COLS.split(','))}""",
        sorted(reasons), [reasons[i] for i in sorted(reasons)], status)
    for r in rows:
        await unqueue(conn, r["id"])
    return [dict(r) for r in rows]


async def cancel_rest(conn: asyncpg.Connection, campaign_id: UUID) -> int:
    """Cancel: every recipient not yet sent is canceled, and so are its queued messages."""
    await conn.execute(
        """UPDATE campaign_recipients SET status = 'canceled', skip_reason = 'campaign_canceled'
           WHERE campaign_id = $1 AND status = 'pending'""", campaign_id)
    status = await conn.execute(
        """UPDATE messages SET status = 'canceled', updated_at = now()
           WHERE campaign_id = $1 AND status = 'queued'""", campaign_id)
    return int(status.split()[-1])


async def recipients_page(conn: Conn, campaign_id: UUID, status: str | None,
                          after: UUID | None, limit: int) -> list[Row]:
    rows = await conn.fetch(
        """SELECT r.contact_id, r.status AS recipient_status, r.skip_reason, r.due_at,
                  r.message_id, m.status AS message_status, m.error_code, m.to_address,
                  m.sent_at, m.delivered_at
           FROM campaign_recipients r LEFT JOIN messages m ON m.id = r.message_id
           WHERE r.campaign_id = $1 AND ($3::uuid IS NULL OR r.contact_id > $3)
             AND ($2::text IS NULL OR coalesce(m.status, r.status) = $2)
           ORDER BY r.contact_id LIMIT $4""",
        campaign_id, status, after, limit)
    return [dict(r) for r in rows]


async def top_errors(conn: Conn, campaign_id: UUID, n: int = 5) -> list[Row]:
    rows = await conn.fetch(
        """SELECT error_code, count(*) AS n FROM messages WHERE campaign_id = $1
             AND error_code IS NOT NULL GROUP BY error_code ORDER BY n DESC LIMIT $2""",
        campaign_id, n)
    return [dict(r) for r in rows]


async def skip_groups(conn: Conn, sub_account_id: UUID, channel: str, where: str,
                      args: list[Any]) -> list[asyncpg.Record]:
    """The audience's contacts that launch would record as skipped (`materialise`: no
    address on the channel, or suppressed), by skip reason and in the groups of
    `hub.store.audience.groups`. `where` is hub.campaigns.audience_sql(audience, 1)."""
    address, sup_channel = _address_sql(channel)
    return await conn.fetch(
        f"""SELECT CASE WHEN {address} IS NULL THEN 'no_{'email' if sup_channel == 'email'
                                                        else 'phone'}'
                        ELSE 'suppressed' END AS reason,
                   c.timezone, left(c.phone, 7) AS prefix, min(c.phone) AS sample,
                   count(*) AS n
            FROM contacts c
            WHERE c.sub_account_id = $1 AND ({where})
              AND ({address} IS NULL OR EXISTS (
                  SELECT 1 FROM suppressions s WHERE s.sub_account_id = c.sub_account_id
                     AND s.channel = '{sup_channel}' AND s.address = {address}
                     AND s.removed_at IS NULL))
            GROUP BY 1, 2, 3""", sub_account_id, *args)
