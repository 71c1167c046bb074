"""The SMTP adapter against a real (aiosmtpd) server: TLS, AUTH, reuse, replies, SMTPUTF8."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.smtp_script import ScriptHandler, ScriptServer
from worker.sending.smtp import SmtpMailer

MESSAGE = b"From: a@example.org\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nhello\r\n"


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (certfile, keyfile); the certfile is also the CA."""
    folder = tmp_path_factory.mktemp("tls")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = folder / "cert.pem", folder / "key.pem"
    certfile.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return certfile, keyfile


@pytest.fixture
def server() -> Iterator[ScriptServer]:
    with ScriptServer(ScriptHandler()) as running:
        yield running


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
def test_tls_and_auth_deliver_and_wrong_password_is_not_a_bounce(
    tls: str, cert: tuple[Path, Path]
) -> None:
    with ScriptServer(tls=tls, cert=cert, users={"news": "s3cret"}) as server:
        mailer = SmtpMailer(server.url("news", "s3cret", cafile=cert[0]), timeout=5)
        outcome = mailer.send("b@example.org", "reader@example.com", MESSAGE, smtputf8=False)
        mailer.close()
        assert (outcome.code, outcome.accepted) == (250, True)
        assert server.handler.accepted["reader@example.com"] == 1

        wrong = SmtpMailer(server.url("news", "wrong", cafile=cert[0]), timeout=2)
        refused = wrong.send("b@example.org", "reader2@example.com", MESSAGE, smtputf8=False)
        assert refused.code == 0 and not refused.permanent  # our configuration, not the reader's
        assert server.handler.accepted["reader2@example.com"] == 0


def test_certificate_is_verified(cert: tuple[Path, Path]) -> None:
    with ScriptServer(tls="starttls", cert=cert) as server:
        mailer = SmtpMailer(server.url(), timeout=5)  # system CAs do not know the test certificate
        outcome = mailer.send("b@example.org", "reader@example.com", MESSAGE, smtputf8=False)
        assert outcome.code == 0 and "CERTIFICATE_VERIFY_FAILED" in outcome.text
        assert server.handler.accepted["reader@example.com"] == 0


def test_one_connection_is_reused_and_reopened_when_the_server_closed_it(
    server: ScriptServer,
) -> None:
    before = server.handler.connections  # the controller's own readiness probe
    mailer = SmtpMailer(server.url(), timeout=5)
    for n in range(3):
        assert mailer.send("b@example.org", f"r{n}@example.com", MESSAGE, smtputf8=False).accepted
    assert mailer.connections_opened == 1
    assert server.handler.connections - before == 1
    assert mailer._conn is not None
    assert mailer._conn.sock is not None
    mailer._conn.sock.shutdown(socket.SHUT_RDWR)  # as if the relay had dropped the idle connection
    assert mailer.send("b@example.org", "r3@example.com", MESSAGE, smtputf8=False).accepted
    assert mailer.connections_opened == 2
    assert sum(server.handler.accepted.values()) == 4


def test_replies_per_recipient_and_the_batch_goes_on(server: ScriptServer) -> None:
    server.handler.script.update(
        {
            "grey@example.com": ["RCPT 451 4.7.1 Greylisted, please try again in 5 minutes"],
            "gone@example.com": ["RCPT 550 5.1.1 <gone@example.com>: no such user"],
            "many@example.org": ["RCPT 452 4.5.3 Too many recipients"],
            "late@example.com": ["DATA 554 5.7.1 Message rejected"],
        }
    )
    mailer = SmtpMailer(server.url(), timeout=5)
    got = {
        r: mailer.send("b@example.org", r, MESSAGE, smtputf8=False)
        for r in [
            "grey@example.com",
            "gone@example.com",
            "many@example.org",
            "late@example.com",
            "ok@example.com",
        ]
    }
    assert (got["grey@example.com"].code, got["grey@example.com"].transient) == (451, True)
    assert (got["gone@example.com"].code, got["gone@example.com"].permanent) == (550, True)
    assert "5.1.1" in got["gone@example.com"].text
    assert (got["many@example.org"].code, got["many@example.org"].transient) == (452, True)
    assert (got["late@example.com"].code, got["late@example.com"].permanent) == (554, True)
    assert got["ok@example.com"].accepted
    assert mailer.connections_opened == 1  # refusals reset the transaction, not the connection
    assert dict(server.handler.accepted) == {"ok@example.com": 1}


def test_421_at_connect_is_transient_and_the_next_message_reconnects(server: ScriptServer) -> None:
    server.handler.connect_replies.append("CONNECT 421 4.3.2 Too many connections, try again later")
    mailer = SmtpMailer(server.url(), timeout=5)
    first = mailer.send("b@example.org", "busy@example.net", MESSAGE, smtputf8=False)
    assert (first.code, first.transient) == (421, True)
    assert mailer.send("b@example.org", "busy@example.net", MESSAGE, smtputf8=False).accepted
    assert server.handler.accepted["busy@example.net"] == 1


def test_drop_after_the_final_dot_is_uncertain(server: ScriptServer) -> None:
    server.handler.script["drop@example.com"] = ["DATA drop", "RCPT 250 2.1.5 Ok"]
    mailer = SmtpMailer(server.url(), timeout=5)
    outcome = mailer.send("b@example.org", "drop@example.com", MESSAGE, smtputf8=False)
    assert outcome.uncertain and outcome.code == 0 and not outcome.transient
    assert (
        server.handler.accepted["drop@example.com"] == 0
        and server.handler.dropped["drop@example.com"] == 1
    )
    assert mailer.send("b@example.org", "next@example.com", MESSAGE, smtputf8=False).accepted


def test_fence_refused_before_data_sends_nothing(server: ScriptServer) -> None:
    mailer = SmtpMailer(server.url(), timeout=5)
    outcome = mailer.send(
        "b@example.org", "x@example.com", MESSAGE, smtputf8=False, before_data=lambda: False
    )
    assert outcome.local and outcome.code == 0
    assert server.handler.accepted["x@example.com"] == 0
    assert mailer.send(
        "b@example.org", "x@example.com", MESSAGE, smtputf8=False, before_data=lambda: True
    ).accepted
    assert mailer.connections_opened == 1


def test_smtputf8_used_when_offered_else_a_clear_local_failure() -> None:
    address = "читатель@пример.рф"
    utf8_message = MESSAGE.replace(b"To: b@example.com", f"To: {address}".encode())
    with ScriptServer(smtputf8=True) as server:
        mailer = SmtpMailer(server.url(), timeout=5)
        assert mailer.send("b@example.org", address, utf8_message, smtputf8=True).accepted
        assert server.handler.accepted[address] == 1
    with ScriptServer(smtputf8=False) as server:
        mailer = SmtpMailer(server.url(), timeout=5)
        refused = mailer.send("b@example.org", address, utf8_message, smtputf8=True)
        assert (refused.code, refused.permanent, refused.local) == (553, True, True)
        assert "SMTPUTF8" in refused.text
        assert mailer.send("b@example.org", "ascii@example.com", MESSAGE, smtputf8=False).accepted


class GroupOnlyRelay:
    """A relay on a plain socket that offers PIPELINING and answers MAIL, RCPT and DATA only
    once it holds all three (RFC 2920 §3.1): a client waiting for each reply in turn gets none
    (and times out). ``rcpt_reply`` answers the RCPT; ``lines`` records what arrived."""

    def __init__(self, rcpt_reply: bytes = b"250 2.1.5 Ok") -> None:
        self.rcpt_reply = rcpt_reply
        self.lines: list[bytes] = []
        self.messages = 0  # complete (final dot received)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn, conn.makefile("rb") as reader:
            conn.sendall(b"220 relay.example ESMTP\r\n")
            reader.readline()  # EHLO
            conn.sendall(b"250-relay.example\r\n250 PIPELINING\r\n")
            while True:
                group = [reader.readline() for _ in range(3)]  # MAIL, RCPT, DATA: no reply yet
                if not group[0] or group[0].upper().startswith(b"QUIT"):
                    return
                self.lines += group
                data_ok = self.rcpt_reply.startswith(b"2")
                data_reply = b"354 go on" if data_ok else b"554 5.5.1 no valid recipients"
                conn.sendall(b"250 2.1.0 Ok\r\n" + self.rcpt_reply + b"\r\n" + data_reply + b"\r\n")
                if data_ok:
                    while (line := reader.readline()) not in (b".\r\n", b""):
                        self.lines.append(line)
                    if not line:  # dropped before the final dot: no message (RFC 5321 §4.1.1.4)
                        return
                    self.messages += 1
                    conn.sendall(b"250 2.0.0 queued\r\n")
                else:
                    reader.readline()  # the client's RSET
                    conn.sendall(b"250 2.0.0 reset\r\n")

    def close(self) -> None:
        self.listener.close()
        self.thread.join(timeout=5)


def test_mail_rcpt_and_data_go_in_one_group_where_the_relay_pipelines() -> None:
    # Given a relay that answers only once MAIL, RCPT and DATA have all arrived
    relay = GroupOnlyRelay()
    mailer = SmtpMailer(f"smtp://127.0.0.1:{relay.port}", timeout=5)
    # When two messages are sent over the connection
    first = mailer.send("b@example.org", "r1@example.com", MESSAGE, smtputf8=False)
    second = mailer.send("b@example.org", "r2@example.com", MESSAGE, smtputf8=False)
    mailer.close()
    relay.close()
    # Then both went through (a client waiting for each reply would have timed out)
    assert (first.code, first.text, second.code) == (250, "2.0.0 queued", 250)
    assert relay.lines[:3] == [
        b"MAIL FROM:<b@example.org>\r\n",
        b"RCPT TO:<r1@example.com>\r\n",
        b"DATA\r\n",
    ]
    assert b"hello\r\n" in relay.lines and b"RCPT TO:<r2@example.com>\r\n" in relay.lines
    assert (relay.messages, mailer.connections_opened) == (2, 1)


def test_a_closed_fence_after_a_pipelined_354_hands_over_no_message() -> None:
    # Given a pipelining relay that has answered 354 to the group
    relay = GroupOnlyRelay()
    mailer = SmtpMailer(f"smtp://127.0.0.1:{relay.port}", timeout=5)
    fenced: list[str] = []

    def taken_back() -> bool:  # the fence runs after RCPT's 250, before any message text
        fenced.append("fence")
        return False

    # When the fence finds the claim taken back
    outcome = mailer.send(
        "b@example.org", "r1@example.com", MESSAGE, smtputf8=False, before_data=taken_back
    )
    relay.close()
    # Then nothing of the message left and the connection is dropped without the final dot
    assert (outcome.local, outcome.code, fenced) == (True, 0, ["fence"])
    assert b"hello\r\n" not in relay.lines and relay.messages == 0
    assert mailer._conn is None


def test_a_refused_recipient_in_a_pipelined_group_sends_no_message() -> None:
    relay = GroupOnlyRelay(rcpt_reply=b"550 5.1.1 no such user")
    mailer = SmtpMailer(f"smtp://127.0.0.1:{relay.port}", timeout=5)
    outcome = mailer.send("b@example.org", "gone@example.com", MESSAGE, smtputf8=False)
    mailer.close()
    relay.close()
    assert (outcome.code, outcome.permanent, outcome.text) == (550, True, "5.1.1 no such user")
    assert b"hello\r\n" not in relay.lines  # DATA was refused: the content never left


def test_a_line_break_in_an_address_never_reaches_the_relay(server: ScriptServer) -> None:
    mailer = SmtpMailer(server.url(), timeout=5)
    smuggled = "x@example.com>\r\nRCPT TO:<victim@example.net"
    outcome = mailer.send("b@example.org", smuggled, MESSAGE, smtputf8=False)
    assert outcome.local and outcome.code == 553
    assert server.handler.accepted["victim@example.net"] == 0
    assert sum(server.handler.accepted.values()) == 0
