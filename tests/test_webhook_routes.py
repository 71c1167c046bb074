"""The webhook routes end to end: recorded provider payloads, signed as the providers sign them,
POSTed to the web app, verified on the raw bytes, recorded once, applied to the subscribers."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.test_feedback import World, load_world
from tests.test_webhooks import (
    CREDENTIALS,
    MG_KEY,
    PAYLOADS,
    SG_BODY,
    TOPIC,
    SnsSigner,
    _basic,
    _mg_signed,
    _sg_public,
    _sg_sign,
)
from worker.feedback.policy import Effect
from worker.models import FeedbackEvent, Subscriber, Suppression
from worker.runtime import Runtime
from worker.settings import Settings
from worker.web.app import create_app
from worker.web.webhooks import WebhookAdapters, webhook_router


@dataclasses.dataclass
class FixedClock:
    at: datetime

    def now(self) -> datetime:
        return self.at


def runtime_at(settings: Settings, at: datetime) -> Runtime:
    """A runtime on ``settings`` whose clock stands at ``at``."""
    return Runtime(settings, clock=FixedClock(at))


def statuses(rt: Runtime, world: World) -> dict[str, str]:
    with rt.session() as session:
        rows = session.execute(select(Subscriber.id, Subscriber.status)).all()
    by_id = {sid: fid for fid, sid in world.subscriber.items()}
    return {by_id[sid]: status for sid, status in rows}


def events(rt: Runtime) -> list[tuple[str, str | None, str | None, str]]:
    with rt.session() as session:
        rows = session.scalars(select(FeedbackEvent).order_by(FeedbackEvent.id))
        return [(e.kind, e.recipient, e.effect, e.source) for e in rows]


def suppression_reasons(rt: Runtime) -> list[str]:
    with rt.session() as session:
        return list(session.scalars(select(Suppression.reason).order_by(Suppression.id)))


# --- Postmark (Basic credentials), through the real create_app --------------------------------


@pytest.fixture
def postmark_rt(settings: Settings) -> Iterator[tuple[Runtime, World]]:
    rt = runtime_at(
        dataclasses.replace(settings, postmark_webhook_credentials=CREDENTIALS), datetime.now(UTC)
    )
    with rt.session() as session:
        world = load_world(session)
    yield rt, world


def test_postmark_events_are_applied_once(postmark_rt: tuple[Runtime, World]) -> None:
    rt, world = postmark_rt
    client = TestClient(create_app(rt))
    for name in (
        "postmark_bounce_hard.json",
        "postmark_bounce_soft.json",
        "postmark_bounce_blocked.json",
        "postmark_spam_complaint.json",
        "postmark_subscription_change.json",
    ):
        body = (PAYLOADS / name).read_bytes()
        answer = client.post("/webhooks/postmark", content=body, headers=_basic(CREDENTIALS))
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"recorded": 1, "duplicates": 0}
    retry = client.post(
        "/webhooks/postmark",
        content=(PAYLOADS / "postmark_bounce_hard.json").read_bytes(),
        headers=_basic(CREDENTIALS),
    )
    assert retry.json() == {"recorded": 0, "duplicates": 1}

    assert [(kind, recipient, effect) for kind, recipient, effect, _ in events(rt)] == [
        ("hard_bounce", "nobody.here@example.net", Effect.SUPPRESSED),
        ("soft_bounce", "full.box@example.com", Effect.SOFT_COUNTED),
        ("policy_block", "blocked.rcpt@example.com", Effect.POLICY_ALERTED),
        ("complaint", "complainer@example.com", Effect.UNSUBSCRIBED_AND_SUPPRESSED),
        ("unsubscribe", "office.worker@example.com", Effect.UNSUBSCRIBED),
    ]
    status = statuses(rt, world)
    assert (status["s41809"], status["s41808"], status["s41812"]) == (
        "suppressed",
        "confirmed",
        "confirmed",
    )
    assert (status["s41818"], status["s41823"]) == ("suppressed", "unsubscribed")
    assert suppression_reasons(rt) == ["hard_bounce", "complaint"]


def test_postmark_without_or_with_wrong_credentials(postmark_rt: tuple[Runtime, World]) -> None:
    rt, world = postmark_rt
    client = TestClient(create_app(rt))
    body = (PAYLOADS / "postmark_bounce_hard.json").read_bytes()

    missing = client.post("/webhooks/postmark", content=body)
    wrong = client.post("/webhooks/postmark", content=body, headers=_basic("postmark-hook:guess"))

    assert (missing.status_code, missing.headers["www-authenticate"]) == (
        401,
        'Basic realm="webhooks"',
    )
    assert (wrong.status_code, wrong.json()) == (
        403,
        {"error": "Postmark webhook credentials do not match"},
    )
    assert events(rt) == [] and statuses(rt, world)["s41809"] == "confirmed"


def test_unconfigured_provider_is_refused(settings: Settings) -> None:
    rt = runtime_at(settings, datetime.now(UTC))
    client = TestClient(create_app(rt))
    answer = client.post("/webhooks/mailgun", content=b"{}")
    assert (answer.status_code, answer.json()) == (
        403,
        {"error": "Mailgun webhook is not configured"},
    )


# --- Mailgun (HMAC) ---------------------------------------------------------------------------

MG_AT = datetime(2026, 11, 27, 6, 0, 20, tzinfo=UTC)


def test_mailgun_events(settings: Settings) -> None:
    rt = runtime_at(dataclasses.replace(settings, mailgun_signing_key=MG_KEY), MG_AT)
    with rt.session() as session:
        world = load_world(session)
    client = TestClient(create_app(rt))
    for name in (
        "mailgun_failed_permanent.json",
        "mailgun_failed_temporary.json",
        "mailgun_delivered.json",
    ):
        assert client.post("/webhooks/mailgun", content=_mg_signed(name)).status_code == 200
    forged = client.post(
        "/webhooks/mailgun", content=_mg_signed("mailgun_complained.json", key="key-x")
    )

    assert (forged.status_code, forged.json()) == (
        403,
        {"error": "Mailgun signature does not match"},
    )
    assert [(kind, effect) for kind, _, effect, _ in events(rt)] == [
        ("hard_bounce", Effect.SUPPRESSED),
        ("delayed", Effect.NONE),
    ]
    assert statuses(rt, world)["s41809"] == "suppressed"
    assert statuses(rt, world)["s41818"] == "confirmed"


# --- SendGrid (ECDSA) -------------------------------------------------------------------------

SG_AT = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


def test_sendgrid_batch(settings: Settings) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    rt = runtime_at(dataclasses.replace(settings, sendgrid_verification_key=_sg_public(key)), SG_AT)
    with rt.session() as session:
        world = load_world(session)
    client = TestClient(create_app(rt))
    headers = _sg_sign(key, SG_BODY, str(int(SG_AT.timestamp())))

    first = client.post("/webhooks/sendgrid", content=SG_BODY, headers=headers)
    again = client.post("/webhooks/sendgrid", content=SG_BODY, headers=headers)
    tampered = client.post(
        "/webhooks/sendgrid", content=SG_BODY.replace(b"bounce", b"bounce "), headers=headers
    )
    reparsed = client.post(  # the same JSON re-serialised: the signature covers the bytes
        "/webhooks/sendgrid", content=json.dumps(json.loads(SG_BODY)).encode(), headers=headers
    )

    assert first.status_code == 200 and first.json()["duplicates"] == 0
    assert again.json() == {"recorded": 0, "duplicates": first.json()["recorded"]}
    assert (tampered.status_code, reparsed.status_code) == (403, 403)
    effects = {recipient: effect for _, recipient, effect, _ in events(rt)}
    assert effects["nobody.here@example.net"] == Effect.SUPPRESSED
    assert effects["blocked.rcpt@example.com"] == Effect.POLICY_ALERTED
    assert effects["complainer@example.com"] == Effect.UNSUBSCRIBED_AND_SUPPRESSED
    assert effects["office.worker@example.com"] == Effect.UNSUBSCRIBED
    assert "leser@example.org" not in effects  # opens are not feedback
    status = statuses(rt, world)
    assert (status["s41809"], status["s41812"], status["s41818"], status["s41823"]) == (
        "suppressed",
        "confirmed",
        "suppressed",
        "unsubscribed",
    )


# --- Amazon SES via SNS -----------------------------------------------------------------------


@pytest.fixture
def sns() -> SnsSigner:
    return SnsSigner()


def ses_client(rt: Runtime, sns: SnsSigner, visited: list[str]) -> TestClient:
    app = FastAPI()
    adapters = WebhookAdapters(fetch_certificate=sns.fetch, confirm_subscription=visited.append)
    app.include_router(webhook_router(rt, adapters))
    return TestClient(app)


SES_AT = datetime(2026, 11, 27, 8, 13, tzinfo=UTC)


def _post_in_time(
    client: TestClient, rt: Runtime, body: bytes, headers: dict[str, str]
) -> httpx.Response:
    """POST ``body`` a few seconds after its SNS Timestamp, as SNS would deliver it."""
    stamp = json.loads(body)["Timestamp"].replace("Z", "+00:00")
    assert isinstance(rt.clock, FixedClock)  # made by runtime_at
    rt.clock.at = datetime.fromisoformat(stamp) + timedelta(seconds=3)
    response: httpx.Response = client.post("/webhooks/ses", content=body, headers=headers)
    return response


def _sns_body(sns: SnsSigner, name: str) -> bytes:
    document = json.loads((PAYLOADS / name).read_text())
    document.pop("Signature", None)
    document.pop("SignatureVersion", None)
    return sns.sign(document, "2")


def test_ses_notifications(settings: Settings, sns: SnsSigner) -> None:
    rt = runtime_at(dataclasses.replace(settings, ses_topic_arns=TOPIC), SES_AT)
    with rt.session() as session:
        world = load_world(session)
    visited: list[str] = []
    client = ses_client(rt, sns, visited)
    headers = {"x-amz-sns-message-type": "Notification"}

    for name in (
        "ses_bounce_blocklisted_ip.json",
        "ses_bounce_mailbox_full.json",
        "ses_delivery_delay.json",
    ):
        answer = _post_in_time(client, rt, _sns_body(sns, name), headers)
        assert answer.status_code == 200, answer.text
    assert statuses(rt, world)["s41822"] == "confirmed"  # a blocklisted IP is about us
    complaint = _post_in_time(client, rt, _sns_body(sns, "ses_complaint.json"), headers)
    assert complaint.json() == {"recorded": 1, "duplicates": 0}

    assert statuses(rt, world)["s41822"] == "suppressed"
    assert [(kind, effect) for kind, _, effect, _ in events(rt)] == [
        ("policy_block", Effect.POLICY_ALERTED),
        ("soft_bounce", Effect.SOFT_COUNTED),
        ("delayed", Effect.NONE),
        ("complaint", Effect.UNSUBSCRIBED_AND_SUPPRESSED),
    ]
    assert visited == []


def test_ses_rejections(settings: Settings, sns: SnsSigner) -> None:
    rt = runtime_at(
        dataclasses.replace(settings, ses_topic_arns=TOPIC),
        datetime(2026, 11, 27, 6, 0, 16, tzinfo=UTC),
    )
    client = ses_client(rt, sns, [])
    body = _sns_body(sns, "ses_bounce_permanent.json")
    other_topic = json.loads(body)
    other_topic["TopicArn"] = "arn:aws:sns:eu-west-1:999999999999:attacker"
    stale = runtime_at(
        dataclasses.replace(settings, ses_topic_arns=TOPIC),
        datetime(2026, 11, 28, 6, 0, tzinfo=UTC),
    )

    tampered = client.post("/webhooks/ses", content=body.replace(b"ses.target", b"ses.targeT"))
    untrusted = client.post("/webhooks/ses", content=sns.sign(other_topic, "2"))
    late = ses_client(stale, sns, []).post("/webhooks/ses", content=body)

    assert (tampered.status_code, tampered.json()) == (
        403,
        {"error": "SNS signature does not match"},
    )
    assert untrusted.status_code == 403 and "is not trusted" in untrusted.json()["error"]
    assert late.status_code == 403 and "stale" in late.json()["error"]
    assert events(rt) == []


def test_ses_subscription_confirmation_is_verified_then_visited(
    settings: Settings, sns: SnsSigner
) -> None:
    rt = runtime_at(
        dataclasses.replace(settings, ses_topic_arns=TOPIC),
        datetime(2026, 11, 26, 12, 0, 5, tzinfo=UTC),
    )
    visited: list[str] = []
    client = ses_client(rt, sns, visited)
    body = _sns_body(sns, "ses_subscription_confirmation.json")

    forged = client.post("/webhooks/ses", content=body.replace(b"Token", b"Tokem", 1))
    answer = client.post(
        "/webhooks/ses",
        content=body,
        headers={"x-amz-sns-message-type": "SubscriptionConfirmation"},
    )

    assert forged.status_code == 403
    assert (answer.status_code, answer.json()) == (200, {"subscribed": True})
    assert visited == [json.loads(body)["SubscribeURL"]]
