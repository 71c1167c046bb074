"""The IMAP poller: an alternative to the SMTP receiver when bounces land in a mailbox.

``newsletter inbound imap imaps://user:password@host[:port]/INBOX[?done=Processed]`` fetches each
message (``BODY.PEEK[]``, so nothing is marked read by fetching), stores the raw bytes and
commits (:func:`worker.feedback.inbound.store_inbound`), parses and records it
(:func:`worker.feedback.inbound.process_inbound`) and commits, and only then removes it from the
mailbox: moved to the ``done`` folder (``UID MOVE``, RFC 6851, or COPY + ``\\Deleted`` +
EXPUNGE) or, without one, flagged ``\\Seen \\Deleted`` and expunged. A message that could not
be stored or processed stays where it is, unflagged, and is tried again at the next poll
(storing is idempotent on the SHA-256 of the bytes).

TLS (RFC 8314 for ``imaps``, RFC 3501 §6.2.1 for ``imap+starttls``) always verifies the server's
certificate and host name against the system's CAs, or ``NEWSLETTER_IMAP_CA_FILE`` for a private
CA, before the password is sent: a server that cannot prove its name never sees it. A server that
does not offer STARTTLS on ``imap+starttls`` is refused the same way. Plain ``imap://`` sends the
password in clear and is meant for a server on the same host.

Messages larger than ``inbound_max_bytes`` (``RFC822.SIZE``) are fetched up to the cap
(``BODY.PEEK[]<0.cap>``, RFC 3501 §6.4.5) and stored with ``truncated`` set.
"""

from __future__ import annotations

import contextlib
import imaplib
import logging
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from worker.db import session_scope
from worker.feedback.inbound import InboundContext, process_inbound, store_inbound
from worker.models import InboundMessage
from worker.sending.ports import Clock, SystemClock
from worker.settings import Settings

log = logging.getLogger(__name__)

_SIZE = re.compile(rb"RFC822\.SIZE (\d+)")


@dataclass(frozen=True)
class ImapMailbox:
    """Where to poll: parsed from ``imap[s]://user:password@host[:port]/FOLDER[?done=FOLDER]``
    (or ``imap+starttls://``). ``tls``: ``"implicit"``, ``"starttls"`` or ``"none"``;
    ``ca_file``: a PEM bundle of CAs to trust instead of the system's."""

    host: str
    port: int
    user: str
    password: str
    folder: str = "INBOX"
    done_folder: str | None = None
    tls: str = "implicit"
    ca_file: str | None = None

    @classmethod
    def from_url(cls, url: str, ca_file: str | None = None) -> ImapMailbox:
        """Raises ``ValueError`` for another scheme or a missing host or user."""
        parts = urlsplit(url)
        if parts.scheme not in _TLS_OF_SCHEME or not parts.hostname or not parts.username:
            raise ValueError("expected imaps://user:password@host[:port]/FOLDER")
        tls = _TLS_OF_SCHEME[parts.scheme]
        done = parse_qs(parts.query).get("done", [None])[0]
        return cls(
            host=parts.hostname,
            port=parts.port or (993 if tls == "implicit" else 143),
            user=unquote(parts.username),
            password=unquote(parts.password or ""),
            folder=unquote(parts.path.lstrip("/")) or "INBOX",
            done_folder=done,
            tls=tls,
            ca_file=ca_file or None,
        )


_TLS_OF_SCHEME = {"imaps": "implicit", "imap+starttls": "starttls", "imap": "none"}


def tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """A client context that verifies the certificate chain and the host name (TLS 1.2 or
    later): the system's CAs, or only those in the PEM file ``ca_file``."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def connect(mailbox: ImapMailbox, timeout: float = 60.0) -> imaplib.IMAP4:
    """A logged-in imaplib client. With TLS the certificate is verified before LOGIN; raises
    ``ssl.SSLCertVerificationError`` (an ``OSError``) for a server that cannot prove its name,
    ``imaplib.IMAP4.error`` when STARTTLS is not offered — the password is not sent then."""
    client: imaplib.IMAP4
    if mailbox.tls == "implicit":
        context = tls_context(mailbox.ca_file)
        client = imaplib.IMAP4_SSL(mailbox.host, mailbox.port, ssl_context=context, timeout=timeout)
    else:
        client = imaplib.IMAP4(mailbox.host, mailbox.port, timeout=timeout)
        if mailbox.tls == "starttls":
            try:
                client.starttls(ssl_context=tls_context(mailbox.ca_file))
            except BaseException:
                with contextlib.suppress(OSError):  # the TLS layer may have closed it already
                    client.shutdown()
                raise
    client.login(mailbox.user, mailbox.password)
    return client


@dataclass
class PollResult:
    """One poll: messages seen, stored+processed and removed, kept for a later poll."""

    seen: int = 0
    done: int = 0
    kept: int = 0


class ImapPoller:
    """Polls one mailbox; ``connect`` is replaceable (the imaplib boundary)."""

    def __init__(
        self,
        settings: Settings,
        mailbox: ImapMailbox,
        *,
        connect: Callable[[ImapMailbox], Any] = connect,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self.mailbox = mailbox
        self.connect = connect
        self.clock = clock or SystemClock()
        self.ctx = InboundContext.from_settings(settings)

    def poll_once(self) -> PollResult:
        """Handle every undeleted message in the folder once. Raises ``imaplib.IMAP4.error`` /
        ``OSError`` when the server cannot be reached or the folder cannot be selected."""
        client = self.connect(self.mailbox)
        result = PollResult()
        try:
            _ok(client.select(_quoted(self.mailbox.folder)), "SELECT")
            uids = _ok(client.uid("SEARCH", None, "UNDELETED"), "SEARCH")[0].split()
            can_move = "MOVE" in getattr(client, "capabilities", ())
            for uid in uids:
                result.seen += 1
                if self._handle(client, uid):
                    self._remove(client, uid, can_move)
                    result.done += 1
                else:
                    result.kept += 1
            if result.done:
                client.expunge()
        finally:
            try:
                client.logout()
            except Exception:  # the poll's outcome is committed already; a rude server is fine
                log.debug("IMAP logout failed", exc_info=True)
        return result

    def _handle(self, client: Any, uid: bytes) -> bool:
        """Fetch, store (commit), process (commit); False leaves the message in the mailbox."""
        try:
            raw, size = self._fetch(client, uid)
        except Exception:
            log.exception("IMAP UID %s could not be fetched; kept", uid.decode())
            return False
        try:
            with session_scope(self.settings) as session:
                message = store_inbound(
                    session,
                    raw,
                    source="imap",
                    now=self.clock.now(),
                    max_bytes=self.settings.inbound_max_bytes,
                    total_size=size,
                )
                message_id = message.id
        except Exception:
            log.exception("IMAP UID %s could not be stored; kept", uid.decode())
            return False
        try:
            with session_scope(self.settings) as session:
                stored = session.get(InboundMessage, message_id)
                if stored is not None and stored.parsed_at is None:
                    process_inbound(session, stored, self.ctx, now=self.clock.now())
        except Exception:
            log.exception(
                "IMAP UID %s stored as %d but not processed; kept", uid.decode(), message_id
            )
            return False
        return True

    def _fetch(self, client: Any, uid: bytes) -> tuple[bytes, int]:
        cap = self.settings.inbound_max_bytes
        head = _ok(client.uid("FETCH", uid, "(RFC822.SIZE)"), "FETCH")
        found = _SIZE.search(b" ".join(h if isinstance(h, bytes) else h[0] for h in head if h))
        size = int(found[1]) if found else 0
        part = "BODY.PEEK[]" if size <= cap else f"BODY.PEEK[]<0.{cap}>"
        data = _ok(client.uid("FETCH", uid, f"({part})"), "FETCH")
        raw = next((item[1] for item in data if isinstance(item, tuple)), None)
        if raw is None:
            raise imaplib.IMAP4.error(f"no body in FETCH response for UID {uid!r}")
        return bytes(raw), max(size, len(raw))

    def _remove(self, client: Any, uid: bytes, can_move: bool) -> None:
        done = self.mailbox.done_folder
        if done and can_move:
            _ok(client.uid("MOVE", uid, _quoted(done)), "MOVE")
            return
        if done:
            _ok(client.uid("COPY", uid, _quoted(done)), "COPY")
        _ok(client.uid("STORE", uid, "+FLAGS", "(\\Seen \\Deleted)"), "STORE")

    def run(self, interval: float, stop: Callable[[], bool] = lambda: False) -> None:
        """Poll every ``interval`` seconds until ``stop()``; connection errors are logged."""
        while not stop():
            try:
                result = self.poll_once()
                log.info(
                    "IMAP poll: %d seen, %d done, %d kept", result.seen, result.done, result.kept
                )
            except (imaplib.IMAP4.error, OSError):
                log.exception("IMAP poll failed; trying again in %.0f s", interval)
            time.sleep(interval)


def _ok(response: tuple[str, list[Any]], what: str) -> list[Any]:
    status, data = response
    if status != "OK":
        raise imaplib.IMAP4.error(f"{what} failed: {data!r}"[:300])
    return data


def _quoted(folder: str) -> str:
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'
