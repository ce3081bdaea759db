"""SMS keyword compliance and one-click email unsubscribe links: pure rules, no I/O.

Keywords follow Twilio's documented defaults (tests/reference/vectors/opt_out_keyword_vectors.json):
the WHOLE body, trimmed, in any case, equals the keyword. "Stop please", "STOP." and
"STOP ALL" are ordinary messages; fullwidth letters are not folded (Twilio does not
document them, and a false opt-out silently loses a contact).

Unsubscribe links carry a token only the hub can mint, so that nobody can unsubscribe an
address by guessing message ids: the token is the message id sealed with the hub's
SecretBox (Fernet: AES-CBC plus HMAC-SHA256 under keys derived from HUB_SECRET_KEY; retired
keys still verify after a rotation). The Sender shard only holds the SecretBox, not the raw
secret, which is why the link is sealed rather than a bare HMAC.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from enum import StrEnum
from typing import Any
from urllib.parse import quote

from hub.crypto import SecretBox
from hub.errors import ValidationFailed


class Keyword(StrEnum):
    STOP = "STOP"
    START = "START"
    HELP = "HELP"


OPT_OUT_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT",
                           "REVOKE", "OPTOUT"})
OPT_IN_WORDS = frozenset({"START", "YES", "UNSTOP"})
HELP_WORDS = frozenset({"HELP", "INFO"})

STOP_CONFIRMATION = ("You have been unsubscribed and will not receive more messages. "
                     "Reply START to resubscribe.")
START_CONFIRMATION = ("You have been resubscribed and will receive messages again. "
                      "Reply STOP to unsubscribe.")
OPT_OUT_REASON = "texted {word}"
OPT_IN_REASON = "re-subscribed by START"
PROVIDER_OPT_OUT_REASON = "provider 21610"


def classify(body: str) -> Keyword | None:
    """The compliance keyword a whole inbound body is, if any."""
    word = body.strip()
    if not word.isascii():  # no case folding of fullwidth or look-alike letters
        return None
    word = word.upper()
    if word in OPT_OUT_WORDS:
        return Keyword.STOP
    if word in OPT_IN_WORDS:
        return Keyword.START
    if word in HELP_WORDS:
        return Keyword.HELP
    return None


#: provider_accounts.config key: who answers STOP, START and HELP. "hub" (the default): the
#: hub sends the confirmations and the sub-account's help text. "provider": the provider
#: answers them itself, as Twilio does with its default opt-out handling on (it then also
#: refuses the hub's own confirmation, error 21610); the hub still records the opt-out and
#: the opt-in and cancels what is queued, and sends nothing.
KEYWORD_REPLIES = "keyword_replies"
KEYWORD_REPLIERS = ("hub", "provider")


def check_provider_config(config: Mapping[str, Any] | None) -> None:
    """ValidationFailed naming the config key a provider account's settings get wrong."""
    value = (config or {}).get(KEYWORD_REPLIES, "hub")
    if value not in KEYWORD_REPLIERS:
        raise ValidationFailed.field(
            f"config.{KEYWORD_REPLIES}", "either hub (the hub answers STOP, START and HELP) "
            "or provider (the provider does, as Twilio's default opt-out handling)", "invalid")


def provider_answers_keywords(config: Mapping[str, Any] | None) -> bool:
    return (config or {}).get(KEYWORD_REPLIES) == "provider"


def help_reply(help_text: str, sub_account_name: str) -> str:
    """The answer to HELP/INFO: the sub-account's help text, or a minimal one that still
    names the sender and the way out (carriers require both)."""
    text = help_text.strip()
    if text:
        return text
    return f"{sub_account_name}: reply STOP to unsubscribe, START to resubscribe."


# --- one-click unsubscribe (RFC 8058) ----------------------------------------------------

_UNSUBSCRIBE_PURPOSE = "unsubscribe:"


def unsubscribe_token(box: SecretBox, message_id: str) -> str:
    """A token proving the hub issued the unsubscribe link of `message_id`."""
    return box.encrypt(_UNSUBSCRIBE_PURPOSE + str(message_id)).decode()


def check_unsubscribe_token(box: SecretBox, message_id: str, token: str | None) -> bool:
    if not token or len(token) > 512:
        return False
    try:
        sealed = box.decrypt(token.encode())
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(sealed.encode(), (_UNSUBSCRIBE_PURPOSE + str(message_id)).encode())


def unsubscribe_url(public_url: str, message_id: str, box: SecretBox) -> str:
    """`{public_url}/v1/unsubscribe/{message_id}?sig=…`, the List-Unsubscribe target."""
    token = quote(unsubscribe_token(box, message_id), safe="")
    return f"{public_url.rstrip('/')}/v1/unsubscribe/{message_id}?sig={token}"
