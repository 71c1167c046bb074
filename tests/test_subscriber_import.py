"""``newsletter subscribers import|list|count``: moving a list in from Mailchimp, listmonk,
Substack, Ghost, Mailman 3 and a plain CSV (real-shaped exports in tests/payloads/exports),
on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import replace
from datetime import UTC, datetime
from email import message_from_bytes
from email.policy import default
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.stub_worker import StubWorker
from worker.cli import main
from worker.devtools.outbox import OutboxServer
from worker.models import Consent, Subscriber, Suppression
from worker.operators.dashboard import overview
from worker.runtime import Runtime
from worker.settings import Settings
from worker.states import SubscriberStatus
from worker.subscriptions.addresses import AddressError, BulkParser, parse_address
from worker.subscriptions.exports import language_of
from worker.subscriptions.signups import confirm, confirmation_token
from worker.subscriptions.suppressions import email_hash
from worker.web.app import create_app

EXPORTS = Path(__file__).parent / "payloads" / "exports"


@pytest.fixture
def cli(settings: Settings, rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for name in ("database_url", "redis_url", "smtp_url", "secret_key", "newsletter_path"):
        monkeypatch.setenv(f"NEWSLETTER_{name.upper()}", str(getattr(settings, name)))
    monkeypatch.setenv("NEWSLETTER_PUBLIC_URL", settings.public_url)
    return CliRunner()


def run(cli: CliRunner, *args: str) -> Result:
    result = cli.invoke(main, ["subscribers", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def load(cli: CliRunner, fmt: str, name: str, *extra: str) -> Result:
    return run(cli, "import", str(EXPORTS / name), "--format", fmt, *extra)


def state(rt: Runtime) -> dict[str, tuple[str, str]]:
    """Every subscriber: address → (status, language)."""
    with rt.session() as session:
        return {
            s.email: (str(s.status), s.language)
            for s in session.scalars(select(Subscriber).order_by(Subscriber.id))
        }


def suppressed(rt: Runtime) -> dict[str | None, str]:
    with rt.session() as session:
        return {
            s.email: s.reason
            for s in session.scalars(select(Suppression).where(Suppression.removed_at.is_(None)))
        }


def consent(rt: Runtime, address: str) -> Consent:
    with rt.session() as session:
        return session.scalars(
            select(Consent).join(Subscriber).where(Subscriber.email_key == address)
        ).one()


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_mailchimp_audience_export_keeps_consent_evidence_and_suppresses_the_rest(
    rt: Runtime, cli: CliRunner
) -> None:
    # Given Mailchimp's three audience files
    # When the subscribed, unsubscribed and cleaned files are imported
    subscribed = load(cli, "mailchimp", "mailchimp_subscribed_members_export_4f2a91.csv")
    load(cli, "mailchimp", "mailchimp_unsubscribed_members_export_4f2a91.csv")
    load(cli, "mailchimp", "mailchimp_cleaned_members_export_4f2a91.csv")

    # Then subscribed readers are confirmed in their language (be_BY, ru, English, fr → default)
    assert state(rt) == {
        "alesia@example.org": ("confirmed", "be"),
        "Boris@example.org": ("confirmed", "ru"),
        "carol@example.org": ("confirmed", "en"),
        "dmitry@example.org": ("confirmed", "en"),
    }
    # and keep when and from where they opted in and confirmed, marked with the source
    alesia = consent(rt, "alesia@example.org")
    assert (alesia.signed_up_at, alesia.ip, alesia.confirmed_at, alesia.confirm_ip) == (
        utc("2023-03-01 08:15:02"), "198.51.100.0/24",
        utc("2023-03-01 08:16:40"), "198.51.100.0/24",
    )  # fmt: skip
    assert (alesia.method, alesia.source) == (
        "import",
        "import:mailchimp:mailchimp_subscribed_members_export_4f2a91.csv",
    )
    assert consent(rt, "Boris@example.org").confirm_ip == "203.0.113.0/24"
    carol = consent(rt, "carol@example.org")  # single opt-in: no confirmation in the export
    assert (carol.method, carol.signed_up_at, carol.confirmed_at) == (
        "import", utc("2021-06-05 12:00:00"), None,
    )  # fmt: skip
    assert consent(rt, "dmitry@example.org").method == "import_unverified"
    # unsubscribed and cleaned rows are suppressions, never subscribers
    assert suppressed(rt) == {
        "fiona@example.org": "import_unsubscribed",
        "gleb@example.org": "import_unsubscribed",
        "hanna@example.org": "import_cleaned",
    }
    # and the bad rows are reported with their line and reason; the good ones imported
    assert "mailchimp_subscribed_members_export_4f2a91.csv:6: refused: address refused" in (
        subscribed.output
    )
    assert ":7: refused: OPTIN_TIME 'yesterday' is not a date and time" in subscribed.output
    assert "imported: 3" in subscribed.output
    assert "imported unverified: 1" in subscribed.output
    assert "duplicate in file: 1" in subscribed.output
    assert "refused: 2" in subscribed.output
    assert "language not one of the newsletter's, default used: 1" in subscribed.output


def test_show_says_why_an_imported_reader_has_no_consent_text(rt: Runtime, cli: CliRunner) -> None:
    # Given readers imported from Mailchimp, with and without consent evidence
    load(cli, "mailchimp", "mailchimp_subscribed_members_export_4f2a91.csv")

    # When an operator looks at them
    alesia = run(cli, "show", "alesia@example.org").output
    dmitry = run(cli, "show", "dmitry@example.org").output

    # Then the consent line says where they came from and why no consent text is named,
    # not a bare "(text -)"
    assert (
        "via import:mailchimp:mailchimp_subscribed_members_export_4f2a91.csv "
        "(imported with its evidence; the export names no consent text)"
    ) in alesia
    assert "(imported without consent evidence)" in dmitry
    assert "(text -)" not in alesia + dmitry


def test_reimporting_changes_nothing_and_never_downgrades(rt: Runtime, cli: CliRunner) -> None:
    # Given an imported Mailchimp list, where one reader unsubscribed here since
    load(cli, "mailchimp", "mailchimp_subscribed_members_export_4f2a91.csv")
    with rt.session() as session:
        boris = session.scalars(
            select(Subscriber).where(Subscriber.email_key == "boris@example.org")
        ).one()
        boris.status, boris.unsubscribed_at = "unsubscribed", rt.clock.now()  # type: ignore[assignment]
    before = state(rt)
    with rt.session() as session:
        consents = session.scalars(select(Consent.id)).all()

    # When the same file is imported again
    again = load(cli, "mailchimp", "mailchimp_subscribed_members_export_4f2a91.csv")

    # Then nothing changed: no reader re-subscribed, no consent added
    assert state(rt) == before
    assert before["Boris@example.org"] == ("unsubscribed", "ru")
    with rt.session() as session:
        assert session.scalars(select(Consent.id)).all() == consents
    assert "already known: 4" in again.output


def test_a_reader_who_confirmed_here_after_leaving_there_is_not_suppressed(
    rt: Runtime, cli: CliRunner, tmp_path: Path
) -> None:
    # Given fiona (unsubscribed at Mailchimp on 2024-02-01) confirmed here later, gleb before
    path = tmp_path / "confirmed_here.csv"
    path.write_text(
        "email,confirmed_at\n"
        "fiona@example.org,2024-03-01T00:00:00Z\n"
        "gleb@example.org,2020-01-01T00:00:00Z\n",
        encoding="utf-8",
    )
    load(cli, "csv", str(path))

    # When the unsubscribed file comes in
    result = load(cli, "mailchimp", "mailchimp_unsubscribed_members_export_4f2a91.csv")

    # Then fiona's newer consent stands and gleb is suppressed
    assert state(rt) == {
        "fiona@example.org": ("confirmed", "en"),
        "gleb@example.org": ("suppressed", "en"),
    }
    assert suppressed(rt) == {"gleb@example.org": "import_unsubscribed"}
    assert "kept confirmed here: 1" in result.output


def test_suppressed_addresses_are_never_imported(
    rt: Runtime, cli: CliRunner, tmp_path: Path
) -> None:
    # Given an erased person (hash-only suppression) and a bounced one
    run(cli, "erase", "--yes", "ivan@example.org")
    load(cli, "mailchimp", "mailchimp_cleaned_members_export_4f2a91.csv")
    path = tmp_path / "suppressed.csv"
    path.write_text("email\nIVAN@example.org\nhanna@example.org\nnew@example.org\n", "utf-8")
    result = load(cli, "csv", str(path))

    assert state(rt) == {"new@example.org": ("confirmed", "en")}
    assert "already suppressed: 2" in result.output


def test_listmonk_substack_ghost_and_mailman_exports(rt: Runtime, cli: CliRunner) -> None:
    listmonk = load(cli, "listmonk", "listmonk_subscribers.csv")
    load(cli, "substack", "substack_email_list.csv")
    ghost = load(cli, "ghost", "ghost_members.csv")
    mailman = load(cli, "mailman", "mailman_members.txt", "--language", "be")

    assert state(rt) == {
        "ivan@example.org": ("confirmed", "be"),  # listmonk attributes {"language": "be"}
        "julia@example.org": ("confirmed", "en"),
        "nadia@example.org": ("confirmed", "en"),
        "polina@example.org": ("confirmed", "en"),
        "roman@example.org": ("confirmed", "en"),
        "vera@example.org": ("confirmed", "be"),
        "wiktor@example.org": ("confirmed", "be"),
        "yan@example.org": ("confirmed", "be"),
    }
    assert consent(rt, "ivan@example.org").signed_up_at == datetime(
        2023, 4, 12, 9, 30, 11, 123456, tzinfo=UTC
    )
    assert consent(rt, "julia@example.org").source == "import:listmonk:listmonk_subscribers.csv"
    assert consent(rt, "roman@example.org").signed_up_at == utc("2023-05-01 10:00:00")
    assert consent(rt, "vera@example.org").method == "import_unverified"
    assert suppressed(rt) == {
        "kiril@example.org": "import_blocklisted",
        "oleg@example.org": "import_unsubscribed",  # Substack email_disabled
        "sofia@example.org": "import_unsubscribed",  # Ghost subscribed_to_emails false
        None: "import_deleted",  # Ghost deleted_at: the keyed hash only
    }
    with rt.session() as session:
        taras = email_hash("taras@example.org", rt.settings.secret_key)
        assert session.scalars(select(Suppression.email_hash)).all().count(taras) == 1
    assert ":6: refused: attributes is not JSON" in listmonk.output
    assert "skipped: 1" in listmonk.output  # lena, disabled
    assert ":5: refused: subscribed_to_emails 'maybe' is not true or false" in ghost.output
    assert ":5: refused: not a member line" in mailman.output


def test_plain_csv_with_a_column_map(rt: Runtime, cli: CliRunner) -> None:
    result = load(
        cli,
        "csv",
        "plain_readers.csv",
        "--map",
        "email=Mail,language=Lang,opted_in_at=Joined,status=State",
    )

    assert state(rt) == {
        "zoya@example.org": ("confirmed", "ru"),
        "adam@example.org": ("confirmed", "be"),
    }
    assert consent(rt, "zoya@example.org").signed_up_at == utc("2024-01-15 05:00:00")
    assert suppressed(rt) == {"bella@example.org": "import_unsubscribed"}
    assert ":5: refused: status 'lost' is not one of" in result.output


def test_a_file_that_is_not_the_format_says_so(rt: Runtime, cli: CliRunner) -> None:
    result = cli.invoke(
        main,
        ["subscribers", "import", str(EXPORTS / "ghost_members.csv"), "--format", "mailchimp"],
    )
    assert result.exit_code == 1
    assert "has no 'Email Address' column: is this a mailchimp export?" in result.output
    assert state(rt) == {}


def test_dry_run_counts_and_changes_nothing(rt: Runtime, cli: CliRunner) -> None:
    result = load(cli, "mailchimp", "mailchimp_unsubscribed_members_export_4f2a91.csv", "--dry-run")
    assert "dry run, nothing changed: would be 2 rows" in result.output
    assert "suppression added: 2" in result.output
    assert suppressed(rt) == {}


def test_pending_readers_get_a_throttled_re_permission_mail_in_their_language(
    rt: Runtime, cli: CliRunner, smtp: OutboxServer, stub_worker: StubWorker
) -> None:
    # Given a Mailman roster (no consent evidence) in Russian
    # When it is imported with --pending
    result = load(
        cli, "mailman", "mailman_members.txt", "--pending", "--language", "ru",
        "--confirm-rate", "1000",
    )  # fmt: skip
    stub_worker.join()

    # Then the readers are pending and each got the re-permission wording of the confirmation
    assert set(state(rt).values()) == {("pending", "ru")}
    assert "re-permission mails enqueued: 3" in result.output
    received = smtp.handler.received
    assert sorted(r.recipients[0] for r in received) == [
        "vera@example.org", "wiktor@example.org", "yan@example.org",
    ]  # fmt: skip
    mails = [message_from_bytes(r.data, policy=default) for r in received]
    assert {str(m["Subject"]) for m in mails} == {
        "Вы по-прежнему хотите получать «Еженедельный анализ: Беларусь»?"
    }
    body = mails[0].get_body(("plain",))
    assert body is not None
    text = " ".join(body.get_content().split())  # the text part is wrapped at 72 columns
    assert "через наш прежний сервис рассылок" in text
    assert "который переехал сюда с другого сервиса" in text
    # And confirming it confirms them, the consent keeps when
    with rt.session() as session:
        vera = session.scalars(
            select(Subscriber).where(Subscriber.email_key == "vera@example.org")
        ).one()
        confirm(
            session, rt.tokens, confirmation_token(rt.tokens, vera),
            max_age_seconds=3600, now=rt.clock.now(), ip="192.0.2.9", user_agent="UA",
        )  # fmt: skip
    record = consent(rt, "vera@example.org")
    assert (record.method, record.confirm_ip) == ("re_permission", "192.0.2.0/24")
    assert state(rt)["vera@example.org"] == ("confirmed", "ru")


def test_list_and_count_filter_page_and_group(rt: Runtime, cli: CliRunner) -> None:
    load(cli, "mailchimp", "mailchimp_subscribed_members_export_4f2a91.csv")
    load(cli, "mailman", "mailman_members.txt", "--language", "be")

    page = run(cli, "list", "--status", "confirmed", "--limit", "2", "--offset", "1")
    by_language = run(cli, "count", "--by", "language", "--csv")
    mailman = run(cli, "count", "--source", "mailman")
    in_csv = run(cli, "list", "--language", "be", "--csv", "--all")

    assert [line.split()[0] for line in page.stdout.splitlines()] == [
        "Boris@example.org", "carol@example.org",
    ]  # fmt: skip
    assert list(csv.reader(io.StringIO(by_language.stdout))) == [
        ["language", "count"], ["be", "4"], ["en", "2"], ["ru", "1"],
    ]  # fmt: skip
    assert mailman.stdout.strip() == "3"
    rows = list(csv.DictReader(io.StringIO(in_csv.stdout)))
    assert [(r["email"], r["source"]) for r in rows] == [
        ("alesia@example.org", "import:mailchimp:mailchimp_subscribed_members_export_4f2a91.csv"),
        ("vera@example.org", "import:mailman:mailman_members.txt"),
        ("wiktor@example.org", "import:mailman:mailman_members.txt"),
        ("yan@example.org", "import:mailman:mailman_members.txt"),
    ]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("be_BY", "be"), ("ru-RU", "ru"), ("English", "en"), ("Русский", "ru"), ("fr", None),
     ("", None), ("BE", "be"), ("rus", "ru")],
)  # fmt: skip
def test_language_codes_of_other_systems(raw: str, expected: str | None) -> None:
    assert language_of(raw, ("en", "be", "ru")) == expected


def test_dashboard_shows_readers_by_status_language_and_source(
    rt: Runtime, cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given two imports (4 confirmed readers from Mailchimp, 3 from Mailman, 2 suppressed)
    load(cli, "mailchimp", "mailchimp_subscribed_members_export_4f2a91.csv")
    load(cli, "mailman", "mailman_members.txt", "--language", "be")
    with rt.session() as session:
        session.scalars(
            select(Subscriber).where(Subscriber.email_key == "yan@example.org")
        ).one().status = SubscriberStatus.UNSUBSCRIBED

    # When the operator opens the dashboard
    operator = Runtime(replace(rt.settings, operator_password="pw-0123456789"))
    try:
        with operator.session() as session:
            numbers = overview(session, operator.clock.now()).readers
        page = TestClient(create_app(operator)).get(
            "/dashboard", auth=("operator", "pw-0123456789")
        )
    finally:
        operator.close()

    # Then the numbers are those of `subscribers count`, and the page shows them
    assert numbers.by_status_language == {
        ("confirmed", "be"): 3, ("confirmed", "en"): 2, ("confirmed", "ru"): 1,
        ("unsubscribed", "be"): 1,
    }  # fmt: skip
    assert numbers.by_source == {
        "import:mailchimp:mailchimp_subscribed_members_export_4f2a91.csv": 4,
        "import:mailman:mailman_members.txt": 3,
    }
    assert numbers.total("confirmed") == 6 and numbers.total(None, "be") == 4
    assert page.status_code == 200
    section = page.text.split('<section id="readers">', 1)[1].split("</section>", 1)[0]
    cells = re.findall(r"<t[dh]>([^<]*)</t[dh]>", section)
    assert cells[:5] == ["status", "be", "en", "ru", "all"]
    assert cells[5:10] == ["confirmed", "3", "2", "1", "6"]
    assert cells[10:15] == ["unsubscribed", "1", "0", "0", "1"]
    assert cells[15:20] == ["all", "4", "2", "1", "7"]
    assert "import:mailman:mailman_members.txt" in section
    # and imported readers are no signups in the per-day chart
    assert all(day.signups == 0 for day in numbers_signups(rt))


def numbers_signups(rt: Runtime) -> list[Any]:
    with rt.session() as session:
        return overview(session, rt.clock.now()).signups


BULK_CASES = [
    "Ivan.Petrov@Example.ORG", " b@EXAMPLE.org ", "user+tag@sub.example.org", "a@прыклад.бел",
    "a@xn--80aiqesg1f.xn--90ais", "чытач@прыклад.бел", '"quoted name"@example.org',
    "a..b@example.org", "a@example.org.", "x" * 70 + "@example.org", "a@b", "a@-x.org",
    "no-at", "a@@example.org", "a@example.org@example.org", "a@disposable.example.net",
    "a@sub.disposable.example.net", "", "a" * 330 + "@example.org",
]  # fmt: skip


@pytest.mark.parametrize("raw", BULK_CASES)
@pytest.mark.parametrize("smtputf8", [True, False])
def test_the_bulk_parser_gives_what_parse_address_gives(raw: str, smtputf8: bool) -> None:
    rules: dict[str, Any] = {
        "allow_smtputf8": smtputf8,
        "blocked_domains": frozenset({"disposable.example.net"}),
    }
    bulk = BulkParser(**rules)

    def outcome(parse: Any) -> object:
        try:
            return parse(raw)
        except AddressError as exc:
            return (exc.code, exc.message)

    # twice: the second answer comes from the domain cache
    assert outcome(bulk) == outcome(bulk) == outcome(lambda a: parse_address(a, **rules))
