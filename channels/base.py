"""What every channel adapter speaks: outbound messages in, one result per message out,
provider callbacks parsed into status updates and inbound messages.

The send-error catalogue is closed; each kind says whether a retry is safe:

    SendError(kind=...)
     ├── CONFIG_INVALID     no   credentials, sender or account setup is wrong
     ├── MESSAGE_INVALID    no   the message or recipient was refused as malformed
     ├── OPTED_OUT          no   the provider says the recipient unsubscribed (Twilio 21610)
     ├── THROTTLED          yes  re-queue after `retry_after` seconds; never a failure
     ├── CONNECTION_FAILED  yes  the request provably never reached the provider
     ├── IN_DOUBT           no   the request may have reached the provider: reconcile, never resend
     └── REJECTED           no   the provider refused it with `provider_code`
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Literal, Protocol

from hub.status import Status

Channel = Literal["sms", "mms", "email", "voice"]


class ErrorKind(StrEnum):
    CONFIG_INVALID = "config_invalid"
    MESSAGE_INVALID = "message_invalid"
    OPTED_OUT = "opted_out"
    THROTTLED = "throttled"
    CONNECTION_FAILED = "connection_failed"
    IN_DOUBT = "in_doubt"
    REJECTED = "rejected"

    @property
    def retryable(self) -> bool:
        return self in (ErrorKind.THROTTLED, ErrorKind.CONNECTION_FAILED)


@dataclass(frozen=True, slots=True)
class SendError:
    kind: ErrorKind
    message: str
    provider_code: str | None = None
    retry_after: float | None = None

    @property
    def retryable(self) -> bool:
        return self.kind.retryable


@dataclass(frozen=True, slots=True)
class ProviderCredentials:
    """One provider account of one sub-account, decrypted only for the duration of a send.

    `repr` hides the secret so that it never reaches a log line or a traceback.
    """

    provider: str  # "twilio" | "sendgrid" | "smtp"
    account_id: str  # Twilio Account SID, SMTP username, SendGrid key name
    secret: str = field(repr=False)  # Twilio auth token, SendGrid API key, SMTP password
    base_url: str | None = None  # regional edge or the sandbox carrier
    config: Mapping[str, object] = field(default_factory=dict)  # non-secret settings


@dataclass(frozen=True, slots=True)
class VoiceScript:
    say: str | None = None
    voice: str | None = None  # e.g. "Polly.Joanna", "alice"
    language: str | None = None  # e.g. "en-US"
    play_url: str | None = None
    voicemail_say: str | None = None  # left after the beep when a machine answers
    voicemail_play_url: str | None = None


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    message_id: str  # our id; round-trips through the provider's callbacks
    channel: Channel
    to: str  # E.164 or email address
    from_: str  # E.164, messaging service SID (MG…), caller id or from-address
    body: str = ""
    subject: str | None = None
    html: str | None = None
    media_urls: Sequence[str] = ()
    status_callback_url: str | None = None
    voice: VoiceScript | None = None
    from_name: str | None = None
    unsubscribe_url: str | None = None  # RFC 8058 one-click target for bulk email
    substitutions: Mapping[str, str] = field(default_factory=dict)
    custom_args: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SendResult:
    message_id: str
    provider_message_id: str | None = None
    status: Status | None = None  # the provider's initial status mapped onto ours
    error: SendError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    provider: str
    provider_message_id: str
    status: Status
    provider_status: str
    message_id: str | None = None  # ours, when the callback carries it
    error_code: str | None = None
    event_key: str = ""  # dedup key for this provider event
    occurred_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class InboundMessage:
    provider: str
    provider_message_id: str
    channel: Channel
    from_: str
    to: str
    body: str
    media_urls: Sequence[str] = ()
    account_id: str | None = None
    messaging_service_id: str | None = None


@dataclass(frozen=True, slots=True)
class SuppressionEvent:
    provider: str
    channel: Channel
    address: str
    reason: str  # bounce, dropped, spamreport, unsubscribe, group_unsubscribe, opt_out
    message_id: str | None = None
    event_key: str = ""


@dataclass(frozen=True, slots=True)
class EngagementEvent:
    provider: str
    kind: str  # open, click
    message_id: str | None
    address: str
    url: str | None = None
    event_key: str = ""


CallbackEvent = StatusUpdate | InboundMessage | SuppressionEvent | EngagementEvent


class ChannelAdapter(Protocol):
    """One provider. Implementations hold connection pools, never credentials."""

    provider: str

    async def send_batch(
        self, creds: ProviderCredentials, messages: Sequence[OutboundMessage]
    ) -> list[SendResult]:
        """Send every message; one result per message, in order. Never raises for a
        per-message failure: failures come back as `SendResult.error`."""
        ...

    async def close(self) -> None: ...
