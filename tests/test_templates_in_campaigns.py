"""Campaigns made from saved templates, through the real routes: a campaign remembers its
template (create, GET, list, a draft's PATCH, duplicate; forgotten when the template is
deleted) while keeping its own copy of the text; a body made only of merge fields is a
message, and a recipient for whom it renders empty is skipped, never sent an empty text."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from hub.campaigns import EMPTY_MESSAGE, check_content, empty_part
from hub.context import Hub
from hub.errors import ValidationFailed
from hub.templates import parse
from tests.conftest import Tenant, assert_problem, auth
from tests.test_campaign_edit import (
    carrier,
    carrier_log,
    contacts,
    create,
    get,
    launch,
    patch,
    sms_sender_without_carrier,
    tenant,
)
from tests.test_sending import carrier_requests, setup_sms, wait_for

__all__ = ["carrier", "carrier_log", "tenant"]  # fixtures shared with those modules


async def template(api: httpx.AsyncClient, tenant: Tenant, sa: str | None = None,
                   **fields: Any) -> dict[str, Any]:
    body = {"name": "Welcome", "channel": "sms", "body": "Hi {{first_name}}, from the template"}
    r = await api.post(f"/v1/sub-accounts/{sa or tenant.sa1}/templates",
                       headers=auth(tenant.sa1_key if sa is None else tenant.sa2_key),
                       json=body | fields)
    assert r.status_code == 201, r.text
    return dict(r.json())


async def test_a_campaign_keeps_the_template_it_was_made_from(
        hub: Hub, api: httpx.AsyncClient, tenant: Tenant) -> None:
    await sms_sender_without_carrier(api, tenant)
    h = auth(tenant.sa1_key)
    t = await template(api, tenant)
    c = await create(api, tenant, template_id=t["id"], body=None)
    assert (c["template_id"], c["body"]) == (t["id"], t["body"])
    assert (await get(api, tenant, c["id"]))["template_id"] == t["id"]
    listed = (await api.get(f"/v1/sub-accounts/{tenant.sa1}/campaigns", headers=h)).json()
    assert [x["template_id"] for x in listed["data"]] == [t["id"]]
    by_hand = await create(api, tenant, name="By hand")
    assert by_hand["template_id"] is None

    # Editing the template leaves the draft's text as it is; an edit of something else
    # keeps the template's id without copying it again.
    await api.patch(f"/v1/sub-accounts/{tenant.sa1}/templates/{t['id']}", headers=h,
                    json={"body": "Edited {{first_name}}"})
    r = await patch(api, tenant, c["id"], {"name": "Renamed"})
    assert (r.json()["template_id"], r.json()["body"]) == (t["id"], t["body"]), r.text
    # Only a PATCH naming the template takes its edit up; null forgets it, keeping the text.
    r = await patch(api, tenant, c["id"], {"template_id": t["id"]})
    assert (r.json()["template_id"], r.json()["body"]) == (t["id"], "Edited {{first_name}}")
    r = await patch(api, tenant, c["id"], {"template_id": None})
    assert (r.json()["template_id"], r.json()["body"]) == (None, "Edited {{first_name}}")
    r = await patch(api, tenant, by_hand["id"], {"template_id": t["id"]})
    assert (r.json()["template_id"], r.json()["body"]) == (t["id"], "Edited {{first_name}}")

    # Another sub-account's template, or one of another channel, is a 422 naming it.
    theirs = await template(api, tenant, sa=tenant.sa2)
    assert_problem(await patch(api, tenant, c["id"], {"template_id": theirs["id"]}), 422,
                   field="template_id")
    mail = await template(api, tenant, name="Mail", channel="email", subject="Hi")
    assert_problem(await patch(api, tenant, c["id"], {"template_id": mail["id"]}), 422,
                   field="template_id")
    assert (await get(api, tenant, c["id"]))["template_id"] is None  # unchanged


async def test_a_launched_campaign_keeps_its_text_and_a_deleted_template_only_its_link(
        hub: Hub, api: httpx.AsyncClient, tenant: Tenant) -> None:
    await sms_sender_without_carrier(api, tenant)
    await contacts(hub, tenant.sa1, "old", ["+14155550100"])
    h = auth(tenant.sa1_key)
    t = await template(api, tenant)
    c = await create(api, tenant, template_id=t["id"], body=None)
    assert (await launch(api, tenant, c["id"])).status_code == 200
    assert_problem(await patch(api, tenant, c["id"], {"template_id": t["id"]}), 409,
                   "campaign_not_draft", "template_id")
    copy = (await api.post(f"/v1/sub-accounts/{tenant.sa1}/campaigns/{c['id']}/duplicate",
                           headers=h)).json()
    assert (copy["template_id"], copy["body"]) == (t["id"], t["body"])

    assert (await api.delete(f"/v1/sub-accounts/{tenant.sa1}/templates/{t['id']}",
                             headers=h)).status_code == 204
    for kept in (await get(api, tenant, c["id"]), await get(api, tenant, copy["id"])):
        assert (kept["template_id"], kept["body"]) == (None, t["body"])


async def test_an_email_template_fills_subject_and_html(
        hub: Hub, api: httpx.AsyncClient, tenant: Tenant) -> None:
    h = auth(tenant.sa1_key)
    p = await api.post(f"/v1/sub-accounts/{tenant.sa1}/providers", headers=h, json={
        "provider": "sendgrid", "name": "sg", "account_id": "main", "secret": "SG.key",
        "base_url": "http://127.0.0.1:9"})
    assert p.status_code == 201, p.text
    s = await api.post(f"/v1/sub-accounts/{tenant.sa1}/senders", headers=h, json={
        "provider_account_id": p.json()["id"], "channel": "email", "kind": "email",
        "address": "news@example.com", "mps": 5})
    assert s.status_code == 201, s.text
    t = await template(api, tenant, name="News", channel="email", subject="News for "
                       "{{first_name}}", body="Plain", html="<p>Hi {{first_name}}</p>")
    assert t["html"] == "<p>Hi {{first_name}}</p>"
    c = await create(api, tenant, channel="email", template_id=t["id"], body=None)
    assert (c["subject"], c["body"], c["html"]) == (t["subject"], "Plain", t["html"])
    # The template's HTML goes with its body, not beside a body of the request's own.
    own = await create(api, tenant, channel="email", template_id=t["id"], body="Own")
    assert (own["subject"], own["body"], own["html"]) == (t["subject"], "Own", None)
    # HTML belongs to email templates only; a broken one is refused as a body is.
    r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/templates", headers=h, json={
        "name": "Text", "channel": "sms", "body": "Hi", "html": "<p>Hi</p>"})
    assert_problem(r, 422, field="html")
    r = await api.patch(f"/v1/sub-accounts/{tenant.sa1}/templates/{t['id']}", headers=h,
                        json={"html": "<p>{{first_name</p>"})
    assert_problem(r, 422, field="html")


async def test_a_body_of_merge_fields_only_is_a_message_and_previews_empty_for_a_blank(
        hub: Hub, api: httpx.AsyncClient, tenant: Tenant) -> None:
    await sms_sender_without_carrier(api, tenant)
    h = auth(tenant.sa1_key)
    t = await template(api, tenant, body="{{first_name}}")  # was 422 "the message is empty"
    nameless = (await api.post(f"/v1/sub-accounts/{tenant.sa1}/contacts", headers=h, json={
        "phone": "+12125550182"})).json()
    r = await api.get(f"/v1/sub-accounts/{tenant.sa1}/templates/{t['id']}/preview",
                      headers=h, params={"contact_id": nameless["id"]})
    assert r.status_code == 200, r.text
    assert r.json()["body"] == ""
    assert any("skipped" in w and EMPTY_MESSAGE in w for w in r.json()["warnings"]), r.json()
    c = await create(api, tenant, template_id=t["id"], body=None)
    assert c["body"] == "{{first_name}}"
    mail = await template(api, tenant, name="Mail", channel="email", subject="News",
                          body="{{custom.note}}")
    assert mail["body"] == "{{custom.note}}"
    # Nothing at all is still empty.
    r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/templates", headers=h,
                       json={"name": "Blank", "channel": "sms", "body": "  \n "})
    assert_problem(r, 422, field="body")


async def test_a_recipient_whose_message_renders_empty_is_skipped_not_sent(
        hub: Hub, api: httpx.AsyncClient, tenant: Tenant, carrier: Any,
        carrier_log: httpx.AsyncClient) -> None:
    await setup_sms(api, tenant, carrier.url)
    named, nameless = "+14155550100", "+14155550101"
    await contacts(hub, tenant.sa1, "old", [named])
    h = auth(tenant.sa1_key)
    blank = (await api.post(f"/v1/sub-accounts/{tenant.sa1}/contacts", headers=h, json={
        "phone": nameless, "first_name": " ", "timezone": "Etc/GMT",
        "tags": ["old"]})).json()
    c = await create(api, tenant, body="{{first_name}}")
    assert (await launch(api, tenant, c["id"])).status_code == 200

    async def finished() -> dict[str, Any] | None:
        row = await get(api, tenant, c["id"])
        return row if row["status"] == "completed" else None

    await wait_for(finished)
    reqs = await carrier_requests(carrier_log)
    assert [(q["to"], q["body"]) for q in reqs] == [(named, "Pat")]
    r = await api.get(f"/v1/sub-accounts/{tenant.sa1}/campaigns/{c['id']}/recipients",
                      headers=h, params={"status": "skipped"})
    skipped = r.json()["data"]
    assert [(x["contact_id"], x["skip_reason"]) for x in skipped] == \
        [(blank["id"], EMPTY_MESSAGE)]


@pytest.mark.parametrize(("channel", "parts", "empty"), [
    ("sms", {"body": ""}, "body"),
    ("sms", {"body": "Pat"}, None),
    ("mms", {"body": "", "media_urls": ["https://example.com/a.png"]}, None),
    ("email", {"body": ""}, "body"),
    ("email", {"body": "", "html": "<p>Hi</p>"}, None),
    ("voice", {"body": "", "voice": {"say": ""}}, "voice.say"),
    ("voice", {"body": "", "media_urls": ["https://example.com/a.mp3"]}, None),
])
def test_empty_part_names_what_leaves_a_rendered_message_empty(
        channel: str, parts: dict[str, Any], empty: str | None) -> None:
    assert empty_part(channel, parts["body"], parts.get("html"), parts.get("media_urls", []),
                      parts.get("voice")) == empty


def test_a_template_is_blank_only_without_text_and_merge_fields() -> None:
    assert parse(" \n").blank and parse("").blank
    assert not parse("{{first_name}}").blank and not parse("x").blank
    check_content("voice", "{{first_name}}")  # a call's words may be merge fields only
    check_content("email", "{{first_name}}", "News")
    # A subject line is still wanted whatever its merge fields hold.
    with pytest.raises(ValidationFailed) as refused:
        check_content("email", "{{first_name}}", "{{first_name}}")
    assert [e.field for e in refused.value.errors] == ["subject"]
