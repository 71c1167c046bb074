"""A small in-test IMAP4rev1 server (RFC 3501) on 127.0.0.1: enough for imaplib and the poller.

It speaks the real protocol over a real socket (tagged commands, literals ``{n}``, UIDs, flags),
for these commands: CAPABILITY, LOGIN, SELECT, UID SEARCH, UID FETCH (``RFC822.SIZE``,
``BODY.PEEK[]``, ``BODY.PEEK[]<0.n>``), UID STORE, UID COPY, UID MOVE (RFC 6851), EXPUNGE,
NOOP, LOGOUT, and STARTTLS (RFC 3501 §6.2.1) when given a ``starttls`` context. With a ``tls``
context it speaks implicit TLS (RFC 8314). Folders are in memory: ``server.folders["INBOX"]``
lists :class:`Stored` messages; ``state.received`` keeps every command line a client sent.
"""

from __future__ import annotations

import re
import socketserver
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any

from worker.devtools.outbox import free_port


@dataclass
class Stored:
    uid: int
    raw: bytes
    flags: set[str] = field(default_factory=set)


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def setup(self) -> None:
        if self.server.tls is not None:  # implicit TLS: the handshake comes before any byte
            self.request = self.connection = self.server.tls.wrap_socket(
                self.request, server_side=True
            )
        super().setup()

    def _capabilities(self) -> bytes:
        return b"IMAP4rev1 MOVE" + (b" STARTTLS" if self.server.starttls is not None else b"")

    def _start_tls(self, tag: bytes) -> None:
        assert self.server.starttls is not None
        self._send(tag + b" OK begin TLS negotiation now")
        self.request = self.connection = self.server.starttls.wrap_socket(
            self.connection, server_side=True
        )
        self.rfile = self.connection.makefile("rb", self.rbufsize)
        self.wfile = self.connection.makefile("wb", 0)

    def handle(self) -> None:
        self.selected: str | None = None
        self._send(b"* OK [CAPABILITY " + self._capabilities() + b"] test IMAP ready")
        while True:
            line = self.rfile.readline()
            if not line:
                return
            with self.server.state.lock:
                self.server.state.received.append(line)
            tag, _, rest = line.rstrip(b"\r\n").partition(b" ")
            command, _, args = rest.partition(b" ")
            try:
                if not self._dispatch(tag, command.upper().decode(), args.decode()):
                    return
            except Exception as error:  # a bug in the test server must show as a NO, not a hang
                self._send(tag + b" BAD " + str(error).encode())

    def _send(self, line: bytes) -> None:
        self.wfile.write(line + b"\r\n")
        self.wfile.flush()

    def _dispatch(self, tag: bytes, command: str, args: str) -> bool:
        state = self.server.state
        if command == "CAPABILITY":
            self._send(b"* CAPABILITY " + self._capabilities())
        elif command == "STARTTLS" and self.server.starttls is not None:
            self._start_tls(tag)
            return True
        elif command == "LOGIN":
            user, password = [a.strip('"') for a in args.split(" ", 1)]
            if (user, password) != (state.user, state.password):
                self._send(tag + b" NO [AUTHENTICATIONFAILED] invalid credentials")
                return True
        elif command == "SELECT":
            self.selected = args.strip('"')
            with state.lock:
                count = len(state.folders.setdefault(self.selected, []))
            self._send(b"* %d EXISTS" % count)
            self._send(b"* OK [UIDVALIDITY 1] UIDs valid")
            self._send(tag + b" OK [READ-WRITE] SELECT completed")
            return True
        elif command == "UID":
            self._uid(tag, args)
            return True
        elif command == "EXPUNGE":
            with state.lock:
                folder = state.folders[self.selected or "INBOX"]
                folder[:] = [m for m in folder if "\\Deleted" not in m.flags]
        elif command == "LOGOUT":
            self._send(b"* BYE logging out")
            self._send(tag + b" OK LOGOUT completed")
            return False
        elif command != "NOOP":
            self._send(tag + b" BAD unknown command")
            return True
        self._send(tag + b" OK " + command.encode() + b" completed")
        return True

    def _uid(self, tag: bytes, args: str) -> None:
        state = self.server.state
        command, _, rest = args.partition(" ")
        command = command.upper()
        with state.lock:
            folder = state.folders[self.selected or "INBOX"]
            if command == "SEARCH":
                uids = [m.uid for m in folder if "\\Deleted" not in m.flags]
                self._send(b"* SEARCH" + b"".join(b" %d" % u for u in uids))
            else:
                uid_text, _, items = rest.partition(" ")
                message = next((m for m in folder if m.uid == int(uid_text)), None)
                if message is None:
                    self._send(tag + b" NO no such message")
                    return
                self._uid_one(command, message, folder, items)
        self._send(tag + b" OK UID " + command.encode() + b" completed")

    def _uid_one(self, command: str, message: Stored, folder: list[Stored], items: str) -> None:
        state = self.server.state
        seq = folder.index(message) + 1
        if command == "FETCH" and "RFC822.SIZE" in items:
            self._send(b"* %d FETCH (UID %d RFC822.SIZE %d)" % (seq, message.uid, len(message.raw)))
        elif command == "FETCH":
            partial = re.search(r"<0\.(\d+)>", items)
            body = message.raw[: int(partial[1])] if partial else message.raw
            name = b"BODY[]<0>" if partial else b"BODY[]"
            state.fetched += 1
            self.wfile.write(
                b"* %d FETCH (UID %d %s {%d}\r\n" % (seq, message.uid, name, len(body))
            )
            self.wfile.write(body + b")\r\n")
        elif command == "STORE":
            message.flags.update(re.findall(r"\\\w+", items))
            flags = " ".join(sorted(message.flags)).encode()
            self._send(b"* %d FETCH (UID %d FLAGS (%s))" % (seq, message.uid, flags))
        elif command in ("COPY", "MOVE"):
            target = state.folders.setdefault(items.strip('"'), [])
            target.append(Stored(state.next_uid(), message.raw, set(message.flags)))
            if command == "MOVE":
                folder.remove(message)
                self._send(b"* %d EXPUNGE" % seq)


@dataclass
class ImapState:
    user: str = "bounces"
    password: str = "s3cret"
    folders: dict[str, list[Stored]] = field(default_factory=lambda: {"INBOX": []})
    lock: threading.Lock = field(default_factory=threading.Lock)
    fetched: int = 0
    received: list[bytes] = field(default_factory=list)
    handshake_errors: list[str] = field(default_factory=list)
    _uid: int = 0

    def next_uid(self) -> int:
        self._uid += 1
        return self._uid

    def deliver(self, raw: bytes, folder: str = "INBOX") -> int:
        with self.lock:
            uid = self.next_uid()
            self.folders.setdefault(folder, []).append(Stored(uid, raw))
            return uid


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    state: ImapState
    tls: ssl.SSLContext | None = None
    starttls: ssl.SSLContext | None = None

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        error = sys.exc_info()[1]
        if isinstance(error, OSError):  # a client that refused our cert
            self.state.handshake_errors.append(type(error).__name__)
            return
        super().handle_error(request, client_address)


class ImapServer:
    """``with ImapServer() as imap: imap.state.deliver(raw); imap.url``.

    ``tls``: a server context for implicit TLS (``imaps``); ``starttls``: one to offer STARTTLS.
    """

    def __init__(
        self, tls: ssl.SSLContext | None = None, starttls: ssl.SSLContext | None = None
    ) -> None:
        self.port = free_port()
        self.server = _Server(("127.0.0.1", self.port), _Handler)
        self.server.state = ImapState()
        self.server.tls, self.server.starttls = tls, starttls
        self.state = self.server.state
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, done: str | None = None, host: str = "127.0.0.1") -> str:
        query = f"?done={done}" if done else ""
        scheme = "imaps" if self.server.tls else "imap+starttls" if self.server.starttls else "imap"
        credentials = f"{self.state.user}:{self.state.password}"
        return f"{scheme}://{credentials}@{host}:{self.port}/INBOX{query}"

    def __enter__(self) -> ImapServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
