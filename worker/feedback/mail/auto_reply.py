"""Automatic responses (RFC 3834): out-of-office and other robots answering our mail.

They come to the VERP address with a null sender, exactly like a bounce, yet say nothing about
the address. Two strengths of evidence: vendor auto-reply headers and localised subject prefixes
("Automatic reply:", "Автоответ:") are read before non-standard bounces; a bare
``Auto-Submitted: auto-replied`` only after them, because bounce generators set it too.
"""

from __future__ import annotations

import re

from worker.feedback.classification import Classification, FeedbackKind, Reason
from worker.feedback.mail.mail import InboundMail
from worker.feedback.report import FeedbackReport

# X-Autoreply/X-Autorespond: Yandex, mail.ru, vacation(1); X-MS-Exchange-Inbox-Rules-Loop and
# X-Auto-Response-Suppress are set by Exchange on its own automatic replies.
_VENDOR_HEADERS = ("X-Autoreply", "X-Autorespond", "X-Autoresponder", "X-Mail-Autoreply")
_SUBJECT_PREFIX = re.compile(
    r"^\s*(?:re:\s*)?(?:automatic reply|auto[- ]?reply|autoreply|auto:|out of (?:the )?office|"
    r"abwesenheitsnotiz|automatische antwort|réponse automatique|respuesta automática|"
    r"risposta automatica|automatisch antwoord|autosvar|odpowiedź automatyczna|"
    r"автоответ|автоматический ответ|вне офиса|нет на месте|аўтаадказ|аўтаматычны адказ)",
    re.IGNORECASE,
)
_OUT_OF_OFFICE = re.compile(
    r"out of (?:the )?office|away (?:from|until)|on (?:vacation|holiday|leave)|"
    r"abwesen|vacances|в отпуске|вне офиса|нет на месте|в адпачынку|автоответ|automatic reply",
    re.IGNORECASE,
)


def read_strong(mail: InboundMail) -> list[FeedbackReport]:
    """An AUTO_REPLY report when vendor headers or the subject say so; else []."""
    vendor = any(mail.header(name) for name in _VENDOR_HEADERS)
    precedence = (mail.header("Precedence") or "").strip().lower() == "auto_reply"
    if vendor or precedence or _SUBJECT_PREFIX.match(mail.header("Subject") or ""):
        return [_report(mail)]
    return []


def read_weak(mail: InboundMail) -> list[FeedbackReport]:
    """An AUTO_REPLY report for any ``Auto-Submitted`` other than ``no`` (RFC 3834 §5); else []."""
    value = (mail.header("Auto-Submitted") or "").strip().lower()
    if value and not value.startswith("no"):
        return [_report(mail)]
    return []


def _report(mail: InboundMail) -> FeedbackReport:
    text = f"{mail.header('Subject') or ''}\n{mail.human_text[:4000]}"
    reason = Reason.OUT_OF_OFFICE if _OUT_OF_OFFICE.search(text) else Reason.AUTO_REPLIED
    classification = Classification(FeedbackKind.AUTO_REPLY, reason, False)
    return mail.report(classification, source="auto_reply", recipient=mail.sender)
