"""Chaos: faults in the middle of a campaign, counted from the sandbox carrier's request log.

Node loss, PostgreSQL and Redis restarts and a killed gateway replica run in a process of
their own (tests/chaos/run.py: its own Ray cluster of three nodes, its own PostgreSQL and
Redis, so the session's servers are not disturbed), three rounds each; the tests here assert
on the counts it prints. The carrier's 429/5xx bursts and hung requests run in this session,
against the session's gateway and Ray.
"""

from __future__ import annotations

import asyncio
import collections
import json
import subprocess
import sys
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest

from hub.context import Hub
from tests.conftest import Tenant, auth
from tests.test_campaigns import make_campaign, sending_hours_now, stats
from tests.test_sending import carrier, carrier_log, carrier_requests, setup_sms, wait_for

__all__ = ["carrier", "carrier_log"]  # fixtures shared with test_sending

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("node_loss", "pg_restart", "redis_restart", "replica_kill")
ROUNDS = 3
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chaos() -> dict[tuple[str, int], dict[str, Any]]:
    """Every round of every out-of-process scenario, by (scenario, round)."""
    proc = subprocess.run(
        [sys.executable, "-m", "tests.chaos.run", *SCENARIOS, "--rounds", str(ROUNDS)],
        cwd=ROOT, capture_output=True, text=True, timeout=1500, check=False)
    rounds = [json.loads(line[6:]) for line in proc.stdout.splitlines()
              if line.startswith("CHAOS ")]
    for r in rounds:
        print("chaos", json.dumps(r))
    found = {(r["scenario"], r["round"]): r for r in rounds}
    if not found:
        pytest.fail(f"the chaos run printed nothing (exit {proc.returncode}):\n"
                    f"{proc.stderr[-4000:]}")
    found[("_stderr", 0)] = {"tail": proc.stderr[-4000:]}
    return found


def _round(chaos: dict[tuple[str, int], dict[str, Any]], scenario: str,
           i: int) -> dict[str, Any]:
    r = chaos.get((scenario, i))
    assert r is not None, f"round missing; the run's stderr ends:\n{chaos[('_stderr', 0)]}"
    print(f"\n{scenario} round {i}: lost {r.get('lost')}, duplicated {r.get('duplicated')}, "
          f"campaign {r.get('campaign')}, longest send pause {r.get('send_pause_s')} s, "
          f"fault → completed {r.get('fault_to_complete_s')} s; {json.dumps(r)}")
    assert "error" not in r, r["error"]
    return r


def _exactly_once(r: dict[str, Any]) -> None:
    assert r["lost"] == 0, "recipients never sent"
    assert r["duplicated"] == 0, "recipients sent twice"
    assert r["strangers"] == 0
    assert "completed_while_unsent" not in r, "the campaign completed with sends outstanding"
    assert r["completed"], r["campaign"]
    done = r["hub_counts"].get("sent", 0) + r["hub_counts"].get("delivered", 0)
    assert done == r["recipients"] == sum(r["hub_counts"].values()), r["hub_counts"]


@pytest.mark.parametrize("i", range(ROUNDS))
def test_node_removed_without_grace_mid_campaign(chaos: Any, i: int) -> None:
    r = _round(chaos, "node_loss", i)
    _exactly_once(r)
    assert r["killed_node_hosted"], "the removed node hosted none of the hub's actors"
    assert r["actors_alive_after"] == 8  # 6 senders, 1 scheduler, the Supervisor
    assert r["nodes_hosting_after"] >= 2, "the shards did not spread over the nodes"


@pytest.mark.parametrize("i", range(ROUNDS))
@pytest.mark.parametrize("service", ["pg_restart", "redis_restart"])
def test_service_restarted_mid_campaign(chaos: Any, service: str, i: int) -> None:
    r = _round(chaos, service, i)
    _exactly_once(r)
    assert r["receipts_lost"] == 0 and r["receipts_applied_twice"] == 0
    assert r["webhooks_unapplied"] == 0
    assert r["inbound_sent"] == 5 and r["inbound_accepted_by_hub"] == 5
    assert r["inbound_lost"] == 0 and r["inbound_duplicated"] == 0


@pytest.mark.parametrize("i", range(ROUNDS))
def test_gateway_replica_killed_while_webhooks_stream_in(chaos: Any, i: int) -> None:
    r = _round(chaos, "replica_kill", i)
    _exactly_once(r)
    assert r["receipts_lost"] == 0 and r["receipts_applied_twice"] == 0
    assert r["webhooks_unapplied"] == 0
    assert r["inbound_lost"] == 0 and r["inbound_duplicated"] == 0
    assert r["inbound_accepted_by_hub"] == r["inbound_sent"] == 5
    assert r["proxy_502s"] > 0, "no callback ever hit the dead replica"
    assert r["survivor_requests"] > 0


# --- the carrier misbehaving, in this session ----------------------------------------------


async def _bursts(carrier_log: httpx.AsyncClient, stop: asyncio.Event) -> None:
    """429 bursts, then 5xx bursts, then calm, a second each, until stopped."""
    phases = ({"rate_limit_rate": 0.8, "server_error_rate": 0.0},
              {"rate_limit_rate": 0.0, "server_error_rate": 0.6},
              {"rate_limit_rate": 0.0, "server_error_rate": 0.0})
    while not stop.is_set():
        for phase in phases:
            await carrier_log.post("/sandbox/config", json=phase)
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
                return
            except TimeoutError:
                pass


@pytest.mark.parametrize("i", range(ROUNDS))
async def test_carrier_429_5xx_bursts_and_hung_requests(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, carrier: Any,
    carrier_log: httpx.AsyncClient, i: int
) -> None:
    n = 200
    await sending_hours_now(api, tenant)  # the campaign's window follows the clock
    await setup_sms(api, tenant, carrier.url, numbers=("+12125550100", "+12125550101"),
                    mps=50)
    await hub.pool.execute(
        """INSERT INTO contacts (sub_account_id, phone, first_name, timezone, tags)
           SELECT $1, '+1415' || (3000000 + i)::text, 'Pat' || i, 'Etc/GMT', ARRAY['all']
           FROM generate_series(1, $2) i""", UUID(tenant.sa1), n)
    phones = {f"+1415{3000000 + k}" for k in range(1, n + 1)}
    # A hung request is accepted and logged by the carrier, but its answer never comes.
    await carrier_log.post("/sandbox/config", json={"hang_rate": 0.05, "hang_max_s": 120})
    stop = asyncio.Event()
    bursts = asyncio.create_task(_bursts(carrier_log, stop))
    try:
        c = await make_campaign(api, tenant)
        r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/campaigns/{c['id']}/launch",
                           headers=auth(tenant.sa1_key))
        assert r.status_code == 200, r.text

        early: list[dict[str, int]] = []

        async def completed() -> dict[str, Any] | None:
            s = await stats(api, tenant, c["id"])
            unsent = s["counts"].get("queued", 0) + s["counts"].get("sending", 0)
            if s["status"] == "completed" and unsent:
                early.append(s["counts"])  # a bug: "completed" with sends outstanding
            return s if s["status"] == "completed" and not unsent else None

        s = await wait_for(completed, timeout=240, every=0.5)
    finally:
        stop.set()
        await bursts
        await carrier_log.post("/sandbox/config", json={
            "hang_rate": 0.0, "rate_limit_rate": 0.0, "server_error_rate": 0.0})
    await asyncio.sleep(1.0)
    log = await carrier_requests(carrier_log)
    got = collections.Counter(q["to"] for q in log)
    lost, duplicated = len(phones - set(got)), sum(v - 1 for v in got.values() if v > 1)
    refused = (await carrier_log.get("/sandbox/stats")).json()["rejected"]
    hung = {q["provider_sid"]: q["to"] for q in log if q["hung"]}
    print(f"\ncarrier faults round {i}: lost {lost}, duplicated {duplicated}; refused "
          f"{refused}, hung (in doubt) {len(hung)}")
    assert lost == 0 and duplicated == 0 and set(got) == phones
    assert s["counts"] == {"sent": n}, s["counts"]
    assert refused.get("429", 0) > 0 and refused["total"] > refused.get("429", 0)
    # Each hung send was reconciled from the provider's own record, not sent again.
    assert hung, "no request hung"
    rows = await hub.pool.fetch(
        """SELECT provider_message_id, to_address, in_doubt FROM messages
           WHERE provider_message_id = ANY($1::text[])""", list(hung))
    assert {r["provider_message_id"]: r["to_address"] for r in rows} == hung
    assert not any(r["in_doubt"] for r in rows)
    assert not early, f"the campaign said completed with sends outstanding: {early[0]}"
