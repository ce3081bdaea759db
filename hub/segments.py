"""SMS segment counting (GSM-7 / UCS-2), as Twilio bills it.

Mirrors Twilio's message-segment-calculator (sms-segments-calculator 1.3.0): the body is split
into grapheme clusters; it is GSM-7 only if every cluster is one GSM 03.38 character (basic
table 1 septet, extension table 2 septets), else UCS-2 (16 bits per UTF-16 code unit). A
segment holds 140 octets; a concatenated message reserves a 6-octet header in every part
(160/153 septets, 70/67 UTF-16 units). A cluster is never split across parts, so an
extension character or an emoji that would straddle a boundary moves to the next part.
With Twilio's Smart Encoding on, look-alike characters (curly quotes, dashes, NBSP…) are
replaced first, which usually keeps a message GSM-7.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

#: Twilio's limit for one message body (error 21617).
MAX_BODY_CHARS = 1600

Encoding = Literal["GSM-7", "UCS-2"]

#: GSM 03.38 basic table (one septet each; ESC excluded).
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
#: GSM 03.38 extension table (ESC + one septet each).
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")
_GSM7 = GSM7_BASIC | GSM7_EXTENSION

_SEGMENT_BITS = 1120  # 140 octets
_UDH_BITS = 48  # 6 octets of concatenation header in every part of a multi-part message

# Twilio Smart Encoding, as the calculator emulates it (src/libs/SmartEncodingMap.ts).
_SMART: dict[str, str] = {
    **dict.fromkeys(
        "\u00ab\u00bb\u201c\u201d\u02ba\u02ee\u201f\u201e\u275d\u275e\u301d\u301e\uff02", '"'
    ),
    **dict.fromkeys(
        "\u2018\u2019\u02bb\u02c8\u02bc\u02bd\u02b9\u201b\uff07\u00b4\u02ca\u0060\u02cb\u275b"
        "\u275c\u0313\u0314\ufe10\ufe11",
        "'",
    ),
    **dict.fromkeys("\u00f7\u29f8\u0337\u0338\u2044\u2215\uff0f", "/"),
    "\u00bc": "1/4", "\u00bd": "1/2", "\u00be": "3/4",
    **dict.fromkeys("\u29f9\u29f5\u20e5\ufe68\uff3c", "\\"),
    **dict.fromkeys("\u0332\uff3f\u2017", "_"),
    **dict.fromkeys("\u20d2\u20d3\u2223\uff5c\u23b8\u23b9\u23d0\u239c\u239f", "|"),
    **dict.fromkeys("\u23bc\u23bd\u2015\ufe63\uff0d\u2010\u2043\u2014\u2013\u2022", "-"),
    **dict.fromkeys("\ufe6b\uff20", "@"),
    **dict.fromkeys("\ufe69\uff04", "$"),
    **dict.fromkeys("\u01c3\ufe15\ufe57\uff01", "!"),
    **dict.fromkeys("\ufe5f\uff03", "#"),
    **dict.fromkeys("\ufe6a\uff05", "%"),
    **dict.fromkeys("\ufe60\uff06", "&"),
    **dict.fromkeys("\u201a\u0326\ufe50\ufe51\uff0c\uff64\u3001", ","),
    **dict.fromkeys("\u2768\u276a\ufe59\uff08\u27ee\u2985", "("),
    **dict.fromkeys("\u2769\u276b\ufe5a\uff09\u27ef\u2986", ")"),
    **dict.fromkeys(
        "\u204e\u2217\u229b\u2722\u2723\u2724\u2725\u2731\u2732\u2733\u273a\u273b\u273c"
        "\u273d\u2743\u2749\u274a\u274b\u29c6\ufe61\uff0a",
        "*",
    ),
    **dict.fromkeys("\u02d6\ufe62\uff0b", "+"),
    **dict.fromkeys("\u3002\ufe52\uff0e\uff61", "."),
    **{chr(0xFF10 + d): str(d) for d in range(10)},
    **dict.fromkeys("\u02d0\u02f8\u2982\ua789\ufe13\uff1a", ":"),
    **dict.fromkeys("\u204f\ufe14\ufe54\uff1b", ";"),
    **dict.fromkeys("\ufe64\uff1c\u203a", "<"),
    **dict.fromkeys("\u0347\ua78a\ufe66\uff1d", "="),
    **dict.fromkeys("\ufe65\uff1e\u2039", ">"),
    **dict.fromkeys("\ufe16\ufe56\uff1f", "?"),
    **{chr(0xFF21 + i): chr(0x41 + i) for i in range(26)},  # fullwidth A-Z
    # Small capitals (no small capital Q or X exists).
    **dict(zip(
        "\u1d00\u0299\u1d04\u1d05\u1d07\ua730\u0262\u029c\u026a\u1d0a\u1d0b\u029f\u1d0d"
        "\u0274\u1d0f\u1d18\u0280\ua731\u1d1b\u1d1c\u1d20\u1d21\u028f\u1d22",
        "ABCDEFGHIJKLMNOPRSTUVWYZ",
        strict=True,
    )),
    **dict.fromkeys("\u02c6\u0302\uff3e\u1dcd", "^"),
    **dict.fromkeys("\u2774\ufe5b\uff5b", "{"),
    **dict.fromkeys("\u2775\ufe5c\uff5d", "}"),
    "\uff3b": "[", "\uff3d": "]",
    **dict.fromkeys("\u02dc\u02f7\u0303\u0330\u0334\u223c\uff5e", "~"),
    # Two spaces, as the calculator's table has it (a vector confirms NBSP costs 2 septets).
    **dict.fromkeys(
        "\u00a0\u2000\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f"
        "\u3000\u008d\u009f\u0080\u0090\u009b",
        "  ",
    ),
    **dict.fromkeys("\u2028\u2029\u2001", " "),
    "\t": " " * 7,
    **dict.fromkeys(
        "\u0010\u0000\u0003\u0004\u0017\u0019\u0011\u0012\u0013\u0014\u2060\u200b\ufeff", ""
    ),
    "\u203c": "!!",
    "\u2026": "...",
}
_SMART_TABLE = str.maketrans(_SMART)


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    encoding: Encoding
    segments: int
    #: GSM-7: septets (extension characters count 2). UCS-2: grapheme clusters.
    characters: int
    #: Code points of `sent_body`.
    unicode_scalars: int
    #: UTF-16 code units of the body as given (before smart encoding).
    utf16_units: int
    message_size_bits: int
    #: Including the 48-bit concatenation header of every part of a multi-part message.
    total_size_bits: int
    #: Grapheme clusters that forced UCS-2, in order, repeats kept.
    non_gsm_chars: tuple[str, ...]
    #: The calculator warns about line breaks (handsets may render CRLF as two breaks).
    has_line_breaks: bool
    #: The text that goes to the carrier: the body after smart-encoding replacements.
    sent_body: str


def smart_encode(body: str) -> str:
    """`body` with Twilio Smart Encoding's look-alike replacements applied."""
    return body.translate(_SMART_TABLE)


def count_segments(body: str, *, smart_encoding: bool = False) -> SegmentInfo:
    """How `body` is encoded and how many billable segments it takes."""
    utf16_units = _utf16_len(body)
    sent = smart_encode(body) if smart_encoding else body
    if _GSM7.issuperset(sent):
        # Every cluster is a single GSM character (a combining mark would not be in the
        # table), so clusters are code points and no grapheme work is needed.
        sizes = [14 if ch in GSM7_EXTENSION else 7 for ch in sent]
        encoding: Encoding = "GSM-7"
        characters = sum(sizes) // 7
        non_gsm: tuple[str, ...] = ()
    else:
        clusters = _graphemes(sent)
        sizes = [16 * _utf16_len(c) for c in clusters]
        encoding = "UCS-2"
        characters = len(clusters)
        non_gsm = tuple(c for c in clusters if c not in _GSM7)
    message_bits = sum(sizes)
    segments = _count_parts(sizes, message_bits)
    return SegmentInfo(
        encoding=encoding,
        segments=segments,
        characters=characters,
        unicode_scalars=len(sent),
        utf16_units=utf16_units,
        message_size_bits=message_bits,
        total_size_bits=message_bits + (_UDH_BITS * segments if segments > 1 else 0),
        non_gsm_chars=non_gsm,
        has_line_breaks="\n" in sent,
        sent_body=sent,
    )


def _utf16_len(text: str) -> int:
    if text.isascii():
        return len(text)
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def _count_parts(sizes: list[int], total_bits: int) -> int:
    """Parts needed, packing clusters exactly as the calculator does."""
    if total_bits <= _SEGMENT_BITS:
        return 1
    # Fill one header-less part; on the first overflow it gains a header and gives back the
    # clusters that no longer fit. Every later part starts with its header.
    first: list[int] = []
    used = 0
    parts = 1
    for size in sizes:
        if _SEGMENT_BITS - used < size:
            if parts == 1:
                head = used + _UDH_BITS
                moved = 0
                while head > _SEGMENT_BITS:
                    last = first.pop()
                    head -= last
                    moved += last
                used = _UDH_BITS + moved
            else:
                used = _UDH_BITS
            parts += 1
        used += size
        if parts == 1:
            first.append(size)
    return parts


# --- grapheme clusters (UAX #29, as the calculator's grapheme-splitter applies it) ----------

_OTHER, _CR, _LF, _CONTROL, _EXTEND, _ZWJ, _RI, _PREPEND, _SPACING = range(9)
_L, _V, _T, _LV, _LVT, _PICTO = range(9, 15)

# Prepended concatenation marks and the few other Prepend characters (UAX #29 table).
_PREPEND_CPS = frozenset(
    [*range(0x0600, 0x0606), 0x06DD, 0x070F, 0x0890, 0x0891, 0x08E2, 0x0D4E, 0x110BD, 0x110CD,
     0x111C2, 0x111C3, 0x1193F, 0x11941, 0x11A3A, *range(0x11A84, 0x11A8A), 0x11D46]
)
_EXTEND_CPS = frozenset([0x200C, 0xFF9E, 0xFF9F])
_PICTO_RANGES = (
    (0x1F000, 0x1FAFF), (0x2600, 0x27BF), (0x2300, 0x23FF), (0x2B00, 0x2BFF),
    (0x2190, 0x21FF), (0x1FC00, 0x1FFFD),
)
# Classes that never join a neighbour unless a joining class (Extend, ZWJ, RI, Hangul L/V/T,
# Prepend, SpacingMark) is also present.
_STANDALONE = frozenset([_OTHER, _CR, _LF, _CONTROL, _PICTO, _LV, _LVT])
_PICTO_CPS = frozenset([0xA9, 0xAE, 0x203C, 0x2049, 0x2122, 0x2139, 0x3030, 0x303D, 0x3297, 0x3299])


@lru_cache(maxsize=8192)
def _break_class(ch: str) -> int:
    cp = ord(ch)
    if ch == "\r":
        return _CR
    if ch == "\n":
        return _LF
    if cp == 0x200D:
        return _ZWJ
    if 0x1F1E6 <= cp <= 0x1F1FF:
        return _RI
    if cp in _EXTEND_CPS or 0x1F3FB <= cp <= 0x1F3FF or 0xE0020 <= cp <= 0xE007F:
        return _EXTEND  # ZWNJ, halfwidth sound marks, emoji skin tones, emoji tag sequences
    if 0x1100 <= cp <= 0x115F or 0xA960 <= cp <= 0xA97C:
        return _L
    if 0x1160 <= cp <= 0x11A7 or 0xD7B0 <= cp <= 0xD7C6:
        return _V
    if 0x11A8 <= cp <= 0x11FF or 0xD7CB <= cp <= 0xD7FB:
        return _T
    if 0xAC00 <= cp <= 0xD7A3:
        return _LV if (cp - 0xAC00) % 28 == 0 else _LVT
    if cp in _PREPEND_CPS:
        return _PREPEND
    category = unicodedata.category(ch)
    if category in ("Mn", "Me"):
        return _EXTEND
    if category == "Mc":
        return _SPACING
    if category in ("Cc", "Cf", "Zl", "Zp"):
        return _CONTROL
    if cp in _PICTO_CPS or any(lo <= cp <= hi for lo, hi in _PICTO_RANGES):
        return _PICTO
    return _OTHER


def _joins(prev: int, cur: int, ri_run: int, picto_zwj: bool) -> bool:
    """Whether no cluster boundary falls between a `prev`-class and a `cur`-class char."""
    if prev == _CR and cur == _LF:
        return False  # the calculator counts CR and LF separately
    if prev in (_CR, _LF, _CONTROL) or cur in (_CR, _LF, _CONTROL):
        return False
    if prev == _L and cur in (_L, _V, _LV, _LVT):
        return True
    if prev in (_LV, _V) and cur in (_V, _T):
        return True
    if prev in (_LVT, _T) and cur == _T:
        return True
    if cur in (_EXTEND, _ZWJ, _SPACING) or prev == _PREPEND:
        return True
    if prev == _ZWJ and cur == _PICTO:
        return picto_zwj
    return prev == _RI and cur == _RI and ri_run % 2 == 1


def _graphemes(text: str) -> list[str]:
    classes = [_break_class(ch) for ch in text]
    if _STANDALONE.issuperset(classes):
        return list(text)  # the usual case: nothing joins, every code point is a cluster
    return list(_clusters(text, classes))


def _clusters(text: str, classes: list[int]) -> Iterator[str]:
    start = 0
    prev = -1
    ri_run = 0  # regional indicators in a row: flags pair them two by two
    picto = False  # inside "pictograph Extend*", so a following ZWJ may glue the next one
    picto_zwj = False
    for i, cur in enumerate(classes):
        if prev >= 0 and not _joins(prev, cur, ri_run, picto_zwj):
            yield text[start:i]
            start = i
        picto_zwj = picto and cur == _ZWJ
        picto = cur == _PICTO or (picto and cur == _EXTEND)
        ri_run = ri_run + 1 if cur == _RI else 0
        prev = cur
    if start < len(text):
        yield text[start:]
