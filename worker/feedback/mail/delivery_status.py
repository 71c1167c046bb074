"""RFC 3464 delivery status notifications: one report per recipient block.

A ``message/delivery-status`` part holds one block of per-message fields (Reporting-MTA,
Arrival-Date, vendor extras such as X-Postfix-Sender) and then one block per recipient (Action,
Status, Diagnostic-Code, Final-Recipient, Original-Recipient). ``message/global-delivery-status``
(RFC 6533) is the same in UTF-8.
"""

from __future__ import annotations

import re
from email.message import Message
from email.parser import HeaderParser
from email.policy import compat32

from worker.feedback.classification import Reason, classify_status, enhanced_status
from worker.feedback.mail.mail import InboundMail, parse_date
from worker.feedback.mail.original_message import first_verp
from worker.feedback.mail.parts import (
    MAX_TEXT_BYTES,
    addresses,
    decode_bytes,
    header_text,
    part_text,
)
from worker.feedback.report import FeedbackReport

MAX_RECIPIENT_BLOCKS = 100
_MAX_BLOCKS_READ = 1000
_STATUS_PARTS = frozenset({"message/delivery-status", "message/global-delivery-status"})
_RECIPIENT_FIELDS = ("Original-Recipient", "Final-Recipient", "X-Actual-Recipient")
_BLANK_LINE = re.compile(r"\r?\n[ \t]*\r?\n")
_XTEXT_UNICODE = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")  # RFC 6533 §3: utf-8 address type


def read(mail: InboundMail) -> list[FeedbackReport]:
    """Reports for every failed or delayed recipient of a DSN; [] if ``mail`` carries no DSN fields.

    Success blocks (delivered, relayed, expanded) give no report; a DSN of nothing but successes
    gives one UNKNOWN report. At most ``MAX_RECIPIENT_BLOCKS`` recipients are read.
    """
    blocks = [
        block
        for part in mail.parts
        if part.content_type in _STATUS_PARTS
        for block in _blocks(part.message)
    ][:_MAX_BLOCKS_READ]
    recipient_blocks = [b for b in blocks if b.get("Action") or b.get("Final-Recipient")]
    if not recipient_blocks:
        return []
    per_message = next((b for b in blocks if b.get("Reporting-MTA") or b.get("Arrival-Date")), None)
    reports = [
        report
        for block in recipient_blocks[:MAX_RECIPIENT_BLOCKS]
        if (report := _recipient_report(mail, block, per_message)) is not None
    ]
    return reports or [mail.unknown(Reason.DELIVERED, source="dsn")]


def _recipient_report(
    mail: InboundMail, block: Message, per_message: Message | None
) -> FeedbackReport | None:
    action = (header_text(block, "Action") or "").lower() or None
    status_field = header_text(block, "Status")
    diagnostic = diagnostic_text(header_text(block, "Diagnostic-Code"))
    classification = classify_status(status_field, diagnostic, action=action)
    if classification.reason == Reason.DELIVERED:
        return None
    fields = per_message if per_message is not None else Message()
    occurred = parse_date(header_text(block, "Last-Attempt-Date")) or parse_date(
        header_text(fields, "Arrival-Date")
    )
    return mail.report(
        classification,
        source="dsn",
        recipient=recipient_of(block),
        status=enhanced_status(status_field) or enhanced_status(diagnostic),
        diagnostic=diagnostic,
        action=action,
        verp_hint=None if mail.own_verp or mail.original.verp_local else _verp_hint(mail, fields),
        message_id_hint=header_text(fields, "X-Original-Message-ID"),
        occurred_at=occurred,
    )


def _verp_hint(mail: InboundMail, fields: Message) -> str | None:
    return first_verp([_typed_value(header_text(fields, "X-Postfix-Sender"))], mail.verp_prefix)


def _blocks(part: Message) -> list[Message]:
    payload = part.get_payload()
    if not isinstance(payload, list):
        return _split_blocks(part_text(part))  # a hand-made part with a text payload
    blocks: list[Message] = []
    for block in payload[:_MAX_BLOCKS_READ]:
        if isinstance(block, Message):
            blocks.append(block)
            # CPython parses message/global-delivery-status like message/rfc822: the first
            # block becomes the headers and the recipient blocks its body.
            rest = block.get_payload(decode=True)  # bytes: 8-bit UTF-8 must not be replaced
            if isinstance(rest, bytes) and rest.strip():
                blocks.extend(_split_blocks(decode_bytes(rest[:MAX_TEXT_BYTES], "utf-8")))
    return blocks


def _split_blocks(text: str) -> list[Message]:
    parser = HeaderParser(policy=compat32)
    chunks = _BLANK_LINE.split(text, maxsplit=_MAX_BLOCKS_READ)
    return [parser.parsestr(chunk.strip("\r\n")) for chunk in chunks if chunk.strip()]


def diagnostic_text(value: str | None) -> str | None:
    """A Diagnostic-Code without its type (``smtp; 550 …`` → ``550 …``), unfolded.

    RFC 3464 §2.3.6: ``diagnostic-type ; *text``.
    """
    if not value:
        return None
    kind, sep, rest = value.partition(";")
    text = rest if sep and kind.strip().isalpha() and len(kind.strip()) <= 16 else value
    return " ".join(text.split()) or None


def recipient_of(block: Message) -> str | None:
    """A block's recipient: Original-Recipient, else Final-Recipient (RFC 3464 §2.3.1-2)."""
    for name in _RECIPIENT_FIELDS:
        address = _typed_value(header_text(block, name))
        if address:
            found = addresses(address) or ([address] if "@" in address else [])
            if found:
                return found[0]
    return None


def _typed_value(value: str | None) -> str | None:
    """``rfc822; a@b`` → ``a@b``; ``utf-8; \\x{...}`` decoded; bare values kept as they are."""
    if not value:
        return None
    kind, sep, rest = value.partition(";")
    address = rest.strip() if sep else value.strip()
    if sep and kind.strip().lower() == "utf-8":
        address = _XTEXT_UNICODE.sub(lambda m: _unicode(m.group(1)), address)
    return address.strip("<> ") or None


def _unicode(hex_digits: str) -> str:
    point = int(hex_digits, 16)
    surrogate = 0xD800 <= point <= 0xDFFF
    return chr(point) if point <= 0x10FFFF and not surrogate else "\ufffd"
