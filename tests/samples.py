"""Files the tests read: the sample edition and the tables of cases.

Kept out of ``conftest.py``: pytest imports that file as ``conftest``, so a test importing
``tests.conftest`` would run its module code (hypothesis profiles, fixtures) a second time.
"""

from __future__ import annotations

from pathlib import Path

from worker.settings import EXAMPLES_DIR

SAMPLE_EDITION = EXAMPLES_DIR / "editions" / "2024-W28"  # newsletter.yaml and one file per language
CASES = Path(__file__).parent / "cases"  # one folder per table of cases, each with cases.json
