"""MIME messages for bulk sending, assembled from parts encoded once per language.

Why not ``EmailMessage`` per recipient: building and serialising one costs 7–13 ms for a 76 KB
newsletter, it RFC 2047-encodes a long ``List-Unsubscribe`` (providers then ignore it), and on
CPython 3.11 it can drop the space before one-letter Cyrillic words when folding a subject
(python/cpython#92081). Here the headers that are the same for every recipient are encoded once
with ``email.header.Header`` (which keeps the spaces inside the encoded words) and
``email.utils.formataddr``; per recipient only the ASCII headers and the two bodies change.
Bodies are quoted-printable: MJML output has lines over 40,000 characters (RFC 5322 §2.1.1 allows
998), so 8bit is never safe.
"""

from __future__ import annotations

import binascii
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.header import Header
from email.utils import format_datetime, formataddr

CRLF = "\r\n"


class HeaderInjection(ValueError):
    """A header value contained CR or LF (or another control character): refused, never folded."""


def _check_value(name: str, value: str) -> str:
    if any(ord(ch) < 32 and ch != "\t" for ch in value) or "\x7f" in value:
        raise HeaderInjection(f"{name}: control characters (CR/LF) are not allowed in a header")
    return value


def _check_name(name: str) -> str:
    """A header field name: printable ASCII without ``:`` or space (RFC 5322 §2.2)."""
    if not name or not all(33 <= ord(ch) <= 126 and ch != ":" for ch in name):
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


def _encoded_words(name: str, value: str) -> str:
    """``value`` as UTF-8 RFC 2047 encoded-words, each at most 75 characters holding whole
    characters, on lines of at most 78 octets. Spaces stay inside the words (RFC 2047 §6.2), so
    a one-letter word after a fold keeps its space (python/cpython#92081)."""
    return Header(value, "utf-8", header_name=name).encode(linesep=CRLF)


def encode_unstructured(name: str, value: str) -> str:
    """``Name: value`` folded to at most 78 octets a line (RFC 5322 §2.1.1), no CRLF at the end.

    Plain ASCII is folded at whitespace; anything else (non-ASCII, ``=?`` that a reader would
    decode, leading/trailing spaces, a word longer than a line) becomes RFC 2047 encoded-words,
    so every reader decodes exactly ``value``. Raises ``HeaderInjection`` for CR/LF.
    """
    _check_name(name)
    _check_value(name, value)
    if _is_plain(name, value):
        return f"{name}: {Header(value, 'us-ascii', header_name=name).encode(linesep=CRLF)}"
    return f"{name}: {_encoded_words(name, value)}"


def _phrase(header_name: str, display_name: str) -> str:
    """A display name as an RFC 5322 phrase: atoms as they are, specials (``,`` ``"`` ``<``…) in
    a quoted-string (§3.2.4), non-ASCII as encoded-words (RFC 2047 §5(3), whose ``Q`` alphabet
    for phrases ``Header`` respects)."""
    if display_name.isascii() and "=?" not in display_name and display_name == display_name.strip():
        quoted = formataddr((display_name, "x@x"))  # quotes and escapes only when needed
        return quoted[: quoted.rindex(" <")]
    return _encoded_words(header_name, display_name)


def _with_addr(header_name: str, phrase: str, angle_addr: str) -> str:
    """``phrase <addr>``, with the address on its own continuation line if the last line of the
    phrase would pass 78 octets (``Name: `` included)."""
    last = phrase.rsplit(CRLF, 1)[-1]
    offset = len(header_name) + 2 if CRLF not in phrase else 0
    if offset + len(last.encode()) + 1 + len(angle_addr) <= MAX_LINE:
        return f"{phrase} {angle_addr}"
    return f"{phrase}{CRLF} {angle_addr}"


def format_mailbox(display_name: str, addr_spec: str, header_name: str = "From") -> str:
    """One mailbox for From/Reply-To/To, the value after ``Name: ``: quoted or encoded so that it
    parses back as exactly one address with the same display name (RFC 5322 §3.4).

    A display name with a comma (``Example News, Inc.``) is quoted (RFC 5322 §3.2.4); a non-ASCII
    one becomes RFC 2047 encoded-words. Raises ``HeaderInjection`` for control characters, or an
    address with whitespace, ``<``, ``>`` or ``,``.
    """
    _check_value("display name", display_name)
    _check_value("address", addr_spec)
    if not addr_spec or any(ch in addr_spec for ch in " <>,\t"):
        raise HeaderInjection(f"not a single address: {addr_spec!r}")
    if not display_name:
        return addr_spec
    return _with_addr(header_name, _phrase(header_name, display_name), f"<{addr_spec}>")


def format_list_unsubscribe(uris: Sequence[str]) -> str:
    """``List-Unsubscribe`` with the URIs in angle brackets, https first (RFC 2369 §3.2, RFC 8058).

    The value stays plain ASCII and is folded only at the space between URIs, never inside one,
    because receivers keep whitespace in a URI and RFC 2047 encoding hides the header.
    """
    for uri in uris:
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
    return "List-Id: " + _with_addr("List-Id", _phrase("List-Id", name), f"<{list_id}>")


def quoted_printable(text: str) -> bytes:
    """UTF-8 ``text`` as quoted-printable, CRLF line ends, lines of at most 76 octets (RFC 2045)."""
    data = text.replace("\r\n", "\n").encode("utf-8")
    return binascii.b2a_qp(data, quotetabs=False, istext=True, header=False).replace(b"\n", b"\r\n")


@dataclass(frozen=True)
class MessageTemplate:
    """What every recipient of one rendition shares: encoded headers and the two bodies."""

    shared_headers: bytes  # CRLF-terminated lines
    html: str  # may contain placeholders such as %%UNSUBSCRIBE_URL%%
    text: str
    boundary: str


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
    return MessageTemplate(shared_headers=headers, html=html, text=text, boundary=boundary)


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
    lines.append(f'Content-Type: multipart/alternative; boundary="{template.boundary}"')
    head = "".join(line + CRLF for line in lines).encode("utf-8")
    text = quoted_printable(substitute(template.text, substitutions))
    html_subs = substitutions if html_substitutions is None else html_substitutions
    html = quoted_printable(substitute(template.html, html_subs))
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
