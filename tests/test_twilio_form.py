"""The Twilio create's form body and callback URL, built the fast way, are byte for byte what
urllib builds (the SDK oracle in test_twilio_wire.py checks the whole request)."""

from __future__ import annotations

import random
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import pytest

from channels.twilio_client import form_body
from channels.twilio_sms import with_message_id

AWKWARD = ["", " ", "+", "%", "&=", "50% off & free = yes+more?\n¡Olé! 🎉 a/b#c",
           "Ünïcödé segment test", "~._-AZaz09", "\x00\x7f\x80\xff", "\u200b\ufeff𝄞"]


def test_form_body_is_urlencode_byte_for_byte() -> None:
    every = "".join(map(chr, range(0x3000)))  # every ASCII, Latin-1 and 2-3 byte character
    rng = random.Random(7)
    mixed = ["".join(rng.choice(every + "🎉𝄞") for _ in range(rng.randrange(40)))
             for _ in range(300)]
    for value in [*AWKWARD, every, *mixed]:
        form = [("Body", value), (value, "key"), ("To", "+14155550100")]
        assert form_body(form) == urlencode(form).encode(), value
    assert form_body([]) == b""


def test_form_body_refuses_what_urlencode_refuses() -> None:
    for form in ([("Body", "lone \ud800 surrogate")], [("\udfff", "x")]):
        with pytest.raises(UnicodeEncodeError):
            urlencode(form)
        with pytest.raises(UnicodeEncodeError):
            form_body(form)


def _parsed(url: str, message_id: str) -> str:
    parts = urlsplit(url)
    extra = f"message_id={quote(message_id, safe='')}"
    return urlunsplit(parts._replace(query=f"{parts.query}&{extra}" if parts.query else extra))


@pytest.mark.parametrize("url", [
    "https://h/cb", "https://h/cb?tenant=a", "https://h/cb?tenant=a#x", "https://h/cb#x",
    "http://127.0.0.1:8000/v1/providers/twilio/sms/status", "https://h/cb?a=1&b=%20",
    "https://user@h:8443/p/a%2Fb?q", "https://h/cb?"])
def test_the_callback_url_is_the_parsed_one(url: str) -> None:
    for message_id in ("m1", "m/1", "8f0c2b9e-1d3a-4c5b-9e7f-000000000001", "", "ü &#"):
        assert with_message_id(url, message_id) == _parsed(url, message_id)
