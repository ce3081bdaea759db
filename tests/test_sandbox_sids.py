"""The sandbox carrier's ids are unique across restarts, as Twilio's and SendGrid's are; its
seed still decides the outcomes. Ids drawn from the seeded RNG came back identical when a
carrier restarted on the same data folder, and the hub's unique (provider, SID, recipient)
index refused to record the second run's sends (`hub demo` run twice)."""

from __future__ import annotations

import re
from typing import Any

import aiohttp

from channels.sandbox import CarrierConfig, Latency, SandboxCarrier
from tests.test_carrier import MAIL, sms, twilio_post


async def _run() -> tuple[list[dict[str, Any]], str]:
    """Ten SMS, a call and a mail/send on a fresh carrier seeded as the last one was."""
    config = CarrierConfig(seed=1234, latency=Latency(seconds=0.01), callbacks_enabled=False,
                           failed_rate=0.3, undelivered_rate=0.3)
    async with SandboxCarrier(config) as carrier, aiohttp.ClientSession() as http:
        for i in range(10):
            status, _, _ = await twilio_post(http, carrier, "Messages", sms(body=f"m{i}"))
            assert status == 201
        status, call, _ = await twilio_post(http, carrier, "Calls", {
            "To": "+15551230002", "From": "+15550000001", "Twiml": "<Response/>"})
        assert status == 201, call
        async with http.post(f"{carrier.url}/v3/mail/send", json=MAIL,
                             headers={"Authorization": "Bearer SG.k"}) as r:
            assert r.status == 202
            x_message_id = r.headers["X-Message-Id"]
        return carrier.requests(), x_message_id


async def test_a_restarted_carrier_hands_out_new_ids_and_the_same_outcomes() -> None:
    (first, first_x), (second, second_x) = await _run(), await _run()

    sms_calls = [r for r in first + second if r["channel"] != "email"]
    assert all(re.fullmatch(r"(SM|CA)[0-9a-f]{32}", r["provider_sid"]) for r in sms_calls)
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", first_x), first_x
    assert first_x != second_x
    ids = [r["provider_sid"] for r in first + second]
    assert len(set(ids)) == len(ids)  # no id twice, within a run or across the restart
    # The seed still decides what happens to each send.
    outcomes = [[(r["outcome"], r["error_code"]) for r in run] for run in (first, second)]
    assert outcomes[0] == outcomes[1]
    assert {o for o, _ in outcomes[0]} >= {"delivered", "failed"}
