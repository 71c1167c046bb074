"""The dramatiq broker, configured in this one module; ``worker.actors`` imports it first.

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

import dramatiq
from dramatiq.brokers.stub import StubBroker

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

    return RedisBroker(
        url=settings.redis_url,
        namespace=settings.queue_namespace,
        heartbeat_timeout=HEARTBEAT_TIMEOUT_MS,
        maintenance_chance=MAINTENANCE_CHANCE,
    )


def setup_broker(settings: Settings | None = None) -> dramatiq.Broker:
    """Create the broker from the environment and make it dramatiq's global broker."""
    broker = make_broker(settings or Settings.from_env())
    dramatiq.set_broker(broker)
    return broker


broker = setup_broker()
