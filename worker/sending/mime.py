"""MIME messages for bulk sending, assembled from parts encoded once per language.

Why not ``EmailMessage`` per recipient: building and serialising one costs 7–13 ms for a 76 KB
newsletter, it RFC 2047-encodes a long ``List-Unsubscribe`` (providers then ignore it), and on
CPython 3.11 it can drop the space before one-letter Cyrillic words when folding a subject
(python/cpython#92081). Here the headers that are the same for every recipient are encoded once,
as RFC 2047 encoded-words that keep the spaces inside them, or quoted-strings for display names;
per recipient only the ASCII headers and the two bodies change.
Bodies are quoted-printable: MJML output has lines over 40,000 characters (RFC 5322 §2.1.1 allows
998), so 8bit is never safe. Each body is encoded once per rendition, in pieces around its
``%%PLACEHOLDER%%`` markers; per recipient only the substituted values are encoded and the pieces
joined with soft line breaks (RFC 2045 §6.7 rule 5), which decoders remove: the decoded text is
exactly what substituting first and encoding the whole body would give, at a fraction of the cost.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.header import Header
from email.utils import format_datetime

from worker.sending.identity import EDITION_HEADER

CRLF = "\r\n"


class HeaderInjection(ValueError):
    """A header value contained CR or LF (or another control character): refused, never folded."""


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # every control character but TAB
_FIELD_NAME = re.compile(r"[!-9;-~]+")  # printable ASCII (33-126) but ":" (58)


def _check_value(name: str, value: str) -> str:
    # one regex scan, not a generator per character: this runs on every header of every message
    if _CONTROL.search(value):
        raise HeaderInjection(f"{name}: control characters (CR/LF) are not allowed in a header")
    return value


def _check_name(name: str) -> str:
    """A header field name: printable ASCII without ``:`` or space (RFC 5322 §2.2)."""
    if not _FIELD_NAME.fullmatch(name):  # one regex, not a generator per character
        raise HeaderInjection(f"not a header field name: {name!r}")
    return name


MAX_LINE = 78  # octets, without CRLF (RFC 5322 §2.1.1)


def _is_plain(name: str, value: str) -> bool:
    """Whether ``value`` can go out as plain folded text and parse back unchanged: ASCII, no text
    a reader would decode as an encoded-word (RFC 2047 §5), no leading or trailing whitespace
    (unfolding eats it), and no word too long to fit on a folded line."""
    return (
        value.isascii()
        and "=?" not in value
        and value == value.strip()
        and all(len(word) + len(name) + 2 <= MAX_LINE for word in value.split())
    )


MAX_ENCODED_WORD = 75  # characters (RFC 2047 §2)


def _encode_word(text: str) -> str:
    return "=?utf-8?b?" + base64.b64encode(text.encode("utf-8")).decode("ascii") + "?="


def _fits(text: str, room: int) -> bool:
    return 12 + 4 * -(-len(text.encode("utf-8")) // 3) <= room  # len(_encode_word(text))


def _encoded_words(value: str, first_room: int) -> str:
    """``value`` as UTF-8 B-encoded words of at most 75 characters, whole characters each
    (RFC 2047 §2, §5), joined by folding whitespace; the first word fits in ``first_room``.

    Words are cut before a space, the space going inside the next word: a decoder drops the
    folding whitespace between adjacent encoded-words (§6.2) and gets ``value`` back exactly, so
    the space before a one-letter word (``падзеі ў``) survives (python/cpython#92081). A word
    longer than an encoded-word is cut between characters.
    """
    words: list[str] = []
    chunk, room = "", min(first_room, MAX_ENCODED_WORD)
    for token in re.findall(r"\s*\S+|\s+", value):
        if _fits(chunk + token, room):
            chunk += token
            continue
        if chunk and _fits(token, MAX_ENCODED_WORD):
            words.append(chunk)
            chunk, room = token, MAX_ENCODED_WORD
            continue
        for char in token:  # too long for one encoded-word: cut between characters
            if chunk and not _fits(chunk + char, room):
                words.append(chunk)
                chunk, room = "", MAX_ENCODED_WORD
            chunk += char
    if chunk:
        words.append(chunk)
    return (CRLF + " ").join(_encode_word(word) for word in words)


def encode_unstructured(name: str, value: str) -> str:
    """``Name: value`` folded to at most 78 octets a line (RFC 5322 §2.1.1), no CRLF at the end.

    Plain ASCII is folded at whitespace; anything else (non-ASCII, ``=?`` that a reader would
    decode, leading/trailing spaces, a word longer than a line) becomes RFC 2047 encoded-words,
    so every reader decodes exactly ``value``. Raises ``HeaderInjection`` for CR/LF.
    """
    _check_name(name)
    _check_value(name, value)
    if _is_plain(name, value):
        if len(name) + 2 + len(value) <= MAX_LINE:  # one line: nothing to fold (as Header's)
            return f"{name}: {value}"
        return f"{name}: {Header(value, 'us-ascii', header_name=name).encode(linesep=CRLF)}"
    return f"{name}: {_encoded_words(value, MAX_LINE - len(name) - 2)}"


def _phrase(display_name: str) -> str:
    """A display name as an RFC 5322 phrase: atoms as they are, specials (``,`` ``"`` ``<``…) in
    a quoted-string (§3.2.4), anything else as ONE encoded-word (RFC 2047 §5(3)).

    One word, even past 75 characters for a long name: CPython's address parser keeps the
    whitespace between adjacent encoded-words in a phrase, RFC 2047 §6.2 decoders drop it, so a
    split name cannot read the same in both.
    """
    if not display_name.isascii() or "=?" in display_name:
        return _encode_word(display_name)
    if _ATOMS.fullmatch(display_name):
        return display_name
    # a quoted-string keeps specials and runs of spaces, which between atoms fold to one
    return '"' + display_name.replace("\\", "\\\\").replace('"', '\\"') + '"'


_ATOMS = re.compile(r"[\w!#$%&'*+/=?^`{|}~-]+( [\w!#$%&'*+/=?^`{|}~-]+)*", re.ASCII)


def _with_addr(header_name: str, phrase: str, angle_addr: str) -> str:
    """``phrase <addr>``, with the address on a continuation line if the line would pass 78
    octets (``Name: `` included)."""
    if len(header_name) + 2 + len(phrase) + 1 + len(angle_addr) <= MAX_LINE:
        return f"{phrase} {angle_addr}"
    return f"{phrase}{CRLF} {angle_addr}"


def format_mailbox(display_name: str, addr_spec: str, header_name: str = "From") -> str:
    """One mailbox for From/Reply-To/To, the value after ``Name: ``: quoted or encoded so that it
    parses back as exactly one address with the same display name (RFC 5322 §3.4).

    A display name with a comma (``Example News, Inc.``) is quoted (RFC 5322 §3.2.4); a non-ASCII
    one becomes one RFC 2047 encoded-word. Runs of whitespace in it become one space and a blank
    name none (readers do the same). Raises ``HeaderInjection`` for control characters, or an
    address with whitespace, ``<``, ``>`` or ``,``.
    """
    _check_value("display name", display_name)
    _check_value("address", addr_spec)
    if not addr_spec or any(ch in addr_spec for ch in " <>,\t"):
        raise HeaderInjection(f"not a single address: {addr_spec!r}")
    # readers collapse whitespace in a phrase (CPython's even inside an encoded-word): say so
    display_name = " ".join(display_name.split())
    if not display_name:
        return addr_spec
    return _with_addr(header_name, _phrase(display_name), f"<{addr_spec}>")


def format_list_unsubscribe(uris: Sequence[str]) -> str:
    """``List-Unsubscribe`` with the URIs in angle brackets, https first (RFC 2369 §3.2, RFC 8058).

    The value stays plain ASCII and is folded only at the space between URIs, never inside one,
    because receivers keep whitespace in a URI and RFC 2047 encoding hides the header.
    """
    for uri in uris:
        _check_value("List-Unsubscribe", uri)
        if not uri.isascii() or any(ch in uri for ch in " <>\r\n\t,") or not uri:
            raise HeaderInjection(f"List-Unsubscribe: not a plain ASCII URI: {uri!r}")
    return "List-Unsubscribe: " + ("," + CRLF + " ").join(f"<{uri}>" for uri in uris)


def format_list_id(name: str, list_id: str) -> str:
    """``List-Id: Name <list.id>`` (RFC 2919 §3): the description is a phrase (quoted or
    encoded-words), the identifier plain ASCII."""
    _check_value("List-Id", list_id)
    _check_value("List-Id", name)
    if not list_id.isascii() or any(ch in list_id for ch in " <>,"):
        raise HeaderInjection(f"List-Id: not a plain list identifier: {list_id!r}")
    if not name:
        return f"List-Id: <{list_id}>"
    return "List-Id: " + _with_addr("List-Id", _phrase(name), f"<{list_id}>")


def quoted_printable(text: str) -> bytes:
    """UTF-8 ``text`` as quoted-printable, CRLF line ends, lines of at most 76 octets (RFC 2045)."""
    data = text.replace("\r\n", "\n").encode("utf-8")
    return binascii.b2a_qp(data, quotetabs=False, istext=True, header=False).replace(b"\n", b"\r\n")


PLACEHOLDER = re.compile(r"(%%[A-Za-z0-9_]+%%)")
_SOFT_BREAK = b"=\r\n"


def _open_ended(encoded: bytes) -> bytes:
    """``encoded`` (quoted-printable) made ready for more text on a new line: a soft line break
    after its last line, which is first shortened so that with the ``=`` it stays within 76
    octets (RFC 2045 §6.7 rule 5). A piece ending in a hard line break is returned unchanged."""
    if not encoded or encoded.endswith(b"\r\n"):
        return encoded
    start = encoded.rfind(b"\r\n") + 2 if b"\r\n" in encoded else 0
    if len(encoded) - start > 75:
        cut = start + 73
        if encoded[cut - 1 : cut] == b"=":  # never split an =XX escape
            cut -= 1
        elif encoded[cut - 2 : cut - 1] == b"=":
            cut -= 2
        encoded = encoded[:cut] + _SOFT_BREAK + encoded[cut:]
    return encoded + _SOFT_BREAK


@dataclass(frozen=True)
class EncodedBody:
    """A body as quoted-printable pieces around its placeholders, encoded once.

    ``pieces`` alternates encoded static text (bytes, already open-ended where more follows) and
    placeholder names (str). ``None`` when the body cannot be split safely (a stray ``%%``).
    """

    pieces: tuple[bytes | str, ...]

    @classmethod
    def of(cls, body: str) -> EncodedBody | None:
        parts = PLACEHOLDER.split(body.replace("\r\n", "\n"))
        if any("%%" in part for part in parts[0::2]):
            return None
        pieces: list[bytes | str] = []
        for index, part in enumerate(parts):
            if index % 2:
                pieces.append(part)
            elif part:
                encoded = quoted_printable(part)
                pieces.append(encoded if index == len(parts) - 1 else _open_ended(encoded))
        return cls(tuple(pieces))

    def fill(self, values: Mapping[str, str]) -> bytes:
        """The encoded body with each placeholder replaced by its value (unknown ones stay)."""
        out: list[bytes] = []
        last = len(self.pieces) - 1
        for index, piece in enumerate(self.pieces):
            if isinstance(piece, bytes):
                out.append(piece)
                continue
            encoded = quoted_printable(values.get(piece, piece))
            out.append(encoded if index == last else _open_ended(encoded))
        return b"".join(out)


def _fast_path(substitutions: Mapping[str, str]) -> bool:
    """Whether the pre-encoded pieces give the same text as ``substitute``: every key is a
    whole placeholder and no value could form or split one (or change line ends)."""
    return all(
        PLACEHOLDER.fullmatch(key) and "%%" not in value and "\r" not in value and "\n" not in value
        for key, value in substitutions.items()
    )


@dataclass(frozen=True)
class MessageTemplate:
    """What every recipient of one rendition shares: encoded headers and the two bodies."""

    shared_headers: bytes  # CRLF-terminated lines
    html: str  # may contain placeholders such as %%UNSUBSCRIBE_URL%%
    text: str
    boundary: str
    encoded_html: EncodedBody | None = None
    encoded_text: EncodedBody | None = None


def build_template(
    *,
    subject: str,
    from_name: str,
    from_address: str,
    html: str,
    text: str,
    language: str,
    reply_to: str | None = None,
    list_id: str | None = None,
    list_id_name: str | None = None,
    feedback_id: str | None = None,
    extra_headers: Mapping[str, str] | None = None,
) -> MessageTemplate:
    """Encode the headers shared by every copy of one rendition, once.

    ``list_id`` is the List-Id identifier (``weekly.news.example.org``, RFC 2919) and
    ``list_id_name`` its description; ``feedback_id`` the
    Feedback-ID (Gmail's ``a:b:c:SenderId`` form). Raises ``HeaderInjection`` for CR/LF in any
    value.
    """
    lines = [
        "From: " + format_mailbox(from_name, from_address),
        encode_unstructured("Subject", subject),
        "MIME-Version: 1.0",
        "Precedence: bulk",
        "Content-Language: " + _check_value("Content-Language", language),
    ]
    if reply_to:
        lines.append("Reply-To: " + _check_value("Reply-To", reply_to))
    if list_id:
        lines.append(format_list_id(list_id_name or "", list_id))
    if feedback_id:
        lines.append("Feedback-ID: " + _check_value("Feedback-ID", feedback_id))
    for name, value in (extra_headers or {}).items():
        lines.append(encode_unstructured(name, value))
    boundary = "=_" + hashlib.sha256((subject + html).encode()).hexdigest()[:32]
    headers = "".join(line + CRLF for line in lines).encode("utf-8")
    return MessageTemplate(
        shared_headers=headers,
        html=html,
        text=text,
        boundary=boundary,
        encoded_html=EncodedBody.of(html),
        encoded_text=EncodedBody.of(text),
    )


@dataclass(frozen=True)
class Origin:
    """Who a message comes from and which newsletter it belongs to: the one header set that
    edition, test and transactional mail share (From, Reply-To, List-Id, Feedback-ID, and
    ``X-Newsletter-Edition`` for edition mail). Values as ``worker.sending.identity`` formats
    them; ``edition_key`` None for mail that is not an edition."""

    from_name: str
    from_address: str
    reply_to: str | None
    list_id: str
    list_name: str
    feedback_id: str
    edition_key: str | None = None


def origin_template(
    origin: Origin, *, subject: str, html: str, text: str, language: str
) -> MessageTemplate:
    """``build_template`` with ``origin``'s headers: the builder every kind of mail goes through.
    Raises ``HeaderInjection`` for CR/LF in any value."""
    return build_template(
        subject=subject,
        from_name=origin.from_name,
        from_address=origin.from_address,
        reply_to=origin.reply_to,
        html=html,
        text=text,
        language=language,
        list_id=origin.list_id,
        list_id_name=origin.list_name,
        feedback_id=origin.feedback_id,
        extra_headers={EDITION_HEADER: origin.edition_key} if origin.edition_key else None,
    )


def substitute(body: str, substitutions: Mapping[str, str]) -> str:
    """Replace each placeholder key in ``body`` by its value (``str.replace``: no templating)."""
    for key, value in substitutions.items():
        body = body.replace(key, value)
    return body


def personalise(
    template: MessageTemplate,
    *,
    to: str,
    message_id: str,
    date: datetime,
    list_unsubscribe: Sequence[str],
    substitutions: Mapping[str, str],
    html_substitutions: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> bytes:
    """The whole message for one recipient, as bytes ready for SMTP DATA.

    ``to`` is the recipient address (ASCII form where one exists; a UTF-8 address is allowed only
    for SMTPUTF8 delivery, RFC 6532). ``message_id`` includes its angle brackets.
    ``html_substitutions`` default to ``substitutions`` (pass HTML-escaped values when they differ).
    """
    _check_value("Message-ID", message_id)
    lines = [
        "To: " + format_mailbox("", to, "To"),
        "Date: " + format_datetime(date),
        "Message-ID: " + message_id,
    ]
    if list_unsubscribe:  # bulk mail only; a confirmation mail has nothing to unsubscribe from
        lines.append(format_list_unsubscribe(list_unsubscribe))
        lines.append("List-Unsubscribe-Post: List-Unsubscribe=One-Click")
    for name, value in (headers or {}).items():
        lines.append(encode_unstructured(name, value))
    lines.append(f'Content-Type: multipart/alternative;{CRLF} boundary="{template.boundary}"')
    head = "".join(line + CRLF for line in lines).encode("utf-8")
    html_subs = substitutions if html_substitutions is None else html_substitutions
    text = _encode_body(template.text, template.encoded_text, substitutions)
    html = _encode_body(template.html, template.encoded_html, html_subs)
    b = template.boundary.encode()
    part_head = b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    return b"".join(
        [
            template.shared_headers,
            head,
            b"\r\n--" + b + b"\r\nContent-Type: text/plain; charset=utf-8\r\n" + part_head,
            text,
            b"\r\n--" + b + b"\r\nContent-Type: text/html; charset=utf-8\r\n" + part_head,
            html,
            b"\r\n--" + b + b"--\r\n",
        ]
    )


def _encode_body(body: str, encoded: EncodedBody | None, substitutions: Mapping[str, str]) -> bytes:
    if encoded is not None and _fast_path(substitutions):
        return encoded.fill(substitutions)
    return quoted_printable(substitute(body, substitutions))
