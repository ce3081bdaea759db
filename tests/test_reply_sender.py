"""An agent's reply leaves from the number the contact texted: with several numbers in a
sub-account, replies went from whichever number the contact's hash chose (found by a user
review: four contacts texted one number and were answered from two others)."""

from __future__ import annotations

from typing import Any

import httpx

from config.settings import Settings
from tests.conftest import Tenant, assert_problem, auth
from tests.test_sending import carrier, carrier_log, wait_for
from tests.test_webhooks import INBOUND, add_provider, add_sender

__all__ = ["carrier", "carrier_log"]

NUMBERS = ("+12125550171", "+12125550172", "+12125550173")


async def test_a_reply_comes_from_the_number_the_contact_texted(
    api: httpx.AsyncClient, tenant: Tenant, settings: Settings, carrier: Any,
    carrier_log: httpx.AsyncClient
) -> None:
    sa, key = tenant.sa1, tenant.sa1_key
    state = carrier.carrier.state
    providers: dict[str, str] = {}
    for number in NUMBERS:
        sid = state.owner_of(number)
        if sid not in providers:
            providers[sid] = await add_provider(api, tenant, sa, key, account_id=sid,
                                                secret=state.token_for(sid),
                                                base_url=carrier.url)
        await add_sender(api, sa, key, providers[sid], address=number)
    await carrier_log.post("/sandbox/config", json={
        "inbound_url": f"{settings.base_url}{INBOUND}"})
    try:
        texted = {}
        for i in range(6):  # a hash would pick the texted number for all six 1 in 729 times
            phone, number = f"+1415555{i:04d}", NUMBERS[i % len(NUMBERS)]
            r = await carrier_log.post("/sandbox/inbound", json={
                "from": phone, "to": number, "body": f"question {i}"})
            assert r.json()["status"] == 200, r.text
            texted[phone] = number
    finally:
        await carrier_log.post("/sandbox/config", json={"inbound_url": None})

    async def six_threads() -> list[dict[str, Any]] | None:
        convs: list[dict[str, Any]] = (await api.get(
            f"/v1/sub-accounts/{sa}/conversations", headers=auth(key),
            params={"limit": 50})).json()["data"]
        return convs if len(convs) == 6 else None

    convs = await wait_for(six_threads, timeout=30)
    assert convs is not None
    for conv in convs:
        contact = (await api.get(f"/v1/sub-accounts/{sa}/contacts/{conv['contact_id']}",
                                 headers=auth(key))).json()
        r = await api.post(f"/v1/sub-accounts/{sa}/conversations/{conv['id']}/messages",
                           headers={**auth(key), "Idempotency-Key": f"reply-{conv['id']}"},
                           json={"body": "Thanks, we will call you back."})
        assert r.status_code == 202, r.text
        reply = r.json()
        assert reply["to_address"] == contact["phone"]
        assert reply["from_address"] == texted[contact["phone"]], reply
    # A one-off send to a contact with no thread still picks a number (its sticky choice).
    r = await api.post(f"/v1/sub-accounts/{sa}/messages",
                       headers={**auth(key), "Idempotency-Key": "new-contact"},
                       json={"channel": "sms", "to": "+14155559999", "body": "Hello"})
    assert r.status_code == 202, r.text
    assert r.json()["from_address"] in NUMBERS


async def test_a_number_of_one_provider_account_belongs_to_one_sub_account(
    api: httpx.AsyncClient, tenant: Tenant
) -> None:
    """The same Twilio account and number in two sub-accounts: texts and STOPs went to the
    older one, and the newer kept texting people who had opted out (found by review R4)."""
    account = {"account_id": "AC" + "4" * 32, "secret": "same-token"}
    pa1 = await add_provider(api, tenant, tenant.sa1, tenant.sa1_key, **account)
    pa2 = await add_provider(api, tenant, tenant.sa2, tenant.sa2_key, **account)
    await add_sender(api, tenant.sa1, tenant.sa1_key, pa1, address="+12125550181")
    r = await api.post(f"/v1/sub-accounts/{tenant.sa2}/senders", headers=auth(tenant.sa2_key),
                       json={"provider_account_id": pa2, "channel": "sms",
                             "kind": "long_code", "address": "(212) 555-0181"})
    assert_problem(r, 409, "sender_taken", field="address")
    assert "another sub-account" in r.json()["detail"]
    # The same sub-account may call and text from it; another number is fine elsewhere.
    await add_sender(api, tenant.sa1, tenant.sa1_key, pa1, address="+12125550181",
                     channel="voice", kind="caller_id")
    await add_sender(api, tenant.sa2, tenant.sa2_key, pa2, address="+12125550182")
    # Someone naming this account and number with another token cannot lock its owner out
    # (only the owner's token verifies the number's callbacks: tests/test_webhooks.py).
    squatter = await add_provider(api, tenant, tenant.sa2, tenant.sa2_key,
                                  account_id=account["account_id"], secret="guessed")
    await add_sender(api, tenant.sa2, tenant.sa2_key, squatter, address="+12125550183")
    await add_sender(api, tenant.sa1, tenant.sa1_key, pa1, address="+12125550183")
