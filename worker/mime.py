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


def encode_unstructured(name: str, value: str) -> str:
    """``Name: value`` folded to at most 78 octets a line (RFC 5322 §2.1.1), without CRLF at the end.

    Non-ASCII text becomes RFC 2047 encoded-words; each keeps its spaces inside, so a decoder that
    joins adjacent encoded-words gets the original text back exactly (RFC 2047 §6.2).
    """
    _check_value(name, value)
    charset = "us-ascii" if value.isascii() else "utf-8"
    encoded = Header(value, charset, header_name=name).encode(linesep=CRLF)
    return f"{name}: {encoded}"


def format_mailbox(display_name: str, addr_spec: str) -> str:
    """One mailbox for From/Reply-To/To: quoted or encoded so that it parses back as one address.

    A display name with a comma (``Example News, Inc.``) is quoted (RFC 5322 §3.2.4); a non-ASCII
    one is an RFC 2047 encoded-word.
    """
    _check_value("display name", display_name)
    _check_value("address", addr_spec)
    if not display_name:
        return addr_spec
    return formataddr((display_name, addr_spec), charset="utf-8")


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
    """``List-Id: Name <list.id>`` (RFC 2919 §3): only the phrase may be an encoded-word."""
    _check_value("List-Id", list_id)
    if not list_id.isascii() or any(ch in list_id for ch in " <>"):
        raise HeaderInjection(f"List-Id: not a plain list identifier: {list_id!r}")
    if not name:
        return f"List-Id: <{list_id}>"
    phrase = encode_unstructured("List-Id", name)
    return f"{phrase} <{list_id}>" if len(phrase.rsplit(CRLF, 1)[-1]) + len(list_id) < 76 else (
        f"{phrase}{CRLF} <{list_id}>"
    )


def quoted_printable(text: str) -> bytes:
    """UTF-8 ``text`` as quoted-printable with CRLF line ends, lines at most 76 octets (RFC 2045)."""
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
    Feedback-ID (Gmail's ``a:b:c:SenderId`` form). Raises ``HeaderInjection`` for CR/LF in any value.
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
        lines.append(encode_unstructured(_check_value("header name", name), value))
    boundary = "=_" + hashlib.sha256((subject + html).encode()).hexdigest()[:32]
    headers = "".join(line + CRLF for line in lines).encode("utf-8")
    return MessageTemplate(shared_headers=headers, html=html, text=text, boundary=boundary)


def substitute(body: str, substitutions: Mapping[str, str]) -> str:
    """Replace each placeholder key in ``body`` by its value (plain ``str.replace``: no templating)."""
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
    _check_value("To", to)
    _check_value("Message-ID", message_id)
    lines = ["To: " + to, "Date: " + format_datetime(date), "Message-ID: " + message_id]
    if list_unsubscribe:  # bulk mail only; a confirmation mail has nothing to unsubscribe from
        lines.append(format_list_unsubscribe(list_unsubscribe))
        lines.append("List-Unsubscribe-Post: List-Unsubscribe=One-Click")
    for name, value in (headers or {}).items():
        lines.append(f"{_check_value('header name', name)}: {_check_value(name, value)}")
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
