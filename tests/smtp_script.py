"""A scriptable SMTP server for tests (aiosmtpd): answers each recipient from a script.

``script`` maps a recipient to the replies of its successive attempts, e.g.
``{"grey@example.com": ["RCPT 451 4.7.1 Greylisted", "RCPT 250 2.1.5 Ok"]}``; the last entry
repeats. Steps: ``RCPT <reply>`` answers the RCPT command; ``DATA <reply>`` answers the end of
DATA; ``DATA drop`` closes the connection after the message arrived, without a reply (the client
cannot know whether it was accepted); ``CONNECT <reply>`` (in ``connect_replies``) answers the
next new connection instead of the greeting and closes it. Unscripted recipients get 250.
``chooser(recipient, attempt)`` may return a step instead of the script (random faults).

Everything is recorded: ``accepted`` (recipient → number of accepted DATA), ``attempts``
(recipient → RCPT times, monotonic seconds), ``accept_times``, ``dropped`` and the highest number
of concurrent sessions. A session counts from the accepted connection until the connection is
closed, plus ``close_lag`` seconds: like a real provider, the server still counts a session for a
moment after the client's QUIT, so a client that opens a new connection the instant it closed
one is seen holding one more than it thinks.
"""

from __future__ import annotations

import collections
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from worker.devtools.outbox import free_port


class ScriptHandler:
    """aiosmtpd handler driven by a per-recipient script; thread-safe counters."""

    def __init__(
        self,
        script: dict[str, list[str]] | None = None,
        connect_replies: list[str] | None = None,
        chooser: Callable[[str, int], str | None] | None = None,
        on_accept: Callable[[str, bytes], None] | None = None,
        data_delay: float = 0.0,
        keep_data: bool = True,
        rcpt_delay: dict[str, float] | None = None,
        max_sessions: int = 0,
        max_per_second: int = 0,
        close_lag: float = 0.0,
    ) -> None:
        self.script = script or {}
        self.connect_replies = list(connect_replies or [])
        self.chooser = chooser
        self.on_accept = on_accept
        self.data_delay = data_delay
        self.keep_data = keep_data  # False: count messages without keeping them (big runs)
        self.rcpt_delay = dict(rcpt_delay or {})  # recipient → seconds before answering RCPT
        self.session_limit = max_sessions  # a provider's limits: beyond them it answers 421/451
        self.per_second_limit = max_per_second
        self.close_lag = close_lag  # seconds a closed session is still counted
        self.limit_replies = 0
        self.lock = threading.Lock()
        self.accepted: collections.Counter[str] = collections.Counter()
        self.attempts: dict[str, list[float]] = collections.defaultdict(list)
        self.accept_times: list[float] = []
        self.messages: dict[str, list[bytes]] = collections.defaultdict(list)
        self.dropped: collections.Counter[str] = collections.Counter()
        self.sessions = 0
        self.max_sessions = 0
        self.connections = 0

    def step(self, recipient: str, attempt: int) -> str:
        if self.chooser is not None:
            chosen = self.chooser(recipient, attempt)
            if chosen is not None:
                return chosen
        steps = self.script.get(recipient)
        if not steps:
            return "RCPT 250 2.1.5 Ok"
        return steps[min(attempt, len(steps) - 1)]

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        with self.lock:
            attempt = len(self.attempts[address])
            self.attempts[address].append(time.monotonic())
            now = time.monotonic()
            recent = sum(
                1 for t in self.accept_times[-self.per_second_limit - 1 :] if t > now - 1.0
            )
            if self.per_second_limit and recent >= self.per_second_limit:
                self.limit_replies += 1
                return "451 4.7.0 Rate limit exceeded, slow down"
        if address in self.rcpt_delay:
            import asyncio

            await asyncio.sleep(self.rcpt_delay.pop(address))
        step = self.step(address, attempt)
        envelope.step = step  # type: ignore[attr-defined]
        if step.startswith("RCPT "):
            reply = step[5:]
            if not reply.startswith("2"):
                return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        recipient = envelope.rcpt_tos[0]
        step: str = getattr(envelope, "step", "")
        if self.data_delay:
            import asyncio

            await asyncio.sleep(self.data_delay)
        if step == "DATA drop":
            with self.lock:
                self.dropped[recipient] += 1
            assert server.transport is not None
            server.transport.abort()  # type: ignore[attr-defined]  # a Transport, typed as its base
            return "250 never seen"
        if step.startswith("DATA ") and not step[5:].startswith("2"):
            return step[5:]
        data = envelope.original_content or b""
        with self.lock:
            self.accepted[recipient] += 1
            self.accept_times.append(time.monotonic())
            if self.keep_data:
                self.messages[recipient].append(data)
        if self.on_accept is not None:
            self.on_accept(recipient, data)
        return "250 2.0.0 Ok: queued"

    def session_started(self) -> str | None:
        with self.lock:
            self.connections += 1
            self.sessions += 1
            self.max_sessions = max(self.max_sessions, self.sessions)
            if self.session_limit and self.sessions > self.session_limit:
                self.limit_replies += 1
                return "CONNECT 421 4.7.0 Too many concurrent sessions"
            return self.connect_replies.pop(0) if self.connect_replies else None

    def session_ended(self) -> None:
        with self.lock:
            self.sessions -= 1

    def session_closed(self) -> None:
        """The connection closed: the session stops counting ``close_lag`` seconds later."""
        if self.close_lag <= 0:
            self.session_ended()
            return
        timer = threading.Timer(self.close_lag, self.session_ended)
        timer.daemon = True
        timer.start()


class _ScriptSMTP(SMTP):
    _ended = False

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self.event_handler.session_closed()

    async def _handle_client(self) -> None:
        handler: ScriptHandler = self.event_handler
        reply = handler.session_started()
        try:
            if reply is not None:
                await self.push(reply.removeprefix("CONNECT "))
                assert self.transport is not None
                self.transport.close()
                return
            await super()._handle_client()
        finally:
            self._end()


class _ScriptController(Controller):
    def factory(self) -> SMTP:
        return _ScriptSMTP(self.handler, **self.SMTP_kwargs)


class ScriptServer:
    """Start/stop a ``ScriptHandler`` on 127.0.0.1 (plain, STARTTLS or implicit TLS; optional AUTH).

    ``tls`` is ``none``, ``starttls`` or ``implicit``; ``cert`` a (certfile, keyfile) pair;
    ``users`` a dict of username → password, required over TLS when given.
    """

    def __init__(
        self,
        handler: ScriptHandler | None = None,
        *,
        tls: str = "none",
        cert: tuple[Path, Path] | None = None,
        users: dict[str, str] | None = None,
        smtputf8: bool = True,
        port: int | None = None,
    ) -> None:
        self.handler = handler or ScriptHandler()
        self.port = port or free_port()
        self.tls = tls
        self.users = users
        kwargs: dict[str, Any] = {"enable_SMTPUTF8": smtputf8, "data_size_limit": 10 * 1024 * 1024}
        context = None
        if cert is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(cert[0]), str(cert[1]))
        if tls == "starttls":
            kwargs.update(tls_context=context, require_starttls=True)
        elif tls == "implicit":
            # aiosmtpd does not see the implicit TLS of the listening socket: allow AUTH anyway.
            kwargs.update(ssl_context=context, auth_require_tls=False)
        if users is not None:
            kwargs.update(authenticator=self._authenticate, auth_required=True)
        self.controller = _ScriptController(
            self.handler, hostname="127.0.0.1", port=self.port, **kwargs
        )

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and self.users is not None
            and self.users.get(data.login.decode()) == data.password.decode()
        )
        return AuthResult(success=ok)

    def url(
        self, user: str | None = None, password: str | None = None, cafile: Path | None = None
    ) -> str:
        scheme = {"none": "smtp", "starttls": "smtp+starttls", "implicit": "smtps"}[self.tls]
        auth = f"{user}:{password}@" if user else ""
        query = f"?cafile={cafile}" if cafile else ""
        return f"{scheme}://{auth}127.0.0.1:{self.port}{query}"

    def __enter__(self) -> ScriptServer:
        self.start()
        return self

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
