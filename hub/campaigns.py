"""The campaign domain without I/O: its status machine, the failure-rate auto-pause, audience
definitions (validated, and compiled to parameterised SQL) and the content checks a campaign
must pass before launch. The send-time projection lives in `hub.projection`.
"""

from __future__ import annotations

import json
import math
import unicodedata
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, time, tzinfo
from enum import StrEnum
from functools import lru_cache
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import phonenumbers

from hub.contacts import custom_key
from hub.errors import Conflict, FieldError, HubError, ValidationFailed
from hub.phones import phone_region
from hub.projection import Projection, RecipientSlot, TimelineBucket, eta, project
from hub.segments import MAX_BODY_CHARS, count_segments
from hub.templates import parse
from hub.timezones import SendWindow, validate_timezone

__all__ = [
    "EMPTY_MESSAGE", "NO_CALL_SCRIPT", "NO_MMS_MEDIA", "UNANSWERED_CALLS", "Action", "Audience",
    "AudienceFilter", "CampaignStatus", "ContentCheck", "FailureWindow", "Projection",
    "RecipientSlot", "TimelineBucket", "allowed_actions", "audience_sql", "campaign_window",
    "check_content", "empty_part", "eta", "outside_sending_hours", "parse_audience", "project",
    "sending_hours", "transition", "voice_script",
]

INVALID_TRANSITION = "invalid_transition"

# --- status machine --------------------------------------------------------------------------


class CampaignStatus(StrEnum):
    DRAFT = "draft"
    SCHEDULED = "scheduled"  # launched; its start time is still in the future
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELED = "canceled"


class Action(StrEnum):
    LAUNCH = "launch"
    PAUSE = "pause"
    RESUME = "resume"
    CANCEL = "cancel"
    COMPLETE = "complete"  # internal: every recipient is done
    START = "start"  # internal: a scheduled campaign's start time has come
    AUTO_PAUSE = "auto_pause"  # internal: the failure window tripped; store its reason


S, A = CampaignStatus, Action
TERMINAL = frozenset({S.COMPLETED, S.CANCELED})
USER_ACTIONS = (A.LAUNCH, A.PAUSE, A.RESUME, A.CANCEL)

# launch and resume land in SCHEDULED instead when the start time is still ahead.
_NEXT: dict[tuple[CampaignStatus, Action], CampaignStatus] = {
    (S.DRAFT, A.LAUNCH): S.RUNNING,
    (S.SCHEDULED, A.START): S.RUNNING,
    (S.SCHEDULED, A.PAUSE): S.PAUSED,
    (S.SCHEDULED, A.CANCEL): S.CANCELED,
    (S.RUNNING, A.PAUSE): S.PAUSED,
    (S.RUNNING, A.AUTO_PAUSE): S.PAUSED,
    (S.RUNNING, A.CANCEL): S.CANCELED,
    (S.RUNNING, A.COMPLETE): S.COMPLETED,
    (S.PAUSED, A.RESUME): S.RUNNING,
    (S.PAUSED, A.CANCEL): S.CANCELED,
    # Paused with nothing left (the last messages were in flight, or STOPs canceled the rest).
    (S.PAUSED, A.COMPLETE): S.COMPLETED,
}
_DONE = {A.LAUNCH: "launched", A.PAUSE: "paused", A.RESUME: "resumed", A.CANCEL: "canceled",
         A.COMPLETE: "completed", A.START: "started", A.AUTO_PAUSE: "paused automatically"}


def allowed_actions(status: CampaignStatus | str, *, internal: bool = False) -> list[str]:
    """The actions valid from `status`, in a stable order: the buttons the UI shows (add the
    scheduler's own actions with `internal=True`)."""
    status = CampaignStatus(status)
    actions = Action if internal else USER_ACTIONS
    return [a.value for a in actions if (status, a) in _NEXT]


def transition(
    current: CampaignStatus | str,
    action: Action | str,
    *,
    now: datetime | None = None,
    start_at: datetime | None = None,
) -> CampaignStatus:
    """The status after `action`, or Conflict ``invalid_transition`` saying what is possible.

    launch and resume go to ``scheduled`` when `start_at` is after `now`, else ``running``.
    """
    current = CampaignStatus(current)
    try:
        action = Action(action)
    except ValueError:
        raise ValidationFailed.field(
            "action", f"unknown action; use one of {', '.join(a.value for a in Action)}",
            "invalid_action") from None
    target = _NEXT.get((current, action))
    if target is None:
        raise Conflict(_refusal(current, action), code=INVALID_TRANSITION)
    if action in (A.LAUNCH, A.RESUME) and start_at is not None:
        if now is None:
            raise ValueError("transition needs `now` to compare with start_at")
        if start_at > now:
            return S.SCHEDULED
    return target


def _refusal(current: CampaignStatus, action: Action) -> str:
    possible = [_DONE[Action(a)] for a in allowed_actions(current)]
    if not possible:
        can = "it can only be viewed"
    elif len(possible) == 1:
        can = f"it can only be {possible[0]}"
    else:
        can = f"it can be {', '.join(possible[:-1])} or {possible[-1]}"
    if action is A.LAUNCH:
        extra = " (duplicate it to send it again)" if current in TERMINAL else ""
        return f"this campaign was already launched and is {current}; {can}{extra}"
    if _DONE[action] == current.value or (action is A.RESUME and current is S.RUNNING):
        return f"the campaign is already {current}; {can}"
    if current is S.DRAFT:  # not launched: nothing to cancel, and it may be deleted
        return f"a draft campaign cannot be {_DONE[action]}; it can only be launched or deleted"
    return f"a {current} campaign cannot be {_DONE[action]}; {can}"


# --- failure-rate auto-pause -----------------------------------------------------------------

#: Short names for the failures a marketer meets most; anything else shows its bare code.
ERROR_NAMES = {
    "21211": "invalid phone number", "21610": "recipient opted out (STOP)",
    "21614": "not a mobile number", "30003": "handset unreachable",
    "30004": "message blocked", "30005": "unknown or inactive number",
    "30006": "landline or unreachable carrier", "30007": "carrier filtering",
    "30008": "unknown carrier error", "30034": "sender not registered for A2P 10DLC",
    "bounce": "email bounced", "dropped": "email dropped", "spamreport": "marked as spam",
}

#: How a call ends when nobody takes it: the line was busy, it rang out, or it was called off
#: while ringing. That is what calling people is like, not a sign the campaign is broken:
#: the failure window counts such a call as tried and not failed, and names no such code.
UNANSWERED_CALLS = frozenset({"busy", "no-answer", "canceled"})


class FailureWindow:
    """Outcomes of a campaign's last `size` messages; trips when at least `min_samples` are
    known and the failed share reaches `threshold`. Throttling is not a failure: callers
    re-queue throttled messages and record nothing."""

    def __init__(self, size: int = 200, threshold: float = 0.2, min_samples: int = 50) -> None:
        if size < 1 or not 1 <= min_samples <= size:
            raise ValueError("need 1 <= min_samples <= size, or the window could never trip")
        if not 0 < threshold <= 1:
            raise ValueError("threshold is a share of messages in (0, 1]")
        self.size, self.threshold, self.min_samples = size, threshold, min_samples
        self._outcomes: deque[str | None] = deque()  # None = ok, else the error code
        self._errors: Counter[str] = Counter()

    @property
    def samples(self) -> int:
        return len(self._outcomes)

    @property
    def failures(self) -> int:
        return sum(self._errors.values())

    def record(self, ok: bool, error: str | int | None = None) -> None:
        if len(self._outcomes) == self.size:
            gone = self._outcomes.popleft()
            if gone is not None:
                self._errors[gone] -= 1
                if not self._errors[gone]:
                    del self._errors[gone]
        code = None if ok else str(error if error is not None else "unknown")
        self._outcomes.append(code)
        if code is not None:
            self._errors[code] += 1

    def rate(self) -> float:
        return self.failures / len(self._outcomes) if self._outcomes else 0.0

    def tripped(self) -> bool:
        n = len(self._outcomes)
        return n >= self.min_samples and self.failures >= self.threshold * n - 1e-9

    def reset(self) -> None:
        """Forget everything (on resume: the marketer has looked, give it a fresh start)."""
        self._outcomes.clear()
        self._errors.clear()

    def reason(self, errors: Mapping[str, int] | None = None,
               names: Mapping[str, str] | None = None) -> str:
        """The paused_reason a marketer reads; the top error comes from `errors` if given
        (e.g. counted over the whole campaign), else from this window."""
        source = self._errors if errors is None else errors
        counts = Counter({str(k): v for k, v in source.items() if v > 0})
        text = (f"paused automatically: {_pct(self.rate())} of the last {self.samples} "
                f"messages failed (threshold {_pct(self.threshold)})")
        if counts:
            code, _ = max(counts.items(), key=lambda kv: (kv[1], -_order(kv[0])))
            name = {**ERROR_NAMES, **(names or {})}.get(code)
            text += f"; top error {code} {name}" if name else f"; top error {code}"
        return text


def _order(code: str) -> float:
    return float(code) if code.isdigit() else math.inf  # ties: the lowest numeric code


def _pct(share: float) -> str:
    percent = share * 100
    return f"{percent:.0f}%" if abs(percent - round(percent)) < 0.05 else f"{percent:.1f}%"


# --- audience --------------------------------------------------------------------------------

MAX_CONTACT_IDS = 100_000
MAX_FILTERS = 20
MAX_TAGS = 100
MAX_TAG_LENGTH = 64
MAX_IN_VALUES = 1000
MAX_FIELD_NAME = 64
_OPS = {"custom": ("eq", "neq", "exists", "in"), "timezone": ("in",), "phone_region": ("in",)}
_TAG_LISTS = ("tags_any", "tags_all", "exclude_tags")
_KEYS = frozenset({"all_contacts", *_TAG_LISTS, "contact_ids", "filters"})

Scalar = str | int | float | bool
_Bad = Callable[[str, str, str], None]  # records one FieldError: where, message, code


@dataclass(frozen=True, slots=True)
class AudienceFilter:
    field: str  # "custom.<name>", "timezone" or "phone_region"
    op: str
    value: Scalar | tuple[Scalar, ...]


@dataclass(frozen=True, slots=True)
class Audience:
    """Who receives a campaign. Every given criterion must hold (they are AND-ed)."""

    all_contacts: bool = False
    tags_any: tuple[str, ...] = ()
    tags_all: tuple[str, ...] = ()
    exclude_tags: tuple[str, ...] = ()
    contact_ids: tuple[UUID, ...] = ()
    filters: tuple[AudienceFilter, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"all_contacts": self.all_contacts, "tags_any": list(self.tags_any),
                "tags_all": list(self.tags_all), "exclude_tags": list(self.exclude_tags),
                "contact_ids": [str(i) for i in self.contact_ids],
                "filters": [{"field": f.field, "op": f.op,
                             "value": list(f.value) if isinstance(f.value, tuple) else f.value}
                            for f in self.filters]}

    @property
    def needs_refinement(self) -> bool:
        """Whether `audience_sql` over-selects and `admits` must be applied to each row."""
        return any(f.field == "timezone" or (f.field == "phone_region" and not _exact_regions(
            f.value)) for f in self.filters)

    def admits(self, zone: ZoneInfo | str, phone: str | None) -> bool:
        """The checks SQL cannot make: `zone` is the contact's effective zone
        (`contact_timezone`), which may come from the number or the sub-account."""
        zone = zone if isinstance(zone, str) else zone.key
        for f in self.filters:
            if f.field == "timezone" and zone not in f.value:  # type: ignore[operator]
                return False
            if f.field == "phone_region" and (
                    not phone or phone_region(phone) not in f.value):  # type: ignore[operator]
                return False
        return True


def parse_audience(data: Mapping[str, Any], *, field: str = "audience") -> Audience:
    """A validated Audience, or one ValidationFailed naming every bad field."""
    errors: list[FieldError] = []

    def bad(where: str, message: str, code: str) -> None:
        errors.append(FieldError(f"{field}.{where}" if where else field, message, code))

    if not isinstance(data, Mapping):
        raise ValidationFailed.field(field, "must be an object", "invalid_type")
    for key in sorted(set(data) - _KEYS):
        bad(str(key), "unknown field; remove it or check its spelling", "unknown_field")
    all_contacts = data.get("all_contacts", False)
    if not isinstance(all_contacts, bool):
        bad("all_contacts", "must be true or false", "invalid_type")
    tags = {name: _tags(data.get(name), name, bad) for name in _TAG_LISTS}
    ids = _contact_ids(data.get("contact_ids"), bad)
    filters = _filters(data.get("filters"), bad)
    if all_contacts is True:  # every other criterion narrows; only exclude_tags goes with it
        for name, given in (("tags_any", tags["tags_any"]), ("tags_all", tags["tags_all"]),
                            ("contact_ids", ids), ("filters", filters)):
            if given:
                bad(name, f"all_contacts sends to every contact, so {name} would narrow it "
                    f"silently; remove {name} or set all_contacts to false",
                    "conflicting_criteria")
    if not errors and not (all_contacts or tags["tags_any"] or tags["tags_all"] or ids
                           or filters):
        bad("", "choose who receives it: tags, contacts or filters, or set all_contacts "
            "to send to every contact", "empty_audience")
    if errors:
        raise ValidationFailed("; ".join(f"{e.field}: {e.message}" for e in errors),
                               errors=errors)
    return Audience(all_contacts is True, tags["tags_any"], tags["tags_all"],
                    tags["exclude_tags"], ids, filters)


def _list(value: Any, where: str, bad: _Bad, limit: int, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        bad(where, "must be a list", "invalid_type")
        return []
    if len(value) > limit:
        bad(where, f"at most {limit:,} {what}", "too_many")
        return []
    return value


def _tags(value: Any, where: str, bad: _Bad) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for i, tag in enumerate(_list(value, where, bad, MAX_TAGS, "tags")):
        if not isinstance(tag, str) or not tag.strip():
            bad(f"{where}.{i}", "a tag is non-empty text", "invalid_tag")
        elif len(tag.strip()) > MAX_TAG_LENGTH:
            bad(f"{where}.{i}", f"a tag is at most {MAX_TAG_LENGTH} characters", "too_long")
        else:
            seen[tag.strip()] = None
    return tuple(seen)


def _contact_ids(value: Any, bad: _Bad) -> tuple[UUID, ...]:
    seen: dict[UUID, None] = {}
    wrong = 0
    for i, raw in enumerate(_list(value, "contact_ids", bad, MAX_CONTACT_IDS, "contacts; "
                                  "use tags or an import for larger lists")):
        try:
            seen[raw if isinstance(raw, UUID) else UUID(str(raw))] = None
        except ValueError:
            wrong += 1
            if wrong <= 10:  # a pasted column of junk should not make 100k errors
                bad(f"contact_ids.{i}", "not a contact id (UUID)", "invalid_uuid")
    return tuple(seen)


def _filters(value: Any, bad: _Bad) -> tuple[AudienceFilter, ...]:
    out: list[AudienceFilter] = []
    for i, raw in enumerate(_list(value, "filters", bad, MAX_FILTERS, "filters")):
        at = f"filters.{i}"
        if not isinstance(raw, Mapping):
            bad(at, 'must be an object like {"field": ..., "op": ..., "value": ...}',
                "invalid_type")
            continue
        for key in sorted(set(raw) - {"field", "op", "value"}):
            bad(f"{at}.{key}", "unknown field; a filter has field, op and value",
                "unknown_field")
        name, op = raw.get("field"), raw.get("op")
        kind = _filter_kind(name)
        if kind is None:
            bad(f"{at}.field", "use custom.<field name>, timezone or phone_region",
                "invalid_filter_field")
            continue
        if op not in _OPS[kind]:
            bad(f"{at}.op", f"{name} takes op {' or '.join(_OPS[kind])}", "invalid_filter_op")
            continue
        filter_value = _filter_value(kind, op, raw.get("value", True if op == "exists"
                                                        else None), f"{at}.value", bad)
        if filter_value is not None:
            out.append(AudienceFilter(str(name), str(op), filter_value))
    return tuple(out)


def _filter_kind(name: Any) -> str | None:
    if name in ("timezone", "phone_region"):
        return str(name)
    if isinstance(name, str) and name.startswith("custom."):
        key = name[len("custom."):]
        if 0 < len(key) <= MAX_FIELD_NAME and custom_key(key) and not any(
                unicodedata.category(ch).startswith("C") for ch in key):
            return "custom"
    return None


def _filter_value(kind: str, op: str, value: Any, at: str,
                  bad: _Bad) -> Scalar | tuple[Scalar, ...] | None:
    if op == "exists":
        if isinstance(value, bool):
            return value
        bad(at, "exists takes true or false", "invalid_value")
        return None
    if op in ("eq", "neq"):
        if isinstance(value, Scalar) and not (isinstance(value, float) and
                                              not math.isfinite(value)):
            return value
        bad(at, "compare with one text, number or true/false", "invalid_value")
        return None
    if not isinstance(value, list) or not value:
        bad(at, "in takes a non-empty list", "invalid_value")
        return None
    if len(value) > MAX_IN_VALUES:
        bad(at, f"at most {MAX_IN_VALUES} values", "too_many")
        return None
    out: list[Scalar] = []
    for j, item in enumerate(value):
        try:
            out.append(_in_item(kind, item, f"{at}.{j}"))
        except HubError as exc:
            for e in exc.errors:
                bad(e.field, e.message, e.code)
    return tuple(dict.fromkeys(out)) if len(out) == len(value) else None


def _in_item(kind: str, item: Any, at: str) -> Scalar:
    if kind == "timezone" and isinstance(item, str):
        return validate_timezone(item, field=at)
    if kind == "phone_region" and isinstance(item, str):
        region = item.strip().upper()
        if region in phonenumbers.SUPPORTED_REGIONS:
            return region
        raise ValidationFailed.field(at, "not a two-letter region code such as US or GB",
                                     "invalid_region")
    if kind == "custom" and isinstance(item, Scalar):
        return item
    raise ValidationFailed.field(at, "not a valid value for this filter", "invalid_value")


def _exact_regions(regions: Any) -> bool:
    """Whether calling-code prefixes select exactly these regions (no region shares one)."""
    return all(len(phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(
        phonenumbers.country_code_for_region(r), ())) == 1 for r in regions)


def _text(value: Scalar) -> str:
    # What `->>` yields for the JSON value: numbers and booleans as JSON spells them.
    return value if isinstance(value, str) else json.dumps(value)


def audience_sql(audience: Audience, param_offset: int = 0) -> tuple[str, list[Any]]:
    """A WHERE fragment over ``contacts c`` and its parameters, numbered from
    ``$<param_offset + 1>``. No value (tag, field name, id) is ever part of the SQL text.

    The caller adds tenancy (``c.sub_account_id = $1``), reachability on the channel and
    suppressions. When `audience.needs_refinement`, the fragment is a superset: apply
    `audience.admits(effective_zone, phone)` to each row (the planner computes the zone
    anyway).
    """
    params: list[Any] = []

    def p(value: Any, cast: str) -> str:
        params.append(value)
        return f"${param_offset + len(params)}::{cast}"

    where: list[str] = []
    if audience.tags_any:
        where.append(f"c.tags && {p(list(audience.tags_any), 'text[]')}")
    if audience.tags_all:
        where.append(f"c.tags @> {p(list(audience.tags_all), 'text[]')}")
    if audience.exclude_tags:
        where.append(f"NOT (c.tags && {p(list(audience.exclude_tags), 'text[]')})")
    if audience.contact_ids:
        where.append(f"c.id = ANY({p(list(audience.contact_ids), 'uuid[]')})")
    for f in audience.filters:
        where.append(_filter_sql(f, p))
    return (" AND ".join(f"({w})" for w in where) or "TRUE"), params


def _filter_sql(f: AudienceFilter, p: Callable[[Any, str], str]) -> str:
    values = f.value if isinstance(f.value, tuple) else (f.value,)
    if f.field == "timezone":
        # No explicit zone: the effective one comes from the number, known only to `admits`.
        return f"c.timezone IS NULL OR c.timezone = ANY({p(list(values), 'text[]')})"
    if f.field == "phone_region":
        prefixes = sorted({f"+{phonenumbers.country_code_for_region(str(r))}%" for r in values})
        return f"c.phone LIKE ANY({p(prefixes, 'text[]')})"
    # The key the field is stored under (hub.contacts.custom_key): `custom.Plan` finds what
    # an import of a `Plan` column stored as `plan`.
    value = f"c.custom_fields ->> {p(custom_key(f.field.removeprefix('custom.')), 'text')}"
    if f.op == "exists":  # blank counts as absent, as it does for merge fields
        return f"nullif(btrim({value}), '') IS {'NOT ' if f.value else ''}NULL"
    if f.op == "eq":
        return f"{value} = {p(_text(values[0]), 'text')}"
    if f.op == "neq":  # a contact without the field is "not gold" too
        return f"{value} IS DISTINCT FROM {p(_text(values[0]), 'text')}"
    return f"{value} = ANY({p([_text(v) for v in values], 'text[]')})"


# --- sending window --------------------------------------------------------------------------

EMPTY_WINDOW = "empty_window"
OUTSIDE_SENDING_HOURS = "outside_sending_hours"


def sending_hours(sub_account: Mapping[str, Any]) -> SendWindow:
    """The hours outside the sub-account's quiet hours: the most a campaign may send in."""
    return SendWindow.from_quiet_hours(sub_account["quiet_start"], sub_account["quiet_end"])


def campaign_window(start: time | None, end: time | None, sub_account: Mapping[str, Any],
                    channel: str) -> SendWindow:
    """The campaign's daily sending window: as given, else (each end that is not given) the
    sub-account's sending hours. Fixed when the campaign is created and stored on it, so
    launch, dry run, ETA and scheduler read one window.

    A window whose start equals its end is refused (ValidationFailed naming window_start):
    "09:00–09:00" reads as a one-instant window and would otherwise mean "any hour". So is
    one reaching outside the sending hours (`outside_sending_hours`)."""
    default = sending_hours(sub_account)
    window = SendWindow(default.start if start is None else start,
                        default.end if end is None else end)
    if window.always_open:
        where = ("" if start is not None and end is not None else
                 f" (the sub-account's quiet hours are {_hm(sub_account['quiet_start'])}–"
                 f"{_hm(sub_account['quiet_end'])})")
        raise ValidationFailed.field(
            "window_start", f"the window starts and ends at {_hm(window.start)}{where}; give "
            "window_start and window_end that differ, inside the sub-account's sending hours",
            EMPTY_WINDOW)
    outside = outside_sending_hours(window, channel, sub_account)
    if outside is not None:
        raise ValidationFailed(f"{outside.field}: {outside.message}", errors=[outside])
    return window


def outside_sending_hours(window: SendWindow, channel: str, sub_account: Mapping[str, Any]
                          ) -> FieldError | None:
    """Why texts or calls on `window` would leave in the sub-account's quiet hours, naming
    window_start (or window_end when only the end reaches past them); None when the window is
    inside its sending hours. Quiet hours are a compliance setting: a campaign may narrow
    them, never widen them. Email has none: the scheduler sends it at any hour."""
    hours = sending_hours(sub_account)
    if channel == "email" or window.inside(hours):
        return None
    field = "window_end" if hours.contains(window.start) else "window_start"
    return FieldError(
        field, f"the window {_hm(window.start)}–{_hm(window.end)} reaches outside this "
        f"sub-account's sending hours, {_hm(hours.start)}–{_hm(hours.end)} (its quiet hours "
        f"are {_hm(hours.end)}–{_hm(hours.start)}, set by an admin in Settings); give a window "
        "inside them, or leave window_start and window_end out to use them",
        OUTSIDE_SENDING_HOURS)


def _hm(t: time) -> str:
    return t.strftime("%H:%M")


@lru_cache(maxsize=4096)
def window_closes(window: SendWindow, utc_now: datetime, tz: tzinfo) -> datetime | None:
    """The instant (UTC) after `utc_now` at which `window`, open now in `tz`, closes: when
    the quiet hours, seen as a window of their own, next open (DST handled as
    `SendWindow.next_open` handles it). None for a window that never closes. Cached: the
    scheduler asks it for every recipient of a fill, at one `utc_now`, in a few zones."""
    if window.always_open:
        return None
    return SendWindow(start=window.end, end=window.start).next_open(utc_now, tz)


# --- content checks --------------------------------------------------------------------------

CHANNELS = ("sms", "mms", "email", "voice")
MAX_MEDIA = 10
#: The contact's fields the scheduler renders a campaign with, besides custom.<name>.
MERGE_FIELDS = ("first_name", "last_name", "phone", "email")
UNKNOWN_MERGE_FIELD = "unknown_merge_field"


#: Why a call or an MMS is refused, in the words of both the one-off send and campaigns.
NO_CALL_SCRIPT = ("a call needs words to say (voice.say, or body) or an audio URL "
                  "(voice.play_url, or one media URL)")
NO_MMS_MEDIA = "an MMS needs at least one media URL; send an SMS instead"


def voice_script(body: str, media_urls: Sequence[str],
                 voice: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What a call says and plays, the one rule of the one-off send, replies, templates and
    campaigns: `voice.say`, else `body`; `voice.play_url`, else the (one) media URL. None
    when it would neither say nor play anything."""
    script = dict(voice or {})
    script["say"] = next((t for t in (script.get("say"), body) if t and t.strip()), None)
    script["play_url"] = script.get("play_url") or (str(media_urls[0]) if media_urls else None)
    return script if script["say"] or script["play_url"] else None


#: The skip reason of a recipient whose message renders empty (`empty_part`).
EMPTY_MESSAGE = "empty_message"


def empty_part(channel: str, body: str, html: str | None, media_urls: Sequence[str],
               voice: Mapping[str, Any] | None) -> str | None:
    """The part of a rendered message that leaves it with nothing to send (its merge fields
    blank for the recipient, without defaults), or None: an SMS's body, an email's body when
    it has no HTML either, a call's script. (An email's subject cannot be: `check_content`
    wants text in it whatever the merge fields.) The scheduler skips such a recipient
    (`EMPTY_MESSAGE`) rather than send an empty text, which a carrier refuses (Twilio 21602)
    or, worse, delivers."""
    blank = not body.strip()
    if channel == "sms" and blank:
        return "body"
    if channel == "email" and blank and not (html or "").strip():
        return "body"
    if channel == "voice" and voice_script(body, media_urls, voice) is None:
        return "voice.say"
    return None


def _known_variable(name: str) -> bool:
    return name in MERGE_FIELDS or name.startswith("custom.")


@dataclass(frozen=True, slots=True)
class ContentCheck:
    channel: str
    body: str  # rendered with the sample contact
    subject: str | None
    characters: int
    segments: int | None  # sms only
    encoding: str | None  # sms only: GSM-7 or UCS-2
    missing: list[str]  # merge fields blank for the sample and without a default
    warnings: list[str]


def check_content(
    channel: str,
    body: str,
    subject: str | None = None,
    media_urls: Sequence[str] = (),
    sample_vars: Mapping[str, object] | None = None,
    *,
    smart_encoding: bool = False,
    other_texts: Mapping[str, str | None] | None = None,
    voice: Mapping[str, Any] | None = None,
) -> ContentCheck:
    """What the sample contact would receive, or ValidationFailed naming each bad field.
    `other_texts` (field → text: an email's HTML, a call's words) are rendered per
    recipient too, so they are checked as templates, not rendered here. `voice` is a
    call's script (`voice_script` says what the call says and plays)."""
    if channel not in CHANNELS:
        raise ValidationFailed.field("channel", f"one of {', '.join(CHANNELS)}",
                                     "invalid_channel")
    errors: list[FieldError] = []
    templates = {}
    for name, text in (("body", body), ("subject", subject), *(other_texts or {}).items()):
        try:
            templates[name] = parse(text or "", field=name)
        except ValidationFailed as exc:
            errors.extend(exc.errors)
    for name, template in templates.items():
        unknown = [v for v in template.variables if not _known_variable(v)]
        if unknown:
            errors.append(FieldError(name, f"unknown merge field{'s' if len(unknown) > 1 else ''}"
                                     f" {', '.join(f'{{{{ {v} }}}}' for v in unknown)}; use "
                                     f"{', '.join(MERGE_FIELDS)} or custom.<field name>",
                                     UNKNOWN_MERGE_FIELD))
    if errors:
        raise ValidationFailed("; ".join(e.message for e in errors), errors=errors)
    sample = sample_vars or {}
    rendered, title = templates["body"].render(sample), templates["subject"].render(sample)
    text = rendered.text

    def bad(where: str, message: str, code: str) -> None:
        errors.append(FieldError(where, message, code))

    for i, url in enumerate(media_urls):
        if not url.lower().startswith(("https://", "http://")):
            bad(f"media_urls.{i}", "must be an http(s) URL", "invalid_url")
    if channel == "sms" and media_urls:
        bad("media_urls", "only MMS campaigns carry media; choose channel mms", "not_allowed")
    if channel == "mms" and len(media_urls) > MAX_MEDIA:
        bad("media_urls", f"at most {MAX_MEDIA} media per MMS", "too_many")
    if channel == "voice" and len(media_urls) > 1:
        bad("media_urls", "a voice call plays at most one audio file", "too_many")
    # Empty is judged on the template, not on the sample: "{{first_name}}" is a message,
    # though not for a contact without a first name (`empty_part` at send time).
    body_blank = templates["body"].blank
    if channel in ("sms", "email") and body_blank:
        bad("body", "the message is empty", "required")
    if channel == "mms" and not media_urls:
        bad("media_urls", NO_MMS_MEDIA, "required")
    if channel == "voice" and voice_script("" if body_blank else body, media_urls,
                                           voice) is None:
        bad("voice.say", NO_CALL_SCRIPT, "required")
    if channel == "email" and not title.text.strip():  # a subject line is never left out
        bad("subject", "an email campaign needs a subject", "required")
    if channel in ("sms", "mms") and len(text) > MAX_BODY_CHARS:
        bad("body", f"{len(text):,} characters with the sample contact's fields; the limit is "
            f"{MAX_BODY_CHARS:,}", "too_long")
    if errors:
        raise ValidationFailed("; ".join(f"{e.field}: {e.message}" for e in errors),
                               errors=errors)

    missing = list(dict.fromkeys(rendered.missing + title.missing))
    warnings = [f"{{{{ {m} }}}} is blank for the sample contact and has no default; "
                "such recipients get an empty gap" for m in missing]
    said = {k: t.render(sample).text for k, t in templates.items() if k in ("html", "voice.say")}
    empty = empty_part(channel, text, said.get("html"), media_urls,
                       voice and {**voice, "say": said.get("voice.say")})
    if empty is not None:
        warnings.append(f"the {empty} is empty for the sample contact: such recipients are "
                        f"skipped ({EMPTY_MESSAGE}), never sent an empty message")
    segments = encoding = None
    if channel == "sms":
        info = count_segments(text, smart_encoding=smart_encoding)
        segments, encoding = info.segments, info.encoding
        if info.non_gsm_chars:
            shown = "".join(dict.fromkeys(info.non_gsm_chars))[:10]
            warnings.append(f"{shown} make the message UCS-2: 70 characters per segment "
                            f"instead of 160 ({segments} segments)")
    return ContentCheck(channel, text, title.text if channel == "email" else None, len(text),
                        segments, encoding, missing, warnings)
