"""SMTP adapter: a ``Mailer`` over smtplib that reuses one connection and never raises.

URL forms: ``smtp://host:port`` (plain; STARTTLS when offered, if ``?starttls=1``),
``smtp+starttls://user:pass@host:587`` (STARTTLS required), ``smtps://user:pass@host:465``
(implicit TLS, RFC 8314). Replies are returned as ``SmtpOutcome``; the connection is dropped and
re-opened after any error that may have left it in an unknown state.
"""

from __future__ import annotations

import re
import smtplib
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from worker.sending.ports import SmtpOutcome


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
            raise ValueError(
                f"unknown SMTP URL scheme {parts.scheme!r} (smtp, smtp+starttls, smtps)"
            )
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=port,
            tls=tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )


def quote_periods(data: bytes) -> bytes:
    """Dot-stuffing (RFC 5321 §4.5.2): a line starting with "." gets another one.

    Byte-identical to ``smtplib._quote_periods`` (the regex ``(?m)^\\.``, where a line starts at
    the beginning and after every LF, so both CRLF and bare-LF lines) without the regex, which
    took most of smtplib's CPU for a 40 KB message. ``bytes.replace`` never overlaps matches,
    and neither does the regex: "\\n..x" becomes "\\n...x" both ways.
    """
    data = data.replace(b"\n.", b"\n..")
    return b"." + data if data[:1] == b"." else data


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
        return self.content(msg)

    def content(self, msg: bytes) -> tuple[int, bytes]:
        """After a 354: the dot-stuffed message and its final dot; returns the reply."""
        q = quote_periods(msg)
        if q[-2:] != smtplib.bCRLF:
            q = q + smtplib.bCRLF
        q = q + b"." + smtplib.bCRLF
        self.send(q)
        self.data_sent = True  # from here a lost reply means "maybe accepted"
        code, reply = self.getreply()
        self.last_data_reply = (code, reply)
        return code, reply


class _TrackingSMTPSSL(smtplib.SMTP_SSL, _TrackingSMTP):
    pass


class _StaleConnection(Exception):
    """A reused connection turned out to be closed before anything of this message was sent."""


class SmtpMailer:
    """A ``Mailer`` (see ``worker.sending.ports``) with one reused connection; not thread-safe.

    One SMTP transaction per recipient (MAIL, RCPT, DATA, RFC 5321 §3.3) so that every reply is
    that recipient's; the three commands go in one write when the relay offers PIPELINING
    (RFC 2920), and ``before_data`` (the fence) runs between the 354 and the message.
    ``ssl_context`` verifies the relay's certificate (default: the system CAs, or the ``cafile``
    URL parameter). ``settle_seconds``: after a connection closed, a new one is opened no sooner
    than this (the relay still counts the closed session for a moment, and the new one takes the
    same connection slot).
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 60.0,
        local_hostname: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        settle_seconds: float = 0.0,
    ) -> None:
        self.target = SmtpTarget.from_url(url)
        self.settle_seconds = settle_seconds
        self._closed_at = float("-inf")
        self.timeout = timeout
        self.local_hostname = local_hostname
        cafile = parse_qs(urlsplit(url).query).get("cafile", [None])[0]
        self.ssl_context = ssl_context or ssl.create_default_context(cafile=cafile)
        self._conn: _TrackingSMTP | None = None
        self._reused = False
        self.connections_opened = 0

    def _connect(self) -> _TrackingSMTP:
        time.sleep(max(0.0, self._closed_at + self.settle_seconds - time.monotonic()))
        t = self.target
        conn: _TrackingSMTP
        if t.tls == "implicit":
            conn = _TrackingSMTPSSL(
                t.host,
                t.port,
                timeout=self.timeout,
                local_hostname=self.local_hostname,
                context=self.ssl_context,
            )
        else:
            conn = _TrackingSMTP(
                t.host, t.port, timeout=self.timeout, local_hostname=self.local_hostname
            )
        try:
            conn.ehlo_or_helo_if_needed()
            if t.tls == "starttls" or (t.tls == "opportunistic" and conn.has_extn("starttls")):
                conn.starttls(context=self.ssl_context)
                conn.ehlo()
            if t.username:
                conn.login(t.username, t.password or "")
        except BaseException:
            conn.close()
            raise
        self.connections_opened += 1
        return conn

    def extensions(self) -> frozenset[str]:
        """The ESMTP extensions the relay offers, lower case (``smtputf8``, ``pipelining``, …;
        RFC 5321 §4.1.1.1), read after STARTTLS and login. Raises ``OSError`` or
        ``smtplib.SMTPException`` when the relay cannot be reached or refuses the login."""
        if self._conn is None:
            self._conn = self._connect()
            self._reused = False
        return frozenset(self._conn.esmtp_features)

    def supports_smtputf8(self) -> bool:
        """Whether the relay offers SMTPUTF8 (RFC 6531), False if unreachable."""
        try:
            if self._conn is None:
                self._conn = self._connect()
                self._reused = False
            return bool(self._conn.has_extn("smtputf8"))
        except (smtplib.SMTPException, OSError):
            self.close()
            return False

    def send(
        self,
        envelope_from: str,
        recipient: str,
        message: bytes,
        *,
        smtputf8: bool,
        before_data: Callable[[], bool] | None = None,
    ) -> SmtpOutcome:
        """See ``worker.sending.ports.Mailer.send``. A reused connection found closed is re-opened
        once."""
        for _ in range(2):
            if self._conn is None:
                try:
                    self._conn = self._connect()
                    self._reused = False
                except smtplib.SMTPResponseException as exc:  # e.g. 421 greeting, 535 auth
                    self.close()
                    # A refused session is the relay's or our configuration's problem, never the
                    # recipient's: only a 4xx code is kept, anything else is "no reply" (retried).
                    code = exc.smtp_code if 400 <= exc.smtp_code < 500 else 0
                    return SmtpOutcome(
                        code,
                        f"session refused: {exc.smtp_code} {_text(exc.smtp_error)}",
                        at_connect=True,
                    )
                except (smtplib.SMTPException, OSError) as exc:
                    self.close()
                    return SmtpOutcome(0, f"connection failed: {exc}", at_connect=True)
            try:
                outcome = self._transaction(
                    self._conn, envelope_from, recipient, message, smtputf8, before_data
                )
            except _StaleConnection:
                self.close()
                continue
            self._reused = self._conn is not None
            return outcome
        return SmtpOutcome(0, "connection lost before MAIL")

    def _transaction(
        self,
        conn: _TrackingSMTP,
        envelope_from: str,
        recipient: str,
        message: bytes,
        smtputf8: bool,
        before_data: Callable[[], bool] | None,
    ) -> SmtpOutcome:
        if "\r" in envelope_from + recipient or "\n" in envelope_from + recipient:
            # never a second command smuggled into a (pipelined) group of commands
            return SmtpOutcome(553, "5.1.3 a line break in an address", local=True)
        options: list[str] = []
        if smtputf8:
            if not conn.has_extn("smtputf8"):
                return SmtpOutcome(
                    553,
                    "5.6.7 the relay does not offer SMTPUTF8, needed for this address "
                    "(RFC 6531 §3.5)",
                    local=True,
                )
            options.append("SMTPUTF8")
            if conn.has_extn("8bitmime"):
                options.append("BODY=8BITMIME")
        conn.data_sent = False
        if conn.has_extn("pipelining"):
            return self._pipelined(conn, envelope_from, recipient, message, options, before_data)
        try:
            code, reply = conn.mail(envelope_from, options)
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            if self._reused:
                raise _StaleConnection from exc
            self.close()
            return SmtpOutcome(0, f"connection lost before MAIL: {exc}")
        if code != 250:
            return self._refused(code, reply)
        try:
            code, reply = conn.rcpt(recipient)
            if code not in (250, 251):
                return self._refused(code, reply)
            if before_data is not None and not before_data():
                conn.rset()
                return SmtpOutcome(0, "not sent: the claim was taken back before DATA", local=True)
            code, reply = conn.data(message)
        except smtplib.SMTPDataError as exc:  # DATA itself refused (no 354)
            return self._refused(exc.smtp_code, exc.smtp_error)
        except (smtplib.SMTPException, OSError) as exc:
            return self._lost(conn, exc)
        return self._answered(code, reply)

    def _pipelined(
        self,
        conn: _TrackingSMTP,
        envelope_from: str,
        recipient: str,
        message: bytes,
        options: list[str],
        before_data: Callable[[], bool] | None,
    ) -> SmtpOutcome:
        """MAIL, RCPT and DATA in one write, then their three replies in order (RFC 2920 §3.1:
        DATA is the last command of a group; the server refuses it, 503 or 554, without a valid
        recipient). Nothing of the message leaves before all three replies are read and
        ``before_data`` (the fence) passed; a closed fence after the 354 drops the connection
        without the final dot, so the relay discards the transaction (RFC 5321 §4.1.1.4)."""
        extra = "".join(f" {option}" for option in options)
        encoding = "utf-8" if "SMTPUTF8" in options else "ascii"
        group = (
            f"MAIL FROM:{_path(envelope_from)}{extra}\r\nRCPT TO:{_path(recipient)}\r\nDATA\r\n"
        ).encode(encoding)
        try:
            conn.send(group)
            mail = conn.getreply()
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            if self._reused:  # an idle connection the relay closed: nothing was handed over
                raise _StaleConnection from exc
            self.close()
            return SmtpOutcome(0, f"connection lost before MAIL: {exc}")
        try:
            rcpt = conn.getreply()
            data = conn.getreply()
            if data[0] == 354 and (mail[0] != 250 or rcpt[0] not in (250, 251)):
                # a server that opened DATA anyway gets an empty message it cannot deliver
                # (RFC 2920 §3.1: the client sends the lone dot)
                conn.send(b".\r\n")
                conn.getreply()
            if mail[0] != 250:
                return self._refused(*mail)
            if rcpt[0] not in (250, 251):
                return self._refused(*rcpt)
            if data[0] != 354:
                return self._refused(*data)
            if before_data is not None and not before_data():
                self._drop()
                return SmtpOutcome(0, "not sent: the claim was taken back before DATA", local=True)
            code, reply = conn.content(message)
        except (smtplib.SMTPException, OSError) as exc:
            return self._lost(conn, exc)
        return self._answered(code, reply)

    def _lost(self, conn: _TrackingSMTP, exc: Exception) -> SmtpOutcome:
        """The connection broke mid-transaction: uncertain once the final dot went out (the
        relay may have the message)."""
        uncertain = conn.data_sent
        self.close()
        return SmtpOutcome(0, f"connection lost: {exc}", uncertain=uncertain)

    def _answered(self, code: int, reply: bytes | str) -> SmtpOutcome:
        """The relay's reply to the message; a 421 closes the connection (RFC 5321 §3.8)."""
        if code == 421:
            self.close()
        return SmtpOutcome(code, _text(reply))

    def _refused(self, code: int, reply: bytes | str) -> SmtpOutcome:
        """A refusal before the message was handed over: reset the transaction (or drop the
        connection after a 421, RFC 5321 §3.8) and report it."""
        if code == 421 or code < 0 or self._conn is None:
            self.close()
        else:
            try:
                self._conn.rset()
            except (smtplib.SMTPException, OSError):
                self.close()
        return SmtpOutcome(code, _text(reply))

    def reset(self) -> bool:
        """RSET on an open connection kept between batches (RFC 5321 §4.1.1.5): True if it still
        answers; a dead one is closed (the next ``send`` opens a new one)."""
        if self._conn is None:
            return False
        try:
            code, _ = self._conn.rset()
        except (smtplib.SMTPException, OSError):
            self.close()
            return False
        if code != 250:
            self.close()
        return code == 250

    def _drop(self) -> None:
        """Close the socket without QUIT (mid-DATA, a QUIT would be taken as message text)."""
        conn, self._conn = self._conn, None
        self._reused = False
        if conn is not None:
            conn.close()
        self._closed_at = time.monotonic()  # the settle time applies to a drop too

    def close(self) -> None:
        conn, self._conn = self._conn, None
        self._reused = False
        if conn is None:
            return
        try:
            conn.quit()
        except (smtplib.SMTPException, OSError):
            conn.close()
        self._closed_at = time.monotonic()


_PLAIN_PATH = re.compile(r"[^<>()\[\]\\,;:\s\"]+@[^<>()\[\]\\,;:\s\"@]+")


def _path(address: str) -> str:
    """``<address>`` (RFC 5321 §4.1.2 Path). A plain addr-spec (what signup validation keeps)
    is bracketed as it is; anything else goes through ``smtplib.quoteaddr``, whose address
    parsing (``email.utils``) cost more per message than the rest of the SMTP exchange."""
    if _PLAIN_PATH.fullmatch(address):
        return f"<{address}>"
    return smtplib.quoteaddr(address)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
