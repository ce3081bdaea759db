"""Saved message templates: create, change, delete and preview. A template is checked as a
campaign's content is (`check_content`): it must parse, fit its channel (an email needs a
subject, an SMS a body, only MMS carries media, only email HTML) and stay within the size
limits. A campaign made from a template copies its text and remembers its id: editing the
template changes no campaign (a draft takes the edit up by a PATCH naming the template
again), and deleting it leaves the campaigns their text."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from hub.campaigns import ContentCheck, check_content
from hub.context import Hub
from hub.errors import Conflict, FieldError, NotFound, ValidationFailed
from hub.store import contacts as contact_store
from hub.store import templates as store
from hub.templates import merge_variables

Row = dict[str, Any]


def _checked(fields: Row, given: Row) -> Row:
    """`fields` as they would be stored, `given` what the request sent: a subject or HTML
    sent for a template that is not an email is refused, where it used to be dropped without
    a word; one left from an email template turned into a text goes quietly."""
    for part in ("subject", "html"):
        if given.get(part) is not None and fields["channel"] != "email":
            raise ValidationFailed.field(part, f"only email templates have a {part}; a "
                                         f"{fields['channel']} template sends its body",
                                         "not_allowed")
    email = fields["channel"] == "email"
    check_content(fields["channel"], fields["body"], fields.get("subject"),
                  fields["media_urls"], other_texts={"html": fields.get("html")})
    return {**fields, "subject": fields.get("subject") if email else None,
            "html": fields.get("html") if email else None}


def _name_taken(name: str) -> Conflict:
    return Conflict(f"a template named {name!r} already exists in this sub-account",
                    code="template_name_taken",
                    errors=[FieldError("name", "already used by another template", "duplicate")])


async def do_create_template(hub: Hub, sa_id: UUID, data: Row) -> Row:
    fields = _checked({f: data.get(f) for f in store.FIELDS} | {
        "body": data.get("body") or "", "media_urls": data.get("media_urls") or []}, data)
    async with hub.transaction() as tx:
        try:
            row = await store.insert(tx.conn, sa_id, fields)
        except asyncpg.UniqueViolationError as exc:
            raise _name_taken(fields["name"]) from exc
        tx.emit(sa_id, "template.created", row)
    return row


async def do_update_template(hub: Hub, sa_id: UUID, id_: UUID, changes: Row) -> Row:
    """Changes some fields; the template as changed is checked as a whole (turning an SMS
    template into an email one needs a subject)."""
    async with hub.transaction() as tx:
        current = await store.get(tx.conn, sa_id, id_, lock=True)
        if current is None:
            raise NotFound("no such template", code="template_not_found")
        fields = _checked({f: current[f] for f in store.FIELDS} | changes, changes)
        try:
            row = await store.update(tx.conn, sa_id, id_, fields)
        except asyncpg.UniqueViolationError as exc:
            raise _name_taken(fields["name"]) from exc
        assert row is not None
        tx.emit(sa_id, "template.updated", row)
    return row


async def do_delete_template(hub: Hub, sa_id: UUID, id_: UUID) -> None:
    """Campaigns made from it keep their copy of its text; their template_id becomes null
    (ON DELETE SET NULL)."""
    async with hub.transaction() as tx:
        if not await store.delete(tx.conn, sa_id, id_):
            raise NotFound("no such template", code="template_not_found")
        tx.emit(sa_id, "template.deleted", {"id": str(id_)})


async def get_template(hub: Hub, sa_id: UUID, id_: UUID) -> Row:
    row = await store.get(hub.pool, sa_id, id_)
    if row is None:
        raise NotFound("no such template", code="template_not_found")
    return row


async def preview_template(hub: Hub, sa_id: UUID, id_: UUID, contact_id: UUID | None
                           ) -> tuple[Row, ContentCheck]:
    """What `contact_id` (else the sub-account's newest contact, else nobody) would receive:
    (the contact, or {} , and the rendered check with segments and warnings)."""
    template = await get_template(hub, sa_id, id_)
    if contact_id is not None:
        contact = await contact_store.get(hub.pool, sa_id, contact_id)
        if contact is None:
            raise NotFound("no such contact", code="contact_not_found",
                           errors=[FieldError("contact_id", "no such contact in this "
                                              "sub-account", "not_found")])
    else:
        newest = await contact_store.list_page(hub.pool, sa_id, tag=None, q=None,
                                               cursor=None, limit=1)
        contact = newest[0] if newest else {}
    check = check_content(template["channel"], template["body"], template["subject"],
                          template["media_urls"], merge_variables(contact),
                          other_texts={"html": template["html"]})
    return contact, check
