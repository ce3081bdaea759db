"""CSV contact imports: accepted as a job, validated row by row, loaded with COPY and merged
into contacts set-wise; the file stays in PostgreSQL until the job ends, so a restart resumes
it.

Columns: phone, email, first_name, last_name, timezone, tags (separated by `;` or `|`;
the columns themselves by commas, or by the semicolons or tabs some spreadsheets write, or
by what Excel's `sep=;` first line names); any other column becomes a custom field under
its name's key (`Favourite Colour` as `favourite_colour`: hub.contacts.custom_key), and
the report's row 0 says which names changed beyond case. Headers are matched
case-insensitively and common spellings ("Phone Number", "E-mail", "First Name") are
understood; blank lines before the header are skipped; two columns of one field (`phone`
and `Mobile`, `Plan` and `plan`) refuse the file. A column with no name must be empty; a
row with a value beyond the header's columns is reported, not imported. A quote that is
never closed refuses the file, naming its row. Every row ends created, updated, or in the
error report with the reason.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import csv
import io
import logging
import multiprocessing
import os
import re
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

from hub.contacts import clean_contact, custom_key
from hub.context import Hub
from hub.errors import HubError, ValidationFailed
from hub.store import contacts as contact_store
from hub.store import imports as import_store

log = logging.getLogger(__name__)

HEADER_ALIASES = {
    "phone": "phone", "phone_number": "phone", "mobile": "phone", "mobile_phone": "phone",
    "cell": "phone", "number": "phone", "email": "email", "e_mail": "email",
    "email_address": "email", "first_name": "first_name", "firstname": "first_name",
    "given_name": "first_name", "last_name": "last_name", "lastname": "last_name",
    "surname": "last_name", "family_name": "last_name", "timezone": "timezone",
    "time_zone": "timezone", "tz": "timezone", "tags": "tags", "tag": "tags",
}
PROGRESS_EVERY = 5_000  # rows validated between progress reports (a worker's task)
POOL_FROM_ROWS = 20_000  # smaller files are done before worker processes would start
WORKERS = min(len(os.sched_getaffinity(0)), 4)
RowError = tuple[int, str, str, str]  # (row number, field, code, message)


def parse_csv(source: bytes, default_region: str,
              on_progress: Callable[[int], None] | None = None, *, workers: int = 1
              ) -> tuple[list[tuple[Any, ...]], list[RowError], int]:
    """Validate every row. Returns (records for COPY, row errors, data row count).
    Row numbers count data rows from 1 (the header is row 0). With `workers` > 1 a large
    file is validated in that many processes (libphonenumber is pure Python: one process
    validates about 25,000 rows a second, and holds the GIL while it does)."""
    columns, rows, notes = _read(source)
    chunks = [rows[i:i + PROGRESS_EVERY] for i in range(0, len(rows), PROGRESS_EVERY)]
    results: list[tuple[list[tuple[Any, ...]], list[RowError]]] = []
    done = 0
    if workers > 1 and len(rows) >= POOL_FROM_ROWS:
        # forkserver, not fork: the caller's process runs threads and an event loop.
        context = multiprocessing.get_context("forkserver")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures = {pool.submit(_validate, columns, chunk, default_region): len(chunk)
                       for chunk in chunks}
            for future in concurrent.futures.as_completed(futures):
                done += futures[future]
                if on_progress:
                    on_progress(done)
            results = [f.result() for f in futures]  # in file order
    else:
        for chunk in chunks:
            results.append(_validate(columns, chunk, default_region))
            done += len(chunk)
            if on_progress:
                on_progress(done)
    records = [r for chunk_records, _ in results for r in chunk_records]
    errors = notes + [e for _, chunk_errors in results for e in chunk_errors]
    return records, errors, len(rows)


def _read(source: bytes) -> tuple[list[str], list[tuple[int, list[str]]], list[RowError]]:
    """The columns, the data rows that are not blank (numbered from 1), and a note (row 0)
    for each column stored as a custom field under a key other than its name."""
    try:
        text = source.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValidationFailed.field("file", f"not UTF-8 text (byte {exc.start}); export the "
                                     "CSV as UTF-8", "invalid_encoding") from exc
    lines = io.StringIO(text, newline="").readlines()
    start, delimiter = 0, None
    if lines and (sep := _EXCEL_SEP.fullmatch(lines[0])):  # Excel's "sep=;" line
        start, delimiter = 1, sep[1]
    while start < len(lines) and not lines[start].strip():
        start += 1
    if start == len(lines):
        raise ValidationFailed.field("file", "the file is empty; the first line must name the "
                                     "columns", "empty_file")
    header, *data = _records(lines, start, delimiter or _delimiter(lines[start]))
    keys = [custom_key(h) for h in header]
    columns = [HEADER_ALIASES.get(k, "custom:" + k) for k in keys]
    first: dict[str, int] = {}
    for i, column in enumerate(columns):
        if not header[i].strip():
            continue  # unnamed columns: see below
        if column == "custom:":
            raise ValidationFailed.field(
                "file", f"column {i + 1} (`{header[i].strip()}`) needs a letter or a digit in "
                "its name", "invalid_column")
        j = first.setdefault(column, i)
        if j != i:  # one value would silently win over the other
            raise ValidationFailed.field(
                "file", f"columns {j + 1} (`{header[j].strip()}`) and {i + 1} "
                f"(`{header[i].strip()}`) are both {column.removeprefix('custom:')}; keep "
                "one of them",
                "duplicate_column")
    known = {c for c in columns if not c.startswith("custom:")}
    if not {"phone", "email"} & known:
        raise ValidationFailed.field("file", "no phone or email column; name one `phone` or "
                                     "`email`", "missing_column")
    rows = list(enumerate((v for v in data if any(x.strip() for x in v)), start=1))
    # A column with no name is ignored while it is empty (a trailing separator); a value in
    # it would have nowhere to go.
    for i in (i for i, h in enumerate(header) if not h.strip()):
        n = next((n for n, v in rows if i < len(v) and v[i].strip()), None)
        if n is not None:
            raise ValidationFailed.field(
                "file", f"column {i + 1} has no name in the header line, but row {n} has a "
                "value in it; name the column or delete it", "unnamed_column")
    # Lower case goes without saying (merge fields ignore it); other changes are noted.
    notes = [(0, f"custom_fields.{k}", "column_renamed",
              f"column {i + 1} (`{h.strip()}`) is stored as the custom field `{k}`: "
              f"{{{{custom.{k}}}}} in templates")
             for i, (h, k, c) in enumerate(zip(header, keys, columns, strict=True))
             if c.startswith("custom:") and h.strip() and k != h.strip().lower()]
    return columns, rows, notes


_EXCEL_SEP = re.compile(r"sep=([^\"\r\n])\r?\n?")


def _records(lines: list[str], start: int, delimiter: str) -> list[list[str]]:
    """The CSV records of `lines[start:]`. A quoted value may hold line breaks, but a quote
    that opens and is never closed (or closes in the middle of a value) would swallow the
    rest of the file, or the lines up to the next quote, into one value: the file is
    refused, naming the row and line where that quote opens."""
    reader = csv.reader(lines[start:], delimiter=delimiter)
    records: list[list[str]] = []
    data_rows = 0  # non-blank records after the header, as rows are numbered
    while True:
        first = start + reader.line_num  # index of the record's first line
        try:
            values = next(reader)
            if start + reader.line_num - first > 1:  # a quoted line break: well formed?
                list(csv.reader(lines[first:start + reader.line_num], delimiter=delimiter,
                                strict=True))
        except StopIteration:
            return records
        except csv.Error as exc:
            raise _open_quote(lines, first, data_rows + 1 if records else 0) from exc
        records.append(values)
        if len(records) > 1 and any(x.strip() for x in values):
            data_rows += 1


def _open_quote(lines: list[str], first: int, row: int) -> ValidationFailed:
    """The error for a record (from line index `first`) that a stray quote runs on."""
    where = f"row {row} (line {first + 1})" if row else f"the header (line {first + 1})"
    # Every quote toggles being inside a quoted value (a doubled quote toggles twice): an
    # odd count from here to the end means the file ends inside one.
    if sum(line.count('"') for line in lines[first:]) % 2:
        problem = "a quote opens here and is never closed"
    else:
        problem = ("a quote opens here and is not closed where its value ends (a quote "
                   'inside a quoted value is written twice: "")')
    return ValidationFailed.field("file", f"{where}: {problem}; fix the file and upload it "
                                  "again", "unclosed_quote")


def _delimiter(header: str) -> str:
    """The header line's separator: a comma, or the semicolon or tab a spreadsheet writes
    where the comma is the decimal mark."""
    return max((",", ";", "\t"), key=header.count)


def _validate(columns: list[str], rows: list[tuple[int, list[str]]], default_region: str
              ) -> tuple[list[tuple[Any, ...]], list[RowError]]:
    """Records for COPY and row errors of some numbered rows (run in a worker process for
    large files, so it takes and returns plain data)."""
    records: list[tuple[Any, ...]] = []
    errors: list[RowError] = []
    for n, values in rows:
        extra = next((i for i in range(len(columns), len(values)) if values[i].strip()), None)
        if extra is not None:  # most likely a value holding an unquoted separator
            errors.append((n, "row", "extra_cells", f"a value in column {extra + 1}, beyond "
                           f"the header's {len(columns)} columns; quote values that hold "
                           "the separator"))
            continue
        data: dict[str, Any] = {}
        custom: dict[str, str] = {}
        for col, value in zip(columns, values, strict=False):
            value = value.strip()
            if col.startswith("custom:"):
                if value:
                    custom[col[7:]] = value
            elif col == "tags":
                data["tags"] = [t for t in value.replace("|", ";").split(";") if t.strip()]
            elif value:
                data[col] = value
        if custom:
            data["custom_fields"] = custom
        try:
            c = clean_contact(data, default_region)
        except HubError as exc:
            # One error per field and row (the report's key): the first is the precise one
            # ("too short for its country" before "a contact needs a phone or an email").
            first = {e.field: e for e in reversed(exc.errors)}
            errors.extend((n, e.field, e.code, e.message) for e in exc.errors
                          if first[e.field] is e)
            continue
        records.append((n, c.get("phone"), c.get("email"), c.get("email_key"),
                        c.get("first_name"), c.get("last_name"), c.get("timezone"),
                        c.get("tags"), c.get("custom_fields")))
    return records, errors


def _merge_error(row: dict[str, Any]) -> RowError:
    """The report line of a row the merge did not apply (hub.store.contacts.merge_staging)."""
    n, reason = row["row_number"], row["reason"]
    if reason == "same_contact":
        by = row["matched_by"]
        return (n, by, reason, f"its {by} matches the same contact as row {row['other_row']}, "
                "which was applied instead; one contact takes one row of a file")
    field, message = {
        "superseded": ("row", "a later row has the same phone or email"),
        "ambiguous_contact": ("email", "the phone and the email belong to two different "
                              "contacts"),
        "contact_changed": ("row", "other writers kept changing the contact this row "
                            "matches while it was imported; import the row again"),
    }[reason]
    return (n, field, reason, message)


async def do_create_import(hub: Hub, sub_account_id: UUID, filename: str | None,
                           source: bytes) -> dict[str, Any]:
    async with hub.transaction() as tx:
        job = await import_store.create(tx.conn, sub_account_id, filename, source)
        tx.emit(sub_account_id, "contact_import.created", job)
    return job


async def run_import(hub: Hub, job_id: UUID, sub_account_id: UUID, default_region: str,
                     *, workers: int = WORKERS) -> None:
    """Process one job to its end. Safe to call twice: an advisory lock keeps one worker."""
    async with hub.pool.acquire() as lock_conn:
        got = await lock_conn.fetchval(
            "SELECT pg_try_advisory_lock(hashtextextended($1, 0))", f"import:{job_id}"
        )
        if not got:
            return
        try:
            await _run_locked(hub, job_id, sub_account_id, default_region, workers)
        finally:
            try:
                await lock_conn.execute(
                    "SELECT pg_advisory_unlock(hashtextextended($1, 0))", f"import:{job_id}"
                )
            except BaseException:
                lock_conn.terminate()  # the pool does not reset sessions (hub/db.py)
                raise


async def _run_locked(hub: Hub, job_id: UUID, sub_account_id: UUID,
                      default_region: str, workers: int) -> None:
    started = time.monotonic()
    source = await import_store.start(hub.pool, job_id)
    if source is None:
        return
    loop = asyncio.get_running_loop()
    # Line count as the running total: exact unless fields hold quoted newlines.
    estimate = max(source.count(b"\n") - 1, 0)
    progress_writes: list[concurrent.futures.Future[None]] = []

    def on_progress(n: int) -> None:  # called from the parsing thread
        progress_writes.append(asyncio.run_coroutine_threadsafe(
            _progress(hub, job_id, sub_account_id, n, estimate), loop))

    try:
        records, errors, total = await asyncio.to_thread(
            parse_csv, source, default_region, on_progress, workers=workers
        )
        await asyncio.gather(*map(asyncio.wrap_future, progress_writes),
                             return_exceptions=True)
        async with hub.transaction() as tx:
            await contact_store.create_staging(tx.conn)
            await contact_store.copy_staging(tx.conn, records)
            created, updated, rejected = await contact_store.merge_staging(
                tx.conn, sub_account_id
            )
            errors += map(_merge_error, rejected)
            errors.sort()
            await import_store.finish(tx.conn, job_id, status="completed", total=total,
                                      created=created, updated=updated, errors=errors)
            job = await import_store.get(tx.conn, sub_account_id, job_id)
            tx.emit(sub_account_id, "contact_import.completed", job or {"id": job_id})
    except HubError as exc:
        await import_store.finish(hub.pool, job_id, status="failed", total=0, created=0,
                                  updated=0, errors=[], error=exc.detail)
        log.info("contact import rejected", extra={"job_id": str(job_id), "error": exc.detail})
        return
    except Exception:
        log.exception("contact import failed", extra={"job_id": str(job_id)})
        await import_store.finish(hub.pool, job_id, status="failed", total=0, created=0,
                                  updated=0, errors=[],
                                  error="internal error; the file was kept out, upload it again")
        return
    log.info("contact import done", extra={
        "job_id": str(job_id), "rows": total, "created_rows": created, "updated_rows": updated,
        "errors": len(errors), "seconds": round(time.monotonic() - started, 2)})


async def _progress(hub: Hub, job_id: UUID, sub_account_id: UUID, n: int, total: int) -> None:
    async with hub.transaction() as tx:
        await import_store.progress(tx.conn, job_id, n, max(total, n))
        tx.emit(sub_account_id, "contact_import.progress",
                {"id": str(job_id), "processed_rows": n, "total_rows": max(total, n)})
