"""SMTP adapter: a ``Mailer`` over smtplib that reuses one connection and never raises.

URL forms: ``smtp://host:port`` (plain; STARTTLS when offered, if ``?starttls=1``),
``smtp+starttls://user:pass@host:587`` (STARTTLS required), ``smtps://user:pass@host:465``
(implicit TLS, RFC 8314). Replies are returned as ``SmtpOutcome``; the connection is dropped and
re-opened after any error that may have left it in an unknown state.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from worker.ports import SmtpOutcome


@dataclass(frozen=True)
class SmtpTarget:
    host: str
    port: int
    tls: str  # "none", "starttls", "implicit", "opportunistic"
    username: str | None
    password: str | None

    @classmethod
    def from_url(cls, url: str) -> SmtpTarget:
        """Parse an SMTP URL; raises ``ValueError`` for an unknown scheme."""
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        scheme = parts.scheme.lower()
        if scheme == "smtp":
            tls = "opportunistic" if query.get("starttls") == ["1"] else "none"
            port = parts.port or 25
        elif scheme == "smtp+starttls":
            tls, port = "starttls", parts.port or 587
        elif scheme == "smtps":
            tls, port = "implicit", parts.port or 465
        else:
            raise ValueError(f"unknown SMTP URL scheme {parts.scheme!r} (smtp, smtp+starttls, smtps)")
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=port,
            tls=tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )


class _TrackingSMTP(smtplib.SMTP):
    """smtplib.SMTP that remembers whether the end of DATA reached the server."""

    data_sent = False
    last_data_reply: tuple[int, bytes] = (250, b"")

    def data(self, msg: Any) -> tuple[int, bytes]:
        self.data_sent = False
        self.putcmd("data")
        code, repl = self.getreply()
        if code != 354:
            raise smtplib.SMTPDataError(code, repl)
        q = smtplib._quote_periods(msg)  # type: ignore[attr-defined]
        if q[-2:] != smtplib.bCRLF:
            q = q + smtplib.bCRLF
        q = q + b"." + smtplib.bCRLF
        self.send(q)
        self.data_sent = True  # from here a lost reply means "maybe accepted"
        code, msg = self.getreply()
        self.last_data_reply = (code, msg)
        return code, msg


class _TrackingSMTPSSL(smtplib.SMTP_SSL, _TrackingSMTP):
    pass


class SmtpMailer:
    """A ``Mailer`` (see ``worker.ports``) with one reused connection; not thread-safe."""

    def __init__(self, url: str, *, timeout: float = 60.0, local_hostname: str | None = None) -> None:
        self.target = SmtpTarget.from_url(url)
        self.timeout = timeout
        self.local_hostname = local_hostname
        self._conn: _TrackingSMTP | None = None

    def _connect(self) -> _TrackingSMTP:
        t = self.target
        conn: _TrackingSMTP
        if t.tls == "implicit":
            conn = _TrackingSMTPSSL(
                t.host, t.port, timeout=self.timeout, local_hostname=self.local_hostname,
                context=ssl.create_default_context(),
            )
        else:
            conn = _TrackingSMTP(t.host, t.port, timeout=self.timeout, local_hostname=self.local_hostname)
        conn.ehlo_or_helo_if_needed()
        if t.tls == "starttls" or (t.tls == "opportunistic" and conn.has_extn("starttls")):
            conn.starttls(context=ssl.create_default_context())
            conn.ehlo()
        if t.username:
            conn.login(t.username, t.password or "")
        return conn

    def supports_smtputf8(self) -> bool:
        """Whether the relay offers SMTPUTF8 (RFC 6531); connects if needed. False if unreachable."""
        try:
            if self._conn is None:
                self._conn = self._connect()
            return bool(self._conn.has_extn("smtputf8"))
        except (smtplib.SMTPException, OSError):
            self.close()
            return False

    def send(self, envelope_from: str, recipient: str, message: bytes, *, smtputf8: bool) -> SmtpOutcome:
        """See ``worker.ports.Mailer.send``."""
        try:
            if self._conn is None:
                self._conn = self._connect()
        except smtplib.SMTPResponseException as exc:
            self.close()
            return SmtpOutcome(exc.smtp_code, _text(exc.smtp_error))
        except (smtplib.SMTPException, OSError) as exc:
            self.close()
            return SmtpOutcome(0, f"connection failed: {exc}")
        conn = self._conn
        options: list[str] = []
        if smtputf8:
            if not conn.has_extn("smtputf8"):
                return SmtpOutcome(553, "5.6.7 the relay does not offer SMTPUTF8 (RFC 6531 §3.7.5)")
            options.append("SMTPUTF8")
        conn.data_sent = False
        try:
            conn.sendmail(envelope_from, [recipient], message, mail_options=options)
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = next(iter(exc.recipients.values()))
            if code == 421:
                self.close()
            return SmtpOutcome(code, _text(text))
        except smtplib.SMTPResponseException as exc:  # sender refused, data error, 421 anywhere
            if exc.smtp_code == 421 or exc.smtp_code < 0:
                self.close()
            return SmtpOutcome(exc.smtp_code, _text(exc.smtp_error))
        except (smtplib.SMTPException, OSError, socket.timeout) as exc:
            uncertain = conn.data_sent
            self.close()
            return SmtpOutcome(0, f"connection lost: {exc}", uncertain=uncertain)
        code, text = conn.last_data_reply
        return SmtpOutcome(code, _text(text))

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.quit()
        except (smtplib.SMTPException, OSError):
            conn.close()


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
