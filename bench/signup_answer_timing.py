"""Does ``POST /signup`` take the same time whatever the address's state? (issue 13)

The property behind "no enumeration": the answer is byte for byte the same for a new, pending,
confirmed and suppressed address (asserted by tests/test_signups.py, which also asserts that the
endpoint reads nothing about the address), and so should its time be. Wall time is noise on a
loaded machine, so it is measured here, not asserted in the suite.

An SQLite file, the in-process broker (the enqueued events are dropped, not processed), the
in-memory limiter; ``--rounds`` requests per state, interleaved in rotating order so drift of
the machine hits every state alike, after 20 warm-up rounds.

    .venv/bin/python bench/signup_answer_timing.py --rounds 500

Prints one JSON document: the median and p90 in milliseconds per state, and the spread of the
medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DATA_KEY_ENV
from worker import broker
from worker.settings import EXAMPLES_DIR, Settings

STATES = {
    "new": "new{}@example.org",
    "pending": "pending@example.org",
    "confirmed": "confirmed@example.org",
    "suppressed": "suppressed@example.org",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings.from_env(
            DATA_KEY_ENV,
            database_url=f"sqlite:///{folder}/bench.db",
            redis_url="",
            broker="stub",
            secret_key="bench-secret-key",
            signups_per_ip_per_hour=0,
            newsletter_path=str(EXAMPLES_DIR / "editions" / "2024-W28" / "newsletter.yaml"),
        )
        broker.setup(settings)
        print(json.dumps(measure(settings, args.rounds), indent=2))


def measure(settings: Settings, rounds: int) -> dict[str, object]:
    """Median and p90 milliseconds per address state over ``rounds`` interleaved requests."""
    from fastapi.testclient import TestClient

    from worker import actors
    from worker.db import upgrade
    from worker.runtime import Runtime
    from worker.subscriptions.signups import confirm, confirmation_token
    from worker.subscriptions.suppressions import suppress
    from worker.web.app import create_app

    upgrade(settings.database_url)
    rt = Runtime(settings)
    actors.use_runtime(rt)
    actors.handle_signup(_event("pre-1", "pending@example.org"))
    actors.handle_signup(_event("pre-2", "confirmed@example.org"))
    with rt.session() as session:
        from sqlalchemy import select

        from worker.models import Subscriber

        row = session.scalars(
            select(Subscriber).where(Subscriber.email_key == "confirmed@example.org")
        ).one()
        confirm(session, rt.tokens, confirmation_token(rt.tokens, row), max_age_seconds=60,
                now=rt.clock.now(), ip=None, user_agent=None)  # fmt: skip
        suppress(session, dedupe_key="suppressed@example.org", hash_key=settings.secret_key,
                 reason="complaint", now=rt.clock.now())  # fmt: skip
    client = TestClient(create_app(rt), client=("192.0.2.7", 50000))
    times: dict[str, list[float]] = {state: [] for state in STATES}
    order = list(STATES.items())
    for n in range(rounds + 20):
        for state, address in order[n % 4 :] + order[: n % 4]:
            body = json.dumps(_event(f"{state}-{n}", address.format(n)))
            started = time.perf_counter()
            client.post("/signup", content=body, headers={"Content-Type": "application/json"})
            if n >= 20:
                times[state].append(time.perf_counter() - started)
        broker.current().flush_all()
    medians = {state: statistics.median(t) * 1000 for state, t in times.items()}
    return {
        "rounds": rounds,
        "median_ms": {s: round(m, 3) for s, m in medians.items()},
        "p90_ms": {s: round(statistics.quantiles(t, n=10)[-1] * 1000, 3) for s, t in times.items()},
        "spread_of_medians_ms": round(max(medians.values()) - min(medians.values()), 3),
    }


def _event(event_id: str, address: str) -> dict[str, object]:
    return {"version": 1, "event_id": event_id, "email": address, "language": "en"}


if __name__ == "__main__":
    main()
