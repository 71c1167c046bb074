"""Process-wide wiring of settings to adapters: sessions, SMTP mailers, the throttle, tokens.

Actors, the CLI, the web app and the demo build one ``Runtime`` and pass its parts to the domain.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property

from sqlalchemy.orm import Session

from worker.db import session_scope
from worker.editions.store import get_newsletter, profile_of
from worker.models import Edition, Newsletter, Send
from worker.operators.metrics import MeteredMailer
from worker.sending.composer import Composer, Links
from worker.sending.dispatch import SendPolicy
from worker.sending.dkim import DkimSigner
from worker.sending.ports import Clock, Mailer, SystemClock, Throttle
from worker.sending.sends import rendition_texts
from worker.sending.smtp import SmtpMailer
from worker.sending.throttle import LocalThrottle, RedisThrottle
from worker.settings import Settings
from worker.subscriptions.tokens import Tokens


@dataclass
class Runtime:
    """Everything a process needs to act on the domain, built from ``settings``.

    ``mailer_factory`` and ``throttle`` may be replaced (the demo uses a local throttle).
    """

    settings: Settings
    clock: Clock = field(default_factory=SystemClock)
    throttle_override: Throttle | None = None
    mailer_factory: Callable[[], Mailer] | None = None
    _local: threading.local = field(default_factory=threading.local)
    _composers: dict[int, Composer] = field(default_factory=dict)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with session_scope(self.settings) as session:
            yield session

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
        if not s.redis_url:
            return LocalThrottle(s.global_rate, s.rates_by_domain, s.max_smtp_connections)
        import redis

        client = redis.Redis.from_url(s.redis_url)
        return RedisThrottle(
            client,
            global_rate=s.global_rate,
            domain_rates=s.rates_by_domain,
            max_connections=s.max_smtp_connections,
            recover_seconds=s.throttle_recover_seconds,
        )

    @property
    def mailer(self) -> Mailer:
        """This thread's SMTP mailer (one reused connection per worker thread)."""
        mailer: Mailer | None = getattr(self._local, "mailer", None)
        if mailer is None:
            if self.mailer_factory is not None:
                mailer = self.mailer_factory()
            else:
                mailer = SmtpMailer(
                    self.settings.smtp_url, timeout=self.settings.smtp_timeout_seconds
                )
            mailer = MeteredMailer(
                mailer
            )  # SMTP reply classes and latency (worker.operators.metrics)
            self._local.mailer = mailer
        return mailer

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
