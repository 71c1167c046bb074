"""A confirmation mail the relay refuses leaves a trace: a log line with the reply, the reply on
the subscriber (``subscribers show``) and a count on the dashboard. Seen with a relay that does
not offer SMTPUTF8 and a Cyrillic local part: the mail failed and nothing said so."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from tests.smtp_script import ScriptServer
from tests.stub_worker import StubWorker
from worker import actors
from worker.cli import main
from worker.models import Subscriber
from worker.runtime import Runtime
from worker.web.app import create_app

READER = "читатель@example.org"
PASSWORD = "correct horse battery staple"


@pytest.fixture
def no_smtputf8(rt: Runtime) -> Iterator[tuple[Runtime, ScriptServer]]:
    """The runtime's relay is a server without SMTPUTF8 (RFC 6531) whose owner said it had it."""
    with ScriptServer(smtputf8=False) as server:
        runtime = Runtime(
            dataclasses.replace(
                rt.settings, smtp_url=server.url(), operator_password=PASSWORD, smtputf8_relay=True
            )
        )
        actors.use_runtime(runtime)
        yield runtime, server
        actors.use_runtime(rt)


def test_a_refused_confirmation_mail_is_logged_and_shown(
    no_smtputf8: tuple[Runtime, ScriptServer],
    stub_worker: StubWorker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rt, server = no_smtputf8
    with caplog.at_level(logging.WARNING, logger="worker.actors"):
        actors.handle_signup.send(
            {"version": 1, "event_id": "e1", "email": READER, "language": "ru"}
        )
        actors.handle_signup.send(
            {"version": 1, "event_id": "e2", "email": "anna@example.org", "language": "en"}
        )
        stub_worker.join()
    assert dict(server.handler.accepted) == {"anna@example.org": 1}

    with rt.session() as session:
        rows = {s.email: s for s in session.query(Subscriber)}
        refused, sent = rows[READER], rows["anna@example.org"]
        assert refused.confirmation_error is not None
        assert refused.confirmation_error.startswith("553 5.6.7 the relay does not offer SMTPUTF8")
        assert refused.confirmation_failed_at is not None and refused.confirmation_sent_at is None
        assert sent.confirmation_error is None and sent.confirmation_sent_at is not None

    line = next(r for r in caplog.records if "confirmation mail" in r.getMessage())
    assert line.levelno == logging.WARNING
    assert line.getMessage() == (
        "confirmation mail refused: 553 5.6.7 the relay does not offer SMTPUTF8, needed for "
        "this address (RFC 6531 §3.5)"
    )

    shown = CliRunner().invoke(
        main,
        ["subscribers", "show", READER],
        env={
            "NEWSLETTER_DATABASE_URL": rt.settings.database_url,
            "NEWSLETTER_SECRET_KEY": rt.settings.secret_key,
        },
    )
    assert shown.exit_code == 0, shown.output
    assert "  confirmation mail failed " in shown.output
    assert "553 5.6.7 the relay does not offer SMTPUTF8" in shown.output

    page = TestClient(create_app(rt)).get("/dashboard", auth=("operator", PASSWORD))
    assert page.status_code == 200
    assert "Confirmation mails not delivered" in page.text
    assert "553 5.6.7" in page.text
