"""Finding 11 of issue 13: no address, link token or full IP in any log line, DEBUG included.

The real processes are started as an operator starts them (``newsletter inbound smtp``,
``newsletter web``, ``uvicorn --factory worker.web.app:create_app``) with
``NEWSLETTER_LOG_LEVEL=DEBUG``, are sent what a reader's mail client and browser send, and
every line they logged is searched for the address, the token and the client's IP.
"""

from __future__ import annotations

import logging
import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest

from tests.samples import SAMPLE_EDITION
from worker.devtools.outbox import free_port
from worker.logs import Redactor, mask_address, mask_ip, mask_tokens
from worker.subscriptions.tokens import Purpose, Tokens

ROOT = Path(__file__).resolve().parent.parent
KEY = "log-redaction-secret-0123456789"
ADDRESS = "anna.reader@example.org"
CLIENT_IP = "203.0.113.77"
CLIENT_IP6 = "2001:db8:77:1::42"
TOKEN = Tokens(KEY).issue(Purpose.UNSUBSCRIBE, 4242)
CONFIRM_TOKEN = Tokens(KEY).issue(Purpose.CONFIRM, 4242, nonce="n0nce")
CLI = "from worker.cli import main; main()"


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env["NEWSLETTER_DATA_KEY"] = os.environ["NEWSLETTER_DATA_KEY"]  # the suite's (conftest)
    env.update(
        PYTHONPATH=str(ROOT),
        NEWSLETTER_DATABASE_URL=f"sqlite:///{tmp_path / 'n.db'}",
        NEWSLETTER_SECRET_KEY=KEY,
        NEWSLETTER_LOG_LEVEL="DEBUG",
        NEWSLETTER_BROKER="stub",
        NEWSLETTER_REDIS_URL="",
        NEWSLETTER_BOUNCE_DOMAIN="news.example.org",
        NEWSLETTER_NEWSLETTER_PATH=str(SAMPLE_EDITION / "newsletter.yaml"),
    )
    return env


@contextmanager
def _process(argv: list[str], env: dict[str, str], port: int | None) -> Iterator[list[str]]:
    """Run ``argv`` until the block ends; yields the list its output lines land in (after).
    With ``port``, the block starts once the process listens there."""
    lines: list[str] = []
    proc = subprocess.Popen(
        [sys.executable, *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:  # wait until it listens (or dies: then the test reports why)
        while port is not None and proc.poll() is None:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        yield lines
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        lines.extend((out + err).splitlines())  # uvicorn's own config logs access to stdout


STARTED = "Uvicorn running on http://127.0.0.1:"  # the server's own address, not a reader's


def _leaks(lines: list[str]) -> list[str]:
    needles = [ADDRESS, "anna.reader", TOKEN, CONFIRM_TOKEN, CLIENT_IP, CLIENT_IP6, "127.0.0.1"]
    needles += [TOKEN.rsplit(".", 1)[-1]]  # the signature alone is enough to forge nothing, still
    return [
        line
        for line in lines
        if any(n.lower() in line.lower() for n in needles)
        and not (STARTED in line and line.count("127.0.0.1") == 1)
    ]


def test_the_inbound_receiver_logs_no_address_token_or_ip(tmp_path: Path) -> None:
    env = _env(tmp_path)
    subprocess.run([sys.executable, "-c", CLI, "db", "upgrade"], env=env, check=True, timeout=120)
    port = free_port()
    argv = ["-c", CLI, "inbound", "smtp", "--listen", f"localhost:{port}"]
    with _process(argv, env, port) as lines:
        # When a reader's mail client sends the mailto unsubscribe
        mail = EmailMessage()
        mail["From"], mail["To"] = ADDRESS, f"unsubscribe+{TOKEN}@news.example.org"
        mail["Subject"] = "unsubscribe"
        mail.set_content(f"please unsubscribe {ADDRESS}")
        with smtplib.SMTP("localhost", port, timeout=30) as client:
            client.ehlo("mail.example.org")
            refused = client.send_message(mail, ADDRESS, [mail["To"]])
        assert refused == {}
    # Then the receiver logged the conversation at DEBUG, and nothing that names the reader
    assert any("mail.log" in line and "recip:" in line for line in lines), lines[-20:]
    assert any("DEBUG mail.log DATA readline" in line for line in lines)
    assert any("u***@news.example.org" in line for line in lines)
    assert _leaks(lines) == []


@pytest.mark.parametrize(
    "argv",
    [
        ["-c", CLI, "web", "--port", "{port}"],
        [
            "-m",
            "uvicorn",
            "--factory",
            "worker.web.app:create_app",
            "--port",
            "{port}",
            "--log-level",
            "debug",
            "--proxy-headers",
        ],
    ],
    ids=["newsletter web", "uvicorn --factory"],
)
def test_the_web_app_logs_no_address_token_or_ip(argv: list[str], tmp_path: Path) -> None:
    env = _env(tmp_path)
    subprocess.run([sys.executable, "-c", CLI, "db", "upgrade"], env=env, check=True, timeout=120)
    port = free_port()
    argv = [a.replace("{port}", str(port)) for a in argv]
    with _process(argv, env, port) as lines:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=30) as client:
            # When a reader behind a proxy opens the links of a mail and signs up again
            for ip in (CLIENT_IP, CLIENT_IP6):
                headers = {"X-Forwarded-For": ip}
                assert client.get(f"/u/{TOKEN}", headers=headers).status_code < 500
                assert client.get(f"/confirm/{CONFIRM_TOKEN}", headers=headers).status_code < 500
                one_click = {"List-Unsubscribe": "One-Click"}
                assert client.post(f"/u/{TOKEN}", data=one_click, headers=headers).status_code < 500
                signup = {"email": ADDRESS, "language": "en"}
                assert client.post("/signup", json=signup, headers=headers).status_code < 500
    # Then every request was logged, with the token cut out and the client's network only
    access = [line for line in lines if '"GET /u/***' in line]
    assert len(access) == 2, lines[-30:]
    assert any("203.0.113.0/24" in line for line in access)
    assert any("2001:db8:77::/48" in line for line in access)
    assert any("/confirm/***" in line for line in lines)
    # And the server's own listening address shows whole, not cut like a client's IP
    assert any(f"{STARTED}{port} (Press CTRL+C to quit)" in line for line in lines), lines[:10]
    assert not any("Uvicorn running on http://127.0.0.0/24" in line for line in lines)
    assert _leaks(lines) == []


def test_the_redactor_cuts_what_it_must_and_keeps_the_rest() -> None:
    assert mask_ip("from 198.51.100.23:5123 and [2001:db8:a:b::1]") == (
        "from 198.51.100.0/24:5123 and [2001:db8:a::/48]"
    )
    assert (
        mask_ip("at 09:00:00, version 1.2.3, 300.1.1.1") == "at 09:00:00, version 1.2.3, 300.1.1.1"
    )
    assert mask_tokens(f"GET /u/{TOKEN}?x=1 and /confirm/{CONFIRM_TOKEN}/resend") == (
        "GET /u/***?x=1 and /confirm/***/resend"
    )
    assert mask_tokens(f"token {TOKEN} seen") == "token *** seen"
    redactor = Redactor([KEY])
    once = redactor.clean(f"{ADDRESS} from {CLIENT_IP} via /u/{TOKEN}", 10)
    assert once == "a***@<other> from 203.0.113.0/24 via /u/***"
    assert redactor.clean(once, 10) == once  # cleaning twice (two handlers) changes nothing


def test_the_servers_own_listening_address_shows_and_client_ips_stay_cut() -> None:
    """uvicorn's start line names the address the server binds, not a reader's: it showed as
    ``http://127.0.0.0/24:8000``, cut like a client IP."""
    redactor = Redactor([KEY])

    def logged(name: str, msg: str, *args: object) -> str:
        record = logging.LogRecord(name, logging.INFO, __file__, 1, msg, args, None)
        assert redactor.filter(record)
        return record.getMessage()

    # Given uvicorn's start lines (IPv4, IPv6) as uvicorn.config and uvicorn.server log them
    started = "Uvicorn running on %s://%s:%d (Press CTRL+C to quit)"
    started6 = "Uvicorn running on %s://[%s]:%d (Press CTRL+C to quit)"
    # Then the bind address shows whole
    assert logged("uvicorn.error", started, "http", "127.0.0.1", 8000) == (
        "Uvicorn running on http://127.0.0.1:8000 (Press CTRL+C to quit)"
    )
    assert logged("uvicorn.error", started6, "http", "2001:db8:1:2::7", 8000) == (
        "Uvicorn running on http://[2001:db8:1:2::7]:8000 (Press CTRL+C to quit)"
    )
    # And a client's IP is still cut, in uvicorn's other lines and in a look-alike of ours
    assert logged("uvicorn.error", "%s - connection closed", "203.0.113.77:5123") == (
        "203.0.113.0/24:5123 - connection closed"
    )
    assert logged("worker.web", started, "http", "203.0.113.77", 80) == (
        "Uvicorn running on http://203.0.113.0/24:80 (Press CTRL+C to quit)"
    )
    assert logged("uvicorn.error", "Uvicorn running on 203.0.113.77 %s", "x") == (
        "Uvicorn running on 203.0.113.0/24 x"
    )


def test_an_address_that_is_not_valid_is_masked_too() -> None:
    """A refused signup's event reaches dramatiq's DEBUG line "Received message handle_signup(…)"
    as it was sent: found by tests/test_process_logs.py, where ``Vasil.Invalid@@example.org``
    went out in clear because the address rule needs a well-formed address."""
    event = "{'version': 1, 'email': 'Vasil.Invalid@@example.org', 'language': 'en'}"
    assert mask_address(event) == "{'version': 1, 'email': '***', 'language': 'en'}"
    assert mask_address('{"email": "vasil at example"}') == '{"email": "***"}'
    assert mask_address("from Vasil.Invalid@@example.org") == "from V***@@<other>"
    assert mask_address("from Vasil.Invalid@@gmail.com") == "from V***@@gmail.com"
    assert mask_address("to anna@ and me@localhost") == "to a***@ and me@localhost"
    assert mask_address("a***@<other>, ч***@gmail.com") == "a***@<other>, ч***@gmail.com"
    assert mask_address("a***@example.org, ч***@пошта.бел") == "a***@<other>, ч***@<other>"
    assert mask_address("smtp://relay:***@mail.example.org:587") == (
        "smtp://relay:***@mail.example.org:587"
    )
