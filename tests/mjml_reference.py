"""Reference MJML (npm ``mjml``, pinned in tests/fidelity/package.json) for the tests.

mjml-python does not validate; reference MJML's strict validation is our template linter and its
HTML the yardstick for fidelity. The first use runs ``npm ci`` in tests/fidelity when
``node_modules`` is missing. Missing node/npm is an error, not a skip: CI installs them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

FIDELITY_DIR = Path(__file__).resolve().parent / "fidelity"
SCRIPT = FIDELITY_DIR / "reference.js"


@dataclass(frozen=True)
class ReferenceResult:
    """What reference MJML made of one document: strict-validation errors (formatted, and as
    (line, element, message) triples) and soft-mode HTML."""

    html: str
    errors: tuple[str, ...]
    problems: tuple[tuple[int, str, str], ...] = ()


def _require(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        raise RuntimeError(
            f"{tool} not found: the MJML tests need Node.js and npm (Debian: apt-get install -y "
            "nodejs npm)"
        )
    return found


def ensure_installed() -> None:
    """Run ``npm ci`` in tests/fidelity unless reference MJML is installed already."""
    if (FIDELITY_DIR / "node_modules" / "mjml" / "package.json").is_file():
        return
    done = subprocess.run(
        [_require("npm"), "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=FIDELITY_DIR,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"npm ci failed in {FIDELITY_DIR}:\n{done.stdout}\n{done.stderr}")


def render(
    documents: dict[str, str],
    *,
    files: dict[str, Path] | None = None,
    include_root: Path | None = None,
) -> dict[str, ReferenceResult]:
    """Render and strictly validate each MJML document (id -> source) in one node process.

    ``files`` (id -> path) names the file a document is read from: its ``mj-include`` elements
    are then honoured, relative to that file and allowed inside ``include_root``.
    """
    ensure_installed()
    items: list[dict[str, str]] = []
    for key, source in documents.items():
        item = {"id": key, "mjml": source}
        if files and key in files:
            item["filePath"] = str(files[key])
            if include_root is not None:
                item["includePath"] = str(include_root)
        items.append(item)
    payload = json.dumps(items)
    done = subprocess.run(
        [_require("node"), str(SCRIPT)],
        input=payload,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=FIDELITY_DIR,
    )
    if done.returncode != 0:
        raise RuntimeError(f"reference MJML failed:\n{done.stderr}")
    return {
        item["id"]: ReferenceResult(
            item["html"],
            tuple(item["errors"]),
            tuple((p["line"], p["tagName"], p["message"]) for p in item["problems"]),
        )
        for item in json.loads(done.stdout)
    }
