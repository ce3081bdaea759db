"""Conversation assignment (review R6): the assignee is a user of the sub-account, a thread
someone holds is not taken silently (409 already_assigned unless taking over, or an admin
reassigns), two agents claiming at once cannot both win; and an agent's reply records who
sent it. Real gateway, PostgreSQL and login sessions."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from hub import users
from hub.context import Hub
from hub.users import Role
from tests.conftest import Tenant, assert_problem, auth
from tests.test_sending import setup_sms
from tests.test_users import PASSWORD, Browser, add_conversation, sign_in


@dataclass
class Team:
    admin: Browser
    ann: Browser  # an agent of sub-account 1
    bob: Browser  # another agent of sub-account 1
    ids: dict[str, str]  # email's local part -> user id; "zed" is an agent of sub-account 2


@pytest.fixture
async def team(hub: Hub, tenant: Tenant, gateway_url: str) -> AsyncIterator[Team]:
    agency, sa1, sa2 = (uuid.UUID(x) for x in (tenant.agency_id, tenant.sa1, tenant.sa2))
    ids = {}
    for name, grants in (("admin", {sa1: Role.ADMIN}), ("ann", {sa1: Role.AGENT}),
                         ("bob", {sa1: Role.AGENT}), ("zed", {sa2: Role.AGENT})):
        user = await users.do_create_user(hub, agency, f"{name}@x.example", PASSWORD, name,
                                          grants)
        ids[name] = str(user["id"])
    t = Team(*[await sign_in(gateway_url, f"{n}@x.example") for n in ("admin", "ann", "bob")],
             ids)
    yield t
    for b in (t.admin, t.ann, t.bob):
        await b.http.aclose()


def _url(tenant: Tenant, conv: str) -> str:
    return f"/v1/sub-accounts/{tenant.sa1}/conversations/{conv}/assignment"


async def _put(who: Browser, tenant: Tenant, conv: str, body: dict[str, Any]
               ) -> httpx.Response:
    return await who.http.put(_url(tenant, conv), json=body, headers=who.headers())


async def _events(hub: Hub, tenant: Tenant, after: int) -> list[dict[str, Any]]:
    rows = await hub.pool.fetch(
        "SELECT type, data FROM events WHERE sub_account_id = $1 AND seq > $2 ORDER BY seq",
        uuid.UUID(tenant.sa1), after)
    return [dict(r) for r in rows]


async def _head(hub: Hub, tenant: Tenant) -> int:
    seq: int = await hub.pool.fetchval("SELECT event_seq FROM sub_accounts WHERE id = $1",
                                       uuid.UUID(tenant.sa1))
    return seq


async def test_the_assignee_must_be_a_user_of_the_sub_account(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, team: Team
) -> None:
    conv = await add_conversation(hub, tenant.sa1)
    before = await _head(hub, tenant)
    for bad in ("bob", str(uuid.uuid4()), team.ids["zed"]):
        r = await api.put(_url(tenant, conv), json={"assignee": bad},
                          headers=auth(tenant.sa1_key))
        assert_problem(r, 422, field="assignee")
        r = await _put(team.ann, tenant, conv, {"assignee": bad})
        assert_problem(r, 422, field="assignee")
    got = await api.get(f"/v1/sub-accounts/{tenant.sa1}/conversations/{conv}",
                        headers=auth(tenant.sa1_key))
    assert got.json()["assignee"] is None
    assert await _events(hub, tenant, before) == []  # nothing changed, nobody was told
    # Still in Unassigned for the agents; an agent of this sub-account is accepted.
    unassigned = await api.get(f"/v1/sub-accounts/{tenant.sa1}/conversations",
                               params={"unassigned": "true"}, headers=auth(tenant.sa1_key))
    assert [c["id"] for c in unassigned.json()["data"]] == [conv]
    r = await api.put(_url(tenant, conv), json={"assignee": team.ids["bob"]},
                      headers=auth(tenant.sa1_key))
    assert r.status_code == 200 and r.json()["assignee"] == team.ids["bob"]


async def test_a_claimed_thread_is_409_unless_taken_over_or_reassigned_by_an_admin(
    hub: Hub, tenant: Tenant, team: Team
) -> None:
    ann, bob = team.ids["ann"], team.ids["bob"]
    conv = await add_conversation(hub, tenant.sa1)
    r = await _put(team.ann, tenant, conv, {"assignee": ann})
    assert r.status_code == 200 and r.json()["assignee"] == ann
    assert (await _put(team.ann, tenant, conv, {"assignee": ann})).status_code == 200

    before = await _head(hub, tenant)
    for body in ({"assignee": bob}, {"assignee": None}):
        problem = assert_problem(await _put(team.bob, tenant, conv, body), 409,
                                 "already_assigned", field="assignee")
        assert ann in problem["detail"]  # names the holder
    assert await _events(hub, tenant, before) == []
    r = await _put(team.bob, tenant, conv, {"assignee": bob, "take_over": True})
    assert r.status_code == 200 and r.json()["assignee"] == bob
    # Ann's inbox hears that the thread went to Bob.
    assert [(e["type"], e["data"]["assignee"]) for e in await _events(hub, tenant, before)] \
        == [("conversation.updated", bob)]

    r = await _put(team.admin, tenant, conv, {"assignee": ann})  # a manager reassigns
    assert r.status_code == 200 and r.json()["assignee"] == ann
    r = await _put(team.ann, tenant, conv, {"assignee": bob})  # the holder hands it on
    assert r.status_code == 200 and r.json()["assignee"] == bob
    r = await _put(team.bob, tenant, conv, {"assignee": None})  # the holder releases it
    assert r.status_code == 200 and r.json()["assignee"] is None


async def test_two_agents_claiming_at_once_cannot_both_win(
    hub: Hub, tenant: Tenant, team: Team
) -> None:
    ann, bob = team.ids["ann"], team.ids["bob"]
    for i in range(8):
        conv = await add_conversation(hub, tenant.sa1, phone=f"+1415555{i:04d}")
        a, b = await asyncio.gather(_put(team.ann, tenant, conv, {"assignee": ann}),
                                    _put(team.bob, tenant, conv, {"assignee": bob}))
        assert sorted([a.status_code, b.status_code]) == [200, 409], (a.text, b.text)
        winner = ann if a.status_code == 200 else bob
        assert await hub.pool.fetchval("SELECT assignee FROM conversations WHERE id = $1",
                                       uuid.UUID(conv)) == winner


async def test_an_agents_reply_records_who_sent_it(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, team: Team
) -> None:
    await setup_sms(api, tenant, "http://127.0.0.1:9")  # queued is enough here
    conv = await add_conversation(hub, tenant.sa1)
    url = f"/v1/sub-accounts/{tenant.sa1}/conversations/{conv}/messages"
    r = await team.ann.http.post(url, json={"body": "On it"},
                                 headers={**team.ann.headers(), "Idempotency-Key": "a1"})
    assert r.status_code == 202, r.text
    assert r.json()["sent_by"] == team.ids["ann"]
    by_key = await api.post(url, json={"body": "Automated"},
                            headers={**auth(tenant.sa1_key), "Idempotency-Key": "k1"})
    assert by_key.status_code == 202 and by_key.json()["sent_by"] is None
    one = await api.get(f"/v1/sub-accounts/{tenant.sa1}/messages/{r.json()['id']}",
                        headers=auth(tenant.sa1_key))
    assert one.json()["sent_by"] == team.ids["ann"]
    thread = await api.get(url, headers=auth(tenant.sa1_key))
    assert {m["body"]: m["sent_by"] for m in thread.json()["data"]} == \
        {"On it": team.ids["ann"], "Automated": None}


async def test_conversations_filter_by_a_real_assignee(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant, team: Team
) -> None:
    """test_users.py's filter test assigned the names "ann" and "bob", which are now 422:
    the same filters with users of the sub-account."""
    mine, theirs, nobodys = [await add_conversation(hub, tenant.sa1, phone=f"+1415555017{i}")
                             for i in range(3)]
    h = auth(tenant.sa1_key)
    base = f"/v1/sub-accounts/{tenant.sa1}/conversations"
    for conv, who in ((mine, "ann"), (theirs, "bob")):
        r = await api.put(f"{base}/{conv}/assignment", json={"assignee": team.ids[who]},
                          headers=h)
        assert r.status_code == 200, r.text

    async def listed(**params: object) -> set[str]:
        r = await api.get(base, headers=h, params=params)
        assert r.status_code == 200, r.text
        return {c["id"] for c in r.json()["data"]}

    assert await listed(assignee=team.ids["ann"]) == {mine}
    assert await listed(unassigned=True) == {nobodys}
    assert await listed(unassigned=False) == {mine, theirs}
    assert await listed(assignee=team.ids["ann"], unassigned=True) == set()
