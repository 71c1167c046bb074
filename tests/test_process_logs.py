"""No reader in any process's output: a whole signup → confirm → send runs through the real
processes an operator starts (dramatiq workers, the scheduler, the web app), every logger at
DEBUG, and every byte they wrote to stdout and stderr is searched for the readers' addresses
(in any case, with the domain in Unicode and as A-labels), their link tokens (confirmation,
unsubscribe, preferences), the sealed ids of their deliveries and their full IP addresses.

Small on purpose (three readers, one refused signup, one 550): a run takes 10–20 s, most of it
the processes' start. Every wait is on a condition (a mail arrived, the send finished, the
queues are empty), never a fixed sleep, so the test does not depend on the machine's speed."""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.samples import SAMPLE_EDITION
from tests.smtp_script import ScriptHandler, ScriptServer
from tests.test_reader_safety import _forms
from tests.test_real_broker import Website, runtime, website, worker_env
from worker.devtools.outbox import free_port
from worker.editions.files import read_edition
from worker.editions.store import find_edition, save_edition
from worker.models import Send
from worker.runtime import Runtime
from worker.sending.sends import create_send

__all__ = ["runtime", "website"]  # the fixtures of tests.test_real_broker, used here too

pytestmark = pytest.mark.slow  # five processes: 10–20 s

WAIT = 45.0  # seconds for any one step; each takes 1–3 s on an idle machine
# address → (language, the IP its signup came from)
READERS = {
    "Anna.Lestvica@Example.org": ("en", "203.0.113.57"),
    "chytach.kviten@пошта.бел": ("be", "2001:db8:85a3:17:8a2e:370:7334:1"),
    "olga.refused@example.com": ("ru", "198.51.100.23"),
}
REFUSED_AT_SEND = "olga.refused@example.com"  # the relay answers 550 to the edition
INVALID_SIGNUP = "Vasil.Invalid@@example.org"  # refused at signup; the event is stored sealed
CONFIRMING_IP = "192.0.2.201"  # the reader's browser behind the trusted proxy
LOCAL_PARTS = ("anna.lestvica", "chytach.kviten", "olga.refused", "vasil.invalid")


def _start(command: list[str], env: dict[str, str], out: Path) -> subprocess.Popen[bytes]:
    with out.open("wb") as log:
        return subprocess.Popen(
            command,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as a whole at the end
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)
    except ProcessLookupError:
        pass


@pytest.fixture
def processes(
    db_url: str, tmp_path: Path, website: Website
) -> Iterator[tuple[ScriptServer, dict[str, subprocess.Popen[bytes]], int]]:
    """The relay (550 to the edition for ``REFUSED_AT_SEND``), then the workers (both groups'
    queues), the scheduler (every second) and the web app, all at DEBUG."""
    handler = ScriptHandler(
        {
            REFUSED_AT_SEND: [
                "RCPT 250 2.1.5 Ok",
                f"RCPT 550 5.1.1 <{REFUSED_AT_SEND}>: no such user",
            ]
        }
    )
    with ScriptServer(handler) as relay:
        env = worker_env(db_url, relay.url())
        env.update(
            NEWSLETTER_LOG_LEVEL="DEBUG",
            NEWSLETTER_TRUSTED_PROXIES="127.0.0.1/32",
            NEWSLETTER_METRICS_PORT=str(free_port()),
            NEWSLETTER_SEND_BATCH_SIZE="10",
        )
        port = free_port()
        python = sys.executable
        started = {
            "workers": _start(
                [python, "-m", "dramatiq", "worker.actors", "--processes", "1", "--threads", "2"],
                env,
                tmp_path / "workers.log",
            ),
            "scheduler": _start(
                [
                    python,
                    "-c",
                    "from worker.cli import main; main()",
                    "scheduler",
                    "--interval",
                    "1",
                ],
                env,
                tmp_path / "scheduler.log",
            ),
            "web": _start(
                [python, "-c", "from worker.cli import main; main()", "web", "--port", str(port)],
                env,
                tmp_path / "web.log",
            ),
        }
        try:
            yield relay, started, port
        finally:
            for process in started.values():
                _stop(process)


def _messages(relay: ScriptServer) -> list[tuple[str, email.message.EmailMessage]]:
    with relay.handler.lock:
        kept = [(r, data) for r, datas in relay.handler.messages.items() for data in datas]
    return [(r, email.message_from_bytes(data, policy=email.policy.default)) for r, data in kept]


def _links(message: email.message.EmailMessage) -> list[str]:
    text = message.as_string()
    text = re.sub(r"=\r?\n", "", text)  # quoted-printable soft breaks
    return re.findall(r"http://testserver(/(?:confirm|u|p)/[A-Za-z0-9_.~-]+)", text)


def _secrets_of(message: email.message.EmailMessage) -> set[str]:
    """The reader's tokens in a mail: link tokens, the sealed ids of its Message-ID, VERP
    return path and X-Newsletter-Delivery."""
    found = {link.rsplit("/", 1)[1] for link in _links(message)}
    for header in ("Message-ID", "X-Newsletter-Delivery", "Return-Path"):
        found |= set(re.findall(r"[a-z2-7]{26}", str(message.get(header, ""))))
    return {token for token in found if len(token) >= 16}


def _needles(tokens: set[str]) -> set[str]:
    needles = set(LOCAL_PARTS)
    for address in [*READERS, INVALID_SIGNUP.replace("@@", "@")]:
        needles |= _forms(address)
    needles |= {ip for _, ip in READERS.values()} | {CONFIRMING_IP}
    for token in tokens:
        needles |= {token, token[-20:]}
    return needles


def _found(blob: str, needles: set[str]) -> list[str]:
    lowered = blob.lower()
    return sorted(n for n in needles if n.lower() in lowered)


def test_no_process_writes_a_reader_at_debug(
    processes: tuple[ScriptServer, dict[str, subprocess.Popen[bytes]], int],
    website: Website,
    runtime: Runtime,
    tmp_path: Path,
) -> None:
    relay, started, port = processes

    def wait(what: str, condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + WAIT
        while not condition():
            for name, process in started.items():
                log = (tmp_path / f"{name}.log").read_text(errors="replace")
                assert process.poll() is None, f"{name} died while waiting for {what}:\n{log}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.1)

    with runtime.session() as session:
        save_edition(session, read_edition(SAMPLE_EDITION), runtime.clock.now())
    # Given three signups (with the websites' IPs) and one refused signup
    for n, (address, (language, ip)) in enumerate(READERS.items()):
        website.enqueue(
            "signups",
            "handle_signup",
            {
                "version": 1,
                "event_id": f"logs-{n}",
                "email": address,
                "language": language,
                "source": "test",
                "ip": ip,
                "user_agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
                "consent_version": "2024-07",
            },
        )
    website.enqueue(
        "signups",
        "handle_signup",
        {"version": 1, "event_id": "logs-bad", "email": INVALID_SIGNUP, "language": "en"},
    )
    wait("confirmation mails", lambda: len(_messages(relay)) == len(READERS))
    # When each reader confirms through the web app, from a browser behind the trusted proxy
    wait("the web app", lambda: _answers(port, "/healthz"))
    tokens: set[str] = set()
    for _, message in _messages(relay):
        tokens |= _secrets_of(message)
        (path,) = {link for link in _links(message) if link.startswith("/confirm/")}
        _post(port, path, CONFIRMING_IP)
    # and the edition is sent: two delivered, one refused with a 550 naming the reader
    with runtime.session() as session:
        stored = find_edition(session, "2024-W28")
        assert stored is not None
        send_id = int(create_send(session, stored, runtime.clock.now(), 10).id)
    website.enqueue("sends", "plan_send", send_id)

    def finished() -> bool:
        with runtime.session() as session:
            send = session.get(Send, send_id, populate_existing=True)
            return send is not None and send.status == "finished"

    wait("the send to finish", finished)
    wait("queues to drain", website.idle)
    editions = [m for _, m in _messages(relay) if m["X-Newsletter-Edition"]]
    assert len(editions) == len(READERS) - 1
    for message in editions:
        tokens |= _secrets_of(message)
    assert len(tokens) >= 3 * len(READERS)  # confirmation, unsubscribe, preferences, ids
    for process in started.values():
        _stop(process)
    # Then every process wrote something at DEBUG, and none of it names a reader
    outputs = {name: (tmp_path / f"{name}.log").read_text(errors="replace") for name in started}
    assert all(outputs.values()), {name: len(text) for name, text in outputs.items()}
    assert "DEBUG" in outputs["workers"]
    assert "o***@<other>" in outputs["workers"]  # the 550 names the reader: masked, domain too
    needles = _needles(tokens)
    leaks = {name: _found(text, needles) for name, text in outputs.items()}
    assert leaks == {name: [] for name in started}, _context(outputs, leaks)


def _answers(port: int, path: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as answer:
            return int(answer.status) == 200
    except OSError:
        return False


def _post(port: int, path: str, client_ip: str) -> None:
    """Press the confirmation page's button, as a browser behind the proxy at 127.0.0.1."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=b"confirm=1",
        headers={"X-Forwarded-For": client_ip, "User-Agent": "Mozilla/5.0 Firefox/128.0"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200


def _context(outputs: dict[str, str], leaks: dict[str, list[str]]) -> str:
    """The lines that hold each leak, to say where it came from."""
    lines = []
    for name, found in leaks.items():
        for needle in found:
            lines += [
                f"{name}: {line[:300]}"
                for line in outputs[name].splitlines()
                if needle.lower() in line.lower()
            ][:3]
    return json.dumps(lines, ensure_ascii=False, indent=1)
