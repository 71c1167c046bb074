"""Real processes for queue tests: a redis-server on a spare port, dramatiq worker processes
started by the dramatiq CLI, and the reconciler (``newsletter scheduler``), all killable."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import text

from tests.samples import SAMPLE_EDITION
from worker.actors import PLANNING_PATIENCE
from worker.broker import BatchHints
from worker.db import make_engine
from worker.devtools.outbox import free_port
from worker.models import Base

SECRET = "queue-test-secret-0123456789"
QUEUES = ("signups", "transactional", "sends", "deliveries")


def truncate(db_url: str) -> None:
    engine = make_engine(db_url)
    with engine.begin() as conn:
        tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


class RedisServer:
    """``redis-server`` on a spare port, keeping nothing on disk (a restart empties it)."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


class Fleet:
    """Worker process groups and the scheduler, with the environment the operator would give."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder = folder
        self.env = env
        self.groups: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: list[Any] = []

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = (self.folder / f"{name}-{uuid.uuid4().hex[:6]}.log").open("wb")
        self.logs.append(log)
        env = {**self.env, "NEWSLETTER_METRICS_PORT": str(free_port())}  # one exposition port each
        self.groups[name] = subprocess.Popen(
            argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def start_workers(self, name: str, processes: int = 1, threads: int = 1) -> None:
        """``python -m dramatiq worker.actors -p N -t M`` as process group ``name``."""
        self._spawn(
            name,
            [
                sys.executable,
                "-m",
                "dramatiq",
                "worker.actors",
                "-p",
                str(processes),
                "-t",
                str(threads),
            ],
        )

    def start_scheduler(self, interval: float = 1.0) -> None:
        self._spawn(
            "scheduler",
            [
                sys.executable,
                "-c",
                "from worker.cli import main; main()",
                "scheduler",
                "--interval",
                str(interval),
            ],
        )

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.groups.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)

    def stop(self) -> None:
        for name in list(self.groups):
            self.kill(name, signal.SIGTERM)
        for log in self.logs:
            log.close()

    def log_tail(self, chars: int = 3000) -> str:
        return "".join(
            p.read_text(errors="replace")[-chars:] for p in sorted(self.folder.glob("*.log"))
        )


def worker_env(db_url: str, redis_url: str, smtp_url: str, **settings: Any) -> dict[str, str]:
    """The environment of every worker process; ``settings`` become ``NEWSLETTER_<NAME>``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env["NEWSLETTER_DATA_KEY"] = os.environ["NEWSLETTER_DATA_KEY"]  # the suite's (conftest)
    env.update(
        NEWSLETTER_BROKER="redis",
        NEWSLETTER_REDIS_URL=redis_url,
        NEWSLETTER_DATABASE_URL=db_url,
        NEWSLETTER_SMTP_URL=smtp_url,
        NEWSLETTER_SECRET_KEY=SECRET,
        NEWSLETTER_PUBLIC_URL="http://testserver",
        NEWSLETTER_BOUNCE_DOMAIN="news.example.org",
        NEWSLETTER_NEWSLETTER_PATH=str(SAMPLE_EDITION / "newsletter.yaml"),
    )
    env.update({f"NEWSLETTER_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def enqueue(redis_url: str, queue: str, actor: str, *args: Any) -> None:
    """Enqueue one dramatiq message the way ``newsletter send start`` does."""
    broker = RedisBroker(url=redis_url)  # type: ignore[no-untyped-call]
    broker.enqueue(
        dramatiq.Message(queue_name=queue, actor_name=actor, args=args, kwargs={}, options={})
    )
    broker.close()


def start_planning(redis_url: str, send_id: int) -> None:
    """Enqueue the planning of a send created now, its hint first, the way ``newsletter send
    start`` does (``actors.start_planning``): without the hint the scheduler's reconciler would
    take the message for lost and enqueue a second one."""
    client = redis.Redis.from_url(redis_url)
    BatchHints(client).alive(f"plan:{send_id}", PLANNING_PATIENCE)
    client.close()
    enqueue(redis_url, "sends", "plan_send", send_id)


def dead_letters(redis_url: str) -> int:
    client = redis.Redis.from_url(redis_url)
    return sum(int(client.zcard(f"dramatiq:{q}.XQ")) for q in QUEUES)


def wait_for(condition: Callable[[], bool], timeout: float, fleet: Fleet, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}\n{fleet.log_tail()}")


@contextmanager
def running(folder: Path, env: dict[str, str]) -> Iterator[Fleet]:
    fleet = Fleet(folder, env)
    try:
        yield fleet
    finally:
        fleet.stop()
