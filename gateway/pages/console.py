"""The campaign console (marketers and admins): the list, the step-by-step form with its live
audience count and content preview, the dry-run chart, and the live campaign view.

Reads come straight from the hub; every change goes through the REST API from the browser
(session cookie + CSRF header), so the API's rules and the role table apply to the pages."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from gateway.pages.charts import timeline_svg
from gateway.pages.common import AccessDep, PageDenied, contact_label, render, require
from gateway.pages.explain import explain
from hub import campaign_actions, events
from hub.campaigns import CHANNELS, TERMINAL, audience_sql, check_content, parse_audience
from hub.context import Hub
from hub.conversations import reply_subject
from hub.errors import HubError, ValidationFailed
from hub.segments import count_segments
from hub.store import audience as audience_store
from hub.store import campaigns as campaign_store
from hub.store import contacts as contact_store
from hub.store import messaging, tenants
from hub.store import templates as template_store
from hub.templates import merge_variables
from hub.timezones import contact_timezone
from hub.users import Role

router = APIRouter()
MARKETING = (Role.ADMIN, Role.MARKETER)
#: Outcome groups of the progress bar, in drawing order.
OUTCOMES = [
    ("delivered", ("delivered", "read"), "Delivered"),
    ("sent", ("sent", "sending"), "Sent"),
    ("failed", ("failed", "undelivered"), "Failed"),
    ("skipped", ("skipped", "canceled"), "Skipped"),
]
Text = Annotated[str, Query(max_length=2000)]
#: The channels the campaign form has inputs for (a call's script is set through the API).
EDITABLE_CHANNELS = ("sms", "mms", "email")


def _hub(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


def _tags(value: str) -> list[str]:
    return [t.strip() for t in value.replace(";", ",").split(",") if t.strip()]


@router.get("/sa/{sa}/campaigns")
async def campaigns(request: Request, access: AccessDep) -> HTMLResponse:
    require(access, *MARKETING)
    rows = await campaign_store.list_page(_hub(request).pool, access.sa_id, None, None, 100)
    return render(request, "campaigns.html", access=access, campaigns=rows[:100],
                  section="campaigns")


#: The message step's inputs as the form labels them, by the API field they fill.
CONTENT_LABELS = {"body": "Message", "subject": "Subject", "media_urls": "Media URLs"}
#: The audience step's inputs as the form labels them, by the API field (or filter) they fill.
AUDIENCE_LABELS = {"tags_any": "Has any of these tags", "tags_all": "Has all of these tags",
                   "exclude_tags": "Leave out contacts tagged", "phone_region": "Country",
                   "timezone": "Time zone", "custom": "Custom field"}


def audience_spec(tags_any: str = "", tags_all: str = "", exclude_tags: str = "",
                  regions: str = "", timezones: Sequence[str] = (), custom_field: str = "",
                  custom_value: str = "") -> dict[str, Any]:
    """The API's `audience` object for the console's audience step; app.js builds the same
    object from the same inputs when the form is submitted."""
    spec: dict[str, Any] = {"tags_any": _tags(tags_any), "tags_all": _tags(tags_all),
                            "exclude_tags": _tags(exclude_tags)}
    filters: list[dict[str, Any]] = []
    if region_list := _tags(regions):
        filters.append({"field": "phone_region", "op": "in",
                        "value": [r.upper() for r in region_list]})
    if timezones:
        filters.append({"field": "timezone", "op": "in", "value": list(timezones)})
    values = _tags(custom_value)
    if values and not custom_field.strip():
        raise ValidationFailed.field("custom_field", "name the custom field to compare "
                                     "with; the value alone matches nothing", "required")
    if custom_field.strip():
        field = "custom." + custom_field.strip()
        filters.append({"field": field, "op": "exists", "value": True} if not values else
                       {"field": field, "op": "eq", "value": values[0]} if len(values) == 1
                       else {"field": field, "op": "in", "value": values})
    spec["filters"] = filters
    return {k: v for k, v in spec.items() if v} or {"all_contacts": True}


def audience_words(exc: HubError, spec: dict[str, Any]) -> str:
    """The audience's errors in the form's words: its field paths (`audience.filters.0.
    value.1`) become the input's label and the value typed there."""
    out = []
    for e in exc.errors or ():
        parts = e.field.removeprefix("audience.").split(".")
        label, given = AUDIENCE_LABELS.get(parts[0], e.field), None
        if parts[0] == "filters" and len(parts) > 1 and parts[1].isdigit():
            f = spec["filters"][int(parts[1])]
            label = AUDIENCE_LABELS["custom" if f["field"].startswith("custom.") else f["field"]]
            if parts[2:3] == ["value"] and len(parts) > 3 and isinstance(f["value"], list):
                given = f["value"][int(parts[3])]
        elif e.field == "custom_field":
            label = AUDIENCE_LABELS["custom"]
        what = f"“{given}” is {e.message}" if given is not None and e.message.startswith(
            "not ") else e.message
        out.append(f"{label}: {what}")
    return "; ".join(out) or exc.detail


async def _saved_templates(hub: Hub, sa_id: UUID) -> list[dict[str, Any]]:
    """The templates the message step's picker offers (newest 200; app.js shows those of
    the chosen channel): picking one fills the message and the campaign keeps its id."""
    rows = await template_store.list_page(hub.pool, sa_id, channel=None, q=None, cursor=None,
                                          limit=200)
    return [t for t in rows[:200] if t["channel"] in EDITABLE_CHANNELS]


@router.get("/sa/{sa}/campaigns/new")
async def new_campaign(request: Request, access: AccessDep) -> HTMLResponse:
    require(access, *MARKETING)
    hub = _hub(request)
    senders = await tenants.list_senders(hub.pool, access.sa_id, None, None, 200)
    tags = await audience_store.tags(hub.pool, access.sa_id)
    zones = await audience_store.timezones(hub.pool, access.sa_id)
    return render(request, "campaign_new.html", access=access, senders=senders[:200],
                  tags=tags, zones=zones, section="campaigns",
                  saved_templates=await _saved_templates(hub, access.sa_id))


@router.get("/sa/{sa}/campaigns/audience-count")
async def audience_count(request: Request, access: AccessDep, channel: str = "sms",
                         tags_any: Text = "", tags_all: Text = "", exclude_tags: Text = "",
                         regions: Text = "",
                         timezones: Annotated[list[str] | None, Query()] = None,
                         custom_field: Text = "", custom_value: Text = "") -> HTMLResponse:
    """The live recipient count beside the audience step."""
    require(access, *MARKETING)
    spec: dict[str, Any] = {}
    try:
        spec = audience_spec(tags_any, tags_all, exclude_tags, regions,
                             (timezones or [])[:100], custom_field, custom_value)
        audience = parse_audience(spec)
    except HubError as exc:
        return HTMLResponse(f'<span class="error" data-testid="audience-error">'
                            f'{escape(audience_words(exc, spec))}</span>')
    where, args = audience_sql(audience, 1)
    pool = _hub(request).pool
    if audience.needs_refinement:  # zones and shared calling codes: check per group
        zone = access.sub_account["timezone"]
        n = sum(int(g["n"]) for g in await audience_store.count_groups(
            pool, access.sa_id, channel, where, args)
            if audience.admits(contact_timezone(g["timezone"], g["sample"], zone), g["sample"]))
    else:
        n = await audience_store.count(pool, access.sa_id, channel, where, args)
    who = "everyone" if "all_contacts" in spec else "this audience"
    return HTMLResponse(f'<strong data-testid="audience-count">{n:,}</strong> reachable '
                        f'recipients in {who} on {escape(channel)} (opted-out contacts left out)')


@router.get("/sa/{sa}/compose/check")
async def compose_check(request: Request, access: AccessDep, body: Text = "",
                        subject: Text = "", media_urls: Text = "", channel: str = "sms",
                        conversation: UUID | None = None,
                        start_at: datetime | None = None) -> HTMLResponse:
    """Segment counter and merge-field preview with a real contact of the sub-account: a
    reply box's own thread (its contact and channel), else the newest contact."""
    hub = _hub(request)
    if conversation is not None:
        conv = await messaging.get_conversation(hub.pool, access.sa_id, conversation)
        if conv is None:
            raise PageDenied(404, "Not found", "There is no such conversation here.")
        sample = await contact_store.get(hub.pool, access.sa_id, conv["contact_id"]) or {}
        channel = conv["channel"]
        title = await reply_subject(hub, conv, subject or None)
    else:
        rows = await contact_store.list_page(hub.pool, access.sa_id, tag=None, q=None,
                                             cursor=None, limit=1)
        sample = rows[0] if rows else {}
        channel = channel if channel in CHANNELS else "sms"
        title = subject
    try:
        check = check_content(channel, body or " ", title or " ", media_urls.split(),
                              merge_variables(sample))
    except HubError as exc:
        words = "; ".join(f"{CONTENT_LABELS.get(e.field.split('.')[0], e.field)}: {e.message}"
                          for e in exc.errors)
        return render(request, "_compose_check.html", error=words or exc.detail, check=None)
    info = count_segments(check.body) if channel == "sms" else None
    warnings = list(check.warnings)
    if start_at and start_at.replace(tzinfo=start_at.tzinfo or UTC) < datetime.now(UTC):
        warnings.append("Starts now: the start date is in the past.")
    return render(request, "_compose_check.html", error="", check=check, info=info,
                  label=contact_label(sample) if sample else "a contact", warnings=warnings)


def form_values(c: dict[str, Any]) -> dict[str, Any]:
    """What the campaign form shows for draft `c`, by input name. `audience_editable` says
    whether the audience step can show the campaign's audience: one made through the API
    with contact ids, or filters the form does not build, is kept as it is instead (the
    step's inputs would send a different one)."""
    a = c["audience"]
    values: dict[str, Any] = {f: ", ".join(a.get(f) or []) for f in
                              ("tags_any", "tags_all", "exclude_tags")}
    values |= {"regions": "", "timezones": [], "custom_field": "", "custom_value": ""}
    for f in a.get("filters") or []:
        listed = f["value"] if isinstance(f["value"], list) else [f["value"]]
        if f["field"] == "phone_region":
            values["regions"] = ", ".join(listed)
        elif f["field"] == "timezone":
            values["timezones"] = listed
        elif f["field"].startswith("custom."):
            values["custom_field"] = f["field"].removeprefix("custom.")
            values["custom_value"] = "" if f["op"] == "exists" else ", ".join(map(str, listed))
    try:
        spec = audience_spec(**values)
        values["audience_editable"] = parse_audience(spec).to_json() == \
            parse_audience(a).to_json()
    except HubError:
        values["audience_editable"] = False
    return values | {"media_urls": "\n".join(c["media_urls"]),
                     "sender_ids": {str(i) for i in c["sender_ids"]}}


@router.get("/sa/{sa}/campaigns/{campaign_id}/edit")
async def edit_campaign(request: Request, access: AccessDep,
                        campaign_id: UUID) -> HTMLResponse:
    """The campaign form, filled in with a draft's fields; it saves with PATCH."""
    require(access, *MARKETING)
    hub = _hub(request)
    c = await campaign_actions.get_campaign(hub, access.sa_id, campaign_id)
    if c["status"] != "draft" or c["channel"] not in EDITABLE_CHANNELS:
        raise PageDenied(409, "Not editable here",
                         "Only a draft text or email campaign is edited here; once launched "
                         "a campaign sends what it was launched with: duplicate it instead.")
    senders = await tenants.list_senders(hub.pool, access.sa_id, None, None, 200)
    tags = await audience_store.tags(hub.pool, access.sa_id)
    form = form_values(c)
    # The draft's zones stay choosable even if no contact is in them any more.
    zones = sorted(set(await audience_store.timezones(hub.pool, access.sa_id))
                   | set(form["timezones"]))
    return render(request, "campaign_new.html", access=access, senders=senders[:200],
                  tags=tags, zones=zones, section="campaigns", c=c, form=form,
                  saved_templates=await _saved_templates(hub, access.sa_id))


@router.get("/sa/{sa}/campaigns/{campaign_id}")
async def campaign(request: Request, access: AccessDep, campaign_id: UUID) -> HTMLResponse:
    require(access, *MARKETING)
    hub = _hub(request)
    c = await campaign_actions.get_campaign(hub, access.sa_id, campaign_id)
    dry = chart = None
    if c["status"] == "draft":
        dry = await campaign_actions.campaign_dry_run(hub, access.sub_account, campaign_id)
        chart = timeline_svg(dry["timeline"], f"Projected sends over time for {c['name']}")
    # The feed resumes from the head as it was before the page read anything, so a change
    # that lands while the page renders still redraws it.
    bounds = await events.log_bounds(hub.pool, access.sa_id)
    live = await _live(hub, access, campaign_id)
    return render(request, "campaign.html", access=access, c=c, dry=dry, chart=chart,
                  section="campaigns", seq=bounds[1] if bounds else "", **live)


@router.get("/sa/{sa}/campaigns/{campaign_id}/live")
async def campaign_live(request: Request, access: AccessDep,
                        campaign_id: UUID) -> HTMLResponse:
    """The live part, redrawn by htmx when the feed reports the campaign moved."""
    require(access, *MARKETING)
    live = await _live(_hub(request), access, campaign_id)
    return render(request, "_campaign_live.html", access=access, **live)


async def _live(hub: Hub, access: Any, campaign_id: UUID) -> dict[str, Any]:
    stats = await campaign_actions.campaign_stats(hub, access.sub_account, campaign_id)
    counts = stats["counts"]
    total = max(int(stats["recipients_total"]), 1)
    bars = []
    for key, statuses, label in OUTCOMES:
        n = sum(int(counts.get(s, 0)) for s in statuses)
        bars.append({"key": key, "label": label, "n": n, "pct": round(100 * n / total, 2)})
    in_flight = ("pending", "queued", "scheduled", "sending")
    done = sum(int(v) for k, v in counts.items() if k not in in_flight)
    finished = stats["status"] in {s.value for s in TERMINAL}
    progress = 100.0 if finished and stats["recipients_total"] else \
        round(min(100.0, 100 * done / total), 1)
    errors = [{"code": e["code"], "count": e["count"], "words": explain(e["code"])}
              for e in stats["top_errors"]]
    return {"stats": stats, "bars": bars, "progress": progress, "errors": errors,
            "waiting": int(counts.get("pending", 0)) + int(counts.get("queued", 0)),
            "finished": finished, "campaign_id": campaign_id}
