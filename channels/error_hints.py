"""What an operator should do about a send error, in a few words for the hub's log: by the
provider's own code where it points at one fix, else by the kind of error. Only account-level
problems have a hint; a bad recipient is the sender's business, not the operator's. Also
where a provider account's sends go (`endpoint`), so an unreachable one is named."""

from __future__ import annotations

from urllib.parse import urlsplit

from channels.base import ErrorKind, ProviderCredentials

_TWILIO: dict[str, str] = {
    "20003": "check the provider account's Account SID and Auth Token in Settings",
    "20404": "check the provider account's Account SID in Settings (Twilio does not know it)",
    "20005": "the Twilio account is suspended or closed: see the Twilio console",
    "30002": "the Twilio account is suspended: see the Twilio console",
    "21606": "the sender's number is not a message-capable Twilio number of this account: "
             "check the sender in Settings",
    "21212": "the sender's number is not valid: check the sender in Settings",
    "21608": "a Twilio trial account sends only to verified numbers: upgrade the account "
             "or verify the recipient in the Twilio console",
    "21408": "the Twilio account may not send to this country: enable it in the Twilio "
             "console's geo permissions",
    "30032": "the toll-free number is not verified yet: finish its verification in the "
             "Twilio console",
    "30034": "the 10DLC number is not registered to an A2P campaign: register it in the "
             "Twilio console",
    "21703": "the Messaging Service has no phone number: add one in the Twilio console",
    "21704": "the Messaging Service has no phone number: add one in the Twilio console",
}

_SENDGRID: dict[str, str] = {
    "401": "check the provider account's SendGrid API key in Settings",
    "403": "the SendGrid API key lacks the Mail Send permission, or the From address is "
           "not a verified sender: check both in SendGrid",
}

_BY_KIND: dict[ErrorKind, str] = {
    ErrorKind.CONFIG_INVALID: "check the provider account's credentials and the sender in "
                              "Settings",
    ErrorKind.CONNECTION_FAILED: "nothing answered there: check the provider account's base "
                                 "URL (SMTP: host and port) in Settings, and that this server "
                                 "may reach it; its sends wait and are tried again",
}

#: Where an account without a base_url sends.
_DEFAULT_URLS = {"sendgrid": "https://api.sendgrid.com", "twilio": "https://api.twilio.com"}


def hint_for(provider: str, code: str | None, kind: ErrorKind) -> str | None:
    by_code = {"twilio": _TWILIO, "sendgrid": _SENDGRID}.get(provider, {})
    return by_code.get(code or "") or _BY_KIND.get(kind)


def endpoint(creds: ProviderCredentials) -> str:
    """The host:port a send of this provider account dials (never a credential)."""
    if creds.provider == "smtp":
        config = creds.config
        tls = str(config.get("use_tls", "")).lower() in ("true", "1", "yes")
        return f"{config.get('host') or '?'}:{config.get('port') or (465 if tls else 587)}"
    url = urlsplit(creds.base_url or _DEFAULT_URLS.get(creds.provider, ""))
    try:
        port = url.port
    except ValueError:  # a malformed port
        return f"{url.hostname or '?'}:?"
    return f"{url.hostname or '?'}:{port or (443 if url.scheme == 'https' else 80)}"
