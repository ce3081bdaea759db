"""Provider error codes and delivery states in plain words, for marketers and agents."""

from __future__ import annotations

#: Codes seen on SMS sends (Twilio's numbering), calls and the hub's own, explained for
#: people who do not read carrier documentation.
ERRORS: dict[str, str] = {
    "21211": "The number is not a valid phone number.",
    "21408": "Texting this country is not enabled on the provider account.",
    "21606": "The sending number cannot text this destination.",
    "21610": "The person replied STOP earlier; carriers block texts to them.",
    "21614": "The number cannot receive texts (often a landline).",
    "30003": "The phone was unreachable (switched off or out of coverage).",
    "30004": "The recipient's carrier blocked the message.",
    "30005": "The number does not exist or is no longer in service.",
    "30006": "The number is a landline or cannot receive texts.",
    "30007": "The carrier filtered the message as spam; review the wording and links.",
    "30008": "The carrier reported an unknown delivery error.",
    "30022": "The provider slowed us down (rate limit); the hub retries these.",
    "30034": "The sending number is not registered for A2P 10DLC.",
    "bounce": "The email bounced: the mailbox does not exist or refused it.",
    "dropped": "The email provider dropped it (often an earlier bounce or spam report).",
    "spamreport": "The recipient marked the email as spam.",
    # A call's own status, when the call ended without connecting (channels.twilio_voice).
    "busy": "The line was busy, so nobody picked up. That is normal when calling people, "
            "not a problem with your account or the campaign.",
    "no-answer": "Nobody answered before the call stopped ringing. That is normal when "
                 "calling people, not a problem with your account or the campaign.",
    "canceled": "The call was called off before anyone answered. It is not a problem with "
                "your account.",
    "failed": "The call could not be placed: the number or the carrier refused it.",
}

STATUS_WORDS: dict[str, str] = {
    "queued": "queued", "scheduled": "scheduled", "sending": "sending", "sent": "sent",
    "delivered": "delivered", "read": "read", "undelivered": "not delivered",
    "failed": "failed", "canceled": "canceled", "received": "received",
}


def explain(code: str | None) -> str:
    if not code:
        return ""
    return ERRORS.get(str(code), f"Provider error {code}; see the provider's error list.")
