"""Structured logs: one line per record, JSON on request (``NEWSLETTER_LOG_JSON=1``), carrying the
send and delivery ids, never a secret, never a full address at INFO level or above.

``log_context(send_id=…)`` binds ids for the code that runs inside it (a context variable, so
each worker thread and asyncio task has its own); ``extra={"delivery_id": …}`` on one call adds
them to one record. At every level, DEBUG included (readers' safety outweighs debugging comfort):
addresses are masked (``a***@gmail.com``: the domain only when it is a major provider's, as the
dashboard's provider buckets keep it, or our own, else ``a***@<other>``), link tokens removed
(``/u/***``, ``/confirm/***`` and any itsdangerous-shaped token), IP addresses cut to their
network (``203.0.113.0/24``, ``2001:db8:1::/48``; the one exception is the address our own web
server listens on, in uvicorn's start line), and the configured secrets (secret key, operator
password, passwords in the database, Redis and SMTP URLs) replaced by ``***``. Every process
installs this (``configure_logging``); ``redact_handlers`` adds it to handlers another program
set up (uvicorn's own log config).
"""

from __future__ import annotations

import ipaddress
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
from worker.subscriptions.addresses import PROVIDER_BUCKETS

IDS = ("send_id", "delivery_id", "subscriber_id", "edition", "message_id")
_ids: ContextVar[dict[str, Any] | None] = ContextVar("newsletter_log_ids", default=None)
# RFC 5322 addr-spec, loosely: enough to find addresses in free text (also IDN and UTF-8 local
# parts); the local part is masked, the domain kept only when it names a major provider
# (``OTHER_DOMAIN`` otherwise: a reader's own domain can name the reader).
ADDRESS = re.compile(r"(?<![\w.+-])([^\s@<>()\[\]\",;:]{1,64})@([\w-]+(?:\.[\w-]+)+)", re.UNICODE)
# What the rule above leaves of an address that is not one (a refused signup's
# ``anna@@example.org`` or ``anna@``): the run of characters before ``@@`` or before an ``@``
# that ends a word. ``*`` is not in the run, so an address already masked stays as it is;
# ``user@localhost`` and ``1.2@3`` are left alone (not addresses a reader gives).
STRAY_LOCAL_PART = re.compile(
    r"(?<![\w.+-])([^\s@<>()\[\]\",;:'*]{1,64})(?=@(?:@|(?!\w)))", re.UNICODE
)
# The domain after ``@@`` in what is left of a refused address (``anna@@kowalski.by``).
STRAY_DOMAIN = re.compile(r"(?<=@@)([\w-]+(?:\.[\w-]+)+)", re.UNICODE)
# The ``email`` field of an event as logged (a dict's repr or JSON: dramatiq's DEBUG line
# "Received message handle_signup({...})"): its value, whatever it is, valid or not.
EMAIL_FIELD = re.compile(r"""(['"]email['"]\s*:\s*)(['"])((?:(?!\2).){1,1000})\2""")
# The local part of an address masked already (``a***``).
MASKED_LOCAL_PART = re.compile(r".\*\*\*", re.UNICODE)
# What a masked address shows instead of a domain that is not a major provider's.
OTHER_DOMAIN = "<other>"
URL_PASSWORD = re.compile(r"(\w[\w+.-]*://[^:/@\s]*:)([^@\s]+)(@)")
# The web app's token routes: /u/<token>, /confirm/<token>[/resend] (links.py), /p/<token>.
TOKEN_PATH = re.compile(r"(/(?:u|confirm|p)/)([^/\s?#\"']+)")
# itsdangerous: base64(payload).base64(timestamp).base64(HMAC-SHA1) = 27 characters.
SIGNED_TOKEN = re.compile(r"[\w-]{2,}\.[\w-]{4,8}\.[\w-]{27}(?![\w-])")
# A sealed id (worker/subscriptions/sealed.py): 26 lower-case base32 characters, the unsubscribe
# token itself and the delivery's tag in VERP addresses, Message-IDs and X-Newsletter-Delivery.
SEALED = re.compile(r"(?<![\w-])[a-z2-7]{26}(?![\w-])")
# Not followed by "/<digit>": an already cut network (cleaning twice changes nothing).
IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d|/\d)")
IPV6 = re.compile(r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:]|/\d)")
IPV4_PREFIX, IPV6_PREFIX = 24, 48  # what is kept: enough to see a network, not a household


def mask_ip(text: str) -> str:
    """``203.0.113.7`` → ``203.0.113.0/24``, ``2001:db8:1:2::7`` → ``2001:db8:1::/48`` in ``text``;
    anything that only looks like an address (``09:00:00``, ``1.2.999.4``) is left alone."""

    def network(match: re.Match[str], prefix: int) -> str:
        try:
            address = ipaddress.ip_address(match.group(0))
        except ValueError:
            return match.group(0)
        return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))

    text = IPV4.sub(lambda m: network(m, IPV4_PREFIX), text)
    return IPV6.sub(lambda m: network(m, IPV6_PREFIX), text)


def mask_tokens(text: str) -> str:
    """Remove link tokens: ``/u/<token>`` → ``/u/***`` and any itsdangerous-shaped token."""
    return SEALED.sub("***", SIGNED_TOKEN.sub("***", TOKEN_PATH.sub(r"\1***", text)))


def mask_address(text: str, own_domains: frozenset[str] = frozenset()) -> str:
    """``anna.k@gmail.com`` → ``a***@gmail.com``, ``anna.k@kowalski.by`` → ``a***@<other>``
    everywhere in ``text``.

    The domain is kept when it is one of the major providers' (``PROVIDER_BUCKETS`` of
    ``worker.subscriptions.addresses``, the rule of the dashboard's stored domains) or one of
    ``own_domains`` (the newsletter's own: bounce, Message-ID, DKIM; lower-case); any other
    domain may be the reader's own and becomes ``<other>``. What only looks like part of an
    address loses its local part too, and its domain by the same rule (``anna@@kowalski.by``
    → ``a***@@<other>``, ``anna@`` → ``a***@``); an event's ``email`` field loses its whole
    value (``'email': 'anna at example'`` → ``'email': '***'``). Masking twice changes
    nothing."""
    text = EMAIL_FIELD.sub(r"\1\2***\2", text)

    def masked(match: re.Match[str]) -> str:
        local, domain = match.group(1), match.group(2)
        if local == "***":
            return match.group(0)  # a URL's ``user:***@host`` (URL_PASSWORD): the host stays
        if MASKED_LOCAL_PART.fullmatch(local):
            return f"{local}@{domain_of(domain)}"  # masked already: the domain by the rule
        return f"{local[0]}***@{domain_of(domain)}"

    def domain_of(domain: str) -> str:
        folded = domain.lower()
        kept = folded in PROVIDER_BUCKETS or folded in own_domains
        return domain if kept else OTHER_DOMAIN

    text = ADDRESS.sub(masked, text)
    text = STRAY_DOMAIN.sub(lambda m: domain_of(m.group(1)), text)
    return STRAY_LOCAL_PART.sub(lambda m: f"{m.group(1)[0]}***", text)


@contextmanager
def log_context(**ids: Any) -> Iterator[None]:
    """Bind ids (``send_id``, ``delivery_id``, …) to every record logged inside the block."""
    token = _ids.set({**(_ids.get() or {}), **{k: v for k, v in ids.items() if v is not None}})
    try:
        yield
    finally:
        _ids.reset(token)


# uvicorn's AccessFormatter unpacks ``record.args`` (client, method, path, version, status): its
# records keep their args, each cleaned, instead of being frozen into the message.
ARGS_KEPT = "uvicorn.access"
# uvicorn's start line (uvicorn/config.py ``bind_socket``, uvicorn/server.py
# ``_log_started_message``): its arguments are the scheme, the address our own server binds and
# the port, never a reader's. Only these exact templates from uvicorn's loggers keep their
# arguments uncut; every other line, and any other text, has its IPs cut as usual.
OWN_ADDRESS = "uvicorn"
OWN_ADDRESS_TEMPLATES = frozenset(
    {
        "Uvicorn running on %s://%s:%d (Press CTRL+C to quit)",
        "Uvicorn running on %s://[%s]:%d (Press CTRL+C to quit)",
    }
)


class Redactor(logging.Filter):
    """Adds the bound ids to each record, removes secrets and tokens, masks addresses and IPs.

    Works on the formatted message (``record.getMessage()``), then freezes it so that handlers
    downstream see the cleaned text. Never drops a record. ``min_level``: the lowest level whose
    addresses, tokens and IPs are masked (default: every level); ``own_domains``: the
    newsletter's own mail domains, kept in masked addresses (``own_domains_of``).
    """

    def __init__(
        self,
        secrets: list[str],
        min_level: int = logging.NOTSET,
        own_domains: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)
        self.min_level = min_level
        self.own_domains = frozenset(d.lower() for d in own_domains if d)

    def clean(self, text: str, level: int) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        text = URL_PASSWORD.sub(r"\1***\3", text)
        if level < self.min_level:
            return text
        return mask_ip(mask_address(mask_tokens(text), self.own_domains))

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_ids.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        if (
            record.name.startswith(OWN_ADDRESS)
            and isinstance(record.msg, str)
            and record.msg in OWN_ADDRESS_TEMPLATES
            and isinstance(record.args, tuple)
        ):
            record.msg = record.getMessage()  # the server's own bind address: shown whole
            record.args = None
        elif record.name.startswith(ARGS_KEPT) and isinstance(record.args, tuple):
            record.args = tuple(
                self.clean(a, record.levelno) if isinstance(a, str) else a for a in record.args
            )
        else:
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


def own_domains_of(settings: Settings) -> frozenset[str]:
    """The newsletter's own mail domains (bounce, Message-ID, DKIM), lower-case: addresses there
    (``unsubscribe+…@``, ``bounces+…@``) are ours, not a reader's, so masking keeps the domain."""
    found = (settings.bounce_domain, settings.sending_domain, settings.dkim_domain)
    return frozenset(d.strip().lower() for d in found if d and d.strip())


def configure_logging(
    settings: Settings, stream: IO[str] | None = None, level: int | None = None
) -> logging.Handler:
    """Install one handler on the root logger (replacing earlier ones): JSON when
    ``settings.log_json``, text otherwise, with the ``Redactor``; ``level`` (default
    ``NEWSLETTER_LOG_LEVEL``) on the root. Loggers that keep their own handlers (uvicorn's when
    it configured itself, aiosmtpd's none) get the ``Redactor`` too. Returns the handler."""
    if level is None:
        level = logging.getLevelName(settings.log_level.upper())
        if not isinstance(level, int):
            raise ValueError(f"NEWSLETTER_LOG_LEVEL: unknown level {settings.log_level!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(Redactor(secrets_of(settings), own_domains=own_domains_of(settings)))
    if settings.log_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s%(ids)s %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    redact_handlers(settings)
    return handler


UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


def redact_handlers(settings: Settings, names: tuple[str, ...] | None = None) -> None:
    """Add the ``Redactor`` to every handler of the loggers ``names`` (default: every logger)
    that lacks one: uvicorn's access and error handlers, when uvicorn configured logging before
    the app was built (``uvicorn --factory worker.web.app:create_app``)."""
    if names is None:
        loggers = [logging.getLogger()] + [
            logger
            for logger in logging.Logger.manager.loggerDict.values()
            if isinstance(logger, logging.Logger)
        ]
    else:
        loggers = [logging.getLogger(name) for name in names]
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(f, Redactor) for f in handler.filters):
                handler.addFilter(
                    Redactor(secrets_of(settings), own_domains=own_domains_of(settings))
                )


__all__ = [
    "UVICORN_LOGGERS",
    "JsonFormatter",
    "Redactor",
    "TextFormatter",
    "configure_logging",
    "log_context",
    "mask_address",
    "mask_ip",
    "mask_tokens",
    "own_domains_of",
    "redact_handlers",
    "secrets_of",
]
