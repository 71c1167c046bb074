"""A small in-test IMAP4rev1 server (RFC 3501) on 127.0.0.1: enough for imaplib and the poller.

It speaks the real protocol over a real socket (tagged commands, literals ``{n}``, UIDs, flags),
for these commands: CAPABILITY, LOGIN, SELECT, UID SEARCH, UID FETCH (``RFC822.SIZE``,
``BODY.PEEK[]``, ``BODY.PEEK[]<0.n>``), UID STORE, UID COPY, UID MOVE (RFC 6851), EXPUNGE,
NOOP, LOGOUT. Folders are in memory: ``server.folders["INBOX"]`` lists :class:`Stored` messages.
"""

from __future__ import annotations

import re
import socketserver
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

    def handle(self) -> None:
        self.selected: str | None = None
        self._send(b"* OK [CAPABILITY IMAP4rev1 MOVE] test IMAP ready")
        while True:
            line = self.rfile.readline()
            if not line:
                return
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
            self._send(b"* CAPABILITY IMAP4rev1 MOVE")
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


class ImapServer:
    """``with ImapServer() as imap: imap.state.deliver(raw); imap.url``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.server = _Server(("127.0.0.1", self.port), _Handler)
        self.server.state = ImapState()
        self.state = self.server.state
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, done: str | None = None) -> str:
        query = f"?done={done}" if done else ""
        return f"imap://{self.state.user}:{self.state.password}@127.0.0.1:{self.port}/INBOX{query}"

    def __enter__(self) -> ImapServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
