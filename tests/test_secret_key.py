"""Finding 4 of issue 13: no process starts without the shared secret key, or with a weak one.

A key made up per process signs links that the web app of another process rejects (404) and keys
suppression hashes that never match again, silently and for good. Each entry point is started
here as an operator would start it, in a fresh interpreter whose environment lacks the key.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.services import DATA_KEY
from worker.cli import main
from worker.runtime import Runtime
from worker.settings import SecretKeyError, Settings, secret_key_problem

ROOT = Path(__file__).resolve().parent.parent
CLI = "from worker.cli import main; main()"
WORKER = "import worker.actors"  # what `dramatiq worker.actors` does first

ENTRY_POINTS = {
    "web": [CLI, "web", "--port", "1"],
    "scheduler": [CLI, "scheduler", "--once"],
    "inbound smtp": [CLI, "inbound", "smtp", "--listen", "127.0.0.1:1"],
    "inbound imap": [CLI, "inbound", "imap", "imaps://u:p@127.0.0.1:1/INBOX", "--once"],
    "inbound reprocess": [CLI, "inbound", "reprocess"],
    "subscribers export": [CLI, "subscribers", "export", "anna@example.org"],
    "suppressions list": [CLI, "suppressions", "list"],
    "dramatiq worker": [WORKER],
}


def _start(
    argv: list[str], tmp_path: Path, key: str | None, data_key: str = DATA_KEY
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env["NEWSLETTER_DATA_KEY"] = os.environ["NEWSLETTER_DATA_KEY"]  # the suite's (conftest)
    env.update(
        NEWSLETTER_DATA_KEY=data_key,
        PYTHONPATH=str(ROOT),
        NEWSLETTER_DATABASE_URL=f"sqlite:///{tmp_path / 'n.db'}",
        NEWSLETTER_REDIS_URL="redis://127.0.0.1:1/0",  # nothing listens: no process gets that far
    )
    if key is not None:
        env["NEWSLETTER_SECRET_KEY"] = key
    return subprocess.run(
        [sys.executable, "-c", *argv], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_no_process_starts_without_a_secret_key(name: str, tmp_path: Path) -> None:
    # Given an environment without NEWSLETTER_SECRET_KEY
    # When the process is started
    done = _start(ENTRY_POINTS[name], tmp_path, key=None)
    # Then it refuses, saying what is missing and how to make a key
    assert done.returncode != 0
    assert "NEWSLETTER_SECRET_KEY is not set" in done.stderr, done.stderr[-2000:]
    assert "newsletter keys generate" in done.stderr


@pytest.mark.parametrize(
    ("key", "reason"),
    [("short-key-123", "too short"), ("k" * 40, "too few characters"), ("ab" * 20, "too few")],
)
def test_a_weak_key_is_refused(key: str, reason: str, tmp_path: Path) -> None:
    assert reason in secret_key_problem(key)
    with pytest.raises(SecretKeyError, match="newsletter keys generate"):
        Runtime(Settings.from_env({}, secret_key=key))
    done = _start(ENTRY_POINTS["inbound reprocess"], tmp_path, key=key)
    assert done.returncode != 0 and reason in done.stderr


def test_a_generated_key_is_accepted_and_every_process_shares_it(tmp_path: Path) -> None:
    # Given a key from `newsletter keys generate`
    generated = CliRunner().invoke(main, ["keys", "generate"])
    key = generated.output.strip()
    assert generated.exit_code == 0 and len(key) == 64 and secret_key_problem(key) == ""
    assert CliRunner().invoke(main, ["keys", "generate"]).output.strip() != key
    # And a database (`db upgrade` signs nothing, so it needs no key)
    assert _start([CLI, "db", "upgrade"], tmp_path, key=None).returncode == 0
    # When a process is started with it, it runs
    done = _start(ENTRY_POINTS["inbound reprocess"], tmp_path, key=key)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "processed 0 stored message(s)" in done.stdout
    # And the settings of two processes no longer carry two different made-up keys
    assert Settings.from_env({}).secret_key == ""
    assert Settings.from_env({"NEWSLETTER_SECRET_KEY": key}).require_secret_key() == key


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_no_process_starts_without_a_data_key(name: str, tmp_path: Path) -> None:
    # Given an environment with the secret key but no NEWSLETTER_DATA_KEY (issue 17)
    done = _start(ENTRY_POINTS[name], tmp_path, "a-good-secret-key-0123456789-abcdef", "")
    # Then the process refuses, naming the variable and how to make a key
    assert done.returncode != 0, done.stdout
    assert "NEWSLETTER_DATA_KEY" in done.stderr and "keys generate --data" in done.stderr
    assert "Traceback" not in done.stderr or name == "dramatiq worker"
