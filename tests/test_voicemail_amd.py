"""Voicemail drops: a call with a voicemail variant is created with answering-machine
detection and a TwiML URL, and the hub's route answers per `AnsweredBy`, so a person hears
`say` and a voicemail box `voicemail_say`, each rendered for its contact. The route checks
the signature against the account that placed the call. Real gateway, Ray shards,
PostgreSQL and a sandbox carrier that asks the route as Twilio does (its request log, with
the TwiML each call got, is the ground truth)."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from twilio.request_validator import RequestValidator

from channels.base import OutboundMessage, ProviderCredentials, VoiceScript
from channels.sandbox import run_carrier_in_thread
from channels.sandbox_config import CarrierConfig, Latency
from channels.twilio_voice import TwilioVoiceAdapter
from config.settings import Settings
from hub.context import Hub
from tests.conftest import Tenant, assert_problem, auth
from tests.test_campaigns import make_campaign, tenant
from tests.test_sending import wait_for
from tests.test_webhooks import add_provider, add_sender

__all__ = ["tenant"]  # its first sub-account has no quiet hours

CALLER = "+12125550181"
PERSON, MACHINE, FAX = "+14155550181", "+14155550182", "+14155550183"
SA1_ACCOUNT, SA1_TOKEN = "AC" + "d" * 32, "voice-token-one"
SA2_ACCOUNT, SA2_TOKEN = "AC" + "e" * 32, "voice-token-two"


@pytest.fixture(scope="module")
def live_carrier() -> Iterator[Any]:
    """A carrier whose calls are answered quickly, by a person or a machine per number, and
    that asks the gateway for TwiML and posts signed status callbacks to it."""
    handle = run_carrier_in_thread(CarrierConfig(
        seed=41, latency=Latency(kind="fixed", seconds=0.05), call_duration_s=0.1,
        answered_by={PERSON: "human", MACHINE: "machine_end_beep", FAX: "fax"}))
    yield handle
    handle.stop()


@pytest.fixture(autouse=True)
def _fresh_log(live_carrier: Any) -> None:
    live_carrier.call(live_carrier.carrier.clear)


async def caller(api: httpx.AsyncClient, tenant: Tenant, carrier: Any) -> None:
    pa = await add_provider(api, tenant, tenant.sa1, tenant.sa1_key, account_id=SA1_ACCOUNT,
                            secret=SA1_TOKEN, base_url=carrier.url)
    await add_sender(api, tenant.sa1, tenant.sa1_key, pa, address=CALLER, channel="voice")


def calls(carrier: Any) -> dict[str, dict[str, Any]]:
    """The carrier's logged calls by number called."""
    return {r["to"]: r for r in carrier.call(carrier.carrier.requests)
            if r["channel"] == "voice"}


async def answered(carrier: Any, *numbers: str) -> dict[str, dict[str, Any]]:
    """The calls to `numbers` once each has asked for its TwiML (and got it, or not)."""
    async def done() -> dict[str, dict[str, Any]] | None:
        got = calls(carrier)
        ready = all(n in got and (got[n]["fetched_twiml"] or got[n]["application_error"])
                    for n in numbers)
        return got if ready else None
    return dict(await wait_for(done, timeout=60, every=0.1))


def verbs(twiml: str) -> list[tuple[str, str | None]]:
    root = ET.fromstring(twiml)
    assert root.tag == "Response"
    return [(v.tag, v.text) for v in root]


async def delivered(hub: Hub, mid: str) -> None:
    async def done() -> bool:
        return await hub.pool.fetchval("SELECT status FROM messages WHERE id = $1",
                                       uuid.UUID(mid)) == "delivered"
    await wait_for(done, timeout=60, every=0.1)


async def send(api: httpx.AsyncClient, tenant: Tenant, key: str, **body: Any) -> str:
    r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/messages", json=body,
                       headers={**auth(tenant.sa1_key), "Idempotency-Key": key})
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


async def test_a_person_hears_say_and_a_voicemail_box_the_voicemail_variant(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, live_carrier: Any
) -> None:
    await caller(api, tenant, live_carrier)
    await hub.pool.execute(
        """INSERT INTO contacts (sub_account_id, phone, first_name, custom_fields, timezone,
                                 tags)
           VALUES ($1, $2, 'Pat', '{"code": "42"}', 'Etc/GMT', '{all}'),
                  ($1, $3, 'Lee', '{"code": "7"}', 'Etc/GMT', '{all}')""",
        uuid.UUID(tenant.sa1), PERSON, MACHINE)
    c = await make_campaign(api, tenant, channel="voice", body="Hello",
                            voice={"say": "Hello {{first_name}}, code {{custom.code}}",
                                   "voicemail_say": "Sorry we missed you, {{first_name}}"})
    r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/campaigns/{c['id']}/launch",
                       headers=auth(tenant.sa1_key))
    assert r.status_code == 200, r.text

    got = await answered(live_carrier, PERSON, MACHINE)
    person, machine = got[PERSON], got[MACHINE]
    for call in (person, machine):
        assert call["application_error"] is None, call
        assert call["twiml"] is None and call["machine_detection"] == "DetectMessageEnd"
        assert call["url"] == (f"{hub.settings.base_url}/v1/providers/twilio/voice/twiml"
                               f"?message_id={call['message_id']}")
    assert (person["answered_by"], machine["answered_by"]) == ("human", "machine_end_beep")
    assert verbs(person["fetched_twiml"]) == [("Say", "Hello Pat, code 42")]
    assert verbs(machine["fetched_twiml"]) == [("Say", "Sorry we missed you, Lee")]

    # The calls' progress still comes through their status callbacks.
    async def delivered() -> bool:
        return await hub.pool.fetchval(
            "SELECT count(*) FROM messages WHERE campaign_id = $1 AND status = 'delivered'",
            uuid.UUID(c["id"])) == 2
    await wait_for(delivered, timeout=60, every=0.2)


async def test_the_route_answers_only_the_account_that_placed_the_call(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, live_carrier: Any, settings: Settings
) -> None:
    await caller(api, tenant, live_carrier)
    await add_provider(api, tenant, tenant.sa2, tenant.sa2_key, account_id=SA2_ACCOUNT,
                       secret=SA2_TOKEN, base_url=live_carrier.url)
    mid = await send(api, tenant, "fax", channel="voice", to=FAX,
                     voice={"say": "Hi <there> & welcome", "voicemail_say": "Call us"})
    got = await answered(live_carrier, FAX)
    assert verbs(got[FAX]["fetched_twiml"]) == [("Hangup", None)]
    await delivered(hub, mid)  # its status callbacks are all in

    url = f"{settings.base_url}/v1/providers/twilio/voice/twiml?message_id={mid}"
    form = {"CallSid": "CA" + "1" * 32, "AccountSid": SA1_ACCOUNT, "CallStatus": "in-progress",
            "AnsweredBy": "unknown"}

    async def ask(url: str, token: str | None, signature: str | None = None) -> httpx.Response:
        signature = signature or RequestValidator(token or "").compute_signature(url, form)
        return await api.post(url, data=form, headers={"X-Twilio-Signature": signature})

    def history() -> Any:
        return hub.pool.fetchval(
            """SELECT (SELECT count(*) FROM message_events WHERE message_id = $1)
                      + (SELECT count(*) FROM webhook_events)""", uuid.UUID(mid))

    ok = await ask(url, SA1_TOKEN)
    assert ok.status_code == 200 and ok.headers["content-type"].startswith("text/xml")
    # AMD could not tell: the person's words, escaped as the inline TwiML escapes them.
    assert "<Say>Hi &lt;there&gt; &amp; welcome</Say>" in ok.text
    assert verbs(ok.text) == [("Say", "Hi <there> & welcome")]

    before = await history()
    unknown = url.replace(mid, str(uuid.uuid4()))
    details = set()
    for refused in (await ask(url, None, signature="bm90LWEtc2lnbmF0dXJl"),
                    await ask(url, SA2_TOKEN), await ask(unknown, SA1_TOKEN),
                    await ask(f"{settings.base_url}/v1/providers/twilio/voice/twiml", SA1_TOKEN),
                    await ask(url.replace(mid, "not-a-uuid"), SA1_TOKEN)):
        details.add(assert_problem(refused, 403, "webhook_signature_invalid")["detail"])
    assert len(details) == 1  # whether a message exists is not told
    assert await history() == before

    documented = (await api.get("/openapi.json")).json()["paths"]
    route = documented["/v1/providers/twilio/voice/twiml"]["post"]
    assert [p["name"] for p in route["parameters"]] == ["message_id"]
    assert "text/xml" in route["responses"]["200"]["content"]


async def test_a_refused_twiml_request_is_an_application_error_at_the_carrier(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, live_carrier: Any, settings: Settings
) -> None:
    """Calls placed by an account that did not send the message, or for a message the hub
    does not have: the route refuses them and the carrier logs Twilio's 11200."""
    await caller(api, tenant, live_carrier)
    mid = await send(api, tenant, "ours", channel="voice", to=PERSON,
                     voice={"say": "Hi", "voicemail_say": "Call us"})
    await answered(live_carrier, PERSON)
    await delivered(hub, mid)
    live_carrier.call(live_carrier.carrier.clear)

    adapter = TwilioVoiceAdapter()
    script = VoiceScript(say="Hi", voicemail_say="Call us")
    status = f"{settings.base_url}/v1/providers/twilio/voice/status"
    try:
        for creds, message_id, to in (
                (ProviderCredentials("twilio", SA2_ACCOUNT, SA2_TOKEN,
                                     base_url=live_carrier.url), mid, MACHINE),
                (ProviderCredentials("twilio", SA1_ACCOUNT, SA1_TOKEN,
                                     base_url=live_carrier.url), str(uuid.uuid4()), PERSON)):
            result = await adapter.send(creds, OutboundMessage(
                message_id=message_id, channel="voice", to=to, from_=CALLER, voice=script,
                status_callback_url=status))
            assert result.ok, result.error
    finally:
        await adapter.close()
    got = await answered(live_carrier, MACHINE, PERSON)
    for number in (MACHINE, PERSON):
        assert (got[number]["application_error"], got[number]["fetched_twiml"]) == (11200,
                                                                                     None)


async def test_a_call_without_a_voicemail_variant_keeps_its_twiml_inline(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, live_carrier: Any
) -> None:
    await caller(api, tenant, live_carrier)
    mid = await send(api, tenant, "plain", channel="voice", to=MACHINE,
                     voice={"say": "Your table is ready"})
    await delivered(hub, mid)
    call = calls(live_carrier)[MACHINE]
    assert verbs(call["twiml"]) == [("Say", "Your table is ready")]
    assert (call["url"], call["machine_detection"], call.get("answered_by")) == (None, None,
                                                                                None)
    # Answered and completed without asking the hub for anything.
    assert (call["fetched_twiml"], call["application_error"]) == (None, None)
