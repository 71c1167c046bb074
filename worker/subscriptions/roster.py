"""The roster: who is on the list, filtered and counted (``newsletter subscribers list|count``,
the dashboard's readers card).

A reader's *source* is where they came from: ``signup`` (the website's double opt-in) or the
mark of the import that brought them, ``import:<format>:<file name>`` (its ``Consent`` row, see
:mod:`worker.subscriptions.imports`). Filters combine with AND; a source filter matches
``signup`` exactly, otherwise any source that starts with ``import:<filter>`` or the filter.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session, aliased

from worker.models import Consent, Subscriber
from worker.subscriptions.addresses import provider_bucket
from worker.subscriptions.imports import IMPORT_METHODS

GROUPS = ("status", "language", "domain", "source")
_imported = aliased(Consent)
_SOURCE = func.coalesce(_imported.source, "signup")


@dataclass(frozen=True)
class Filters:
    """Each None filter matches everyone; ``domain`` is the ASCII (A-label) domain."""

    language: str | None = None
    status: str | None = None
    domain: str | None = None
    source: str | None = None


@dataclass(frozen=True)
class Reader:
    """One roster line."""

    id: int
    email: str
    status: str
    language: str
    domain: str
    source: str
    created_at: datetime
    confirmed_at: datetime | None


def _joined(query: Any) -> Any:
    return query.outerjoin(
        _imported,
        and_(_imported.subscriber_id == Subscriber.id, _imported.method.in_(IMPORT_METHODS)),
    )


def _where(query: Any, filters: Filters) -> Any:
    conditions: list[ColumnElement[bool]] = []
    if filters.language:
        conditions.append(Subscriber.language == filters.language)
    if filters.status:
        conditions.append(Subscriber.status == filters.status)
    if filters.domain:
        # stored domains are provider buckets: "googlemail.com" finds "gmail.com"
        conditions.append(Subscriber.domain == provider_bucket(_ascii_domain(filters.domain)))
    if filters.source == "signup":
        conditions.append(_imported.id.is_(None))
    elif filters.source:
        prefix = filters.source.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        conditions.append(
            or_(
                _imported.source.like(f"import:{prefix}%", escape="\\"),
                _imported.source.like(f"{prefix}%", escape="\\"),
            )
        )
    return query.where(*conditions)


def _ascii_domain(domain: str) -> str:
    import idna

    text = domain.strip().lower().rstrip(".")
    try:
        return idna.encode(text, uts46=True).decode("ascii")
    except idna.IDNAError:
        return text


def readers(
    session: Session, filters: Filters, *, limit: int | None = None, offset: int = 0
) -> Iterator[Reader]:
    """The readers matching ``filters``, oldest first, ``limit`` of them from ``offset``."""
    query = _where(
        _joined(
            select(
                Subscriber.id,
                Subscriber.email,
                Subscriber.status,
                Subscriber.language,
                Subscriber.domain,
                _SOURCE,
                Subscriber.created_at,
                Subscriber.confirmed_at,
            )
        ),
        filters,
    ).order_by(Subscriber.id)
    query = query.offset(offset or None).limit(limit)
    for row in session.execute(query.execution_options(yield_per=1000)):
        yield Reader(row[0], row[1], str(row[2]), row[3], row[4], row[5], row[6], row[7])


def count(
    session: Session, filters: Filters, by: tuple[str, ...] = ()
) -> dict[tuple[str, ...], int]:
    """How many readers match ``filters``, grouped by the fields ``by`` (of ``GROUPS``): keys are
    tuples of the group values (``()`` for the total). Raises ``ValueError`` for another field."""
    unknown = [name for name in by if name not in GROUPS]
    if unknown:
        raise ValueError(f"cannot group by {unknown}: one of {', '.join(GROUPS)}")
    columns = {
        "status": Subscriber.status,
        "language": Subscriber.language,
        "domain": Subscriber.domain,
        "source": _SOURCE,
    }
    selected = [columns[name] for name in by]
    query = select(*selected, func.count(Subscriber.id))
    if "source" in by or filters.source:  # the join costs a lookup per reader: only if needed
        query = _joined(query)
    query = _where(query, filters)
    if selected:
        query = query.group_by(*selected)
    out: dict[tuple[str, ...], int] = {}
    for row in session.execute(query):
        out[tuple(str(value) for value in row[:-1])] = int(row[-1])
    return dict(sorted(out.items(), key=lambda item: (-item[1], item[0])))
