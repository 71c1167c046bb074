"""The runtime owns every adapter, and importing the entry modules does nothing.

Imports are checked in a fresh interpreter (this process already has a broker and metrics),
with an environment that would make import-time code act: a Redis broker URL that nothing
listens on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.services import DATA_KEY, DATA_KEY_ENV
from worker.runtime import Runtime, runtime, use_runtime
from worker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
KEY = "runtime-test-secret-0123456789"

PROBE = """
import json, sys
import dramatiq.broker
from prometheus_client import REGISTRY
before = set(REGISTRY._names_to_collectors)
for name in sys.argv[1:]:
    __import__(name)
print(json.dumps({
    "broker": dramatiq.broker.global_broker is not None,
    "families": sorted(set(REGISTRY._names_to_collectors) - before),
}))
"""


def _import_in_fresh_process(*modules: str) -> dict[str, object]:
    """What importing ``modules`` left behind: a dramatiq broker set, new metric families."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env["NEWSLETTER_DATA_KEY"] = os.environ["NEWSLETTER_DATA_KEY"]  # the suite's (conftest)
    env.update(PYTHONPATH=str(ROOT), NEWSLETTER_REDIS_URL="redis://127.0.0.1:1/0")
    env.update(NEWSLETTER_SECRET_KEY=KEY, NEWSLETTER_DATA_KEY=DATA_KEY)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *modules],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_importing_the_library_modules_has_no_side_effect() -> None:
    # Given a fresh interpreter
    # When the broker, metrics, runtime and web modules are imported
    seen = _import_in_fresh_process(
        "worker.broker", "worker.operators.metrics", "worker.runtime", "worker.web.app"
    )
    # Then no dramatiq broker is set and no metric family is registered
    assert seen["broker"] is False
    assert seen["families"] == []


def test_importing_actors_sets_up_the_broker_but_registers_no_metric() -> None:
    # Given a fresh interpreter: `dramatiq worker.actors` imports the module, then takes the
    # global broker, so the actors module is the one entry point that sets it up on import
    seen = _import_in_fresh_process("worker.actors")
    # Then the broker is set, and still no metric family exists before the first count
    assert seen["broker"] is True
    assert seen["families"] == []


def test_metric_families_are_created_on_first_use() -> None:
    from prometheus_client import REGISTRY

    from worker.operators import metrics

    # When a family is asked for twice
    first = metrics.counter("newsletter_signups_total")
    # Then it is registered once and the same object comes back
    assert metrics.counter("newsletter_signups_total") is first
    assert REGISTRY._names_to_collectors["newsletter_signups_total"] is first
    with pytest.raises(KeyError):
        metrics.counter("newsletter_unknown_total")


def test_runtime_memoises_its_adapters(tmp_path: Path) -> None:
    # Given a runtime with Redis and SQLite settings (Redis is not contacted: clients are lazy)
    settings = Settings.from_env(
        DATA_KEY_ENV,
        database_url=f"sqlite:///{tmp_path / 'r.db'}",
        redis_url="redis://127.0.0.1:1/0",
        broker="redis",
        secret_key=KEY,
    )
    rt = Runtime(settings)
    # Then each adapter is built once, and the Redis-backed ones share one client
    assert rt.engine is rt.engine
    assert rt.redis is rt.redis and rt.redis is not None
    assert rt.limiter is rt.limiter
    assert rt.hints is rt.hints and rt.hints.client is rt.redis
    assert rt.throttle is rt.throttle
    assert rt.tokens is rt.tokens
    assert rt.mailer is rt.mailer  # per thread
    rt.close()


def test_runtime_without_redis_keeps_its_state_in_memory(tmp_path: Path) -> None:
    settings = Settings.from_env(
        DATA_KEY_ENV, database_url=f"sqlite:///{tmp_path / 'r.db'}", redis_url="", secret_key=KEY
    )
    rt = Runtime(settings)
    assert rt.redis is None
    assert rt.hints.client is None
    assert type(rt.limiter).__name__ == "MemorySignupLimiter"
    assert type(rt.throttle).__name__ == "LocalThrottle"


def test_use_runtime_swaps_the_process_runtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker import actors

    # Given two runtimes
    settings = Settings.from_env(
        DATA_KEY_ENV, database_url=f"sqlite:///{tmp_path / 'r.db'}", redis_url="", secret_key=KEY
    )
    first, second = Runtime(settings), Runtime(settings)
    try:
        # When one is installed, then the other
        use_runtime(first)
        # (actors.runtime is the name the actors look up, imported there, not re-exported)
        assert runtime() is first and actors.runtime() is first  # type: ignore[attr-defined]
        use_runtime(second)
        # Then the process's runtime (and so every adapter the actors use) is the new one
        assert runtime() is second
        assert runtime().hints is second.hints is not first.hints
    finally:
        use_runtime(None)
    # And None goes back to one built from the environment, memoised
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", KEY)
    assert runtime() is runtime() and runtime() not in (first, second)
    use_runtime(None)
