"""Other systems' subscriber exports, read into one row shape (``SourceRow``); no database.

A newsroom that moves in brings its list from where it lived. Each reader below turns one
system's standard export into ``SourceRow`` values (or ``BadRow`` for a row that cannot be read,
with its line number and why), so that :mod:`worker.subscriptions.imports` applies every format
the same way. Names, notes, tags and payment data are read past, never stored: the project keeps
an address, a language and the consent evidence, nothing else.

=========  =========================================================================================
format     what is read
=========  =========================================================================================
mailchimp  The audience export's files (``subscribed_…``, ``unsubscribed_…``, ``cleaned_…``; the
           kind is told by the header: ``UNSUB_TIME`` = unsubscribed, ``CLEAN_TIME`` = cleaned).
           ``Email Address``; ``OPTIN_TIME``/``OPTIN_IP``, ``CONFIRM_TIME``/``CONFIRM_IP`` (UTC,
           ``YYYY-MM-DD HH:MM:SS``); ``LANGUAGE`` when present; ``UNSUB_TIME``, ``CLEAN_TIME``.
listmonk   Subscribers → Export (``uuid, email, name, attributes, status, created_at,
           updated_at``): ``status`` ``blocklisted`` is suppressed, ``disabled`` skipped;
           ``attributes`` (JSON) may hold ``language``/``lang``/``locale``; an optional
           ``subscription_status`` column (``unconfirmed``, ``confirmed``, ``unsubscribed``).
substack   The subscriber CSV (``email, active_subscription, expiry, email_disabled,
           created_at``): ``email_disabled`` true = the reader turned mail off (unsubscribed);
           ``…@deletion-request.substack.com`` rows are skipped.
ghost      Members → Export (``id, email, name, note, subscribed_to_emails, complimentary_plan,
           stripe_customer_id, created_at, deleted_at, labels, tiers``): ``subscribed_to_emails``
           false = unsubscribed; ``deleted_at`` set = deleted (suppressed by keyed hash only).
mailman    Mailman 3's ``mailman members LIST`` output: one member a line, ``Name <addr>`` or
           ``addr`` (RFC 5322 §3.4 mailbox); ``#`` comments and blank lines are skipped.
csv        Any CSV with a header; ``--map field=Column,...`` names the columns of the fields
           ``email`` (required), ``language``, ``status``, ``opted_in_at``, ``opt_in_ip``,
           ``confirmed_at``, ``confirm_ip``, ``left_at``. Unmapped fields are looked up under
           their own name.
=========  =========================================================================================
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parseaddr
from enum import StrEnum
from ipaddress import ip_address
from typing import IO, Any

FORMATS = ("mailchimp", "listmonk", "substack", "ghost", "mailman", "csv")
CSV_FIELDS = (
    "email",
    "language",
    "status",
    "opted_in_at",
    "opt_in_ip",
    "confirmed_at",
    "confirm_ip",
    "left_at",
)


class Standing(StrEnum):
    """Where a row stood with the system it comes from."""

    SUBSCRIBED = "subscribed"  # received the list there
    UNCONFIRMED = "unconfirmed"  # signed up there, never confirmed: only ever imported as pending
    UNSUBSCRIBED = "unsubscribed"  # asked to leave there: becomes a suppression
    CLEANED = "cleaned"  # bounced there (Mailchimp "cleaned"): becomes a suppression
    BLOCKLISTED = "blocklisted"  # blocked by the old operator (listmonk): becomes a suppression
    DELETED = "deleted"  # deleted there (Ghost): a suppression by keyed hash, no address kept
    SKIPPED = "skipped"  # neither reader nor suppression (listmonk "disabled", Substack deletion)


LEAVING = frozenset(
    {Standing.UNSUBSCRIBED, Standing.CLEANED, Standing.BLOCKLISTED, Standing.DELETED}
)
"""Standings that become suppressions, never subscribers."""


@dataclass(frozen=True)
class SourceRow:
    """One readable row: the address as written, its standing, and what the export says about
    consent (times aware, UTC; IPs as written after validation) and the language (as written)."""

    line: int
    email: str
    standing: Standing
    language: str | None = None
    opted_in_at: datetime | None = None
    opt_in_ip: str | None = None
    confirmed_at: datetime | None = None
    confirm_ip: str | None = None
    left_at: datetime | None = None  # when it unsubscribed, bounced or was deleted there
    note: str | None = None  # why a row is skipped

    @property
    def has_evidence(self) -> bool:
        """Whether the export says when this reader opted in or confirmed."""
        return self.opted_in_at is not None or self.confirmed_at is not None


@dataclass(frozen=True)
class BadRow:
    """A row that could not be read: its line number (1 = the first line of the file) and why."""

    line: int
    reason: str


class ExportError(ValueError):
    """The file as a whole is not the format it was said to be (e.g. a missing email column)."""


Row = SourceRow | BadRow


def read_export(
    fmt: str, source: IO[str], *, mapping: Mapping[str, str] | None = None
) -> Iterator[Row]:
    """The rows of ``source`` (a text stream) read as format ``fmt`` (one of ``FORMATS``).

    ``mapping`` (format ``csv`` only) maps field names (``CSV_FIELDS``) to column names.
    Raises ``ExportError`` at once for an unknown format, a mapping of an unknown field or a
    header without the email column; rows are read lazily, a bad row is yielded as ``BadRow``.
    """
    if fmt == "mailman":
        return _mailman(source)
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")
    reader = csv.reader(source)
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        raise ExportError("the file is empty: no header line") from None
    except csv.Error as exc:
        raise ExportError(f"the header line is not readable as CSV: {exc}") from None
    columns = _columns(fmt, header, mapping or {})
    return _rows(fmt, reader, columns, header[columns["email"]])


_COLUMNS: dict[str, dict[str, str]] = {
    "mailchimp": {
        "email": "Email Address",
        "language": "LANGUAGE",
        "opted_in_at": "OPTIN_TIME",
        "opt_in_ip": "OPTIN_IP",
        "confirmed_at": "CONFIRM_TIME",
        "confirm_ip": "CONFIRM_IP",
    },
    "listmonk": {"email": "email", "status": "status", "opted_in_at": "created_at"},
    "substack": {"email": "email", "opted_in_at": "created_at"},
    "ghost": {"email": "email", "opted_in_at": "created_at", "left_at": "deleted_at"},
}


def _columns(fmt: str, header: list[str], mapping: Mapping[str, str]) -> dict[str, int]:
    """The position in ``header`` of each field the export has (case-insensitive names)."""
    if mapping and fmt != "csv":
        raise ExportError("--map is for --format csv; the other formats know their columns")
    unknown = sorted(set(mapping) - set(CSV_FIELDS))
    if unknown:
        raise ExportError(f"--map names unknown fields {unknown}: known {list(CSV_FIELDS)}")
    columns = {f: mapping.get(f, f) for f in CSV_FIELDS} if fmt == "csv" else dict(_COLUMNS[fmt])
    folded = {name.casefold(): i for i, name in reversed(list(enumerate(header)))}
    found = {f: folded[c.casefold()] for f, c in columns.items() if c.casefold() in folded}
    if "email" not in found:
        raise ExportError(
            f"the header has no {columns['email']!r} column: is this a {fmt} export? "
            f"(columns: {', '.join(header[:12]) or 'none'})"
        )
    if fmt == "mailchimp":
        for field, column in (("left_at", "UNSUB_TIME"), ("cleaned_at", "CLEAN_TIME")):
            if column.casefold() in folded:
                found[field] = folded[column.casefold()]
    if fmt == "listmonk":
        for column in ("attributes", "subscription_status"):
            if column in folded:
                found[column] = folded[column]
    if fmt == "substack" and "email_disabled" in folded:
        found["email_disabled"] = folded["email_disabled"]
    if fmt == "ghost" and "subscribed_to_emails" in folded:
        found["subscribed"] = folded["subscribed_to_emails"]
    return found


def _rows(fmt: str, reader: Any, columns: dict[str, int], email_name: str) -> Iterator[Row]:
    read = _READERS[fmt]
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # e.g. a NUL byte or an unterminated quote
            yield BadRow(reader.line_num, f"not readable as CSV: {exc}")
            return
        line = reader.line_num
        if not any(cell.strip() for cell in record):
            continue  # a blank line
        width = len(record)
        values = {f: record[i].strip() if i < width else "" for f, i in columns.items()}
        if not values["email"]:
            yield BadRow(line, f"no address in column {email_name!r}")
            continue
        try:
            yield read(line, values)
        except ValueError as exc:
            yield BadRow(line, str(exc))


def _mailchimp(line: int, v: dict[str, str]) -> SourceRow:
    standing, left = Standing.SUBSCRIBED, None
    if "cleaned_at" in v:
        standing, left = Standing.CLEANED, _when(v, "cleaned_at", "CLEAN_TIME")
    elif "left_at" in v:
        standing, left = Standing.UNSUBSCRIBED, _when(v, "left_at", "UNSUB_TIME")
    return SourceRow(
        line,
        v["email"],
        standing,
        language=v.get("language") or None,
        opted_in_at=_when(v, "opted_in_at", "OPTIN_TIME"),
        opt_in_ip=_ip(v, "opt_in_ip", "OPTIN_IP"),
        confirmed_at=_when(v, "confirmed_at", "CONFIRM_TIME"),
        confirm_ip=_ip(v, "confirm_ip", "CONFIRM_IP"),
        left_at=left,
    )


_LISTMONK_STATUS = {"enabled": Standing.SUBSCRIBED, "blocklisted": Standing.BLOCKLISTED}
_LISTMONK_SUBSCRIPTION = {
    "confirmed": Standing.SUBSCRIBED,
    "unconfirmed": Standing.UNCONFIRMED,
    "unsubscribed": Standing.UNSUBSCRIBED,
}


def _listmonk(line: int, v: dict[str, str]) -> SourceRow:
    status = v.get("status", "enabled").lower() or "enabled"
    if status == "disabled":
        return SourceRow(line, v["email"], Standing.SKIPPED, note="disabled in listmonk")
    if status not in _LISTMONK_STATUS:
        raise ValueError(f"status {status!r} is not enabled, disabled or blocklisted")
    standing = _LISTMONK_STATUS[status]
    subscription = v.get("subscription_status", "").lower()
    if standing is Standing.SUBSCRIBED and subscription:
        if subscription not in _LISTMONK_SUBSCRIPTION:
            raise ValueError(f"subscription_status {subscription!r} is not known")
        standing = _LISTMONK_SUBSCRIPTION[subscription]
    created = _when(v, "opted_in_at", "created_at")
    return SourceRow(
        line,
        v["email"],
        standing,
        language=_attribute_language(v.get("attributes", "")),
        opted_in_at=created,
        confirmed_at=created if subscription == "confirmed" else None,
    )


def _attribute_language(text: str) -> str | None:
    if not text:
        return None
    try:
        attributes = json.loads(text)
    except ValueError:
        raise ValueError("attributes is not JSON") from None
    if not isinstance(attributes, dict):
        raise ValueError("attributes is not a JSON object")
    for key in ("language", "lang", "locale"):
        if isinstance(attributes.get(key), str):
            return str(attributes[key])
    return None


def _substack(line: int, v: dict[str, str]) -> SourceRow:
    if v["email"].lower().endswith("@deletion-request.substack.com"):
        return SourceRow(line, v["email"], Standing.SKIPPED, note="a Substack deletion request")
    disabled = _flag(v, "email_disabled", "email_disabled", default=False)
    return SourceRow(
        line,
        v["email"],
        Standing.UNSUBSCRIBED if disabled else Standing.SUBSCRIBED,
        opted_in_at=_when(v, "opted_in_at", "created_at"),
    )


def _ghost(line: int, v: dict[str, str]) -> SourceRow:
    deleted = _when(v, "left_at", "deleted_at")
    subscribed = _flag(v, "subscribed", "subscribed_to_emails", default=True)
    standing = (
        Standing.DELETED
        if deleted
        else (Standing.SUBSCRIBED if subscribed else Standing.UNSUBSCRIBED)
    )
    return SourceRow(
        line,
        v["email"],
        standing,
        opted_in_at=_when(v, "opted_in_at", "created_at"),
        left_at=deleted,
    )


_CSV_STATUS = {
    "": Standing.SUBSCRIBED,
    "subscribed": Standing.SUBSCRIBED,
    "confirmed": Standing.SUBSCRIBED,
    "active": Standing.SUBSCRIBED,
    "enabled": Standing.SUBSCRIBED,
    "pending": Standing.UNCONFIRMED,
    "unconfirmed": Standing.UNCONFIRMED,
    "unsubscribed": Standing.UNSUBSCRIBED,
    "cleaned": Standing.CLEANED,
    "bounced": Standing.CLEANED,
    "blocklisted": Standing.BLOCKLISTED,
    "deleted": Standing.DELETED,
}


def _plain(line: int, v: dict[str, str]) -> SourceRow:
    status = v.get("status", "").lower()
    if status not in _CSV_STATUS:
        raise ValueError(f"status {status!r} is not one of {', '.join(sorted(_CSV_STATUS)[1:])}")
    return SourceRow(
        line,
        v["email"],
        _CSV_STATUS[status],
        language=v.get("language") or None,
        opted_in_at=_when(v, "opted_in_at", "opted_in_at"),
        opt_in_ip=_ip(v, "opt_in_ip", "opt_in_ip"),
        confirmed_at=_when(v, "confirmed_at", "confirmed_at"),
        confirm_ip=_ip(v, "confirm_ip", "confirm_ip"),
        left_at=_when(v, "left_at", "left_at"),
    )


_READERS = {
    "mailchimp": _mailchimp,
    "listmonk": _listmonk,
    "substack": _substack,
    "ghost": _ghost,
    "csv": _plain,
}


def _mailman(source: IO[str]) -> Iterator[Row]:
    for line, text in enumerate(source, start=1):
        text = text.strip()
        if not text or text.startswith("#"):
            continue
        _, address = parseaddr(text)  # the display name is not kept
        if not address or "@" not in address:
            yield BadRow(line, 'not a member line ("Name <address>" or "address")')
            continue
        yield SourceRow(line, address, Standing.SUBSCRIBED)


_OFFSET = re.compile(r"([+-]\d\d)$")


def _when(values: dict[str, str], field: str, column: str) -> datetime | None:
    """An export's time: ISO 8601 or ``YYYY-MM-DD HH:MM:SS`` (UTC when no offset is given)."""
    text = values.get(field, "")
    if not text:
        return None
    try:  # the common case: already ISO 8601 as Python reads it
        parsed = datetime.fromisoformat(text)
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except ValueError:
        pass
    normal = _OFFSET.sub(r"\1:00", text.replace("Z", "+00:00"))
    try:
        parsed = datetime.fromisoformat(normal)
    except ValueError:
        raise ValueError(f"{column} {text[:40]!r} is not a date and time") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _ip(values: dict[str, str], field: str, column: str) -> str | None:
    text = values.get(field, "")
    if not text:
        return None
    try:
        return str(ip_address(text))
    except ValueError:
        raise ValueError(f"{column} {text[:45]!r} is not an IP address") from None


_TRUE, _FALSE = {"true", "1", "yes", "t"}, {"false", "0", "no", "f"}


def _flag(values: dict[str, str], field: str, column: str, *, default: bool) -> bool:
    text = values.get(field, "").lower()
    if not text:
        return default
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise ValueError(f"{column} {text[:20]!r} is not true or false")


LANGUAGE_NAMES = {
    "english": "en",
    "eng": "en",
    "belarusian": "be",
    "bel": "be",
    "беларуская": "be",
    "белорусский": "be",
    "russian": "ru",
    "rus": "ru",
    "русский": "ru",
}


def language_of(raw: str | None, languages: tuple[str, ...]) -> str | None:
    """The newsletter language that ``raw`` names (``be_BY``, ``ru-RU``, ``English``, ``rus`` …),
    or None when it names none of ``languages``. Codes are BCP 47 / POSIX locale tags: the
    primary subtag before ``-`` or ``_`` is the language (RFC 5646 §2.2.1)."""
    if not raw:
        return None
    text = raw.strip().casefold()
    code = LANGUAGE_NAMES.get(text) or re.split(r"[-_.@]", text, maxsplit=1)[0]
    code = LANGUAGE_NAMES.get(code, code)
    return code if code in languages else None


def parse_mapping(text: str) -> dict[str, str]:
    """``email=Email,language=Lang`` → ``{"email": "Email", "language": "Lang"}``.

    Raises ``ExportError`` for a pair without ``=``."""
    mapping: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        field, sep, column = pair.partition("=")
        if not sep or not field.strip() or not column.strip():
            raise ExportError(f"--map: {pair!r} is not field=Column")
        mapping[field.strip()] = column.strip()
    return mapping
