"""Unsubscribe by mail: a message to the List-Unsubscribe mailto address (RFC 2369 §3.2).

Our List-Unsubscribe names ``mailto:unsubscribe+<token>@<domain>``; mail clients send an empty
message there. The token is what authorises the request (the caller checks it); the From address
is only recorded.
"""

from __future__ import annotations

from worker.feedback.classification import Classification, FeedbackKind, Reason
from worker.feedback.mail.mail import InboundMail
from worker.feedback.mail.original_message import first_verp
from worker.feedback.report import FeedbackReport

_UNSUBSCRIBE = Classification(FeedbackKind.UNSUBSCRIBE, Reason.LIST_UNSUBSCRIBE, False)


def read(mail: InboundMail, *, prefix: str) -> list[FeedbackReport]:
    """An UNSUBSCRIBE report with the token if ``mail`` went to ``<prefix>+<token>@…``; else []."""
    token = first_verp(mail.recipients, prefix)
    if not token:
        return []
    return [
        mail.report(_UNSUBSCRIBE, source="mailto", recipient=mail.sender, unsubscribe_token=token)
    ]
