"""SQL of the send path: leasing queued messages to a sender shard (or adopting those created
already leased to it), the `sending` commit that makes each send happen at most once,
recording provider results, and the reconciler's view.

The rule that gives exactly-once effect: a message leaves for the provider only after this
shard's UPDATE moved it from `queued` to `sending` under its own lease and committed. Any
other copy of the message (a second shard, a restarted one, a replayed submit) finds it no
longer `queued` and drops it."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from hub import events
from hub.status import sql_rank_case

log = logging.getLogger(__name__)

Conn = asyncpg.Connection | asyncpg.Pool
Row = dict[str, Any]

#: What a sender shard needs to place a message in a lane and its rate-limit path.
LANE_COLS = """m.id, m.sub_account_id, m.priority, m.campaign_id, m.sender_id,
    m.provider_account_id, m.segments, m.attempts, m.not_before, m.channel,
    s.mps AS sender_mps, c.rate_cap AS campaign_rate, m.lease_expires_at, m.send_until"""
LANE_JOIN = """LEFT JOIN senders s ON s.id = m.sender_id
    LEFT JOIN campaigns c ON c.id = m.campaign_id"""


def lane_row(message: Row, sender: Row, lease_expires_at: datetime | None,
             campaign_rate: float | None = None) -> Row:
    """The LANE_COLS of a message just created (never attempted) from what its creator
    holds (a send or a reply, a campaign's scheduler): handed to the shard in place of the
    id, so that the shard does not read the message back. The shard's `sending` UPDATE
    still checks the lease, whatever the row says."""
    return {"id": message["id"], "sub_account_id": message["sub_account_id"],
            "priority": message["priority"], "campaign_id": message.get("campaign_id"),
            "sender_id": sender["id"], "provider_account_id": sender["provider_account_id"],
            "segments": message["segments"], "attempts": 0, "not_before": None,
            "channel": message["channel"], "sender_mps": sender["mps"],
            "campaign_rate": campaign_rate, "lease_expires_at": lease_expires_at,
            "send_until": message.get("send_until")}


async def lease_queued(conn: Conn, owner: str, channels: list[str], slots: list[int],
                       limit: int, lease_s: float) -> list[Row]:
    """Lease up to `limit` unleased queued messages of these slots, highest priority first
    (replies, then transactional, then bulk), oldest first. It walks `messages_claimable` in
    its order, so a claim costs about `limit` index entries however many rows the table or
    this shard's own lanes hold. Expired leases come back through `release_stale`."""
    rows = await conn.fetch(
        f"""WITH picked AS (
               SELECT id FROM messages
               WHERE status = 'queued' AND lease_owner IS NULL
                 AND channel = ANY($2::text[]) AND slot = ANY($3::int[])
               ORDER BY send_rank, created_at
               LIMIT $4 FOR UPDATE SKIP LOCKED)
           , m AS (
               UPDATE messages m SET lease_owner = $1,
                      lease_expires_at = now() + make_interval(secs => $5)
               FROM picked WHERE m.id = picked.id RETURNING m.*)
           SELECT {LANE_COLS} FROM m {LANE_JOIN}""",
        owner, channels, slots, limit, lease_s,
    )
    return [dict(r) for r in rows]


async def release_stale(conn: Conn, owner: str, channels: list[str], slots: list[int], *,
                        own: bool) -> int:
    """Hand back queued messages of these slots whose lease expired (a shard that died, or
    slots that moved to another shard), and with `own` this shard's own leases too (what a
    previous incarnation held, at start-up), so `lease_queued` finds them again. Reads only
    `messages_leased`: a few thousand rows at most."""
    status = await conn.execute(
        """UPDATE messages SET lease_owner = NULL, lease_expires_at = NULL
           WHERE status = 'queued' AND lease_owner IS NOT NULL
             AND (lease_expires_at < now() OR ($4 AND lease_owner = $1))
             AND channel = ANY($2::text[]) AND slot = ANY($3::int[])""",
        owner, channels, slots, own,
    )
    return int(status.split()[-1])


async def adopt(conn: Conn, owner: str, ids: list[UUID], lease_s: float) -> list[Row]:
    """The hand-off: specific queued messages (just created, most already leased to this
    shard in their INSERT). Those leased to `owner` are only read: no write, no commit.
    Unleased ones (created without actors) and expired leases are leased here, as a claim
    would."""
    rows = await conn.fetch(
        f"""WITH mine AS (
               SELECT * FROM messages WHERE id = ANY($2::uuid[]) AND status = 'queued'
                 AND lease_owner = $1 AND lease_expires_at >= now()),
           picked AS (
               SELECT id FROM messages WHERE id = ANY($2::uuid[]) AND status = 'queued'
                 AND (lease_owner IS NULL OR lease_expires_at < now())
               FOR UPDATE SKIP LOCKED),
           leased AS (
               UPDATE messages m SET lease_owner = $1,
                      lease_expires_at = now() + make_interval(secs => $3)
               FROM picked WHERE m.id = picked.id RETURNING m.*)
           SELECT {LANE_COLS} FROM (SELECT * FROM mine UNION ALL SELECT * FROM leased) m
           {LANE_JOIN}""",
        owner, ids, lease_s,
    )
    return [dict(r) for r in rows]


async def renew(conn: Conn, owner: str, ids: list[UUID], lease_s: float) -> set[UUID]:
    """Extend leases; returns the ids still queued and ours (others were canceled or lost)."""
    rows = await conn.fetch(
        """UPDATE messages SET lease_expires_at = now() + make_interval(secs => $3)
           WHERE id = ANY($2::uuid[]) AND lease_owner = $1 AND status = 'queued'
           RETURNING id""",
        owner, ids, lease_s,
    )
    return {r["id"] for r in rows}


#: The suppression that stops a message, matched on the address its channel uses.
SUPPRESSED = """EXISTS (SELECT 1 FROM suppressions s WHERE s.sub_account_id = m.sub_account_id
    AND s.removed_at IS NULL
    AND s.channel = CASE m.channel WHEN 'mms' THEN 'sms' ELSE m.channel END
    AND s.address = CASE m.channel WHEN 'email' THEN lower(m.to_address) ELSE m.to_address END)"""


async def begin_sending(conn: Conn, owner: str, ids: list[UUID], lease_s: float) -> list[Row]:
    """Move leased messages from queued to sending and return what to send. Only the rows
    returned may be sent; the commit is the point of no return. The last gate before it: a
    recipient suppressed since the message was queued (a STOP a moment ago) is canceled
    here, whatever path the message took; only compliance replies pass. One statement, so
    the suppression is checked in the very commit that makes the rest `sending`, and each
    row is read and written once."""
    rows = await conn.fetch(
        f"""UPDATE messages m SET
                  (status, attempts, error_code, error_message, lease_owner,
                   lease_expires_at, updated_at) = (
               SELECT CASE WHEN stop THEN 'canceled' ELSE 'sending' END,
                      m.attempts + CASE WHEN stop THEN 0 ELSE 1 END,
                      CASE WHEN stop THEN 'suppressed' ELSE m.error_code END,
                      CASE WHEN stop THEN 'the recipient opted out before it was sent'
                           ELSE m.error_message END,
                      CASE WHEN stop THEN NULL ELSE m.lease_owner END,
                      CASE WHEN stop THEN NULL ELSE now() + make_interval(secs => $3) END,
                      now()
               FROM (SELECT NOT m.compliance AND {SUPPRESSED} AS stop) gate)
           FROM provider_accounts p
           WHERE m.id = ANY($2::uuid[]) AND m.status = 'queued' AND m.lease_owner = $1
             AND p.id = m.provider_account_id
           RETURNING m.status, m.id, m.sub_account_id, m.channel, m.from_address,
                     m.to_address, m.subject, m.html, m.body, m.media_urls, m.voice,
                     m.contact_id, m.campaign_id, m.priority, m.provider_account_id,
                     p.provider, p.account_id, p.secret_encrypted, p.base_url, p.config,
                     p.updated_at AS account_updated_at,
                     (SELECT s.from_name FROM senders s WHERE s.id = m.sender_id)
                       AS from_name""",
        owner, ids, lease_s,
    )
    return [dict(r) for r in rows if r["status"] == "sending"]


#: Which messages a recorder may resolve: those under its lease, or with no owner (the
#: reconciler) any message still `sending`, whoever held it.
_RESOLVABLE = "(m.lease_owner = $1 OR $1::text IS NULL AND m.status = 'sending')"


async def record_accepted(conn: Conn, owner: str | None,
                          rows: list[tuple[UUID, str, str]]) -> None:
    """(message id, provider message id, status): the provider took them. Each message's
    history gets the status it now has (a receipt may have overtaken the answer).

    A provider id that another message already holds for the same recipient would break the
    unique (provider, provider_message_id, recipient) index and with it the whole batch,
    left `sending`. A real provider never repeats an id (a sandbox carrier restarted on old
    data did): that message is recorded as accepted without the id, and a warning names it."""
    if not rows:
        return
    clashed = await conn.fetch(
        f"""WITH taken AS (
               UPDATE messages m SET provider_message_id = CASE WHEN EXISTS (
                          SELECT 1 FROM messages o
                          WHERE o.provider = m.provider AND o.provider_message_id = u.pid
                            AND lower(o.to_address) = lower(m.to_address) AND o.id <> m.id)
                          THEN NULL ELSE u.pid END,
                      status = CASE WHEN {sql_rank_case('u.st')} > {sql_rank_case('m.status')}
                                    THEN u.st ELSE m.status END,
                      sent_at = coalesce(m.sent_at, now()), in_doubt = false,
                      error_message = NULL,
                      error_code = CASE WHEN m.status = 'sending' THEN NULL
                                        ELSE m.error_code END,
                      lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
               FROM unnest($2::uuid[], $3::text[], $4::text[]) AS u(id, pid, st)
               WHERE m.id = u.id AND {_RESOLVABLE}
               RETURNING m.id, m.sub_account_id, m.status,
                         m.provider_message_id IS DISTINCT FROM u.pid AS clashed),
           history AS (
               INSERT INTO message_events (message_id, sub_account_id, status)
               SELECT id, sub_account_id, status FROM taken)
           SELECT id FROM taken WHERE clashed""",
        owner, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
    )
    for r in clashed:
        log.warning("provider id already held by another message to the same recipient; "
                    "recorded as sent without it", extra={"message_id": str(r["id"])})


async def record_failed(conn: Conn, owner: str | None,
                        rows: list[tuple[UUID, str | None, str]]) -> None:
    """(message id, error code, error message): refused for good."""
    if not rows:
        return
    await conn.execute(
        f"""UPDATE messages m SET status = 'failed', error_code = u.code, error_message = u.msg,
                  failed_at = now(), lease_owner = NULL, lease_expires_at = NULL,
                  updated_at = now()
           FROM unnest($2::uuid[], $3::text[], $4::text[]) AS u(id, code, msg)
           WHERE m.id = u.id AND {_RESOLVABLE} AND m.status = 'sending'""",
        owner, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
    )
    await conn.execute(
        """INSERT INTO message_events (message_id, sub_account_id, status, error_code)
           SELECT m.id, m.sub_account_id, 'failed', m.error_code FROM messages m
           WHERE m.id = ANY($1::uuid[]) AND m.status = 'failed'""",
        [r[0] for r in rows],
    )


async def record_retry(conn: Conn, owner: str,
                       rows: list[tuple[UUID, datetime, str, str]]) -> None:
    """(message id, not before, error code, why): throttled or never reached the provider;
    back to queued, still leased by this shard, which holds it in its lane. The code and
    `why` stay on the message until it is sent (`record_accepted` clears them), so an agent
    sees why it waits and a campaign's top errors say why it is not moving."""
    if not rows:
        return
    await conn.execute(
        """UPDATE messages m SET status = 'queued', not_before = u.nb, error_code = u.code,
                  error_message = u.why, updated_at = now()
           FROM unnest($2::uuid[], $3::timestamptz[], $4::text[], $5::text[])
                AS u(id, nb, code, why)
           WHERE m.id = u.id AND m.lease_owner = $1 AND m.status = 'sending'""",
        owner, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
        [r[3] for r in rows],
    )


async def record_in_doubt(conn: Conn, owner: str, rows: list[tuple[UUID, str]]) -> None:
    """The request may have reached the provider: keep `sending`, flag it, and leave it to
    the reconciler (provider lookup or the arriving callback), never to a blind resend."""
    if not rows:
        return
    await conn.execute(
        """UPDATE messages m SET in_doubt = true, error_message = u.msg, lease_owner = NULL,
                  lease_expires_at = now(), updated_at = now()
           FROM unnest($2::uuid[], $3::text[]) AS u(id, msg)
           WHERE m.id = u.id AND m.lease_owner = $1 AND m.status = 'sending'""",
        owner, [r[0] for r in rows], [r[1] for r in rows],
    )


async def requeue_unsent(conn: Conn, ids: list[UUID]) -> None:
    """The reconciler proved these `sending` messages never reached the provider: queued
    again, unleased, so a shard claims and sends them; their history says so."""
    if not ids:
        return
    await conn.execute(
        """WITH back AS (
               UPDATE messages SET status = 'queued', in_doubt = false, lease_owner = NULL,
                      lease_expires_at = NULL, updated_at = now()
               WHERE id = ANY($1::uuid[]) AND status = 'sending'
               RETURNING id, sub_account_id)
           INSERT INTO message_events (message_id, sub_account_id, status)
           SELECT id, sub_account_id, 'queued' FROM back""",
        ids,
    )


async def status_events(conn: asyncpg.Connection, ids: list[UUID]) -> list[events.Event]:
    """`message.status_updated` with the message snapshot, written in `conn`'s transaction
    (the caller publishes them once it commits). Callers pass replies and transactional
    messages only: bulk progress is reported per campaign instead, about once a second."""
    if not ids:
        return []
    from hub.store.messaging import MESSAGE_COLS

    rows = await conn.fetch(f"SELECT {MESSAGE_COLS} FROM messages WHERE id = ANY($1::uuid[])",
                            ids)
    pending = [events.PendingEvent(r["sub_account_id"], "message.status_updated", dict(r),
                                   f"conversation:{r['conversation_id']}")
               for r in rows]
    return await events.append(conn, pending)


async def release(conn: Conn, owner: str, ids: list[UUID]) -> None:
    """Give leases back (shutdown, rebalancing) so another shard claims them at once."""
    await conn.execute(
        """UPDATE messages SET lease_owner = NULL, lease_expires_at = NULL
           WHERE id = ANY($2::uuid[]) AND lease_owner = $1 AND status = 'queued'""",
        owner, ids,
    )


async def give_back(conn: asyncpg.Connection, owner: str, ids: list[UUID]) -> None:
    """Campaign messages under this shard's lease that must not leave now (their window
    closed, or the provider refused the account's setup), queued or `sending` but never
    sent: their recipients go back to pending, due now, and the messages are deleted, as a
    pause does (`hub.store.campaigns.unqueue`), so the scheduler creates each again, with
    the same id, when it may go. A campaign canceled meanwhile cancels them instead. The
    campaigns are share-locked first, which orders this against a pause or cancel in
    flight."""
    if not ids:
        return
    await conn.execute(
        """SELECT 1 FROM campaigns WHERE id IN (
               SELECT campaign_id FROM messages WHERE id = ANY($1::uuid[]))
           ORDER BY id FOR SHARE""", ids)
    await conn.execute(
        """WITH back AS (
               DELETE FROM messages m WHERE m.id = ANY($2::uuid[]) AND m.lease_owner = $1
                 AND m.status IN ('queued', 'sending') AND m.campaign_id IS NOT NULL
               RETURNING m.campaign_id, m.contact_id)
           UPDATE campaign_recipients r
              SET status = CASE c.status WHEN 'canceled' THEN 'canceled' ELSE 'pending' END,
                  skip_reason = CASE c.status WHEN 'canceled' THEN 'campaign_canceled' END,
                  message_id = NULL, due_at = least(r.due_at, now())
           FROM back JOIN campaigns c ON c.id = back.campaign_id
           WHERE r.campaign_id = back.campaign_id AND r.contact_id = back.contact_id""",
        owner, ids)


async def stale_sending(conn: Conn, limit: int) -> list[Row]:
    """Messages whose send outcome is unknown: in doubt, or `sending` under an expired
    lease (the shard died between the commit and the provider's answer)."""
    rows = await conn.fetch(
        """SELECT m.id, m.sub_account_id, m.channel, m.priority, m.from_address, m.to_address,
                  m.body, m.subject, m.created_at, m.updated_at, m.provider_account_id,
                  p.provider, p.account_id, p.secret_encrypted, p.base_url, p.config
           FROM messages m JOIN provider_accounts p ON p.id = m.provider_account_id
           WHERE m.status = 'sending' AND m.lease_expires_at < now()
           ORDER BY m.lease_expires_at LIMIT $1 FOR UPDATE OF m SKIP LOCKED""",
        limit,
    )
    return [dict(r) for r in rows]


async def unconfirmed_sent(conn: Conn, grace_s: float, max_age_s: float, per_account: int,
                           limit: int) -> list[Row]:
    """Twilio SMS/MMS accepted (`sent`) whose final receipt has not come: Twilio does not
    retry a status callback, so one that found no gateway listening is lost, and the
    reconciler asks Twilio instead. `updated_at` is when the message was last accepted or
    looked up (`receipt_checked`); a message is due once it has waited `grace_s` and as long
    again as it had waited before its last look, so one a carrier never confirms is asked
    about a dozen times over `max_age_s`, not every tick. At most `per_account` per provider
    account, longest waiting first, so one busy account does not starve the others."""
    rows = await conn.fetch(
        """WITH due AS (
               SELECT m.id, m.updated_at, row_number() OVER (
                          PARTITION BY m.provider_account_id ORDER BY m.updated_at) AS n
               FROM messages m
               WHERE m.status = 'sent' AND m.channel IN ('sms', 'mms')
                 AND m.provider_message_id IS NOT NULL
                 AND m.updated_at < now() - make_interval(secs => $1)
                 AND m.updated_at - coalesce(m.sent_at, m.updated_at) < now() - m.updated_at
                 AND coalesce(m.sent_at, m.updated_at) > now() - make_interval(secs => $2))
           SELECT m.id, m.sub_account_id, m.provider_message_id, m.provider_account_id,
                  p.account_id, p.secret_encrypted, p.base_url, p.config
           FROM due JOIN messages m ON m.id = due.id
           JOIN provider_accounts p ON p.id = m.provider_account_id
           WHERE due.n <= $3 AND p.provider = 'twilio'
           ORDER BY due.updated_at LIMIT $4""",
        grace_s, max_age_s, per_account, limit,
    )
    return [dict(r) for r in rows]


async def receipt_checked(conn: Conn, ids: list[UUID]) -> None:
    """Messages looked up and still `sent`: their wait for the next look starts now."""
    if ids:
        await conn.execute(
            "UPDATE messages SET updated_at = now() WHERE id = ANY($1::uuid[]) "
            "AND status = 'sent'", ids)
