"""The ``newsletter`` command: every command defined under worker/cli is reachable from it."""

from __future__ import annotations

import importlib
import pkgutil

import click

import worker.cli
from worker.cli import main


def defined_commands() -> dict[str, click.Command]:
    """Every click command or group at module level in worker/cli, by ``module.attribute``."""
    found: dict[str, click.Command] = {}
    for info in pkgutil.iter_modules(worker.cli.__path__, "worker.cli."):
        module = importlib.import_module(info.name)  # an ImportError fails the test: good
        for attribute, value in vars(module).items():
            # A command's own module is its callback's (the object's __module__ is click.core).
            defined_here = getattr(getattr(value, "callback", None), "__module__", None)
            if isinstance(value, click.Command) and defined_here == info.name:
                found[f"{info.name}.{attribute}"] = value
    return found


def reachable(group: click.Command) -> list[click.Command]:
    """``group`` and every command below it."""
    below = getattr(group, "commands", {}).values()
    return [group, *(command for child in below for command in reachable(child))]


def test_every_cli_command_is_registered() -> None:
    registered = {id(command) for command in reachable(main)}

    defined = defined_commands()
    missing = [name for name, command in defined.items() if id(command) not in registered]

    assert len(defined) > 10 and missing == []
    assert isinstance(main, click.Group)
    assert {"edition", "send", "db", "demo", "status"} <= set(main.commands)
    edition = main.commands["edition"]
    assert isinstance(edition, click.Group)
    assert {"check", "preview", "load", "test-send"} <= set(edition.commands)


def test_moving_in_before_any_edition_is_one_clear_line(tmp_path: object) -> None:
    """The natural order of a move is the list first, the first edition later: without a
    newsletter yet, the import says how to set one up instead of a LookupError traceback."""
    from pathlib import Path

    from click.testing import CliRunner

    from worker.db import upgrade

    folder = Path(str(tmp_path))
    url = f"sqlite:///{folder / 'empty.db'}"
    upgrade(url)
    export = folder / "members.csv"
    export.write_text("Email Address,First Name\nanna@example.org,Anna\n", encoding="utf-8")
    env = {"NEWSLETTER_DATABASE_URL": url, "NEWSLETTER_SECRET_KEY": "k" * 8 + "0123456789abcdefgh"}
    result = CliRunner().invoke(
        main, ["subscribers", "import", str(export), "--format", "mailchimp"], env=env
    )
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        "Error: no newsletter 'weekly' yet: load an edition first (`newsletter edition load "
        "PATH`) or set NEWSLETTER_NEWSLETTER_PATH to its newsletter.yaml"
    )
    assert "Traceback" not in result.output
