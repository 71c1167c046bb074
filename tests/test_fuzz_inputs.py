"""Hostile input, generated: edition folders, structured inbound mail (DSN, ARF) and webhook bodies.

The properties: nothing raises that the entry point does not document, every refusal carries a
reason (and, for editions, a file and a location), and each input costs bounded time. The inbound
parser has a last-resort ``except Exception`` (worker.feedback.mail.parse_inbound): the DSN and ARF
properties also require that it is never reached, so a bug in a reader cannot hide behind it.
Random bytes and mangled handed cases are tests/test_inbound_mail.py's; the signup events are
tests/test_signups.py's.
"""

from __future__ import annotations

import copy
import json
import logging
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.samples import SAMPLE_EDITION
from worker.editions.files import check_edition
from worker.feedback.mail import parse_inbound
from worker.feedback.report import FeedbackReport
from worker.feedback.webhooks import WebhookRejected, mailgun, postmark, sendgrid, ses

FILES = ("newsletter.yaml", "en.yaml", "be.yaml", "ru.yaml")
SAMPLE = {name: yaml.safe_load((SAMPLE_EDITION / name).read_text()) for name in FILES}
# CPU seconds of this thread per inbound message (not wall-clock: another process's load must not
# count); a DSN is read in about a millisecond, a runaway pattern would take far longer
PARSE_SECONDS = 2.0

# --- edition folders ----------------------------------------------------------------------------

HOSTILE_TEXT = st.sampled_from(
    [
        "line one\r\nBcc: victim@example.net",
        "line\nX-Injected: 1",
        "<script>alert(1)</script>",
        "javascript:alert(1)",
        "=?utf-8?b?PHNjcmlwdD4=?=",
        "\x00\x01\x1b[31m",
        "x" * 5_000,
        "",
        "   ",
        "\u202eevil\u202c",
    ]
)
VALUES = st.one_of(
    HOSTILE_TEXT,
    st.text(max_size=40),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True),
    st.booleans(),
    st.none(),
    st.dates(),
    st.lists(st.text(max_size=8), max_size=3),
    st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=3),
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path inside a YAML document (the document itself is ``()``)."""
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, (*prefix, index))
    return found


def _mutate(document: Any, path: tuple[Any, ...], action: str, new: Any) -> Any:
    if not path:
        return new
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    if action == "delete":
        del parent[last]
    elif action == "add" and isinstance(parent, dict):
        parent[f"unknown_{len(parent)}"] = new
    else:
        parent[last] = new
    return document


@st.composite
def edition_folders(draw: st.DrawFn) -> dict[str, bytes | None]:
    """The sample edition with 1–4 mutations: a value replaced, a key deleted or added, a file
    replaced by random text or bytes, or removed."""
    documents = copy.deepcopy(SAMPLE)
    raw: dict[str, bytes | None] = {}
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        name = draw(st.sampled_from(FILES))
        kind = draw(
            st.sampled_from(["value", "value", "value", "delete", "add", "text", "bytes", "gone"])
        )
        if kind == "text":
            raw[name] = draw(st.text(max_size=300)).encode("utf-8", "surrogatepass")
        elif kind == "bytes":
            raw[name] = draw(st.binary(max_size=300))
        elif kind == "gone":
            raw[name] = None
        elif name not in raw:
            path = draw(st.sampled_from(_paths(documents[name])))
            action = {"value": "set", "delete": "delete" if path else "set", "add": "add"}[kind]
            documents[name] = _mutate(documents[name], path, action, draw(VALUES))
    for name in FILES:
        if name not in raw:
            raw[name] = yaml.safe_dump(documents[name], allow_unicode=True).encode(
                "utf-8", "surrogatepass"
            )
    return raw


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(folder=edition_folders())
def test_generated_edition_folders_never_raise_and_every_problem_is_located(
    folder: dict[str, bytes | None],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, data in folder.items():
            if data is not None:
                (root / name).write_bytes(data)
        started = time.thread_time()  # CPU of this thread: no other process's load counts
        problems = check_edition(root)
        assert time.thread_time() - started < 5.0
    for problem in problems:
        assert problem.file in FILES, problem  # every problem names the file
        assert problem.reason.strip(), problem  # and says why
        # and where: a field path or a line, except for a problem of the whole file (missing,
        # empty, not UTF-8, a character YAML refuses before it counts lines)
        if not problem.location.strip() and problem.line is None:
            assert (
                problem.reason.startswith(("file is", "YAML", "not UTF-8", "not valid UTF-8"))
                or "file" in problem.reason
            ), problem


@pytest.mark.parametrize("field", ["subject", "preheader", "edition", "period"])
def test_required_edition_field_with_no_value_is_a_problem_not_a_crash(
    tmp_path: Path, field: str
) -> None:
    """``subject:`` with nothing after it is YAML null: it used to trip an ``assert`` in
    worker/editions/files.py (fixed there: a null required field counts as missing)."""
    for name in FILES:
        (tmp_path / name).write_text((SAMPLE_EDITION / name).read_text())
    document = dict(SAMPLE["en.yaml"], **{field: None})
    (tmp_path / "en.yaml").write_text(yaml.safe_dump(document, allow_unicode=True))
    problems = check_edition(tmp_path)
    assert [(p.file, p.location) for p in problems] == [("en.yaml", field)]
    assert "missing" in problems[0].reason


@pytest.mark.parametrize("field", ["name", "about", "site", "default_language", "from"])
def test_required_profile_field_with_no_value_is_a_problem_not_a_crash(
    tmp_path: Path, field: str
) -> None:
    for name in FILES:
        (tmp_path / name).write_text((SAMPLE_EDITION / name).read_text())
    document = dict(SAMPLE["newsletter.yaml"], **{field: None})
    (tmp_path / "newsletter.yaml").write_text(yaml.safe_dump(document, allow_unicode=True))
    problems = check_edition(tmp_path)
    assert ("newsletter.yaml", field) in [(p.file, p.location) for p in problems]


def test_edition_folder_made_of_only_hostile_files_is_refused_with_reasons(tmp_path: Path) -> None:
    (tmp_path / "newsletter.yaml").write_bytes(b"\xff\xfe\x00garbage: [")
    (tmp_path / "en.yaml").write_text("!!python/object/apply:os.system ['echo pwned']\n")
    (tmp_path / "ru.yaml").write_text("a: &a [*a, *a]\n" * 3)
    problems = check_edition(tmp_path)
    assert problems
    assert {p.file for p in problems} >= {"newsletter.yaml"}
    assert all(p.reason for p in problems)


# --- inbound mail: structured DSNs and ARF reports --------------------------------------------

HEADER_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n"), max_size=80
)
STATUS = st.one_of(
    st.from_regex(r"\A[245]\.[0-9]{1,3}\.[0-9]{1,3}\Z"),
    st.sampled_from(["5.1.1", "4.2.2", "5.7.1", "2.0.0", "9.9.9", "5.1", "", "x.y.z", "5.1.1 (x)"]),
    HEADER_TEXT,
)
ACTION = st.sampled_from(
    ["failed", "delayed", "delivered", "relayed", "expanded", "FAILED", "", "??"]
)
ADDRESS = st.one_of(
    st.emails(),
    st.sampled_from(
        [
            "",
            "<>",
            "rfc822;",
            "x@",
            "@y",
            "a@b@c",
            "\u0430\u0434\u0440\u0435\u0441@\u043f\u0440\u0438\u043c\u0435\u0440.\u0440\u0444",
        ]
    ),
    HEADER_TEXT,
)
CHARSET = st.sampled_from(
    ["utf-8", "koi8-r", "windows-1251", "iso-8859-1", "no-such-charset", "", "utf-7"]
)


def _encode(text: str, charset: str) -> bytes:
    try:
        return text.encode(charset or "utf-8")
    except (LookupError, UnicodeError):
        return text.encode("utf-8", "surrogatepass")


@st.composite
def dsns(draw: st.DrawFn) -> bytes:
    """An RFC 3464 delivery status notification with generated, often wrong, field values."""
    boundary = draw(st.sampled_from(["b1", "==x==", "very" * 30, ""]))
    charset = draw(CHARSET)
    blocks = []
    for _ in range(draw(st.integers(min_value=0, max_value=6))):
        fields = [
            b"Final-Recipient: "
            + draw(st.sampled_from([b"rfc822; ", b"", b"utf-8; ", b"x400; "]))
            + _encode(draw(ADDRESS), "utf-8"),
            b"Action: " + draw(ACTION).encode(),
            b"Status: " + _encode(draw(STATUS), "utf-8"),
        ]
        if draw(st.booleans()):
            fields.append(
                b"Diagnostic-Code: smtp; " + _encode(draw(st.text(max_size=200)), charset)
            )
        if draw(st.booleans()):
            fields.append(b"Remote-MTA: dns; " + _encode(draw(HEADER_TEXT), "utf-8"))
        blocks.append(b"\n".join(draw(st.permutations(fields))))
    per_message = b"Reporting-MTA: dns; mx.example.net\nArrival-Date: " + _encode(
        draw(HEADER_TEXT), "utf-8"
    )
    status_part = b"\n\n".join([per_message, *blocks])
    original = (
        b"Message-ID: "
        + _encode(
            draw(st.sampled_from(["<d12.2024-W28@news.example.org>", "<>", ""]) | HEADER_TEXT),
            "utf-8",
        )
        + b"\nFrom: bounces+"
        + _encode(draw(HEADER_TEXT), "utf-8")
        + b"@news.example.org\nSubject: x\n\nbody\n"
    )
    parts = [
        b"Content-Type: text/plain; charset="
        + charset.encode()
        + b"\n\n"
        + _encode(draw(st.text(max_size=300)), charset),
        b"Content-Type: message/delivery-status\n\n" + status_part,
        b"Content-Type: "
        + draw(st.sampled_from([b"message/rfc822", b"text/rfc822-headers"]))
        + b"\n\n"
        + original,
    ]
    parts = parts[: draw(st.integers(min_value=1, max_value=3))]
    b = boundary.encode()
    body = b"".join(b"--" + b + b"\n" + part + b"\n" for part in parts)
    if draw(st.booleans()):
        body += b"--" + b + b"--\n"
    head = (
        b"From: MAILER-DAEMON@mx.example.net\nTo: bounces+d12-abc@news.example.org\n"
        b"Subject: " + _encode(draw(HEADER_TEXT), "utf-8") + b"\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="' + b + b'"\n\n'
    )
    message = head + body
    return message.replace(b"\n", b"\r\n") if draw(st.booleans()) else message


@st.composite
def arf_reports(draw: st.DrawFn) -> bytes:
    """An RFC 5965 abuse report with generated fields."""
    feedback = draw(
        st.sampled_from(
            ["abuse", "fraud", "not-spam", "other", "virus", "auth-failure", "", "ABUSE"]
        )
        | HEADER_TEXT
    )
    fields = [
        b"Feedback-Type: " + _encode(feedback, "utf-8"),
        b"User-Agent: " + _encode(draw(HEADER_TEXT), "utf-8"),
        b"Version: " + draw(st.sampled_from([b"1", b"0.1", b"", b"999999999999999999999"])),
    ]
    if draw(st.booleans()):
        fields.append(b"Original-Rcpt-To: " + _encode(draw(ADDRESS), "utf-8"))
    if draw(st.booleans()):
        fields.append(b"Original-Mail-From: " + _encode(draw(ADDRESS), "utf-8"))
    if draw(st.booleans()):
        fields.append(b"Arrival-Date: " + _encode(draw(HEADER_TEXT), "utf-8"))
    report = b"\n".join(draw(st.permutations(fields)))
    original = (
        b"Message-ID: <d"
        + str(draw(st.integers(min_value=-5, max_value=10**30))).encode()
        + b".2024-W28@news.example.org>\nReturn-Path: <bounces+"
        + _encode(draw(HEADER_TEXT), "utf-8")
        + b"@news.example.org>\nTo: "
        + _encode(draw(ADDRESS), "utf-8")
        + b"\n\nbody\n"
    )
    return (
        b"From: fbl@isp.example\nSubject: FBL\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/report; report-type=feedback-report; boundary="r"\n\n'
        b"--r\nContent-Type: text/plain\n\nThis is an abuse report\n"
        b"--r\nContent-Type: message/feedback-report\n\n" + report + b"\n"
        b"--r\nContent-Type: message/rfc822\n\n" + original + b"--r--\n"
    )


def _read_within_bounds(raw: bytes, caplog: pytest.LogCaptureFixture) -> list[FeedbackReport]:
    caplog.clear()
    started = time.thread_time()
    with caplog.at_level(logging.WARNING, logger="worker.feedback.mail"):
        reports = parse_inbound(raw, envelope_recipient="bounces+d12-abc@news.example.org")
    assert time.thread_time() - started < PARSE_SECONDS
    fallbacks = [r for r in caplog.records if "could not be read" in r.getMessage()]
    assert not fallbacks, fallbacks[0].exc_text
    assert reports, "a non-empty message gives at least one report"
    for report in reports:
        assert report.source_event_id
        assert report.kind == report.classification.kind
    return reports


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(raw=dsns())
def test_generated_dsns_are_read_without_the_last_resort(
    raw: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    _read_within_bounds(raw, caplog)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(raw=arf_reports())
def test_generated_arf_reports_are_read_without_the_last_resort(
    raw: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    _read_within_bounds(raw, caplog)


# --- webhook bodies and headers ---------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=25,
)
SES_KEYS = [
    "Type",
    "Message",
    "MessageId",
    "Timestamp",
    "TopicArn",
    "Signature",
    "SignatureVersion",
    "SigningCertURL",
    "SubscribeURL",
    "Token",
    "Subject",
]
PROVIDER_KEYS = {
    "ses": SES_KEYS,
    "postmark": [
        "RecordType",
        "Type",
        "TypeCode",
        "Email",
        "Recipient",
        "BouncedAt",
        "ID",
        "MessageID",
        "Details",
        "Origin",
        "SuppressSending",
    ],
    "sendgrid": [
        "event",
        "email",
        "sg_event_id",
        "sg_message_id",
        "timestamp",
        "reason",
        "status",
        "type",
        "bounce_classification",
    ],
    "mailgun": [
        "event-data",
        "signature",
        "event",
        "severity",
        "recipient",
        "id",
        "delivery-status",
        "timestamp",
        "reason",
    ],
}


@st.composite
def webhook_bodies(draw: st.DrawFn, provider: str) -> bytes:
    """A body that looks like the provider's: its field names with generated values, nested
    where the provider nests, or plain garbage."""
    keys = PROVIDER_KEYS[provider]
    record = draw(st.dictionaries(st.sampled_from(keys), JSON, max_size=len(keys)))
    if provider == "ses" and draw(st.booleans()):
        inner = draw(
            st.dictionaries(
                st.sampled_from(
                    ["notificationType", "eventType", "bounce", "complaint", "mail", "delivery"]
                ),
                JSON,
                max_size=5,
            )
        )
        record["Message"] = (
            yaml.safe_dump(inner) if draw(st.booleans()) else __import__("json").dumps(inner)
        )
    if provider == "mailgun" and draw(st.booleans()):
        record["event-data"] = draw(st.dictionaries(st.sampled_from(keys), JSON, max_size=6))
    document: Any = [record] * draw(st.integers(1, 3)) if provider == "sendgrid" else record
    choice = draw(st.integers(0, 9))
    if choice == 0:
        return draw(st.binary(max_size=200))
    if choice == 1:
        return json.dumps(draw(JSON)).encode()
    return json.dumps(document).encode()


HEADERS = st.dictionaries(
    st.sampled_from(
        [
            "Authorization",
            "X-Twilio-Email-Event-Webhook-Signature",
            "X-Twilio-Email-Event-Webhook-Timestamp",
            "x-amz-sns-message-type",
            "x-amz-sns-topic-arn",
            "Content-Type",
            "X-Mailgun-Signature",
        ]
    ),
    st.text(max_size=60)
    | st.sampled_from(
        ["Basic dXNlcjpwYXNz", "Basic !!!", "Notification", "1588788367", "MEUCIQ=="]
    ),
    max_size=4,
)
SG_KEY = (
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEDr2LjtURuePQzplybdC+u4CwrqDqBaWjcMMsTbhdbcw"
    "HBcepxo7yAQGhHPTnlvFYPAZFceEu/1FwCM/QmGUhA=="
)


def _no_fetch(url: str) -> bytes:
    raise AssertionError(f"a forged request made us fetch {url}")


VERIFY: dict[str, Callable[[dict[str, str], bytes], None]] = {
    "ses": lambda h, b: ses.verify(
        h,
        b,
        ses.SnsTrust(
            topic_arns={"arn:aws:sns:eu-west-1:123456789012:bounces"}, fetch_certificate=_no_fetch
        ),
    ),
    "postmark": lambda h, b: postmark.verify(h, b, "user:pass"),
    "sendgrid": lambda h, b: sendgrid.verify(h, b, SG_KEY),
    "mailgun": lambda h, b: mailgun.verify(h, b, "key-0123456789abcdef"),
}
PARSE: dict[str, Callable[[bytes], list[Any]]] = {
    "ses": ses.parse,
    "postmark": postmark.parse,
    "sendgrid": sendgrid.parse,
    "mailgun": mailgun.parse,
}


@pytest.mark.parametrize(
    "provider",
    [
        "ses",
        "postmark",
        "sendgrid",
        "mailgun",
    ],
)
def test_generated_webhook_requests_are_rejected_or_parsed_never_crash(provider: str) -> None:
    """``verify`` raises only ``WebhookRejected`` (a forged request never passes, never makes a
    network call); ``parse`` gives events with ids, or ``WebhookRejected``."""
    outcomes = {"rejected": 0, "parsed": 0, "parse_rejected": 0}

    @settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(headers=HEADERS, body=webhook_bodies(provider))
    # Finds of the fuzz run (issue 13, finding 12), each once an answer 500: nesting deeper than
    # the interpreter's recursion limit, and a non-ASCII Mailgun signature (TypeError).
    @example(headers={}, body=b"[" * 100_000 + b"]" * 100_000)
    @example(headers={}, body=b'{"Message": "' + b"[" * 50_000 + b'", "Type": "Notification"}')
    @example(
        headers={},
        body='{"signature": {"timestamp": "1", "token": "t", "signature": "é"}}'.encode(),
    )
    def run(headers: dict[str, str], body: bytes) -> None:
        if provider == "postmark" and headers.get("Authorization") == "Basic dXNlcjpwYXNz":
            headers = {**headers, "Authorization": "Basic bm90OnRoaXM="}  # never the real secret
        with pytest.raises(WebhookRejected) as refused:
            VERIFY[provider](headers, body)
        assert refused.value.reason.strip()
        outcomes["rejected"] += 1
        try:
            events = PARSE[provider](body)
        except WebhookRejected as exc:
            assert exc.reason.strip()
            outcomes["parse_rejected"] += 1
            return
        outcomes["parsed"] += 1
        for source_id, report in events:
            assert source_id and report.source_event_id

    run()
    assert outcomes["rejected"] >= 200


def test_mailgun_timestamp_far_in_the_future_is_rejected_not_a_crash() -> None:
    body = b'{"signature": {"timestamp": "1e300", "token": "t", "signature": "00"}}'
    with pytest.raises(WebhookRejected):
        mailgun.verify({}, body, "key", now=datetime.now(UTC), tolerance=timedelta(minutes=5))


@pytest.mark.parametrize(
    ("call", "body"),
    [
        pytest.param(
            lambda b: ses.verify(
                {}, b, ses.SnsTrust(topic_arns={"t"}, fetch_certificate=_no_fetch)
            ),
            b'{"Type": []}',
            id="ses-verify",
        ),
        pytest.param(postmark.parse, b'{"RecordType": []}', id="postmark-parse"),
        pytest.param(sendgrid.parse, b'[{"event": []}]', id="sendgrid-parse"),
        pytest.param(mailgun.parse, b'{"event-data": {"event": []}}', id="mailgun-parse"),
    ],
)
def test_a_list_where_a_string_belongs_is_rejected_or_ignored(
    call: Callable[[bytes], Any], body: bytes
) -> None:
    """The minimal bodies the property above found (a forged SNS request with ``"Type": []``
    reaches ``verify`` before any signature check)."""
    try:
        assert call(body) in (None, [])
    except WebhookRejected as exc:
        assert exc.reason
