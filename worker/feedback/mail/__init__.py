"""Inbound mail at the bounce and unsubscribe addresses, read into feedback reports.

``parse_inbound`` is pure: bytes in, :class:`~worker.feedback.report.FeedbackReport` list out, no
database, no network. The receiver (SMTP or IMAP) stores the raw message first and calls it
afterwards, so an unreadable message is kept even when nothing can be made of it.

Readers run in order of authority; the first that recognises the message decides:

1. ARF feedback reports (RFC 5965; complaints, DMARC failure reports),
2. RFC 3464 DSNs, one report per recipient block,
3. DMARC aggregate reports (RFC 7489),
4. mail to ``unsubscribe+<token>@`` (RFC 2369 mailto unsubscribe): nothing automatic is ever
   addressed there, so even a client that marks its unsubscribe mail Auto-Submitted counts,
5. auto-replies with vendor headers or subjects ("Автоответ:"),
6. non-standard bounces (flufl.bounce plus the text next to each address),
7. anything else with ``Auto-Submitted`` (RFC 3834),
8. otherwise one UNKNOWN report (reason ``human_message``: a reply, a forward, spam): recorded,
   never acted on; :mod:`worker.feedback.replies` may forward it to the operator's inbox.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable

from worker.feedback.classification import Classification, FeedbackKind, Reason
from worker.feedback.mail import (
    abuse_report,
    auto_reply,
    delivery_status,
    dmarc_aggregate,
    plain_bounce,
    unsubscribe_request,
)
from worker.feedback.mail.mail import InboundMail
from worker.feedback.report import FeedbackReport, hashed_event_id
from worker.sending.identity import BOUNCE_PREFIX, UNSUBSCRIBE_PREFIX

__all__ = ["FeedbackReport", "parse_inbound"]

log = logging.getLogger(__name__)

_Reader = Callable[[InboundMail], list[FeedbackReport]]


def parse_inbound(
    raw: bytes,
    *,
    verp_prefix: str = BOUNCE_PREFIX,
    envelope_recipient: str | None = None,
    unsubscribe_prefix: str = UNSUBSCRIBE_PREFIX,
) -> list[FeedbackReport]:
    """Read one inbound message (RFC 5322 bytes, LF or CRLF) into feedback reports.

    ``verp_prefix`` is the local-part prefix of our envelope sender (``bounces+<token>@…``);
    ``envelope_recipient`` the RCPT TO the receiver accepted it for, when known (more trustworthy
    than the headers); ``unsubscribe_prefix`` the one of the List-Unsubscribe mailto address.

    Returns [] for empty input, otherwise at least one report. Never raises: broken MIME, huge
    input, undeclared charsets, deep nesting and thousands of recipient blocks cost bounded work
    (see :mod:`worker.feedback.mail.parts`) and at worst yield one UNKNOWN report.
    """
    if not raw or not raw.strip():
        return []
    try:
        mail = InboundMail.parse(
            raw, verp_prefix=verp_prefix, envelope_recipient=envelope_recipient
        )
        for reader in _readers(unsubscribe_prefix):
            reports = reader(mail)
            if reports:
                return reports
        return [mail.unknown(Reason.HUMAN_MESSAGE)]
    except Exception:  # hostile input must never take the receiver down; the raw is stored
        log.warning("inbound message of %d bytes could not be read", len(raw), exc_info=True)
        return [_unreadable(raw)]


def _readers(unsubscribe_prefix: str) -> tuple[_Reader, ...]:
    return (
        abuse_report.read,
        delivery_status.read,
        dmarc_aggregate.read,
        lambda mail: unsubscribe_request.read(mail, prefix=unsubscribe_prefix),
        auto_reply.read_strong,
        plain_bounce.read,
        auto_reply.read_weak,
    )


def _unreadable(raw: bytes) -> FeedbackReport:
    classification = Classification(FeedbackKind.UNKNOWN, Reason.UNCLASSIFIED, False)
    return FeedbackReport(
        kind=classification.kind,
        classification=classification,
        recipient=None,
        status=None,
        diagnostic="unreadable message",
        original_message_id=None,
        verp_local=None,
        feedback_type=None,
        source_event_id=hashed_event_id("mail", hashlib.sha256(raw).hexdigest()),
    )
