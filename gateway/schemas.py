"""Request and response bodies of the REST API. Requests forbid unknown fields, so a typo
is a named error instead of a silently ignored value."""

from __future__ import annotations

import re
from datetime import UTC, datetime, time, timedelta
from typing import Annotated, Any, Generic, Literal, TypeVar
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    HttpUrl,
    ValidationError,
    ValidationInfo,
    computed_field,
    field_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from hub.json_values import find_leaf, has_nul, not_finite_message, unstorable

T = TypeVar("T")


def _nul_error(where: str, field: str) -> PydanticCustomError:
    at = "" if where == field else f" at {where}"
    return PydanticCustomError("nul_character",
                               "contains a NUL character (\\u0000){at}; remove it", {"at": at})


def _refuse_nul(value: Any, info: ValidationInfo) -> Any:
    """`value`, or a validation error if a string in it holds a NUL character."""
    field = info.field_name or ""
    found = find_leaf(value, field, has_nul)
    if found is not None:
        raise _nul_error(found[0], field)
    return value


def _refuse_unstorable(value: Any, info: ValidationInfo) -> Any:
    """`value`, or a validation error if it holds what PostgreSQL cannot store: a NUL
    character (named at the field, where in the message), or a NaN or infinite number,
    which Python's JSON reads but which is not JSON (named at its path, as
    `custom_fields.score` or `audience.filters[0].value`, where free JSON holds it)."""
    field = info.field_name or ""
    found = find_leaf(value, field, unstorable)
    if found is None:
        return value
    where, leaf = found
    if isinstance(leaf, str):
        raise _nul_error(where, field)
    # A ValidationError raised here keeps its loc, under the field's: the rest of the path.
    inner = where[len(field):].removeprefix(".")
    raise ValidationError.from_exception_data("body", [InitErrorDetails(
        type=PydanticCustomError("invalid_number", not_finite_message(leaf)),
        loc=(inner,) if inner else (), input=leaf)])


#: For a free-text query parameter, after its Query(): it refuses NUL as request bodies do.
NoNul = AfterValidator(_refuse_nul)


_WALL_CLOCK = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9])?")


def _wall_clock(value: Any) -> time:
    """A time of day from "HH:MM" or "HH:MM:SS" only. Pydantic alone would take a JSON
    number as seconds after midnight (21 → 00:00:21) and keep or drop an offset, while a
    quiet hour or a send window is read on each contact's own clock."""
    if isinstance(value, str) and _WALL_CLOCK.fullmatch(value.strip()):
        return time.fromisoformat(value.strip())
    raise PydanticCustomError("wall_clock_time", "a wall-clock time like 08:00, without a "
                              "time zone: the contact's zone applies")


#: Every time-of-day field of a request body.
WallClockTime = Annotated[time, BeforeValidator(_wall_clock)]


class Input(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    @field_validator("*")
    @classmethod
    def _storable(cls, value: Any, info: ValidationInfo) -> Any:
        """Every field of every request body, nested values included, refuses NUL and
        non-finite numbers, so no route can hand PostgreSQL what it cannot store."""
        return _refuse_unstorable(value, info)


class Output(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class Page(BaseModel, Generic[T]):
    data: list[T]
    has_more: bool
    next_cursor: str | None


# --- tenancy --------------------------------------------------------------------------


class SubAccountIn(Input):
    name: str = Field(min_length=1, max_length=200)
    default_region: str = Field("US", min_length=2, max_length=2,
                                description="ISO 3166 region for national-format numbers")
    timezone: str = Field("America/New_York", description="IANA time zone")
    help_text: str = Field("", max_length=480)
    quiet_start: WallClockTime = Field(
        time(21), description="start of the no-bulk window, on each contact's clock. Every "
                              "sub-account has quiet hours: a start equal to the end is 422 "
                              "empty_quiet_hours (the shortest are a minute)")
    quiet_end: WallClockTime = Field(
        time(8), description="end of the no-bulk window, on each contact's clock; differs "
                             "from quiet_start")


class SubAccountPatch(Input):
    name: str | None = Field(None, min_length=1, max_length=200)
    default_region: str | None = Field(None, min_length=2, max_length=2)
    timezone: str | None = None
    help_text: str | None = Field(None, max_length=480)
    quiet_start: WallClockTime | None = Field(
        None, description="as on create; the hours that result must differ (422 "
                          "empty_quiet_hours), and contain every launched campaign's window "
                          "(409 outside_sending_hours)")
    quiet_end: WallClockTime | None = Field(None, description="as quiet_start")


class SubAccountOut(Output):
    id: UUID
    agency_id: UUID
    name: str
    default_region: str
    timezone: str
    help_text: str
    quiet_start: time
    quiet_end: time
    created_at: datetime
    updated_at: datetime


class ApiKeyIn(Input):
    name: str = Field(min_length=1, max_length=100)


class ApiKeyOut(Output):
    id: UUID
    agency_id: UUID
    sub_account_id: UUID | None
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="shown once, in this answer only (it is stored nowhere; a "
                     "replay of the request is 409 secret_shown_once); store it now")


# --- providers and senders ------------------------------------------------------------


class ProviderAccountIn(Input):
    provider: Literal["twilio", "sendgrid", "smtp"]
    name: str = Field(min_length=1, max_length=200)
    account_id: str = Field("", max_length=200,
                            description="Twilio Account SID, SMTP user or SendGrid key name; "
                            "required, except for an SMTP relay without AUTH (then give "
                            "neither this nor secret)")
    secret: str = Field("", max_length=4096, repr=False,
                        description="auth token, API key or password; write-only; required "
                        "with account_id")
    base_url: HttpUrl | None = Field(None, description="regional edge or test server")
    config: dict[str, Any] = Field(default_factory=dict,
                                   description="non-secret settings, e.g. SMTP host and port")


class ProviderAccountPatch(Input):
    name: str | None = Field(None, min_length=1, max_length=200)
    account_id: str | None = Field(None, max_length=200,
                                   description="empty, with an empty secret: no SMTP AUTH")
    secret: str | None = Field(None, max_length=4096, repr=False)
    base_url: HttpUrl | None = None
    config: dict[str, Any] | None = None

    @field_validator("name", "account_id", "secret", "config")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        """Left out keeps a field; null would empty one an account cannot be without (an
        SMTP relay without AUTH has an empty account_id and secret, not null ones). Only
        `base_url` may be cleared, back to the provider's own endpoint."""
        if value is None:
            raise ValueError("cannot be null: leave the field out to keep it")
        return value


class ProviderAccountOut(Output):
    id: UUID
    sub_account_id: UUID
    provider: str
    name: str
    account_id: str
    base_url: str | None
    config: dict[str, Any]
    created_at: datetime
    updated_at: datetime

    @computed_field  # type: ignore[prop-decorator]
    @property
    def secret_set(self) -> bool:
        """A secret goes with every account_id (hub.actions.check_credentials)."""
        return bool(self.account_id)


class ProviderTestOut(Output):
    host: str
    port: int
    tls: Literal["implicit", "starttls", "none"] = Field(
        description="how the connection was encrypted: TLS from the start (use_tls), "
        "STARTTLS, or not at all")
    authenticated: bool = Field(description="AUTH with account_id and secret succeeded; "
                                "false for an account without credentials")


class SenderIn(Input):
    provider_account_id: UUID
    channel: Literal["sms", "email", "voice"]
    kind: Literal["long_code", "toll_free", "short_code", "10dlc", "messaging_service",
                  "email", "caller_id"]
    address: str = Field(min_length=1, max_length=320,
                         description="E.164 number, messaging service SID or email address")
    throughput_class: str = Field("standard", max_length=50)
    mps: float | None = Field(None, gt=0, le=10_000,
                              description="messages (or calls) per second; default by kind")
    from_name: str | None = Field(None, max_length=200)


class SenderOut(Output):
    id: UUID
    sub_account_id: UUID
    provider_account_id: UUID
    channel: str
    kind: str
    address: str
    throughput_class: str
    mps: float
    from_name: str | None
    created_at: datetime


# --- contacts -------------------------------------------------------------------------


class ContactIn(Input):
    phone: str | None = Field(None, max_length=64)
    email: str | None = Field(None, max_length=320)
    first_name: str = Field("", max_length=200)
    last_name: str = Field("", max_length=200)
    timezone: str | None = None
    tags: list[str] = Field(default_factory=list, max_length=100)
    custom_fields: dict[str, Any] = Field(default_factory=dict)


def _not_nullable(schema: dict[str, Any]) -> None:
    """The schema of a PATCH field that may be left out (so None in Python) but not sent
    as null: without the null branch and the `"default": null` Pydantic writes for it."""
    schema.pop("default", None)
    for kind in schema.pop("anyOf", []):
        if kind.get("type") != "null":
            schema.update(kind)


#: What empties each PATCH field that cannot be null.
_EMPTY = {"first_name": '""', "last_name": '""', "tags": "[]", "custom_fields": "{}"}


class ContactPatch(Input):
    """A change to a contact: the fields given replace the stored ones (`tags` and
    `custom_fields` whole; the upsert is what merges them); fields left out stay. Only
    `phone`, `email` and `timezone` may be null, which clears them (a contact keeps a phone
    or an email). The others are never null on a contact, so null is refused (422) rather
    than read as "empty": send `""`, `[]` or `{}` to empty them."""

    phone: str | None = Field(None, max_length=64, description="null clears it")
    email: str | None = Field(None, max_length=320, description="null clears it")
    first_name: str | None = Field(None, max_length=200, description='"" clears it; not null',
                                   json_schema_extra=_not_nullable)
    last_name: str | None = Field(None, max_length=200, description='"" clears it; not null',
                                  json_schema_extra=_not_nullable)
    timezone: str | None = Field(None, description="IANA time zone; null: the zone of the "
                                 "contact's number, else the sub-account's")
    tags: list[str] | None = Field(None, max_length=100, description="replaces every tag; "
                                   "[] removes them all; not null",
                                   json_schema_extra=_not_nullable)
    custom_fields: dict[str, Any] | None = Field(None, description="replaces every custom "
                                                 "field; {} removes them all; not null",
                                                 json_schema_extra=_not_nullable)

    @field_validator("first_name", "last_name", "tags", "custom_fields", mode="before")
    @classmethod
    def _not_null(cls, value: Any, info: ValidationInfo) -> Any:
        """Null is refused by name: a client that sends every field, null for those it
        does not mean to change, would otherwise wipe tags and custom fields."""
        if value is None:
            raise PydanticCustomError(
                "null_not_allowed", "cannot be null: leave the field out to keep it, or "
                "send {empty} to empty it", {"empty": _EMPTY[info.field_name or ""]})
        return value


class ContactOut(Output):
    id: UUID
    sub_account_id: UUID
    phone: str | None
    email: str | None
    first_name: str
    last_name: str
    timezone: str | None
    tags: list[str]
    custom_fields: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class ImportJobOut(Output):
    id: UUID
    sub_account_id: UUID
    status: str
    filename: str | None
    total_rows: int | None
    processed_rows: int
    created_rows: int
    updated_rows: int
    error_rows: int
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class ImportErrorOut(Output):
    row_number: int
    field: str
    code: str
    message: str


class ImportErrorsPage(BaseModel):
    data: list[ImportErrorOut]
    has_more: bool
    next_cursor: str | None


# --- conversations and messages -------------------------------------------------------


class ConversationOut(Output):
    id: UUID
    sub_account_id: UUID
    contact_id: UUID
    channel: str
    unread_count: int
    last_message_at: datetime | None
    last_message_preview: str
    assignee: str | None
    created_at: datetime
    updated_at: datetime


class StatusChange(Output):
    status: str
    source: Literal["hub", "provider"] = Field(
        description="who moved the message: the hub, or the provider's receipt (then "
                    "provider_status and error_code are the provider's own)")
    provider_status: str | None
    error_code: str | None
    occurred_at: datetime


class MessageOut(Output):
    id: UUID
    sub_account_id: UUID
    conversation_id: UUID | None
    contact_id: UUID | None
    campaign_id: UUID | None
    direction: str
    channel: str
    priority: str
    sender_id: UUID | None
    from_address: str
    to_address: str
    subject: str | None
    body: str
    media_urls: list[str]
    status: str
    in_doubt: bool
    provider: str | None
    provider_message_id: str | None
    error_code: str | None
    error_message: str | None
    segments: int
    encoding: str | None
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None
    delivered_at: datetime | None
    read_at: datetime | None
    failed_at: datetime | None
    sent_by: UUID | None = Field(description="the user who sent it from the console (an "
                                 "agent's reply); null for API keys, campaigns and inbound")


class MessageDetail(MessageOut):
    history: list[StatusChange]


# --- suppressions and events ----------------------------------------------------------


class SuppressionIn(Input):
    channel: Literal["sms", "email", "voice"]
    address: str = Field(min_length=1, max_length=320)
    reason: str = Field(min_length=1, max_length=500)


class SuppressionOut(Output):
    id: UUID
    sub_account_id: UUID
    channel: str
    address: str
    reason: str
    source: str
    created_by: str
    created_at: datetime
    removed_at: datetime | None
    removed_by: str | None
    removed_reason: str | None


class EventOut(BaseModel):
    id: str
    seq: int
    event: str
    topic: str | None
    data: dict[str, Any]
    created_at: str


class EventsPage(BaseModel):
    data: list[EventOut]
    has_more: bool
    next_after_seq: int


class AgencyCreated(BaseModel):
    agency_id: UUID
    api_key: str


# --- sending --------------------------------------------------------------------------


class VoiceIn(Input):
    say: str | None = Field(None, max_length=4000,
                            description="words the call speaks; default: the body")
    voice: str | None = Field(None, max_length=50)
    language: str | None = Field(None, max_length=20)
    play_url: HttpUrl | None = Field(None, description="audio the call plays; default: the "
                                                       "one media URL")
    voicemail_say: str | None = Field(
        None, max_length=4000,
        description="with it (or voicemail_play_url) the call waits for answering-machine "
                    "detection; a voicemail box hears this after its greeting, a person "
                    "say/play_url")
    voicemail_play_url: HttpUrl | None = None


class MessageIn(Input):
    channel: Literal["sms", "mms", "email", "voice"] = "sms"
    to: str | None = Field(None, max_length=320, description="E.164 number or email address")
    contact_id: UUID | None = None
    body: str = Field("", max_length=100_000)
    subject: str | None = Field(None, max_length=998)
    html: str | None = Field(None, max_length=500_000)
    media_urls: list[HttpUrl] = Field(default_factory=list, max_length=10)
    voice: VoiceIn | None = None
    sender_id: UUID | None = None


class ReplyIn(Input):
    body: str = Field("", max_length=1600)
    subject: str | None = Field(None, max_length=998,
                                description='email threads only; default "Re: " and the '
                                            "thread's last subject")
    media_urls: list[HttpUrl] = Field(default_factory=list, max_length=10)
    sender_id: UUID | None = None


# --- campaigns ------------------------------------------------------------------------


class CampaignIn(Input):
    name: str = Field(min_length=1, max_length=200)
    channel: Literal["sms", "mms", "email", "voice"]
    audience: dict[str, Any] = Field(
        description='who receives it: {"tags_any": [...], "tags_all": [...], '
                    '"exclude_tags": [...], "contact_ids": [...], "filters": [...]} or '
                    '{"all_contacts": true}')
    template_id: UUID | None = Field(
        None, description="a saved template of the same channel: its body, subject, HTML "
                          "and media are copied unless given here, and the campaign keeps "
                          "template_id to say where its text came from. The copy is the "
                          "campaign's own: a later edit of the template changes no campaign")
    body: str | None = Field(None, max_length=100_000,
                             description="text with {{merge_fields}}")
    subject: str | None = Field(None, max_length=998)
    html: str | None = Field(None, max_length=500_000)
    media_urls: list[HttpUrl] | None = Field(None, max_length=10)
    voice: VoiceIn | None = None
    sender_ids: list[UUID] = Field(default_factory=list, max_length=1000,
                                   description="sender pool; default: all of the channel's")
    start_at: datetime | None = Field(None, description="not before this; at most a year ahead")
    window_start: WallClockTime | None = Field(
        None, description="local sending window start (texts and calls; email is sent at "
                          "any hour); default: the end of the sub-account's quiet hours")
    window_end: WallClockTime | None = Field(
        None, description="local sending window end (texts and calls; email is sent at any "
                          "hour); default: the start of the sub-account's quiet hours")
    rate_cap: float | None = Field(
        None, gt=0, le=100_000, description="segments per second, as carriers count "
                                            "throughput: a 2-segment text takes two")
    failure_threshold: float = Field(0.2, gt=0, le=1,
                                     description="auto-pause above this failure share")

    @field_validator("start_at")
    @classmethod
    def _within_a_year(cls, value: datetime | None) -> datetime | None:
        return _not_too_far_ahead(value)


def _not_too_far_ahead(value: datetime | None) -> datetime | None:
    """A later start is a typo (the year 9999), and nothing could be projected for it."""
    latest = datetime.now(UTC) + timedelta(days=366)
    if value is not None and (value if value.tzinfo else value.replace(tzinfo=UTC)) > latest:
        raise PydanticCustomError("too_far_ahead", "at most a year ahead")
    return value


class CampaignPatch(Input):
    """A change to a campaign: the fields given replace the stored ones whole (an audience
    or a voice script is not merged key by key); fields left out stay. A draft takes any
    field of the create; a launched campaign only `name`."""

    name: str | None = Field(None, min_length=1, max_length=200)
    channel: Literal["sms", "mms", "email", "voice"] | None = None
    audience: dict[str, Any] | None = None
    template_id: UUID | None = Field(
        None, description="a draft only: a saved template of the campaign's channel, copied "
                          "afresh (its body, subject, HTML and media replace the draft's "
                          "unless given here), which is how a draft takes up a template's "
                          "later edits; null forgets the template and keeps the text")
    body: str | None = Field(None, max_length=100_000)
    subject: str | None = Field(None, max_length=998)
    html: str | None = Field(None, max_length=500_000)
    media_urls: list[HttpUrl] | None = Field(None, max_length=10)
    voice: VoiceIn | None = None
    sender_ids: list[UUID] | None = Field(
        None, max_length=1000, description="sender pool; an empty list: all of the channel's "
                                           "(also the default when the channel changes)")
    start_at: datetime | None = None
    window_start: WallClockTime | None = Field(None,
                                               description="null: the sub-account's default")
    window_end: WallClockTime | None = Field(None,
                                             description="null: the sub-account's default")
    rate_cap: float | None = Field(None, gt=0, le=100_000)
    failure_threshold: float | None = Field(None, gt=0, le=1)

    @field_validator("name", "channel", "audience", "sender_ids", "failure_threshold")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        """Left out keeps a field; null would empty one a campaign cannot be without (the
        others may be cleared, as if left out of the create)."""
        if value is None:
            raise ValueError("cannot be null: leave the field out to keep it")
        return value

    @field_validator("start_at")
    @classmethod
    def _within_a_year(cls, value: datetime | None) -> datetime | None:
        return _not_too_far_ahead(value)


class CampaignOut(Output):
    id: UUID
    sub_account_id: UUID
    name: str
    channel: str
    status: str
    audience: dict[str, Any]
    template_id: UUID | None = Field(
        description="the saved template the text was copied from (at create, or by a draft's "
                    "PATCH); null when written by hand, or once the template is deleted")
    body: str
    subject: str | None
    html: str | None = Field(description="an email campaign's HTML part, if it has one")
    media_urls: list[str]
    voice: dict[str, Any] | None
    sender_ids: list[UUID]
    start_at: datetime | None
    window_start: time
    window_end: time
    rate_cap: float | None
    failure_threshold: float
    paused_reason: str | None
    recipients_total: int
    skipped_total: int
    created_at: datetime
    updated_at: datetime
    launched_at: datetime | None
    completed_at: datetime | None
    allowed_actions: list[str]


class ErrorCount(BaseModel):
    code: str
    count: int


class CampaignStats(BaseModel):
    id: UUID
    status: str
    paused_reason: str | None
    recipients_total: int
    counts: dict[str, int]
    current_rate_per_s: float
    max_rate_per_s: float
    top_errors: list[ErrorCount]
    eta: datetime | None
    allowed_actions: list[str]


class RecipientOut(BaseModel):
    contact_id: UUID
    recipient_status: str
    skip_reason: str | None
    due_at: datetime
    message_id: UUID | None
    message_status: str | None
    error_code: str | None
    to_address: str | None
    sent_at: datetime | None
    delivered_at: datetime | None


class TimelineBucketOut(BaseModel):
    start: datetime
    end: datetime
    sends: int
    by_zone: dict[str, int]


class DryRunOut(BaseModel):
    id: UUID
    recipients: int
    by_zone: dict[str, int]
    rate_per_s: float
    first_send_at: datetime | None
    finish_at: datetime | None
    unsendable: int
    warnings: list[str]
    timeline: list[TimelineBucketOut]


# --- templates --------------------------------------------------------------------------


class TemplateIn(Input):
    name: str = Field(min_length=1, max_length=200)
    channel: Literal["sms", "mms", "email", "voice"]
    body: str = Field("", max_length=100_000, description="text with {{merge_fields}}")
    subject: str | None = Field(None, max_length=998, description="email only")
    html: str | None = Field(None, max_length=500_000,
                             description="email only: the HTML part, with {{merge_fields}}")
    media_urls: list[HttpUrl] = Field(default_factory=list, max_length=10,
                                      description="MMS media, or a voice call's audio")


class TemplatePatch(Input):
    name: str | None = Field(None, min_length=1, max_length=200)
    channel: Literal["sms", "mms", "email", "voice"] | None = None
    body: str | None = Field(None, max_length=100_000)
    subject: str | None = Field(None, max_length=998)
    html: str | None = Field(None, max_length=500_000)
    media_urls: list[HttpUrl] | None = Field(None, max_length=10)

    @field_validator("name", "channel", "body", "media_urls")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        """Left out keeps a field; null would empty one a template cannot be without (only
        `subject` and `html` may be cleared)."""
        if value is None:
            raise ValueError("cannot be null: leave the field out to keep it")
        return value


class TemplateOut(Output):
    id: UUID
    sub_account_id: UUID
    name: str
    channel: str
    body: str
    subject: str | None
    html: str | None
    media_urls: list[str]
    created_at: datetime
    updated_at: datetime


class TemplatePreview(BaseModel):
    contact_id: UUID | None = Field(description="whose fields it was rendered with")
    body: str
    subject: str | None
    characters: int
    segments: int | None = Field(description="SMS only")
    encoding: str | None = Field(description="SMS only: GSM-7 or UCS-2")
    missing: list[str] = Field(description="merge fields blank for this contact")
    warnings: list[str]
