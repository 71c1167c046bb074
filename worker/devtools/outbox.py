"""A local SMTP server (aiosmtpd) that writes every message it accepts as an ``.eml`` file.

Used by ``newsletter demo`` and by the tests as the real SMTP peer. Edition mail (with an
``X-Newsletter-Edition`` header) goes to the folder itself, transactional mail to
``transactional/``. SMTPUTF8 is offered, like most relays today.
"""

from __future__ import annotations

import random
import re
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from worker.sending.identity import DELIVERY_HEADER

_DELIVERY_LINE = rb"^" + DELIVERY_HEADER.encode() + rb": ([A-Za-z0-9]+)"


# Linux's default ephemeral range, when /proc does not say (ip_local_port_range).
_EPHEMERAL = (32768, 60999)
_LOWEST = 10000  # below: well-known services (Redis 6379, PostgreSQL 5432, …)


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return _EPHEMERAL


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, for a server started next (this
    process's or a child's); raises ``OSError`` if none is found.

    Drawn below the kernel's ephemeral range: a port ``bind(0)`` hands out lies inside it, where
    any outgoing connection (a worker's to PostgreSQL or Redis) may be given it before the server
    binds it, which the suite saw ("Address already in use" for a worker group's metrics port
    while two suites ran). Falls back to ``bind(0)`` if that range starts too low."""
    low, _ = _ephemeral_range()
    if low - _LOWEST >= 1000:
        draw = random.SystemRandom()
        for _ in range(50):
            port = draw.randrange(_LOWEST, low)
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Received:
    envelope_from: str
    recipients: list[str]
    data: bytes
    path: Path | None


@dataclass
class OutboxHandler:
    """aiosmtpd handler: keeps every accepted message in memory and, with ``folder``, on disk."""

    folder: Path | None = None
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        path = None
        if self.folder is not None:
            path = self._path(data, envelope.rcpt_tos[0] if envelope.rcpt_tos else "unknown")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        with self.lock:
            self.received.append(
                Received(str(envelope.mail_from), list(envelope.rcpt_tos), data, path)
            )
        return "250 2.0.0 Ok: queued"

    def _path(self, data: bytes, recipient: str) -> Path:
        assert self.folder is not None
        head = data.split(b"\r\n\r\n", 1)[0]
        delivery = re.search(_DELIVERY_LINE, head, re.MULTILINE | re.IGNORECASE)
        lang = re.search(rb"^Content-Language: ([A-Za-z-]+)", head, re.MULTILINE | re.IGNORECASE)
        safe = re.sub(r"[^A-Za-z0-9@._+-]", "_", recipient)
        with self.lock:
            n = len(self.received) + 1
        if delivery:
            language = lang.group(1).decode() if lang else "xx"
            # The header is sealed (no count in it): the arrival number orders the files.
            return self.folder / f"{n:06d}-{language}-{safe}.eml"
        return self.folder / "transactional" / f"{n:06d}-{safe}.eml"


class OutboxServer:
    """Start/stop an ``OutboxHandler`` on 127.0.0.1 in a background thread."""

    def __init__(self, folder: Path | None = None, port: int | None = None) -> None:
        self.handler = OutboxHandler(folder)
        self.port = port or free_port()
        self.controller = Controller(
            self.handler,
            hostname="127.0.0.1",
            port=self.port,
            enable_SMTPUTF8=True,
            data_size_limit=10 * 1024 * 1024,
        )

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def __enter__(self) -> OutboxServer:
        self.controller.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.controller.stop()
