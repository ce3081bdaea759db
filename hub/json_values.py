"""Walking a JSON-like value (what a request body or a JSONB column holds) for the first
leaf PostgreSQL cannot store: the gateway refuses NUL and non-finite numbers in every
request body with it, and contacts refuse them in custom fields with it."""

from __future__ import annotations

import math
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


def not_finite(value: Any) -> bool:
    """A NaN or infinite number: Python's JSON reads and writes them, but they are not JSON,
    and PostgreSQL's JSON refuses them."""
    return isinstance(value, float) and not math.isfinite(value)


def unstorable(value: Any) -> bool:
    """A leaf PostgreSQL cannot store: a string with a NUL, or a non-finite number."""
    return has_nul(value) or not_finite(value)


def not_finite_message(value: float) -> str:
    """Why a non-finite number is refused, naming it as the client wrote it."""
    written = "NaN" if math.isnan(value) else "-Infinity" if value < 0 else "Infinity"
    return f"{written} is not a JSON number; send a finite number"
