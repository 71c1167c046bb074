"""Structured logs: one line per record, JSON on request (``NEWSLETTER_LOG_JSON=1``), carrying the
send and delivery ids, never a secret, never a full address at INFO level or above.

``log_context(send_id=…)`` binds ids for the code that runs inside it (a context variable, so
each worker thread and asyncio task has its own); ``extra={"delivery_id": …}`` on one call adds
them to one record. Addresses in messages are masked (``a***@example.org``) from INFO up, and the
configured secrets (secret key, operator password, passwords in the database, Redis and SMTP
URLs) are replaced by ``***`` at every level.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any
from urllib.parse import urlsplit

from worker.settings import Settings

IDS = ("send_id", "delivery_id", "subscriber_id", "edition", "message_id")
_ids: ContextVar[dict[str, Any] | None] = ContextVar("newsletter_log_ids", default=None)
# RFC 5322 addr-spec, loosely: enough to find addresses in free text (also IDN and UTF-8 local
# parts); the domain is kept (it is what operators group by), the local part is masked.
ADDRESS = re.compile(r"(?<![\w.+-])([^\s@<>()\[\]\",;:]{1,64})@([\w-]+(?:\.[\w-]+)+)", re.UNICODE)
URL_PASSWORD = re.compile(r"(\w[\w+.-]*://[^:/@\s]*:)([^@\s]+)(@)")


def mask_address(text: str) -> str:
    """``anna.k@example.org`` → ``a***@example.org`` everywhere in ``text``."""
    return ADDRESS.sub(
        lambda m: m.group(0) if m.group(1).startswith("*") else f"{m.group(1)[0]}***@{m.group(2)}",
        text,
    )


@contextmanager
def log_context(**ids: Any) -> Iterator[None]:
    """Bind ids (``send_id``, ``delivery_id``, …) to every record logged inside the block."""
    token = _ids.set({**(_ids.get() or {}), **{k: v for k, v in ids.items() if v is not None}})
    try:
        yield
    finally:
        _ids.reset(token)


class Redactor(logging.Filter):
    """Adds the bound ids to each record, removes secrets, masks addresses from ``min_level``.

    Works on the formatted message (``record.getMessage()``), then freezes it so that handlers
    downstream see the cleaned text. Never drops a record.
    """

    def __init__(self, secrets: list[str], min_level: int = logging.INFO) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)
        self.min_level = min_level

    def clean(self, text: str, level: int) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        text = URL_PASSWORD.sub(r"\1***\3", text)
        return mask_address(text) if level >= self.min_level else text

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_ids.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        record.msg = self.clean(record.getMessage(), record.levelno)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.clean(record.exc_text, record.levelno)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (RFC 3339, UTC), ``level``, ``logger``, ``message``, the
    ids present, and ``exception`` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in IDS:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_text or record.exc_info:
            entry["exception"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``2026-11-29 09:00:00,123 INFO worker.sending.batch [send_id=3 delivery_id=42]
    message``."""

    def format(self, record: logging.LogRecord) -> str:
        ids = " ".join(
            f"{k}={getattr(record, k)}" for k in IDS if getattr(record, k, None) is not None
        )
        record.ids = f" [{ids}]" if ids else ""
        return super().format(record)


def secrets_of(settings: Settings) -> list[str]:
    """The values that must never appear in a log line."""
    found = [settings.secret_key, settings.operator_password]
    for url in (settings.database_url, settings.redis_url, settings.smtp_url):
        try:
            found.append(urlsplit(url).password or "")
        except ValueError:
            continue
    return found


def configure_logging(
    settings: Settings, stream: IO[str] | None = None, level: int = logging.INFO
) -> logging.Handler:
    """Install one handler on the root logger (replacing earlier ones): JSON when
    ``settings.log_json``, text otherwise, with the ``Redactor``. Returns the handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(Redactor(secrets_of(settings)))
    if settings.log_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s%(ids)s %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler


__all__ = [
    "JsonFormatter",
    "Redactor",
    "TextFormatter",
    "configure_logging",
    "log_context",
    "mask_address",
    "secrets_of",
]
