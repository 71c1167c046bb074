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

import contextlib
import io
import logging
import os
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import dramatiq
import dramatiq.middleware.prometheus as dramatiq_prometheus
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware.prometheus import Prometheus

from worker.settings import Settings

log = logging.getLogger(__name__)

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


TRANSACTIONAL_QUEUES = frozenset({"signups", "transactional"})
EXPORTER = "worker.broker:serve_metrics"  # dramatiq --fork-function of the metrics exporter


def served_queues(argv: list[str]) -> frozenset[str] | None:
    """The queues named by ``--queues``/``-Q`` in a ``dramatiq`` command line (dramatiq's own
    parser reads it), or None when it names none (every queue)."""
    from dramatiq.cli import make_argument_parser

    try:
        with contextlib.redirect_stderr(io.StringIO()):  # argparse prints its refusal
            args, _ = make_argument_parser().parse_known_args(argv)  # type: ignore[no-untyped-call]
    except SystemExit:  # not a dramatiq command line (a test runner, the web app)
        return None
    return frozenset(args.queues) if args.queues else None


def metrics_endpoint(settings: Settings, argv: list[str] | None = None) -> tuple[str, int, Path]:
    """(host, port, directory) of this worker group's Prometheus exporter.

    Two groups on one host (README: bulk, and signups + transactional) must neither bind the same
    port nor sum each other's files: a group that serves only ``signups``/``transactional`` takes
    ``metrics_port + 1`` (9192), any other 9191; the directory is per port unless
    ``metrics_dir`` (or ``PROMETHEUS_MULTIPROC_DIR``) names one. (dramatiq's own
    ``dramatiq_prom_*`` variables are not read.)"""
    queues = served_queues(sys.argv[1:] if argv is None else argv)
    port = settings.metrics_port + (1 if queues and queues <= TRANSACTIONAL_QUEUES else 0)
    directory = (
        settings.metrics_dir
        or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        or str(Path(tempfile.gettempdir()) / f"newsletter-metrics-{port}")
    )
    return settings.metrics_host, port, Path(directory)


class MetricsExporter(Prometheus):
    """dramatiq's Prometheus middleware, pointed at this group's directory and port.

    Every worker process writes its samples (dramatiq's and the product's) to files in one
    directory (prometheus-client multiprocess mode) and one forked process serves their sum. The
    stock middleware takes the directory from the environment at import and crashes its exporter
    when the port is taken; here the directory is set at boot, before any metric is created, and
    a taken port is logged and leaves the workers running."""

    def __init__(self, endpoint: tuple[str, int, Path]) -> None:
        super().__init__()
        self.directory = endpoint[2]

    @property
    def forks(self) -> list[Any]:
        """The exporter, unless the command line starts it (``--fork-function
        worker.broker:serve_metrics``, as the README's commands do): dramatiq starts a
        middleware's forks only if the first worker has booted within ``--worker-fork-timeout``
        (30 s), which a loaded host missed, leaving the group without an exporter."""
        return [] if EXPORTER in sys.argv else [serve_metrics]

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        use_metrics_directory(self.directory)
        dramatiq_prometheus.DB_PATH = str(self.directory)  # read by the stock boot and shutdown
        super().after_process_boot(broker)  # type: ignore[no-untyped-call]


def use_metrics_directory(directory: Path) -> None:
    """Make ``directory`` this process's prometheus-client multiprocess directory: created if
    missing, files of processes no longer running removed (a past run's counters would be added
    to this run's), and metrics created from now on write there."""
    from prometheus_client import values

    directory.mkdir(parents=True, exist_ok=True)
    for path in directory.glob("*.db"):
        pid = path.stem.rsplit("_", 1)[-1]
        if pid.isdigit() and not _running(int(pid)):
            path.unlink(missing_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    # prometheus-client chooses in-memory or file-backed values when it is first imported, which
    # in a worker happens before boot (the actors module imports the metrics module)
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _MetricsHandler(BaseHTTPRequestHandler):
    directory = Path()

    def do_GET(self) -> None:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.directory))  # type: ignore[no-untyped-call]
        body = generate_latest(registry)
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged (the scraper's address would be)."""


def serve_metrics() -> int:
    """dramatiq fork process: serve the sum of this group's worker samples over HTTP. A port in
    use is logged (naming the setting) and returns 1; the workers go on without an exporter."""
    host, port, directory = metrics_endpoint(Settings.from_env())
    directory.mkdir(parents=True, exist_ok=True)
    handler = type("MetricsHandler", (_MetricsHandler,), {"directory": directory})
    try:
        server = HTTPServer((host, port), handler)
    except OSError as error:
        log.error(
            "metrics exporter not started: %s:%d: %s; give this worker group its own port "
            "with NEWSLETTER_METRICS_PORT",
            host,
            port,
            error.strerror,
        )
        return 1
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.server_close()
    return 0


def setup(settings: Settings) -> dramatiq.Broker:
    """Create the broker for ``settings``, make it dramatiq's global broker and return it."""
    broker = make_broker(settings)
    if not isinstance(broker, StubBroker):  # dramatiq_* queue metrics on :9191, docs/operations.md
        settings.require_secret_key()  # a worker must not start without the shared key
        from worker.safety.data_keys import keyring_of

        # …nor without the data key (a wrong one is refused at the first database use, before
        # anything is written: worker.db.engine_for); the database is not opened at import
        keyring_of(settings)
        broker.add_middleware(MetricsExporter(metrics_endpoint(settings)))
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
