"""docker-compose.yml agrees with the code: its settings, commands and queues exist."""

from __future__ import annotations

import re
import shlex
from dataclasses import fields
from pathlib import Path

import click
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
