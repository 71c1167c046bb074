"""Provider webhooks: verification (signatures, credentials, freshness) and normalisation.

Payloads under tests/payloads/ follow the providers' documented examples. Signatures are made
here with keys generated for the test (SNS, SendGrid) or the shared secret (Mailgun, Postmark),
except SendGrid's own published test vector, which checks the verifier against a real signer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from worker.feedback.classification import FeedbackKind, Reason
from worker.feedback.webhooks import WebhookRejected, mailgun, postmark, sendgrid, ses

PAYLOADS = Path(__file__).parent / "payloads"
TOPIC = "arn:aws:sns:eu-west-1:123456789012:ses-feedback"
CERT_URL = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-9c6465fa7f48f5cacd23014631ec1136.pem"


def payload(name: str) -> Any:
    return json.loads((PAYLOADS / name).read_text())


# --- Amazon SES via SNS -------------------------------------------------------------------


class SnsSigner:
    """An SNS stand-in: a key, a self-signed certificate, and the documented canonical string."""

    FIELDS: ClassVar[dict[str, tuple[str, ...]]] = {
        "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
        "SubscriptionConfirmation": (
            "Message",
            "MessageId",
            "SubscribeURL",
            "Timestamp",
            "Token",
            "TopicArn",
            "Type",
        ),
    }

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(datetime(2026, 1, 1, tzinfo=UTC))
            .not_valid_after(datetime(2027, 1, 1, tzinfo=UTC))
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.certificate.public_bytes(serialization.Encoding.PEM)
        self.fetched: list[str] = []

    def fetch(self, url: str) -> bytes:
        self.fetched.append(url)
        return self.pem

    def sign(self, document: dict[str, Any], version: str = "1") -> bytes:
        """``document`` signed as SNS does (SNS developer guide), serialised as the POST body."""
        signed = dict(document, SignatureVersion=version)
        canonical = "".join(
            f"{name}\n{signed[name]}\n" for name in self.FIELDS[signed["Type"]] if name in signed
        )
        algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()  # SNS SignatureVersion 1
        signature = self.key.sign(canonical.encode(), padding.PKCS1v15(), algorithm)
        signed["Signature"] = base64.b64encode(signature).decode()
        return json.dumps(signed).encode()


@pytest.fixture(scope="module")
def signer() -> SnsSigner:
    return SnsSigner()


@pytest.fixture
def trust(signer: SnsSigner) -> ses.SnsTrust:
    signer.fetched.clear()
    return ses.SnsTrust(topic_arns={TOPIC}, fetch_certificate=signer.fetch)


SNS_HEADERS = {"x-amz-sns-message-type": "Notification", "x-amz-sns-topic-arn": TOPIC}


def _now_of(document: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(document["Timestamp"].replace("Z", "+00:00")) + timedelta(
        seconds=3
    )


@pytest.mark.parametrize("version", ["1", "2"])
def test_sns_signature_versions_1_and_2_verify(
    signer: SnsSigner, trust: ses.SnsTrust, version: str
) -> None:
    document = payload("ses_bounce_permanent.json")
    body = signer.sign(document, version)

    ses.verify(SNS_HEADERS, body, trust, now=_now_of(document))

    assert signer.fetched == [CERT_URL]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda d: d.update(Message=d["Message"].replace("5.1.1", "5.2.2")), "does not match"),
        (lambda d: d.update(TopicArn="arn:aws:sns:eu-west-1:999999999999:attacker"), "not trusted"),
        (lambda d: d.update(SignatureVersion="3"), "SignatureVersion"),
        (lambda d: d.update(Signature="not base64!"), "not base64"),
        (lambda d: d.pop("Signature"), "Signature missing"),
        (
            lambda d: d.update(
                SigningCertURL="https://sns.eu-west-1.amazonaws.com.evil.example/c.pem"
            ),
            "not an Amazon SNS URL",
        ),
        (
            lambda d: d.update(SigningCertURL="http://sns.eu-west-1.amazonaws.com/c.pem"),
            "not an Amazon SNS URL",
        ),
        (
            lambda d: d.update(SigningCertURL="https://sns.eu-west-1.amazonaws.com:8443/c.pem"),
            "not an Amazon SNS URL",
        ),
        (lambda d: d.update(Type="Surprise"), "unknown SNS message type"),
    ],
    ids=[
        "tampered",
        "foreign-topic",
        "version",
        "garbled-signature",
        "no-signature",
        "evil-host",
        "plain-http",
        "odd-port",
        "unknown-type",
    ],
)
def test_sns_rejections(
    signer: SnsSigner, trust: ses.SnsTrust, change: Callable[[dict[str, Any]], None], reason: str
) -> None:
    # Given a correctly signed notification, altered after signing
    document = payload("ses_bounce_permanent.json")
    signed = json.loads(signer.sign(document))
    change(signed)

    # Then it is refused with a reason that says what was wrong
    with pytest.raises(WebhookRejected, match=reason):
        ses.verify({}, json.dumps(signed).encode(), trust, now=_now_of(document))


def test_sns_certificate_of_an_untrusted_host_is_never_fetched(
    signer: SnsSigner, trust: ses.SnsTrust
) -> None:
    document = dict(
        payload("ses_bounce_permanent.json"), SigningCertURL="https://attacker.example/cert.pem"
    )
    with pytest.raises(WebhookRejected):
        ses.verify({}, signer.sign(document), trust, now=_now_of(document))
    assert signer.fetched == []


def test_sns_stale_message_is_rejected(signer: SnsSigner, trust: ses.SnsTrust) -> None:
    document = payload("ses_bounce_permanent.json")
    with pytest.raises(WebhookRejected, match="stale"):
        ses.verify({}, signer.sign(document), trust, now=_now_of(document) + timedelta(days=1))


def test_sns_message_type_header_must_match_the_body(
    signer: SnsSigner, trust: ses.SnsTrust
) -> None:
    document = payload("ses_bounce_permanent.json")
    headers = {"X-Amz-Sns-Message-Type": "SubscriptionConfirmation"}
    with pytest.raises(WebhookRejected, match="does not match the body"):
        ses.verify(headers, signer.sign(document), trust, now=_now_of(document))


def test_sns_certificate_signed_by_another_key_is_rejected(signer: SnsSigner) -> None:
    other = SnsSigner()
    trust = ses.SnsTrust(topic_arns={TOPIC}, fetch_certificate=other.fetch)
    document = payload("ses_bounce_permanent.json")
    with pytest.raises(WebhookRejected, match="does not match"):
        ses.verify({}, signer.sign(document), trust, now=_now_of(document))


def test_sns_unreachable_certificate_is_a_rejection(signer: SnsSigner) -> None:
    def unreachable(url: str) -> bytes:
        raise OSError("connection refused")

    trust = ses.SnsTrust(topic_arns={TOPIC}, fetch_certificate=unreachable)
    document = payload("ses_bounce_permanent.json")
    with pytest.raises(WebhookRejected, match="certificate unavailable: OSError"):
        ses.verify({}, signer.sign(document), trust, now=_now_of(document))


def test_production_fetch_refuses_other_hosts_before_any_network() -> None:
    with pytest.raises(WebhookRejected, match="not an Amazon SNS URL"):
        ses.fetch_signing_certificate("https://attacker.example/SimpleNotificationService-1.pem")


def test_subscription_confirmation_gives_the_url_to_visit(
    signer: SnsSigner, trust: ses.SnsTrust
) -> None:
    # Given the first message of a new subscription
    document = payload("ses_subscription_confirmation.json")
    body = signer.sign(document)
    headers = {"x-amz-sns-message-type": "SubscriptionConfirmation"}

    # When it is verified and read
    ses.verify(headers, body, trust, now=_now_of(document))
    url = ses.subscription_url(body)

    # Then the SubscribeURL is returned, it holds no feedback, and visiting it is one GET
    assert url == document["SubscribeURL"]
    assert ses.parse(body) == []
    visited: list[str] = []

    def get(visit: str) -> bytes:
        visited.append(visit)
        return b"<ConfirmSubscriptionResponse/>"

    assert url is not None
    ses.confirm_subscription(url, get=get)
    assert visited == [document["SubscribeURL"]]


def test_subscription_url_off_amazon_is_refused() -> None:
    document = dict(
        payload("ses_subscription_confirmation.json"), SubscribeURL="https://169.254.169.254/latest"
    )
    with pytest.raises(WebhookRejected, match="SubscribeURL"):
        ses.subscription_url(json.dumps(document).encode())


def test_ses_notification_is_not_a_subscription() -> None:
    assert ses.subscription_url(json.dumps(payload("ses_bounce_permanent.json")).encode()) is None


def _ses(name: str) -> list[tuple[str, Any]]:
    return ses.parse(json.dumps(payload(name)).encode())


def test_ses_permanent_bounce() -> None:
    [(event_id, report)] = _ses("ses_bounce_permanent.json")
    assert event_id == "0102019d6a1b3f1e-9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d-000000"
    assert (report.kind, report.classification.reason) == (
        FeedbackKind.HARD_BOUNCE,
        Reason.USER_UNKNOWN,
    )
    assert (report.recipient, report.status) == ("ses.target@example.com", "5.1.1")
    assert report.original_message_id == "<d4711.2026w48-en@news.example.org>"
    assert report.verp_local == "4711-3c1f9e0a2b"
    assert (report.delivery_ref, report.subscriber_ref) == ("4711", "s41822")
    assert report.source_event_id == f"webhook:ses:{event_id}:ses.target@example.com"
    assert report.occurred_at == datetime(2026, 11, 27, 6, 0, 13, 208000, tzinfo=UTC)


def test_ses_permanent_general_bounce_for_a_blocklisted_ip_is_a_policy_block() -> None:
    # SES calls it Permanent/General; the 5.7.1 and the Spamhaus text say it is about us.
    [(_, report)] = _ses("ses_bounce_blocklisted_ip.json")
    assert (report.kind, report.classification.reason) == (
        FeedbackKind.POLICY_BLOCK,
        Reason.SENDER_BLOCKED,
    )
    assert not report.classification.counts_toward_invalid_address


def test_ses_mailbox_full_is_soft() -> None:
    [(_, report)] = _ses("ses_bounce_mailbox_full.json")
    assert (report.kind, report.classification.reason) == (
        FeedbackKind.SOFT_BOUNCE,
        Reason.MAILBOX_FULL,
    )


def test_ses_suppressed_without_dsn_falls_back_to_the_bounce_type() -> None:
    [(_, report)] = _ses("ses_bounce_suppressed_no_dsn.json")
    assert (report.kind, report.classification.reason) == (
        FeedbackKind.HARD_BOUNCE,
        Reason.SUPPRESSED_BY_PROVIDER,
    )
    assert report.verp_local == "4711-3c1f9e0a2b"  # from mail.source, headers were not included
    assert report.original_message_id is None


def test_ses_complaint() -> None:
    [(event_id, report)] = _ses("ses_complaint.json")
    assert event_id == "0102019d6a1c7d52-4e5f6a7b-8c9d-4e0f-1a2b-3c4d5e6f7081-000000"
    assert (report.kind, report.feedback_type) == (FeedbackKind.COMPLAINT, "abuse")
    assert report.occurred_at == datetime(2026, 11, 27, 8, 12, 44, tzinfo=UTC)


def test_ses_delivery_delay_is_not_a_bounce() -> None:
    [(_, report)] = _ses("ses_delivery_delay.json")
    assert report.kind == FeedbackKind.DELAYED
    assert report.status == "4.4.1"


def test_ses_delivery_event_is_no_feedback() -> None:
    document = payload("ses_bounce_permanent.json")
    document["Message"] = json.dumps({"eventType": "Delivery", "mail": {}, "delivery": {}})
    assert ses.parse(json.dumps(document).encode()) == []


# --- Postmark -----------------------------------------------------------------------------

CREDENTIALS = "postmark-hook:s3cret-Pa55"


def _basic(credentials: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}


def test_postmark_basic_credentials() -> None:
    body = (PAYLOADS / "postmark_bounce_hard.json").read_bytes()
    postmark.verify(_basic(CREDENTIALS), body, CREDENTIALS)
    with pytest.raises(WebhookRejected, match="do not match"):
        postmark.verify(_basic("postmark-hook:guess"), body, CREDENTIALS)
    with pytest.raises(WebhookRejected, match="without Basic"):
        postmark.verify({}, body, CREDENTIALS)
    with pytest.raises(WebhookRejected, match="not base64"):
        postmark.verify({"authorization": "Basic %%%"}, body, CREDENTIALS)


@pytest.mark.parametrize(
    ("name", "kind", "reason", "recipient"),
    [
        (
            "postmark_bounce_hard.json",
            FeedbackKind.HARD_BOUNCE,
            Reason.USER_UNKNOWN,
            "nobody.here@example.net",
        ),
        (
            "postmark_bounce_blocked.json",
            FeedbackKind.POLICY_BLOCK,
            Reason.SENDER_BLOCKED,
            "blocked.rcpt@example.com",
        ),
        (
            "postmark_bounce_soft.json",
            FeedbackKind.SOFT_BOUNCE,
            Reason.MAILBOX_FULL,
            "full.box@example.com",
        ),
        (
            "postmark_spam_complaint.json",
            FeedbackKind.COMPLAINT,
            Reason.ABUSE,
            "complainer@example.com",
        ),
        (
            "postmark_subscription_change.json",
            FeedbackKind.UNSUBSCRIBE,
            Reason.LIST_UNSUBSCRIBE,
            "office.worker@example.com",
        ),
    ],
)
def test_postmark_records(name: str, kind: FeedbackKind, reason: Reason, recipient: str) -> None:
    record = payload(name)
    [(event_id, report)] = postmark.parse((PAYLOADS / name).read_bytes())
    assert (report.kind, report.classification.reason, report.recipient) == (
        kind,
        reason,
        recipient,
    )
    assert report.delivery_ref == record["Metadata"]["delivery_id"]
    assert report.subscriber_ref == record["Metadata"]["subscriber_id"]
    assert report.source_event_id.startswith(f"webhook:postmark:{event_id}:")


def test_postmark_hard_bounce_keeps_the_smtp_details() -> None:
    [(event_id, report)] = postmark.parse((PAYLOADS / "postmark_bounce_hard.json").read_bytes())
    assert event_id == "Bounce:4323372036854775807"
    assert report.status == "5.1.1"
    assert report.diagnostic is not None and report.diagnostic.startswith(
        "550 5.1.1 The email account"
    )
    assert report.occurred_at == datetime(2026, 11, 27, 6, 0, 19, 907025, tzinfo=UTC)


def test_postmark_suppression_we_made_ourselves_is_ignored() -> None:
    record = dict(payload("postmark_subscription_change.json"), Origin="Customer")
    assert postmark.parse(json.dumps(record).encode()) == []


# --- SendGrid -----------------------------------------------------------------------------

# Twilio SendGrid's published verification vector (its SDKs' EventWebhook tests).
SG_VECTOR_KEY = (
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEDr2LjtURuePQzplybdC+u4CwrqDqBaWjcMMsTbhdbcw"
    "HBcepxo7yAQGhHPTnlvFYPAZFceEu/1FwCM/QmGUhA=="
)
SG_VECTOR_SIGNATURE = (
    "MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8xonZGi6BpSzoQsbVRamr2nl"
    "xFDWYNH2j/0="
)
SG_VECTOR_TIMESTAMP = "1588788367"
SG_VECTOR_PAYLOAD = b'{"category":"example_payload","event":"test_event","message_id":"message_id"}'


def _sg_headers(signature: str, timestamp: str) -> dict[str, str]:
    return {sendgrid.SIGNATURE_HEADER: signature, sendgrid.TIMESTAMP_HEADER: timestamp}


def test_sendgrid_published_vector_verifies() -> None:
    at = datetime.fromtimestamp(int(SG_VECTOR_TIMESTAMP), UTC)
    headers = _sg_headers(SG_VECTOR_SIGNATURE, SG_VECTOR_TIMESTAMP)
    sendgrid.verify(headers, SG_VECTOR_PAYLOAD, SG_VECTOR_KEY, now=at)
    with pytest.raises(WebhookRejected, match="does not match"):
        sendgrid.verify(
            headers, SG_VECTOR_PAYLOAD.replace(b"test_event", b"bounce"), SG_VECTOR_KEY, now=at
        )
    with pytest.raises(WebhookRejected, match="does not match"):
        sendgrid.verify(
            _sg_headers(SG_VECTOR_SIGNATURE, "1588788368"), SG_VECTOR_PAYLOAD, SG_VECTOR_KEY, now=at
        )


@pytest.fixture(scope="module")
def sg_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _sg_public(key: ec.EllipticCurvePrivateKey) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


def _sg_sign(key: ec.EllipticCurvePrivateKey, body: bytes, timestamp: str) -> dict[str, str]:
    signature = key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return _sg_headers(base64.b64encode(signature).decode(), timestamp)


SG_BODY = (PAYLOADS / "sendgrid_events.json").read_bytes()
SG_NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


def test_sendgrid_signed_events_verify_with_der_or_pem_key(
    sg_key: ec.EllipticCurvePrivateKey,
) -> None:
    headers = _sg_sign(sg_key, SG_BODY, str(int(SG_NOW.timestamp())))
    sendgrid.verify(headers, SG_BODY, _sg_public(sg_key), now=SG_NOW)
    pem = (
        sg_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    sendgrid.verify({k.lower(): v for k, v in headers.items()}, SG_BODY, pem, now=SG_NOW)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda h, b: (h, b.replace(b"bounce", b"delivered", 1)), "does not match"),
        (
            lambda h, b: ({sendgrid.TIMESTAMP_HEADER: h[sendgrid.TIMESTAMP_HEADER]}, b),
            "header missing",
        ),
        (lambda h, b: (dict(h, **{sendgrid.SIGNATURE_HEADER: "@@@"}), b), "not base64"),
    ],
    ids=["tampered-body", "no-signature", "garbled-signature"],
)
def test_sendgrid_rejections(
    sg_key: ec.EllipticCurvePrivateKey,
    mutate: Callable[[dict[str, str], bytes], tuple[dict[str, str], bytes]],
    reason: str,
) -> None:
    headers, body = mutate(_sg_sign(sg_key, SG_BODY, str(int(SG_NOW.timestamp()))), SG_BODY)
    with pytest.raises(WebhookRejected, match=reason):
        sendgrid.verify(headers, body, _sg_public(sg_key), now=SG_NOW)


def test_sendgrid_stale_signature_and_bad_key(sg_key: ec.EllipticCurvePrivateKey) -> None:
    old = str(int((SG_NOW - timedelta(hours=1)).timestamp()))
    with pytest.raises(WebhookRejected, match="stale"):
        sendgrid.verify(_sg_sign(sg_key, SG_BODY, old), SG_BODY, _sg_public(sg_key), now=SG_NOW)
    headers = _sg_sign(sg_key, SG_BODY, str(int(SG_NOW.timestamp())))
    with pytest.raises(WebhookRejected, match="unreadable"):
        sendgrid.verify(headers, SG_BODY, "not-a-key", now=SG_NOW)


def test_sendgrid_events_are_normalised() -> None:
    events = sendgrid.parse(SG_BODY)
    summary = [(r.recipient, r.kind, r.classification.reason) for _, r in events]
    assert summary == [
        ("nobody.here@example.net", FeedbackKind.HARD_BOUNCE, Reason.USER_UNKNOWN),
        ("blocked.rcpt@example.com", FeedbackKind.POLICY_BLOCK, Reason.SENDER_BLOCKED),
        ("slow.reader@example.com", FeedbackKind.DELAYED, Reason.GREYLISTED),
        ("gone@example.com", FeedbackKind.HARD_BOUNCE, Reason.SUPPRESSED_BY_PROVIDER),
        ("complainer@example.com", FeedbackKind.COMPLAINT, Reason.ABUSE),
        ("office.worker@example.com", FeedbackKind.UNSUBSCRIBE, Reason.LIST_UNSUBSCRIBE),
    ]
    event_id, bounce = events[0]
    assert event_id == "6g4ZI7SA-xmRDv57GoPIPw=="
    assert bounce.original_message_id == "<d4712.2026w48-en@news.example.org>"
    assert (bounce.delivery_ref, bounce.subscriber_ref, bounce.status) == (
        "4712",
        "s41809",
        "5.1.1",
    )
    assert bounce.occurred_at == datetime(2026, 11, 27, 6, 0, 13, tzinfo=UTC)
    assert len({r.source_event_id for _, r in events}) == len(events)


# --- Mailgun ------------------------------------------------------------------------------

MG_KEY = "key-7e55d003b2e2a5d5e0c7a1f5b1d2c3e4"


def _mg_signed(name: str, *, timestamp: str = "1795759213", key: str = MG_KEY) -> bytes:
    document = payload(name)
    token = document["signature"]["token"]
    digest = hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    document["signature"].update(timestamp=timestamp, signature=digest)
    return json.dumps(document).encode()


MG_NOW = datetime(2026, 11, 27, 6, 0, 20, tzinfo=UTC)


def test_mailgun_signature() -> None:
    mailgun.verify({}, _mg_signed("mailgun_failed_permanent.json"), MG_KEY, now=MG_NOW)
    with pytest.raises(WebhookRejected, match="does not match"):
        mailgun.verify(
            {}, _mg_signed("mailgun_failed_permanent.json", key="key-other"), MG_KEY, now=MG_NOW
        )
    with pytest.raises(WebhookRejected, match="stale"):
        mailgun.verify(
            {},
            _mg_signed("mailgun_failed_permanent.json", timestamp="1795750000"),
            MG_KEY,
            now=MG_NOW,
        )
    with pytest.raises(WebhookRejected, match="missing"):
        mailgun.verify({}, b'{"event-data": {}}', MG_KEY, now=MG_NOW)
    with pytest.raises(WebhookRejected, match="not JSON"):
        mailgun.verify({}, b"signature=abc&token=def", MG_KEY, now=MG_NOW)


def test_mailgun_permanent_failure() -> None:
    [(event_id, report)] = mailgun.parse(_mg_signed("mailgun_failed_permanent.json"))
    assert event_id == "G9Bn5sl1TC6nu79C8C0bwg"
    assert (report.kind, report.classification.reason) == (
        FeedbackKind.HARD_BOUNCE,
        Reason.USER_UNKNOWN,
    )
    assert (report.recipient, report.status) == ("nobody.here@example.net", "5.1.1")
    assert report.original_message_id == "<d4712.2026w48-en@news.example.org>"
    assert report.verp_local == "4712-9f8e7d6c5b"
    assert (report.delivery_ref, report.subscriber_ref) == ("4712", "s41809")


def test_mailgun_temporary_failure_is_delayed() -> None:
    [(_, report)] = mailgun.parse(_mg_signed("mailgun_failed_temporary.json"))
    assert (report.kind, report.classification.reason) == (
        FeedbackKind.DELAYED,
        Reason.MAILBOX_FULL,
    )


def test_mailgun_complaint_and_non_feedback_events() -> None:
    [(_, report)] = mailgun.parse(_mg_signed("mailgun_complained.json"))
    assert (report.kind, report.feedback_type, report.recipient) == (
        FeedbackKind.COMPLAINT,
        "abuse",
        "complainer@example.com",
    )
    assert mailgun.parse(_mg_signed("mailgun_delivered.json")) == []


def test_mailgun_suppressed_address() -> None:
    document = payload("mailgun_failed_permanent.json")
    document["event-data"].update(reason="suppress-bounce")
    document["event-data"]["delivery-status"] = {
        "code": 605,
        "message": "",
        "description": "Not delivering to previously bounced address",
    }
    [(_, report)] = mailgun.parse(json.dumps(document).encode())
    assert (report.kind, report.classification.reason) == (
        FeedbackKind.HARD_BOUNCE,
        Reason.SUPPRESSED_BY_PROVIDER,
    )


# --- all providers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parse", "body"),
    [
        (ses.parse, b"[]"),
        (ses.parse, b'{"Type": "Notification", "Message": "not json"}'),
        (postmark.parse, b'{"RecordType": "Open"}'),
        (sendgrid.parse, b'{"not": "a list"}'),
        (sendgrid.parse, b'[1, "two", {"event": "bounce"}]'),
        (mailgun.parse, b'{"event-data": []}'),
    ],
)
def test_parse_tolerates_odd_but_valid_json(
    parse: Callable[[bytes], list[Any]], body: bytes
) -> None:
    events = parse(body)
    assert all(report.source_event_id for _, report in events)


@pytest.mark.parametrize("parse", [ses.parse, postmark.parse, sendgrid.parse, mailgun.parse])
def test_parse_rejects_a_body_that_is_not_json(parse: Callable[[bytes], list[Any]]) -> None:
    with pytest.raises(WebhookRejected, match="not JSON"):
        parse(b"\xff<html>")
