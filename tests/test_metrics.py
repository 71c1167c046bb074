"""Prometheus metrics: a real send counted on ``/metrics``, multiprocess aggregation, readiness."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import Counter
from prometheus_client.parser import text_string_to_metric_families

from tests.operator_scenario import run_send
from tests.services import DATA_KEY_ENV
from tests.stub_worker import StubWorker
from worker.devtools.outbox import OutboxServer
from worker.runtime import Runtime
from worker.settings import Settings
from worker.web.app import create_app

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
SCRAPER_TOKEN = "scraper-token-0123456789abcdef"
SCRAPER = {"Authorization": f"Bearer {SCRAPER_TOKEN}"}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The suite's settings with a scraper token: without one /metrics is not served."""
    return replace(settings, metrics_token=SCRAPER_TOKEN)


def scrape(client: TestClient) -> Samples:
    response = client.get("/metrics", headers=SCRAPER)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    out: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_a_real_send_is_counted_on_metrics(
    rt: Runtime, smtp: OutboxServer, stub_worker: StubWorker
) -> None:
    app = create_app(rt)
    client = TestClient(app)
    before = scrape(client)

    scenario = run_send(rt, smtp, stub_worker, app)
    one_click = scenario.unsubscribe_paths["anna@example.org"]
    response = client.post(
        one_click,
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    after = scrape(client)

    def d(name: str, **labels: str) -> float:
        return delta(before, after, name, **labels)

    assert d("newsletter_signups_total", outcome="pending") == 6
    assert d("newsletter_signups_total", outcome="refused") == 1
    assert d("newsletter_signup_refusals_total", reason="invalid_address") == 1
    assert d("newsletter_confirmation_mails_total", result="sent") == 6
    assert d("newsletter_confirmations_total") == 5
    # five confirmed readers: four accepted by the relay, one refused with 550 5.1.1
    assert d("newsletter_deliveries_total", state="sent") == 4
    assert d("newsletter_deliveries_total", state="failed") == 1
    assert d("newsletter_smtp_replies_total", reply_class="2xx") == 6 + 4
    assert d("newsletter_smtp_replies_total", reply_class="5xx") == 1
    assert d("newsletter_smtp_transaction_duration_seconds_count") == 11
    assert d("newsletter_feedback_events_total", kind="hard_bounce", source="smtp") == 1
    assert d("newsletter_feedback_events_total", kind="unsubscribe", source="one_click") == 1
    assert d("newsletter_suppressions_total", reason="hard_bounce") == 1
    assert d("newsletter_rendition_render_duration_seconds_count") == 3  # en, be, ru
    # the ledger gauges: the send is finished, so no active send remains
    assert after[("newsletter_active_sends", ())] == 0
    text = client.get("/metrics", headers=SCRAPER).text
    assert "@" not in text  # never an address in a label


def test_metric_names_and_labels_follow_prometheus_conventions(rt: Runtime) -> None:
    from worker.operators import metrics

    histograms = {n for n, (kind, *_) in metrics.FAMILIES.items() if kind is not Counter}
    for name in metrics.FAMILIES.keys() - histograms:
        metric = metrics.counter(name)
        (family,) = metric.describe()
        assert family.type == "counter" and family.name.startswith("newsletter_")
        assert not set(metric._labelnames) & {"email", "address", "recipient", "domain", "send_id"}
    assert histograms  # SMTP transaction and render durations
    for name in histograms:
        (family,) = metrics.histogram(name).describe()
        assert family.name.endswith("_seconds")


INCREMENT = """
from worker.operators import metrics
from worker.sending.ports import SmtpOutcome
metrics.delivery_recorded("sent")
metrics.delivery_recorded("sent")
metrics.counter("newsletter_smtp_replies_total").labels(reply_class="2xx").inc()
"""


def test_metrics_of_several_processes_are_summed(
    tmp_path: Path, rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given two worker processes that counted into the same multiprocess directory
    directory = tmp_path / "prometheus"
    directory.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    for _ in range(2):
        subprocess.run([sys.executable, "-c", INCREMENT], env=env, check=True, timeout=60)
    assert len(list(directory.glob("counter_*.db"))) == 2
    # When the web app serves /metrics with the same directory
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
    samples = scrape(TestClient(create_app(rt)))
    # Then it shows their sum
    assert samples[("newsletter_deliveries_total", (("state", "sent"),))] == 4
    assert samples[("newsletter_smtp_replies_total", (("reply_class", "2xx"),))] == 2


def test_readiness_checks_database_and_redis(rt: Runtime) -> None:
    ready = TestClient(create_app(rt)).get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"database": "ok", "redis": "ok", "newsletter": "ok"}
    assert TestClient(create_app(rt)).get("/healthz").status_code == 200

    broken = Runtime(replace(rt.settings, redis_url="redis://127.0.0.1:1/0"))
    not_ready = TestClient(create_app(broken)).get("/readyz")
    assert not_ready.status_code == 503
    assert not_ready.json()["database"] == "ok"
    assert not_ready.json()["redis"].startswith("error: ")


def test_no_newsletter_yet_is_a_clear_503_not_a_500(settings: Settings) -> None:
    """Before any edition is loaded and without NEWSLETTER_NEWSLETTER_PATH: /readyz says so and
    /signup answers 503 with the way out (it used to answer 500 while /readyz said ok)."""
    rt = Runtime(replace(settings, newsletter_path=""))
    client = TestClient(create_app(rt))
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["newsletter"].startswith("not set up: load an edition")
    signup = client.post(
        "/signup",
        json={"version": 1, "event_id": "e1", "email": "anna@example.org", "language": "en"},
    )
    assert signup.status_code == 503
    assert signup.json()["reason"] == "not_set_up"
    assert "newsletter edition load" in signup.json()["detail"]


@pytest.mark.parametrize(
    "outcome,expected",
    [
        ((250, "ok", False), "2xx"),
        ((451, "x", False), "4xx"),
        ((0, "lost", True), "uncertain"),
        ((0, "refused", False), "none"),
    ],
)
def test_reply_class(outcome: tuple[int, str, bool], expected: str) -> None:
    from worker.operators.metrics import reply_class
    from worker.sending.ports import SmtpOutcome

    assert reply_class(SmtpOutcome(*outcome)) == expected


def test_feedback_rows_are_counted_once_committed(db_url: str) -> None:
    from datetime import UTC, datetime

    from sqlalchemy.exc import IntegrityError

    from worker.models import FeedbackEvent
    from worker.operators import metrics
    from worker.settings import Settings

    now = datetime.now(UTC)
    counter = metrics.counter("newsletter_feedback_events_total").labels(
        kind="complaint", source="arf"
    )

    def event(n: str) -> FeedbackEvent:
        return FeedbackEvent(
            source_event_id=n, kind="complaint", source="arf", occurred_at=now, recorded_at=now
        )

    before = counter._value.get()
    # the runtime's sessions, as actors and the web app open them: its engine installs the hooks
    session_scope = Runtime(
        Settings.from_env(
            DATA_KEY_ENV, database_url=db_url, secret_key="metrics-test-secret-0123456789"
        )
    ).session
    with session_scope() as session:
        session.add(event("arf:1"))
        session.flush()
        try:
            with session.begin_nested():  # a duplicate report: its savepoint rolls back
                session.add(event("arf:1"))
        except IntegrityError:
            pass
        assert counter._value.get() == before  # flushed, not yet committed
    assert counter._value.get() == before + 1
    try:
        with session_scope() as session:
            session.add(event("arf:2"))
            session.flush()
            raise RuntimeError("the transaction fails after the flush")
    except RuntimeError:
        pass
    assert counter._value.get() == before + 1


def test_metrics_survive_a_database_outage(rt: Runtime) -> None:
    down = Runtime(replace(rt.settings, database_url="postgresql+psycopg://postgres@127.0.0.1:1/x"))
    client = TestClient(create_app(down))
    assert client.get("/readyz").status_code == 503
    assert client.get("/readyz").json()["database"].startswith("error: ")
    samples = scrape(client)
    assert samples[("newsletter_ledger_up", ())] == 0
    assert ("newsletter_deliveries_total", (("state", "sent"),)) in samples or any(
        name == "newsletter_smtp_transaction_duration_seconds_count" for name, _ in samples
    )


def test_a_kept_series_counts_in_the_family_it_was_taken_from() -> None:
    from worker.operators import metrics

    family = metrics.counter("newsletter_deliveries_total")
    before = family.labels(state="sent")._value.get()
    # When deliveries are recorded through the kept series
    metrics.delivery_recorded("sent")
    metrics.delivery_recorded("sent")
    metrics.delivery_recorded("no-such-state")  # folded into "other", as before
    # Then the family's own series moved by the same count
    assert family.labels(state="sent")._value.get() == before + 2
    assert metrics._child("newsletter_deliveries_total", "state", "sent") is family.labels(
        state="sent"
    )
    assert family.labels(state="other")._value.get() >= 1
