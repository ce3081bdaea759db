"""Campaign writers (create, edit, launch, pause, resume, cancel) and readers (stats, dry run).

Launch materialises the audience into recipient rows in one INSERT … SELECT (unique per
campaign and contact; contacts without an address or suppressed are recorded as skipped
with the reason). After that the Scheduler shards own the campaign."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, time, timedelta
from typing import Any
from uuid import UUID

from hub import projection
from hub.campaigns import (
    MERGE_FIELDS,
    allowed_actions,
    audience_sql,
    campaign_window,
    check_content,
    outside_sending_hours,
    parse_audience,
    transition,
    voice_script,
)
from hub.context import Hub
from hub.errors import Conflict, FieldError, NotFound, ValidationFailed
from hub.segments import count_segments
from hub.store import audience as audience_store
from hub.store import campaigns as store
from hub.store import contacts as contact_store
from hub.store import templates as template_store
from hub.templates import MergeField, parse
from hub.timezones import SendWindow, contact_timezone

Row = dict[str, Any]
SENDER_CHANNEL = {"sms": "sms", "mms": "sms", "email": "email", "voice": "voice"}


def snapshot(row: Row) -> Row:
    return {**row, "allowed_actions": allowed_actions(row["status"])}


async def _check_contact_ids(conn: Any, sa_id: UUID, ids: list[UUID]) -> None:
    """An explicit audience names contacts of this sub-account: another's, or an unknown
    id, is an error naming it, not a recipient silently dropped from the count."""
    if not ids:
        return
    known = await contact_store.existing_ids(conn, sa_id, ids)
    errors = [FieldError(f"audience.contact_ids.{i}", "no such contact in this sub-account",
                         "not_found") for i, c in enumerate(ids) if c not in known]
    if errors:
        raise ValidationFailed(f"{len(errors)} of the audience's contact ids are not "
                               "contacts of this sub-account", errors=errors[:50])


async def do_create_campaign(hub: Hub, sa: Row, data: Row) -> Row:
    async with hub.transaction() as tx:
        row = await store.insert(tx.conn, sa["id"], await _checked(tx.conn, sa, data))
        tx.emit(sa["id"], "campaign.created", snapshot(row), f"campaign:{row['id']}")
    return row


async def _checked(conn: Any, sa: Row, data: Row) -> Row:
    """The columns of a campaign made of `data` (a create's fields, or a draft's merged
    with an edit), or ValidationFailed naming the bad field: the audience and its contact
    ids, the window, the template, content valid for the channel, senders of the channel.
    The senders are locked FOR SHARE in the caller's transaction: one being deleted now is
    either gone here or sees this campaign (do_delete_sender refuses to delete a sender
    that a campaign still uses)."""
    audience = parse_audience(data["audience"])
    channel = data["channel"]
    window = campaign_window(data.get("window_start"), data.get("window_end"), sa, channel)
    if data.get("template_id") is not None:
        data = await _from_template(conn, sa, data)
    voice = data.get("voice") or {}
    media = [str(u) for u in data.get("media_urls") or []]
    check_content(channel, data.get("body") or "", data.get("subject"), media,
                  other_texts={"html": data.get("html"), "voice.say": voice.get("say"),
                               "voice.voicemail_say": voice.get("voicemail_say")},
                  voice=voice)
    script = voice_script(data.get("body") or "", media, voice) if channel == "voice" else None
    sender_ids: list[UUID] = list(data.get("sender_ids") or [])
    rows = await conn.fetch(
        "SELECT id FROM senders WHERE sub_account_id = $1 AND channel = $2 "
        "AND ($3::uuid[] IS NULL OR id = ANY($3::uuid[])) ORDER BY id FOR SHARE",
        sa["id"], SENDER_CHANNEL[channel], sender_ids or None)
    found = [r["id"] for r in rows]
    if sender_ids and set(found) != set(sender_ids):
        missing = sorted(str(s) for s in set(sender_ids) - set(found))
        raise ValidationFailed.field("sender_ids", f"not {SENDER_CHANNEL[channel]} senders "
                                     f"of this sub-account: {', '.join(missing)}", "not_found")
    if not found:
        raise ValidationFailed.field("sender_ids", f"this sub-account has no "
                                     f"{SENDER_CHANNEL[channel]} sender; add one first",
                                     "no_sender")
    await _check_contact_ids(conn, sa["id"], list(audience.contact_ids))
    return {
        "name": data["name"], "channel": channel, "audience": audience.to_json(),
        "template_id": data.get("template_id"), "body": data.get("body") or "",
        "subject": data.get("subject"), "html": data.get("html"), "media_urls": media,
        "voice": script, "sender_ids": found, "start_at": data.get("start_at"),
        "window_start": window.start, "window_end": window.end,
        "rate_cap": data.get("rate_cap"), "failure_threshold": data["failure_threshold"],
    }


async def do_update_campaign(hub: Hub, sa: Row, id_: UUID, changes: Row) -> Row:
    """Edits a draft: `changes` (fields of the create) replace the stored ones, and the
    campaign as changed is checked as a create is. A launched campaign keeps what it sends
    and to whom; only its name, a label, may change. The row is locked, so an edit racing a
    launch lands wholly before it (the launch sends the edit) or is refused after it.

    A draft keeps the text it has when its template is edited: only a PATCH naming the
    template copies it again (and one with template_id null forgets the template)."""
    async with hub.transaction() as tx:
        c = await _locked(tx, sa["id"], id_)
        if not changes:
            return c
        if c["status"] != "draft":
            refused = [f for f in changes if f != "name"]
            if refused:
                raise Conflict(
                    f"a {c['status']} campaign sends what it was launched with, so only its "
                    f"name can change, not its {', '.join(refused)}; duplicate it to send an "
                    "edited copy", code="campaign_not_draft",
                    errors=[FieldError(f, "only a draft's can change", "not_draft")
                            for f in refused])
            fields = {k: v for k, v in changes.items() if k == "name"}
        else:
            fields = await _checked(tx.conn, sa, await _edited(tx.conn, sa, c, changes))
            if "template_id" not in changes:  # kept, not copied again
                fields["template_id"] = c["template_id"]
        row = await store.update(tx.conn, sa["id"], id_, fields)
        tx.emit(sa["id"], "campaign.updated", snapshot(row), f"campaign:{id_}")
    return row


#: What a draft stores of the create's fields and is checked again on an edit (its
#: template_id is kept as it is, not copied from again).
_FIELDS = ("name", "channel", "audience", "body", "subject", "html", "media_urls", "voice",
           "sender_ids", "start_at", "window_start", "window_end", "rate_cap",
           "failure_threshold")


async def _edited(conn: Any, sa: Row, c: Row, changes: Row) -> Row:
    """The create's data for draft `c` with `changes` applied. What the draft stores
    resolved goes back as it would be given: the call script without the words and audio
    it took from the body and media (so an edited body is what the call then says); the
    sender pool without senders deleted since, or empty (every sender of the channel) when
    the channel changes to one the pool cannot send on. A template in `changes` supplies
    the body, subject and media not given beside it, as at create."""
    data = {f: c[f] for f in _FIELDS}
    voice = dict(c["voice"] or {})
    if voice.get("say") == c["body"]:
        voice["say"] = None
    if c["media_urls"] and voice.get("play_url") == c["media_urls"][0]:
        voice["play_url"] = None
    data["voice"] = voice or None
    channel: str = changes.get("channel") or c["channel"]
    if SENDER_CHANNEL[channel] != SENDER_CHANNEL[c["channel"]]:
        data["sender_ids"] = []
    else:
        data["sender_ids"] = [r["id"] for r in await conn.fetch(
            "SELECT id FROM senders WHERE id = ANY($1::uuid[]) AND sub_account_id = $2",
            c["sender_ids"], sa["id"])]
    if changes.get("template_id") is not None:
        data.update(body=None, subject=None, html=None, media_urls=None)
    return data | changes


async def _from_template(conn: Any, sa: Row, data: Row) -> Row:
    """`data` with the saved template's text where none is given (copied: a later edit of
    the template does not change the campaign). The template's HTML goes with its body: it
    is not copied beside a body of the request's own, which it would contradict."""
    template = await template_store.get(conn, sa["id"], data["template_id"])
    if template is None:
        raise ValidationFailed.field("template_id", "no such template in this sub-account",
                                     "not_found")
    if template["channel"] != data["channel"]:
        raise ValidationFailed.field(
            "template_id", f"the template is for {template['channel']}, the campaign for "
            f"{data['channel']}", "channel_mismatch")
    parts = ("subject", "media_urls") + (("body", "html") if data.get("body") is None else ())
    return data | {f: template[f] for f in parts if data.get(f) is None}


async def do_duplicate_campaign(hub: Hub, sa: Row, id_: UUID) -> Row:
    """A new draft with the campaign's content, audience, window and limits (not its start
    time), sending through those of its senders that still exist: how a finished or
    canceled campaign is sent again. It names the campaign's template while that is still
    one of its channel (it names its text's origin; the text itself is the campaign's)."""
    c = await get_campaign(hub, sa["id"], id_)
    senders = [r["id"] for r in await hub.pool.fetch(
        "SELECT id FROM senders WHERE id = ANY($1::uuid[]) AND sub_account_id = $2",
        c["sender_ids"], sa["id"])]
    template = c["template_id"] and await template_store.get(hub.pool, sa["id"],
                                                             c["template_id"])
    data = {k: c[k] for k in ("channel", "audience", "body", "subject", "html", "media_urls",
                              "voice", "window_start", "window_end", "rate_cap",
                              "failure_threshold")}
    return await do_create_campaign(hub, sa, data | {
        "name": f"{c['name'][:193]} (copy)", "sender_ids": senders, "start_at": None,
        "template_id": template["id"] if template and template["channel"] == c["channel"]
        else None})


async def do_delete_campaign(hub: Hub, sa: Row, id_: UUID) -> None:
    """Only a draft: a launched campaign keeps its recipients and history (cancel it)."""
    async with hub.transaction() as tx:
        c = await _locked(tx, sa["id"], id_)
        if c["status"] != "draft":
            raise Conflict(f"a {c['status']} campaign keeps its recipients and history, so "
                           "only a draft can be deleted; cancel it instead, or duplicate it",
                           code="campaign_not_draft")
        await tx.conn.execute("DELETE FROM campaigns WHERE id = $1", id_)
        tx.emit(sa["id"], "campaign.deleted", {"id": str(id_)}, f"campaign:{id_}")


async def _locked(tx: Any, sa_id: UUID, id_: UUID) -> Row:
    row = await store.get(tx.conn, sa_id, id_, lock=True)
    if row is None:
        raise NotFound("no such campaign", code="campaign_not_found")
    return row


async def do_launch_campaign(hub: Hub, sa: Row, id_: UUID) -> Row:
    now = datetime.now(UTC)
    async with hub.transaction() as tx:
        c = await _locked(tx, sa["id"], id_)
        status = transition(c["status"], "launch", now=now, start_at=c["start_at"])
        # A draft's senders may have been deleted since it was created (a launched
        # campaign's may not: do_delete_sender refuses). FOR SHARE, as in the create.
        if not await tx.conn.fetch(
                "SELECT id FROM senders WHERE id = ANY($1::uuid[]) FOR SHARE", c["sender_ids"]):
            raise Conflict("every sender of this campaign has been deleted since it was "
                           "created; create the campaign again with current senders",
                           code="no_sender")
        await _check_sending_hours(tx.conn, sa["id"], c)
        audience = parse_audience(c["audience"])
        where, args = audience_sql(audience, 0)
        await store.materialise(tx.conn, c, where, args, max(now, c["start_at"] or now))
        if audience.needs_refinement:
            await _refine(tx.conn, sa, c, audience)
        row = await store.set_status(tx.conn, id_, status, extra=", launched_at = now()")
        tx.emit(sa["id"], "campaign.updated", snapshot(row), f"campaign:{id_}")
    return row


async def _check_sending_hours(conn: Any, sa_id: UUID, c: Row) -> None:
    """A draft whose window an admin's later quiet hours no longer contain is not launched
    (Conflict naming the window): it is edited first. The sub-account row is read FOR SHARE,
    so a change of its quiet hours either lands before this check or waits for the launch and
    then sees this campaign (`check_live_windows`)."""
    sa = await conn.fetchrow("SELECT quiet_start, quiet_end FROM sub_accounts WHERE id = $1 "
                             "FOR SHARE", sa_id)
    outside = outside_sending_hours(SendWindow(c["window_start"], c["window_end"]),
                                    c["channel"], sa)
    if outside is not None:
        raise Conflict("this draft cannot be launched until its window is edited; "
                       f"{outside.field}: {outside.message}", code="outside_sending_hours",
                       errors=[outside])


async def check_live_windows(conn: Any, sa: Row) -> None:
    """Refuses quiet hours (`sa` as just updated, in the caller's transaction) that the window
    of a launched, unfinished text or call campaign reaches outside: Conflict naming
    quiet_start and those campaigns. Refusing is the one rule the scheduler, the shards'
    send deadlines and the dry run need not know about: each keeps reading the campaign's own
    window. Drafts are checked when launched."""
    rows = await conn.fetch(
        """SELECT name, channel, window_start, window_end FROM campaigns
           WHERE sub_account_id = $1 AND status IN ('scheduled', 'running', 'paused')
           ORDER BY created_at, id""", sa["id"])
    clash = [r["name"] for r in rows if outside_sending_hours(
        SendWindow(r["window_start"], r["window_end"]), r["channel"], sa) is not None]
    if clash:
        shown = ", ".join(f'"{n}"' for n in clash[:5]) + (
            f" and {len(clash) - 5} more" if len(clash) > 5 else "")
        message = (f"{len(clash)} launched campaign{'s' if len(clash) > 1 else ''} ({shown}) "
                   "would send inside these quiet hours; cancel or let them finish first, or "
                   "choose quiet hours outside their windows")
        raise Conflict(message, code="outside_sending_hours",
                       errors=[FieldError("quiet_start", message, "outside_sending_hours")])


async def _refine(conn: Any, sa: Row, c: Row, audience: Any) -> None:
    """Time-zone and region filters over-select in SQL (a zone can come from the number or
    the sub-account); drop the recipients the audience does not admit."""
    rows = await conn.fetch(
        """SELECT r.contact_id, k.timezone, k.phone FROM campaign_recipients r
           JOIN contacts k ON k.id = r.contact_id WHERE r.campaign_id = $1""", c["id"])
    drop = [r["contact_id"] for r in rows if not audience.admits(
        contact_timezone(r["timezone"], r["phone"], sa["timezone"]), r["phone"])]
    if drop:
        await conn.execute(
            "DELETE FROM campaign_recipients WHERE campaign_id = $1 AND contact_id = ANY($2)",
            c["id"], drop)
        await conn.execute(
            """UPDATE campaigns SET recipients_total = recipients_total - $2,
                   skipped_total = (SELECT count(*) FROM campaign_recipients
                                    WHERE campaign_id = $1 AND status = 'skipped')
               WHERE id = $1""", c["id"], len(drop))


async def do_pause_campaign(hub: Hub, sa: Row, id_: UUID, reason: str | None = None) -> Row:
    async with hub.transaction() as tx:
        c = await _locked(tx, sa["id"], id_)
        status = transition(c["status"], "pause")
        await store.unqueue(tx.conn, id_)
        row = await store.set_status(tx.conn, id_, status, paused_reason=reason or
                                     "paused by a user")
        tx.emit(sa["id"], "campaign.updated", snapshot(row), f"campaign:{id_}")
    return row


async def do_resume_campaign(hub: Hub, sa: Row, id_: UUID) -> Row:
    now = datetime.now(UTC)
    async with hub.transaction() as tx:
        c = await _locked(tx, sa["id"], id_)
        status = transition(c["status"], "resume", now=now, start_at=c["start_at"])
        row = await store.set_status(tx.conn, id_, status)
        tx.emit(sa["id"], "campaign.updated", snapshot(row), f"campaign:{id_}")
    return row


async def do_cancel_campaign(hub: Hub, sa: Row, id_: UUID) -> Row:
    async with hub.transaction() as tx:
        c = await _locked(tx, sa["id"], id_)
        status = transition(c["status"], "cancel")
        await store.cancel_rest(tx.conn, id_)
        row = await store.set_status(tx.conn, id_, status, extra=", completed_at = now()")
        tx.emit(sa["id"], "campaign.updated", snapshot(row), f"campaign:{id_}")
    return row


async def get_campaign(hub: Hub, sa_id: UUID, id_: UUID) -> Row:
    row = await store.get(hub.pool, sa_id, id_)
    if row is None:
        raise NotFound("no such campaign", code="campaign_not_found")
    return row


async def _rates(hub: Hub, c: Row) -> list[float]:
    """Messages per second of each of the campaign's senders, as the Sender shard paces
    them: it charges a message's segments to its sender's MPS and to the campaign's rate cap
    alike (carriers count throughput in segments), and a cap below the pool's MPS slows
    every sender in proportion."""
    mps = [float(r["mps"]) for r in await hub.pool.fetch(
        "SELECT mps FROM senders WHERE id = ANY($1::uuid[]) ORDER BY id", c["sender_ids"])]
    pool = sum(mps)
    total = min(pool, float(c["rate_cap"])) if c["rate_cap"] else pool
    segments = _segments(c)
    return [m / pool * total / segments for m in mps]


def _segments(c: Row) -> int:
    """Segments the shard charges per message (1 for email and calls), from the body with its
    merge fields blank or their defaults: recipients whose fields carry the body over a
    segment boundary cost one more."""
    if c["channel"] not in ("sms", "mms"):
        return 1
    return max(1, count_segments(parse(c["body"]).render({}).text).segments)


def _zones(groups: list[Any], sa: Row, audience: Any = None) -> dict[str, int]:
    """Recipient counts per time zone from contact groups (`audience_store.groups`); with an
    audience that needs refinement, groups it does not admit are left out."""
    zones: Counter[str] = Counter()
    for r in groups:
        tz = contact_timezone(r["timezone"], r["sample"], sa["timezone"])
        if audience is not None and audience.needs_refinement and \
                not audience.admits(tz, r["sample"]):
            continue
        zones[tz.key] += int(r["n"])
    return dict(zones)


_SKIP_WORDS = {"suppressed": "suppressed (opted out, bounced or blocked)",
               "no_phone": "without a phone number", "no_email": "without an email address"}


#: Email has no quiet hours: the scheduler never defers it (texts and calls only).
_ALWAYS = SendWindow(time(0), time(0))


def _window(c: Row) -> SendWindow:
    """The hours the scheduler holds the campaign's recipients to."""
    return _ALWAYS if c["channel"] == "email" else SendWindow(c["window_start"], c["window_end"])


async def campaign_stats(hub: Hub, sa: Row, id_: UUID) -> Row:
    c = await get_campaign(hub, sa["id"], id_)
    counts = await store.counts(hub.pool, id_)
    # The rate it sends at now: none unless running (a paused campaign's last sends are not
    # a rate it keeps).
    recent = await hub.pool.fetchval(
        """SELECT count(*) FROM messages WHERE campaign_id = $1
           AND sent_at > now() - interval '10 seconds'""", id_) \
        if c["status"] == "running" else 0
    rates = await _rates(hub, c)
    rate = sum(rates)
    remaining = _zones(await audience_store.groups(
        hub.pool, "c.id IN (SELECT contact_id FROM campaign_recipients WHERE campaign_id = $1 "
        "AND status = 'pending')", [id_]), sa)
    # Queued messages are past their window check: they leave first, one every 1/rate s from
    # now, and the pending recipients after them.
    queued = counts.get("queued", 0) + counts.get("sending", 0)
    now = datetime.now(UTC)
    eta = None
    if c["status"] in ("running", "scheduled") and rate > 0:
        eta = (projection.eta(remaining, now + timedelta(seconds=queued / rate), _window(c),
                              rates, start_at=c["start_at"])
               if remaining else max(now + timedelta(seconds=max(queued - 1, 0) / rate),
                                     c["start_at"] or now))
    errors = await store.top_errors(hub.pool, id_)
    return {
        "id": id_, "status": c["status"], "paused_reason": c["paused_reason"],
        "recipients_total": c["recipients_total"], "counts": counts,
        "current_rate_per_s": round(int(recent or 0) / 10.0, 2), "max_rate_per_s": rate,
        "top_errors": [{"code": e["error_code"], "count": int(e["n"])} for e in errors],
        "eta": eta, "allowed_actions": allowed_actions(c["status"]),
    }


async def campaign_dry_run(hub: Hub, sa: Row, id_: UUID) -> Row:
    c = await get_campaign(hub, sa["id"], id_)
    audience = parse_audience(c["audience"])
    where, args = audience_sql(audience, 1)
    zones = _zones(await audience_store.count_groups(hub.pool, sa["id"], c["channel"], where,
                                                     args), sa, audience)
    # Launch records these as skipped: count them here too, by reason.
    skipped: Counter[str] = Counter()
    for g in await store.skip_groups(hub.pool, sa["id"], c["channel"], where, args):
        skipped[g["reason"]] += sum(_zones([g], sa, audience).values())
    skipped = +skipped  # drops the reasons the audience's zone filters left empty
    now = datetime.now(UTC)
    p = projection.project(zones, now=now, start_at=c["start_at"], window=_window(c),
                           rate_per_s=await _rates(hub, c))
    warnings = list(p.warnings)
    recipients = sum(zones.values())
    for name, n in (await _blank_fields(hub, sa, c, audience, where, args)).items():
        warnings.append(f"{{{{ {name} }}}} is blank for {n:,} of the {recipients:,} recipients "
                        "and has no default: they get an empty gap")
    if skipped:
        warnings.append(f"{sum(skipped.values()):,} contacts of the audience will be skipped: "
                        + ", ".join(f"{n:,} {_SKIP_WORDS[r]}" for r, n in sorted(skipped.items())))
    return {
        "id": id_, "recipients": recipients, "by_zone": zones, "rate_per_s": p.rate_per_s,
        "first_send_at": p.first_send_at, "finish_at": p.finish_at,
        "unsendable": p.unsendable + sum(skipped.values()), "warnings": warnings,
        "timeline": [{"start": b.start, "end": b.end, "sends": b.sends, "by_zone": b.by_zone}
                     for b in p.timeline],
    }


async def _blank_fields(hub: Hub, sa: Row, c: Row, audience: Any, where: str,
                        args: list[Any]) -> dict[str, int]:
    """For each merge field without a default in the body or subject: how many of the
    recipients have it blank (those present in the count only)."""
    fields = {f.name: f.path for text in (c["body"], c["subject"]) if text
              for f in parse(text).parts if isinstance(f, MergeField) and f.default is None}
    blank: dict[str, int] = {}
    for name, path in fields.items():
        value, extra = "NULL::text", []  # unknown (stored before they were refused): blank
        if name in MERGE_FIELDS:
            value = f"c.{name}"  # a column name from our own list, never user input
        elif path[0] == "custom":
            value, extra = f"c.custom_fields #>> ${len(args) + 2}::text[]", [list(path[1:])]
        groups = await audience_store.count_groups(
            hub.pool, sa["id"], c["channel"], f"({where}) AND nullif(btrim({value}), '') IS NULL",
            args + extra)
        if n := sum(_zones(groups, sa, audience).values()):
            blank[name] = n
    return blank
