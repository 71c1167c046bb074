"""Planning a send: pages in subscriber-id order, resumed after the last planned reader, and a
concurrent planner that got ahead does not plan anyone twice (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, update
from sqlalchemy import text as text_

from tests.sendkit import seed
from worker.editions.store import find_edition
from worker.models import Delivery, Send, Subscriber
from worker.runtime import Runtime
from worker.sending import planning
from worker.sending.planning import plan_deliveries, planned_through
from worker.sending.sends import create_send
from worker.states import SubscriberStatus


def new_send(rt: Runtime) -> int:
    with rt.session() as session:
        edition = find_edition(session, "2024-W28")
        assert edition is not None
        send_id = create_send(session, edition, rt.clock.now(), 10).id
        session.commit()
    return int(send_id)


def plan(rt: Runtime, send_id: int, newsletter_id: int, page_size: int = 4) -> int:
    with rt.session() as session:
        send = session.get_one(Send, send_id)
        return plan_deliveries(
            session,
            send,
            newsletter_id=newsletter_id,
            languages=("en",),
            default_language="en",
            page_size=page_size,
        )


def planned(rt: Runtime, send_id: int) -> list[str]:
    with rt.session() as session:
        return list(
            session.scalars(
                select(Subscriber.email)
                .join(Delivery, Delivery.subscriber_id == Subscriber.id)
                .where(Delivery.send_id == send_id)
                .order_by(Subscriber.id)
            )
        )


def test_planning_resumes_after_the_last_planned_reader(rt: Runtime) -> None:
    # Given 10 confirmed readers, of which planning got through the first 6 before it stopped
    # (here: the last 4 were not yet confirmed when it ran)
    addresses = [f"r{n:02d}@example.org" for n in range(10)]
    newsletter_id = seed(rt, addresses)
    send_id = new_send(rt)
    with rt.session() as session:
        later = list(session.scalars(select(Subscriber.id).order_by(Subscriber.id)))[6:]
        session.execute(
            update(Subscriber)
            .where(Subscriber.id.in_(later))
            .values(status=SubscriberStatus.PENDING)
        )
        session.commit()
    assert plan(rt, send_id, newsletter_id) == 6
    with rt.session() as session:
        sixth = session.scalars(select(Subscriber.id).order_by(Subscriber.id)).all()[5]
        assert planned_through(session, send_id) == sixth
        session.execute(
            update(Subscriber)
            .where(Subscriber.id.in_(later))
            .values(status=SubscriberStatus.CONFIRMED)
        )
        session.commit()

    # When planning runs again (a redelivered plan_send): it resumes after the sixth reader
    assert plan(rt, send_id, newsletter_id) == 10
    assert planned(rt, send_id) == addresses

    # And planning a fully planned send again is a no-op
    assert plan(rt, send_id, newsletter_id) == 10
    with rt.session() as session:
        assert session.scalar(select(func.count()).select_from(Delivery)) == 10


def test_a_reader_confirmed_behind_planning_is_not_added_by_replanning(rt: Runtime) -> None:
    # Given a planned send, and a reader (low id) who confirmed only after planning passed them
    addresses = [f"r{n:02d}@example.org" for n in range(6)]
    newsletter_id = seed(rt, addresses)
    send_id = new_send(rt)
    with rt.session() as session:
        first = session.scalars(select(Subscriber.id).order_by(Subscriber.id)).first()
        session.execute(update(Subscriber).where(Subscriber.id == first).values(status="pending"))
        session.commit()
    assert plan(rt, send_id, newsletter_id) == 5
    with rt.session() as session:
        session.execute(update(Subscriber).where(Subscriber.id == first).values(status="confirmed"))
        session.commit()
    # When planning runs again: the send's audience stays who was confirmed when it planned
    assert plan(rt, send_id, newsletter_id) == 5
    assert planned(rt, send_id) == addresses[1:]


def test_a_concurrent_planner_ahead_of_this_one_plans_nobody_twice(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a send another planner has already planned in part (readers 3 and 7 of the first
    # page), committed after this planner read how far planning got (0: the race's timing)
    addresses = [f"r{n:02d}@example.org" for n in range(10)]
    newsletter_id = seed(rt, addresses)
    send_id = new_send(rt)
    with rt.session() as session:
        ids = session.scalars(select(Subscriber.id).order_by(Subscriber.id)).all()
        for index in (3, 7):
            session.add(
                Delivery(
                    send_id=send_id,
                    subscriber_id=ids[index],
                    language="en",
                    domain="example.org",
                    state="sent",
                    attempts=1,
                )
            )
        session.commit()
    monkeypatch.setattr(planning, "planned_through", lambda session, send_id: 0)

    # When this planner plans its pages: the plain insert of the page is refused by the unique
    # (send, subscriber) constraint and the page is planned again with ON CONFLICT DO NOTHING
    assert plan(rt, send_id, newsletter_id, page_size=5) == 10

    # Then every reader has one delivery, and the other planner's rows are untouched
    assert planned(rt, send_id) == addresses
    with rt.session() as session:
        sent = session.scalars(select(Delivery.subscriber_id).where(Delivery.state == "sent")).all()
    assert sorted(sent) == [ids[3], ids[7]]


def test_a_database_user_without_the_per_page_check_plans_the_same_readers(
    rt: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    # Given 9 confirmed readers and, on PostgreSQL, a planner whose database role may not set
    # session_replication_role (not a superuser, not granted): the foreign keys are checked
    # per row by PostgreSQL's triggers
    if rt.settings.database_url.startswith("sqlite"):
        pytest.skip("PostgreSQL only: SQLite has no session_replication_role")
    from sqlalchemy import text

    addresses = [f"u{n}@example.org" for n in range(9)]
    newsletter_id = seed(rt, addresses)
    send_id = new_send(rt)
    with rt.session() as session:
        session.execute(
            text(
                "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'nl_planner')"
                " THEN CREATE ROLE nl_planner NOSUPERUSER; END IF; END $$"
            )
        )
        session.execute(text("GRANT ALL ON ALL TABLES IN SCHEMA public TO nl_planner"))
        session.execute(text("GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO nl_planner"))
        session.commit()

    # When it plans in pages of 4
    with rt.session() as session, caplog.at_level("INFO", logger="worker.sending.planning"):
        session.execute(text("SET ROLE nl_planner"))
        send = session.get_one(Send, send_id)
        total = plan_deliveries(
            session, send, newsletter_id=newsletter_id, languages=("en",),
            default_language="en", page_size=4,
        )  # fmt: skip
        session.execute(text("RESET ROLE"))
        session.commit()

    # Then every reader is planned once, and the log says why it was slower
    assert total == 9
    assert planned(rt, send_id) == addresses
    assert "planning checks foreign keys per row: InsufficientPrivilege" in caplog.text


def test_the_per_page_check_ends_with_the_page(rt: Runtime) -> None:
    # Given 5 confirmed readers planned in pages of 2 (on PostgreSQL: the triggers off for each
    # page's transaction, the send and the page's readers locked instead)
    addresses = [f"p{n}@example.org" for n in range(5)]
    newsletter_id = seed(rt, addresses)
    send_id = new_send(rt)
    with rt.session() as session:
        send = session.get_one(Send, send_id)
        total = plan_deliveries(
            session, send, newsletter_id=newsletter_id, languages=("en",),
            default_language="en", page_size=2,
        )  # fmt: skip

        # Then every reader is planned once, and the same connection is back to PostgreSQL's
        # own per-row checks
        if not rt.settings.database_url.startswith("sqlite"):
            assert session.scalar(text_("SHOW session_replication_role")) == "origin"
    assert total == 5
    assert planned(rt, send_id) == addresses
