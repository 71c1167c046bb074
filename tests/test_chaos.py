"""Chaos: a 5,000-recipient send while worker processes are SIGKILLed and restarted, Redis is
restarted (empty) once, and the SMTP server defers 10 % of recipients with 451 and drops 2 % of
transactions mid-DATA. At the end every recipient was accepted exactly once by the SMTP server,
except those the ledger reports ``unknown``, and the ledger agrees with the SMTP server.

Real PostgreSQL, a redis-server started on a spare port, three dramatiq worker process groups and
the reconciler (``newsletter scheduler --interval 1``). The edition's rendition is a small one
(inserted before planning) so that the SMTP server in the test process is not the bottleneck.
Figures are printed (run with ``-s``); bounded to about 4 minutes.
"""

from __future__ import annotations

import os
import random
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.queue_harness import (
    RedisServer,
    dead_letters,
    running,
    start_planning,
    truncate,
    worker_env,
)
from tests.sendkit import seed, states
from tests.smtp_script import ScriptHandler, ScriptServer
from tests.test_queue_cases import create, finished, local_runtime
from worker.models import Rendition
from worker.runtime import Runtime
from worker.sending.sql_ledger import SqlLedger

pytestmark = pytest.mark.slow

RECIPIENTS = 5_000
GROUPS = ("w1", "w2", "w3")
THREADS = 4  # per worker process: at most this many messages in flight when one is killed
DEADLINE = 225.0  # seconds for the whole send
CHAOS_SECONDS = 150.0  # kills stop then, so that a loaded machine can finish in time
SETTINGS = {
    "claim_lease_seconds": 6,
    "smtp_timeout_seconds": 4,
    "batch_grace_seconds": 4,
    "retry_base_seconds": 1,
    "send_batch_size": 50,
}


def chooser(drop_rate: float, rng: random.Random) -> Callable[[str, int], str | None]:
    """10 % of recipients (fixed by a hash) get 451 on their first attempt; 2 % of all
    transactions are dropped after the message arrived, without a reply."""

    def choose(recipient: str, attempt: int) -> str | None:
        if attempt == 0 and zlib.crc32(recipient.encode()) % 10 == 0:
            return "RCPT 451 4.7.1 Greylisted, try again later"
        if rng.random() < drop_rate:
            return "DATA drop"
        return None

    return choose


def small_rendition(rt: Runtime, send_id: int) -> None:
    with rt.session() as session:
        session.add(
            Rendition(
                send_id=send_id,
                language="en",
                subject="Chaos weekly",
                preheader="",
                html='<p>Hello</p><p><a href="%%UNSUBSCRIBE_URL%%">unsubscribe</a></p>',
                text="Hello\n\nUnsubscribe: %%UNSUBSCRIBE_URL%%\n",
                rendered_at=rt.clock.now(),
            )
        )
        session.commit()


def test_chaos_kills_redis_restart_deferrals_and_drops(pg_url: str, tmp_path: Path) -> None:
    truncate(pg_url)
    # The kill schedule, the drops and the deferrals repeat from run to run (a test that fails
    # at random is a bug); CHAOS_SEED explores other schedules, and what one finds becomes a
    # fixed test (the lost planning message: test_dispatch.py).
    rng = random.Random(int(os.environ.get("CHAOS_SEED", "20261203")))
    handler = ScriptHandler(chooser=chooser(0.02, rng), keep_data=False)
    redis_server = RedisServer(tmp_path)
    redis_server.start()
    recipients = [f"c{n:05d}@example{n % 7}.org" for n in range(RECIPIENTS)]
    kills: list[tuple[float, str]] = []
    started = time.monotonic()
    try:
        with (
            ScriptServer(handler) as smtp,
            running(
                tmp_path, worker_env(pg_url, redis_server.url, smtp.url(), **SETTINGS)
            ) as fleet,
        ):
            rt = local_runtime(pg_url)
            seed(rt, recipients)
            send_id = create(rt, SETTINGS["send_batch_size"])
            small_rendition(rt, send_id)
            for name in GROUPS:
                fleet.start_workers(name, 1, THREADS)
            start_planning(redis_server.url, send_id)  # its hint before any reconciler
            fleet.start_scheduler(1.0)
            stop = threading.Event()

            def chaos() -> None:
                redis_restarted = False
                while not stop.wait(rng.uniform(4.0, 9.0)):
                    if time.monotonic() - started > CHAOS_SECONDS:
                        return
                    name = rng.choice(GROUPS)
                    fleet.kill(name)  # SIGKILL: no graceful shutdown, nothing acked
                    kills.append((time.monotonic() - started, name))
                    stop.wait(0.5)
                    fleet.start_workers(name, 1, THREADS)
                    if not redis_restarted and time.monotonic() - started > 20:
                        redis_server.restart()  # empty: every queued message is gone
                        kills.append((time.monotonic() - started, "redis"))
                        redis_restarted = True

            monkey = threading.Thread(target=chaos, daemon=True)
            monkey.start()
            while not finished(rt, send_id) and time.monotonic() - started < DEADLINE:
                time.sleep(1.0)
            stop.set()
            monkey.join(15)
            if not finished(rt, send_id):
                with rt.session() as session:
                    counts = SqlLedger(session).counts(send_id)
                log = fleet.log_tail(1500)
                raise AssertionError(f"not finished: {counts}, kills {kills}\n{log}")
            elapsed = time.monotonic() - started
    finally:
        redis_server.stop()

    ledger = states(rt, send_id)
    with rt.session() as session:
        counts = SqlLedger(session).counts(send_id)
        attempts = dict(session.execute(select(Rendition.language, Rendition.send_id)).all())
    accepted = handler.accepted
    worker_kills = [k for k in kills if k[1] != "redis"]
    unknown = [r for r, s in ledger.items() if s == "unknown"]
    dropped = sum(handler.dropped.values())
    deferred_once = sum(1 for r in recipients if zlib.crc32(r.encode()) % 10 == 0)
    print(
        f"\nchaos: {RECIPIENTS} recipients in {elapsed:.0f} s; {len(worker_kills)} worker kills, "
        f"1 Redis restart; {deferred_once} deferred once (451), {dropped} dropped mid-DATA; "
        f"ledger {counts}; accepted {sum(accepted.values())} "
        f"(max per recipient {max(accepted.values(), default=0)}); unknown {len(unknown)} "
        f"(of which accepted by the server: {sum(accepted[r] for r in unknown)}); "
        f"dead letters {dead_letters_safe(redis_server)}"
    )
    assert attempts  # the small rendition was used
    assert max(accepted.values()) == 1  # nobody got the edition twice
    for recipient in recipients:
        state = ledger[recipient]
        if state == "sent":
            assert accepted[recipient] == 1, recipient  # the ledger agrees with the server
        else:
            assert state == "unknown", (recipient, state)  # nobody skipped silently
    # unknown only where the outcome was truly lost: a drop after the final dot, or a kill
    # during a transaction (at most THREADS in flight per killed process)
    assert len(unknown) <= dropped + THREADS * len(worker_kills)
    assert set(Counter(ledger.values())) <= {"sent", "unknown"}


def dead_letters_safe(server: RedisServer) -> str:
    try:
        return str(dead_letters(server.url))
    except Exception:  # the server is stopped at this point
        return "n/a"
