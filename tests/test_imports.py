"""What worker/ imports: developer tools stay apart, and every third-party import is declared."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "worker"
# Production code may not import these; only the CLI wires them in (issue 12).
DEVTOOLS = "worker.devtools"
ALLOWED_TO_IMPORT_DEVTOOLS = ("worker/devtools/", "worker/cli/")


def imports_of(path: Path) -> Iterator[str]:
    """Absolute module names imported anywhere in ``path`` (function-level imports included)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module
            # ``from worker import devtools`` names the package in the alias, not the module.
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def worker_modules() -> list[Path]:
    return sorted(WORKER.rglob("*.py"))


def normalise(distribution: str) -> str:
    """PEP 503 form of a distribution name: ``Flufl_Bounce`` and ``flufl.bounce`` compare equal."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


def declared_distributions() -> set[str]:
    """Names in pyproject.toml's ``[project] dependencies``, extras and versions dropped."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    names = (re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", req) for req in project["dependencies"])
    return {normalise(name.group(0)) for name in names if name}


def third_party_imports() -> dict[str, set[str]]:
    """Top-level third-party import names used in worker/, each with the files using it."""
    found: dict[str, set[str]] = {}
    for path in worker_modules():
        for module in imports_of(path):
            top = module.split(".")[0]
            if top != "worker" and top not in sys.stdlib_module_names:
                found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_production_modules_never_import_devtools() -> None:
    offenders = sorted(
        f"{path.relative_to(ROOT)} imports {module}"
        for path in worker_modules()
        if not str(path.relative_to(ROOT)).startswith(ALLOWED_TO_IMPORT_DEVTOOLS)
        for module in imports_of(path)
        if module == DEVTOOLS or module.startswith(f"{DEVTOOLS}.")
    )

    assert offenders == []


def test_the_import_scan_sees_devtools_in_the_cli() -> None:
    # Guards the test above against a scan that finds nothing.
    cli_imports = {m for path in (WORKER / "cli").glob("*.py") for m in imports_of(path)}

    assert "worker.devtools.chromium" in cli_imports


def test_every_third_party_import_is_a_declared_dependency() -> None:
    # Import names differ from distribution names (yaml -> PyYAML): ask the installed metadata.
    distributions = importlib.metadata.packages_distributions()
    declared = declared_distributions()

    undeclared = {
        name: sorted(files)
        for name, files in third_party_imports().items()
        if not {normalise(d) for d in distributions.get(name, [name])} & declared
    }

    assert undeclared == {}
    assert {"yaml", "sqlalchemy", "pydantic"} <= set(third_party_imports())


def test_no_module_imports_conftest() -> None:
    # pytest imports tests/conftest.py as ``conftest``; importing it as ``tests.conftest`` runs its
    # module code a second time (hypothesis profiles, a second pytest_configure). Shared values
    # live in tests/samples.py, tests/services.py and tests/stub_worker.py instead.
    helpers = sorted((ROOT / "tests").rglob("*.py")) + sorted((ROOT / "bench").rglob("*.py"))
    offenders = sorted(
        f"{path.relative_to(ROOT)} imports {module}"
        for path in helpers
        for module in imports_of(path)
        if module.split(".")[-1] == "conftest" or module.startswith("tests.conftest.")
    )

    assert offenders == []
    assert any("tests.samples" in imports_of(path) for path in helpers)  # the scan sees tests/
