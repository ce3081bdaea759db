"""The `do_*` writers: each validates, writes in one transaction, records its events in the
durable log and publishes them after commit. Nothing else writes tenant data."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

import asyncpg

from hub.campaign_actions import check_live_windows
from hub.contacts import clean_contact
from hub.context import Hub
from hub.crypto import new_api_key
from hub.emails import email_key, normalize_email
from hub.errors import Conflict, FieldError, NotFound, ValidationFailed
from hub.phones import normalize_phone, normalize_short_code
from hub.provider_settings import check_provider_settings
from hub.store import campaigns as campaign_store
from hub.store import contacts as contact_store
from hub.store import suppressions as suppression_store
from hub.store import tenants
from hub.tenancy import Principal
from hub.timezones import validate_timezone

log = logging.getLogger(__name__)
Row = dict[str, Any]

#: Messages per second by sender class (Twilio's documented defaults; 10DLC depends on the
#: brand's trust score, so its default is the lowest tier and configurable per sender).
DEFAULT_MPS = {
    "long_code": 1.0,
    "toll_free": 3.0,
    "short_code": 100.0,
    "10dlc": 4.5,
    "messaging_service": 10.0,
    "email": 50.0,
    "caller_id": 1.0,
}
CHANNEL_PROVIDERS = {"sms": {"twilio"}, "voice": {"twilio"}, "email": {"sendgrid", "smtp"}}
CHANNEL_KINDS = {
    "sms": {"long_code", "toll_free", "short_code", "10dlc", "messaging_service"},
    "voice": {"caller_id", "long_code", "toll_free"},
    "email": {"email"},
}


# --- agencies, sub-accounts and keys ----------------------------------------------------


async def do_create_agency(hub: Hub, name: str) -> tuple[Row, str]:
    """A new agency and its first agency API key (returned once, stored hashed)."""
    name = name.strip()
    if not name:
        raise ValidationFailed.field("name", "must not be blank: give the agency a name",
                                     "required")
    key, prefix, key_hash = new_api_key()
    async with hub.transaction() as tx:
        agency = await tenants.insert_agency(tx.conn, name)
        await tenants.insert_api_key(tx.conn, agency["id"], None, "default", prefix, key_hash)
    log.info("agency created", extra={"agency_id": str(agency["id"])})
    return agency, key


def _clean_sub_account(fields: Row) -> Row:
    if fields.get("timezone") is not None:
        fields["timezone"] = validate_timezone(fields["timezone"], field="timezone")
    if fields.get("default_region") is not None:
        import phonenumbers

        region = fields["default_region"].upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValidationFailed.field("default_region", "not an ISO 3166 region that phone "
                                         "numbers are known for", "invalid_region")
        fields["default_region"] = region
    return {k: v for k, v in fields.items() if v is not None}


#: The database's own refusal of quiet hours that start where they end (migration 0022).
QUIET_HOURS_DIFFER = "sub_accounts_quiet_hours_differ"


@contextmanager
def _quiet_hours_differ(fields: Row) -> Iterator[None]:
    """Every sub-account has quiet hours: ones that start where they end read as "never" as
    much as "always" (and campaigns take their default window from them), so the database
    refuses them. That refusal becomes a 422 naming the fields given (`fields`, the
    request's): one equal to the other given, or to the one stored."""
    try:
        yield
    except asyncpg.CheckViolationError as exc:
        if exc.constraint_name != QUIET_HOURS_DIFFER:
            raise
        given = [f for f in ("quiet_start", "quiet_end") if f in fields]
        at = fields[given[0]].strftime("%H:%M")
        message = (f"quiet hours from {at} to {at} are empty; give a start and an end that "
                   "differ (21:00 to 08:00 is usual; 23:59 to 00:00 leaves campaigns every "
                   "hour but one minute). Quiet hours cannot be turned off")
        raise ValidationFailed(f"{' and '.join(given)}: {message}", errors=[
            FieldError(f, message, "empty_quiet_hours") for f in given]) from None


async def do_create_sub_account(hub: Hub, principal: Principal, fields: Row) -> Row:
    principal.require_agency()
    fields = _clean_sub_account(dict(fields))
    async with hub.transaction() as tx:
        with _quiet_hours_differ(fields):
            row = await tenants.insert_sub_account(tx.conn, principal.agency_id, fields)
        tx.emit(row["id"], "sub_account.created", row)
    return row


async def do_update_sub_account(hub: Hub, sub_account_id: UUID, fields: Row) -> Row:
    fields = _clean_sub_account(dict(fields))
    async with hub.transaction() as tx:
        with _quiet_hours_differ(fields):
            row = await tenants.update_sub_account(tx.conn, sub_account_id, fields)
        if row is None:
            raise NotFound("no such sub-account", code="sub_account_not_found")
        # A new name or help text leaves the live campaigns' windows as they were.
        if "quiet_start" in fields or "quiet_end" in fields:
            await check_live_windows(tx.conn, row)
        tx.emit(sub_account_id, "sub_account.updated", row)
    return row


async def do_create_api_key(hub: Hub, principal: Principal, sub_account_id: UUID | None,
                            name: str) -> tuple[Row, str]:
    """A key of one sub-account of the caller's agency, or of the agency itself (None)."""
    key, prefix, key_hash = new_api_key()
    async with hub.transaction() as tx:
        row = await tenants.insert_api_key(
            tx.conn, principal.agency_id, sub_account_id, name, prefix, key_hash
        )
    log.info("api key created", extra={"sub_account_id": str(sub_account_id),
                                       "key_id": str(row["id"]), "by": principal.actor})
    return row, key


async def do_revoke_api_key(hub: Hub, principal: Principal, sub_account_id: UUID | None,
                            key_id: UUID) -> Row:
    """Revoke a sub-account's key, or an agency key (None). The agency's last live agency
    key stays: without one nobody could create sub-accounts or keys, and a fresh one could
    only be made in SQL. Rotate by creating the new key first."""
    async with hub.transaction() as tx:
        if sub_account_id is None and \
                await tenants.lock_live_agency_keys(tx.conn, principal.agency_id) == [key_id]:
            raise Conflict("this is the agency's last agency key: create another, then revoke "
                           "this one", code="last_agency_key")
        row = await tenants.revoke_api_key(tx.conn, principal.agency_id, sub_account_id, key_id)
    if row is None:
        raise NotFound("no such API key", code="api_key_not_found")
    log.info("api key revoked", extra={"key_id": str(key_id), "by": principal.actor})
    return row


# --- provider accounts and senders ------------------------------------------------------


def check_credentials(provider: str, account_id: str, secret: str) -> None:
    """ValidationFailed naming the credential an account lacks: Twilio and SendGrid need
    both; an SMTP relay takes both (AUTH) or neither (a relay that trusts its clients)."""
    if provider == "smtp" and not account_id and not secret:
        return
    for field, value, other in (("account_id", account_id, "secret"),
                                ("secret", secret, "account_id")):
        if not value:
            raise ValidationFailed.field(field, (
                f"required with {other} (an SMTP relay without AUTH takes neither)"
                if provider == "smtp" else f"required for a {provider} account"), "required")


async def do_create_provider_account(hub: Hub, sub_account_id: UUID, fields: Row) -> Row:
    check_provider_settings(fields["provider"], fields.get("config"))
    fields = {"account_id": "", "secret": "", **fields}
    check_credentials(fields["provider"], fields["account_id"], fields["secret"])
    fields["secret_encrypted"] = hub.box.encrypt(fields.pop("secret"))
    async with hub.transaction() as tx:
        row = await tenants.insert_provider_account(tx.conn, sub_account_id, fields)
        tx.emit(sub_account_id, "provider_account.created", row)
    return row


async def do_update_provider_account(hub: Hub, sub_account_id: UUID, id_: UUID,
                                     fields: Row) -> Row:
    fields = dict(fields)
    if fields.get("secret") is not None:
        fields["secret_encrypted"] = hub.box.encrypt(fields.pop("secret"))
    fields.pop("secret", None)
    async with hub.transaction() as tx:
        row = await tenants.update_provider_account(tx.conn, sub_account_id, id_, fields)
        if row is None:
            raise NotFound("no such provider account", code="provider_account_not_found")
        if "config" in fields:  # judged against the account's provider; a bad one undoes
            check_provider_settings(row["provider"], row["config"])
        if {"account_id", "secret_encrypted"} & fields.keys():
            secret = await tenants.get_provider_secret(tx.conn, sub_account_id, id_)
            check_credentials(row["provider"], row["account_id"],
                              hub.box.decrypt(secret or b""))
        tx.emit(sub_account_id, "provider_account.updated", row)
    return row


async def do_delete_provider_account(hub: Hub, sub_account_id: UUID, id_: UUID) -> None:
    async with hub.transaction() as tx:
        if await tenants.provider_in_use(tx.conn, id_):
            raise Conflict("senders still use this provider account; delete them first",
                           code="provider_account_in_use")
        if not await tenants.delete_provider_account(tx.conn, sub_account_id, id_):
            raise NotFound("no such provider account", code="provider_account_not_found")
        tx.emit(sub_account_id, "provider_account.deleted", {"id": str(id_)})


async def do_create_sender(hub: Hub, sub_account: Row, fields: Row) -> Row:
    fields = dict(fields)
    sa_id, channel, kind = sub_account["id"], fields["channel"], fields["kind"]
    errors: list[FieldError] = []
    if kind not in CHANNEL_KINDS[channel]:
        errors.append(FieldError("kind", f"a {channel} sender cannot be a {kind}; use one of "
                                 f"{sorted(CHANNEL_KINDS[channel])}", "invalid_kind"))
    provider = await tenants.get_provider_account(hub.pool, sa_id, fields["provider_account_id"])
    if provider is None:
        errors.append(FieldError("provider_account_id", "no such provider account in this "
                                 "sub-account", "not_found"))
    elif provider["provider"] not in CHANNEL_PROVIDERS[channel]:
        errors.append(FieldError("provider_account_id", f"a {provider['provider']} account "
                                 f"cannot send {channel}", "provider_mismatch"))
    address = fields["address"].strip()
    try:
        if kind == "messaging_service":
            if not (address.startswith("MG") and len(address) == 34):
                raise ValidationFailed.field("address", "a messaging service SID looks like "
                                             "MG followed by 32 hex digits", "invalid_address")
        elif channel == "email":
            address = normalize_email(address, field="address")
        elif kind == "short_code":
            address = normalize_short_code(address, field="address")
        else:
            address = normalize_phone(address, sub_account["default_region"], field="address")
    except ValidationFailed as exc:
        errors.extend(exc.errors)
    if errors:
        raise ValidationFailed("; ".join(f"{e.field}: {e.message}" for e in errors),
                               errors=errors)
    fields["address"] = address
    if fields.get("mps") is None:
        fields["mps"] = DEFAULT_MPS[kind]
    async with hub.transaction() as tx:
        if channel != "email" and provider is not None:
            await _claim_number(hub, tx.conn, sa_id, address, provider)
        row = await tenants.insert_sender(tx.conn, sa_id, fields)
        if row is None:
            raise Conflict(f"{address} is already a {channel} sender of this sub-account",
                           code="sender_exists")
        tx.emit(sa_id, "sender.created", row)
    return row


async def _claim_number(hub: Hub, conn: Any, sa_id: UUID, address: str,
                        provider: Row) -> None:
    """A provider's number (or messaging service) belongs to one sub-account: its inbound
    texts and STOPs are routed to one, so a second sub-account sending from the same
    number of the same provider account would text people who opted out in the first.
    Refused when another sub-account has this number under the same account with the same
    credentials. The same number under other credentials is left alone: only the owner's
    token verifies its callbacks, so a sub-account naming someone else's number gets
    nothing, and must not be able to lock its owner out. Concurrent creates of one
    address are serialized by a transaction lock on it."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))", address)
    secret = await tenants.get_provider_secret(conn, sa_id, provider["id"])
    for other in await tenants.number_holders(conn, address, sa_id, provider["provider"],
                                              provider["account_id"]):
        if secret is not None and hub.box.decrypt(other["secret_encrypted"]) == \
                hub.box.decrypt(secret):
            raise Conflict(
                f"{address} is already a sender of another sub-account on the same "
                f"{provider['provider']} account; its replies and opt-outs go there. Remove "
                "it there first, or use another number.", code="sender_taken",
                errors=[FieldError("address", "used by another sub-account",
                                   "sender_taken")])


async def do_delete_sender(hub: Hub, sub_account_id: UUID, id_: UUID) -> None:
    async with hub.transaction() as tx:
        if not await tenants.delete_sender(tx.conn, sub_account_id, id_):
            raise NotFound("no such sender", code="sender_not_found")
        # Checked after the delete has locked the row, so a campaign created meanwhile (its
        # create reads the senders FOR SHARE) is seen here.
        if using := await campaign_store.using_sender(tx.conn, sub_account_id, id_):
            names = ", ".join(f"{c['name']!r} ({c['status']}, {c['id']})" for c in using[:5])
            more = f" and {len(using) - 5} more" if len(using) > 5 else ""
            raise Conflict(f"campaigns still use this sender: {names}{more}; cancel them or "
                           "let them complete, then delete it", code="sender_in_use")
        tx.emit(sub_account_id, "sender.deleted", {"id": str(id_)})


# --- contacts ---------------------------------------------------------------------------


def _taken(exc: asyncpg.UniqueViolationError) -> Conflict:
    field = "email" if "email" in (exc.constraint_name or "") else "phone"
    return Conflict(f"another contact already has this {field}", code="duplicate_contact",
                    errors=[FieldError(field, "already used by another contact", "duplicate")])


async def do_create_contact(hub: Hub, sub_account: Row, data: Row) -> Row:
    fields = clean_contact(data, sub_account["default_region"])
    async with hub.transaction() as tx:
        row = await contact_store.insert(tx.conn, sub_account["id"], fields)
        if row is None:
            phone, key = fields.get("phone"), fields.get("email_key")
            existing = await contact_store.find_by_keys(tx.conn, sub_account["id"], phone, key)
            # Name the key another contact holds; both when two contacts hold one each.
            taken = [f for f, hit in (
                ("phone", phone is not None and any(c["phone"] == phone for c in existing)),
                ("email", key is not None and any(
                    c["email"] and email_key(c["email"]) == key for c in existing)),
            ) if hit] or ["phone" if phone else "email"]
            raise Conflict(
                f"a contact with this {' and '.join(taken)} exists "
                f"(id {existing[0]['id'] if existing else '?'})"
                "; update it, or use the upsert endpoint",
                code="duplicate_contact",
                errors=[FieldError(f, "already used by another contact", "duplicate")
                        for f in taken],
            )
        tx.emit(sub_account["id"], "contact.created", row)
    return row


async def do_update_contact(hub: Hub, sub_account: Row, id_: UUID, data: Row) -> Row:
    fields = clean_contact(data, sub_account["default_region"], partial=True)
    async with hub.transaction() as tx:
        current = await contact_store.get(tx.conn, sub_account["id"], id_)
        if current is None:
            raise NotFound("no such contact", code="contact_not_found")
        merged_phone = fields.get("phone", current["phone"])
        merged_email = fields.get("email", current["email"])
        if not merged_phone and not merged_email:
            raise ValidationFailed.field("phone", "a contact needs a phone or an email",
                                         "phone_or_email_required")
        try:  # the error ends the transaction: no savepoint needed
            row = await contact_store.update(tx.conn, sub_account["id"], id_, fields)
        except asyncpg.UniqueViolationError as exc:
            raise _taken(exc) from exc
        assert row is not None
        tx.emit(sub_account["id"], "contact.updated", row)
    return row


async def do_upsert_contact(hub: Hub, sub_account: Row, data: Row) -> tuple[Row, bool]:
    """Create, or update the contact with the same phone (else the same email).
    Returns (contact, created)."""
    fields = clean_contact(data, sub_account["default_region"])
    sa_id = sub_account["id"]
    async with hub.transaction() as tx:
        # Serialise upserts of the same keys so two racing calls do not both insert.
        await tx.conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            f"contact:{sa_id}:{fields.get('phone') or fields.get('email_key')}",
        )
        matches = await contact_store.find_by_keys(tx.conn, sa_id, fields.get("phone"),
                                                   fields.get("email_key"))
        if len(matches) > 1:
            raise Conflict("the phone and the email belong to two different contacts",
                           code="ambiguous_contact")
        if matches:
            if "tags" in fields:  # upsert adds tags; it never drops existing ones
                fields["tags"] = list(dict.fromkeys([*matches[0]["tags"], *fields["tags"]]))
            if "custom_fields" in fields:
                fields["custom_fields"] = {**matches[0]["custom_fields"],
                                           **fields["custom_fields"]}
            row = await contact_store.update(tx.conn, sa_id, matches[0]["id"], fields)
            assert row is not None
            tx.emit(sa_id, "contact.updated", row)
            return row, False
        created = await contact_store.insert(tx.conn, sa_id, fields)
        assert created is not None
        tx.emit(sa_id, "contact.created", created)
        return created, True


async def do_delete_contact(hub: Hub, sub_account_id: UUID, id_: UUID) -> None:
    """Delete a contact. Its recipients still pending in any campaign are skipped
    (`contact_deleted`): a campaign completes only when none is left pending. Messages
    already queued for it still go (they hold the address)."""
    async with hub.transaction() as tx:
        if not await contact_store.delete(tx.conn, sub_account_id, id_):
            raise NotFound("no such contact", code="contact_not_found")
        await campaign_store.skip_contact(tx.conn, id_, "contact_deleted")
        tx.emit(sub_account_id, "contact.deleted", {"id": str(id_)})


# --- suppressions -----------------------------------------------------------------------


def suppression_address(channel: str, address: str, default_region: str) -> str:
    if channel == "email":
        return email_key(normalize_email(address, field="address"))
    return normalize_phone(address, default_region, field="address")


async def do_add_suppression(hub: Hub, sub_account: Row, channel: str, address: str,
                             reason: str, source: str, actor: str) -> tuple[Row, bool]:
    address = suppression_address(channel, address, sub_account["default_region"])
    async with hub.transaction() as tx:
        row, created = await suppression_store.add(
            tx.conn, sub_account["id"], channel, address, reason, source, actor
        )
        if created:
            tx.emit(sub_account["id"], "suppression.created", row)
    return row, created


async def do_remove_suppression(hub: Hub, sub_account_id: UUID, id_: UUID, reason: str,
                                actor: str) -> Row:
    async with hub.transaction() as tx:
        row = await suppression_store.remove(tx.conn, sub_account_id, id_, reason, actor)
        if row is None:
            existing = await suppression_store.get(tx.conn, sub_account_id, id_)
            if existing is None:
                raise NotFound("no such suppression", code="suppression_not_found")
            raise Conflict("this suppression was already removed", code="already_removed")
        tx.emit(sub_account_id, "suppression.removed", row)
    return row
