"""Process-wide wiring of settings to adapters: sessions, Redis, SMTP mailers, the throttle, tokens.

``Runtime`` builds every adapter itself, lazily, once per runtime; ``runtime()`` is the process's
runtime (built from the environment on first use) and ``use_runtime(rt)`` installs another (the
demo, tests). Actors, the CLI, the web app and the demo pass its parts to the domain.
"""

from __future__ import annotations

import atexit
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from worker.broker import BatchHints
from worker.db import committing, engine_for
from worker.editions.files import NewsletterProfile
from worker.editions.store import get_newsletter, profile_of
from worker.feedback.policy import FeedbackPolicy
from worker.feedback.refusals import RefusalFeedback
from worker.models import Edition, Newsletter, Send
from worker.operators.metrics import MeteredMailer, SendingCounters, install_session_hooks
from worker.safety import keyring
from worker.safety.data_keys import keyring_of
from worker.sending.composer import Composer, Links
from worker.sending.connection import ConnectionSlot
from worker.sending.dkim import DkimSigner
from worker.sending.driver_ledger import DriverLedger, LedgerConnection
from worker.sending.policy import SendPolicy
from worker.sending.ports import Clock, Mailer, SendingMetrics, SystemClock, Throttle
from worker.sending.sends import rendition_texts
from worker.sending.smtp import SmtpMailer
from worker.sending.throttle import LocalThrottle, RedisThrottle
from worker.settings import Settings
from worker.subscriptions.limits import (
    AbuseLimits,
    MemorySignupLimiter,
    RedisSignupLimiter,
    SignupLimiter,
)
from worker.subscriptions.tokens import Tokens

if TYPE_CHECKING:
    import redis


NEWSLETTER_REFRESH_SECONDS = 10.0
"""How long the signup path reuses the newsletter row it read (``Runtime.signup_newsletter``)."""


@dataclass
class Runtime:
    """Everything a process needs to act on the domain, built from ``settings`` on first use.

    ``mailer_factory`` (one SMTP connection per worker thread) and ``throttle_override`` may be
    given (tests, the demo's local throttle); every other adapter is built here.
    """

    settings: Settings
    clock: Clock = field(default_factory=SystemClock)
    throttle_override: Throttle | None = None
    mailer_factory: Callable[[], Mailer] | None = None
    _local: threading.local = field(default_factory=threading.local)
    _composers: dict[int, Composer] = field(default_factory=dict)
    _ledger_connections: list[LedgerConnection] = field(default_factory=list)
    _ledger_lock: threading.Lock = field(default_factory=threading.Lock)
    _languages: tuple[str, ...] | None = field(default=None, init=False)
    _signup_newsletter: tuple[float, Newsletter, NewsletterProfile] | None = field(
        default=None, init=False
    )
    _newsletter_lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        # Refuse to start rather than sign with a key the other processes do not share.
        self.settings.require_secret_key()
        # …and without the data key: a missing or malformed one is refused here; a wrong one
        # when the database is first opened (worker.db.engine_for), before anything is written
        keyring.install(keyring_of(self.settings))

    @cached_property
    def engine(self) -> Engine:
        """The connection pool to ``settings.database_url``: one per URL and process, shared by
        runtimes on the same database (the demo's web app and actors), so connections are not
        multiplied; ``worker.db.dispose_engines`` closes it after a fork or a test. Installs the
        session hooks that count committed feedback and suppression rows (idempotent)."""
        install_session_hooks()
        return engine_for(self.settings)

    @cached_property
    def _sessions(self) -> sessionmaker[Session]:
        return sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error (``db.committing``)."""
        with committing(self._sessions) as session:
            yield session

    @cached_property
    def metrics(self) -> SendingMetrics:
        """The Prometheus counters sending increments (``worker.operators.metrics``)."""
        return SendingCounters()

    @cached_property
    def refusals(self) -> RefusalFeedback:
        """Records a relay's 5xx at send time as a feedback event (``worker.feedback``), under
        the configured policy: a ``552 5.2.2`` counts toward ``NEWSLETTER_SOFT_BOUNCE_LIMIT``
        like a mailbox-full DSN does."""
        return RefusalFeedback(FeedbackPolicy.from_settings(self.settings))

    def ledger(self, session: Session) -> DriverLedger:
        """The delivery ledger the send path uses: its per-message statements on this thread's
        own driver connection (``DriverLedger``), the rest over ``session``, with this runtime's
        refusal recorder and counters."""
        return DriverLedger(
            session, self._ledger_connection(), refusals=self.refusals, metrics=self.metrics
        )

    def _ledger_connection(self) -> LedgerConnection:
        """This thread's ledger connection, reopened when closed or broken (a database restart
        fails the batch that saw it; dramatiq retries it on a fresh connection)."""
        connection: LedgerConnection | None = getattr(self._local, "ledger", None)
        if connection is None or not connection.usable:
            connection = self._local.ledger = LedgerConnection.open(self.settings.database_url)
            with self._ledger_lock:
                self._ledger_connections.append(connection)
        return connection

    def close(self) -> None:
        """Close the pooled database connections and the ledger's (end of a test); both reopen
        on use."""
        if "engine" in self.__dict__:
            self.engine.dispose()
        with self._ledger_lock:
            connections, self._ledger_connections = self._ledger_connections, []
        for connection in connections:
            connection.close()

    @cached_property
    def redis(self) -> redis.Redis | None:
        """The client of ``settings.redis_url`` (shared by the throttle, limiter and hints), or
        None without a URL. Connects on first command, not here."""
        if not self.settings.redis_url:
            return None
        import redis

        return redis.Redis.from_url(self.settings.redis_url)

    @cached_property
    def limiter(self) -> SignupLimiter:
        """The signup abuse limiter: in Redis (shared by every process), else in memory."""
        limits = AbuseLimits.from_settings(self.settings)
        key = self.settings.secret_key
        if self.redis is None:
            return MemorySignupLimiter(limits, key)
        return RedisSignupLimiter(self.redis, limits, key)

    @cached_property
    def hints(self) -> BatchHints:
        """Batch hints in the broker's Redis, or in memory for the stub broker."""
        stub = self.settings.broker == "stub" or self.redis is None
        return BatchHints(None if stub else self.redis)

    def signup_languages(self) -> tuple[str, ...]:
        """The newsletter's languages, read once (the same database read for every signup)."""
        if self._languages is None:
            with self.session() as session:
                self._languages = profile_of(self.newsletter(session)).languages
        return self._languages

    def signup_newsletter(self) -> tuple[Newsletter, NewsletterProfile]:
        """The default newsletter (detached: read ``id``, ``slug``, ``profile`` only) and its
        profile for the signup and confirmation actors, read at most once per
        :data:`NEWSLETTER_REFRESH_SECONDS` in a session of its own instead of once per message:
        a profile change (``newsletter edition load``) reaches them within that time."""
        with self._newsletter_lock:  # one reader (or creator, on first use) per process
            cached = self._signup_newsletter
            now = time.monotonic()
            if cached is not None and now - cached[0] < NEWSLETTER_REFRESH_SECONDS:
                return cached[1], cached[2]
            with self.session() as session:
                newsletter = self.newsletter(session)
                profile = profile_of(newsletter)
                session.expunge(newsletter)  # never expired by another message's rollback
            self._signup_newsletter = (now, newsletter, profile)
            return newsletter, profile

    @cached_property
    def tokens(self) -> Tokens:
        return Tokens(self.settings.secret_key)

    @cached_property
    def links(self) -> Links:
        s = self.settings
        return Links(s.public_url.rstrip("/"), s.bounce_domain, s.sending_domain)

    @cached_property
    def throttle(self) -> Throttle:
        if self.throttle_override is not None:
            return self.throttle_override
        s = self.settings
        if self.redis is None:
            return LocalThrottle(
                s.global_rate,
                s.rates_by_domain,
                s.max_smtp_connections,
                recover_seconds=s.throttle_recover_seconds,
                settle_seconds=s.smtp_settle_seconds,
                inflight_seconds=self.policy.connection_ttl_seconds,
            )
        return RedisThrottle(
            self.redis,
            global_rate=s.global_rate,
            domain_rates=s.rates_by_domain,
            max_connections=s.max_smtp_connections,
            recover_seconds=s.throttle_recover_seconds,
            settle_seconds=s.smtp_settle_seconds,
            inflight_seconds=self.policy.connection_ttl_seconds,
        )

    @property
    def mailer(self) -> Mailer:
        """This thread's SMTP mailer (one reused connection per worker thread)."""
        mailer: Mailer | None = getattr(self._local, "mailer", None)
        if mailer is None:
            factory = self.mailer_factory or self._smtp_mailer
            # SMTP reply classes and latency (worker.operators.metrics)
            mailer = self._local.mailer = MeteredMailer(factory())
        return mailer

    @property
    def connection(self) -> ConnectionSlot:
        """This thread's SMTP connection for batches and its slot: kept open between the
        thread's batches for ``smtp_idle_seconds`` (``worker.sending.connection``). Its mailer is
        not ``mailer`` (transactional mail): the idle timer closes it from another thread."""
        slot: ConnectionSlot | None = getattr(self._local, "connection", None)
        if slot is None:
            factory = self.mailer_factory or self._smtp_mailer
            slot = self._local.connection = ConnectionSlot(
                MeteredMailer(factory()), self.throttle, self.settings.smtp_idle_seconds
            )
            # a worker stopped between batches gives its kept slot back (after the settle time)
            # rather than leaving it taken until its ttl runs out
            atexit.register(slot.close)
        return slot

    def _smtp_mailer(self) -> Mailer:
        s = self.settings
        return SmtpMailer(
            s.smtp_url, timeout=s.smtp_timeout_seconds, settle_seconds=s.smtp_settle_seconds
        )

    @cached_property
    def dkim_signer(self) -> DkimSigner | None:
        """In-app DKIM signing when ``dkim_private_key_path`` is set (else the relay signs)."""
        s = self.settings
        if not s.dkim_private_key_path:
            return None
        domain = s.dkim_domain or s.sending_domain
        return DkimSigner.from_file(
            s.dkim_private_key_path, domain=domain, selector=s.dkim_selector
        )

    @cached_property
    def policy(self) -> SendPolicy:
        s = self.settings
        return SendPolicy(
            lease_seconds=s.claim_lease_seconds,
            max_age_seconds=s.retry_max_age_seconds,
            retry_base_seconds=s.retry_base_seconds,
            retry_cap_seconds=s.retry_cap_seconds,
            max_throttle_wait=s.max_throttle_wait,
            connection_ttl_seconds=2 * s.smtp_timeout_seconds + 10,
            hash_key=s.secret_key,
        )

    def newsletter(self, session: Session) -> Newsletter:
        return get_newsletter(session, self.clock.now(), profile_path=self.settings.newsletter_path)

    def composer(self, session: Session, send_id: int) -> Composer:
        """The composer of ``send_id``, cached: the per-language MIME parts are built once."""
        composer = self._composers.get(send_id)
        if composer is None:
            send = session.get(Send, send_id)
            assert send is not None
            edition = session.get(Edition, send.edition_id)
            assert edition is not None
            newsletter = session.get(Newsletter, edition.newsletter_id)
            assert newsletter is not None
            composer = Composer(
                profile=profile_of(newsletter),
                renditions=rendition_texts(session, send_id),
                tokens=self.tokens,
                links=self.links,
                edition_key=edition.key,
                slug=newsletter.slug,
                verp_key=self.settings.secret_key,
                clock=self.clock,
                signer=self.dkim_signer,
            )
            self._composers[send_id] = composer
        return composer


_process_runtime: Runtime | None = None
_process_lock = threading.Lock()


def runtime() -> Runtime:
    """This process's runtime: the installed one, else one built from the environment on first
    use (after dramatiq forked the worker process, so no pool crosses a fork)."""
    global _process_runtime
    with _process_lock:
        if _process_runtime is None:
            _process_runtime = Runtime(Settings.from_env())
        return _process_runtime


def use_runtime(rt: Runtime | None) -> None:
    """Install ``rt`` as this process's runtime (the demo, tests); None: the environment's again."""
    global _process_runtime
    with _process_lock:
        _process_runtime = rt
