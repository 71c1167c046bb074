"""The README documents what a newcomer needs."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from worker.settings import PREFIX, Settings

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    missing = [
        PREFIX + f.name.upper() for f in fields(Settings) if PREFIX + f.name.upper() not in README
    ]
    assert missing == []


def test_the_readme_names_the_ci_test_command() -> None:
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert "scripts/test" in ci and "scripts/test" in README


def test_every_cli_command_is_in_the_readme() -> None:
    """An operator who reads only the README finds every command (test-send, subscribers,
    suppressions and throttle were missing once)."""
    import click

    from worker.cli import main

    def commands(group: click.Group, prefix: str) -> list[str]:
        found = []
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                found += commands(command, f"{prefix} {name}")
            else:
                found.append(f"{prefix} {name}")
        return found

    readme = README
    missing = []
    for command in commands(main, "newsletter"):
        *group, name = command.split()
        # "newsletter send pause SEND` / `resume SEND`": a sibling may follow its group's first
        if command not in readme and not re.search(
            rf"`{re.escape(' '.join(group))} [^`]*`[^|\n]*`{re.escape(name)}\b", readme
        ):
            missing.append(command)
    assert missing == []
