"""Addresses: the handed cases (tests/cases/addresses), de-duplication, SMTPUTF8, blocklist, MX."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tests.samples import CASES
from worker.models import SignupRefusal, Subscriber
from worker.runtime import Runtime
from worker.safety import keyring
from worker.subscriptions.addresses import AddressError, load_blocked_domains, parse_address
from worker.subscriptions.limits import ALLOWED, Verdict
from worker.subscriptions.signups import AddressRules, process_signup

ADDRESS_CASES = json.loads((CASES / "addresses" / "cases.json").read_text(encoding="utf-8"))
# The cases' error categories -> our AddressError codes.
ERROR_CODES = {"domain_ends_with_dot": "domain_ends_with_dot", "smtputf8": "smtputf8_unsupported"}


def case_input(case: dict[str, Any]) -> str:
    return str((CASES / "addresses" / case["file"]).read_bytes().decode("utf-8"))


@pytest.mark.parametrize("case", ADDRESS_CASES, ids=[c["id"] for c in ADDRESS_CASES])
def test_address_case(case: dict[str, Any]) -> None:
    expected = case["expected"]
    raw = case_input(case)

    if not expected["valid"]:
        with pytest.raises(AddressError) as caught:
            parse_address(raw)
        assert caught.value.code == ERROR_CODES[expected["error"]]
        return

    address = parse_address(raw)
    assert address.normalized == expected["normalized"]
    assert address.smtputf8 is expected["smtputf8"]
    if "ascii_email" in expected:
        assert address.ascii_email == expected["ascii_email"]
    if "dedupe_key" in expected:
        assert address.dedupe_key == expected["dedupe_key"]
    for same in expected.get("same_subscriber_as", []):
        assert parse_address(same).dedupe_key == address.dedupe_key
    for other in expected.get("not_same_subscriber_as", []):
        assert parse_address(other).dedupe_key != address.dedupe_key
    if "smtp_rcpt_to" in expected:
        assert address.ascii_email == expected["smtp_rcpt_to"]
    if expected.get("requires_smtputf8_relay"):
        with pytest.raises(AddressError) as caught:
            parse_address(raw, allow_smtputf8=False)
        assert caught.value.code == "smtputf8_unsupported"
        assert "SMTPUTF8" in caught.value.message


def test_idn_domain_is_kept_in_unicode_and_sent_as_a_labels() -> None:
    address = parse_address("Chytach@ПРЫКЛАД.БЕЛ")
    assert (address.normalized, address.ascii_email, address.ascii_domain) == (
        "Chytach@прыклад.бел",
        "Chytach@xn--80aiqesg1f.xn--90ais",
        "xn--80aiqesg1f.xn--90ais",
    )
    assert address.dedupe_key == "chytach@прыклад.бел"


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (None, "not_a_string"),
        (42, "not_a_string"),
        ("a" * 321, "too_long"),
        ("reader" * 41 + "@example.org", "local_part_too_long"),  # 258 octets, 246 before @
        ("r" * 60 + "@" + ("sub" * 20 + ".") * 3 + "example.com.org.org.org", "too_long"),
        ("reader@" + ("b" * 63 + ".") * 4 + "org", "domain_too_long"),
        ("reader@" + "b" * 64 + ".org", "domain_label_too_long"),
        ("reader@example.org.", "domain_ends_with_dot"),
        ("broken@", "no_domain"),
        ("@example.org", "no_local_part"),
        ("reader.example.org", "no_at_sign"),
        ("user@localhost", "domain_without_dot"),
        ("user@example.invalid", "reserved_domain"),
        ("two..dots@example.org", "misplaced_dot"),
        ("x@example.org\r\nBcc: victim@example.net", "invalid_characters"),
        ("with space@example.org", "invalid_characters"),
        ('"quoted local"@example.org', "invalid"),
    ],
)
def test_refused_addresses_have_stable_codes(raw: object, code: str) -> None:
    with pytest.raises(AddressError) as caught:
        parse_address(raw)
    assert caught.value.code == code


def test_blocklist_file_refuses_domains_and_subdomains_in_either_idn_form(tmp_path: Path) -> None:
    listing = tmp_path / "disposable.txt"
    listing.write_text("# disposable\nMailinator.com\nпрыклад.бел  # IDN in Unicode\n\n", "utf-8")
    blocked = load_blocked_domains(listing)
    assert blocked == {"mailinator.com", "прыклад.бел", "xn--80aiqesg1f.xn--90ais"}

    for raw in (
        "a@mailinator.com",
        "a@eu.MAILINATOR.com",
        "a@xn--80aiqesg1f.xn--90ais",
        "a@прыклад.бел",
    ):
        with pytest.raises(AddressError) as caught:
            parse_address(raw, blocked_domains=blocked)
        assert caught.value.code == "blocked_domain"
    assert parse_address("a@example.org", blocked_domains=blocked).normalized == "a@example.org"
    assert load_blocked_domains("") == frozenset()


def test_deliverability_check_refuses_a_domain_without_mail_servers() -> None:
    # There is no DNS here, so the look-up fails fast: the point is the code path and the timeout.
    with pytest.raises(AddressError) as caught:
        parse_address("reader@no-such-domain.example", check_deliverability=True, dns_timeout=1)
    assert caught.value.code == "undeliverable"


def signup(n: int, address: str, language: str = "en") -> dict[str, Any]:
    return {"version": 1, "event_id": f"addr-{n}", "email": address, "language": language}


class NoLimits:
    """The limiter port with no limits (these tests are about addresses)."""

    def allow_signup(self, ip: str) -> Verdict:
        return ALLOWED

    def allow_confirmation(self, address_key: str, *, repeat: bool = True) -> Verdict:
        return ALLOWED

    def allow_domain(self, domain: str) -> Verdict:
        return ALLOWED

    def allow_record(self, source: str | None) -> Verdict:
        return ALLOWED

    def allow_signup_and_confirmation(
        self, ip: str, address_key: str, *, repeat: bool = True
    ) -> tuple[Verdict, Verdict | None]:
        return ALLOWED, ALLOWED

    def allow_new_reader(
        self, ip: str | None, address_key: str, domain: str
    ) -> tuple[Verdict, Verdict | None, Verdict | None]:
        return ALLOWED, ALLOWED, ALLOWED


def run(rt: Runtime, event: dict[str, Any], rules: AddressRules | None = None) -> str:
    from worker.editions.store import profile_of

    with rt.session() as session:
        newsletter = rt.newsletter(session)
        outcome = process_signup(
            session,
            event,
            newsletter=newsletter,
            profile=profile_of(newsletter),
            rules=rules or AddressRules(),
            limiter=NoLimits(),
            hash_key=rt.settings.secret_key,
            now=rt.clock.now(),
        )
    return outcome.status


def test_case_variants_are_one_subscriber_stored_as_first_typed(rt: Runtime) -> None:
    a01 = next(c for c in ADDRESS_CASES if c["id"] == "a01")
    statuses = [
        run(rt, signup(n, raw))
        for n, raw in enumerate([case_input(a01), *a01["expected"]["same_subscriber_as"]])
    ]

    assert statuses == ["pending", "pending", "pending"]
    with rt.session() as session:
        rows = session.scalars(select(Subscriber)).all()
        # email_key is the blind index of the case-folded address (worker.safety.keyring), never it
        assert [(s.email, s.email_key, s.ascii_email) for s in rows] == [
            (
                "Ivan.Petrov@example.org",
                keyring.blind_index("ivan.petrov@example.org"),
                "Ivan.Petrov@example.org",
            )
        ]


def test_internationalised_local_part_is_refused_at_signup_without_smtputf8_relay(
    rt: Runtime,
) -> None:
    a05 = next(c for c in ADDRESS_CASES if c["id"] == "a05")

    assert (
        run(rt, signup(1, case_input(a05), "ru"), AddressRules(allow_smtputf8=False)) == "refused"
    )
    assert run(rt, signup(2, case_input(a05), "ru"), AddressRules(allow_smtputf8=True)) == "pending"

    with rt.session() as session:
        refusal = session.scalars(select(SignupRefusal)).one()
        assert refusal.event_id == "addr-1" and refusal.reason == "invalid_address"
        assert "SMTPUTF8" in refusal.detail and "(smtputf8_unsupported)" in refusal.detail
        subscriber = session.scalars(select(Subscriber)).one()
        assert (subscriber.email, subscriber.ascii_email) == ("читатель@пример.рф", None)
