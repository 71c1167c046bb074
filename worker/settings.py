"""Configuration: environment variables prefixed ``NEWSLETTER_``, read once into a typed object.

Every setting has a default that works on one machine with nothing installed but Python (an SQLite
file, no Redis, an SMTP server on localhost). Secrets are never part of ``repr()``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

PREFIX = "NEWSLETTER_"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _resource_dir(name: str) -> Path:
    """A top-level project folder (templates, migrations, examples), in a checkout or a wheel."""
    in_checkout = PROJECT_ROOT / name
    if in_checkout.is_dir():
        return in_checkout
    return Path(__file__).resolve().parent / f"_{name}"


TEMPLATES_DIR = _resource_dir("templates")
MIGRATIONS_DIR = _resource_dir("migrations")
EXAMPLES_DIR = _resource_dir("examples")


class SettingsError(ValueError):
    """A setting that cannot be used; the message names the variable and what it allows."""


def _parse_domain_rates(text: str) -> dict[str, float]:
    """``"gmail.com=20,mail.ru=5"`` -> ``{"gmail.com": 20.0, "mail.ru": 5.0}`` (messages/s).

    Raises ``SettingsError`` for an entry without a domain or without a rate, or with a rate
    that is not a finite number >= 0 (``gmail.com`` alone used to be read as rate 0: unlimited).
    """
    rates: dict[str, float] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        domain, equals, rate = part.partition("=")
        try:
            value = float(rate) if equals and rate.strip() else math.nan
        except ValueError:
            value = math.nan
        if not domain.strip() or not math.isfinite(value) or value < 0:
            raise SettingsError(
                f"{PREFIX}DOMAIN_RATES: entry {part.strip()!r} is not DOMAIN=RATE "
                "(messages per second, a number >= 0), e.g. gmail.com=20,mail.ru=5"
            )
        rates[domain.strip().lower()] = value
    return rates


def hide_password(url: str) -> str:
    """``smtp://u:secret@host`` -> ``smtp://u:***@host`` (for repr and logs).

    Everything between ``user:`` and the last ``@`` is masked, so an unencoded ``/`` or ``:`` in
    the password does not leak part of it.
    """
    return _URL_PASSWORD.sub(r"\1***@", url, count=1)


_URL_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:@/]*:).*@")


@dataclass(frozen=True, repr=False)
class Settings:
    """Typed settings. Field ``x`` is read from the environment variable ``NEWSLETTER_X``.

    Units: ``*_seconds`` in seconds, ``*_rate`` in messages per second (0 = unlimited),
    ``*_hours``/``*_days`` as named.
    """

    database_url: str = "sqlite:///newsletter.db"
    redis_url: str = "redis://127.0.0.1:6379/0"
    broker: str = "redis"  # "redis", or "stub" for dramatiq's in-process StubBroker
    smtp_url: str = "smtp://127.0.0.1:1025"
    public_url: str = "http://127.0.0.1:8000"
    # hosts besides the site and public_url that editions may load images from (edition check)
    image_hosts: str = ""
    images_dir: str = ""  # where `edition load` copies an edition's own images, served at /images/
    secret_key: str = field(default="", repr=False)
    # Readers' addresses are sealed under this data key (worker.safety.keyring): base64 of 32 bytes,
    # kept outside the database and its backups. DATA_KEY_FILE names a file holding it instead;
    # DATA_KEYS ("2:<b64>,1:<b64>", the first seals) replaces both while rotating.
    data_key: str = field(default="", repr=False)
    data_key_file: str = ""
    data_key_id: int = 1
    data_keys: str = field(default="", repr=False)
    bounce_domain: str = "news.example.org"
    message_id_domain: str = ""
    newsletter_path: str = ""
    send_batch_size: int = 100
    global_rate: float = 0.0
    domain_rates: str = ""
    max_smtp_connections: int = 10
    smtp_timeout_seconds: float = 60.0
    claim_lease_seconds: float = 600.0
    retry_max_age_seconds: float = 3 * 24 * 3600.0
    retry_base_seconds: float = 60.0  # first retry after a 4xx; doubles per attempt, plus jitter
    retry_cap_seconds: float = 3600.0  # longest wait between two attempts
    max_throttle_wait: float = 2.0  # a batch sleeps up to this for a send slot, else re-enqueues
    # after a 421/451 about the rate halves a domain's rate, it climbs back linearly to the
    # configured rate over this; a 421 at connect lowers the connection cap by one this long
    throttle_recover_seconds: float = 60.0
    # a closed SMTP connection's slot frees this long after QUIT (the relay still counts it)
    smtp_settle_seconds: float = 1.0
    smtp_idle_seconds: float = 1.0  # a worker thread keeps its connection this long between batches
    batch_grace_seconds: float = 120.0  # a batch message silent this long is re-enqueued
    # the dashboard's readers, signups, unsubscribe latency, bounce reasons and a live send's
    # funnel may be this old (the page says "as of"); 0 counts them on every view
    dashboard_cache_seconds: float = 30.0
    confirmation_expiry_hours: float = 72.0
    smtputf8_relay: bool = True
    check_deliverability: bool = False
    dns_timeout_seconds: float = 5.0  # deliverability (MX) look-up timeout
    blocked_domains_path: str = ""  # a file of refused (e.g. disposable) domains, one a line
    confirmations_per_address_per_day: int = (
        3  # 0 = unlimited (abuse limits: worker/subscriptions/limits.py)
    )
    signups_per_ip_per_hour: int = 20
    confirmations_per_domain_per_minute: int = 60
    confirmation_resend_minutes: float = 10.0  # a pending address gets at most one mail per window
    purge_unconfirmed_days: float = 14.0  # pending subscribers older than this are purged
    # POST /signup: the website proves itself with an HMAC of the body under this key
    # (docs/signup-event.md); only then are its ip/user_agent/occurred_at believed.
    signup_key: str = field(default="", repr=False)
    # hosts (names or addresses, comma-separated) whose feeds may be fetched although they are
    # not on the public internet (worker/safety/outbound.py): a feed on the intranet
    feed_allow_hosts: str = ""
    trusted_proxies: str = ""  # CIDRs whose X-Forwarded-For is believed, e.g. "10.0.0.0/8,::1/128"
    stored_refusals_per_hour: int = 600  # signup refusals stored per hour overall; 0 = unlimited
    stored_refusals_per_source_per_hour: int = 20  # the same per IP (IPv6: per /64)
    refusal_retention_days: float = 30.0  # stored signup refusals older than this are purged
    welcome_mail: bool = False  # send a welcome mail after confirmation
    dkim_selector: str = ""
    dkim_domain: str = ""
    dkim_private_key_path: str = field(default="", repr=False)
    soft_bounce_limit: int = 3
    soft_bounce_window_days: int = 30
    replies_to: str = ""  # a human inbox for replies to the bounce address; empty = not forwarded
    replies_per_hour: int = 20  # at most this many forwards per hour (a loop or a flood stops)
    # Inbound mail (bounces, complaints, mailto unsubscribes). Peak memory of the SMTP receiver
    # grows with max_sessions x max_bytes (docs/operations.md), so both are capped.
    # 10 MiB: a bounce returns our own mail (well under 1 MiB) or its headers; larger is abuse.
    inbound_max_bytes: int = 10 * 1024 * 1024  # larger messages: 552 (SMTP), truncated (IMAP)
    inbound_max_sessions: int = 4  # concurrent SMTP sessions; one more is answered 421
    inbound_retention_days: float = 30.0  # stored inbound messages older than this are purged
    imap_ca_file: str = ""  # PEM CAs the IMAP poller trusts instead of the system's
    ses_topic_arns: str = ""
    postmark_webhook_credentials: str = field(default="", repr=False)
    sendgrid_verification_key: str = field(default="", repr=False)
    mailgun_signing_key: str = field(default="", repr=False)
    language_fallbacks: str = ""  # e.g. "be=ru,ru=en": where a language without a text falls back
    queue_namespace: str = "dramatiq"
    log_json: bool = False
    log_level: str = "INFO"  # DEBUG, INFO, WARNING…: redaction applies at every level
    operator_password: str = field(default="", repr=False)  # /dashboard login; empty = no access
    metrics_port: int = 9191  # worker exporter; a signups/transactional-only group uses port + 1
    metrics_host: str = "127.0.0.1"  # the exporter has no login: 0.0.0.0 only inside a container
    metrics_dir: str = ""  # prometheus multiprocess files; default <tmp>/newsletter-metrics-<port>
    # /dashboard login failures allowed per 15 minutes, per peer (IPv6 per /64) and in all
    operator_login_failures_per_peer: int = 10
    operator_login_failures_total: int = 100
    metrics_token: str = field(default="", repr=False)  # Bearer token of /metrics; empty = 404
    # The editors' desk (/desk, worker.desk.accounts): a login ends after this long without a
    # request, and at the latest this long after it began; failed logins allowed per 15 minutes
    # per peer (IPv6 per /64) and per account name (0 = no limit).
    desk_idle_minutes: float = 60.0
    desk_session_hours: float = 12.0
    desk_login_failures_per_peer: int = 10
    desk_login_failures_per_account: int = 20
    api_docs: bool = False  # serve /openapi.json, /docs and /redoc (development only)
    # request body caps in bytes (413 beyond): POST /signup, /webhooks/*, every other route
    signup_max_bytes: int = 65_536
    webhook_max_bytes: int = 512 * 1024
    request_max_bytes: int = 16_384
    desk_form_max_bytes: int = 2_097_152  # the desk's edition form: three languages of items

    def __repr__(self) -> str:
        """Every field, with secrets left out and passwords in URLs masked."""
        shown = []
        for f in fields(self):
            if not f.repr:
                continue
            value = getattr(self, f.name)
            if isinstance(value, str) and "://" in value:
                value = hide_password(value)
            shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every field from ``env`` (default ``os.environ``); ``overrides`` win.

        Raises ``ValueError`` naming the variable when a value has the wrong type.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(PREFIX + f.name.upper())
            if raw is None:
                continue
            values[f.name] = _convert(f.name, f.type, raw)
        values.update(overrides)
        settings = cls(**values)
        settings.check()
        return settings

    @property
    def feed_hosts(self) -> tuple[str, ...]:
        """``feed_allow_hosts`` as a tuple of entries (``"a.example, 10.0.0.5"`` ->
        ``("a.example", "10.0.0.5")``)."""
        return tuple(part.strip() for part in self.feed_allow_hosts.split(",") if part.strip())

    def require_secret_key(self) -> str:
        """The secret key, or ``SecretKeyError`` when it is unset or obviously weak.

        Every process (web app, workers, scheduler, inbound receivers, CLI commands that sign or
        hash) calls this before it starts: a key made up per process would sign links that the
        other processes reject and key suppression hashes that never match again.
        """
        problem = secret_key_problem(self.secret_key)
        if problem:
            raise SecretKeyError(problem)
        return self.secret_key

    def check(self) -> None:
        """Raise ``SettingsError`` naming the first variable whose value is out of its range
        (``RANGES``), a malformed ``DOMAIN_RATES`` entry, an unreadable ``DATABASE_URL`` or an
        ``SMTP_URL`` of an unknown scheme; a wrong value found at load, not mid-send."""
        for name, (low, high) in RANGES.items():
            value = getattr(self, name)
            if not math.isfinite(value) or not low <= value <= high:
                allowed = f"{low:g} to {high:g}" if high != math.inf else f"at least {low:g}"
                raise SettingsError(f"{PREFIX}{name.upper()}={value!r}: allowed {allowed}")
        _parse_domain_rates(self.domain_rates)
        _check_database_url(self.database_url)
        scheme = self.smtp_url.partition("://")[0].lower()
        if scheme not in SMTP_SCHEMES or "://" not in self.smtp_url:
            raise SettingsError(
                f"{PREFIX}SMTP_URL: unknown scheme {scheme!r} (allowed: {', '.join(SMTP_SCHEMES)})"
            )

    @property
    def rates_by_domain(self) -> dict[str, float]:
        """Per-recipient-domain rates in messages per second, from ``domain_rates``."""
        return _parse_domain_rates(self.domain_rates)

    def fallbacks_for(self, language: str) -> tuple[str, ...]:
        """Fallback languages for ``language`` from ``language_fallbacks`` ("be=ru,ru=en")."""
        pairs = dict(p.split("=", 1) for p in self.language_fallbacks.split(",") if "=" in p)
        chain: list[str] = []
        current = language
        while current in pairs and pairs[current] not in chain and len(chain) < 8:
            current = pairs[current].strip()
            chain.append(current)
        return tuple(chain)

    @property
    def sending_domain(self) -> str:
        """Domain used on the right-hand side of Message-IDs."""
        return self.message_id_domain or self.bounce_domain


MIN_SECRET_KEY_LENGTH = 24  # characters: 24 URL-safe base64 characters carry 144 random bits
MIN_SECRET_KEY_DISTINCT = 8  # "kkkk…" or "00000…" is long but guessable
HOW_TO_MAKE_A_KEY = (
    "make one with `newsletter keys generate` "
    "(or: python -c 'import secrets; print(secrets.token_urlsafe(48))'), "
    "and give the same value to every process (web, workers, scheduler, inbound)"
)


class SecretKeyError(SettingsError):
    """``NEWSLETTER_SECRET_KEY`` is missing or too weak to sign tokens and key hashes."""


def secret_key_problem(key: str) -> str:
    """Why ``key`` is not fit to be the secret key, or ``""`` when it is."""
    name = f"{PREFIX}SECRET_KEY"
    if not key:
        return f"{name} is not set: {HOW_TO_MAKE_A_KEY}"
    if len(key) < MIN_SECRET_KEY_LENGTH:
        return (
            f"{name} is too short ({len(key)} characters, at least "
            f"{MIN_SECRET_KEY_LENGTH}): {HOW_TO_MAKE_A_KEY}"
        )
    if len(set(key)) < MIN_SECRET_KEY_DISTINCT:
        return f"{name} repeats too few characters to be random: {HOW_TO_MAKE_A_KEY}"
    return ""


SMTP_SCHEMES = ("smtp", "smtp+starttls", "smtps")  # worker.sending.smtp.SmtpTarget.from_url
_SMALLEST_POSITIVE = 0.001  # durations and intervals: zero would spin or never wait

# The allowed range of every numeric setting, inclusive. Rates and limits where 0 means
# "unlimited" or "no cap" start at 0; sizes, durations and windows must be positive.
RANGES: dict[str, tuple[float, float]] = {
    "send_batch_size": (1, 100_000),
    "data_key_id": (1, 65_535),  # two bytes in each sealed value (worker.safety.keyring)
    "global_rate": (0, math.inf),
    "max_smtp_connections": (0, 10_000),
    "smtp_timeout_seconds": (_SMALLEST_POSITIVE, 3600),
    "claim_lease_seconds": (1, 7 * 24 * 3600),
    "retry_max_age_seconds": (0, 30 * 24 * 3600),
    "retry_base_seconds": (_SMALLEST_POSITIVE, 24 * 3600),
    "retry_cap_seconds": (_SMALLEST_POSITIVE, 7 * 24 * 3600),
    "max_throttle_wait": (0, 3600),
    "throttle_recover_seconds": (_SMALLEST_POSITIVE, 24 * 3600),
    "batch_grace_seconds": (1, 24 * 3600),
    "confirmation_expiry_hours": (_SMALLEST_POSITIVE, 365 * 24),
    "dns_timeout_seconds": (_SMALLEST_POSITIVE, 300),
    "confirmations_per_address_per_day": (0, 1_000_000),
    "signups_per_ip_per_hour": (0, 1_000_000),
    "confirmations_per_domain_per_minute": (0, 1_000_000),
    "confirmation_resend_minutes": (0, 7 * 24 * 60),
    "purge_unconfirmed_days": (_SMALLEST_POSITIVE, 3650),
    "soft_bounce_limit": (1, 1000),
    "soft_bounce_window_days": (1, 3650),
    "inbound_max_bytes": (1024, 1024**3),
    "stored_refusals_per_hour": (0, 1_000_000),
    "stored_refusals_per_source_per_hour": (0, 1_000_000),
    "refusal_retention_days": (_SMALLEST_POSITIVE, 3650),
    "replies_per_hour": (0, 1_000_000),
    "metrics_port": (1, 65534),  # a signups/transactional-only group uses port + 1
    "smtp_settle_seconds": (0, 60),
    "dashboard_cache_seconds": (0, 3600),  # 0 = count on every view
    "smtp_idle_seconds": (0, 3600),
    "inbound_max_sessions": (1, 10_000),
    "inbound_retention_days": (_SMALLEST_POSITIVE, 3650),
    "operator_login_failures_per_peer": (0, 1_000_000),  # 0 = no limit
    "operator_login_failures_total": (0, 1_000_000),  # 0 = no limit
    "desk_idle_minutes": (1, 7 * 24 * 60),
    "desk_session_hours": (_SMALLEST_POSITIVE, 30 * 24),
    "desk_login_failures_per_peer": (0, 1_000_000),  # 0 = no limit
    "desk_login_failures_per_account": (0, 1_000_000),  # 0 = no limit
    "signup_max_bytes": (1024, 64 * 1024**2),
    "webhook_max_bytes": (1024, 64 * 1024**2),
    "request_max_bytes": (1024, 64 * 1024**2),
    "desk_form_max_bytes": (16 * 1024, 64 * 1024**2),
}


_DATABASE_URL = re.compile(r"^(sqlite|postgresql|postgres)(\+[a-z0-9_]+)?://\S*$")


def _check_database_url(url: str) -> None:
    """Raise ``SettingsError`` unless ``url`` is an SQLite or PostgreSQL URL (the two databases
    the project supports; SQLAlchemy's ``dialect+driver://…`` form)."""
    if not _DATABASE_URL.match(url):
        raise SettingsError(
            f"{PREFIX}DATABASE_URL is not an SQLite or PostgreSQL URL "
            "(e.g. sqlite:///newsletter.db or postgresql+psycopg://user@host/db)"
        )


def _convert(name: str, type_name: Any, raw: str) -> Any:
    kind = str(type_name)
    try:
        if kind == "bool":
            if raw.strip().lower() in {"1", "true", "yes", "on"}:
                return True
            if raw.strip().lower() in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        raise SettingsError(f"{PREFIX}{name.upper()}: expected {kind}, got {raw!r}") from None
    return raw
