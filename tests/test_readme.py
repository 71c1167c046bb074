"""The README documents what a newcomer needs."""

from __future__ import annotations

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
