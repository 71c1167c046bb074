"""The product's actors with ``send_batch`` swapped for the chunked-ledger PROTOTYPE in
``bench/batched_dispatch.py``; for ``bench/e2e_throughput.py --actors bench.batched_actors`` only."""

from __future__ import annotations

import worker.actors as actors
from bench.batched_dispatch import send_batch
from worker.actors import *  # noqa: F403  (the actors dramatiq should run)

actors.send_batch_domain = send_batch  # looked up at call time by the send_batch actor
