"""Bounces without a DSN part: Exim, qmail, mail.ru/Yandex and other home-grown formats.

flufl.bounce finds the failed addresses (its detectors know dozens of MTA layouts); it reports
neither status nor reason, and calls a full mailbox "permanent" (see LIBRARY-NOTES), so the status
and the diagnostic are read here from the text next to each address, then classified like a DSN.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from flufl.bounce import all_failures

from worker.feedback.classification import classify_status, enhanced_status, reason_from_text
from worker.feedback.mail.mail import InboundMail
from worker.feedback.mail.parts import addresses, header_texts
from worker.feedback.report import FeedbackReport

log = logging.getLogger(__name__)

MAX_RECIPIENTS = 100
_MAX_PARTS_FOR_DETECTORS = 40  # flufl's detectors walk and regex every part: keep them cheap
_WINDOW_CHARS = 1000
_MAX_DIAGNOSTIC_CHARS = 500
_DAEMONS = re.compile(r"^(?:mailer-daemon|mail-daemon|postmaster|mail delivery subsystem)$", re.I)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|delivery (?:status notification|failure|has failed|failed)|"
    r"failure notice|returned mail|mail delivery failed|could not be delivered|mail failure|"
    r"не доставлен|недоставлен|ошибка доставки|не удалось доставить",
    re.IGNORECASE,
)
_ADDRESS = re.compile(r"[\w.+-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63})+")
_CODE_LINE = re.compile(r"(?<![\w.])(?:[245]\d\d[ -]|#?[245]\.\d{1,3}\.\d{1,3}(?!\w|\.\d))")


def read(mail: InboundMail) -> list[FeedbackReport]:
    """Reports for each failed address of a non-standard bounce; [] if ``mail`` is not one.

    A mailer-daemon message in which no detector finds an address falls back to the returned
    original's To, then to the first foreign address in the text; with no diagnostic either it
    gives one UNKNOWN report.
    """
    temporary, permanent = _detected(mail)
    failed = [a for v in header_texts(mail.message, "X-Failed-Recipients") for a in addresses(v)]
    detected = _unique([*failed, *permanent, *temporary])
    if not detected and not _from_mailer_daemon(mail):
        return []
    text = mail.human_text
    recipients: list[str | None] = list(detected[:MAX_RECIPIENTS])
    if not recipients:
        recipients = [mail.original.recipient or _address_in(mail, text)]
    reports = []
    for recipient in recipients:
        diagnostic = diagnostic_near(text, recipient)
        if not detected and diagnostic is None:
            return [mail.unknown(source="bounce_text")]
        delayed = recipient in temporary and recipient not in permanent
        action = "delayed" if delayed else "failed"
        status = enhanced_status(diagnostic)
        reports.append(
            mail.report(
                classify_status(status, diagnostic, action=action),
                source="bounce_text",
                recipient=recipient,
                status=status,
                diagnostic=diagnostic,
                action=action,
            )
        )
    return reports


def _address_in(mail: InboundMail, text: str) -> str | None:
    """The first address in the report text that is neither ours (VERP) nor the reporter's."""
    own = {(mail.sender or "").lower()}
    for match in _ADDRESS.finditer(text[: _WINDOW_CHARS * 8]):
        address = match.group(0).strip(".")
        local = address.split("@", 1)[0].lower()
        if address.lower() in own or "+" in local or _DAEMONS.match(local):
            continue
        return address
    return None


def _detected(mail: InboundMail) -> tuple[set[str], set[str]]:
    """flufl.bounce's (temporary, permanent) addresses as text; empty on huge or hostile input."""
    if len(mail.parts) > _MAX_PARTS_FOR_DETECTORS:
        return set(), set()
    if not mail.sender or not _plain_headers(mail):
        return set(), set()  # flufl's detectors raise on these; see _QuietDetectorErrors
    try:
        temporary, permanent = all_failures(mail.message)
    except Exception:  # a detector tripping on malformed input must not lose the message
        log.debug("flufl.bounce failed on %s", mail.identity, exc_info=True)
        return set(), set()
    return _decoded(temporary), _decoded(permanent)


def _plain_headers(mail: InboundMail) -> bool:
    """True when no part has a header with raw 8-bit bytes (compat32 returns a Header object)."""
    return all(isinstance(value, str) for part in mail.parts for value in part.message.values())


class _QuietDetectorErrors(logging.Filter):
    """flufl.bounce logs a traceback at ERROR for each detector that trips on malformed input,
    then re-raises; we catch that and record the message as unknown, so the log line is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Exception in detector")


logging.getLogger("flufl.bounce").addFilter(_QuietDetectorErrors())


def _decoded(found: frozenset[bytes]) -> set[str]:
    return {address.decode("ascii", "replace").strip("<> ") for address in found if b"@" in address}


def _from_mailer_daemon(mail: InboundMail) -> bool:
    sender = mail.sender or ""
    local = sender.rsplit("@", 1)[0]
    null_sender = (mail.header("Return-Path") or "").strip() in {"<>", ""}
    bounce_subject = bool(_BOUNCE_SUBJECT.search(mail.header("Subject") or ""))
    return bool(_DAEMONS.match(local)) or (null_sender and bounce_subject)


def _unique(items: list[str]) -> list[str]:
    seen: set[str] = set()
    result = []
    for item in items:
        key = item.lower()
        if key not in seen:
            seen.add(key)
            result.append(item)
    return result


def diagnostic_near(text: str, recipient: str | None) -> str | None:
    """The line with an SMTP reply or status code (else a known phrase) nearest after ``recipient``.

    Falls back to the first such line anywhere in ``text``. Continuation lines (indented) are
    joined. None when the text has neither.
    """
    start = text.lower().find(recipient.lower()) if recipient else -1
    windows = [text[start : start + _WINDOW_CHARS]] if start >= 0 else []
    windows.append(text[: _WINDOW_CHARS * 8])
    for window in windows:
        for finder in (_CODE_LINE.search, reason_from_text):
            line = _first_line(window, finder)
            if line:
                return line
    return None


def _first_line(window: str, finder: Callable[[str], object]) -> str | None:
    lines = window.splitlines()
    for index, line in enumerate(lines):
        if finder(line):
            joined = [line.strip()]
            following = lines[index + 1 : index + 3]
            joined.extend(more.strip() for more in following if more[:1] in " \t" and more.strip())
            return " ".join(joined)[:_MAX_DIAGNOSTIC_CHARS]
    return None
