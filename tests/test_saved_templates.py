"""Saved message templates through the real routes: create, list, change, delete, preview
with a contact's fields; content checked as a campaign's is; names unique per sub-account;
another sub-account's templates are not found."""

from __future__ import annotations

import httpx

from hub.context import Hub
from tests.conftest import Tenant, assert_problem, auth
from tests.test_campaign_fixes import setup


def _url(sa: str, *rest: str) -> str:
    return "/".join([f"/v1/sub-accounts/{sa}/templates", *rest])


async def _create(api: httpx.AsyncClient, tenant: Tenant, **fields: object) -> httpx.Response:
    body = {"name": "Welcome", "channel": "sms", "body": "Hi {{first_name}}!"} | fields
    return await api.post(_url(tenant.sa1), headers=auth(tenant.sa1_key), json=body)


async def test_a_template_is_created_listed_changed_and_deleted(
    api: httpx.AsyncClient, tenant: Tenant
) -> None:
    h = auth(tenant.sa1_key)
    r = await _create(api, tenant)
    assert r.status_code == 201, r.text
    t = r.json()
    assert (t["name"], t["channel"], t["body"], t["subject"], t["media_urls"]) == \
        ("Welcome", "sms", "Hi {{first_name}}!", None, [])
    email = (await _create(api, tenant, name="Receipt", channel="email",
                           subject="Thanks {{first_name}}", body="Your receipt")).json()

    listed = (await api.get(_url(tenant.sa1), headers=h)).json()
    assert [x["id"] for x in listed["data"]] == [email["id"], t["id"]]  # newest first
    only_sms = (await api.get(_url(tenant.sa1), headers=h, params={"channel": "sms"})).json()
    assert [x["id"] for x in only_sms["data"]] == [t["id"]]
    by_name = (await api.get(_url(tenant.sa1), headers=h, params={"q": "CEIP"})).json()
    assert [x["id"] for x in by_name["data"]] == [email["id"]]
    literal = (await api.get(_url(tenant.sa1), headers=h, params={"q": "%"})).json()
    assert literal["data"] == []  # `%` is a character of the name, not a wildcard
    first = (await api.get(_url(tenant.sa1), headers=h, params={"limit": 1})).json()
    rest = (await api.get(_url(tenant.sa1), headers=h,
                          params={"limit": 1, "cursor": first["next_cursor"]})).json()
    assert [x["id"] for x in first["data"] + rest["data"]] == [email["id"], t["id"]]

    r = await api.patch(_url(tenant.sa1, t["id"]), headers=h, json={"body": "Hello {{first_name}}"})
    assert r.status_code == 200, r.text
    assert (r.json()["name"], r.json()["body"]) == ("Welcome", "Hello {{first_name}}")
    assert r.json()["updated_at"] > t["updated_at"]
    assert (await api.get(_url(tenant.sa1, t["id"]), headers=h)).json() == r.json()

    assert (await api.delete(_url(tenant.sa1, t["id"]), headers=h)).status_code == 204
    assert_problem(await api.get(_url(tenant.sa1, t["id"]), headers=h), 404,
                   "template_not_found")
    assert_problem(await api.delete(_url(tenant.sa1, t["id"]), headers=h), 404,
                   "template_not_found")


async def test_a_template_is_checked_like_a_campaign(api: httpx.AsyncClient,
                                                     tenant: Tenant) -> None:
    h = auth(tenant.sa1_key)
    assert_problem(await _create(api, tenant, body="Hi {{first_name"), 422, field="body")
    assert_problem(await _create(api, tenant, channel="email", body="x"), 422,
                   field="subject")
    assert_problem(await _create(api, tenant, body=""), 422, field="body")
    assert_problem(await _create(api, tenant, media_urls=["https://example.com/a.png"]), 422,
                   field="media_urls")
    assert_problem(await _create(api, tenant, channel="fax"), 422, field="channel")
    assert_problem(await _create(api, tenant, name=""), 422, field="name")
    # A subject only an email could carry is refused, not dropped (found by review R5).
    assert_problem(await _create(api, tenant, subject="Hello"), 422, field="subject")
    assert_problem(await _create(api, tenant, colour="red"), 422, field="colour")

    t = (await _create(api, tenant)).json()
    assert_problem(await _create(api, tenant, name="WELCOME"), 409, "template_name_taken",
                   "name")
    # With an Idempotency-Key, a retried create answers as the first did.
    retry = {**h, "Idempotency-Key": "tpl-1"}
    body = {"name": "Retried", "channel": "sms", "body": "Hi"}
    first = await api.post(_url(tenant.sa1), headers=retry, json=body)
    again = await api.post(_url(tenant.sa1), headers=retry, json=body)
    assert (first.status_code, again.status_code) == (201, 201), again.text
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    other = (await _create(api, tenant, name="Other")).json()
    assert_problem(await api.patch(_url(tenant.sa1, other["id"]), headers=h,
                                   json={"name": "welcome"}), 409, "template_name_taken", "name")
    # Changed as a whole: an SMS template turned into an email one needs a subject.
    assert_problem(await api.patch(_url(tenant.sa1, t["id"]), headers=h,
                                   json={"channel": "email"}), 422, field="subject")
    r = await api.patch(_url(tenant.sa1, t["id"]), headers=h,
                        json={"channel": "email", "subject": "Welcome aboard"})
    assert r.status_code == 200 and r.json()["subject"] == "Welcome aboard", r.text
    assert_problem(await api.patch(_url(tenant.sa1, other["id"]), headers=h,
                                   json={"subject": "x"}), 422, field="subject")
    assert (await api.get(_url(tenant.sa1, other["id"]), headers=h)).json()["name"] == "Other"


async def test_a_preview_renders_a_contact_and_counts_segments(api: httpx.AsyncClient,
                                                              tenant: Tenant) -> None:
    h = auth(tenant.sa1_key)
    ada = (await api.post(f"/v1/sub-accounts/{tenant.sa1}/contacts", headers=h, json={
        "phone": "+12125550181", "first_name": "Ada", "custom_fields": {"plan": "gold"}})).json()
    bob = (await api.post(f"/v1/sub-accounts/{tenant.sa1}/contacts", headers=h, json={
        "phone": "+12125550182"})).json()
    t = (await _create(api, tenant, body="Hi {{first_name}}, your {{custom.plan}} plan €")).json()

    r = await api.get(_url(tenant.sa1, t["id"], "preview"), headers=h,
                      params={"contact_id": ada["id"]})
    assert r.status_code == 200, r.text
    p = r.json()
    assert (p["contact_id"], p["body"], p["missing"]) == \
        (ada["id"], "Hi Ada, your gold plan €", [])
    assert (p["segments"], p["encoding"]) == (1, "GSM-7")  # € is in GSM-7's extension table
    newest = (await api.get(_url(tenant.sa1, t["id"], "preview"), headers=h)).json()
    assert newest["contact_id"] == bob["id"]
    assert sorted(newest["missing"]) == ["custom.plan", "first_name"] and newest["warnings"]
    assert_problem(await api.get(_url(tenant.sa1, t["id"], "preview"), headers=h,
                                 params={"contact_id": ada["id"].replace(ada["id"][:8],
                                                                         "0" * 8)}),
                   404, "contact_not_found", "contact_id")


async def test_templates_are_not_shared_between_sub_accounts(api: httpx.AsyncClient,
                                                            tenant: Tenant) -> None:
    t = (await _create(api, tenant)).json()
    other = auth(tenant.sa2_key)
    for r in (await api.get(_url(tenant.sa1, t["id"]), headers=other),
              await api.get(_url(tenant.sa2, t["id"]), headers=other),
              await api.patch(_url(tenant.sa2, t["id"]), headers=other, json={"body": "x"}),
              await api.delete(_url(tenant.sa2, t["id"]), headers=other),
              await api.get(_url(tenant.sa2, t["id"], "preview"), headers=other)):
        assert r.status_code == 404, r.text
    assert (await api.get(_url(tenant.sa2), headers=other)).json()["data"] == []
    # The same name is free in another sub-account; the agency key reaches both.
    r = await api.post(_url(tenant.sa2), headers=other,
                       json={"name": "Welcome", "channel": "sms", "body": "Hello"})
    assert r.status_code == 201, r.text
    agency = auth(tenant.agency_key)
    assert (await api.get(_url(tenant.sa1, t["id"]), headers=agency)).json()["id"] == t["id"]
    assert (await api.get(_url(tenant.sa1), headers=agency)).json()["data"][0]["id"] == t["id"]


async def test_a_campaign_starts_from_a_template_and_keeps_its_copy(
    hub: Hub, api: httpx.AsyncClient, tenant: Tenant
) -> None:
    await setup(hub, api, tenant)  # an SMS sender and contacts tagged "all"
    h = auth(tenant.sa1_key)
    t = (await _create(api, tenant, body="Hi {{first_name}}, spring sale!")).json()
    campaigns = f"/v1/sub-accounts/{tenant.sa1}/campaigns"
    spec = {"name": "Spring", "channel": "sms", "audience": {"tags_any": ["all"]},
            "template_id": t["id"]}
    r = await api.post(campaigns, headers=h, json=spec)
    assert r.status_code == 201, r.text
    c = r.json()
    assert c["body"] == "Hi {{first_name}}, spring sale!"
    # A copy: editing or deleting the template leaves the campaign as it was made.
    await api.patch(_url(tenant.sa1, t["id"]), headers=h, json={"body": "Changed"})
    assert (await api.get(f"{campaigns}/{c['id']}", headers=h)).json()["body"] == c["body"]
    # Text given with the template wins; a template of another channel or sub-account is
    # refused, naming template_id.
    r = await api.post(campaigns, headers=h, json={**spec, "body": "Own text"})
    assert r.status_code == 201 and r.json()["body"] == "Own text", r.text
    email = (await _create(api, tenant, name="Mail", channel="email", subject="Hi",
                           body="Hello")).json()
    assert_problem(await api.post(campaigns, headers=h, json={**spec, "template_id": email["id"]}),
                   422, field="template_id")
    theirs = (await api.post(_url(tenant.sa2), headers=auth(tenant.sa2_key), json={
        "name": "Theirs", "channel": "sms", "body": "Hello"})).json()
    assert_problem(await api.post(campaigns, headers=h,
                                  json={**spec, "template_id": theirs["id"]}),
                   422, field="template_id")


async def test_bad_input_is_a_422_naming_the_field_never_a_500(
    api: httpx.AsyncClient, tenant: Tenant
) -> None:
    h = auth(tenant.sa1_key)
    t = (await _create(api, tenant)).json()
    for field in ("name", "channel", "body", "media_urls"):
        r = await api.patch(_url(tenant.sa1, t["id"]), headers=h, json={field: None})
        assert_problem(r, 422, field=field)
    assert (await api.get(_url(tenant.sa1, t["id"]), headers=h)).json() == t  # unchanged
    assert_problem(await api.get(_url(tenant.sa1), headers=h, params={"q": "a\x00b"}), 422,
                   field="q")
