"""Walking a JSON-like value (what a request body or a JSONB column holds) for the first
leaf PostgreSQL cannot store: the gateway refuses NUL in every request body with it, and
contacts refuse NUL and non-finite numbers in custom fields with it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


def find_leaf(value: Any, path: str, bad: Callable[[Any], bool]) -> tuple[str, Any] | None:
    """(path, leaf) of the first leaf of `value` for which `bad` holds, or None. Mapping
    keys are leaves too, reported at their mapping's path; a value at `path.key`, a list
    item at `path[i]`."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            found = find_leaf(k, path, bad) or find_leaf(v, f"{path}.{k}", bad)
            if found:
                return found
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            found = find_leaf(v, f"{path}[{i}]", bad)
            if found:
                return found
    elif bad(value):
        return path, value
    return None


def has_nul(value: Any) -> bool:
    """A string holding a NUL character, which PostgreSQL stores in no text or JSON."""
    return isinstance(value, str) and "\x00" in value
