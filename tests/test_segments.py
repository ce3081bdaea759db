"""count_segments against every vector from Twilio's segment calculator (1.3.0)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hub.segments import MAX_BODY_CHARS, count_segments, smart_encode

VECTORS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "reference" / "vectors" / "sms_segment_vectors.json").read_text()
)["vectors"]

# The calculator's only warning; the hub exposes it as `has_line_breaks`.
LINE_BREAK_WARNING = (
    "The message has line breaks, the web page utility only supports LF style. "
    "If you insert a CRLF it will be converted to LF."
)
FIELDS = ("encoding", "segments", "characters", "unicode_scalars", "utf16_units",
          "message_size_bits", "total_size_bits")


def test_every_vector_every_field() -> None:
    mismatches = []
    for v in VECTORS:
        info = count_segments(v["body"], smart_encoding=v["smart_encoding"])
        got = {f: getattr(info, f) for f in FIELDS}
        got["non_gsm_chars"] = list(info.non_gsm_chars)
        got["warnings"] = [LINE_BREAK_WARNING] if info.has_line_breaks else []
        for name, value in got.items():
            if value != v[name]:
                mismatches.append(f"{v['label']}: {name} expected {v[name]!r}, got {value!r}")
    assert len(VECTORS) == 73
    assert not mismatches, "\n".join(mismatches)


def test_smart_encoding_turns_typographic_text_into_gsm() -> None:
    body = "“Hello” it’s — done…\u00a0ok"
    assert smart_encode(body) == "\"Hello\" it's - done...  ok"
    plain, smart = count_segments(body), count_segments(body, smart_encoding=True)
    assert (plain.encoding, smart.encoding) == ("UCS-2", "GSM-7")
    assert smart.sent_body == smart_encode(body)
    assert plain.sent_body == body


def test_extension_char_at_the_boundary_moves_to_the_next_part() -> None:
    # 152 digits + "€": the 2-septet euro would straddle the 153-septet boundary.
    info = count_segments("1" * 152 + "€" + "1" * 9)
    assert (info.characters, info.segments) == (163, 2)
    assert count_segments("1" * 152 + "1" + "1" * 10).segments == 2


def test_clusters_beyond_the_vectors_are_not_split() -> None:
    thumbs = "👍🏽"  # base + skin tone: one cluster, 4 UTF-16 units
    info = count_segments(thumbs + "a" * 66)
    assert (info.characters, info.utf16_units, info.segments) == (67, 70, 1)
    hangul = "\u1112\u1161\u11ab"  # 한 written as three jamo
    assert count_segments(hangul).characters == 1
    keycap = "1\ufe0f\u20e3"
    assert count_segments(keycap).non_gsm_chars == (keycap,)
    family = "👨\u200d👩\u200d👧"
    assert count_segments(family + "x").characters == 2


def test_twilio_body_limit() -> None:
    assert MAX_BODY_CHARS == 1600
    assert count_segments("1" * MAX_BODY_CHARS).segments == 11
