"""Classification of delivery statuses and SMTP replies (RFC 3463, RFC 3464, RFC 5321)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.feedback.classification import (
    Classification,
    FeedbackKind,
    Reason,
    classify_feedback_type,
    classify_smtp_reply,
    classify_status,
    enhanced_status,
    reason_from_text,
)

CASES = Path(__file__).parent / "cases"

HARD, SOFT, POLICY = FeedbackKind.HARD_BOUNCE, FeedbackKind.SOFT_BOUNCE, FeedbackKind.POLICY_BLOCK
DELAYED, UNKNOWN = FeedbackKind.DELAYED, FeedbackKind.UNKNOWN


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5.1.10", "5.1.10"),
        ("smtp; 550 5.1.10 RESOLVER.ADR.RecipientNotFound", "5.1.10"),
        ("552-5.2.2 The mailbox of the person you wrote to", "5.2.2"),
        ("Sorry, no mailbox here by that name. (#5.1.1)", "5.1.1"),
        ("status 5.7.1.", "5.7.1"),
        ("host 10.4.4.7 said: 550 no such user", None),  # an IP address is not a status
        ("Messages from [198.51.100.7] were refused", None),
        ("mta-v2.4.10", None),  # part of a longer token
        ("4.4.7 (delivery time expired)", "4.4.7"),
        ("", None),
        (None, None),
    ],
)
def test_enhanced_status_is_found_whole_and_never_in_ip_addresses(
    text: str | None, expected: str | None
) -> None:
    assert enhanced_status(text) == expected


@pytest.mark.parametrize(
    ("status", "diagnostic", "action", "kind", "reason", "counts"),
    [
        # RFC 3463 subject/detail decides first.
        (
            "5.1.1",
            "550 5.1.1 <a@example.net>: Recipient address rejected",
            "failed",
            HARD,
            "user_unknown",
            True,
        ),
        (
            "5.1.10",
            "550 5.1.10 RESOLVER.ADR.RecipientNotFound",
            "failed",
            HARD,
            "user_unknown",
            True,
        ),
        ("5.1.10", "550 5.1.10 Recipient address has null MX", "failed", HARD, "bad_domain", True),
        ("5.1.2", "Host or domain name not found", "failed", HARD, "bad_domain", True),
        (
            "5.2.1",
            "The email account that you tried to reach is disabled",
            "failed",
            HARD,
            "mailbox_disabled",
            True,
        ),
        # 5xx about a temporary or sender-side condition is not a dead address.
        ("5.2.2", "552 5.2.2 mailbox full", "failed", SOFT, "mailbox_full", False),
        (
            "5.7.1",
            "550 5.7.1 listed on our block list (S3150)",
            "failed",
            POLICY,
            "sender_blocked",
            False,
        ),
        (
            "5.7.1",
            "550 5.7.1 Message rejected as spam",
            "failed",
            POLICY,
            "content_rejected",
            False,
        ),
        (
            "5.7.1",
            "550 5.7.1 user unknown",
            "failed",
            POLICY,
            "sender_blocked",
            False,
        ),  # never hardened
        (
            "5.7.26",
            "550 5.7.26 Unauthenticated email is not accepted (DMARC)",
            "failed",
            POLICY,
            "authentication_failed",
            False,
        ),
        (
            "5.3.4",
            "552 5.3.4 Message size exceeds fixed limit",
            "failed",
            POLICY,
            "message_too_large",
            False,
        ),
        # Text only softens a specific status.
        ("5.1.1", "550 5.1.1 mailbox is full", "failed", SOFT, "mailbox_full", False),
        (
            "5.1.1",
            "550 5.1.1 rejected: IP listed at spamhaus",
            "failed",
            POLICY,
            "sender_blocked",
            False,
        ),
        # A generic status is refined by the code or text inside the diagnostic.
        (
            "5.0.0",
            "550 5.1.1 <a@example.com>... User unknown",
            "failed",
            HARD,
            "user_unknown",
            True,
        ),
        ("5.0.0", "550 User unknown", "failed", HARD, "user_unknown", True),
        ("5.0.0", "550 Requested action not taken", "failed", SOFT, "unclassified", False),
        (
            None,
            "550 Requested action not taken: mailbox unavailable",
            "failed",
            SOFT,
            "mailbox_unavailable",
            False,
        ),
        # RFC 3464 Action.
        ("4.4.7", None, "delayed", DELAYED, "temporary_failure", False),
        ("5.1.1", None, "delayed", DELAYED, "temporary_failure", False),  # still trying
        ("4.4.7", "retry timeout exceeded", "failed", SOFT, "delivery_expired", False),
        ("4.2.2", "452 4.2.2 over quota", "failed", SOFT, "mailbox_full", False),
        ("2.0.0", None, "delivered", UNKNOWN, "delivered", False),
        (None, None, "relayed", UNKNOWN, "delivered", False),
        (None, None, "failed", SOFT, "unclassified", False),
        (None, None, None, UNKNOWN, "unclassified", False),
        # Russian diagnostics (mail.ru, Yandex, translated Exim/Postfix).
        (None, "550 Пользователь не найден", "failed", HARD, "user_unknown", True),
        (None, "550 Адресат не существует", "failed", HARD, "user_unknown", True),
        (None, "552 Почтовый ящик переполнен", "failed", SOFT, "mailbox_full", False),
        (
            None,
            "550 Ваш IP-адрес находится в чёрном списке",
            "failed",
            POLICY,
            "sender_blocked",
            False,
        ),
        (None, "Сообщение похоже на спам", "failed", POLICY, "content_rejected", False),
        # Text alone, no code, no action.
        (None, "greylisted, please try again later", None, DELAYED, "greylisted", False),
        (None, "user unknown", None, HARD, "user_unknown", True),
    ],
)
def test_classify_status(
    status: str | None,
    diagnostic: str | None,
    action: str | None,
    kind: FeedbackKind,
    reason: str,
    counts: bool,
) -> None:
    assert classify_status(status, diagnostic, action=action) == Classification(
        kind, reason, counts
    )


def _q05_replies() -> list[tuple[str, int, str]]:
    """Every scripted SMTP reply of the handed queue case q05 as (recipient, code, text)."""
    script = json.loads(
        (CASES / "queue" / "q05_smtp_transient_vs_permanent_replies.json").read_text()
    )
    replies = []
    for recipient, steps in script["smtp_script"].items():
        for step in steps:
            match = re.search(r"-> (\d{3}) (.*)", step)
            assert match is not None, step
            replies.append((recipient, int(match.group(1)), match.group(2)))
    return replies


@pytest.mark.parametrize(("recipient", "code", "text"), _q05_replies())
def test_smtp_replies_of_case_q05(recipient: str, code: int, text: str) -> None:
    # Given the reply script of q05: 4xx is retried, only "550 5.1.1" is a hard bounce.
    classification = classify_smtp_reply(code, text)
    if code == 250:
        assert classification == Classification(UNKNOWN, Reason.DELIVERED, False)
    elif 400 <= code < 500:
        assert classification.kind == DELAYED
        assert not classification.counts_toward_invalid_address
    else:
        assert recipient == "gone@example.com"
        assert classification == Classification(HARD, Reason.USER_UNKNOWN, True)


@pytest.mark.parametrize(
    ("code", "text", "kind", "reason"),
    [
        (550, "5.1.1 <gone@example.com>: no such user", HARD, "user_unknown"),
        (552, "5.2.2 mailbox full", SOFT, "mailbox_full"),
        (552, "Requested mail action aborted: exceeded storage allocation", SOFT, "mailbox_full"),
        (
            550,
            "5.7.1 Service unavailable, Client host blocked using Spamhaus",
            POLICY,
            "sender_blocked",
        ),
        (554, "5.7.1 Message rejected due to content restrictions", POLICY, "content_rejected"),
        (556, "Domain does not accept mail", HARD, "bad_domain"),
        (
            421,
            "4.7.0 [TS04] Messages temporarily deferred due to user complaints",
            DELAYED,
            "rate_limited",
        ),
        (451, "4.7.1 Greylisted, please try again in 5 minutes", DELAYED, "greylisted"),
        (
            452,
            "4.2.2 The email account that you tried to reach is over quota",
            DELAYED,
            "mailbox_full",
        ),
        (450, "4.1.1 user unknown (temporarily)", DELAYED, "temporary_failure"),
        (554, "Transaction failed", SOFT, "unclassified"),
    ],
)
def test_classify_smtp_reply(code: int, text: str, kind: FeedbackKind, reason: str) -> None:
    classification = classify_smtp_reply(code, text)
    assert (classification.kind, classification.reason) == (kind, reason)
    assert classification.counts_toward_invalid_address is (kind == HARD)


@pytest.mark.parametrize(
    ("feedback_type", "kind", "reason"),
    [
        ("abuse", FeedbackKind.COMPLAINT, "abuse"),
        ("Fraud", FeedbackKind.COMPLAINT, "fraud"),
        ("auth-failure", FeedbackKind.DMARC_REPORT, "auth_failure"),
        ("not-spam", UNKNOWN, "not_spam"),
        ("virus", UNKNOWN, "other_feedback"),
        (None, UNKNOWN, "other_feedback"),
    ],
)
def test_only_abuse_and_fraud_are_complaints(
    feedback_type: str | None, kind: FeedbackKind, reason: str
) -> None:
    assert classify_feedback_type(feedback_type) == Classification(kind, reason, False)


def test_missing_feedback_type_is_abuse_only_where_the_provider_says_so() -> None:
    assert classify_feedback_type(None, missing_means_abuse=True).kind == FeedbackKind.COMPLAINT


def test_reason_from_text_reads_russian_in_either_spelling_of_yo() -> None:
    assert reason_from_text("адрес в черном списке") == Reason.SENDER_BLOCKED
    assert reason_from_text("адрес в чёрном списке") == Reason.SENDER_BLOCKED


_ANY_TEXT = st.text(max_size=300)


@settings(max_examples=300, deadline=None)
@given(text=_ANY_TEXT, status=st.sampled_from(["5.2.2", "5.7.1", "5.7.26", "5.3.4"]))
def test_text_never_hardens_a_soft_or_policy_status(text: str, status: str) -> None:
    assert classify_status(status, text, action="failed").kind != HARD


@settings(max_examples=300, deadline=None)
@given(status=st.one_of(st.none(), _ANY_TEXT), text=st.one_of(st.none(), _ANY_TEXT))
def test_action_delayed_is_never_a_bounce(status: str | None, text: str | None) -> None:
    assert classify_status(status, text, action="delayed").kind in {DELAYED, UNKNOWN}


@settings(max_examples=300, deadline=None)
@given(code=st.integers(min_value=100, max_value=699), text=_ANY_TEXT)
def test_smtp_reply_classification_is_total(code: int, text: str) -> None:
    classification = classify_smtp_reply(code, text)
    assert classification.counts_toward_invalid_address is (classification.kind == HARD)
    if 400 <= code < 500:
        assert classification.kind == DELAYED


# Permanent failures about OUR sender, with the subject digits receivers really use: none of them
# says anything of the reader's address (RFC 3463 §3.2 X.1.7/X.1.8, §3.8 X.7.x).
SENDER_SIDE = [
    ("5.1.8", "553 5.1.8 <bounces@news.example.org>: Sender address rejected: Domain not found"),
    ("5.1.1", "550 5.1.1 <bounces@news.example.org>: Sender address rejected: User unknown"),
    ("5.1.0", "550 5.1.0 Sender denied as sender's email address is not allowed"),
    ("5.1.0", "550 5.1.0 <bounces@news.example.org> sender verify failed"),
    ("5.1.7", "550 5.1.7 Invalid address"),
    ("5.0.0", "550 5.0.0 Envelope sender domain is blocked by local policy"),
    ("5.2.1", "550 5.2.1 Mail from news.example.org rejected by DMARC policy"),
    ("5.5.0", "550 5.5.0 SPF check failed for news.example.org"),
    ("5.6.0", "554 5.6.0 Message refused under our acceptable use policy"),
    ("5.3.0", "554 5.3.0 Message rejected as spam by content filter"),
    ("5.4.1", "550 5.4.1 Sending domain news.example.org has been blacklisted"),
    ("5.1.1", "550 5.1.1 Sender blocked"),
    ("5.2.0", "550 5.2.0 Your domain has a poor reputation"),
    ("5.0.0", "550 Отправитель отклонён: адрес отправителя не прошёл проверку"),
    (None, "550 Sender address rejected: not owned by user"),
    (None, "554 Your IP 198.51.100.7 is listed in Spamhaus ZEN"),
]
# Refusals about the reader's mailbox: the rule must not catch these.
RECIPIENT_SIDE = [
    ("5.1.1", "550 5.1.1 <a@example.net>: Recipient address rejected: User unknown", HARD),
    ("5.1.1", "550-5.1.1 The email account that you tried to reach does not exist.", HARD),
    ("5.1.10", "550 5.1.10 RESOLVER.ADR.RecipientNotFound; not found by SMTP lookup", HARD),
    ("5.2.2", "552 5.2.2 The email account that you tried to reach is over quota", SOFT),
    ("5.2.1", "550 5.2.1 The email account that you tried to reach is disabled", HARD),
    ("5.0.0", "Mail delivery failed: returning message to sender. user unknown", HARD),
]


@pytest.mark.parametrize(("status", "text"), SENDER_SIDE)
@pytest.mark.parametrize("action", ["failed", None])
def test_a_refusal_about_our_sender_is_a_policy_block_whatever_the_code(
    status: str | None, text: str, action: str | None
) -> None:
    found = classify_status(status, f"smtp; {text}", action=action)
    assert found.kind == POLICY and not found.counts_toward_invalid_address
    assert found.reason in {
        Reason.SENDER_ADDRESS_REJECTED,
        Reason.SENDER_BLOCKED,
        Reason.AUTHENTICATION_FAILED,
        Reason.CONTENT_REJECTED,
    }
    code = int(text.split()[0])
    assert classify_smtp_reply(code, text.split(" ", 1)[1]).kind == POLICY


@pytest.mark.parametrize(("status", "text"), SENDER_SIDE[:6])
def test_a_transient_refusal_about_our_sender_that_expired_is_no_soft_bounce(
    status: str | None, text: str
) -> None:
    # The remote MTA gave up (Action: failed with class 4): still about us, not the reader.
    transient = f"4{(status or '5.0.0')[1:]}"
    found = classify_status(transient, f"smtp; 4{text[1:]}", action="failed")
    assert found.kind == POLICY


@pytest.mark.parametrize(("status", "text", "kind"), RECIPIENT_SIDE)
def test_refusals_about_the_readers_mailbox_stay_bounces(
    status: str, text: str, kind: FeedbackKind
) -> None:
    assert classify_status(status, f"smtp; {text}", action="failed").kind == kind
