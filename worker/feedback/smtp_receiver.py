"""The inbound SMTP receiver for the bounce domain (aiosmtpd): store, then parse and record.

``newsletter inbound smtp --listen HOST:PORT`` serves the VERP bounce addresses
(``bounces+…@<bounce domain>``), the mailto unsubscribe address and the FBL address. For each
message: the raw bytes are committed to ``inbound_message`` first; only then is ``250`` given.
If storing fails (database down, disk full) the reply is ``451 4.3.0`` so the sending MTA retries
later (RFC 5321 §4.2.1, RFC 3463 4.3.0 "other mail system problem"): a 250 is never given for a
message that is not stored. Parsing and recording follow in the same request; a failure there
leaves the message stored with ``parse_error`` set (``newsletter inbound reprocess`` retries).

Messages over ``inbound_max_bytes`` are refused by aiosmtpd with ``552`` (RFC 1870 SIZE, RFC
5321 §4.5.3.1.10; the excess is discarded as it arrives, not buffered); recipients outside the
bounce domain are refused with ``550 5.1.1`` (not an open drop box). At most
``inbound_max_sessions`` sessions run at once: one more is greeted with ``421 4.3.2`` and closed
(RFC 5321 §3.1 and §4.2.3, RFC 3463 4.3.2 "system not accepting network messages"), which a
sending MTA treats as "try again later". Memory is so bounded by sessions x message size. DATA
lines up to 1 MiB are accepted (:class:`LenientSMTP`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from worker.db import session_scope
from worker.feedback.inbound import InboundContext, process_inbound, store_inbound
from worker.models import InboundMessage
from worker.sending.ports import Clock, SystemClock
from worker.settings import Settings

log = logging.getLogger(__name__)


class InboundHandler:
    """aiosmtpd handler; the blocking database work runs in the loop's default executor."""

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.domains = {settings.bounce_domain.lower()}
        self.ctx = InboundContext.from_settings(settings)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        domain = address.rpartition("@")[2].lower().rstrip(".")
        if domain not in self.domains:
            return "550 5.1.1 not a mailbox of this receiver"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        loop = asyncio.get_running_loop()
        try:
            message_id = await loop.run_in_executor(
                None, self.store, raw, str(envelope.mail_from or ""), list(envelope.rcpt_tos)
            )
        except Exception:  # any storage failure: the sender must keep the message and retry
            log.exception("inbound message of %d bytes could not be stored", len(raw))
            return "451 4.3.0 cannot store the message now, try again later"
        await loop.run_in_executor(None, self.process, message_id)
        return "250 2.0.0 OK: stored"

    def store(self, raw: bytes, envelope_from: str, recipients: list[str]) -> int:
        """Commit ``raw``; returns the ``inbound_message`` id. Raises on any database error."""
        with session_scope(self.settings) as session:
            message = store_inbound(
                session,
                raw,
                source="smtp",
                now=self.clock.now(),
                max_bytes=self.settings.inbound_max_bytes,
                envelope_from=envelope_from,
                envelope_to=recipients,
            )
            return int(message.id)

    def process(self, message_id: int) -> None:
        """Parse and record a stored message; failures are kept on the row, never raised."""
        try:
            with session_scope(self.settings) as session:
                message = session.get(InboundMessage, message_id)
                if message is not None and message.parsed_at is None:
                    process_inbound(session, message, self.ctx, now=self.clock.now())
        except Exception as error:
            log.exception("inbound message %d stored but not processed", message_id)
            _note_error(self.settings, message_id, error)


def _note_error(settings: Settings, message_id: int, error: Exception) -> None:
    try:
        with session_scope(settings) as session:
            message = session.get(InboundMessage, message_id)
            if message is not None:
                message.parse_error = f"{type(error).__name__}: {error}"[:2000]
    except Exception:  # the database is gone too; the row stays unparsed for reprocessing
        log.warning("could not note the error of inbound message %d", message_id)


class SessionCap:
    """How many SMTP sessions are open, against a maximum (used on the event loop only)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        self.refused = 0

    def enter(self) -> bool:
        """Count one more session; False (and nothing counted) when ``limit`` are open."""
        if self.limit and self.open >= self.limit:
            self.refused += 1
            return False
        self.open += 1
        return True

    def leave(self) -> None:
        self.open -= 1


BUSY = b"421 4.3.2 too many connections, try again later\r\n"


class LenientSMTP(SMTP):
    """Accepts DATA lines up to 1 MiB: RFC 5321 §4.5.3.1.6 allows 1000 octets, but broken MTAs
    send longer lines in bounces, and a refused bounce is lost for good (its sender has nobody
    to return it to). The parser bounds its own work. With a ``SessionCap``, a connection over
    the cap gets ``421`` instead of the greeting and is closed."""

    line_length_limit = 1024 * 1024
    _over_cap = False

    def __init__(self, handler: Any, *, sessions: SessionCap | None = None, **kw: Any) -> None:
        super().__init__(handler, **kw)
        self.sessions = sessions

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self._original_transport is None  # not the same session after STARTTLS
        if first and self.sessions is not None and not self.sessions.enter():
            self._over_cap = True
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(BUSY)
            transport.close()
            return
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._over_cap:
            return
        if self.sessions is not None:
            self.sessions.leave()
        super().connection_lost(error)


class _Controller(Controller):
    sessions: SessionCap | None = None

    def factory(self) -> SMTP:
        return LenientSMTP(self.handler, sessions=self.sessions, **self.SMTP_kwargs)


class InboundServer:
    """The receiver on ``host:port`` in a background thread (``with`` or start/stop)."""

    def __init__(
        self, settings: Settings, host: str = "127.0.0.1", port: int = 2525, **kw: Any
    ) -> None:
        self.handler = InboundHandler(settings, kw.pop("clock", None))
        self.host, self.port = host, port
        self.controller = _Controller(
            self.handler,
            hostname=host,
            port=port,
            enable_SMTPUTF8=True,
            data_size_limit=settings.inbound_max_bytes,
            **kw,
        )
        self.sessions = self.controller.sessions = SessionCap(settings.inbound_max_sessions)

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()

    def __enter__(self) -> InboundServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:25`` for IPv6) as (host, port); ``ValueError`` if unreadable."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)
