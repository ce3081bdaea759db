"""Benchmarks, each measured as a ratio against a baseline taken in the same run (the
machine is shared and noisy, so absolute figures drift; ratios hold)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from config.settings import Settings
from hub import actions, imports
from hub.context import Hub
from hub.crypto import hash_api_key
from hub.embedded import Services
from hub.store import tenants
from hub.tenancy import Principal


def contacts_csv(n: int, bad_every: int = 1000) -> bytes:
    """`n` realistic rows over seven US area codes; every `bad_every`-th has a bad phone."""
    zones = ["America/New_York", "America/Chicago", "America/Los_Angeles", ""]
    rows = ["phone,email,first_name,last_name,timezone,tags,city"]
    for i in range(n):
        area = (212, 312, 415, 617, 702, 808, 907)[i % 7]
        phone = "12" if i % bad_every == bad_every - 1 else f"+1{area}{2000000 + i:07d}"
        rows.append(f"{phone},user{i}@example.com,First{i},Last{i},{zones[i % 4]},"
                    f"t{i % 5};all,City{i % 50}")
    return ("\n".join(rows) + "\n").encode()


async def bench_import(settings: Settings, services: Services, rows: int,
                       progress: Any = None) -> dict[str, float]:
    """The contact import end to end (parse, validate, COPY, merge) against a raw COPY of the
    same, already-valid records straight into the contacts table with all its indexes (rolled
    back): the fastest the database can take these rows."""
    hub = await Hub.open(settings, services.database_url, services.redis_url)
    try:
        agency, key = await actions.do_create_agency(hub, "bench")
        key_row = await tenants.find_api_key(hub.pool, hash_api_key(key))
        assert key_row is not None
        sa = await actions.do_create_sub_account(
            hub, Principal(key_row["id"], agency["id"], None), {"name": "bench"})
        source = contacts_csv(rows)

        t = time.perf_counter()
        records, _errors, total = await asyncio.to_thread(imports.parse_csv, source, "US")
        parse_s = time.perf_counter() - t
        if progress:
            progress("parsed")

        async with hub.pool.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            t = time.perf_counter()
            await conn.copy_records_to_table(
                "contacts", columns=("sub_account_id", "phone", "email", "email_key",
                                     "first_name", "last_name", "timezone", "tags",
                                     "custom_fields"),
                records=[(sa["id"], *r[1:]) for r in records])
            copy_s = time.perf_counter() - t
            await tx.rollback()
        if progress:
            progress("raw copy")

        t = time.perf_counter()
        job = await imports.do_create_import(hub, sa["id"], "bench.csv", source)
        await imports.run_import(hub, job["id"], sa["id"], "US")
        import_s = time.perf_counter() - t
        done = await hub.pool.fetchrow(
            "SELECT status, created_rows, error_rows FROM import_jobs WHERE id = $1", job["id"])
        assert done["status"] == "completed", done
        await hub.pool.execute("DELETE FROM agencies WHERE id = $1", agency["id"])
        return {
            "rows": float(total),
            "created": float(done["created_rows"]),
            "errors": float(done["error_rows"]),
            "import_seconds": import_s,
            "import_rows_per_s": total / import_s,
            "parse_validate_seconds": parse_s,
            "raw_copy_seconds": copy_s,
            "raw_copy_rows_per_s": len(records) / copy_s,
            "import_vs_raw_copy": (total / import_s) / (len(records) / copy_s),
        }
    finally:
        await hub.close()
