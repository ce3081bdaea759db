"""Merge fields in message templates: parse once (with errors a marketer can act on), render
many times.

Syntax, Liquid-style as GoHighLevel users know it:

    Hi {{ first_name | default: "there" }}, your {{ custom.plan }} plan renews soon.

- ``{{ name }}`` inserts a variable; ``{{ a.b }}`` walks nested mappings (custom fields).
  Names are words (letters of any script, digits, ``_``; only the first cannot be a digit).
  ``custom.<name>`` names a custom field by its key (hub.contacts.custom_key), so
  ``{{ custom.Member_ID }}`` finds the field imported from a `Member-ID` column.
- ``| default: "text"`` (or ``'text'``) is used when the variable is absent, None or blank.
  It is the only filter; the default cannot contain its own quote character or ``}}``.
- A single ``{`` or ``}`` is plain text. A ``{{`` without its ``}}``, a ``}}`` without its
  ``{{``, or anything else between the braces is a template error: sending a literal
  ``{first_name}}`` to 100k contacts is worse than refusing the campaign.
- A variable that is absent/blank with no default renders as "" and is reported in
  ``Rendered.missing`` so the caller can decide (skip the recipient, or send anyway).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from hub.contacts import custom_key
from hub.errors import FieldError, ValidationFailed

INVALID_TEMPLATE = "invalid_template"

_OPEN, _CLOSE = "{{", "}}"
_NAME = r"[^\W\d]\w*"
_TAG = re.compile(
    rf"\s*(?P<path>{_NAME}(?:\.\w+)*)\s*"
    r"(?:\|\s*default\s*:\s*(?:\"(?P<dq>[^\"]*)\"|'(?P<sq>[^']*)')\s*)?"
)


@dataclass(frozen=True, slots=True)
class MergeField:
    name: str  # dotted, as written: "custom.plan"
    path: tuple[str, ...]
    default: str | None


@dataclass(frozen=True, slots=True)
class Rendered:
    text: str
    #: Variables referenced, absent or blank, and without a default; in order, no repeats.
    missing: list[str]


@dataclass(frozen=True, slots=True)
class Template:
    source: str
    parts: tuple[str | MergeField, ...]
    #: Every variable referenced, in order of first use, no repeats.
    variables: tuple[str, ...]

    @property
    def blank(self) -> bool:
        """Whether it says nothing whoever it is rendered for: no merge field and no text
        but white space. ``{{first_name}}`` alone is not blank, though it renders empty for
        a contact without a first name (the sender skips such a recipient)."""
        return not self.variables and not self.source.strip()

    def render(self, variables: Mapping[str, object]) -> Rendered:
        out: list[str] = []
        missing: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            value = _lookup(variables, part.path)
            if value is not None:
                out.append(value)
            elif part.default is not None:
                out.append(part.default)
            elif part.name not in missing:
                missing.append(part.name)
        return Rendered("".join(out), missing)


def _lookup(variables: Mapping[str, object], path: tuple[str, ...]) -> str | None:
    value: object = variables
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text if text.strip() else None


def _where(source: str, index: int) -> str:
    line = source.count("\n", 0, index) + 1
    column = index - (source.rfind("\n", 0, index) + 1) + 1
    return f"at line {line}, column {column} (offset {index})"


def parse(template: str, *, field: str = "template") -> Template:
    """Compile `template`, or raise ValidationFailed (code ``invalid_template``) naming
    `field` with one error per problem and its position."""
    parts: list[str | MergeField] = []
    names: dict[str, None] = {}
    errors: list[FieldError] = []
    pos = 0
    while True:
        start = template.find(_OPEN, pos)
        text_end = len(template) if start < 0 else start
        stray = template.find(_CLOSE, pos, text_end)
        if stray >= 0:
            errors.append(FieldError(field, f"'}}}}' without a matching '{{{{' "
                                     f"{_where(template, stray)}", INVALID_TEMPLATE))
        if pos < text_end:
            parts.append(template[pos:text_end])
        if start < 0:
            break
        end = template.find(_CLOSE, start + 2)
        if end < 0:
            errors.append(FieldError(field, f"'{{{{' opened {_where(template, start)} is never "
                                     "closed with '}}'", INVALID_TEMPLATE))
            break
        body = template[start + 2:end]
        match = _TAG.fullmatch(body)
        if match is None:
            errors.append(FieldError(
                field,
                f"merge field '{{{{{body}}}}}' {_where(template, start)} is not "
                '{{ name }} or {{ name | default: "text" }}',
                INVALID_TEMPLATE,
            ))
        else:
            name = match["path"]
            default = match["dq"] if match["dq"] is not None else match["sq"]
            parts.append(MergeField(name, _path(name), default))
            names[name] = None
        pos = end + 2
    if errors:
        raise ValidationFailed("; ".join(e.message for e in errors), errors=errors)
    return Template(template, _merge_text(parts), tuple(names))


def _path(name: str) -> tuple[str, ...]:
    path = tuple(name.split("."))
    if path[0] == "custom" and len(path) > 1:
        return ("custom", custom_key(path[1]), *path[2:])
    return path


def _merge_text(parts: list[str | MergeField]) -> tuple[str | MergeField, ...]:
    merged: list[str | MergeField] = []
    for part in parts:
        if isinstance(part, str) and merged and isinstance(merged[-1], str):
            merged[-1] += part
        else:
            merged.append(part)
    return tuple(merged)


@lru_cache(maxsize=512)
def _compiled(template: str) -> Template:
    return parse(template)


def render(template: str | Template, variables: Mapping[str, object]) -> Rendered:
    """Render `template` (compiled once per distinct text) with `variables`."""
    compiled = template if isinstance(template, Template) else _compiled(template)
    return compiled.render(variables)


def merge_variables(contact: Mapping[str, Any] | None) -> dict[str, Any]:
    """The merge fields a contact (a `contacts` row) gives a template: what campaigns,
    previews and the compose check all render with."""
    c = contact or {}
    stored = c.get("custom_fields") or {}
    # Keys stored before custom_key existed ("Favourite Colour") are read by their key; a
    # field written since under the key itself wins.
    custom = {custom_key(k): v for k, v in stored.items() if custom_key(k) != k}
    custom.update((k, v) for k, v in stored.items() if custom_key(k) == k)
    return {"first_name": c.get("first_name"), "last_name": c.get("last_name"),
            "phone": c.get("phone"), "email": c.get("email"), "custom": custom}
