"""A worker thread's SMTP connection and the shared connection slot it holds.

A provider counts sessions, and it still counts a closed one for a moment after our QUIT: a
thread that closes its connection at the end of each batch and opens a new one for the next
looks, for that moment, like one connection too many (421 4.7.0 at connect). So a thread keeps
its connection open, and its slot taken, across batches that follow each other, and resets the
session (RSET) before using it again; only after ``idle_seconds`` without a batch does it close
the connection and give the slot back, which the throttle frees only after its settle time.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable

from worker.sending.ports import Mailer, Throttle

POLL_SECONDS = (0.05, 0.15)  # a batch waiting for a slot asks again after a random pause in this


class ConnectionSlot:
    """One thread's ``mailer`` and its slot among the throttle's shared SMTP connections.

    The owner thread calls ``take`` before a batch and ``put_down`` (keep the connection open for
    ``idle_seconds``) or ``close`` after it. The idle timer runs on its own thread: a lock and a
    generation number make sure it never closes a connection a new batch has taken up again.
    """

    def __init__(self, mailer: Mailer, throttle: Throttle, idle_seconds: float = 1.0) -> None:
        self.mailer = mailer
        self.throttle = throttle
        self.idle_seconds = idle_seconds
        self.holder = uuid.uuid4().hex
        self.held = False
        self.reused = 0  # batches that found the connection of the previous one still open
        self._lock = threading.Lock()
        self._generation = 0
        self._timer: threading.Timer | None = None

    def take(
        self,
        ttl: float,
        wait: float,
        sleep: Callable[[float], None] = time.sleep,
        beat: Callable[[], None] = lambda: None,
    ) -> bool:
        """Hold a slot for ``ttl`` seconds, waiting up to ``wait`` seconds for one (``beat``
        while waiting). True: the slot is held, with the previous batch's connection if it was
        still open (reset with RSET first). False: none came free in time."""
        with self._lock:
            self._generation += 1  # the idle timer, if any, now does nothing
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self.held:
                if self.throttle.acquire_connection(self.holder, ttl):
                    self.reused += 1
                    _reset(self.mailer)
                    return True
                self._close_locked(release=False)  # its slot expired: not ours any more
        deadline = time.monotonic() + wait
        while not self.throttle.acquire_connection(self.holder, ttl):
            if time.monotonic() >= deadline:
                return False
            beat()
            sleep(random.uniform(*POLL_SECONDS))
        with self._lock:
            self.held = True
        return True

    def extend(self, ttl: float) -> None:
        """Keep the slot ``ttl`` seconds more (a long batch)."""
        self.throttle.acquire_connection(self.holder, ttl)

    def put_down(self) -> None:
        """The batch is over: keep the connection and the slot for ``idle_seconds``, for the
        thread's next batch; then close and release them."""
        with self._lock:
            if not self.held:
                return
            self._generation += 1
            timer = threading.Timer(self.idle_seconds, self._idle, args=(self._generation,))
            timer.daemon = True
            self._timer = timer
            timer.start()

    def close(self) -> None:
        """Close the connection (QUIT) and release the slot now."""
        with self._lock:
            self._generation += 1
            self._close_locked(release=True)

    def _idle(self, generation: int) -> None:
        with self._lock:
            if generation == self._generation:
                self._close_locked(release=True)

    def _close_locked(self, *, release: bool) -> None:
        # QUIT first: the slot is free only once the session is over
        self.mailer.close()
        if self.held and release:
            self.throttle.release_connection(self.holder)
        self.held = False
        self.holder = uuid.uuid4().hex  # a new slot never shares a name with a settling one


def _reset(mailer: Mailer) -> None:
    """RSET on a kept connection when the mailer can (``SmtpMailer.reset``); a dead connection is
    closed there and re-opened by the next ``send``."""
    reset = getattr(mailer, "reset", None)
    if callable(reset):
        reset()
