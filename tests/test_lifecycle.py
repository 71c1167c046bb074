"""The subscriber lifecycle (worker/subscriptions/lifecycle.py): every arrow allowed and refused,
one feedback event per unsubscribe request from each entry, and no other module writing a
subscriber's status."""

from __future__ import annotations

import ast
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from tests.sendkit import seed
from worker.feedback.classification import BOUNCE_KINDS, Classification, FeedbackKind, Reason
from worker.feedback.policy import Effect, FeedbackPolicy, record_feedback
from worker.feedback.report import FeedbackReport
from worker.models import FeedbackEvent, Subscriber
from worker.runtime import Runtime
from worker.states import SUBSCRIBER_TRANSITIONS, IllegalTransition, SubscriberStatus
from worker.subscriptions import lifecycle
from worker.subscriptions.addresses import parse_address
from worker.subscriptions.tokens import unsubscribe_token
from worker.web.app import create_app

NOW = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)
PENDING, CONFIRMED = SubscriberStatus.PENDING, SubscriberStatus.CONFIRMED
UNSUBSCRIBED, SUPPRESSED = SubscriberStatus.UNSUBSCRIBED, SubscriberStatus.SUPPRESSED
ALL = tuple(SubscriberStatus)
WORKER = Path(__file__).resolve().parent.parent / "worker"


def row(status: SubscriberStatus, **extra: object) -> Subscriber:
    """An unsaved subscriber in ``status`` (the in-memory arrows need no database)."""
    return Subscriber(id=1, status=status.value, confirm_nonce="n0nce", **extra)


# In-memory arrows: (function, statuses it is allowed from, the status it leaves).
ARROWS = [
    (lifecycle.enrol, {PENDING, UNSUBSCRIBED}, PENDING),
    (lifecycle.confirm, {PENDING}, CONFIRMED),
    (lifecycle.erase, set(ALL), SUPPRESSED),
]


@pytest.mark.parametrize("current", ALL)
@pytest.mark.parametrize(("move", "allowed", "target"), ARROWS)
def test_in_memory_arrows(move: object, allowed: set[SubscriberStatus], target: str,
                          current: SubscriberStatus) -> None:  # fmt: skip
    subscriber = row(current)
    assert callable(move)
    if current in allowed:
        move(subscriber, NOW)
        assert (subscriber.status, subscriber.updated_at) == (target, NOW)
        assert current in SUBSCRIBER_TRANSITIONS[SubscriberStatus(target)]
    else:
        with pytest.raises(IllegalTransition):
            move(subscriber, NOW)
        # Typed as non-null columns; an unflushed row still holds None.
        observed: tuple[object, object] = (subscriber.status, subscriber.updated_at)
        assert observed == (current, None)


def test_confirm_voids_the_token_and_enrol_keeps_a_live_one() -> None:
    pending = row(PENDING)
    lifecycle.enrol(pending, NOW)
    assert pending.confirm_nonce == "n0nce"  # a repeated signup keeps the link of the first mail
    lifecycle.confirm(pending, NOW)
    voided: tuple[object, object] = (pending.confirm_nonce, pending.confirmed_at)
    assert voided == (None, NOW)
    left = row(UNSUBSCRIBED)
    left.confirm_nonce = None
    lifecycle.enrol(left, NOW)
    assert left.confirm_nonce is not None and len(left.confirm_nonce) == 12


def subscribers(rt: Runtime, statuses: dict[str, SubscriberStatus]) -> dict[str, int]:
    """One subscriber per address in its status (confirmed ones a day ago); ids by address."""
    newsletter_id = seed(rt, [])
    with rt.session() as session:
        for address, status in statuses.items():
            session.add(
                Subscriber(
                    newsletter_id=newsletter_id,
                    email=address,
                    email_key=address,
                    ascii_email=address,
                    domain="example.org",
                    language="en",
                    status=status.value,
                    created_at=NOW,
                    updated_at=NOW,
                    confirmed_at=NOW - timedelta(days=1) if status == CONFIRMED else None,
                )
            )
    with rt.session() as session:
        return {s.email: s.id for s in session.scalars(select(Subscriber).order_by(Subscriber.id))}


def statuses_of(rt: Runtime) -> dict[str, str]:
    with rt.session() as session:
        return {s.email: s.status for s in session.scalars(select(Subscriber))}


def event_count(rt: Runtime) -> int:
    with rt.session() as session:
        return int(session.scalar(select(func.count()).select_from(FeedbackEvent)) or 0)


def by_status(rt: Runtime) -> dict[str, int]:
    return subscribers(rt, {f"{s.value}@example.org": s for s in ALL})


def test_unsubscribe_from_every_status(rt: Runtime) -> None:
    ids = by_status(rt)
    with rt.session() as session:
        left = {
            address: lifecycle.unsubscribe(
                session, session.get_one(Subscriber, sid), source="page", now=NOW
            )
            for address, sid in ids.items()
        }
    assert left == {
        "pending@example.org": True,
        "confirmed@example.org": True,
        "unsubscribed@example.org": False,
        "suppressed@example.org": False,
    }
    assert statuses_of(rt) == {
        "pending@example.org": "unsubscribed",
        "confirmed@example.org": "unsubscribed",
        "unsubscribed@example.org": "unsubscribed",
        "suppressed@example.org": "suppressed",  # asked to leave: remembered, still suppressed
    }
    with rt.session() as session:
        suppressed = session.get_one(Subscriber, ids["suppressed@example.org"])
        assert suppressed.unsubscribed_at is not None
    assert event_count(rt) == 2  # one per subscriber who left now


def test_suppress_from_every_status_and_lift(rt: Runtime) -> None:
    ids = by_status(rt)
    with rt.session() as session:
        for address in ids:
            lifecycle.suppress(session, address, NOW)
    assert set(statuses_of(rt).values()) == {"suppressed"}

    with rt.session() as session:
        lifted = [lifecycle.lift_suppression(session, a, NOW + timedelta(days=1)) for a in ids]
    # Only the one who had confirmed (and not left since) comes back as a reader.
    assert lifted == [(0, 1), (1, 0), (0, 1), (0, 1)]
    assert statuses_of(rt) == {
        "pending@example.org": "unsubscribed",
        "confirmed@example.org": "confirmed",
        "unsubscribed@example.org": "unsubscribed",
        "suppressed@example.org": "unsubscribed",
    }


def test_lift_leaves_a_reader_who_asked_to_leave_unsubscribed(rt: Runtime) -> None:
    [sid] = subscribers(rt, {"reader@example.org": CONFIRMED}).values()
    with rt.session() as session:
        lifecycle.suppress(session, "reader@example.org", NOW)  # a hard bounce
        reader = session.get_one(Subscriber, sid)
        lifecycle.unsubscribe(session, reader, source="page", now=NOW + timedelta(hours=1))
        assert lifecycle.lift_suppression(session, "reader@example.org", NOW) == (0, 1)
    assert statuses_of(rt) == {"reader@example.org": "unsubscribed"}


def test_purge_unconfirmed_moves_only_stale_pending_ones(rt: Runtime) -> None:
    ids = by_status(rt)
    old = NOW - timedelta(days=20)
    with rt.session() as session:
        for sid in ids.values():
            session.get_one(Subscriber, sid).updated_at = old
    with rt.session() as session:
        assert lifecycle.purge_unconfirmed(session, now=NOW, older_than=timedelta(days=14)) == 1
    assert statuses_of(rt) == {
        "confirmed@example.org": "confirmed",
        "unsubscribed@example.org": "unsubscribed",
        "suppressed@example.org": "suppressed",
    }


def test_insert_pending_tells_a_new_row_from_a_concurrent_one(rt: Runtime) -> None:
    # Bug fixed: "inserted" came from rowcount, which PostgreSQL (psycopg) reports as -1 for
    # INSERT … ON CONFLICT DO NOTHING, so every new signup there counted as a repeated one.
    newsletter_id = seed(rt, [])
    address = parse_address("New.Reader@Example.org")
    with rt.session() as session:
        first, inserted = lifecycle.insert_pending(session, newsletter_id, address, "en", NOW)
        again, inserted_again = lifecycle.insert_pending(session, newsletter_id, address, "be", NOW)
        assert (inserted, inserted_again, again.id) == (True, False, first.id)
        assert (first.status, first.email, first.language) == (
            "pending", "New.Reader@example.org", "en")  # fmt: skip


def _provider_unsubscribe(address: str) -> FeedbackReport:
    classification = Classification(FeedbackKind.UNSUBSCRIBE, Reason.LIST_UNSUBSCRIBE, False)
    return FeedbackReport(
        kind=FeedbackKind.UNSUBSCRIBE,
        classification=classification,
        recipient=address,
        status=None,
        diagnostic=None,
        original_message_id=None,
        verp_local=None,
        feedback_type=None,
        source_event_id="webhook:test:1",
        source="webhook:test",
    )


def _mailto(token: str) -> FeedbackReport:
    classification = Classification(FeedbackKind.UNSUBSCRIBE, Reason.LIST_UNSUBSCRIBE, False)
    return FeedbackReport(
        kind=FeedbackKind.UNSUBSCRIBE,
        classification=classification,
        recipient="someone@example.com",
        status=None,
        diagnostic=None,
        original_message_id=None,
        verp_local=None,
        feedback_type=None,
        source_event_id="mail:<unsub1@example.com>",
        source="mailto",
        unsubscribe_token=token,
    )


@pytest.mark.parametrize("entry", ["link", "one_click", "mailto", "feedback"])
def test_each_unsubscribe_entry_records_one_event(rt: Runtime, entry: str) -> None:
    [sid] = subscribers(rt, {"reader@example.org": CONFIRMED}).values()
    token = unsubscribe_token(rt.tokens, sid)
    policy = FeedbackPolicy.from_settings(rt.settings)
    client = TestClient(create_app(rt))
    for _ in range(2):  # a repeated request records nothing more
        if entry == "link":
            assert client.post(f"/u/{token}", data={}).status_code == 200
        elif entry == "one_click":
            body = {"List-Unsubscribe": "One-Click"}
            assert client.post(f"/u/{token}", data=body).text == "unsubscribed"
        else:
            report = _mailto(token) if entry == "mailto" else _provider_unsubscribe(
                "reader@example.org")  # fmt: skip
            with rt.session() as session:
                record_feedback(session, report, policy=policy, now=NOW, tokens=rt.tokens,
                                verified_provider=entry == "feedback")  # fmt: skip
    with rt.session() as session:
        events = session.scalars(select(FeedbackEvent)).all()
        assert [(e.kind, e.subscriber_id) for e in events] == [("unsubscribe", sid)]
        if entry in ("mailto", "feedback"):
            assert events[0].effect == Effect.UNSUBSCRIBED
        else:
            assert events[0].source == entry.replace("link", "page")
    assert statuses_of(rt) == {"reader@example.org": "unsubscribed"}


def test_bounce_kinds_are_the_failed_deliveries() -> None:
    assert [k.value for k in BOUNCE_KINDS] == ["hard_bounce", "soft_bounce", "policy_block"]


def _writes_subscriber_status(tree: ast.AST) -> list[int]:
    """Lines that assign a subscriber's ``status``: ``x.status = …`` (also in tuples),
    ``Subscriber(status=…)`` and ``update(Subscriber)….values(status=…)``. Names that contain
    ``send`` or ``delivery`` are another machine's state."""
    lines = []
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = [
                t for target in node.targets
                for t in (target.elts if isinstance(target, ast.Tuple) else [target])
            ]  # fmt: skip
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        for target in targets:
            if isinstance(target, ast.Attribute) and target.attr == "status":
                owner = ast.unparse(target.value).lower()
                if "send" not in owner and "delivery" not in owner:
                    assert isinstance(node, ast.stmt)  # only assignments have targets
                    lines.append(node.lineno)
        if isinstance(node, ast.Call) and any(k.arg == "status" for k in node.keywords):
            called = ast.unparse(node.func)
            if called == "Subscriber" or (
                called.endswith(".values") and "update(Subscriber)" in called
            ):
                lines.append(node.lineno)
    return lines


def test_the_detector_sees_each_kind_of_write() -> None:
    source = (
        "subscriber.status = 'x'\nrow.status, n = 'x', 1\nsend.status = 'x'\n"
        "delivery_row.status = 'x'\nSubscriber(status='x')\n"
        "update(Subscriber).where(a).values(status='x')\nupdate(Send).values(status='x')\n"
    )
    assert _writes_subscriber_status(ast.parse(source)) == [1, 2, 5, 6]


def test_only_the_lifecycle_writes_a_subscribers_status() -> None:
    writers = {
        str(path.relative_to(WORKER.parent)): lines
        for path in sorted(WORKER.rglob("*.py"))
        if (lines := _writes_subscriber_status(ast.parse(path.read_text("utf-8"))))
    }
    assert list(writers) == ["worker/subscriptions/lifecycle.py"]
