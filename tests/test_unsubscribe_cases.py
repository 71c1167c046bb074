"""The handed link cases (tests/cases/unsubscribe): the .http files replayed against the web app,
our tokens in place of the fixtures' ones."""

from __future__ import annotations

import json
from dataclasses import dataclass

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from tests.samples import CASES
from tests.stub_worker import StubWorker
from worker import actors
from worker.devtools.outbox import OutboxServer
from worker.editions.localisation import translations
from worker.models import Consent, FeedbackEvent, Subscriber
from worker.runtime import Runtime
from worker.subscriptions.evidence import agent_family
from worker.subscriptions.signups import confirm, confirmation_token
from worker.subscriptions.tokens import unsubscribe_token
from worker.web.app import create_app

FOLDER = CASES / "unsubscribe"
CASE = {c["id"]: c for c in json.loads((FOLDER / "cases.json").read_text(encoding="utf-8"))}
FIXTURES = {
    s["id"]: s for s in json.loads((CASES / "fixtures.json").read_text("utf-8"))["subscribers"]
}
# The cases' states -> our subscriber statuses.
STATES = {
    "pending_confirmation": "pending",
    "subscribed": "confirmed",
    "unsubscribed": "unsubscribed",
}


@dataclass
class HttpRequest:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


def read_http(name: str) -> list[HttpRequest]:
    """The requests of an .http file: CRLF lines, requests separated by a line ``###``."""
    raw = (FOLDER / name).read_bytes().decode("utf-8")
    requests = []
    for chunk in raw.replace("\r\n", "\n").split("\n###\n"):
        head, _, body = chunk.strip("\n").partition("\n\n")
        request_line, *header_lines = head.split("\n")
        method, target, _version = request_line.split(" ")
        headers = dict(line.split(": ", 1) for line in header_lines)
        requests.append(HttpRequest(method, target, headers, body.encode()))
    return requests


def send(
    client: TestClient, request: HttpRequest, fixture_token: str, token: str
) -> httpx.Response:
    headers = {
        k: v
        for k, v in request.headers.items()
        if k.lower() not in ("host", "content-length", "connection")
    }
    response: httpx.Response = client.request(
        request.method,
        request.target.replace(fixture_token, token),
        headers=headers,
        content=request.body or None,
        follow_redirects=False,
    )
    return response


def make_subscriber(rt: Runtime, fixture_id: str, state: str) -> int:
    fixture = FIXTURES[fixture_id]
    actors.handle_signup(
        {
            "version": 1,
            "event_id": f"fixture-{fixture_id}",
            "email": fixture["email"],
            "language": fixture["language"],
            "source": "website form POSTed by the site",
        }
    )
    with rt.session() as session:
        subscriber = session.scalars(select(Subscriber)).one()
        if STATES[state] == "confirmed":
            token = confirmation_token(rt.tokens, subscriber)
            confirm(
                session,
                rt.tokens,
                token,
                max_age_seconds=3600,
                now=rt.clock.now(),
                ip=None,
                user_agent=None,
            )
        assert subscriber.status == STATES[state]
        return subscriber.id


def snapshot(rt: Runtime, sid: int) -> tuple[str, int]:
    with rt.session() as session:
        subscriber = session.get(Subscriber, sid)
        assert subscriber is not None
        events = session.scalar(
            select(func.count())
            .select_from(FeedbackEvent)
            .where(FeedbackEvent.kind == "unsubscribe")
        )
        return subscriber.status, events or 0


def test_u06_prefetched_confirmation_link_does_not_confirm(rt: Runtime) -> None:
    case = CASE["u06"]
    fixture = FIXTURES[case["precondition"]["subscriber_id"]]
    sid = make_subscriber(rt, fixture["id"], case["precondition"]["state"])
    with rt.session() as session:
        subscriber = session.get(Subscriber, sid)
        assert subscriber is not None
        token = confirmation_token(rt.tokens, subscriber)
    scanner, human = read_http(case["file"])
    client = TestClient(create_app(rt))

    # Request 1: BingPreview fetches the link
    first = send(client, scanner, fixture["token"], token)
    expected = case["expected"]["request_1"]
    assert first.status_code == expected["status"]
    assert f'<form method="{expected["response_contains_form_with_method"]}"' in first.text
    assert (
        translations(fixture["language"]).gettext("Yes, subscribe me") in first.text
    )  # Belarusian
    assert snapshot(rt, sid)[0] == STATES[expected["subscriber_state_after"]]

    # Request 2: the human submits the form
    second = send(client, human, fixture["token"], token)
    expected = case["expected"]["request_2"]
    assert 200 <= second.status_code < 300
    assert snapshot(rt, sid)[0] == STATES[expected["subscriber_state_after"]]
    with rt.session() as session:
        consent = session.scalars(select(Consent).where(Consent.subscriber_id == sid)).one()
        assert consent.confirmed_at is not None
        assert consent.method == expected["consent_record"]["method"]
        # the family only, never the raw header (subscriptions/evidence.py)
        assert consent.confirm_user_agent == agent_family(human.headers["User-Agent"])
        assert consent.confirm_user_agent not in (None, "Other", human.headers["User-Agent"])
        assert consent.source == case["precondition"]["signup_source"]


def test_u01_link_scanner_get_of_the_unsubscribe_link_changes_nothing(rt: Runtime) -> None:
    case = CASE["u01"]
    fixture = FIXTURES[case["precondition"]["subscriber_id"]]
    sid = make_subscriber(rt, fixture["id"], case["precondition"]["state"])
    token = unsubscribe_token(rt.tokens, sid)
    [scanner] = read_http(case["file"])
    client = TestClient(create_app(rt))

    response = send(client, scanner, fixture["token"], token)

    expected = case["expected"]
    assert response.status_code == expected["status"]
    assert f'<form method="{expected["response_contains_form_with_method"]}"' in response.text
    assert snapshot(rt, sid) == (
        STATES[expected["subscriber_state_after"]],
        expected["unsubscribe_events_recorded"],
    )
    assert expected["token_still_valid"] is True
    assert client.get(f"/u/{token}").status_code == 200  # the real reader's click still works


def test_u03_one_click_post_unsubscribes_at_once_and_allows_transactional_mail(
    rt: Runtime, smtp: OutboxServer, stub_worker: StubWorker
) -> None:
    case = CASE["u03"]
    fixture = FIXTURES[case["precondition"]["subscriber_id"]]
    sid = make_subscriber(rt, fixture["id"], case["precondition"]["state"])
    token = unsubscribe_token(rt.tokens, sid)
    [one_click] = read_http(case["file"])
    client = TestClient(create_app(rt))

    response = send(client, one_click, fixture["token"], token)

    expected = case["expected"]
    assert 200 <= response.status_code < 300 and "location" not in response.headers
    assert "set-cookie" not in response.headers
    assert snapshot(rt, sid) == (
        STATES[expected["subscriber_state_after"]],
        expected["unsubscribe_events_recorded"],
    )
    # Transactional mail still allowed: signing up again sends a new confirmation mail
    stub_worker.join()  # the first signup's confirmation mail, if it was still queued
    smtp.handler.received.clear()
    actors.handle_signup.send(
        {
            "version": 1,
            "event_id": "again-1",
            "email": fixture["email"],
            "language": fixture["language"],
        }
    )
    stub_worker.join()
    assert [r.recipients for r in smtp.handler.received] == [[fixture["email"]]]
    assert snapshot(rt, sid)[0] == "pending"


@pytest.mark.parametrize("case_id", ["u01", "u03", "u06"])
def test_http_files_parse(case_id: str) -> None:
    requests = read_http(CASE[case_id]["file"])
    assert all(r.method in ("GET", "POST") and r.target.startswith("/") for r in requests)
