"""Scheduled sends and the weekly slot: local times and daylight saving, the CLI, firing once.

The once-only property is tested with real ``newsletter scheduler`` processes racing on the same
PostgreSQL or SQLite database and Redis, and across a scheduler restart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner, Result
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from tests.samples import SAMPLE_EDITION
from tests.sendkit import seed
from worker import actors
from worker.cli import main
from worker.devtools.outbox import OutboxServer
from worker.editions.files import EditionSource, read_edition
from worker.editions.store import find_edition, save_edition
from worker.models import Delivery, Send, SendSlot
from worker.runtime import Runtime, use_runtime
from worker.sending.schedule import ScheduleError, WeeklyTime, local_instant
from worker.sending.sends import When, create_send
from worker.sending.slots import set_slot
from worker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


# --- local times -----------------------------------------------------------------------------


def test_a_local_time_is_stored_as_its_utc_instant() -> None:
    # Minsk is UTC+3 all year
    assert local_instant("2024-07-15 09:00", "Europe/Minsk") == datetime(
        2024, 7, 15, 6, 0, tzinfo=UTC
    )
    assert local_instant("2024-07-15 09:00", "UTC") == datetime(2024, 7, 15, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "zone", "says"),
    [
        ("2024-03-31 02:30", "Europe/Berlin", "does not exist in Europe/Berlin"),
        ("2024-10-27 02:30", "Europe/Berlin", "happens twice in Europe/Berlin"),
        ("2024-03-10 02:15", "America/New_York", "does not exist"),
        ("2024-11-03 01:30", "America/New_York", "happens twice"),
        ("15.07.2024 09:00", "Europe/Minsk", "expected YYYY-MM-DD HH:MM"),
        ("2024-07-15 09:00", "Europe/Mordor", "unknown time zone 'Europe/Mordor'"),
        ("2024-07-15 09:00", "../../etc/passwd", "unknown time zone"),
    ],
)
def test_a_time_that_does_not_exist_or_is_ambiguous_is_refused(
    text: str, zone: str, says: str
) -> None:
    with pytest.raises(ScheduleError, match=says):
        local_instant(text, zone)


def test_a_weekly_slot_keeps_its_local_time_across_daylight_saving() -> None:
    monday_nine = WeeklyTime.parse("Monday 09:00")
    # Berlin leaves winter time on Sunday 2024-03-31
    before = monday_nine.next_after(datetime(2024, 3, 20, tzinfo=UTC), "Europe/Berlin")
    after = monday_nine.next_after(before, "Europe/Berlin")
    assert before == datetime(2024, 3, 25, 8, 0, tzinfo=UTC)  # 09:00 CET
    assert after == datetime(2024, 4, 1, 7, 0, tzinfo=UTC)  # 09:00 CEST
    # and back on 2024-10-27
    autumn = monday_nine.next_after(datetime(2024, 10, 15, tzinfo=UTC), "Europe/Berlin")
    assert autumn == datetime(2024, 10, 21, 7, 0, tzinfo=UTC)  # 09:00 CEST
    assert monday_nine.next_after(autumn, "Europe/Berlin") == datetime(
        2024, 10, 28, 8, 0, tzinfo=UTC
    )  # 09:00 CET
    # the firing at exactly the slot's time is the next week's
    assert monday_nine.next_after(after, "Europe/Berlin") == datetime(2024, 4, 8, 7, 0, tzinfo=UTC)


@pytest.mark.parametrize("text", ["mon 9", "funday 09:00", "monday 25:00", "m 09:00", "09:00"])
def test_a_malformed_slot_is_refused(text: str) -> None:
    with pytest.raises(ScheduleError, match="expected a weekday and HH:MM"):
        WeeklyTime.parse(text)


# --- the CLI ---------------------------------------------------------------------------------


def newsletter(rt: Runtime, *args: str) -> Result:
    env = {
        "NEWSLETTER_DATABASE_URL": rt.settings.database_url,
        "NEWSLETTER_SECRET_KEY": rt.settings.secret_key,
        "COLUMNS": "200",
    }
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_send_start_at_schedules_lists_and_cancels(rt: Runtime) -> None:
    seed(rt, ["anna@example.org", "boris@example.org"], language="en")
    seed_language(rt, "ales@example.net", "be")

    # When a send is scheduled in Minsk time
    started = newsletter(
        rt, "send", "start", "2024-W28", "--at", "2099-07-13 09:00", "--timezone", "Europe/Minsk"
    )

    # Then the database keeps the UTC instant and the zone, and nothing is planned yet
    assert started.exit_code == 0, started.output
    assert "scheduled for 2099-07-13 09:00 Europe/Minsk (2099-07-13 06:00 UTC)" in started.output
    with rt.session() as session:
        send = session.scalars(select(Send)).one()
        assert (send.status, send.scheduled_for, send.timezone) == (
            "scheduled",
            datetime(2099, 7, 13, 6, 0, tzinfo=UTC),
            "Europe/Minsk",
        )
        assert session.scalar(select(func.count()).select_from(Delivery)) == 0

    # And the schedule lists it with its readers by language
    listing = newsletter(rt, "send", "schedule")
    assert listing.output.splitlines()[0] == (
        "send 1  edition 2024-W28  2099-07-13 09:00 Europe/Minsk (2099-07-13 06:00 UTC)  "
        "readers: be 1, en 2"
    )

    # And a second schedule of the same edition is refused like a second send
    twice = newsletter(rt, "send", "start", "2024-W28", "--at", "2099-07-20 09:00")
    assert twice.exit_code == 1 and "already sent by send 1 (scheduled)" in twice.output

    # When it is cancelled before it starts
    cancelled = newsletter(rt, "send", "cancel", "1")
    assert "send 1 is now cancelled; it had not started" in cancelled.output
    assert newsletter(rt, "send", "schedule").output.startswith("no scheduled sends")
    # Then cancelling again is refused (it is no longer scheduled nor running)
    again = newsletter(rt, "send", "cancel", "1")
    assert again.exit_code == 1 and "send 1 is cancelled: cannot change" in again.output


@pytest.mark.parametrize(
    ("at", "zone", "says"),
    [
        ("2001-01-01 09:00", "UTC", "2001-01-01 09:00 UTC is in the past"),
        ("2099-03-29 02:30", "Europe/Berlin", "does not exist in Europe/Berlin"),
        ("2099-10-25 02:30", "Europe/Berlin", "happens twice in Europe/Berlin"),
        ("2099-07-13 9am", "UTC", "expected YYYY-MM-DD HH:MM"),
    ],
)
def test_send_start_at_refuses_the_past_and_daylight_saving_gaps(
    rt: Runtime, at: str, zone: str, says: str
) -> None:
    seed(rt, ["anna@example.org"])

    result = newsletter(rt, "send", "start", "2024-W28", "--at", at, "--timezone", zone)

    assert result.exit_code == 1 and says in result.output
    assert "Traceback" not in result.output
    with rt.session() as session:
        assert session.scalar(select(func.count()).select_from(Send)) == 0


def test_slot_set_show_clear(rt: Runtime) -> None:
    seed(rt, ["anna@example.org"])

    bad = newsletter(rt, "send", "slot", "set", "monday 09:00", "--timezone", "Mars/Olympus")
    assert bad.exit_code == 1 and "unknown time zone 'Mars/Olympus'" in bad.output
    made = newsletter(rt, "send", "slot", "set", "monday 09:00", "--timezone", "Europe/Minsk")
    assert made.exit_code == 0, made.output
    assert made.output.startswith("weekly slot: monday 09:00 Europe/Minsk; next ")
    shown = newsletter(rt, "send", "slot", "show")
    assert "monday 09:00 Europe/Minsk" in shown.output and "would send 2024-W28" in shown.output
    with rt.session() as session:
        slot = session.scalars(select(SendSlot)).one()
        assert slot.next_at.astimezone(UTC).weekday() == 0 and slot.next_at.hour == 6
    assert newsletter(rt, "send", "slot", "clear").output == "weekly slot removed\n"
    assert "no weekly slot" in newsletter(rt, "send", "slot", "show").output


# --- firing, in process ----------------------------------------------------------------------


@dataclass
class Clock:
    at: datetime

    def now(self) -> datetime:
        return self.at


@pytest.fixture
def timed(settings: Settings, stub_worker: Any) -> Iterator[tuple[Runtime, Clock]]:
    """A runtime whose clock the test moves, installed for the actors."""
    clock = Clock(datetime(2024, 7, 10, 12, 0, tzinfo=UTC))
    runtime = Runtime(settings, clock=clock)
    use_runtime(runtime)
    yield runtime, clock
    use_runtime(None)
    runtime.close()


def test_a_scheduled_send_starts_when_due_and_once(
    timed: tuple[Runtime, Clock], smtp: OutboxServer, stub_worker: Any
) -> None:
    rt, clock = timed
    seed(rt, ["anna@example.org", "boris@example.org"])
    with rt.session() as session:
        edition = find_edition(session, "2024-W28")
        assert edition is not None
        due = local_instant("2024-07-15 09:00", "Europe/Minsk")
        send_id = create_send(session, edition, clock.at, 10, when=When(due, "Europe/Minsk")).id

    # Before its time the scheduler starts nothing
    clock.at = due - timedelta(seconds=1)
    assert actors.start_scheduled(rt) == []

    # At its time it starts it once, and the readers get it once
    clock.at = due
    assert actors.start_scheduled(rt) == [f"send {send_id} started (scheduled)"]
    assert actors.start_scheduled(rt) == []
    stub_worker.join()
    assert sorted(r.recipients[0] for r in smtp.handler.received) == [
        "anna@example.org",
        "boris@example.org",
    ]
    with rt.session() as session:
        send = session.get(Send, send_id)
        assert send is not None and send.status == "finished" and send.started_at == due


def test_the_weekly_slot_sends_the_newest_unsent_edition_and_alerts_when_none(
    timed: tuple[Runtime, Clock], smtp: OutboxServer, stub_worker: Any
) -> None:
    rt, clock = timed
    newsletter_id = seed(rt, ["anna@example.org"])
    with rt.session() as session:
        save_edition(session, edition_keyed("2024-W29"), clock.at + timedelta(minutes=1))
        slot = set_slot(
            session, newsletter_id, WeeklyTime.parse("monday 09:00"), "Europe/Minsk", clock.at
        )
        first_firing = slot.next_at
    assert first_firing == datetime(2024, 7, 15, 6, 0, tzinfo=UTC)

    # When the slot comes: the newest loaded edition goes out, once
    clock.at = first_firing + timedelta(seconds=5)
    events = actors.start_scheduled(rt)
    assert events == ["slot 1: edition 2024-W29 scheduled", "send 1 started (scheduled)"]
    assert actors.start_scheduled(rt) == []
    stub_worker.join()
    assert [r.recipients[0] for r in smtp.handler.received] == ["anna@example.org"]

    # The next Monday the older unsent edition goes; the Monday after, nothing is left
    empty_before = empty_firings()
    clock.at = datetime(2024, 7, 22, 6, 0, tzinfo=UTC)
    assert actors.start_scheduled(rt)[0] == "slot 1: edition 2024-W28 scheduled"
    stub_worker.join()  # its mail goes out now: no message is left for a later test
    assert len(smtp.handler.received) == 2
    clock.at = datetime(2024, 7, 29, 6, 0, tzinfo=UTC)
    assert actors.start_scheduled(rt) == ["slot 1: no unsent edition loaded, nothing sent"]
    assert empty_firings() == empty_before + 1
    with rt.session() as session:
        keys = session.execute(select(Send.id, Send.scheduled_for).order_by(Send.id)).all()
        assert [at for _, at in keys] == [
            datetime(2024, 7, 15, 6, 0, tzinfo=UTC),
            datetime(2024, 7, 22, 6, 0, tzinfo=UTC),
        ]
        slot_row = session.scalars(select(SendSlot)).one()
        assert slot_row.next_at == datetime(2024, 8, 5, 6, 0, tzinfo=UTC)


def edition_keyed(key: str) -> EditionSource:
    """The sample edition under another key (a later week)."""
    sample = read_edition(SAMPLE_EDITION)
    contents = {lang: dataclasses.replace(c, key=key) for lang, c in sample.contents.items()}
    return dataclasses.replace(sample, contents=contents)


def empty_firings() -> float:
    return REGISTRY.get_sample_value("newsletter_slot_firings_total", {"outcome": "empty"}) or 0.0


def seed_language(rt: Runtime, address: str, language: str) -> None:
    """One more confirmed reader (the sample edition is already stored)."""
    from tests.test_weekly_send import seed_more

    seed_more(rt, address)
    with rt.session() as session:
        from worker.models import Subscriber

        reader = session.scalars(select(Subscriber).where(Subscriber.email_key == address)).one()
        reader.language = language


# --- firing once with real scheduler processes -----------------------------------------------

NAMESPACE = "dramatiq"


def scheduler_env(db_url: str, broker_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env["NEWSLETTER_DATA_KEY"] = os.environ["NEWSLETTER_DATA_KEY"]  # the suite's (conftest)
    env.update(
        PYTHONPATH=str(ROOT),
        NEWSLETTER_BROKER="redis",
        NEWSLETTER_REDIS_URL=broker_url,
        NEWSLETTER_DATABASE_URL=db_url,
        NEWSLETTER_SECRET_KEY="test-secret-key-0123456789",
        NEWSLETTER_NEWSLETTER_PATH=str(SAMPLE_EDITION / "newsletter.yaml"),
    )
    return env


def start_scheduler(env: dict[str, str], log: Path, *extra: str) -> subprocess.Popen[bytes]:
    code = "from worker.cli import main; main()"
    return subprocess.Popen(
        [sys.executable, "-c", code, "scheduler", *extra],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def wait_for_passes(process: subprocess.Popen[bytes], log: Path, passes: int) -> str:
    """Wait (at most 60 s) until ``process`` printed ``passes`` reconcile passes; its output."""
    deadline = datetime.now(UTC) + timedelta(seconds=60)
    while datetime.now(UTC) < deadline:
        text = log.read_text()
        if text.count("reconciled:") >= passes:
            return text
        assert process.poll() is None, text
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=0.1)
    raise AssertionError(f"no {passes} passes: {log.read_text()}")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait(timeout=10)


def test_two_schedulers_and_a_restart_start_each_send_and_slot_once(
    settings: Settings, tmp_path: Path
) -> None:
    # Given a send scheduled for a time now past and a weekly slot that is due, written while no
    # scheduler ran (they survive in the database alone)
    rt = Runtime(settings)
    newsletter_id = seed(rt, ["anna@example.org", "boris@example.org"])
    past = datetime.now(UTC) - timedelta(minutes=5)
    with rt.session() as session:
        edition = find_edition(session, "2024-W28")
        assert edition is not None
        when = When(past, "Europe/Minsk")
        scheduled = create_send(session, edition, past - timedelta(days=1), 10, when=when).id
        save_edition(session, edition_keyed("2024-W29"), datetime.now(UTC))
        set_slot(session, newsletter_id, WeeklyTime.parse("monday 09:00"), "UTC", past)
        session.get(SendSlot, 1).next_at = past  # type: ignore[union-attr]
    rt.close()
    broker_url = settings.redis_url
    env = scheduler_env(settings.database_url, broker_url)

    # When two schedulers run at once
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    both = [start_scheduler(env, log, "--interval", "0.2") for log in logs]
    try:
        outputs = [wait_for_passes(p, log, 3) for p, log in zip(both, logs, strict=True)]
    finally:
        for process in both:
            stop(process)
    joined = "".join(outputs)

    # Then each send started once and the slot fired once
    assert joined.count(f"send {scheduled} started (scheduled)") == 1, joined
    assert joined.count("slot 1: edition 2024-W29 scheduled") == 1, joined
    assert joined.count("started (scheduled)") == 2, joined
    client = redis.Redis.from_url(broker_url)
    try:
        assert client.hlen(f"{NAMESPACE}:sends.msgs") == 2  # one plan_send per send
        # And a restarted scheduler starts nothing again
        restarted = tmp_path / "c.log"
        again = start_scheduler(env, restarted, "--once")
        assert again.wait(timeout=60) == 0, restarted.read_text()
        assert "started" not in restarted.read_text()
        assert "reconciled: 0 batch messages enqueued" in restarted.read_text()
        assert client.hlen(f"{NAMESPACE}:sends.msgs") == 2
    finally:
        client.close()
    check = Runtime(settings)
    with check.session() as session:
        rows = session.execute(select(Send.id, Send.status).order_by(Send.id)).all()
        assert [(i, str(s)) for i, s in rows] == [(1, "planning"), (2, "planning")]
    check.close()
