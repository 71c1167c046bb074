"""The operators' dashboard: derived numbers after a real send, the login, and the page in headless
Chromium (docs/images/dashboard.png is refreshed with UPDATE_DOCS_SCREENSHOTS=1)."""

from __future__ import annotations

import base64
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import cast

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import delete, select, update

from tests.operator_scenario import run_send
from tests.stub_worker import StubWorker
from worker.devtools.chromium import HeadlessChromium, find_chromium
from worker.devtools.outbox import OutboxServer, free_port
from worker.models import Consent, Delivery, FeedbackEvent, Newsletter, Send, SendTally, Subscriber
from worker.operators import dashboard
from worker.operators.dashboard import SETTLE, Overview, overview, rate_bucket
from worker.runtime import Runtime
from worker.states import SubscriberStatus
from worker.subscriptions.roster import Filters
from worker.subscriptions.roster import count as roster_count
from worker.subscriptions.suppressions import suppress
from worker.web.app import create_app

PASSWORD = "correct horse battery staple"
DOCS_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "images" / "dashboard.png"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"operator:{PASSWORD}".encode()).decode()}


@pytest.fixture
def operator_rt(rt: Runtime) -> Iterator[Runtime]:
    from worker import actors

    # 15 messages/s: the test send spreads over a few seconds, as a real one does over hours
    runtime = Runtime(replace(rt.settings, operator_password=PASSWORD, global_rate=15.0))
    actors.use_runtime(runtime)
    yield runtime
    actors.use_runtime(rt)


def add_feedback(rt: Runtime, send_id: int) -> None:
    """What comes back after the send, as the feedback readers record it: an ARF complaint from
    olga's provider, a DSN (mailbox full) for ivan after the relay accepted the message, and a
    mailto unsubscribe from ales that waited 50 hours in the mailbox before it was processed."""
    now = rt.clock.now()
    with rt.session() as session:
        deliveries = {
            s.email: d
            for d, s in session.execute(
                select(Delivery, Subscriber)
                .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
                .where(Delivery.send_id == send_id)
            )
        }
        olga, ivan, ales = (
            deliveries[a] for a in ("olga@example.com", "ivan@example.org", "ales@example.net")
        )
        complaint = FeedbackEvent(
            source_event_id="arf:1",
            kind="complaint",
            source="arf",
            subscriber_id=olga.subscriber_id,
            delivery_id=olga.id,
            reason="abuse",
            occurred_at=now,
            recorded_at=now,
        )
        session.add(complaint)
        session.flush()
        suppress(
            session,
            dedupe_key="olga@example.com",
            hash_key=rt.settings.secret_key,
            reason="complaint",
            now=now,
            source_event_id=complaint.id,
        )
        session.add(
            FeedbackEvent(
                source_event_id="dsn:1",
                kind="soft_bounce",
                source="dsn",
                subscriber_id=ivan.subscriber_id,
                delivery_id=ivan.id,
                status_code="4.2.2",
                reason="mailbox_full",
                occurred_at=now,
                recorded_at=now,
            )
        )
        session.add(
            FeedbackEvent(
                source_event_id="mailto:1",
                kind="unsubscribe",
                source="mailto",
                subscriber_id=ales.subscriber_id,
                occurred_at=now - timedelta(hours=50),
                recorded_at=now,
            )
        )
        subscriber = session.get(Subscriber, ales.subscriber_id)
        assert subscriber is not None
        subscriber.status, subscriber.unsubscribed_at = SubscriberStatus.UNSUBSCRIBED, now


def test_dashboard_numbers_after_a_real_send(
    operator_rt: Runtime, smtp: OutboxServer, stub_worker: StubWorker
) -> None:
    rt = operator_rt
    app = create_app(rt)
    scenario = run_send(rt, smtp, stub_worker, app)
    one_click = scenario.client.post(
        scenario.unsubscribe_paths["anna@example.org"],
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert one_click.status_code == 200
    add_feedback(rt, scenario.send_id)

    with rt.session() as session:
        data = overview(session, rt.clock.now())
    report = data.selected
    assert report is not None and report.summary.id == scenario.send_id
    assert report.summary.status == "finished"
    languages = {lang: f.counts for lang, f in report.by_language}
    assert languages["en"] == {
        "planned": 3,
        "queued": 0,
        "sent": 2,
        "deferred": 0,
        "failed": 1,
        "unknown": 0,
        "skipped": 0,
        "bounced": 1,
        "complained": 0,
        "unsubscribed": 1,
    }  # anna one-click, ivan DSN, nobody 550
    assert languages["ru"]["complained"] == 1 and languages["ru"]["sent"] == 1
    assert languages["be"]["unsubscribed"] == 0  # ales asked 50 h ago: before this send
    domains = dict(report.by_domain)
    # readers' own domains are not stored: example.org/.net/.com are all "other" (issue 17)
    assert set(domains) == {"other"}
    assert domains["other"]["planned"] == 5 and domains["other"]["failed"] == 1
    assert report.total["sent"] == 4 and report.total["complained"] == 1
    assert report.total.complaint_rate == 0.25
    assert data.complaints.complaints == 1 and data.complaints.sent == 4
    assert data.complaints.level == "bad"
    assert sum(n for _, n in report.rate) == 4
    assert ("soft_bounce", "mailbox_full", 1) in report.bounce_reasons
    assert ("hard_bounce", "user_unknown", 1) in report.bounce_reasons
    assert data.unsubscribes.requests == 2 and data.unsubscribes.late == 1
    assert data.unsubscribes.percentile(0.5) == 0.0
    today = data.signups[-1]
    assert (today.signups, today.confirmed) == (6, 5)

    # No login, a wrong password: 401 with a Basic challenge. The right one: the page.
    client = TestClient(app)
    assert client.get("/dashboard").status_code == 401
    assert client.get("/dashboard").headers["www-authenticate"].startswith("Basic ")
    assert client.get("/dashboard", auth=("operator", "wrong")).status_code == 401
    page = client.get("/dashboard", auth=("operator", PASSWORD))
    assert page.status_code == 200
    assert "25.000 %" in page.text and "<svg" in page.text
    assert not re.search(r'(src|href)="(https?:)?//', page.text) and "<script" not in page.text


def test_status_command_shows_the_send(
    rt: Runtime, smtp: OutboxServer, stub_worker: StubWorker
) -> None:
    from click.testing import CliRunner

    from worker.cli import main

    scenario = run_send(rt, smtp, stub_worker, create_app(rt))
    result = CliRunner().invoke(
        main,
        ["status"],
        env={"NEWSLETTER_DATABASE_URL": rt.settings.database_url, "COLUMNS": "160"},
    )
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "2024-W28" in line)
    cells = [cell.strip() for cell in row.split("│")[1:-1]]
    assert cells[:3] == [str(scenario.send_id), "2024-W28", "finished"]
    assert cells[4:10] == ["5", "4", "0", "1", "0", "0"]  # planned, sent, deferred, failed, …
    assert "100%" in row


def test_no_operator_password_means_no_dashboard(rt: Runtime) -> None:
    client = TestClient(create_app(rt))
    assert client.get("/dashboard", auth=("operator", "")).status_code == 401


def test_rate_bucket_keeps_at_most_sixty_bars() -> None:
    assert rate_bucket(3) == 1
    assert rate_bucket(600) == 10
    assert rate_bucket(3 * 3600) == 300
    assert rate_bucket(30 * 86400) == 86400


@pytest.fixture
def server(operator_rt: Runtime) -> Iterator[tuple[str, FastAPI]]:
    app = create_app(operator_rt)
    port = free_port()
    instance = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not instance.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", app
    instance.should_exit = True
    thread.join(timeout=10)


def test_dashboard_in_headless_chromium(
    request: pytest.FixtureRequest,
    operator_rt: Runtime,
    smtp: OutboxServer,
    stub_worker: StubWorker,
    server: tuple[str, FastAPI],
    tmp_path: Path,
) -> None:
    if request.node.callspec.params.get("db_url") != "postgresql":
        pytest.skip("one screenshot is enough: taken on PostgreSQL")
    try:
        find_chromium()
    except RuntimeError:
        pytest.skip("no Chromium (apt-get install -y chromium)")
    base, app = server
    scenario = run_send(operator_rt, smtp, stub_worker, app, extra=48)
    scenario.client.post(
        scenario.unsubscribe_paths["anna@example.org"],
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    add_feedback(operator_rt, scenario.send_id)

    with operator_rt.session() as session:
        assert len(overview(session, operator_rt.clock.now()).selected.rate) >= 3  # type: ignore[union-attr]
    with HeadlessChromium(offline=False) as browser:
        browser.call("Network.enable", session=True)
        browser.call("Network.setExtraHTTPHeaders", {"headers": AUTH}, session=True)  # the login
        png = browser.screenshot(f"{base}/dashboard", 1280)
        text = browser.call(
            "Runtime.evaluate",
            {"expression": "document.body.innerText", "returnByValue": True},
            session=True,
        )["result"]["value"]
        charts = browser.call(
            "Runtime.evaluate",
            {"expression": "document.querySelectorAll('svg rect').length", "returnByValue": True},
            session=True,
        )["result"]["value"]
        browser.screenshot(f"{base}/dashboard", 390)  # a phone: nothing wider than the screen
        overflow = browser.call(
            "Runtime.evaluate",
            {
                "expression": "[document.documentElement.scrollWidth, Math.max(...[...document"
                ".querySelectorAll('section')].map(s => s.getBoundingClientRect().right))]",
                "returnByValue": True,
            },
            session=True,
        )["result"]["value"]
    # The picture in the docs is refreshed on request only, so a test run leaves the tree clean.
    target = (
        DOCS_SCREENSHOT if os.environ.get("UPDATE_DOCS_SCREENSHOTS") else tmp_path / "dashboard.png"
    )
    target.write_bytes(png)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    assert "Newsletter operations" in text and "gmail.com" in text and "yandex.ru" in text
    assert "1.923 %" in text  # 1 complaint / 52 sent (53 planned, one refused with 550)
    assert charts > 20
    # readers' own domains (пошта.бел, example.org) are never stored: "other" (issue 17)
    assert "other" in text and "пошта.бел" not in text and "xn--" not in text
    assert "confirmation rate (% of the day's signups)" in text
    assert overflow[0] <= 390 and overflow[1] <= 390, overflow


def test_status_command_is_readable_at_eighty_columns(
    rt: Runtime, smtp: OutboxServer, stub_worker: StubWorker
) -> None:
    """Piped or in an 80-column terminal, ``newsletter status`` shows whole words and every
    figure: the table's headers used to be cut to "edi…", "sta…"."""
    from click.testing import CliRunner

    from worker.cli import main

    scenario = run_send(rt, smtp, stub_worker, create_app(rt))
    result = CliRunner().invoke(
        main,
        ["status"],
        env={"NEWSLETTER_DATABASE_URL": rt.settings.database_url, "COLUMNS": "80"},
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in result.output
    head = lines.index(next(line for line in lines if "2024-W28" in line))
    assert lines[head].split()[:4] == ["send", str(scenario.send_id), "2024-W28", "finished"]
    assert lines[head + 1].rstrip().endswith("100%")
    assert " ".join(lines[head + 2].split()) == (
        "planned 5 sent 4 deferred 0 failed 1 unknown 0 skipped 0"
    )


def test_an_unsubscribe_stays_honoured_after_the_reader_signs_up_again(rt: Runtime) -> None:
    """Anna unsubscribed (honoured in 30 s) and confirmed again a day later: her request is not
    open. Boris's request of an hour ago has not been honoured: it is."""
    from tests.sendkit import seed
    from worker.operators.dashboard import unsubscribe_latency

    now = rt.clock.now()
    seed(rt, ["anna@example.org", "boris@example.org"])
    with rt.session() as session:
        anna, boris = sorted(session.scalars(select(Subscriber)).all(), key=lambda s: s.email)
        anna.confirmed_at = now - timedelta(days=1)
        anna.unsubscribed_at = now - timedelta(days=2) + timedelta(seconds=30)
        for n, (who, age) in enumerate(((anna, timedelta(days=2)), (boris, timedelta(hours=1)))):
            session.add(
                FeedbackEvent(
                    source_event_id=f"page:{n}",
                    kind="unsubscribe",
                    source="page",
                    subscriber_id=who.id,
                    occurred_at=now - age,
                    recorded_at=now - age,
                )
            )
        session.commit()
        latency = unsubscribe_latency(session, now, days=7)
    assert latency.requests == 2
    assert [round(s) for s in latency.honoured] == [30]
    assert [round(s) for s in latency.open_ages] == [3600]


def report_numbers(data: Overview) -> dict[str, object]:
    """Every number of the selected send the dashboard shows."""
    report = data.selected
    assert report is not None
    return {
        "states": report.summary.states,
        "sends": [(s.id, s.states) for s in data.sends],
        "total": report.total.counts,
        "languages": [(name, f.counts) for name, f in report.by_language],
        "domains": [(name, f.counts) for name, f in report.by_domain],
        "rate": (report.rate_bucket_seconds, report.rate),
        "reasons": report.bounce_reasons,
    }


def test_a_final_send_is_counted_once_and_its_tally_gives_the_same_numbers(
    operator_rt: Runtime, smtp: OutboxServer, stub_worker: StubWorker
) -> None:
    # Given a finished send with its feedback, viewed once it has been final for a while
    rt = operator_rt
    scenario = run_send(rt, smtp, stub_worker, create_app(rt))
    add_feedback(rt, scenario.send_id)
    later = rt.clock.now() + SETTLE + timedelta(seconds=1)
    with rt.session() as session:
        counted = report_numbers(overview(session, later))
        tally = session.get(SendTally, scenario.send_id)
        assert tally is not None and tally.status == "finished"
        assert tally.tally["states"] == counted["states"]
        assert sum(tally.tally["sent_per_second"].values()) == 4

    # When a fresh process shows it (nothing remembered) and the deliveries' rows are not read
    dashboard._cache.clear()
    with rt.session() as session:
        session.execute(
            update(Delivery)
            .where(Delivery.send_id == scenario.send_id, Delivery.state == "failed")
            .values(state="skipped")
        )  # what the tally replaces: were the deliveries counted again, this would show
        session.commit()
        from_tally = report_numbers(overview(session, later))

    # Then the numbers are the same (feedback is still read: it goes on arriving)
    assert from_tally == counted

    # And a send reopened (retry-unknown) and finished again is counted anew
    dashboard._cache.clear()
    with rt.session() as session:
        session.execute(
            update(Send)
            .where(Send.id == scenario.send_id)
            .values(finished_at=later - timedelta(seconds=1))
        )
        session.commit()
        recounted = report_numbers(overview(session, later + SETTLE + SETTLE))
    assert counted["states"] == {"sent": 4, "failed": 1}
    assert recounted["states"] == {"sent": 4, "skipped": 1}


def test_a_reader_erased_during_or_after_a_send_leaves_its_tally_equal_to_the_ledger(
    operator_rt: Runtime, smtp: OutboxServer
) -> None:
    """Erasure rewrote the deliveries' domain (to ``erased.invalid``): a final send's stored
    tally then counted the erased reader's delivery under the old provider bucket, one delivery
    more than the ledger held there. Stored domains are provider buckets, which name nobody, so
    erasure keeps them."""
    from tests.sendkit import run_batch, seed, start_send
    from worker.subscriptions.people import erase

    rt = operator_rt
    # Given three readers (two at gmail.com) and a send; one gmail.com reader is erased during
    # the send, before their delivery
    seed(rt, ["anna@gmail.com", "boris@gmail.com", "carla@example.org"])
    send_id = start_send(rt)
    with rt.session() as session:
        erase(session, "anna@gmail.com", hash_key=rt.settings.secret_key, now=rt.clock.now())
        session.commit()
    run_batch(rt, send_id)

    # When the final send is viewed (its tally stored), then the other gmail.com reader is
    # erased and a fresh process shows the send from its tally
    later = rt.clock.now() + SETTLE + timedelta(seconds=1)
    with rt.session() as session:
        counted = report_numbers(overview(session, later))
        assert session.get(SendTally, send_id) is not None
    with rt.session() as session:
        erase(session, "boris@gmail.com", hash_key=rt.settings.secret_key, now=rt.clock.now())
        session.commit()
    dashboard._cache.clear()
    with rt.session() as session:
        from_tally = report_numbers(overview(session, later))

    # Then the tally, and a count of the ledger itself, give the same numbers as before
    dashboard._cache.clear()
    with rt.session() as session:
        session.execute(delete(SendTally))
        session.commit()
        recounted = report_numbers(overview(session, later))
    rows = cast(list[tuple[str, dict[str, int]]], counted["domains"])
    domains = {name: (f["planned"], f["sent"], f["skipped"]) for name, f in rows}
    assert domains == {"gmail.com": (2, 1, 1), "other": (1, 1, 0)}
    assert from_tally == counted
    assert recounted == counted
    with rt.session() as session:
        assert set(session.scalars(select(Delivery.domain))) == {"gmail.com", "other"}


def test_readers_card_counts_sources_as_the_roster_does(rt: Runtime) -> None:
    # Given readers who signed up, readers of two imports (one reader in both) and an import
    # consent without a source
    now = rt.clock.now()
    with rt.session() as session:
        session.add(Newsletter(id=1, slug="n", default_language="en", profile={}, created_at=now))
        session.flush()
        for n in range(7):
            status = ("confirmed", "pending", "unsubscribed")[n % 3]
            reader = Subscriber(
                newsletter_id=1, email=f"r{n}@example.org", email_key=f"r{n}@example.org",
                domain="example.org", language=("en", "ru")[n % 2], status=status,
                created_at=now, updated_at=now,
            )  # fmt: skip
            session.add(reader)
            session.flush()
            imports: dict[int, list[str | None]] = {
                0: [None], 1: ["import:csv:a.csv"], 2: ["import:csv:a.csv"],
                3: ["import:csv:a.csv", "import:mailchimp:b.csv"],
            }  # fmt: skip
            sources = imports.get(n, [])
            for k, source in enumerate([*sources, "signup-form"]):
                imported = k < len(sources)
                session.add(
                    Consent(
                        subscriber_id=reader.id, event_id=f"e{n}.{k}", signed_up_at=now,
                        source=source, language="en",
                        method="import" if imported else "double_opt_in",
                    )
                )  # fmt: skip
        session.commit()

        # When the dashboard counts them
        card = dashboard.readers(session)

        # Then it has the roster's numbers (`newsletter subscribers count --by source`)
        roster = roster_count(session, Filters(), ("source",))
        grid = roster_count(session, Filters(), ("status", "language"))
    assert card.by_source == {source: n for (source,), n in roster.items()}
    assert list(card.by_source.items()) == [
        ("signup", 4), ("import:csv:a.csv", 3), ("import:mailchimp:b.csv", 1),
    ]  # fmt: skip
    assert card.by_status_language == {key: n for key, n in grid.items()}


def test_ledger_gauges_of_a_live_send_follow_the_ledger(rt: Runtime) -> None:
    # Given a live send: 4 sent (one 10 minutes ago, settled), 1 failed, 2 still queued
    from tests.sendkit import seed, start_send

    seed(rt, [f"g{n}@example.org" for n in range(7)])
    send_id = start_send(rt)
    now = rt.clock.now()
    with rt.session() as session:
        ids = session.scalars(
            select(Delivery.id).where(Delivery.send_id == send_id).order_by(Delivery.id)
        ).all()
        for n, delivery_id in enumerate(ids[:5]):
            sent = n < 4
            session.execute(
                update(Delivery)
                .where(Delivery.id == delivery_id)
                .values(
                    state="sent" if sent else "failed",
                    sent_at=(now - timedelta(minutes=10 if n == 0 else 0)) if sent else None,
                )
            )
        session.commit()
    collector = dashboard.LedgerCollector(rt.session, lambda: now)

    def gauges() -> dict[str, float]:
        families = {f.name: f for f in collector.collect()}
        samples = families["newsletter_active_send_deliveries"].samples
        return {s.labels["state"]: s.value for s in samples}

    # When /metrics is scraped, then again after one more message was accepted
    assert gauges() == {"sent": 4, "failed": 1, "queued": 2}
    with rt.session() as session:
        session.execute(
            update(Delivery).where(Delivery.id == ids[5]).values(state="sent", sent_at=now)
        )
        session.commit()

    # Then the gauges follow the ledger (the remembered seconds plus the newer ones)
    assert gauges() == {"sent": 5, "failed": 1, "queued": 1}


def test_a_later_view_shows_a_change_once_the_cache_period_has_passed(rt: Runtime) -> None:
    # Given readers counted by a view at ``now`` with the numbers kept 30 s
    from tests.sendkit import seed
    from worker.operators import snapshots

    seed(rt, [f"k{n}@example.org" for n in range(3)])
    now = rt.clock.now()
    with rt.session() as session:
        first = overview(session, now, cache_seconds=30)
    assert first.readers.total("confirmed") == 3 and first.as_of == now

    # When a reader unsubscribes
    with rt.session() as session:
        reader = session.scalars(select(Subscriber).order_by(Subscriber.id)).first()
        assert reader is not None
        reader.status = SubscriberStatus.UNSUBSCRIBED
        session.commit()

    # Then a view within the period shows the kept numbers and says how old they are, in this
    # process and in a fresh one (the kept numbers are read from ``dashboard_snapshot``)
    with rt.session() as session:
        kept = overview(session, now + timedelta(seconds=20), cache_seconds=30)
    assert kept.readers.total("confirmed") == 3 and kept.as_of == now
    snapshots.forget()
    dashboard._cache.clear()
    with rt.session() as session:
        fresh_process = overview(session, now + timedelta(seconds=25), cache_seconds=30)
    assert fresh_process.readers.total("confirmed") == 3 and fresh_process.as_of == now

    # And once the period has passed, the change shows, counted at that view
    later = now + timedelta(seconds=31)
    with rt.session() as session:
        after = overview(session, later, cache_seconds=30)
    assert after.readers.total("confirmed") == 2
    assert after.readers.total("unsubscribed") == 1 and after.as_of == later

    # And without a period (0) every view counts
    with rt.session() as session:
        reader = session.scalars(select(Subscriber).order_by(Subscriber.id.desc())).first()
        assert reader is not None
        reader.status = SubscriberStatus.UNSUBSCRIBED
        session.commit()
        now_counted = overview(session, later + timedelta(seconds=1))
    assert now_counted.readers.total("confirmed") == 1
