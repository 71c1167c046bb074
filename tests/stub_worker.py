"""An in-process dramatiq worker on the StubBroker, for tests that run actors without Redis."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.stub import StubBroker

from worker import broker


class StubWorker:
    """Runs the actors of every queue in ``broker.QUEUES`` in two threads of this process."""

    def __init__(self, stub: StubBroker) -> None:
        self.stub = stub
        self.worker = dramatiq.Worker(stub, worker_threads=2, worker_timeout=50)

    def start(self) -> None:
        """Empty every queue, then start the threads."""
        self.stub.flush_all()
        self.worker.start()

    def join(self) -> None:
        """Wait until every queue is empty; re-raises the first actor failure (``fail_fast``)."""
        for _ in range(3):  # actors enqueue follow-ups on other queues
            for queue in broker.QUEUES:
                self.stub.join(queue, fail_fast=True)
            self.worker.join()

    def stop(self) -> None:
        """Stop the threads and drop what is left on the queues."""
        self.worker.stop()
        self.stub.flush_all()
