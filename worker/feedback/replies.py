"""Human replies at the bounce address, forwarded to the operator's inbox.

Readers answer the newsletter, or forward it back, to whatever address they see; some of that
reaches the bounce address. The inbound readers record it as UNKNOWN with reason
``human_message``; with ``NEWSLETTER_REPLIES_TO`` set, :class:`ReplyForwarder` forwards it there
as an attachment over the project's SMTP relay, and the event's effect becomes ``forwarded``.

Loop-safe (RFC 3834 §2, §5): only to the configured inbox, never to a reader; never a message
with the null reverse-path (DSNs, most auto-replies), with ``Auto-Submitted`` other than ``no``,
``Precedence: bulk/junk/list/auto_reply``, vendor auto-reply headers, list headers, from our own
domains or from the replies inbox itself, or one of our own forwards; each forward is marked
``Auto-Submitted: auto-forwarded`` and leaves from the plain bounce address, so whatever comes
back is not forwarded again. At most ``NEWSLETTER_REPLIES_PER_HOUR`` forwards per hour.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from email import message_from_bytes
from email import policy as email_policy
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.utils import format_datetime, getaddresses

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from worker.feedback.classification import FeedbackKind, Reason
from worker.feedback.policy import Effect
from worker.feedback.report import FeedbackReport
from worker.models import FeedbackEvent, InboundMessage
from worker.sending.identity import BOUNCE_PREFIX, bounce_address, transactional_message_id
from worker.sending.ports import Mailer
from worker.sending.smtp import SmtpMailer
from worker.settings import Settings

log = logging.getLogger(__name__)

FORWARDED_HEADER = "X-Newsletter-Forwarded"
_LOOP_HEADERS = (
    FORWARDED_HEADER,
    "X-Autoreply",
    "X-Autorespond",
    "X-Autoresponder",
    "X-Mail-Autoreply",
    "X-Auto-Response-Suppress",
    "List-Id",
    "List-Unsubscribe",
    "X-Loop",
)
_AUTOMATIC_PRECEDENCE = frozenset({"bulk", "junk", "list", "auto_reply"})
_MAX_ATTACHED_BYTES = 1024 * 1024  # bigger originals go as their headers only


@dataclass(frozen=True)
class ReplyForwarder:
    """Forwards human mail to ``to``. ``sender``: envelope sender and From (the plain bounce
    address); ``own_domains``: mail from these is ours, never forwarded; ``per_hour``: the cap;
    ``mailer``: makes the SMTP mailer for one forward (it is closed after)."""

    to: str
    sender: str
    own_domains: frozenset[str]
    per_hour: int
    message_id_domain: str
    mailer: Callable[[], Mailer]

    @classmethod
    def from_settings(cls, settings: Settings) -> ReplyForwarder | None:
        """The forwarder of ``NEWSLETTER_REPLIES_TO``; None when it is unset."""
        if not settings.replies_to.strip():
            return None
        return cls(
            to=settings.replies_to.strip(),
            sender=bounce_address(settings.bounce_domain),
            own_domains=frozenset(
                {settings.bounce_domain.lower(), settings.sending_domain.lower()}
            ),
            per_hour=settings.replies_per_hour,
            message_id_domain=settings.sending_domain,
            mailer=lambda: SmtpMailer(settings.smtp_url, timeout=settings.smtp_timeout_seconds),
        )

    def handle(
        self,
        session: Session,
        message: InboundMessage,
        report: FeedbackReport,
        event_id: int,
        now: datetime,
    ) -> bool:
        """Forward ``message`` if ``report`` says a human wrote it and nothing makes it unsafe;
        sets the event's effect to ``forwarded`` and flushes. True when forwarded. Never raises
        for SMTP errors (logged; the message stays stored)."""
        if report.kind != FeedbackKind.UNKNOWN or report.classification.reason != (
            Reason.HUMAN_MESSAGE
        ):
            return False
        why_not = self.refusal(message.raw, message.envelope_from)
        if why_not is not None:
            log.info("inbound message %d not forwarded: %s", message.id, why_not)
            return False
        if self._sent_within_hour(session, now) >= self.per_hour:
            log.warning(
                "inbound message %d not forwarded: %d forwards in the last hour "
                "(NEWSLETTER_REPLIES_PER_HOUR)",
                message.id,
                self.per_hour,
            )
            return False
        if not self._send(message, now):
            return False
        event = session.get(FeedbackEvent, event_id)
        if event is not None:
            event.effect = Effect.FORWARDED
        session.flush()
        return True

    def refusal(self, raw: bytes, envelope_from: str | None) -> str | None:
        """Why forwarding ``raw`` could loop (a short reason), or None when it is safe."""
        sender = (envelope_from or "").strip().strip("<>")
        if not sender:
            return "null reverse-path (RFC 5321 §4.5.5)"
        headers = BytesHeaderParser(policy=email_policy.compat32).parsebytes(raw)
        auto = str(headers.get("Auto-Submitted", "no")).split(";", 1)[0].strip().lower()
        if auto != "no":
            return f"Auto-Submitted: {auto[:20]} (RFC 3834 §5)"
        if str(headers.get("Precedence", "")).strip().lower() in _AUTOMATIC_PRECEDENCE:
            return "Precedence of automatic mail"
        for name in _LOOP_HEADERS:
            if headers.get(name) is not None:
                return f"{name} header"
        froms = [a for _, a in getaddresses([str(v) for v in headers.get_all("From", [])])]
        for address in (sender, *froms):
            local, _, domain = address.lower().rpartition("@")
            if domain.rstrip(".") in self.own_domains or local.startswith(f"{BOUNCE_PREFIX}+"):
                return "mail from our own domain"
            if address.lower() == self.to.lower():
                return "mail from the replies inbox itself"
        return None

    def _sent_within_hour(self, session: Session, now: datetime) -> int:
        return int(
            session.scalar(
                select(func.count())
                .select_from(FeedbackEvent)
                .where(
                    FeedbackEvent.effect == Effect.FORWARDED,
                    FeedbackEvent.recorded_at > now - timedelta(hours=1),
                )
            )
            or 0
        )

    def _send(self, message: InboundMessage, now: datetime) -> bool:
        mailer = self.mailer()
        try:
            outcome = mailer.send(self.sender, self.to, self.compose(message, now), smtputf8=False)
        finally:
            mailer.close()
        if outcome.code // 100 != 2:
            log.warning(
                "inbound message %d not forwarded: the relay answered %d", message.id, outcome.code
            )
            return False
        log.info("inbound message %d forwarded to the replies inbox", message.id)
        return True

    def compose(self, message: InboundMessage, now: datetime) -> bytes:
        """The forward (RFC 5322, CRLF): a note and the original attached as ``message/rfc822``
        (its headers only as ``text/rfc822-headers`` when it is over 1 MiB or was truncated)."""
        raw = message.raw
        original = BytesHeaderParser(policy=email_policy.default).parsebytes(raw)
        subject = " ".join(str(original.get("Subject", "")).split())[:200]
        forward = EmailMessage(policy=email_policy.SMTP)
        forward["From"] = self.sender
        forward["To"] = self.to
        forward["Subject"] = (
            f"Fwd: {subject}" if subject else "Fwd: a message to the bounce address"
        )
        forward["Date"] = format_datetime(now)
        forward["Message-ID"] = transactional_message_id("reply-forward", self.message_id_domain)
        forward["Auto-Submitted"] = "auto-forwarded"  # RFC 3834 §5: nobody answers this
        forward[FORWARDED_HEADER] = str(message.id)
        reply_to = [a for _, a in getaddresses([str(original.get("From", ""))]) if "@" in a]
        if reply_to:
            forward["Reply-To"] = reply_to[0]
        forward.set_content(
            "A person wrote to the newsletter's bounce address; the message is attached.\n"
            f"Stored as inbound message {message.id}. Replying answers its sender.\n"
        )
        if len(raw) <= _MAX_ATTACHED_BYTES and not message.truncated:
            attached = message_from_bytes(raw, policy=email_policy.compat32)
            forward.add_attachment(attached)  # message/rfc822, 7bit/8bit as RFC 2046 §5.2.1 wants
        else:
            head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
            forward.add_attachment(
                head.decode("utf-8", "replace"), subtype="rfc822-headers", disposition="inline"
            )
        return forward.as_bytes()
