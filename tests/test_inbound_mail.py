"""Inbound mail read into feedback reports: every handed case, recorded samples, hostile input."""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.feedback.classification import FeedbackKind, Reason
from worker.feedback.mail import parse_inbound
from worker.feedback.report import FeedbackReport

TESTS = Path(__file__).parent
CASES = TESTS / "cases"
SAMPLES = TESTS / "payloads" / "mail"
FIXTURES = json.loads((CASES / "fixtures.json").read_text())
SUBSCRIBER_BY_EMAIL: dict[str, str] = {s["email"].lower(): s["id"] for s in FIXTURES["subscribers"]}

# The cases' vocabulary for our kinds (tests/cases/README.md, "Expected-outcome vocabularies").
CASE_CLASSIFICATION = {
    FeedbackKind.HARD_BOUNCE: "hard",
    FeedbackKind.SOFT_BOUNCE: "soft",
    FeedbackKind.POLICY_BLOCK: "soft",  # a policy block is "soft" there: retry, never suppress
}
CASE_KIND = {
    FeedbackKind.DELAYED: "delivery_delayed",
    FeedbackKind.AUTO_REPLY: "auto_reply",
    FeedbackKind.DMARC_REPORT: "dmarc_failure_report",
}
# The policy action each kind leads to (issue 6, "Policy").
CASE_ACTION = {
    FeedbackKind.HARD_BOUNCE: "suppress_recipient",
    FeedbackKind.SOFT_BOUNCE: "increment_soft_bounce_count",
    FeedbackKind.POLICY_BLOCK: "record_policy_block_and_alert_operator",
    FeedbackKind.COMPLAINT: "unsubscribe_all_lists_and_suppress",
    FeedbackKind.DMARC_REPORT: "route_to_dmarc_reports",
    FeedbackKind.DELAYED: "none",
    FeedbackKind.AUTO_REPLY: "none",
    FeedbackKind.UNKNOWN: "none",
}


def load_cases(folder: str) -> list[Any]:
    """Every entry of ``tests/cases/<folder>/cases.json``, as pytest params named by case id."""
    entries = json.loads((CASES / folder / "cases.json").read_text())
    return [pytest.param(entry, id=entry["id"]) for entry in entries]


def read_case(folder: str, case: dict[str, Any]) -> list[FeedbackReport]:
    return parse_inbound((CASES / folder / case["file"]).read_bytes())


def attributed_subscriber(report: FeedbackReport) -> str | None:
    """Attribution as the recording code does it: VERP first, then Message-ID, then recipient.

    The fixture's VERP convention is ``bounces+<local>=<domain>@…`` and its Message-ID
    ``<ed-<edition>.<subscriber id>@…>`` (tests/cases/fixtures.json).
    """
    if report.verp_local and "=" in report.verp_local:
        local, _, domain = report.verp_local.rpartition("=")
        found = SUBSCRIBER_BY_EMAIL.get(f"{local}@{domain}".lower())
        if found:
            return found
    match = re.match(r"<ed-[^.]+\.(s\d+)@", report.original_message_id or "")
    if match:
        return match.group(1)
    return SUBSCRIBER_BY_EMAIL.get((report.recipient or "").lower())


@pytest.mark.parametrize("case", load_cases("bounces"))
def test_bounce_case(case: dict[str, Any]) -> None:
    # Given a handed bounce case, when its bytes are read
    reports = read_case("bounces", case)
    expected = case["expected"]

    # Then it yields one report with the expected classification and effect
    assert len(reports) == 1
    report = reports[0]
    assert report.classification.is_bounce is expected["is_bounce"]
    case_classification = CASE_CLASSIFICATION.get(report.kind, "not_a_bounce")
    assert case_classification == expected["classification"]
    if "kind" in expected:
        assert CASE_KIND[report.kind] == expected["kind"]
    assert (
        report.classification.counts_toward_invalid_address
        is expected["counts_toward_invalid_address"]
    )
    assert CASE_ACTION[report.kind] == expected["action"]
    assert attributed_subscriber(report) == expected["subscriber_id"]
    if "recipient" in expected:
        assert report.recipient == expected["recipient"]
    if "status" in expected:
        assert report.status == expected["status"]
    if "reason" in expected:
        assert report.classification.reason == expected["reason"]
    if "bounce_count_increment" in expected:
        assert int(report.kind == FeedbackKind.SOFT_BOUNCE) == expected["bounce_count_increment"]


@pytest.mark.parametrize("case", load_cases("complaints"))
def test_complaint_case(case: dict[str, Any]) -> None:
    reports = read_case("complaints", case)
    expected = case["expected"]

    assert len(reports) == 1
    report = reports[0]
    assert (report.kind == FeedbackKind.COMPLAINT) is expected["is_complaint"]
    assert report.feedback_type == expected["feedback_type"]
    assert CASE_ACTION[report.kind] == expected["action"]
    if "kind" in expected:
        assert CASE_KIND[report.kind] == expected["kind"]
    if "recipient" in expected:
        assert report.recipient == expected["recipient"]
    if "original_message_id" in expected:
        assert report.original_message_id == expected["original_message_id"]
    if "subscriber_id" in expected:
        assert attributed_subscriber(report) == expected["subscriber_id"]
    if "subscriber_id_must_remain_subscribed" in expected:
        # A DMARC report names a subscriber a spoofer used; nothing may unsubscribe them.
        assert report.kind not in {FeedbackKind.COMPLAINT, FeedbackKind.UNSUBSCRIBE}
        assert not report.classification.counts_toward_invalid_address


CASE_ENTRIES: list[tuple[str, dict[str, Any]]] = [
    (folder, case)
    for folder in ("bounces", "complaints")
    for case in json.loads((CASES / folder / "cases.json").read_text())
]
ALL_CASES = [pytest.param(folder, case, id=case["id"]) for folder, case in CASE_ENTRIES]


@pytest.mark.parametrize(("folder", "case"), ALL_CASES)
def test_crlf_line_ends_read_the_same(folder: str, case: dict[str, Any]) -> None:
    # Given the case as an SMTP server receives it (CRLF), not as stored (LF)
    raw = (CASES / folder / case["file"]).read_bytes()
    crlf = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")

    # Then the reports are identical
    assert parse_inbound(crlf) == parse_inbound(raw)


@pytest.mark.parametrize(("folder", "case"), ALL_CASES)
def test_the_same_report_twice_has_the_same_event_id(folder: str, case: dict[str, Any]) -> None:
    first = read_case(folder, case)
    second = read_case(folder, case)
    assert [r.source_event_id for r in first] == [r.source_event_id for r in second]


def test_event_ids_differ_between_cases() -> None:
    ids = [r.source_event_id for folder, case in CASE_ENTRIES for r in read_case(folder, case)]
    assert len(ids) == len(set(ids))


def test_product_verp_and_message_id_are_extracted_from_returned_headers() -> None:
    # Given b01 as the product sends it: bounces+<delivery>-<tag>@ and <d<delivery>.<edition>@…>
    raw = (CASES / "bounces" / "b01_postfix_5_1_1_headers_only.eml").read_bytes()
    raw = raw.replace(b"bounces+nobody.here=example.net@", b"bounces+4711-3c1f9e0a2b@")
    raw = raw.replace(b"<ed-2026w48-en.s41809@", b"<d4711.2026w48-en@")
    raw = raw.replace(
        b"X-Newsletter-Edition:", b"X-Newsletter-Delivery: 4711\nX-Newsletter-Edition:"
    )

    [report] = parse_inbound(raw)

    assert report.verp_local == "4711-3c1f9e0a2b"
    assert report.original_message_id == "<d4711.2026w48-en@news.example.org>"
    assert report.delivery_ref == "4711"
    assert report.subscriber_ref == "s41809"


def test_envelope_recipient_outranks_the_headers() -> None:
    raw = (CASES / "bounces" / "b06_outlook_550_5_7_1_ip_blocklist.eml").read_bytes()
    [report] = parse_inbound(raw, envelope_recipient="bounces+4712-0a1b2c3d4e@news.example.org")
    assert report.verp_local == "4712-0a1b2c3d4e"


def test_another_verp_prefix_is_honoured() -> None:
    raw = (CASES / "bounces" / "b05_office365_550_5_1_10.eml").read_bytes()
    raw = raw.replace(b"bounces+left.company=example.com@", b"Returns+9-abc@")
    [report] = parse_inbound(raw, verp_prefix="returns")
    assert report.verp_local == "9-abc"


def _sample(name: str) -> list[FeedbackReport]:
    return parse_inbound((SAMPLES / name).read_bytes())


def test_qmail_bounce_reads_status_from_the_text() -> None:
    [report] = _sample("qmail_no_mailbox.eml")
    assert (report.kind, report.classification.reason) == (
        FeedbackKind.HARD_BOUNCE,
        Reason.USER_UNKNOWN,
    )
    assert (report.recipient, report.status) == ("gone.reader@example.com", "5.1.1")
    assert report.verp_local == "4721-5e6f7a8b9c"
    assert report.delivery_ref == "4721"
    assert report.original_message_id == "<d4721.2026w48-en@news.example.org>"


def test_exim_retry_timeout_is_soft_not_an_invalid_address() -> None:
    [report] = _sample("exim_retry_timeout.eml")
    assert (report.kind, report.classification.reason) == (
        FeedbackKind.SOFT_BOUNCE,
        Reason.DELIVERY_EXPIRED,
    )
    assert report.recipient == "tarpit.user@example.org"
    assert not report.classification.counts_toward_invalid_address


def test_one_report_per_failed_or_delayed_recipient_block() -> None:
    reports = _sample("dsn_three_recipients.eml")
    outcomes = [(r.recipient, r.kind, r.classification.reason) for r in reports]
    assert outcomes == [
        ("one@example.com", FeedbackKind.HARD_BOUNCE, Reason.USER_UNKNOWN),
        ("two@example.com", FeedbackKind.DELAYED, Reason.MAILBOX_FULL),
    ]
    assert {r.verp_local for r in reports} == {"4723-7a8b9c0d1e"}
    assert len({r.source_event_id for r in reports}) == 2


def test_global_dsn_with_utf8_recipient() -> None:
    [report] = _sample("global_dsn_utf8_address.eml")
    assert report.recipient == "иван@пример.рф"
    assert (report.kind, report.status) == (FeedbackKind.HARD_BOUNCE, "5.1.1")
    assert report.diagnostic is not None and "пользователь не найден" in report.diagnostic
    assert report.original_message_id == "<d4724.2026w48-ru@news.example.org>"


def test_undeclared_koi8r_bounce_is_read_in_russian() -> None:
    [report] = _sample("koi8r_undeclared_mailbox_full.eml")
    assert (report.kind, report.classification.reason) == (
        FeedbackKind.SOFT_BOUNCE,
        Reason.MAILBOX_FULL,
    )
    assert report.recipient == "chitatel@example.ru"
    assert report.diagnostic == "Почтовый ящик переполнен, попробуйте позже."


@pytest.mark.parametrize("codec", ["koi8_r", "cp1251"])
def test_undeclared_single_byte_cyrillic_user_unknown(codec: str) -> None:
    text = (
        "From: MAILER-DAEMON@mx.example.ru\nTo: bounces+4725-9c0d1e2f3a@news.example.org\n"
        "Subject: Недоставленное письмо\n\n"
        "Письмо не доставлено получателю reader@example.ru:\n   550 Пользователь не найден\n"
    )
    [report] = parse_inbound(text.encode(codec))
    assert (report.kind, report.classification.reason) == (
        FeedbackKind.HARD_BOUNCE,
        Reason.USER_UNKNOWN,
    )
    assert report.recipient == "reader@example.ru"


def test_arf_not_spam_is_nothing() -> None:
    [report] = _sample("arf_not_spam.eml")
    assert (report.kind, report.feedback_type) == (FeedbackKind.UNKNOWN, "not-spam")


def test_arf_with_redacted_recipient_is_attributed_by_verp_and_message_id() -> None:
    [report] = _sample("arf_abuse_redacted_recipient.eml")
    assert report.kind == FeedbackKind.COMPLAINT
    assert report.verp_local == "4727-1e2f3a4b5c"
    assert report.original_message_id == "<d4727.2026w48-en@news.example.org>"
    assert report.delivery_ref == "4727"


def test_dmarc_aggregate_report_is_recorded_only() -> None:
    [report] = _sample("dmarc_aggregate_report.eml")
    assert (report.kind, report.classification.reason) == (
        FeedbackKind.DMARC_REPORT,
        Reason.DMARC_AGGREGATE,
    )


def test_mailto_unsubscribe_carries_the_token() -> None:
    [report] = _sample("mailto_unsubscribe.eml")
    assert report.kind == FeedbackKind.UNSUBSCRIBE
    assert report.unsubscribe_token == "tU2iO5pA8sDf"
    assert report.recipient == "office.worker@example.com"
    assert report.source == "mailto"


def test_mailto_unsubscribe_marked_auto_submitted_still_counts() -> None:
    raw = (SAMPLES / "mailto_unsubscribe.eml").read_bytes()
    raw = raw.replace(
        b"Subject: unsubscribe\n", b"Subject: unsubscribe\nAuto-Submitted: auto-generated\n"
    )
    [report] = parse_inbound(raw)
    assert (report.kind, report.unsubscribe_token) == (FeedbackKind.UNSUBSCRIBE, "tU2iO5pA8sDf")


def test_unsubscribe_prefix_is_configurable() -> None:
    raw = (SAMPLES / "mailto_unsubscribe.eml").read_bytes().replace(b"unsubscribe+", b"leave+")
    [report] = parse_inbound(raw, unsubscribe_prefix="leave")
    assert report.unsubscribe_token == "tU2iO5pA8sDf"


def test_vendor_autoreply_header_beats_everything_else() -> None:
    [report] = _sample("yandex_autoreply_headers.eml")
    assert (report.kind, report.classification.reason) == (
        FeedbackKind.AUTO_REPLY,
        Reason.OUT_OF_OFFICE,
    )
    assert report.original_message_id == "<d4729.2026w48-ru@news.example.org>"
    assert report.recipient == "ivan@example.ru"


def test_human_reply_is_unknown_and_never_a_bounce() -> None:
    [report] = _sample("human_reply.eml")
    assert report.kind == FeedbackKind.UNKNOWN
    assert report.verp_local == "4730-4b5c6d7e8f"


# Hostile input: each must finish fast, never raise, and at worst give one UNKNOWN report.
# CPU seconds of this thread per message (not wall-clock: another process's load must not count);
# typical runs take 10-150 ms
SECONDS = 2.0


class _Records(logging.Handler):
    """Log records at WARNING and above, to see whether input reached a catch-all."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


_RECORDS = _Records()
for _name in ("worker.feedback.mail", "flufl.bounce"):
    logging.getLogger(_name).addHandler(_RECORDS)


def _timed(raw: bytes) -> list[FeedbackReport]:
    """Parse ``raw``: within ``SECONDS``, by the readers themselves (no catch-all, no traceback)."""
    _RECORDS.records.clear()
    started = time.thread_time()
    reports = parse_inbound(raw)
    assert time.thread_time() - started < SECONDS
    assert all(isinstance(r, FeedbackReport) for r in reports)
    assert [r.getMessage() for r in _RECORDS.records] == []
    return reports


def _nested_multiparts(depth: int) -> bytes:
    head = (
        b"From: MAILER-DAEMON@example.com\nMIME-Version: 1.0\n"
        b"Content-Type: multipart/mixed; boundary=b0\n\n"
    )
    levels = b"".join(
        b"--b%d\nContent-Type: multipart/mixed; boundary=b%d\n\n" % (i - 1, i)
        for i in range(1, depth)
    )
    return (
        head + levels + b"--b%d\nContent-Type: text/plain\n\n550 5.1.1 user unknown\n" % (depth - 1)
    )


def test_twenty_megabytes_keep_the_dsn_in_front() -> None:
    raw = (CASES / "bounces" / "b02_gmail_552_5_2_2_over_quota.eml").read_bytes()
    huge = (
        raw[:-30]
        + (b"A" * 76 + b"\n") * (20 * 1024 * 1024 // 77)
        + b"\n--000000000000gmdsn41808a--\n"
    )
    [report] = _timed(huge)
    assert (report.kind, report.recipient) == (FeedbackKind.SOFT_BOUNCE, "full.box@example.com")


def test_twenty_megabytes_on_one_line() -> None:
    [report] = _timed(b"Subject: x\n\n" + b"y" * 20 * 1024 * 1024)
    assert report.kind == FeedbackKind.UNKNOWN


def test_thousands_of_recipient_blocks_are_capped() -> None:
    blocks = b"".join(
        b"Final-Recipient: rfc822; u%d@example.com\nAction: failed\nStatus: 5.1.1\n\n" % i
        for i in range(20000)
    )
    raw = (
        b"MIME-Version: 1.0\n"
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=XX\n\n"
        b"--XX\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; x\n\n"
        + blocks
        + b"--XX--\n"
    )
    reports = _timed(raw)
    assert len(reports) == 100
    assert reports[0].recipient == "u0@example.com"


@pytest.mark.parametrize("depth", [50, 1000, 20000])
def test_deeply_nested_multiparts(depth: int) -> None:
    [report] = _timed(_nested_multiparts(depth))
    assert report.kind in {FeedbackKind.UNKNOWN, FeedbackKind.HARD_BOUNCE}


def test_deeply_nested_returned_messages() -> None:
    _timed(
        b"From: x@example.com\nContent-Type: message/rfc822\n\n" * 20000 + b"Subject: hi\n\nbody\n"
    )


def test_fifty_thousand_parts() -> None:
    parts = b"".join(b"--XX\nContent-Type: text/plain\n\nhi %d\n" % i for i in range(50000))
    _timed(
        b"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=XX\n\n" + parts + b"--XX--\n"
    )


@pytest.mark.parametrize(
    "raw",
    [
        b"Subject: " + b"a " * 3_000_000 + b"\n\nbody",
        b"".join(b"X-H%d: v\n" % i for i in range(300_000)) + b"\nbody",
        b"To: " + b", ".join(b"bounces+%d@example.org" % i for i in range(200_000)) + b"\n\nbody",
        bytes(range(256)) * 1000,
        b"\x00" * 100_000,
        b"Content-Type: multipart/report; report-type=delivery-status\n\n"
        b"Final-Recipient: rfc822; x@y\n",
        b'Content-Type: multipart/report; boundary="x"\n\n'
        b"--x\nContent-Type: message/delivery-status\n\n",
        b"Subject: =?utf-8?b?!!!not-base64!!!?=\nFrom: =?koi8-r?q?=FF=FE?= <>\n\nx",
        b"Content-Type: text/plain; charset=no-such-charset\n"
        b"Content-Transfer-Encoding: base64\n\n@@@",
    ],
    ids=[
        "huge-header",
        "many-headers",
        "many-addresses",
        "binary",
        "nul",
        "no-boundary",
        "empty-dsn",
        "bad-encoded-words",
        "bad-charset",
    ],
)
def test_malformed_input_yields_a_report_and_never_raises(raw: bytes) -> None:
    assert len(_timed(raw)) >= 1


def test_empty_input_yields_nothing() -> None:
    assert parse_inbound(b"") == []
    assert parse_inbound(b"\r\n \n") == []


_CASE_BYTES = [(CASES / folder / case["file"]).read_bytes() for folder, case in CASE_ENTRIES]


@st.composite
def mangled_cases(draw: st.DrawFn) -> bytes:
    """A handed case cut, spliced and sprinkled with random bytes."""
    raw = bytearray(draw(st.sampled_from(_CASE_BYTES)))
    for _ in range(draw(st.integers(min_value=0, max_value=8))):
        at = draw(st.integers(min_value=0, max_value=len(raw)))
        raw[at:at] = draw(st.binary(min_size=1, max_size=40))
    cut = draw(st.integers(min_value=1, max_value=len(raw)))
    return bytes(raw[:cut]) if draw(st.booleans()) else bytes(raw)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=mangled_cases())
def test_mangled_cases_never_raise(raw: bytes) -> None:
    _timed(raw)


@settings(max_examples=150, deadline=None)
@given(raw=st.binary(max_size=4000))
def test_random_bytes_never_raise(raw: bytes) -> None:
    _timed(raw)
