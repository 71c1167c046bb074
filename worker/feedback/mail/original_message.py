"""What a report tells about the message we sent: VERP, Message-ID, recipient, our own headers.

Returned originals come in three shapes: a ``message/rfc822`` part (RFC 3462), only the headers as
``text/rfc822-headers`` (Postfix, Exchange), or pasted into the text of a non-standard bounce
(Exim, qmail, mail.ru) after a line like "A copy of the message follows".
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from email.message import Message
from email.parser import HeaderParser
from email.policy import compat32

from worker.feedback.mail.parts import (
    Part,
    addresses,
    header_text,
    part_text,
)
from worker.sending.identity import DELIVERY_HEADER, SUBSCRIBER_HEADER, local_token

_HEADER_ONLY_PARTS = frozenset({"text/rfc822-headers", "text/global-headers"})
_RETURNED_PARTS = frozenset({"message/rfc822", "message/global", "message/global-headers"})
# The start of a pasted header block: a line that opens with one of the headers every sent
# message has. Human text before it ("RCPT TO:<...>") never starts a line this way.
_PASTED_HEADERS = re.compile(r"^(?:Return-Path|Received|Message-ID|DKIM-Signature):", re.I | re.M)
_MESSAGE_ID = re.compile(r"<[^<>\s]{1,250}>")
_MAX_PASTED_HEADER_CHARS = 32 * 1024


@dataclass(frozen=True)
class OriginalReferences:
    """Identifiers of the original message found in a report; every field may be None."""

    verp_local: str | None = None
    message_id: str | None = None
    recipient: str | None = None
    subscriber_ref: str | None = None
    delivery_ref: str | None = None


def verp_local(address: str | None, prefix: str) -> str | None:
    """What follows ``<prefix>+`` in the local part of ``address``; see
    ``worker.sending.identity.local_token``."""
    return local_token(address, prefix)


def first_verp(candidates: Iterable[str | None], prefix: str) -> str | None:
    """The VERP token of the first candidate address (or address header value) that has one."""
    marker = f"{prefix.lower()}+"
    for candidate in candidates:
        if not candidate or marker not in candidate.lower():
            continue  # cheap test first: address parsing is pure Python and slow
        for address in addresses(candidate) or [candidate]:
            token = verp_local(address, prefix)
            if token:
                return token
    return None


def message_id(value: str | None) -> str | None:
    """The first ``<id@host>`` in a Message-ID-like value, brackets kept (RFC 5322 §3.6.4)."""
    if not value:
        return None
    match = _MESSAGE_ID.search(value)
    if match:
        return match.group(0)
    bare = value.strip()
    return f"<{bare}>" if bare and " " not in bare and "@" in bare else None


def returned_headers(parts: list[Part], human_text: str) -> Message | None:
    """The returned original's headers: from a returned part, else pasted in ``human_text``."""
    for part in parts:
        kind = part.content_type
        if kind in _RETURNED_PARTS:
            payload = part.message.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                return payload[0]
        if kind in _HEADER_ONLY_PARTS:
            return _parse_headers(part_text(part.message))
    return _pasted_headers(human_text)


def _pasted_headers(text: str) -> Message | None:
    match = _PASTED_HEADERS.search(text)
    if match is None:
        return None
    headers = _parse_headers(text[match.start() : match.start() + _MAX_PASTED_HEADER_CHARS])
    return headers if headers.get("Message-ID") or headers.get("Return-Path") else None


def _parse_headers(text: str) -> Message:
    return HeaderParser(policy=compat32).parsestr(text.lstrip("\r\n"), headersonly=True)


def references(headers: Message | None, prefix: str) -> OriginalReferences:
    """VERP token (Return-Path), Message-ID, To and X-Newsletter-* values of returned headers."""
    if headers is None:
        return OriginalReferences()
    recipients = addresses(header_text(headers, "To"))
    return OriginalReferences(
        verp_local=first_verp([header_text(headers, "Return-Path")], prefix),
        message_id=message_id(header_text(headers, "Message-ID")),
        recipient=recipients[0] if recipients else None,
        subscriber_ref=_token(header_text(headers, SUBSCRIBER_HEADER)),
        delivery_ref=_token(header_text(headers, DELIVERY_HEADER)),
    )


def _token(value: str | None) -> str | None:
    if not value:
        return None
    token = value.split()[0][:100]
    return token or None
