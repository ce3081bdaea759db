"""People: users of an agency with a role per granted sub-account, argon2 passwords, login
sessions, and the one table that says which role may use which REST route.

Roles: `admin` (everything in the sub-account, settings included), `marketer` (contacts,
campaigns, one-off sends), `agent` (the inbox: read, reply, assign, opt a contact out).
A user reaches only granted sub-accounts; any other one is "not found", as for API keys.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from fnmatch import fnmatchcase
from typing import Any
from uuid import UUID

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from hub.context import Hub
from hub.errors import Conflict, Forbidden, NotFound, Unauthorized, ValidationFailed
from hub.store import tenants
from hub.store import users as store
from hub.tenancy import Principal

Row = dict[str, Any]


class Role(StrEnum):
    ADMIN = "admin"
    MARKETER = "marketer"
    AGENT = "agent"


ANY = frozenset(Role)
ADMIN = frozenset({Role.ADMIN})
MARKETING = frozenset({Role.ADMIN, Role.MARKETER})
INBOX = frozenset({Role.ADMIN, Role.AGENT})

#: Which roles may call which sub-account route with a login session, first match wins;
#: "METHOD path-template" relative to /v1/sub-accounts/{sa}, shell-style patterns. A
#: route that matches nothing is refused to sessions (API keys are not affected).
ROUTE_ROLES: list[tuple[str, frozenset[Role]]] = [
    ("GET ", ANY),
    ("PATCH ", ADMIN),
    ("* /api-keys*", ADMIN),
    ("* /providers*", ADMIN),
    ("GET /senders*", ANY),
    ("* /senders*", ADMIN),
    ("GET /contacts*", ANY),
    ("* /contacts*", MARKETING),
    ("GET /conversations*", ANY),
    ("POST /conversations/{conversation_id}/messages", ANY),
    ("* /conversations/{conversation_id}/assignment", INBOX),
    ("POST /conversations/{conversation_id}/read", ANY),
    ("GET /messages*", ANY),
    ("* /messages*", MARKETING),
    ("GET /campaigns*", ANY),
    ("* /campaigns*", MARKETING),
    ("GET /templates*", ANY),  # agents read the saved texts; marketers keep them
    ("* /templates*", MARKETING),
    ("GET /suppressions*", ANY),
    ("POST /suppressions", ANY),  # an agent records "please stop texting me"
    ("* /suppressions*", ADMIN),  # removal needs the contact's consent: admins only
    ("GET /events*", ANY),
]
SUB_ACCOUNT_PREFIX = "/v1/sub-accounts/{sa}"


#: Events about an object are for those who may read the object over REST: a provider
#: account's events are for admins (and API keys), in `GET /events` and on the feed alike.
EVENT_OBJECT_ROUTES = {"provider_account": "/providers/{provider_id}"}


def may_see_event(role: Role | None, event_type: str) -> bool:
    """Whether a principal of `role` may see an event of `event_type`; None is an API key,
    which reads every route of its sub-account."""
    path = EVENT_OBJECT_ROUTES.get(event_type.partition(".")[0])
    return role is None or path is None or \
        role in roles_for_route("GET", SUB_ACCOUNT_PREFIX + path)


def roles_for_route(method: str, template: str) -> frozenset[Role]:
    """The roles that may call this route with a session; empty: sessions may not."""
    if not template.startswith(SUB_ACCOUNT_PREFIX):
        return frozenset()
    key = f"{method.upper()} {template[len(SUB_ACCOUNT_PREFIX):]}"
    for pattern, roles in ROUTE_ROLES:
        if fnmatchcase(key, pattern):
            return roles
    return frozenset()


@dataclass(frozen=True, slots=True)
class UserPrincipal(Principal):
    """A person signed in with a session. `key_id` is the user id; `sub_account_id` is the
    one sub-account of the request once a grant allowed it."""

    user_id: UUID
    email: str
    role: Role | None

    @property
    def actor(self) -> str:
        return f"user:{self.user_id}"


# --- passwords -------------------------------------------------------------------------

_hasher = PasswordHasher()  # argon2id, the library's RFC 9106 low-memory profile
_DUMMY_HASH = _hasher.hash("a password nobody has")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MIN_PASSWORD = 10


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Constant work whether or not the user exists, so timing does not reveal emails."""
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and \
            password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def normalise_email(email: str) -> str:
    email = email.strip().lower()
    if not _EMAIL.match(email) or len(email) > 320:
        raise ValidationFailed.field("email", "not an email address", "invalid")
    return email


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise ValidationFailed.field("password", f"use at least {MIN_PASSWORD} characters",
                                     "too_short")


# --- sessions --------------------------------------------------------------------------


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True, slots=True)
class Session:
    user_id: UUID
    agency_id: UUID
    email: str
    name: str
    csrf_token: str
    expires_at: datetime
    grants: dict[UUID, Role]

    def role_in(self, sub_account_id: UUID) -> Role | None:
        return self.grants.get(sub_account_id)

    def principal(self, sub_account_id: UUID | None) -> UserPrincipal:
        role = self.grants.get(sub_account_id) if sub_account_id else None
        return UserPrincipal(self.user_id, self.agency_id, sub_account_id, self.user_id,
                             self.email, role)


def authorize(session: Session, method: str, template: str,
              sub_account_id: UUID | None) -> UserPrincipal:
    """The principal for one REST call made with a session, or why not."""
    allowed = roles_for_route(method, template)
    if not allowed or sub_account_id is None:
        raise Forbidden("this endpoint needs an API key", code="api_key_required")
    role = session.role_in(sub_account_id)
    if role is None:
        raise NotFound("no such sub-account", code="sub_account_not_found")
    if role not in allowed:
        raise Forbidden(f"your role ({role}) may not do this here; it needs "
                        f"{' or '.join(sorted(allowed))}", code="role_forbidden")
    return session.principal(sub_account_id)


async def do_create_user(hub: Hub, agency_id: UUID, email: str, password: str, name: str,
                         grants: dict[UUID, Role]) -> Row:
    email = normalise_email(email)
    check_password(password)
    async with hub.transaction() as tx:
        if not await tx.conn.fetchval("SELECT EXISTS (SELECT 1 FROM agencies WHERE id = $1)",
                                      agency_id):
            raise NotFound(f"no agency {agency_id}", code="agency_not_found")
        for sa_id in grants:
            sa = await tenants.get_sub_account(tx.conn, sa_id)
            if sa is None or sa["agency_id"] != agency_id:
                raise NotFound(f"no sub-account {sa_id} in this agency",
                               code="sub_account_not_found")
        user = await store.insert_user(tx.conn, agency_id, email, name, hash_password(password))
        if user is None:
            raise Conflict("a user with this email exists", code="user_exists")
        for sa_id, role in grants.items():
            await store.grant(tx.conn, user["id"], sa_id, Role(role).value)
    return user


async def do_grant(hub: Hub, user_id: UUID, sub_account_id: UUID, role: Role) -> None:
    async with hub.transaction() as tx:
        await store.grant(tx.conn, user_id, sub_account_id, Role(role).value)


async def do_login(hub: Hub, email: str, password: str) -> tuple[str, Session]:
    """A new session token (for the cookie) and the session; Unauthorized otherwise."""
    try:
        key = normalise_email(email)
    except ValidationFailed:
        key = ""
    user = await store.find_user_by_email(hub.pool, key) if key else None
    ok = verify_password(user["password_hash"] if user else None, password)
    if user is None or not ok or user["disabled_at"] is not None:
        raise Unauthorized("wrong email or password", code="login_failed")
    await store.delete_expired_sessions(hub.pool)  # logins are rare: tidy up here
    token = secrets.token_urlsafe(32)
    expires = datetime.now(UTC) + timedelta(hours=hub.settings.session_ttl_hours)
    await store.insert_session(hub.pool, hash_token(token), user["id"],
                               secrets.token_urlsafe(32), expires)
    session = await load_session(hub, token)
    assert session is not None
    return token, session


async def load_session(hub: Hub, token: str | None) -> Session | None:
    """The live session of a cookie value; None when missing, unknown or expired."""
    if not token or len(token) > 200:
        return None
    row = await store.find_session(hub.pool, hash_token(token))
    if row is None:
        return None
    grants = await store.grants_of(hub.pool, row["user_id"])
    return Session(row["user_id"], row["agency_id"], row["email"], row["name"],
                   row["csrf_token"], row["expires_at"],
                   {g["sub_account_id"]: Role(g["role"]) for g in grants})


async def do_logout(hub: Hub, token: str | None) -> None:
    if token:
        await store.delete_session(hub.pool, hash_token(token))
