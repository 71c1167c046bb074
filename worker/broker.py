"""The dramatiq broker, configured in this one module by an explicit ``setup(settings)``.

Importing this module does nothing. Entry points call ``setup``: ``worker.actors`` before it
declares its actors (dramatiq binds each actor to the global broker when it is declared, and
``dramatiq worker.actors`` takes the global broker after importing that module), the test suite
with a stub broker before any test module is imported.

With ``NEWSLETTER_REDIS_URL`` set (the default) the Redis broker is used; with it empty, the
in-process ``StubBroker`` (the demo). Redis here may keep nothing on disk, so queue messages are
only hints: the ledger in the database is the truth and ``newsletter scheduler`` re-enqueues
whatever it says is unfinished.

Recovery of a killed worker's messages (dramatiq re-queues them in "maintenance", which runs when
a worker's heartbeat is older than ``heartbeat_timeout`` AND a random draw with
``maintenance_chance`` per million broker commands succeeds): the defaults (60 s, 1000) were
measured at 29 minutes on a quiet queue. ``heartbeat_timeout=30 s`` and ``maintenance_chance``
100000 (10 %) bring it to about a minute.
"""

from __future__ import annotations

import time
from typing import Any

import dramatiq
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware.prometheus import Prometheus

from worker.settings import Settings

QUEUES = ("signups", "transactional", "sends", "deliveries")
HEARTBEAT_TIMEOUT_MS = 30_000
MAINTENANCE_CHANCE = 100_000


def make_broker(settings: Settings) -> dramatiq.Broker:
    """A broker for ``settings``: Redis, or the in-process stub when ``broker`` is ``stub`` or no
    Redis URL is set."""
    if settings.broker == "stub" or not settings.redis_url:
        broker: dramatiq.Broker = StubBroker()
        broker.emit_after("process_boot")
        return broker
    from dramatiq.brokers.redis import RedisBroker

    return RedisBroker(  # type: ignore[no-untyped-call]
        url=settings.redis_url,
        namespace=settings.queue_namespace,
        heartbeat_timeout=HEARTBEAT_TIMEOUT_MS,
        maintenance_chance=MAINTENANCE_CHANCE,
    )


class ProcessLogging(dramatiq.Middleware):
    """Installs the product's log handler (JSON on request, secrets and addresses redacted) in
    each worker process when it boots; dramatiq's CLI would otherwise keep its plain format."""

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        from worker.logs import configure_logging

        configure_logging(Settings.from_env())


def setup(settings: Settings) -> dramatiq.Broker:
    """Create the broker for ``settings``, make it dramatiq's global broker and return it."""
    broker = make_broker(settings)
    if not isinstance(broker, StubBroker):  # dramatiq_* queue metrics on :9191, docs/operations.md
        broker.add_middleware(Prometheus())
        broker.add_middleware(ProcessLogging())
    dramatiq.set_broker(broker)
    return broker


def installed() -> bool:
    """Whether ``setup`` (or another entry point) has set dramatiq's global broker."""
    return dramatiq.broker.global_broker is not None


def current() -> dramatiq.Broker:
    """The broker ``setup`` installed; raises ``RuntimeError`` before (dramatiq's own
    ``get_broker`` would silently build a RabbitMQ broker on localhost instead)."""
    broker = dramatiq.broker.global_broker
    if broker is None:
        raise RuntimeError("no dramatiq broker: call worker.broker.setup(settings) first")
    return broker


class BatchHints:
    """Which queue messages are believed alive, so the reconciler re-enqueues only stalled work.

    Each batch (or plan) has a deadline (Unix seconds) in the Redis sorted set ``key``: set when its
    message is enqueued (delay + a long patience: it may wait behind many others in the queue),
    then set to "now + grace" by each heartbeat while it runs, so that a killed worker's batch is
    stalled soon after. Past its deadline, or missing (Redis restarted empty, losing the message
    with it), the work counts as stalled.
    The hints live in the broker's Redis on purpose: they vanish exactly when the messages do.
    Without a Redis client (the stub broker) they are kept in memory.
    """

    def __init__(self, client: Any | None, key: str = "newsletter:hints") -> None:
        self.client = client
        self.key = key
        self._local: dict[str, float] = {}

    def alive(self, name: str, seconds: float, *, extend_only: bool = True) -> None:
        """``name`` has a live message for ``seconds`` more. ``extend_only`` (enqueueing) never
        shortens a deadline; a heartbeat (``extend_only=False``) sets it."""
        deadline = time.time() + seconds
        if self.client is None:
            old = self._local.get(name, 0.0)
            self._local[name] = max(old, deadline) if extend_only else deadline
        else:
            self.client.zadd(self.key, {name: deadline}, gt=extend_only)

    def forget(self, name: str) -> None:
        """``name`` has no message any more (done, paused or cancelled)."""
        if self.client is None:
            self._local.pop(name, None)
        else:
            self.client.zrem(self.key, name)

    def stalled(self, names: list[str]) -> list[str]:
        """Those of ``names`` with no live message."""
        if not names:
            return []
        now = time.time()
        if self.client is None:
            scores: list[float | None] = [self._local.get(n) for n in names]
        else:
            scores = self.client.zmscore(self.key, names)
        return [n for n, score in zip(names, scores, strict=True) if score is None or score < now]


def batch_name(send_id: int, first_id: int, last_id: int) -> str:
    """The hint name of one batch message."""
    return f"batch:{send_id}:{first_id}:{last_id}"
