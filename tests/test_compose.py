"""docker-compose.yml agrees with the code: its settings, commands and queues exist."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import fields
from pathlib import Path
from urllib.parse import urlsplit

import click
import pytest
import yaml

from worker.broker import QUEUES
from worker.cli import main
from worker.settings import PREFIX, Settings

ROOT = Path(__file__).parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
SETTINGS = {PREFIX + f.name.upper() for f in fields(Settings)}


def _commands() -> list[list[str]]:
    out = []
    for service in COMPOSE["services"].values():
        command = service.get("command")
        if not command:
            continue
        text = command[-1] if command[:2] == ["sh", "-c"] else shlex.join(command)
        for part in re.split(r"&&", text):
            words = shlex.split(part.replace("exec ", " "))
            if words:
                out.append(words)
    return out


def test_every_newsletter_variable_in_compose_is_a_setting() -> None:
    names = {
        name
        for service in COMPOSE["services"].values()
        for name in (service.get("environment") or {})
        if name.startswith(PREFIX)
    }
    assert names and names <= SETTINGS, names - SETTINGS


def test_every_newsletter_command_in_compose_exists() -> None:
    newsletter = [words[1:] for words in _commands() if words[0] == "newsletter"]
    assert newsletter
    for args in newsletter:
        command: click.Command | None = main
        ctx = click.Context(main)
        for word in args:
            if word.startswith("-") or not isinstance(command, click.Group):
                break
            command = command.get_command(ctx, word)
            assert command is not None, f"newsletter {' '.join(args)}: no such command"


def test_every_queue_a_compose_worker_consumes_exists() -> None:
    workers = [words for words in _commands() if words[0] == "dramatiq"]
    assert len(workers) == 2
    consumed: set[str] = set()
    for words in workers:
        assert words[1] == "worker.actors"
        queues = words[words.index("--queues") + 1 :]
        assert set(queues) <= set(QUEUES)
        consumed |= set(queues)
    assert consumed == set(QUEUES)  # no queue left without a worker


def test_prometheus_scrapes_the_services_compose_defines() -> None:
    config = yaml.safe_load((ROOT / "monitoring" / "prometheus.yml").read_text(encoding="utf-8"))
    targets = {
        t.split(":")[0]
        for job in config["scrape_configs"]
        for c in job["static_configs"]
        for t in c["targets"]
    }
    assert targets <= set(COMPOSE["services"])


SECRETS = {
    "NEWSLETTER_SECRET_KEY": "compose-test-secret-0123456789",
    "NEWSLETTER_DATA_KEY": "Y29tcG9zZS10ZXN0LWRhdGEta2V5LTAxMjM0NTY3ODk=",
    "REDIS_PASSWORD": "redis-pass-5d1f0c2e9a",
    "NEWSLETTER_METRICS_TOKEN": "metrics-token-0c6b2f9e41",
    "GRAFANA_ADMIN_PASSWORD": "grafana-pass-77e0b1",
}


def _compose_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``docker-compose config``: the file as Compose resolves it with ``env``."""
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    base = {k: v for k, v in os.environ.items() if k not in SECRETS}
    return subprocess.run(
        [tool, "-f", str(ROOT / "docker-compose.yml"), "config"],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_redis_is_not_published_and_every_client_uses_its_password() -> None:
    # Given the compose file as an attacker on the host's network would meet it
    redis_service = COMPOSE["services"]["redis"]
    # Then Redis publishes no port, and demands a password
    assert "ports" not in redis_service
    assert "--requirepass" in redis_service["command"]
    # And once resolved, every service's Redis URL carries exactly that password
    done = _compose_config(SECRETS)
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)["services"]
    command = resolved["redis"]["command"]
    assert command[command.index("--requirepass") + 1] == SECRETS["REDIS_PASSWORD"]
    urls = {
        name: service["environment"]["NEWSLETTER_REDIS_URL"]
        for name, service in resolved.items()
        if "NEWSLETTER_REDIS_URL" in (service.get("environment") or {})
    }
    assert len(urls) >= 6
    for name, url in urls.items():
        assert urlsplit(url).password == SECRETS["REDIS_PASSWORD"], name


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_compose_refuses_to_start_without_each_secret(missing: str) -> None:
    # Given an environment that lacks one secret (no default admin password, no open Redis)
    env = {k: v for k, v in SECRETS.items() if k != missing}
    # When compose resolves the file, it refuses, naming the missing variable
    done = _compose_config(env)
    assert done.returncode != 0
    assert missing in done.stderr


def test_grafana_admin_password_comes_from_the_environment() -> None:
    done = _compose_config(SECRETS)
    assert done.returncode == 0, done.stderr
    grafana = yaml.safe_load(done.stdout)["services"]["grafana"]["environment"]
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"] == SECRETS["GRAFANA_ADMIN_PASSWORD"]
    assert "admin}" not in (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
