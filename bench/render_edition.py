"""Render time per language of the sample edition (and one transactional message).

Run: .venv/bin/python bench/render_edition.py [--repeat 200]
Prints the first (template-compiling) render, then median and 95th percentile per language.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from worker.editions.files import read_edition
from worker.editions.rendering import render_edition, render_message, sample_context

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "editions" / "2024-W28"


def _ms(action: object, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()  # type: ignore[operator]
        times.append((time.perf_counter() - start) * 1000)
    return sorted(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=200)
    repeat = parser.parse_args().repeat
    source = read_edition(SAMPLE)
    profile = source.newsletter
    start = time.perf_counter()
    render_edition(profile, source.contents["en"], public_url="https://x.example")
    print(f"first render (compiles templates): {(time.perf_counter() - start) * 1000:.0f} ms")
    for language, content in source.contents.items():
        times = _ms(
            lambda c=content: render_edition(profile, c, public_url="https://x.example"), repeat
        )
        p95 = times[int(len(times) * 0.95) - 1]
        print(f"edition {language}: median {statistics.median(times):.1f} ms, p95 {p95:.1f} ms")
    times = _ms(
        lambda: render_message(
            "confirmation",
            "ru",
            sample_context("confirmation"),
            profile=profile,
            public_url="https://x.example",
        ),
        repeat,
    )
    print(f"confirmation ru: median {statistics.median(times):.1f} ms")


if __name__ == "__main__":
    main()
