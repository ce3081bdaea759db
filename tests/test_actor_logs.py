"""The actors' warnings reach the log of the hub that started them: a provider refusing a
sub-account's token shows in the hub's own log (here the test process runs the gateway, as
`hub serve` does), formatted as one JSON object a line, naming the sub-account, the provider
error code and what to do; and a storm of refusals is summed up, not repeated."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from actors.log_relay import RelayHandler, Throttle, record_fields
from config.logging import StructuredFormatter
from hub.context import Hub
from tests.conftest import Tenant, auth
from tests.test_sending import carrier, carrier_log, setup_sms, wait_for

__all__ = ["carrier", "carrier_log"]

SID = "AC" + "c" * 32
WRONG = "a-wrong-token"


class _Lines(logging.Handler):
    """What the hub's stderr would show with HUB_LOG_JSON=true, one string per line."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.setFormatter(StructuredFormatter(as_json=True))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.extend(self.format(record).splitlines())


@pytest.fixture
def hub_log() -> Iterator[_Lines]:
    handler = _Lines()
    logging.getLogger().addHandler(handler)
    yield handler
    logging.getLogger().removeHandler(handler)


def refusals(hub_log: _Lines, sub_account: str) -> list[dict[str, Any]]:
    """The relayed refusal lines of one sub-account (every line must parse as JSON)."""
    parsed = [json.loads(line) for line in hub_log.lines]
    return [p for p in parsed if p.get("sub_account_id") == sub_account
            and "the provider refused sends" in p["msg"]]


async def send(api: httpx.AsyncClient, tenant: Tenant, n: int, first: int) -> None:
    h = auth(tenant.sa1_key)
    replies = await asyncio.gather(*(
        api.post(f"/v1/sub-accounts/{tenant.sa1}/messages",
                 headers={**h, "Idempotency-Key": f"storm-{i}"},
                 json={"to": f"+1415555{i:04d}", "body": "Your code is 123456"})
        for i in range(first, first + n)))
    assert all(r.status_code == 202 for r in replies), [r.text for r in replies][:3]


async def failed(hub: Hub, tenant: Tenant) -> int:
    n: int = await hub.pool.fetchval(
        "SELECT count(*) FROM messages WHERE sub_account_id = $1 AND status = 'failed'",
        tenant.sa1)
    return n


async def test_a_refused_token_shows_in_the_hubs_log_with_its_sub_account_and_code(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, carrier: Any,
    carrier_log: httpx.AsyncClient, hub_log: _Lines
) -> None:
    await carrier_log.post("/sandbox/config", json={"accounts": {SID: "the-right-token"}})
    try:
        await setup_sms(api, tenant, carrier.url, account=(SID, WRONG))
        await send(api, tenant, 1, 0)

        async def logged() -> list[dict[str, Any]]:
            return refusals(hub_log, tenant.sa1)

        (line,) = await wait_for(logged, timeout=60, every=0.2)
        assert line["code"] == "20003" and line["provider"] == "twilio", line
        assert line["level"] == "warning" and line["count"] == 1 and line["message_id"]
        assert "Auth Token" in line["hint"], line
        assert line["outcome"] == "failed" and line["actor"].startswith("sender"), line
        assert not any(WRONG in x or "Your code" in x for x in hub_log.lines)
    finally:
        await carrier_log.post("/sandbox/config", json={"accounts": {}})


async def test_a_storm_of_refusals_is_summed_up_in_a_few_lines(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, carrier: Any,
    carrier_log: httpx.AsyncClient, hub_log: _Lines
) -> None:
    waves, per_wave = 12, 20
    await carrier_log.post("/sandbox/config", json={"accounts": {SID: "the-right-token"}})
    try:
        await setup_sms(api, tenant, carrier.url, mps=500, account=(SID, WRONG))
        for w in range(waves):  # one send batch a wave at least: one log record or more
            await send(api, tenant, per_wave, w * per_wave)

            async def done(goal: int = (w + 1) * per_wave) -> bool:
                return await failed(hub, tenant) == goal

            await wait_for(done, timeout=60, every=0.1)

        async def summed_up() -> list[dict[str, Any]] | None:
            lines = refusals(hub_log, tenant.sa1)
            return lines if sum(p["count"] for p in lines) == waves * per_wave else None

        # Every refused send is counted once, in fewer lines than there were batches.
        lines = await wait_for(summed_up, timeout=60, every=0.5)
        assert len(lines) < waves, [p["msg"] for p in lines]
        summaries = [p for p in lines if "more like this in the last 10 s" in p["msg"]]
        assert summaries and all(p["repeated"] >= 1 and p["code"] == "20003"
                                 for p in summaries), lines
    finally:
        await carrier_log.post("/sandbox/config", json={"accounts": {}})


def _record(sub_account: str, code: str, count: int) -> logging.LogRecord:
    return logging.makeLogRecord({
        "name": "actors.sender", "levelno": logging.WARNING, "levelname": "WARNING",
        "msg": "the provider refused sends", "sub_account_id": sub_account, "code": code,
        "count": count})


def test_a_provider_refusing_3000_sends_a_second_logs_two_lines_per_10_s_per_sub_account(
) -> None:
    now = [0.0]
    handler = RelayHandler("sender:sms:0", clock=lambda: now[0])
    out: list[dict[str, Any]] = []
    for tick in range(30 * 3000):  # 30 s, two sub-accounts, one code
        now[0] = tick / 3000
        handler.emit(_record("sa-1" if tick % 2 else "sa-2", "20003", 1))
        if tick % 1500 == 0:  # the flush loop's half second
            out.extend(handler.take())
    now[0] = 40.0
    out.extend(handler.take())
    by_sa = {sa: [p for p in out if p["sub_account_id"] == sa] for sa in ("sa-1", "sa-2")}
    for lines in by_sa.values():
        assert sum(p["count"] for p in lines) == 45_000
        firsts = [p for p in lines if "repeated" not in p]
        summaries = [p for p in lines if "repeated" in p]
        assert len(firsts) == len(summaries) == 3, [p["msg"] for p in lines]
        assert summaries[0]["msg"].startswith("14999 more like this in the last 10 s: ")


def test_records_alike_are_those_of_one_sub_account_and_code() -> None:
    throttle = Throttle()
    fields = record_fields(_record("sa-1", "20003", 1))
    assert throttle.admit(("a", "20003"), fields, 0.0)
    assert throttle.admit(("a", "20404"), fields, 0.1)
    assert throttle.admit(("b", "20003"), fields, 0.2)
    assert not throttle.admit(("a", "20003"), fields, 9.9)
    assert throttle.admit(("a", "20003"), fields, 10.0)  # a new window
    (summary,) = throttle.due(10.0)
    assert summary["repeated"] == 1 and summary["count"] == 1
