"""The product's actors with two PROTOTYPE changes, for the benchmark's worker processes only
(``bench/e2e_throughput.py --actors bench.batched_actors``):

1. ``send_batch`` writes the ledger per chunk (``bench/batched_dispatch.py``);
2. SMTP dot-stuffing with ``bytes.replace`` instead of smtplib's multiline regex
   (``smtplib._quote_periods``: 0.45 ms for a 48 KB message, most of smtplib's CPU).
"""

from __future__ import annotations

import smtplib

import worker.actors as actors
from bench.batched_dispatch import quote_periods
from bench.batched_dispatch import send_batch as chunked_send_batch
from worker.actors import *  # noqa: F403  (the actors dramatiq should run)

# Looked up at call time by the send_batch actor; mypy does not know the re-bound import name.
actors.send_batch_domain = chunked_send_batch  # type: ignore[attr-defined]
smtplib._quote_periods = quote_periods  # type: ignore[attr-defined]
