"""What a provider account's `config` may hold, per provider, checked when the account is
created or changed: a misspelt key or an SMTP relay without a host used to be accepted and
found only when a campaign's sends failed."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from hub.compliance import KEYWORD_REPLIES, check_provider_config
from hub.errors import ValidationFailed

PUBLIC_KEY = "event_webhook_public_key"  # SendGrid's: verifies its Event Webhook

Check = Callable[[Any], str | None]  # what is wrong with a value, or None


def _text(value: Any) -> str | None:
    return None if isinstance(value, str) and value.strip() else "must be a non-empty string"


def _flag(value: Any) -> str | None:
    ok = isinstance(value, bool) or (isinstance(value, str) and value.strip().lower() in (
        "true", "false", "1", "0", "yes", "no", "on", "off"))
    return None if ok else "must be true or false"


def _port(value: Any) -> str | None:
    try:
        ok = not isinstance(value, bool) and 1 <= int(str(value)) <= 65535
    except ValueError:
        ok = False
    return None if ok else "must be a port number, 1 to 65535"


def _one_of(*choices: str) -> Check:
    def check(value: Any) -> str | None:
        return None if str(value).lower() in choices else f"must be one of {', '.join(choices)}"
    return check


def _any(value: Any) -> str | None:
    return None  # checked by its own rule (keyword replies: hub.compliance)


#: The settings each provider's adapter reads (channels/), and which are required.
SETTINGS: dict[str, dict[str, Check]] = {
    "twilio": {"edge": _text, "region": _text, KEYWORD_REPLIES: _any},
    "sendgrid": {PUBLIC_KEY: _text, "on_behalf_of": _text},
    "smtp": {"host": _text, "port": _port, "use_tls": _flag,
             "start_tls": _one_of("auto", "always", "never"), "validate_certs": _flag,
             "helo_hostname": _text, "allow_plaintext_auth": _flag,
             "unsubscribe_mailto": _text},
}
REQUIRED = {"smtp": ("host",)}
_A = {"twilio": "a Twilio", "sendgrid": "a SendGrid", "smtp": "an SMTP"}


def check_provider_settings(provider: str, config: Mapping[str, Any] | None) -> None:
    """ValidationFailed naming the first `config.<key>` this provider's account gets wrong."""
    config = config or {}
    known = SETTINGS.get(provider, {})
    for key in REQUIRED.get(provider, ()):
        if config.get(key) in (None, ""):
            raise ValidationFailed.field(f"config.{key}", f"required for {_A[provider]} "
                                         "account", "required")
    for key, value in config.items():
        check = known.get(key)
        if check is None:
            raise ValidationFailed.field(
                f"config.{key}", f"not a setting of {_A.get(provider, provider)} account; "
                f"it takes "
                f"{', '.join(sorted(known)) or 'none'}", "unknown_setting")
        if (problem := check(value)) is not None:
            raise ValidationFailed.field(f"config.{key}", problem, "invalid")
    check_provider_config(config)
