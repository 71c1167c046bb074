"""Mail identity: every identifier we write parses back to what we wrote, and nothing else does.

Also: the send hot path imports none of the signup/web/rendering stack.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import hmac
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.sendkit import ScriptedRelay
from worker.editions.files import NewsletterProfile
from worker.models import Subscriber
from worker.sending import identity
from worker.sending.composer import Links
from worker.sending.transactional import send_transactional

KEY = "test-secret-key"
DOMAIN = "news.example.org"
IDS = st.integers(min_value=0, max_value=10**18 - 1)
EDITION_KEYS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,20}", fullmatch=True)
TOKENS = st.from_regex(r"[A-Za-z0-9_.-]{1,60}", fullmatch=True)
SLUGS = st.from_regex(r"[a-z0-9][a-z0-9-]{0,20}", fullmatch=True)
ROOT = Path(__file__).resolve().parent.parent


@given(delivery_id=IDS)
def test_verp_round_trips(delivery_id: int) -> None:
    address = identity.verp_address(delivery_id, key=KEY, domain=DOMAIN)
    assert identity.parse_verp(address, key=KEY) == delivery_id
    assert identity.parse_verp(f"<{address}>", key=KEY) == delivery_id
    local = identity.local_token(address, identity.BOUNCE_PREFIX)
    assert local is not None
    assert identity.parse_verp(f"{identity.BOUNCE_PREFIX}+{local}", key=KEY) == delivery_id


@pytest.mark.parametrize(
    "value",
    [
        "bounces+4711-0000000000@news.example.org",  # forged tag
        "bounces+4711@news.example.org",  # no tag
        "bounces@news.example.org",
        "bounces+²-0000000000@news.example.org",
        "",
        "reader@example.com",
    ],
)
def test_verp_refuses_forged_and_foreign(value: str) -> None:
    assert identity.parse_verp(value, key=KEY) is None


def test_verp_under_another_key_is_forged() -> None:
    address = identity.verp_address(4711, key="another-key", domain=DOMAIN)
    assert identity.parse_verp(address, key=KEY) is None


def _old_verp(delivery_id: int, key: str) -> str:
    """The VERP address mail sent before sealed ids carries: ``bounces+<id>-<10 hex HMAC>``."""
    tag = hmac.new(key.encode(), f"verp:{delivery_id}".encode(), hashlib.sha256).hexdigest()
    return f"bounces+{delivery_id}-{tag[:10]}@{DOMAIN}"


@given(delivery_id=IDS)
def test_old_tagged_verp_still_parses(delivery_id: int) -> None:
    # Mail sent before the upgrade keeps bouncing for days to its old tagged address.
    address = _old_verp(delivery_id, KEY)
    assert identity.parse_verp(address, key=KEY) == delivery_id
    assert identity.parse_verp(address.upper(), key=KEY) == delivery_id
    assert identity.parse_verp(_old_verp(delivery_id, "another-key"), key=KEY) is None


@given(delivery_id=IDS)
def test_sealed_id_round_trips_in_lower_case_base32(delivery_id: int) -> None:
    sealed = identity.seal_delivery(delivery_id, key=KEY)
    assert len(sealed) == 26 and sealed == sealed.lower()
    assert set(sealed) <= set("abcdefghijklmnopqrstuvwxyz234567")
    assert identity.open_delivery(sealed, key=KEY) == delivery_id
    assert identity.open_delivery(sealed.upper(), key=KEY) == delivery_id  # MTAs change case
    assert identity.open_delivery(sealed, key="another-key") is None


def test_sealed_ids_reveal_no_count() -> None:
    # Neighbouring ids share no prefix worth reading: each is a fresh AES block.
    sealed = [identity.seal_delivery(n, key=KEY) for n in range(1, 65)]
    assert len(set(sealed)) == 64
    assert len({s[:4] for s in sealed}) == 64
    assert sealed != sorted(sealed)


@given(delivery_id=IDS, position=st.integers(0, 25), letter=st.sampled_from("a2z7q"))
def test_a_neighbouring_sealed_value_is_forged(
    delivery_id: int, position: int, letter: str
) -> None:
    sealed = identity.seal_delivery(delivery_id, key=KEY)
    changed = sealed[:position] + letter + sealed[position + 1 :]
    if changed != sealed:
        assert identity.open_delivery(changed, key=KEY) is None


def test_every_identifier_of_a_delivery_carries_only_the_seal() -> None:
    sealed = identity.seal_delivery(4711, key=KEY)
    verp = identity.verp_address(4711, key=KEY, domain=DOMAIN)
    assert verp == f"bounces+{sealed}@{DOMAIN}"
    assert len(verp.split("@")[0]) <= 64  # RFC 5321 §4.5.3.1.1
    assert identity.edition_message_id(4711, "2024-W28", DOMAIN, key=KEY) == (
        f"<{sealed}.2024-W28@{DOMAIN}>"
    )
    assert identity.delivery_header(4711, key=KEY) == sealed
    assert "4711" not in verp + sealed


@given(delivery_id=IDS, edition=EDITION_KEYS)
def test_edition_message_id_round_trips(delivery_id: int, edition: str) -> None:
    value = identity.edition_message_id(delivery_id, edition, DOMAIN, key=KEY)
    assert identity.parse_edition_message_id(value, DOMAIN, key=KEY) == delivery_id
    assert identity.parse_edition_message_id(value.upper(), DOMAIN, key=KEY) == delivery_id
    assert identity.parse_edition_message_id(value, key=KEY) == delivery_id  # no domain: any
    assert identity.parse_edition_message_id(value, DOMAIN, key="another-key") is None


def test_old_untagged_message_id_and_header_parse_as_untagged() -> None:
    untagged = identity.Untagged(4711)
    assert identity.parse_edition_message_id(f"<d4711.2024-W28@{DOMAIN}>", key=KEY) == untagged
    assert identity.parse_delivery_header("4711", key=KEY) == untagged


@pytest.mark.parametrize(
    "value",
    [
        "<d4711.2024-W28@other.example.com>",  # another sender's domain
        "<x4711.2024-W28@news.example.org>",
        "<d²4711.2024-W28@news.example.org>",
        "<d4711@news.example.org>",  # no edition
        "<d1234567890123456789.2024-W28@news.example.org>",  # 19 digits: not a delivery id
        "<aaaaaaaaaaaaaaaaaaaaaaaaaa.2024-W28@news.example.org>",  # base32, not sealed by us
        "<confirmation.0123abcd@news.example.org>",
        "",
        None,
    ],
)
def test_edition_message_id_refuses_foreign(value: str | None) -> None:
    assert identity.parse_edition_message_id(value, DOMAIN, key=KEY) is None


def test_transactional_message_id_is_unique_and_not_an_edition() -> None:
    first = identity.transactional_message_id("confirmation", DOMAIN)
    assert first.startswith("<confirmation.") and first.endswith(f"@{DOMAIN}>")
    assert first != identity.transactional_message_id("confirmation", DOMAIN)
    assert identity.parse_edition_message_id(first, DOMAIN, key=KEY) is None


@given(delivery_id=IDS)
def test_delivery_header_round_trips(delivery_id: int) -> None:
    value = identity.delivery_header(delivery_id, key=KEY)
    assert identity.parse_delivery_header(value, key=KEY) == delivery_id
    assert identity.parse_delivery_header(f"  {value} ", key=KEY) == delivery_id


@pytest.mark.parametrize(
    "value",
    ["²", "4711²", "٤٧١١", "4 711", "-4711", "+4711", "0x10", "1234567890123456789", "", None],
)
def test_delivery_header_accepts_ascii_digits_only(value: str | None) -> None:
    # str.isdigit() accepted "²" and "٤٧١١", and int("²") raised ValueError later
    assert identity.parse_delivery_header(value, key=KEY) is None


@given(token=TOKENS)
def test_unsubscribe_mailto_round_trips(token: str) -> None:
    uri = identity.unsubscribe_mailto(token, DOMAIN)
    assert uri == f"mailto:unsubscribe+{token}@{DOMAIN}?subject=unsubscribe"
    assert identity.parse_unsubscribe_address(uri) == token
    assert identity.parse_unsubscribe_address(f"unsubscribe+{token}@{DOMAIN}") == token
    assert Links("https://x", DOMAIN, DOMAIN).unsubscribe_mailto(token) == uri


@pytest.mark.parametrize(
    "value",
    ["unsubscribe@news.example.org", "leave+abc@news.example.org", "bounces+abc@x", "", None],
)
def test_unsubscribe_address_refuses_others(value: str | None) -> None:
    assert identity.parse_unsubscribe_address(value) is None


@given(slug=SLUGS)
def test_list_id_round_trips(slug: str) -> None:
    value = identity.list_id(slug, DOMAIN)
    assert value == f"{slug}.{DOMAIN}"
    assert identity.parse_list_id(value, DOMAIN) == slug
    assert identity.parse_list_id(f'"Weekly, News" <{value}>', DOMAIN) == slug


@pytest.mark.parametrize("value", ["weekly.other.example.com", f"<{DOMAIN}>", "", None])
def test_list_id_refuses_other_lists(value: str | None) -> None:
    assert identity.parse_list_id(value, DOMAIN) is None


@given(campaign=EDITION_KEYS, language=st.sampled_from(["en", "be", "ru", "pt-BR"]), slug=SLUGS)
def test_feedback_id_round_trips(campaign: str, language: str, slug: str) -> None:
    for kind in ("newsletter", "transactional"):
        feedback_id = identity.FeedbackId(campaign, language, slug, kind)
        assert identity.FeedbackId.parse(feedback_id.format()) == feedback_id


@pytest.mark.parametrize("value", ["a:b:c", "a:b:c:d:e", "a::c:d", "a b:c:d:e", "", None])
def test_feedback_id_refuses_malformed(value: str | None) -> None:
    assert identity.FeedbackId.parse(value) is None


def test_feedback_id_refuses_to_format_a_separator() -> None:
    with pytest.raises(ValueError, match="Feedback-ID"):
        identity.FeedbackId("2024:W28", "en", "weekly").format()
    assert (
        identity.FeedbackId("2024-W28", "en", "weekly").format() == "2024-W28:en:weekly:newsletter"
    )


def test_bounce_address_and_header_names() -> None:
    assert identity.bounce_address(DOMAIN) == "bounces@news.example.org"
    assert identity.DELIVERY_HEADER == "X-Newsletter-Delivery"
    assert identity.SUBSCRIBER_HEADER == "X-Newsletter-Subscriber"
    assert identity.EDITION_HEADER == "X-Newsletter-Edition"


HEAVY = ("pydantic", "markdown", "babel", "email_validator", "fastapi")
HOT_PATH = (
    "worker.sending.batch",
    "worker.sending.sql_ledger",
    "worker.sending.composer",
    "worker.sending.identity",
)


@pytest.mark.parametrize("module", HOT_PATH)
def test_hot_path_imports_no_heavy_stack(module: str) -> None:
    # a fresh interpreter: this test process has long imported everything
    script = (
        f"import sys, {module}\n"
        "print(' '.join(sorted({name.split('.')[0] for name in sys.modules})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert module.split(".")[0] in out
    assert sorted(set(HEAVY) & set(out)) == []


def test_transactional_mail_carries_the_same_header_set() -> None:
    # Given a confirmation mail sent through the one builder
    profile = NewsletterProfile(
        name={"en": "Weekly News"},
        from_address="news@news.example.org",
        from_name={"en": "Weekly News"},
        reply_to=None,
        site="https://news.example.org",
        languages=("en",),
        default_language="en",
        about={"en": "About"},
    )
    outbox = ScriptedRelay()
    send_transactional(
        outbox,
        name="confirmation",
        subscriber=Subscriber(
            email="reader@example.com", ascii_email="reader@example.com", language="en"
        ),
        profile=profile,
        context={"confirm_url": "https://news.example.org/confirm/t", "expires_hours": 72},
        public_url="https://news.example.org",
        bounce_address=identity.bounce_address(DOMAIN),
        message_id_domain=DOMAIN,
        now=datetime(2024, 7, 8, tzinfo=UTC),
        slug="weekly",
    )
    # Then it names the newsletter like an edition does, as transactional, with nothing to
    # unsubscribe from
    [(envelope_from, _, data)] = outbox.sent
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert envelope_from == "bounces@news.example.org"
    assert identity.parse_list_id(str(message["List-Id"]), DOMAIN) == "weekly"
    assert identity.FeedbackId.parse(str(message["Feedback-ID"])) == identity.FeedbackId(
        "confirmation", "en", "weekly", "transactional"
    )
    assert str(message["Message-ID"]).startswith("<confirmation.")
    assert message["List-Unsubscribe"] is None and message[identity.EDITION_HEADER] is None
