"""The suppression list: addresses we must not mail, each with a reason and its source event.

Entries are looked up by a keyed hash (HMAC-SHA256 of the case-folded address) so that an erased
person stays suppressed without their address being kept, and so that hashed lists can be imported.

Operator work on the list (the ``newsletter suppressions`` commands): lift an entry, list,
import and export CSV.

CSV columns: ``email``, ``email_sha256-hmac``, ``reason``, ``created_at`` (ISO 8601, UTC).
An export always fills ``email_sha256-hmac`` (HMAC-SHA256 of the case-folded address keyed with the
secret key, :func:`worker.subscriptions.suppressions.email_hash`) and ``email`` when the address is
kept; an
import row needs one of the two. Hashed rows carry over only between installations that share
``NEWSLETTER_SECRET_KEY`` (the hash is keyed), which is the point: the list names nobody.

Lifting (``remove``) keeps the entry for audit (``removed_at``, ``removed_reason``). Rule for the
subscribers it covered: one whose status is ``suppressed`` and whose address the entry matched is
restored to ``confirmed`` only if they had confirmed and had not unsubscribed since (a complaint
also unsubscribes, so a lifted complaint leaves them ``unsubscribed``); otherwise they become
``unsubscribed``: lifting a suppression never subscribes anyone who did not consent
(:func:`worker.subscriptions.lifecycle.lift_suppression`).
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.models import Subscriber, Suppression
from worker.safety.csv_cells import read_cell, write_cell
from worker.subscriptions import lifecycle
from worker.subscriptions.addresses import dedupe_key_of


def email_hash(dedupe_key: str, hash_key: str) -> str:
    """Hex HMAC-SHA256 of a de-duplication key (see
    ``worker.subscriptions.addresses.Address.dedupe_key``)."""
    return hmac.new(hash_key.encode(), dedupe_key.encode(), hashlib.sha256).hexdigest()


def is_suppressed(session: Session, hashed: str) -> bool:
    """Whether an active (not removed) suppression exists for the hashed address."""
    return (
        session.scalar(
            select(Suppression.id).where(
                Suppression.email_hash == hashed, Suppression.removed_at.is_(None)
            )
        )
        is not None
    )


def suppress(
    session: Session,
    *,
    dedupe_key: str,
    hash_key: str,
    reason: str,
    now: datetime,
    source_event_id: int | None = None,
    keep_address: bool = True,
) -> Suppression:
    """Add a suppression (or return the active one) and mark matching subscribers suppressed.

    ``reason``: ``hard_bounce``, ``complaint``, ``soft_bounce_limit``, ``erasure``, ``manual``,
    ``import``.
    """
    hashed = email_hash(dedupe_key, hash_key)
    existing = session.scalar(
        select(Suppression).where(
            Suppression.email_hash == hashed, Suppression.removed_at.is_(None)
        )
    )
    if existing is None:
        existing = Suppression(
            email_hash=hashed,
            email=dedupe_key if keep_address else None,
            reason=reason,
            source_event_id=source_event_id,
            created_at=now,
        )
        session.add(existing)
    lifecycle.suppress(session, dedupe_key, now)
    session.flush()
    return existing


COLUMNS = ("email", "email_sha256-hmac", "reason", "created_at")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Removal:
    """What ``remove`` did: entries lifted, subscribers restored (to confirmed / unsubscribed)."""

    lifted: int
    confirmed: int
    unsubscribed: int


def remove(session: Session, address: str, *, reason: str, hash_key: str, now: datetime) -> Removal:
    """Lift the active suppression of ``address`` and restore its subscribers (module rule)."""
    if not reason.strip():
        raise ValueError("a reason is required to lift a suppression")
    key = dedupe_key_of(address)
    hashed = email_hash(key, hash_key)
    entries = list(
        session.scalars(
            select(Suppression).where(
                Suppression.email_hash == hashed, Suppression.removed_at.is_(None)
            )
        )
    )
    for entry in entries:
        entry.removed_at, entry.removed_reason = now, reason.strip()
    confirmed = unsubscribed = 0
    if entries:
        confirmed, unsubscribed = lifecycle.lift_suppression(session, key, now)
    session.flush()
    return Removal(len(entries), confirmed, unsubscribed)


def entries(session: Session, *, include_removed: bool = False) -> Iterator[Suppression]:
    """Suppressions, oldest first; lifted ones only with ``include_removed``."""
    query = select(Suppression).order_by(Suppression.id)
    if not include_removed:
        query = query.where(Suppression.removed_at.is_(None))
    yield from session.scalars(query.execution_options(yield_per=1000))


def export_csv(session: Session, out: IO[str]) -> int:
    """Write the active suppressions as CSV (module columns) to ``out``; returns the row count.
    Cells that a spreadsheet would run as a formula are escaped (``worker.safety.csv_cells``)."""
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    count = 0
    for entry in entries(session):
        row = [entry.email or "", entry.email_hash, entry.reason, entry.created_at.isoformat()]
        writer.writerow([write_cell(cell) for cell in row])
        count += 1
    return count


@dataclass(frozen=True)
class ImportResult:
    """Rows added, rows already suppressed, and refused rows as (line number, why)."""

    added: int
    existing: int
    refused: list[tuple[int, str]]


def import_csv(session: Session, source: IO[str], *, hash_key: str, now: datetime) -> ImportResult:
    """Add the rows of a CSV with a header naming ``email`` and/or ``email_sha256-hmac``
    (``reason`` defaults to ``import``; ``created_at`` to ``now``). Matching subscribers become
    ``suppressed``. Refuses rows with neither column or a hash that is not 64 hex digits."""
    reader = csv.DictReader(source)
    fields = set(reader.fieldnames or ())
    if not fields & {"email", "email_sha256-hmac"}:
        raise ValueError("the CSV header must name an email or email_sha256-hmac column")
    added = existing = 0
    refused: list[tuple[int, str]] = []
    hashed_only: set[str] = set()
    for line, row in enumerate(reader, start=2):
        email = read_cell((row.get("email") or "").strip())
        hashed = read_cell((row.get("email_sha256-hmac") or "").strip()).lower()
        reason = (read_cell((row.get("reason") or "").strip()) or "import")[:32]
        created = _time(row.get("created_at")) or now
        if email:
            hashed = email_hash(dedupe_key_of(email), hash_key)
        elif not _HEX64.match(hashed):
            refused.append((line, "neither an email nor a 64-hex-digit hash"))
            continue
        if _active(session, hashed):
            existing += 1
            continue
        if email:
            entry = suppress(
                session, dedupe_key=dedupe_key_of(email), hash_key=hash_key, reason=reason, now=now
            )
        else:
            entry = Suppression(email_hash=hashed, email=None, reason=reason, created_at=now)
            session.add(entry)
            hashed_only.add(hashed)
        entry.created_at = created
        session.flush()
        added += 1
    _suppress_hashed_subscribers(session, hashed_only, hash_key, now)
    return ImportResult(added, existing, refused)


def _active(session: Session, hashed: str) -> bool:
    return (
        session.scalar(
            select(Suppression.id).where(
                Suppression.email_hash == hashed, Suppression.removed_at.is_(None)
            )
        )
        is not None
    )


def _suppress_hashed_subscribers(
    session: Session, hashes: set[str], hash_key: str, now: datetime
) -> None:
    """Hashed rows name nobody: find the subscribers by hashing every address (one pass)."""
    if not hashes:
        return
    rows: Iterable[tuple[int, str]] = session.execute(select(Subscriber.id, Subscriber.email)).all()
    matched = [sid for sid, email in rows if email_hash(dedupe_key_of(email), hash_key) in hashes]
    lifecycle.suppress_ids(session, matched, now)
    session.flush()


def _time(value: str | None) -> datetime | None:
    try:
        parsed = datetime.fromisoformat((value or "").strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
