"""Settings are checked when they are read: a value out of range, a malformed rate list, a
garbage database URL or an unknown SMTP scheme is one clear line naming the variable, never a
send stuck mid-way or a traceback. And the scheduler's reconcile survives one broken send."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import update

from tests.sendkit import seed, start_send
from worker import actors
from worker.cli import main
from worker.models import Send
from worker.runtime import Runtime
from worker.settings import Settings, SettingsError


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("SEND_BATCH_SIZE", "0", "NEWSLETTER_SEND_BATCH_SIZE=0: allowed 1 to 100000"),
        ("SEND_BATCH_SIZE", "-5", "NEWSLETTER_SEND_BATCH_SIZE=-5: allowed 1 to 100000"),
        ("GLOBAL_RATE", "-1", "NEWSLETTER_GLOBAL_RATE=-1.0: allowed at least 0"),
        ("GLOBAL_RATE", "nan", "NEWSLETTER_GLOBAL_RATE=nan: allowed at least 0"),
        ("MAX_SMTP_CONNECTIONS", "-1", "NEWSLETTER_MAX_SMTP_CONNECTIONS=-1"),
        ("CLAIM_LEASE_SECONDS", "0", "NEWSLETTER_CLAIM_LEASE_SECONDS=0.0: allowed 1 to"),
        ("BATCH_GRACE_SECONDS", "inf", "NEWSLETTER_BATCH_GRACE_SECONDS=inf"),
        ("RETRY_BASE_SECONDS", "0", "NEWSLETTER_RETRY_BASE_SECONDS=0.0"),
        ("SOFT_BOUNCE_LIMIT", "0", "NEWSLETTER_SOFT_BOUNCE_LIMIT=0: allowed 1 to 1000"),
        ("SIGNUPS_PER_IP_PER_HOUR", "-1", "NEWSLETTER_SIGNUPS_PER_IP_PER_HOUR=-1"),
        ("SEND_BATCH_SIZE", "ten", "NEWSLETTER_SEND_BATCH_SIZE: expected int, got 'ten'"),
        ("DOMAIN_RATES", "gmail.com", "entry 'gmail.com' is not DOMAIN=RATE"),
        ("DOMAIN_RATES", "gmail.com=", "entry 'gmail.com=' is not DOMAIN=RATE"),
        ("DOMAIN_RATES", "=5", "entry '=5' is not DOMAIN=RATE"),
        ("DOMAIN_RATES", "gmail.com=fast", "entry 'gmail.com=fast'"),
        ("DOMAIN_RATES", "gmail.com=-2", "entry 'gmail.com=-2'"),
        ("DATABASE_URL", "garbage", "NEWSLETTER_DATABASE_URL is not an SQLite or PostgreSQL URL"),
        ("DATABASE_URL", "mysql://db/x", "NEWSLETTER_DATABASE_URL is not an SQLite"),
        ("SMTP_URL", "smpt://relay:25", "NEWSLETTER_SMTP_URL: unknown scheme 'smpt'"),
        ("SMTP_URL", "relay.example.org", "NEWSLETTER_SMTP_URL: unknown scheme"),
    ],
)
def test_a_bad_setting_is_refused_at_load_naming_the_variable(
    variable: str, value: str, says: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({f"NEWSLETTER_{variable}": value})
    assert says in str(caught.value)


def test_good_settings_still_load() -> None:
    settings = Settings.from_env(
        {
            "NEWSLETTER_DOMAIN_RATES": "gmail.com=20, mail.ru=0.5,",
            "NEWSLETTER_GLOBAL_RATE": "0",
            "NEWSLETTER_DATABASE_URL": "postgresql+psycopg://news@db.example.org/news",
            "NEWSLETTER_SMTP_URL": "smtp+starttls://u:p@relay.example.org",
            "NEWSLETTER_CONFIRMATIONS_PER_ADDRESS_PER_DAY": "0",
        }
    )
    assert settings.rates_by_domain == {"gmail.com": 20.0, "mail.ru": 0.5}


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"NEWSLETTER_SEND_BATCH_SIZE": "0"}, "NEWSLETTER_SEND_BATCH_SIZE=0: allowed 1 to"),
        ({"NEWSLETTER_DATABASE_URL": "garbage"}, "NEWSLETTER_DATABASE_URL is not"),
        ({"NEWSLETTER_SMTP_URL": "smpt://x"}, "NEWSLETTER_SMTP_URL: unknown scheme 'smpt'"),
    ],
)
def test_the_cli_says_one_line_for_a_bad_setting(env: dict[str, str], says: str) -> None:
    result = CliRunner().invoke(main, ["send", "status", "1"], env=env)

    assert result.exit_code == 1
    assert result.output == f"Error: {result.output.removeprefix('Error: ')}"
    assert says in result.output and len(result.output.splitlines()) == 1


@pytest.mark.parametrize("interval", ["0", "-1"])
def test_the_scheduler_refuses_an_interval_that_is_not_positive(interval: str) -> None:
    result = CliRunner().invoke(main, ["scheduler", "--interval", interval])

    assert result.exit_code == 2 and "--interval" in result.output
    assert "is not in the range x>0" in result.output


def test_send_start_refuses_a_batch_size_of_zero() -> None:
    result = CliRunner().invoke(main, ["send", "start", "2024-W28", "--batch-size", "0"])

    assert result.exit_code == 2 and "--batch-size" in result.output


def test_reconcile_goes_on_past_a_broken_send_and_names_it(
    rt: Runtime, caplog: pytest.LogCaptureFixture, stub_worker: Any
) -> None:
    # Given two sending sends, the first stored with a batch size of 0 (before settings were
    # checked, NEWSLETTER_SEND_BATCH_SIZE=0 was accepted and left a send stuck)
    seed(rt, ["anna@example.org", "boris@example.org"])
    broken = start_send(rt)
    with rt.session() as session:
        session.execute(update(Send).where(Send.id == broken).values(batch_size=0))
        from worker.editions.store import find_edition
        from worker.sending.sends import Repeat, create_send, plan_send

        edition = find_edition(session, "2024-W28")
        assert edition is not None
        healthy = create_send(session, edition, rt.clock.now(), 10, repeat=Repeat.AGAIN).id
        session.commit()
        plan_send(session, healthy, rt.links.public_url, rt.clock.now())

    # When the scheduler reconciles
    with caplog.at_level(logging.ERROR, logger="worker.actors"):
        enqueued = actors.reconcile(rt)

    # Then the healthy send's batch is enqueued and the broken one is logged by id
    assert enqueued == 1
    assert [r.getMessage() for r in caplog.records] == [
        f"reconcile: send {broken} skipped: ValueError: send {broken} has batch size 0: at least 1"
    ]
    stub_worker.join()
    with rt.session() as session:
        finished = session.get(Send, healthy, populate_existing=True)
        assert finished is not None and finished.planned_count == 2


def test_every_numeric_setting_has_a_range() -> None:
    from dataclasses import fields

    from worker.settings import RANGES

    numeric = {f.name for f in fields(Settings) if str(f.type) in ("int", "float")}

    assert numeric - set(RANGES) == set()
    assert set(RANGES) - numeric == set()
