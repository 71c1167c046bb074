"""Moving in: the readers of another system's export become subscribers or suppressions.

Rules (issue 14 §1), for rows read by :mod:`worker.subscriptions.exports`:

- A reader who is subscribed there becomes ``confirmed`` here, with the consent evidence the
  export has (opt-in and confirmation time and IP) in a ``Consent`` row (``method`` ``import``,
  ``source`` ``import:<format>:<file name>``: "marked imported with the source"). One without any
  evidence (a Mailman roster, a bare CSV) is ``confirmed`` with method ``import_unverified``, or
  with ``pending=True`` becomes ``pending`` (method ``re_permission``) and is asked again by the
  double opt-in confirmation mail in its re-permission wording. Unconfirmed rows are only ever
  imported as pending, and only with ``pending=True``.
- Unsubscribed, cleaned (bounced), blocklisted and deleted rows become suppressions (reason
  ``import_<standing>``; deleted ones by keyed hash only), never subscribers — unless the reader
  confirmed here after leaving there: that newer consent stands.
- A suppressed address is never imported as a subscriber. An address already known here is left
  as it is (never downgraded, never re-subscribed): re-importing a file changes nothing.
- Every bad row is reported with its line number and why; the good rows still import.

Speed: rows go to the database in chunks (``CHUNK``): per chunk one SELECT of known readers
(one index probe per key: :func:`known_readers_statement`), one of active suppressions,
one INSERT of readers per status, one of their consents, one of suppressions (``db.insert_rows``):
a fixed number of statements per chunk, none per row. See ``bench/import_subscribers.py``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from itertools import islice
from typing import Any

from sqlalchemy import Select, Text, bindparam, func, select, true
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from worker.db import insert_rows
from worker.models import Consent, Subscriber, Suppression
from worker.safety.keyring import blind_index
from worker.states import SubscriberStatus
from worker.subscriptions import lifecycle
from worker.subscriptions.addresses import Address, AddressError, BulkParser, provider_bucket
from worker.subscriptions.evidence import network_of
from worker.subscriptions.exports import LEAVING, BadRow, Row, SourceRow, Standing, language_of
from worker.subscriptions.suppressions import email_hash

CHUNK = 1000
IMPORT_METHODS = ("import", "import_unverified", "re_permission")
"""``Consent.method`` of imported readers (left out of the dashboard's signups per day)."""

OUTCOMES = (
    "imported",  # confirmed here, with the export's consent evidence
    "imported_unverified",  # confirmed here, the export had no consent evidence
    "pending",  # imported pending: a re-permission confirmation mail is due
    "suppression_added",  # unsubscribed / cleaned / blocklisted / deleted there
    "already_suppressed",  # the address is on the suppression list: not imported
    "already_known",  # the address is a subscriber here already: left as it is
    "kept_confirmed_here",  # left there, but confirmed here since: not suppressed
    "duplicate_in_file",  # the same address earlier in the file
    "unconfirmed_skipped",  # unconfirmed there; --pending would ask them
    "skipped",  # neither reader nor suppression (e.g. listmonk "disabled")
    "refused",  # a bad row (see ``ImportReport.refused``)
)


@dataclass(frozen=True)
class ImportOptions:
    """How to import: into ``newsletter_id`` with these ``languages`` (the first unmatched or
    missing language falls back to ``default_language``), ``source`` (``format:file``) as the
    mark, ``pending`` for readers without evidence, the address rules of signups (SMTPUTF8 of the
    relay, blocked domains)."""

    newsletter_id: int
    source: str
    languages: tuple[str, ...]
    default_language: str
    hash_key: str
    now: datetime
    pending: bool = False
    allow_smtputf8: bool = True
    blocked_domains: frozenset[str] = frozenset()


@dataclass
class ImportReport:
    """Counts per outcome (``OUTCOMES``), refused rows as (line, why), rows whose language fell
    back to the default, and the ids of readers imported pending (to be asked again)."""

    counts: Counter[str] = field(default_factory=Counter)
    refused: list[tuple[int, str]] = field(default_factory=list)
    language_defaulted: int = 0
    pending_ids: list[int] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class _Valid:
    row: SourceRow
    address: Address
    hashed: str


def import_rows(
    session: Session,
    rows: Iterable[Row],
    options: ImportOptions,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Apply ``rows`` (module rules) in chunks of ``CHUNK``; returns the report. Flushes, does
    not commit: the caller commits (or rolls back, for a dry run). ``progress`` is called with
    the number of rows of each chunk done."""
    report = ImportReport()
    seen: set[str] = set()
    parse = BulkParser(
        allow_smtputf8=options.allow_smtputf8, blocked_domains=options.blocked_domains
    )
    for chunk in _chunks(iter(rows)):
        valid = [v for v in (_validate(r, options, parse, report, seen) for r in chunk) if v]
        if valid:
            _apply(session, valid, options, report)
        if progress is not None:
            progress(len(chunk))
    return report


def _chunks(rows: Iterator[Row]) -> Iterator[list[Row]]:
    while chunk := list(islice(rows, CHUNK)):
        yield chunk


def _validate(
    row: Row, options: ImportOptions, parse: BulkParser, report: ImportReport, seen: set[str]
) -> _Valid | None:
    if isinstance(row, BadRow):
        _refuse(report, row.line, row.reason)
        return None
    try:
        address = parse(row.email)
    except AddressError as exc:
        _refuse(report, row.line, f"address refused: {exc.message}")
        return None
    if row.standing is Standing.SKIPPED:
        report.counts["skipped"] += 1
        return None
    if address.dedupe_key in seen:
        report.counts["duplicate_in_file"] += 1
        return None
    seen.add(address.dedupe_key)
    if row.standing is Standing.UNCONFIRMED and not options.pending:
        report.counts["unconfirmed_skipped"] += 1
        return None
    return _Valid(row, address, email_hash(address.dedupe_key, options.hash_key))


def _refuse(report: ImportReport, line: int, reason: str) -> None:
    report.counts["refused"] += 1
    report.refused.append((line, reason))


def _apply(
    session: Session, valid: list[_Valid], options: ImportOptions, report: ImportReport
) -> None:
    known = _known_readers(session, options.newsletter_id, [v.address.dedupe_key for v in valid])
    suppressed = _active_suppressions(session, [v.hashed for v in valid])
    readers: dict[SubscriberStatus, list[_Valid]] = {
        SubscriberStatus.CONFIRMED: [],
        SubscriberStatus.PENDING: [],
    }
    leaving: list[_Valid] = []
    for v in valid:
        outcome = _outcome(v, known.get(v.address.dedupe_key), v.hashed in suppressed, options)
        if outcome == "suppression_added":
            leaving.append(v)
        elif outcome in ("imported", "imported_unverified"):
            readers[SubscriberStatus.CONFIRMED].append(v)
        elif outcome == "pending":
            readers[SubscriberStatus.PENDING].append(v)
        report.counts[outcome] += 1
    for status, group in readers.items():
        ids = _insert_readers(session, group, status, options, report)
        if status == SubscriberStatus.PENDING:
            report.pending_ids.extend(ids)
    _add_suppressions(session, leaving, options)
    session.flush()


@dataclass(frozen=True)
class _Known:
    """What the rules need of a reader already here (no address: nothing is decrypted)."""

    status: SubscriberStatus
    confirmed_at: datetime | None


def known_readers_statement(
    dialect: str, newsletter_id: int, indexes: list[str]
) -> Select[str, SubscriberStatus, datetime | None]:
    """The look-up of one chunk's readers already in ``newsletter_id``: ``indexes`` are blind
    indexes (``keyring.blind_index`` of dedupe keys); the rows give (email_key, status,
    confirmed_at) of those found.

    On PostgreSQL: ``unnest(:keys) CROSS JOIN LATERAL (… WHERE email_key = key LIMIT 1)``, one
    array parameter and one probe of the unique (newsletter_id, email_key) index per key,
    whatever the table's statistics (the LIMIT keeps the planner from flattening it into a join).
    Measured on 100,000 readers (issue 14): ``email_key = ANY(:keys)`` and a plain join with
    ``unnest`` were planned as scans of the whole newsletter (60–150 ms per 1,000 keys while the
    table has no statistics yet, i.e. during an import), this 14 ms. Elsewhere (SQLite) ``IN``.
    """
    if dialect != "postgresql":
        return select(Subscriber.email_key, Subscriber.status, Subscriber.confirmed_at).where(
            Subscriber.newsletter_id == newsletter_id, Subscriber.email_key.in_(indexes)
        )
    keys = _keys_table(indexes)
    found = (
        select(Subscriber.email_key, Subscriber.status, Subscriber.confirmed_at)
        .where(Subscriber.newsletter_id == newsletter_id, Subscriber.email_key == keys.c.key)
        .limit(1)
        .lateral("found")
    )
    return select(found.c.email_key, found.c.status, found.c.confirmed_at).select_from(
        keys.join(found, true())
    )


def active_suppressions_statement(dialect: str, hashes: list[str]) -> Select[str]:
    """The keyed hashes (``suppressions.email_hash``) among ``hashes`` that are actively
    suppressed; on PostgreSQL a probe of ``ix_suppression_hash_active`` per hash, as
    :func:`known_readers_statement`."""
    if dialect != "postgresql":
        return select(Suppression.email_hash).where(
            Suppression.email_hash.in_(hashes), Suppression.removed_at.is_(None)
        )
    keys = _keys_table(hashes)
    found = (
        select(Suppression.email_hash)
        .where(Suppression.email_hash == keys.c.key, Suppression.removed_at.is_(None))
        .limit(1)
        .lateral("found")
    )
    return select(found.c.email_hash).select_from(keys.join(found, true()))


def _known_readers(session: Session, newsletter_id: int, keys: list[str]) -> dict[str, _Known]:
    by_index = {blind_index(key): key for key in keys}  # what the column holds → the caller's key
    statement = known_readers_statement(
        session.get_bind().dialect.name, newsletter_id, list(by_index)
    )
    return {
        by_index[index]: _Known(status, confirmed_at)
        for index, status, confirmed_at in session.execute(statement)
    }


def _active_suppressions(session: Session, hashes: list[str]) -> set[str]:
    statement = active_suppressions_statement(session.get_bind().dialect.name, hashes)
    return set(session.scalars(statement))


def _keys_table(values: list[str]) -> Any:
    """``unnest(:keys) AS keys(key)``: one text-array parameter (values sent as they are, no
    column type's bind processing), a short statement planned once."""
    return (
        func.unnest(bindparam("keys", values, type_=ARRAY(Text())))
        .table_valued("key")
        .render_derived("keys")
    )


def _outcome(v: _Valid, known: _Known | None, suppressed: bool, options: ImportOptions) -> str:
    row = v.row
    if row.standing in LEAVING:
        if suppressed:
            return "already_suppressed"
        if known is not None and _confirmed_here_after(known, row.left_at):
            return "kept_confirmed_here"
        return "suppression_added"
    if suppressed:
        return "already_suppressed"
    if known is not None:
        return "already_known"
    if row.standing is Standing.UNCONFIRMED or (options.pending and not row.has_evidence):
        return "pending"
    return "imported" if row.has_evidence else "imported_unverified"


def _confirmed_here_after(subscriber: _Known, left_at: datetime | None) -> bool:
    """A reader confirmed here after leaving there (or with no time of leaving given) keeps
    that newer consent; a pending, unsubscribed or suppressed one does not."""
    if subscriber.status != SubscriberStatus.CONFIRMED or subscriber.confirmed_at is None:
        return False
    return left_at is None or subscriber.confirmed_at > left_at


def _insert_readers(
    session: Session,
    group: list[_Valid],
    status: SubscriberStatus,
    options: ImportOptions,
    report: ImportReport,
) -> list[int]:
    if not group:
        return []
    languages = {}
    for v in group:
        language = language_of(v.row.language, options.languages)
        if language is None:
            if v.row.language:
                report.language_defaulted += 1
            language = options.default_language
        languages[v.address.dedupe_key] = language
    ids = lifecycle.insert_imported(
        session, [_subscriber_values(v, languages, status, options) for v in group], status
    )
    consents = [
        _consent_values(v, ids[v.address.dedupe_key], languages, status, options)
        for v in group
        if v.address.dedupe_key in ids
    ]
    if consents:
        insert_rows(session, Consent.__table__, consents, conflict=("event_id",))
    return list(ids.values())


def _subscriber_values(
    v: _Valid, languages: dict[str, str], status: SubscriberStatus, options: ImportOptions
) -> dict[str, Any]:
    confirmed = None
    if status == SubscriberStatus.CONFIRMED:
        confirmed = v.row.confirmed_at or v.row.opted_in_at or options.now
    return {
        "newsletter_id": options.newsletter_id,
        "email": v.address.normalized,
        "email_key": v.address.dedupe_key,
        "ascii_email": v.address.ascii_email,
        "domain": provider_bucket(v.address.ascii_domain),
        "language": languages[v.address.dedupe_key],
        "created_at": options.now,
        "updated_at": options.now,
        "confirmed_at": confirmed,
    }


def _consent_values(
    v: _Valid,
    subscriber_id: int,
    languages: dict[str, str],
    status: SubscriberStatus,
    options: ImportOptions,
) -> dict[str, Any]:
    row = v.row
    if status == SubscriberStatus.PENDING:
        method = "re_permission"
    else:
        method = "import" if row.has_evidence else "import_unverified"
    return {
        "subscriber_id": subscriber_id,
        # one import consent per reader and newsletter, whatever the file: a re-import adds none
        "event_id": f"import:{options.newsletter_id}:{v.hashed[:48]}",
        "signed_up_at": row.opted_in_at or row.confirmed_at or options.now,
        "ip": network_of(row.opt_in_ip),  # evidence keeps the network only (evidence.py)
        "user_agent": None,
        "source": options.source[:200],
        "consent_version": None,
        "language": languages[v.address.dedupe_key],
        "method": method,
        "confirmed_at": row.confirmed_at if status == SubscriberStatus.CONFIRMED else None,
        "confirm_ip": network_of(row.confirm_ip) if status == SubscriberStatus.CONFIRMED else None,
        "confirm_user_agent": None,
    }


def _add_suppressions(session: Session, leaving: list[_Valid], options: ImportOptions) -> None:
    if not leaving:
        return
    insert_rows(
        session,
        Suppression.__table__,
        [
            {
                "email_hash": v.hashed,
                # a reader deleted there asked to be forgotten: the keyed hash is enough
                "email": None if v.row.standing is Standing.DELETED else v.address.dedupe_key,
                "reason": f"import_{v.row.standing.value}",
                "source_event_id": None,
                "created_at": v.row.left_at or options.now,
                "removed_at": None,
                "removed_reason": None,
            }
            for v in leaving
        ],
    )
    # suppressions hold for every newsletter: its readers elsewhere are suppressed too
    lifecycle.suppress_keys(session, [v.address.dedupe_key for v in leaving], options.now)
