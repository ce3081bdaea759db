"""X-Twilio-Signature for form-posted webhooks, with one HMAC per request in the usual case.

The string Twilio signs (its documentation, and twilio-python's `RequestValidator`): the
URL as Twilio requested it, then every POST parameter, by name in sorted order, as
name + value (several values of one name in sorted order, each distinct value once);
the signature is base64(HMAC-SHA1(auth token, that string)). Twilio may sign the URL with
or without its port, so the SDK's `validate` computes the HMAC for both forms on every
request (≈ 9% of a status callback's CPU, BENCHMARKS.md "Webhook ingest"). Here the form
the request names comes first and the other is computed only if it does not match.
tests/test_twilio_signature.py holds this to the SDK's verdict over the reference
vectors and payloads.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from urllib.parse import urlparse

from twilio.request_validator import add_port, remove_port


def signed_string(url: str, params: Mapping[str, str] | Sequence[tuple[str, str]]) -> str:
    values: dict[str, set[str]] = {}
    for name, value in params.items() if isinstance(params, Mapping) else params:
        values.setdefault(name, set()).add(value)
    return url + "".join(name + value for name in sorted(values)
                         for value in sorted(values[name]))


def valid(auth_token: str, url: str, params: Mapping[str, str] | Sequence[tuple[str, str]],
          signature: str | None) -> bool:
    """Whether `signature` signs this request with `auth_token`. `url` is the public URL
    Twilio called (scheme, host, path and query exactly as configured), `params` every
    posted parameter (pairs keep repeated names)."""
    if not signature or not auth_token:
        return False
    parsed = urlparse(url)
    forms = sorted((remove_port(parsed), add_port(parsed)), key=lambda u: u != url)
    expected = signature.encode("utf-8")
    key = auth_token.encode("utf-8")
    tail = signed_string("", params)
    for form in forms:
        mac = hmac.new(key, (form + tail).encode("utf-8"), hashlib.sha1).digest()
        if hmac.compare_digest(base64.b64encode(mac), expected):
            return True
    return False
