"""The weekly send end to end on real services: signup → confirmation → send → inbox."""

from __future__ import annotations

import email
import email.policy
import re
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from tests.message_parts import body_text
from tests.samples import SAMPLE_EDITION
from worker import actors
from worker.devtools.outbox import OutboxServer
from worker.editions.files import read_edition
from worker.editions.store import save_edition
from worker.models import Delivery, Send, SignupRefusal, Subscriber
from worker.runtime import Runtime
from worker.sending.sends import create_send
from worker.states import SubscriberStatus
from worker.web.app import create_app

READERS = [
    ("anna@example.org", "en"),
    ("Ivan.Petrov@Example.ORG", "en"),
    ("chytach@ПРЫКЛАД.БЕЛ", "be"),
    ("ales@example.net", "be"),
    ("olga@example.com", "ru"),
    ("pending.only@example.com", "ru"),
]


def signup(n: int, address: Any, language: Any, **extra: Any) -> dict[str, Any]:
    return {"version": 1, "event_id": f"e{n}", "email": address, "language": language, **extra}


def confirm_links(smtp: OutboxServer) -> dict[str, str]:
    links = {}
    for received in smtp.handler.received:
        message = email.message_from_bytes(received.data, policy=email.policy.default)
        text = body_text(message, "plain")
        match = re.search(r"http://testserver(/confirm/\S+)", text)
        if match:
            links[received.recipients[0]] = match.group(1)
    return links


def test_signup_confirm_send_gives_one_message_per_confirmed_subscriber(
    rt: Runtime, smtp: OutboxServer, stub_worker: Any
) -> None:
    # Given six signups and one invalid one, and the sample edition loaded
    with rt.session() as session:
        save_edition(session, read_edition(SAMPLE_EDITION), rt.clock.now())
    for n, (address, language) in enumerate(READERS):
        actors.handle_signup.send(signup(n, address, language))
    actors.handle_signup.send(signup(99, "broken@", "en"))
    stub_worker.join()
    links = confirm_links(smtp)
    assert len(links) == 6  # one confirmation mail per valid signup
    assert "chytach@xn--80aiqesg1f.xn--90ais" in links  # IDN domain sent as A-labels

    # When five of them confirm through the page (GET shows a button, POST confirms)
    client = TestClient(create_app(rt))
    for recipient, path in links.items():
        if recipient.startswith("pending.only"):
            continue
        page = client.get(path)
        assert page.status_code == 200 and 'method="post"' in page.text
        assert client.post(path, data={"confirm": "1"}).status_code == 200
    smtp.handler.received.clear()
    with rt.session() as session:
        edition = read_edition(SAMPLE_EDITION)
        send_id = create_send(
            session, save_edition(session, edition, rt.clock.now()), rt.clock.now(), 2
        ).id
    actors.plan_send.send(send_id)
    stub_worker.join()

    # Then each confirmed subscriber got exactly one edition, in their language
    got = sorted((r.recipients[0], r.data) for r in smtp.handler.received)
    assert [rcpt for rcpt, _ in got] == sorted(
        [
            "anna@example.org",
            "Ivan.Petrov@example.org",
            "chytach@xn--80aiqesg1f.xn--90ais",
            "ales@example.net",
            "olga@example.com",
        ]
    )
    subjects = {
        rcpt: email.message_from_bytes(data, policy=email.policy.default)["Subject"]
        for rcpt, data in got
    }
    assert subjects["olga@example.com"] == edition.contents["ru"].subject
    assert subjects["ales@example.net"] == edition.contents["be"].subject
    assert subjects["anna@example.org"] == edition.contents["en"].subject
    with rt.session() as session:
        send = session.get(Send, send_id)
        assert send is not None and send.status == "finished"
        states = dict(
            session.execute(select(Delivery.state, func.count()).group_by(Delivery.state)).all()
        )
        assert states == {"sent": 5}
        refusal = session.scalars(select(SignupRefusal)).one()
        assert refusal.reason == "invalid_address"

    # And running the same send again sends nothing more
    actors.plan_send.send(send_id)
    stub_worker.join()
    assert len(smtp.handler.received) == 5


def test_unsubscribe_get_changes_nothing_post_and_one_click_unsubscribe(
    rt: Runtime, smtp: OutboxServer, stub_worker: Any
) -> None:
    with rt.session() as session:
        save_edition(session, read_edition(SAMPLE_EDITION), rt.clock.now())
    for n, address in enumerate(["a@example.org", "b@example.org"]):
        actors.handle_signup.send(signup(n, address, "en"))
    stub_worker.join()
    client = TestClient(create_app(rt))
    for path in confirm_links(smtp).values():
        client.post(path, data={"confirm": "1"})
    smtp.handler.received.clear()
    with rt.session() as session:
        edition = session.scalar(select(Send.edition_id))  # none yet
        assert edition is None
        from worker.editions.store import find_edition

        found = find_edition(session, "2024-W28")
        assert found is not None
        send_id = create_send(session, found, rt.clock.now()).id
    actors.plan_send.send(send_id)
    stub_worker.join()
    urls = {}
    for received in smtp.handler.received:
        message = email.message_from_bytes(received.data, policy=email.policy.default)
        header = str(message["List-Unsubscribe"])
        link = re.match(r"<http://testserver(/u/[^>]+)>", header)
        assert link, "List-Unsubscribe has no web link first"
        https = link.group(1)
        assert https in body_text(message, "html")  # visible link in HTML
        assert https in body_text(message, "plain")  # and in text
        urls[received.recipients[0]] = https
    a, b = urls["a@example.org"], urls["b@example.org"]

    page = client.get(a)
    assert page.status_code == 200 and 'method="post"' in page.text
    with rt.session() as session:
        assert {s.email: s.status for s in session.scalars(select(Subscriber))} == {
            "a@example.org": "confirmed",
            "b@example.org": "confirmed",
        }

    one_click = client.post(
        a,
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert one_click.status_code == 200 and "set-cookie" not in one_click.headers
    button = client.post(b, data={"unsubscribe": "1"})
    assert button.status_code == 200
    with rt.session() as session:
        assert {s.email: s.status for s in session.scalars(select(Subscriber))} == {
            "a@example.org": "unsubscribed",
            "b@example.org": "unsubscribed",
        }


def newsletter_cli(rt: Runtime, *args: str) -> Any:
    """Run ``newsletter ARGS`` in this process, on the test's runtime (``runtime()``)."""
    from click.testing import CliRunner

    from worker.cli import main

    env = {
        "NEWSLETTER_DATABASE_URL": rt.settings.database_url,
        "NEWSLETTER_SECRET_KEY": rt.settings.secret_key,
        "COLUMNS": "160",
    }
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_a_second_send_of_an_edition_is_refused_unless_only_new_or_again(
    rt: Runtime, smtp: OutboxServer, stub_worker: Any
) -> None:
    from tests.sendkit import seed

    # Given two confirmed readers and a finished send of 2024-W28
    seed(rt, ["anna@example.org", "boris@example.org"])
    first = newsletter_cli(rt, "send", "start", "2024-W28")
    assert first.exit_code == 0, first.output
    stub_worker.join()
    assert sorted(r.recipients[0] for r in smtp.handler.received) == [
        "anna@example.org",
        "boris@example.org",
    ]

    # When the operator starts the same edition again
    second = newsletter_cli(rt, "send", "start", "2024-W28")

    # Then it is refused, naming the earlier send, and nobody is mailed
    assert second.exit_code == 1
    assert "already sent by send 1 (finished)" in second.output
    assert "--only-new" in second.output and "--again" in second.output
    stub_worker.join()
    assert len(smtp.handler.received) == 2
    with rt.session() as session:
        assert session.scalar(select(func.count()).select_from(Send)) == 1

    # When a reader confirms later and the operator sends --only-new
    seed_more(rt, "carla@example.org")
    only_new = newsletter_cli(rt, "send", "start", "2024-W28", "--only-new")
    assert only_new.exit_code == 0, only_new.output
    stub_worker.join()

    # Then only that reader gets it
    assert [r.recipients[0] for r in smtp.handler.received[2:]] == ["carla@example.org"]
    with rt.session() as session:
        planned = session.scalar(select(Send.planned_count).where(Send.id == 2))
        assert planned == 1

    # And --again is an explicit full resend; both flags together are a usage error
    both = newsletter_cli(rt, "send", "start", "2024-W28", "--only-new", "--again")
    assert both.exit_code == 2 and "exclude each other" in both.output
    again = newsletter_cli(rt, "send", "start", "2024-W28", "--again")
    assert again.exit_code == 0, again.output
    stub_worker.join()
    assert sorted(r.recipients[0] for r in smtp.handler.received[3:]) == [
        "anna@example.org",
        "boris@example.org",
        "carla@example.org",
    ]


def test_only_new_with_nobody_new_is_refused_and_creates_no_send(
    rt: Runtime, smtp: OutboxServer, stub_worker: Any
) -> None:
    from tests.sendkit import seed

    # Given two confirmed readers who both had 2024-W28
    seed(rt, ["anna@example.org", "boris@example.org"])
    assert newsletter_cli(rt, "send", "start", "2024-W28").exit_code == 0
    stub_worker.join()
    assert len(smtp.handler.received) == 2

    # When the operator sends --only-new now, or schedules it for later, with nobody new
    now = newsletter_cli(rt, "send", "start", "2024-W28", "--only-new")
    later = newsletter_cli(
        rt, "send", "start", "2024-W28", "--only-new", "--at", "2099-01-05 09:00"
    )

    # Then both are refused (exit code 1: no send exists to watch), saying why, and no send
    # row is created, so nothing is planned or mailed
    expected = "nobody new to send to: every confirmed reader already has a delivery of 2024-W28"
    for result in (now, later):
        assert result.exit_code == 1, result.output
        assert expected in result.output
    stub_worker.join()
    assert len(smtp.handler.received) == 2
    with rt.session() as session:
        assert session.scalar(select(func.count()).select_from(Send)) == 1
    assert "no scheduled sends" in newsletter_cli(rt, "send", "schedule").output

    # And once a reader confirms, --only-new goes ahead for that reader alone
    seed_more(rt, "carla@example.org")
    third = newsletter_cli(rt, "send", "start", "2024-W28", "--only-new")
    assert third.exit_code == 0, third.output
    stub_worker.join()
    assert [r.recipients[0] for r in smtp.handler.received[2:]] == ["carla@example.org"]


def test_a_cancelled_send_that_never_started_does_not_block_the_edition(
    rt: Runtime, smtp: OutboxServer, stub_worker: Any
) -> None:
    from tests.sendkit import seed

    seed(rt, ["anna@example.org"])
    scheduled = newsletter_cli(
        rt, "send", "start", "2024-W28", "--at", "2099-07-15 09:00", "--timezone", "Europe/Minsk"
    )
    assert scheduled.exit_code == 0, scheduled.output
    cancelled = newsletter_cli(rt, "send", "cancel", "1")
    assert "it had not started: nobody was mailed" in cancelled.output

    now = newsletter_cli(rt, "send", "start", "2024-W28")

    assert now.exit_code == 0, now.output
    stub_worker.join()
    assert [r.recipients[0] for r in smtp.handler.received] == ["anna@example.org"]


def seed_more(rt: Runtime, address: str) -> None:
    """One more confirmed reader of the seeded newsletter."""
    with rt.session() as session:
        newsletter_id = session.scalar(select(Subscriber.newsletter_id).limit(1))
        assert newsletter_id is not None
        now = rt.clock.now()
        session.add(
            Subscriber(
                newsletter_id=newsletter_id,
                email=address,
                email_key=address,
                ascii_email=address,
                domain=address.rsplit("@", 1)[1],
                language="en",
                status=SubscriberStatus.CONFIRMED,
                created_at=now,
                updated_at=now,
                confirmed_at=now,
            )
        )
