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


async def _timed_import(hub: Hub, principal: Principal, source: bytes,
                        workers: int) -> dict[str, float]:
    """One import into a fresh sub-account, and how late a 5 ms timer of the same event
    loop fires meanwhile: what the import costs the other requests of its gateway."""
    sa = await actions.do_create_sub_account(hub, principal, {"name": f"bench {workers}"})
    lags: list[float] = []
    done = asyncio.Event()

    async def probe() -> None:
        while not done.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.005)
            lags.append((time.perf_counter() - t - 0.005) * 1000)

    task = asyncio.create_task(probe())
    t = time.perf_counter()
    job = await imports.do_create_import(hub, sa["id"], "bench.csv", source)
    await imports.run_import(hub, job["id"], sa["id"], "US", workers=workers)
    seconds = time.perf_counter() - t
    done.set()
    await task
    row = await hub.pool.fetchrow(
        "SELECT status, created_rows, error_rows FROM import_jobs WHERE id = $1", job["id"])
    assert row["status"] == "completed", row
    lags.sort()
    return {"seconds": seconds, "created": float(row["created_rows"]),
            "errors": float(row["error_rows"]),
            "lag_p50_ms": lags[len(lags) // 2], "lag_p99_ms": lags[int(len(lags) * 0.99)],
            "lag_max_ms": lags[-1]}


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
        principal = Principal(key_row["id"], agency["id"], None)
        sa = await actions.do_create_sub_account(hub, principal, {"name": "bench"})
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

        one = await _timed_import(hub, principal, source, workers=1)
        if progress:
            progress("import in one process")
        pooled = await _timed_import(hub, principal, source, workers=imports.WORKERS)
        await hub.pool.execute("DELETE FROM agencies WHERE id = $1", agency["id"])
        return {
            "rows": float(total),
            "created": pooled["created"],
            "errors": pooled["errors"],
            "workers": float(imports.WORKERS),
            "import_seconds": pooled["seconds"],
            "import_rows_per_s": total / pooled["seconds"],
            "loop_lag_p50_ms": pooled["lag_p50_ms"],
            "loop_lag_p99_ms": pooled["lag_p99_ms"],
            "loop_lag_max_ms": pooled["lag_max_ms"],
            "one_process_import_seconds": one["seconds"],
            "one_process_loop_lag_p50_ms": one["lag_p50_ms"],
            "one_process_loop_lag_p99_ms": one["lag_p99_ms"],
            "one_process_loop_lag_max_ms": one["lag_max_ms"],
            "parse_validate_seconds": parse_s,
            "raw_copy_seconds": copy_s,
            "raw_copy_rows_per_s": len(records) / copy_s,
            "import_vs_raw_copy": (total / pooled["seconds"]) / (len(records) / copy_s),
        }
    finally:
        await hub.close()
