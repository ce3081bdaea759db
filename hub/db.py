"""PostgreSQL connections and schema migrations.

Migrations are plain SQL files in `hub/migrations/`, applied in name order, each in its own
transaction, under a session advisory lock so that several processes starting together apply
each file exactly once. Applied files are recorded with a checksum; an edited applied file is
refused rather than silently skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
from importlib import resources
from typing import Any

import asyncpg

log = logging.getLogger(__name__)

_MIGRATION_LOCK = 0x5B0A4D  # arbitrary, stable advisory-lock key for "hub migrations"


def _jsonb_encode(value: Any) -> bytes:
    return b"\x01" + json.dumps(value).encode()  # jsonb binary format: version 1, then text


def _jsonb_decode(data: bytes) -> Any:
    return json.loads(data[1:])


async def _init_connection(conn: asyncpg.Connection) -> None:
    # Binary codecs, so COPY (which only speaks binary) can load jsonb columns too.
    await conn.set_type_codec("jsonb", encoder=_jsonb_encode, decoder=_jsonb_decode,
                              schema="pg_catalog", format="binary")
    await conn.set_type_codec("json", encoder=lambda v: json.dumps(v).encode(),
                              decoder=json.loads, schema="pg_catalog", format="binary")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Nothing to reset when a connection goes back to the pool: the hub keeps no session
    state on pooled connections (no SET, LISTEN or cursors; the one session advisory lock,
    a contact import's, is released by its holder or the connection is dropped). asyncpg's
    default reset costs a round trip on every release (`SELECT pg_advisory_unlock_all();
    CLOSE ALL; UNLISTEN *; RESET ALL`), six of them on the path of one REST send; an open
    transaction is still rolled back by asyncpg itself."""


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 20) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection, command_timeout=60,
        reset=_keep_session,
    )
    assert pool is not None
    return pool


async def connect(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn)
    await _init_connection(conn)
    return conn


def migration_files() -> list[tuple[str, str]]:
    folder = resources.files("hub") / "migrations"
    files = sorted(p for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(p.name.removesuffix(".sql"), p.read_text(encoding="utf-8")) for p in files]


async def migrate(dsn: str) -> list[str]:
    """Apply pending migrations; returns the versions applied by this call."""
    conn = await connect(dsn)
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version text PRIMARY KEY,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {
            r["version"]: r["checksum"]
            for r in await conn.fetch("SELECT version, checksum FROM schema_migrations")
        }
        for version, sql in migration_files():
            checksum = hashlib.sha256(sql.encode()).hexdigest()
            if version in done:
                if done[version] != checksum:
                    raise RuntimeError(
                        f"migration {version} was changed after it was applied; "
                        "add a new migration file instead of editing an applied one"
                    )
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)",
                    version,
                    checksum,
                )
            log.info("migration applied", extra={"version": version})
            applied.append(version)
    finally:
        try:
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
        finally:
            await conn.close()
    return applied


def record(row: asyncpg.Record | None) -> dict[str, Any] | None:
    return dict(row) if row is not None else None
