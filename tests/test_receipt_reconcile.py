"""Receipts that never landed: texts Twilio accepted while no gateway listened for its status
callbacks (a restart), which Twilio does not retry. The Supervisor's reconciler asks the
carrier about texts left `sent` and applies what it says as a receipt would be applied.
Real gateway, shards, PostgreSQL, Redis and the sandbox carrier, whose log is the ground
truth; the reconciler is the Supervisor's own class, driven here without Ray."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import httpx
import pytest
from twilio.request_validator import RequestValidator

from actors.metrics import Metrics
from actors.supervisor import Supervisor
from channels import sandbox_wire as wire
from channels.sandbox import run_carrier_in_thread
from channels.sandbox_config import CarrierConfig, Latency
from hub.context import Hub
from tests.conftest import Tenant, auth
from tests.test_campaigns import sending_hours_now_for, tenant
from tests.test_sending import setup_sms, wait_for

__all__ = ["tenant"]  # its first sub-account has no quiet hours

NUMBER = "+12125550188"
FINAL = ("delivered", "undelivered", "failed")


@pytest.fixture(scope="module")
def silent_carrier() -> Iterator[Any]:
    """A carrier whose status callbacks never reach the hub (as when they find no gateway
    listening), with a mix of outcomes."""
    handle = run_carrier_in_thread(CarrierConfig(
        seed=31, latency=Latency(kind="fixed", seconds=0.05), callbacks_enabled=False,
        undelivered_rate=0.25, failed_rate=0.1))
    yield handle
    handle.stop()


def reconciler(hub: Hub) -> Supervisor:
    """The Supervisor's reconciler with no receipt grace period, over the test's hub."""
    spec = {"sender_shards": 1, "scheduler_shards": 1, "receipt_grace_s": 0.0}
    return Supervisor(spec, hub.pool, hub.redis, hub.box, Metrics())


async def send_texts(api: httpx.AsyncClient, sa: str, key: str, to: list[str],
                     tag: str) -> list[str]:
    ids = []
    for i, number in enumerate(to):
        r = await api.post(f"/v1/sub-accounts/{sa}/messages",
                           headers={**auth(key), "Idempotency-Key": f"{tag}-{i}"},
                           json={"to": number, "body": f"Your order {i} has shipped"})
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    return ids


async def all_sent(hub: Hub, ids: list[str]) -> bool:
    return await hub.pool.fetchval(
        "SELECT count(*) FROM messages WHERE id = ANY($1::uuid[]) AND status = 'sent'",
        ids) == len(ids)


async def test_missed_receipts_are_looked_up_and_a_late_receipt_changes_nothing(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, silent_carrier: Any
) -> None:
    state = silent_carrier.carrier.state
    account = state.owner_of(NUMBER)
    await setup_sms(api, tenant, silent_carrier.url, numbers=(NUMBER,), mps=100,
                    account=(account, state.token_for(account)))
    to = [f"+1415555{3100 + i}" for i in range(40)]
    ids = await send_texts(api, tenant.sa1, tenant.sa1_key, to, "missed")
    await wait_for(lambda: all_sent(hub, ids), timeout=120, every=0.2)
    # No receipt can help: the carrier posts none.
    assert silent_carrier.call(lambda: state.counts.get("callbacks.twilio", 0)) == 0

    sup = reconciler(hub)

    async def settled() -> list[Any] | None:
        await sup.reconcile_receipts()
        rows = await hub.pool.fetch(
            "SELECT id, to_address, status, error_code FROM messages "
            "WHERE id = ANY($1::uuid[])", ids)
        return rows if all(r["status"] in FINAL for r in rows) else None

    rows = await wait_for(settled, timeout=120, every=0.2)

    # Every text's status is the carrier's outcome, with its error code.
    log = [r for r in silent_carrier.call(silent_carrier.carrier.requests)
           if r["from"] == NUMBER]
    assert sorted(r["to"] for r in log) == sorted(to)  # each sent once
    carrier = {r["to"]: (r["outcome"], str(r["error_code"]) if r["error_code"] else None)
               for r in log}
    assert {r["to_address"]: (r["status"], r["error_code"]) for r in rows} == carrier
    outcomes = collections.Counter(o for o, _ in carrier.values())
    assert len(outcomes) == 3, f"the carrier drew {outcomes}: the mix proves less"

    # Applied once each: one history row and one realtime event per final status.
    async def applied_once() -> None:
        history = await hub.pool.fetch(
            """SELECT message_id, count(*) AS n FROM message_events
               WHERE message_id = ANY($1::uuid[]) AND status = ANY($2::text[])
               GROUP BY message_id""", ids, list(FINAL))
        assert {str(h["message_id"]): h["n"] for h in history} == dict.fromkeys(ids, 1)
        published = await hub.pool.fetch(
            """SELECT data->>'id' AS id, count(*) AS n FROM events
               WHERE type = 'message.status_updated' AND data->>'id' = ANY($1::text[])
                 AND data->>'status' = ANY($2::text[]) GROUP BY 1""", ids, list(FINAL))
        assert {p["id"]: p["n"] for p in published} == dict.fromkeys(ids, 1)

    await applied_once()

    # The receipts Twilio would have posted turn up late after all (signed, as the carrier
    # signs them): the webhook path applies each, and none moves or counts anything again.
    token = state.token_for(account)

    def lost_receipts() -> list[tuple[str, dict[str, str]]]:
        return [(s.status_callback, wire.message_callback(s, *s.timeline[-1]))
                for s in state.log if s.from_ == NUMBER]

    late = silent_carrier.call(lost_receipts)
    assert len(late) == len(ids)
    for url, form in late:
        signature = RequestValidator(token).compute_signature(url, form)
        answer = await api.post(url, data=form, headers={"X-Twilio-Signature": signature})
        assert answer.status_code in (200, 204), answer.text

    async def replayed() -> bool:
        return await hub.pool.fetchval(
            """SELECT count(*) FROM webhook_events WHERE status <> 'pending'
               AND payload->'form'->>'MessageSid' = ANY($1::text[])""",
            [f["MessageSid"] for _, f in late]) == len(late)

    await wait_for(replayed, timeout=60)
    after = await hub.pool.fetch(
        "SELECT id, to_address, status, error_code FROM messages WHERE id = ANY($1::uuid[])",
        ids)
    assert {r["to_address"]: (r["status"], r["error_code"]) for r in after} == carrier
    await applied_once()
    assert (await sup.reconcile_receipts())["looked_up"] == 0  # nothing left to ask about


async def test_lookups_are_bounded_per_account_and_back_off_while_the_carrier_is_silent(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, silent_carrier: Any
) -> None:
    """Two sub-accounts, each with its own provider account; the carrier has not heard
    from the handsets yet (its texts stay `sent` for an hour)."""
    state = silent_carrier.carrier.state
    silent_carrier.configure(latency={"kind": "fixed", "seconds": 3600.0})
    try:
        await sending_hours_now_for(hub, UUID(tenant.sa2))
        ids: dict[str, list[str]] = {}
        for n, (sa, key) in enumerate(((tenant.sa1, tenant.sa1_key),
                                       (tenant.sa2, tenant.sa2_key))):
            number = f"+1212555020{n}"
            account = state.owner_of(number)
            await setup_sms(api, Tenant(tenant.agency_id, tenant.agency_key, sa, sa, key, key),
                            silent_carrier.url, numbers=(number,), mps=100,
                            account=(account, state.token_for(account)))
            ids[sa] = await send_texts(api, sa, key, [f"+1415555{3200 + 10 * n + i}"
                                                      for i in range(3)], f"quiet-{n}")
            await wait_for(lambda sa=sa: all_sent(hub, ids[sa]), timeout=120, every=0.2)
    finally:
        silent_carrier.configure(latency={"kind": "fixed", "seconds": 0.05})
    everyone = [*ids[tenant.sa1], *ids[tenant.sa2]]
    # Accepted an hour ago: due, and the back-off's next wait is another hour.
    await hub.pool.execute(
        """UPDATE messages SET sent_at = now() - interval '1 hour',
                  updated_at = now() - interval '1 hour' WHERE id = ANY($1::uuid[])""",
        everyone)
    history_before = await hub.pool.fetchval(
        "SELECT count(*) FROM message_events WHERE message_id = ANY($1::uuid[])", everyone)

    sup = reconciler(hub)
    first = await sup.reconcile_receipts(per_account=2)
    assert first == {"looked_up": 4, "moved": 0}  # two of each account's three
    second = await sup.reconcile_receipts(per_account=2)
    assert second == {"looked_up": 2, "moved": 0}  # the third of each, not the first two
    assert await sup.reconcile_receipts(per_account=2) == {"looked_up": 0, "moved": 0}

    rows = await hub.pool.fetch("SELECT sub_account_id, status FROM messages "
                                "WHERE id = ANY($1::uuid[])", everyone)
    assert {r["status"] for r in rows} == {"sent"}  # Twilio's `sent` is no news
    assert await hub.pool.fetchval(
        "SELECT count(*) FROM message_events WHERE message_id = ANY($1::uuid[])",
        everyone) == history_before


async def test_a_lookup_that_fails_moves_nothing_and_is_asked_again(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, silent_carrier: Any
) -> None:
    state = silent_carrier.carrier.state
    number = "+12125550210"
    account = state.owner_of(number)
    await setup_sms(api, tenant, silent_carrier.url, numbers=(number,), mps=100,
                    account=(account, state.token_for(account)))
    ids = await send_texts(api, tenant.sa1, tenant.sa1_key, ["+14155553300", "+14155553301"],
                           "unasked")
    await wait_for(lambda: all_sent(hub, ids), timeout=120, every=0.2)
    sup = reconciler(hub)
    # Twilio refuses the account's token (20003) while the operator rotates it.
    def refused() -> int:
        return int(silent_carrier.call(lambda: state.counts.get("rejected.401", 0)))

    before = refused()
    silent_carrier.configure(accounts={account: "rotated-token"})
    try:
        assert await sup.reconcile_receipts() == {"looked_up": 2, "moved": 0}
    finally:
        silent_carrier.configure(accounts={})
    assert refused() == before + 2
    assert {r["status"] for r in await hub.pool.fetch(
        "SELECT status FROM messages WHERE id = ANY($1::uuid[])", ids)} == {"sent"}
    # Once its back-off has passed (here: made to have passed), the text is asked again.
    await hub.pool.execute("UPDATE messages SET updated_at = sent_at - interval '1 second' "
                           "WHERE id = ANY($1::uuid[])", ids)
    assert await sup.reconcile_receipts() == {"looked_up": 2, "moved": 2}
    log = {r["to"]: r["outcome"] for r in silent_carrier.call(silent_carrier.carrier.requests)
           if r["from"] == number}
    rows = await hub.pool.fetch(
        "SELECT to_address, status FROM messages WHERE id = ANY($1::uuid[])", ids)
    assert {r["to_address"]: r["status"] for r in rows} == log
