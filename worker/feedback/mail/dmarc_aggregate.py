"""DMARC aggregate reports (RFC 7489 §7.2) in the bounce mailbox: recorded, never acted on.

They arrive as a zipped or gzipped XML attachment named ``receiver!domain!begin!end[!id].xml.gz``
with a subject ``Report Domain: … Submitter: … Report-ID: …`` (RFC 7489 §7.2.1.1).
"""

from __future__ import annotations

import re

from worker.feedback.classification import Classification, FeedbackKind, Reason
from worker.feedback.mail.mail import InboundMail
from worker.feedback.report import FeedbackReport

_ATTACHMENT_TYPES = frozenset(
    {
        "application/gzip",
        "application/x-gzip",
        "application/zip",
        "application/x-zip-compressed",
        "application/xml",
        "text/xml",
    }
)
_FILENAME = re.compile(r"^[^!]+![^!]+!\d+!\d+(?:![^!]*)?\.(?:xml|zip|xml\.gz|gz)$", re.IGNORECASE)
_SUBJECT = re.compile(r"report[ -]domain:", re.IGNORECASE)
_AGGREGATE = Classification(FeedbackKind.DMARC_REPORT, Reason.DMARC_AGGREGATE, False)


def read(mail: InboundMail) -> list[FeedbackReport]:
    """One DMARC_REPORT report if ``mail`` is an aggregate report, else []."""
    subject_matches = bool(_SUBJECT.search(mail.header("Subject") or ""))
    for part in mail.parts:
        if part.content_type not in _ATTACHMENT_TYPES:
            continue
        try:
            filename = part.message.get_filename() or ""
        except Exception:
            filename = ""
        if subject_matches or _FILENAME.match(filename.strip()):
            return [mail.report(_AGGREGATE, source="dmarc", recipient=None)]
    return []
