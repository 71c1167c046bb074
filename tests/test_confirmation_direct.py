"""A new reader's confirmation mail goes out from ``handle_signup`` itself when the domain's
pacing slot is free (issue 16); a mail it cannot send is handed to ``send_confirmation``,
never raised: a retried signup event would be a duplicate that mails nobody. Each reader gets
one mail per signup, also when the event is delivered twice."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
from sqlalchemy import select

from tests.smtp_script import ScriptHandler, ScriptServer
from worker import actors
from worker.broker import current
from worker.models import Subscriber
from worker.runtime import Runtime

GREY = "grey@example.org"


def signup(n: int, address: str) -> dict[str, Any]:
    return {"version": 1, "event_id": f"direct-{n}", "email": address, "language": "en"}


@pytest.fixture
def relay(rt: Runtime) -> Iterator[tuple[Runtime, ScriptServer]]:
    """The runtime's relay greylists ``GREY`` once (451), then accepts."""
    handler = ScriptHandler({GREY: ["RCPT 451 4.7.1 Greylisted, try again", "RCPT 250 2.1.5 Ok"]})
    with ScriptServer(handler) as server:
        runtime = Runtime(dataclasses.replace(rt.settings, smtp_url=server.url()))
        actors.use_runtime(runtime)
        current().flush_all()
        try:
            yield runtime, server
        finally:
            current().flush_all()
            actors.use_runtime(rt)
            runtime.close()


def queued(name: str) -> list[dramatiq.Message[Any]]:
    """The messages waiting in queue ``name`` of the stub broker (left in place)."""
    return [dramatiq.Message.decode(m) for m in list(current().queues[name].queue)]


def subscriber(rt: Runtime, address: str) -> Subscriber:
    with rt.session() as session:
        found = session.scalars(select(Subscriber).where(Subscriber.email_key == address)).one()
        session.expunge(found)
        return found


def test_a_new_reader_is_mailed_by_the_signup_actor_once_even_if_the_event_comes_twice(
    relay: tuple[Runtime, ScriptServer],
) -> None:
    rt, server = relay
    # When a new reader signs up, and the same event is delivered again (at least once)
    actors.handle_signup(signup(1, "anna@example.org"))
    actors.handle_signup(signup(1, "anna@example.org"))

    # Then one mail went out from the signup actor itself: nothing was queued for it
    assert dict(server.handler.accepted) == {"anna@example.org": 1}
    assert queued("transactional") == [] and queued("transactional.DQ") == []
    anna = subscriber(rt, "anna@example.org")
    assert anna.confirmation_sent_at is not None and anna.confirmation_error is None


def test_a_deferred_mail_is_handed_to_send_confirmation_and_sent_once(
    relay: tuple[Runtime, ScriptServer],
) -> None:
    rt, server = relay
    # When the relay greylists a new reader's mail sent by the signup actor
    actors.handle_signup(signup(2, GREY))  # does not raise: dramatiq would retry the event

    # Then nothing was accepted, the reply is kept, and send_confirmation waits in the delay
    # queue (dramatiq's first backoff) for this reader
    assert server.handler.accepted[GREY] == 0
    grey = subscriber(rt, GREY)
    assert grey.confirmation_error == "451 4.7.1 Greylisted, try again"
    assert grey.confirmation_sent_at is None
    [later] = queued("transactional.DQ")
    assert (later.actor_name, later.args) == ("send_confirmation", (grey.id,))
    assert later.options["eta"] - later.message_timestamp == actors.DEFERRED_MS

    # When the event is delivered again: a duplicate, nothing more queued or sent
    actors.handle_signup(signup(2, GREY))
    assert len(queued("transactional.DQ")) == 1 and server.handler.accepted[GREY] == 0

    # When send_confirmation runs: one mail, and the refusal is cleared
    actors.send_confirmation(*later.args)
    assert server.handler.accepted[GREY] == 1
    grey = subscriber(rt, GREY)
    assert grey.confirmation_sent_at is not None and grey.confirmation_error is None


def test_a_mail_that_fails_before_the_relay_is_handed_to_send_confirmation(
    relay: tuple[Runtime, ScriptServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, server = relay

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("template broken")

    # When composing the mail fails in the signup actor (a template error, say)
    with monkeypatch.context() as patched:
        patched.setattr(actors, "send_transactional", broken)
        actors.handle_signup(signup(3, "bora@example.org"))  # does not raise

    # Then the signup is kept and send_confirmation will try again; once it runs, one mail
    [later] = queued("transactional.DQ")
    assert later.actor_name == "send_confirmation"
    assert server.handler.accepted["bora@example.org"] == 0
    actors.send_confirmation(*later.args)
    assert dict(server.handler.accepted) == {"bora@example.org": 1}


def test_a_signup_without_a_free_slot_waits_in_the_delay_queue(
    relay: tuple[Runtime, ScriptServer],
) -> None:
    rt, server = relay
    paced = Runtime(dataclasses.replace(rt.settings, confirmations_per_domain_per_minute=1))
    actors.use_runtime(paced)
    try:
        # When two new readers of one domain sign up with one slot a minute
        actors.handle_signup(signup(4, "first@example.net"))
        actors.handle_signup(signup(5, "second@example.net"))
    finally:
        actors.use_runtime(rt)
        paced.close()

    # Then the first is mailed at once, the second waits for the slot (at most a minute)
    assert dict(server.handler.accepted) == {"first@example.net": 1}
    [later] = queued("transactional.DQ")
    assert later.args == (subscriber(rt, "second@example.net").id,)
    assert 0 < later.options["eta"] - later.message_timestamp <= actors.MAX_DOMAIN_WAIT_MS
