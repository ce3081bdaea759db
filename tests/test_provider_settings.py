"""A provider account's settings are checked when it is created or changed (found by
review R4: an SMTP relay without a host, a port "abc" and a SendGrid key nothing reads
were all accepted, and showed up only as failed sends)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from hub.provider_settings import SETTINGS
from tests.conftest import Tenant, assert_problem, auth

SMTP = {"provider": "smtp", "name": "relay", "account_id": "", "secret": ""}


def field_code(r: httpx.Response, field: str) -> str:
    body = assert_problem(r, 422, "validation_failed", field=field)
    return next(str(e["code"]) for e in body["errors"] if e["field"] == field)


@pytest.mark.parametrize(("body", "field", "code"), [
    ({**SMTP, "config": {}}, "config.host", "required"),
    ({**SMTP, "config": {"host": "  "}}, "config.host", "invalid"),
    ({**SMTP, "config": {"host": "mail.example", "port": "abc"}}, "config.port", "invalid"),
    ({**SMTP, "config": {"host": "mail.example", "port": 70000}}, "config.port", "invalid"),
    ({**SMTP, "config": {"host": "mail.example", "start_tls": "maybe"}}, "config.start_tls",
     "invalid"),
    ({**SMTP, "config": {"host": "mail.example", "use_tls": "sometimes"}}, "config.use_tls",
     "invalid"),
    ({**SMTP, "config": {"host": "mail.example", "hostname": "x"}}, "config.hostname",
     "unknown_setting"),
    ({"provider": "sendgrid", "name": "sg", "account_id": "main", "secret": "SG.x",
      "config": {"ip_pool": "a"}}, "config.ip_pool", "unknown_setting"),
    ({"provider": "twilio", "name": "t", "account_id": "AC" + "1" * 32, "secret": "tok",
      "config": {"keyword_replies": "carrier"}}, "config.keyword_replies", "invalid"),
    ({"provider": "twilio", "name": "t", "account_id": "AC" + "1" * 32, "secret": "tok",
      "config": {"edge": ""}}, "config.edge", "invalid"),
])
async def test_a_bad_setting_is_refused_naming_it(
    api: httpx.AsyncClient, tenant: Tenant, body: dict[str, Any], field: str, code: str
) -> None:
    r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/providers",
                       headers=auth(tenant.sa1_key), json=body)
    assert field_code(r, field) == code


async def test_good_settings_are_kept_and_a_bad_change_changes_nothing(
    api: httpx.AsyncClient, tenant: Tenant
) -> None:
    h, base = auth(tenant.sa1_key), f"/v1/sub-accounts/{tenant.sa1}/providers"
    good = {"host": "mail.example", "port": "2525", "start_tls": "always",
            "validate_certs": False, "unsubscribe_mailto": "unsub@example.com"}
    r = await api.post(base, headers=h, json={**SMTP, "config": good})
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    r = await api.patch(f"{base}/{pid}", headers=h, json={"config": {"port": 0}})
    assert field_code(r, "config.host") == "required"  # the whole config is replaced
    r = await api.patch(f"{base}/{pid}", headers=h, json={"config": {**good, "port": 0}})
    assert field_code(r, "config.port") == "invalid"
    assert (await api.get(f"{base}/{pid}", headers=h)).json()["config"] == good
    r = await api.patch(f"{base}/{pid}", headers=h, json={"config": {**good, "port": 587}})
    assert r.status_code == 200 and r.json()["config"]["port"] == 587


def test_every_setting_an_adapter_reads_is_known() -> None:
    """The adapters read these keys (channels/); the table must not refuse one of them."""
    import inspect

    from channels import sendgrid, smtp, twilio_client
    for provider, module in (("smtp", smtp), ("sendgrid", sendgrid),
                             ("twilio", twilio_client)):
        source = inspect.getsource(module)
        for key in SETTINGS[provider]:
            if key not in ("keyword_replies", "event_webhook_public_key"):
                assert f'"{key}"' in source, (provider, key)
