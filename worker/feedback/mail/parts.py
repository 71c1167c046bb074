"""Bounded reading of untrusted MIME: parse, walk, decode text and headers without surprises.

Bounce mailboxes receive whatever anyone sends. Every step here has a cap so that a 20 MB
message, ten thousand nested multiparts or a body in an undeclared charset costs milliseconds and
never raises. Before parsing, the input is cut to ``MAX_PARSE_BYTES`` (a DSN's report part comes
before the returned message, RFC 6522 §3, so the cut never hides what we need), its header block
to ``MAX_HEADER_BYTES`` (every header lookup scans all headers), and it is cut before the
``MAX_PART_DELIMITERS``-th boundary line, the ``MAX_BLANK_LINES``-th blank line (each one opens
a header block in a delivery-status part) and the ``MAX_CONTAINERS``-th multipart/message
header (CPython's feedparser checks every open boundary on every line, quadratic in nesting, and
recurses once per level). Walking stops after ``MAX_PARTS`` parts; text is decoded from at most
``MAX_TEXT_BYTES`` a part and header values from at most ``MAX_HEADER_CHARS``.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from dataclasses import dataclass
from email import message_from_bytes
from email.header import decode_header
from email.message import Message
from email.policy import compat32
from email.utils import getaddresses

MAX_PARSE_BYTES = 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024
MAX_PART_DELIMITERS = 400
MAX_CONTAINERS = 32
MAX_BLANK_LINES = 1000
MAX_HEADER_CHARS = 8 * 1024
MAX_PARTS = 200
MAX_TEXT_BYTES = 64 * 1024
MAX_ADDRESSES = 50

_BARE_ADDRESS = re.compile(r"^\s*<?([^\s<>@,;:\"()\[\]\\]+@[^\s<>@,;:\"()\[\]\\]+)>?\s*$")
_DELIMITER = re.compile(rb"\n--")
_BLANK = re.compile(rb"\r?\n\r?\n")
_CONTAINER_HEADER = re.compile(
    rb"^content-type:[ \t]*(?:multipart|message)/", re.IGNORECASE | re.MULTILINE
)
# Parts whose payload is header blocks, not a message to descend into.
_FIELD_PARTS = frozenset(
    {"message/delivery-status", "message/global-delivery-status", "message/feedback-report"}
)
_RETURNED_PARTS = frozenset({"message/rfc822", "message/global", "message/global-headers"})
# The most frequent lowercase Russian letters: right decoding of Cyrillic text is full of them,
# the wrong single-byte code page turns them into capitals and box-drawing characters.
_RUSSIAN_COMMON = frozenset("оеаинтсрвлкмдпуяыьгзбчй")
_CYRILLIC_CODECS = ("cp1251", "koi8_r", "cp866")


@dataclass(frozen=True)
class Part:
    """One MIME part met while walking: type, depth, and whether it is inside a returned message."""

    message: Message
    depth: int
    returned: bool
    content_type: str  # computed once: every reader looks at every part's type

    @classmethod
    def of(cls, message: Message, depth: int, returned: bool) -> Part:
        return cls(message, depth, returned, content_type(message))


def bounded(raw: bytes) -> bytes:
    """``raw`` cut to what the parser may see (see the module docstring for the limits)."""
    raw = _short_header(raw[:MAX_PARSE_BYTES])
    raw = _cut_at_nth(raw, _DELIMITER, MAX_PART_DELIMITERS)
    # Every blank line in a delivery-status part starts a header block (a Message object).
    raw = _cut_at_nth(raw, _BLANK, MAX_BLANK_LINES)
    return _cut_at_nth(raw, _CONTAINER_HEADER, MAX_CONTAINERS)


def _short_header(raw: bytes) -> bytes:
    """Drop header lines beyond ``MAX_HEADER_BYTES``: each lookup scans every header."""
    end = _BLANK.search(raw)
    header_end = end.start() if end else len(raw)
    if header_end <= MAX_HEADER_BYTES:
        return raw
    keep = raw.rfind(b"\n", 0, MAX_HEADER_BYTES) + 1
    return raw[:keep] + raw[header_end:]


def _cut_at_nth(raw: bytes, pattern: re.Pattern[bytes], limit: int) -> bytes:
    for count, match in enumerate(pattern.finditer(raw), start=1):
        if count >= limit:
            return raw[: match.start()]
    return raw


def parse(raw: bytes) -> Message:
    """The message in ``bounded(raw)``, parsed leniently (compat32 keeps broken headers as text)."""
    return message_from_bytes(bounded(raw), policy=compat32)


def content_type(message: Message) -> str:
    """The lowercased type/subtype, ``text/plain`` when missing or malformed (RFC 2045 §5.2)."""
    try:
        return message.get_content_type()
    except Exception:  # a header the parser kept but cannot interpret
        return "text/plain"


def walk(message: Message) -> Iterator[Part]:
    """Every part, depth first, at most ``MAX_PARTS``; iterative, so nesting cannot recurse."""
    stack: list[Part] = [Part.of(message, 0, False)]
    seen = 0
    while stack and seen < MAX_PARTS:
        part = stack.pop()
        seen += 1
        yield part
        kind = part.content_type
        payload = part.message.get_payload()
        if kind in _FIELD_PARTS or not isinstance(payload, list):
            continue
        returned = part.returned or kind in _RETURNED_PARTS
        children = [
            Part.of(child, part.depth + 1, returned)
            for child in payload
            if isinstance(child, Message)
        ]
        stack.extend(reversed(children))


def decode_bytes(data: bytes, charset: str | None = None) -> str:
    """Text from bytes whose declared charset may be missing or wrong.

    Order: the declared charset (unless it claims ASCII, which 8-bit mail often falsely does), then
    UTF-8, then the Cyrillic code page (windows-1251, KOI8-R, CP866) that yields the most common
    lowercase Russian letters; windows-1252 if none does. Never raises.
    """
    codec = _codec(charset)
    if codec is not None and codec != "ascii":
        try:
            return data.decode(codec)
        except UnicodeDecodeError:
            pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return _guess_single_byte(data)


def _codec(charset: str | None) -> str | None:
    if not charset:
        return None
    try:
        return codecs.lookup(charset.strip().strip('"')).name
    except (LookupError, ValueError):
        return None


def _guess_single_byte(data: bytes) -> str:
    best, best_score = data.decode("cp1252", "replace"), 0
    for codec in _CYRILLIC_CODECS:
        text = data.decode(codec, "replace")
        score = sum(1 for ch in text if ch in _RUSSIAN_COMMON)
        if score > best_score:
            best, best_score = text, score
    return best


def part_text(message: Message, limit: int = MAX_TEXT_BYTES) -> str:
    """A leaf part's text (transfer encoding and charset undone), at most ``limit`` bytes."""
    try:
        payload = message.get_payload(decode=True)
    except Exception:  # a transfer encoding the library cannot undo
        return ""
    if not isinstance(payload, bytes):
        return ""
    try:
        charset = message.get_content_charset()
    except Exception:
        charset = None
    return decode_bytes(payload[:limit], charset)


def header_text(message: Message, name: str) -> str | None:
    """The first ``name`` header, RFC 2047-decoded and unfolded; None if absent or empty."""
    values = header_texts(message, name, limit=1)
    return values[0] if values else None


def header_texts(message: Message, name: str, *, limit: int = MAX_ADDRESSES) -> list[str]:
    """Every ``name`` header (up to ``limit``), decoded and unfolded, empty ones left out."""
    try:
        raw_values = message.get_all(name) or []
    except Exception:
        return []
    texts = (_decode_header_value(value) for value in raw_values[:limit])
    return [text for text in texts if text]


def _decode_header_value(value: object) -> str:
    if isinstance(value, str) and len(value) > MAX_HEADER_CHARS:
        value = value[:MAX_HEADER_CHARS]  # decoding and address parsing are superlinear
    try:
        chunks = decode_header(value)  # type: ignore[arg-type]  # str or email.header.Header
    except Exception:  # malformed encoded-word: keep the raw text
        chunks = [(str(value), None)]
    pieces = []
    for chunk, charset in chunks:
        if isinstance(chunk, bytes):
            declared = None if charset in (None, "unknown-8bit") else charset
            pieces.append(decode_bytes(chunk, declared))
        else:
            pieces.append(chunk.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
    return " ".join("".join(pieces).split())


def addresses(value: str | None) -> list[str]:
    """The addr-specs in an address header value (display names and angle brackets removed)."""
    if not value:
        return []
    bare = _BARE_ADDRESS.match(value)
    if bare:  # the common case, without the (slow, pure-Python) RFC 5322 address parser
        return [bare.group(1)]
    try:
        pairs = getaddresses([value])
    except Exception:
        return []
    found = [addr.strip().strip("<>") for _, addr in pairs[:MAX_ADDRESSES]]
    return [addr for addr in found if "@" in addr]
