"""Set-up shared by the benchmarks: a throw-away PostgreSQL database, bulk subscribers, Postfix's
``smtp-sink`` and ``smtp-source``, dramatiq worker processes and their RSS.

Benchmarks print figures; nothing here asserts a time. Services: PostgreSQL on 127.0.0.1:5432
(``BENCH_PG_ADMIN``), Redis on 127.0.0.1:6379 (``BENCH_REDIS_URL``, a spare database, flushed),
``smtp-sink``/``smtp-source`` from the Debian package ``postfix`` (the daemon is never started).
"""

from __future__ import annotations

import io
import os
import resource
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import psycopg

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PG_ADMIN = os.environ.get("BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")
EDITION = ROOT / "examples" / "editions" / "2024-W28"
SECRET = "bench-secret-key-0123456789abcdef"
# The benchmarks' own data key (worker.safety.keyring): the processes they start inherit it.
DATA_KEY = os.environ.setdefault(
    "NEWSLETTER_DATA_KEY", "YmVuY2gtZGF0YS1rZXktMDEyMzQ1Njc4OWFiY2RlZjA="
)
DATA_KEY_ENV = {"NEWSLETTER_DATA_KEY": DATA_KEY}
LANGUAGES = ("en", "be", "ru")
DOMAINS = 50  # recipients spread over this many domains (per-domain throttle keys)


def which(name: str) -> str:
    path = shutil.which(name) or (
        f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None
    )
    if path is None:
        sys.exit(f"{name} not found: apt-get install postfix (the daemon need not run)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def database() -> Iterator[str]:
    """A new PostgreSQL database with the schema; dropped afterwards. Yields its SQLAlchemy URL."""
    from sqlalchemy import create_engine

    from worker.models import Base

    name = f"newsletter_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    engine.dispose()
    try:
        yield url
    finally:
        from worker.db import dispose_engines

        dispose_engines()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def plain_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def settings_env(
    db_url: str, smtp_url: str, *, batch_size: int = 100, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """The NEWSLETTER_* environment of the bench's worker processes (throttling off)."""
    return {
        "NEWSLETTER_BROKER": "redis",
        "NEWSLETTER_DATABASE_URL": db_url,
        "NEWSLETTER_REDIS_URL": REDIS_URL,
        "NEWSLETTER_SMTP_URL": smtp_url,
        "NEWSLETTER_SECRET_KEY": SECRET,
        "NEWSLETTER_DATA_KEY": DATA_KEY,
        "NEWSLETTER_PUBLIC_URL": "https://news.example.org",
        "NEWSLETTER_BOUNCE_DOMAIN": "news.example.org",
        "NEWSLETTER_NEWSLETTER_PATH": str(EDITION / "newsletter.yaml"),
        "NEWSLETTER_SEND_BATCH_SIZE": str(batch_size),
        "NEWSLETTER_GLOBAL_RATE": "0",
        "NEWSLETTER_MAX_SMTP_CONNECTIONS": "0",  # no cap: every worker thread keeps its connection
        "NEWSLETTER_QUEUE_NAMESPACE": f"bench-{uuid.uuid4().hex[:6]}",
        **(extra or {}),
    }


def load_edition_and_subscribers(db_url: str, count: int) -> None:
    """Store the sample edition and ``count`` confirmed subscribers (COPY, in bulk), languages
    round-robin en/be/ru, spread over ``DOMAINS`` domains; addresses sealed under ``DATA_KEY``
    as the application seals them (worker.safety.keyring)."""
    from worker.safety.keyring import keyring_from_env

    ring = keyring_from_env(DATA_KEY_ENV)
    from worker.db import session_scope
    from worker.editions.files import read_edition
    from worker.editions.store import save_edition
    from worker.settings import Settings

    now = datetime.now(UTC)
    with session_scope(Settings.from_env(DATA_KEY_ENV, database_url=db_url)) as session:
        edition = save_edition(session, read_edition(EDITION), now)
        newsletter_id = edition.newsletter_id
    stamp = now.isoformat()
    with psycopg.connect(plain_url(db_url)) as conn, conn.cursor() as cur:
        columns = (
            "newsletter_id, email, email_key, ascii_email, domain, language, status,"
            " created_at, updated_at, confirmed_at"
        )
        with cur.copy(f"COPY subscriber ({columns}) FROM STDIN") as copy:
            chunk = io.StringIO()
            for n in range(count):
                domain = f"d{n % DOMAINS}.example.net"
                address = f"reader{n}@{domain}"
                email = ring.seal(address, "subscriber.email")
                ascii_email = ring.seal(address, "subscriber.ascii_email")
                chunk.write(
                    f"{newsletter_id}\t{email}\t{ring.blind_index(address)}\t{ascii_email}\t"
                    "other\t"
                    f"{LANGUAGES[n % 3]}\t"
                    f"confirmed\t{stamp}\t{stamp}\t{stamp}\n"
                )
                if n % 50_000 == 49_999:
                    copy.write(chunk.getvalue())
                    chunk = io.StringIO()
            copy.write(chunk.getvalue())
        conn.commit()
        cur.execute("ANALYZE subscriber")
        conn.commit()


def create_send(db_url: str, batch_size: int) -> int:
    from worker.db import session_scope
    from worker.editions.store import find_edition
    from worker.sending.sends import Repeat
    from worker.sending.sends import create_send as create
    from worker.settings import Settings

    with session_scope(Settings.from_env(DATA_KEY_ENV, database_url=db_url)) as session:
        edition = find_edition(session, "2024-W28")
        assert edition is not None
        # benchmarks send the same edition several times on purpose (one send per variant)
        send = create(session, edition, datetime.now(UTC), batch_size, repeat=Repeat.AGAIN)
        return int(send.id)


def flush_redis(namespace: str | None = None) -> None:
    """Delete this run's queues (keys under ``namespace``) and throttle state; never the whole
    database, which another benchmark may be using at the same time."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    for pattern in ([f"{namespace}*"] if namespace else []) + ["newsletter:throttle*"]:
        for key in client.scan_iter(pattern, count=1000):
            client.delete(key)
    client.close()


@dataclass
class Sink:
    """``smtp-sink`` on loopback: accepts and discards every message."""

    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def start_sink(backlog: int = 256) -> Sink:
    port = free_port()
    # -u postfix: smtp-sink drops root privileges; it otherwise refuses to run as root.
    command = [which("smtp-sink"), "-u", "postfix", f"127.0.0.1:{port}", str(backlog)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return Sink(port, process)
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(
        "smtp-sink did not start: " + process.stderr.read().decode() if process.stderr else ""
    )


def smtp_source(port: int, *, messages: int, sessions: int, size: int) -> tuple[float, float]:
    """Send ``messages`` of ``size`` body bytes over ``sessions`` parallel connections, each kept
    open for the next message (``-d``), into the sink; returns (messages per second, CPU seconds
    of smtp-source)."""
    command = [
        which("smtp-source"),
        "-d",
        "-s",
        str(sessions),
        "-m",
        str(messages),
        "-l",
        str(size),
        "-f",
        "bounces@news.example.org",
        "-t",
        "reader@d1.example.net",
        f"127.0.0.1:{port}",
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return messages / elapsed, cpu


def smtp_source_command(port: int | str, *, messages: int, sessions: int, size: int) -> str:
    return (
        f"smtp-source -d -s {sessions} -m {messages} -l {size} -f bounces@news.example.org "
        f"-t reader@d1.example.net 127.0.0.1:{port}"
    )


@dataclass
class Workers:
    """``python -m dramatiq worker.actors -p N -t T`` with its log in a file."""

    process: subprocess.Popen[bytes]
    log: Path
    samples: list[tuple[float, dict[int, int]]] = field(default_factory=list)

    def wait_ready(self, processes: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log.read_text(errors="replace").count("ready for action") >= processes:
                return
            if self.process.poll() is not None:
                raise RuntimeError(
                    "dramatiq exited:\n" + self.log.read_text(errors="replace")[-3000:]
                )
            time.sleep(0.1)
        raise RuntimeError(
            "dramatiq workers not ready:\n" + self.log.read_text(errors="replace")[-3000:]
        )

    def children(self) -> list[int]:
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return [int(p) for p in path.read_text().split()]
        except OSError:
            return []

    def sample_rss(self) -> dict[int, int]:
        """RSS in KiB of each worker process (the dramatiq children), recorded with the time."""
        rss = {pid: rss_kib(pid) for pid in self.children()}
        self.samples.append((time.monotonic(), rss))
        return rss

    def cpu_seconds(self) -> float:
        """User + system CPU of the worker processes so far (from /proc/<pid>/stat)."""
        return sum(cpu_of(pid) for pid in self.children())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def cpu_of(pid: int) -> float:
    """User + system CPU seconds of one process so far (0 if it is gone)."""
    try:
        fields_ = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields_[11]) + int(fields_[12])) / os.sysconf("SC_CLK_TCK")


def postgres_cpu(db_url: str) -> float:
    """CPU seconds of the PostgreSQL backends connected to this database (same host)."""
    name = db_url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        pids = [
            r[0]
            for r in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
        ]
    return sum(cpu_of(pid) for pid in pids)


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def start_workers(
    env: dict[str, str], *, processes: int, threads: int, log: Path, module: str = "worker.actors"
) -> Workers:
    command = [sys.executable, "-m", "dramatiq", module, "-p", str(processes), "-t", str(threads)]
    handle = log.open("wb")
    env = {
        **os.environ,
        **env,
        "PYTHONPATH": str(ROOT),
    }  # this checkout's worker package, not another
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
    return Workers(process, log)


class Ledger(TypedDict):
    """One send's ledger summary: deliveries per state, its status and its timestamps (UTC)."""

    counts: dict[str, int]
    first: datetime | None
    last: datetime | None
    status: str
    started: datetime | None
    finished: datetime | None


def ledger(db_url: str, send_id: int) -> Ledger:
    """Counts per state and the sending window (first claim to last outcome) from the ledger."""
    with psycopg.connect(plain_url(db_url)) as conn:
        counts: dict[str, int] = dict(
            conn.execute(
                "SELECT state, count(*) FROM delivery WHERE send_id = %s GROUP BY state", (send_id,)
            ).fetchall()
        )
        first, last = one_row(
            conn,
            "SELECT min(first_attempt_at), max(updated_at) FROM delivery WHERE send_id = %s",
            (send_id,),
        )
        status, started, finished = one_row(
            conn, "SELECT status, started_at, finished_at FROM send WHERE id = %s", (send_id,)
        )
    return {
        "counts": counts,
        "first": first,
        "last": last,
        "status": status,
        "started": started,
        "finished": finished,
    }


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    mem = (
        subprocess.run(["free", "-h"], capture_output=True, text=True)
        .stdout.splitlines()[1]
        .split()[1]
    )
    return f"{os.cpu_count()} CPUs ({cpu}), {mem} RAM, Python {sys.version.split()[0]}"


def one_row(
    conn: psycopg.Connection[Any], query: str, params: tuple[object, ...] = ()
) -> tuple[Any, ...]:
    """The single row of an aggregate or by-id query; RuntimeError when there is none."""
    row = conn.execute(query, params).fetchone()
    if row is None:
        raise RuntimeError(f"no row for {query.split(' FROM ')[0]}")
    return tuple(row)


def batch_ranges(session: Session, send_id: int, size: int) -> Iterator[tuple[int, int]]:
    """(first id, last id) of consecutive runs of ``size`` deliveries of ``send_id``, by keyset
    pagination: the benchmark sends every delivery, due or not (``pending_batches`` would skip)."""
    from sqlalchemy import select

    from worker.models import Delivery

    after = 0
    while True:
        ids = session.scalars(
            select(Delivery.id)
            .where(Delivery.send_id == send_id, Delivery.id > after)
            .order_by(Delivery.id)
            .limit(size)
        ).all()
        if not ids:
            return
        yield ids[0], ids[-1]
        after = ids[-1]
