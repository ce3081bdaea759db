"""Small builders for the INSERT/UPDATE statements whose column lists come from validated
models (never from user input: column names are ours, values are always parameters)."""

from __future__ import annotations

from typing import Any


def insert(table: str, scope: dict[str, Any], fields: dict[str, Any], returning: str,
           suffix: str = "") -> tuple[str, list[Any]]:
    """`INSERT INTO table (scope…, fields…) VALUES ($1…) {suffix} RETURNING …` and its args."""
    values = {**scope, **fields}
    params = ", ".join(f"${i}" for i in range(1, len(values) + 1))
    sql = (f"INSERT INTO {table} ({', '.join(values)}) VALUES ({params}) {suffix} "
           f"RETURNING {returning}")
    return sql, list(values.values())


def update(table: str, where: dict[str, Any], fields: dict[str, Any], returning: str,
           touch: bool = True) -> tuple[str, list[Any]]:
    """`UPDATE table SET fields… WHERE where… RETURNING …` and its args."""
    keys = list(where)
    sets = [f"{k} = ${i}" for i, k in enumerate(fields, start=len(keys) + 1)]
    if touch:
        sets.append("updated_at = now()")
    cond = " AND ".join(f"{k} = ${i}" for i, k in enumerate(keys, start=1))
    sql = f"UPDATE {table} SET {', '.join(sets)} WHERE {cond} RETURNING {returning}"
    return sql, [*where.values(), *fields.values()]


def like_literal(text: str) -> str:
    """`text` matched literally by LIKE (its `%`, `_` and `\\` escaped)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
