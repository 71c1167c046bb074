"""Finding 5 of issue 13: the IMAP poller gives its password only to a server that proves its name.

Real IMAP servers on loopback (``tests/imap_server.py``) speak implicit TLS or STARTTLS with
certificates made here: a self-signed one (an impostor), one from a private CA the poller is told
to trust, and one from that CA for another name. The server records every command line it got.
"""

from __future__ import annotations

import imaplib
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.imap_server import ImapServer
from tests.tls_certs import PrivateCa, self_signed
from worker.cli import main
from worker.feedback.imap_poller import ImapMailbox, ImapPoller
from worker.runtime import Runtime
from worker.settings import Settings


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> PrivateCa:
    return PrivateCa.create(tmp_path_factory.mktemp("ca"))


def _password_was_sent(server: ImapServer) -> bool:
    password = server.state.password.encode()
    return any(b"LOGIN" in line.upper() or password in line for line in server.state.received)


@pytest.fixture(params=["implicit", "starttls"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _server(mode: str, context: ssl.SSLContext) -> ImapServer:
    return ImapServer(tls=context) if mode == "implicit" else ImapServer(starttls=context)


@pytest.fixture
def impostor(mode: str, tmp_path: Path) -> Iterator[ImapServer]:
    with _server(mode, self_signed(tmp_path, "127.0.0.1").server_context()) as server:
        yield server


def test_a_self_signed_server_never_gets_the_password(
    settings: Settings, impostor: ImapServer
) -> None:
    # Given a server with a certificate nobody vouches for
    poller = ImapPoller(settings, ImapMailbox.from_url(impostor.url()))
    # When the poller connects
    with pytest.raises(ssl.SSLCertVerificationError):
        poller.poll_once()
    # Then it refused the certificate before LOGIN: the server never saw the password
    assert not _password_was_sent(impostor)


def test_a_server_of_the_trusted_ca_is_polled(
    rt: Runtime, ca: PrivateCa, mode: str, tmp_path: Path
) -> None:
    # Given a server whose certificate a private CA issued, and the poller told to trust that CA
    context = ca.issue(tmp_path, "127.0.0.1").server_context()
    with _server(mode, context) as server:
        server.state.deliver(b"From: postmaster@example.net\r\nSubject: hello\r\n\r\nhi\r\n")
        mailbox = ImapMailbox.from_url(server.url(), ca_file=str(ca.pem.cert))
        # When it polls
        result = ImapPoller(rt.settings, mailbox).poll_once()
        # Then it logged in over TLS and handled the message
        assert (result.seen, result.done) == (1, 1)
        assert server.state.folders["INBOX"] == []
        assert _password_was_sent(server)


def test_a_certificate_for_another_name_is_refused(
    settings: Settings, ca: PrivateCa, mode: str, tmp_path: Path
) -> None:
    # Given a server presenting a trusted CA's certificate for another host
    context = ca.issue(tmp_path, "imap.example.org").server_context()
    with _server(mode, context) as server:
        mailbox = ImapMailbox.from_url(server.url(), ca_file=str(ca.pem.cert))
        with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
            ImapPoller(settings, mailbox).poll_once()
        assert not _password_was_sent(server)


def test_starttls_not_offered_keeps_the_password(settings: Settings) -> None:
    # Given a server that does not offer STARTTLS, polled with imap+starttls:// (a downgrade)
    with ImapServer() as server:
        url = server.url().replace("imap://", "imap+starttls://")
        with pytest.raises(imaplib.IMAP4.error, match="TLS not supported"):
            ImapPoller(settings, ImapMailbox.from_url(url)).poll_once()
        assert not _password_was_sent(server)


def test_the_cli_refuses_an_impostor_and_takes_the_ca_file_setting(
    impostor: ImapServer, ca: PrivateCa, db_url: str, tmp_path: Path
) -> None:
    env = {
        "NEWSLETTER_DATABASE_URL": db_url,
        "NEWSLETTER_SECRET_KEY": "imap-tls-test-secret-0123456789",
        "NEWSLETTER_IMAP_CA_FILE": str(ca.pem.cert),
    }
    result = CliRunner().invoke(main, ["inbound", "imap", impostor.url(), "--once"], env=env)
    assert result.exit_code == 1
    assert "cannot poll 127.0.0.1" in result.output
    assert "certificate verify failed: self-signed certificate" in result.output
    assert not _password_was_sent(impostor)
