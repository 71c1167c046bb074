"""Benchmark: the CPU cost per message of sealed addresses (target: under 10 µs added).

Sending a message opens the reader's ``email`` and ``ascii_email`` (``worker.models.
EncryptedText``: AES-256-GCM, ``worker.safety.keyring``) and derives the throttling
domain from them.
Times, per call, in one process: ``Keyring.open`` of one address, the same through the column
type (what a SELECT of a subscriber does, twice per row), ``recipient_domain``, ``seal`` (a
signup) and ``blind_index`` (a look-up by address). Example::

    .venv/bin/python bench/address_sealing.py
"""

from __future__ import annotations

import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy.dialects import postgresql

from worker.models import EncryptedText
from worker.safety import keyring
from worker.subscriptions.addresses import recipient_domain

ROUNDS = 200_000


def per_call_us(statement: str, scope: dict[str, object]) -> float:
    best = min(timeit.repeat(statement, globals=scope, number=ROUNDS, repeat=5))
    return best / ROUNDS * 1e6


def main() -> None:
    ring = keyring.keyring_from_env({"NEWSLETTER_DATA_KEY": keyring.new_data_key()})
    keyring.install(ring)
    address = "chytach.reader@example.org"
    sealed = ring.seal(address, "subscriber.email")
    column = EncryptedText("subscriber.email")
    dialect = postgresql.psycopg.dialect()  # type: ignore[no-untyped-call]
    scope = {
        "ring": ring,
        "sealed": sealed,
        "address": address,
        "column": column,
        "dialect": dialect,
        "recipient_domain": recipient_domain,
    }
    opened = per_call_us("ring.open(sealed, 'subscriber.email')", scope)
    typed = per_call_us("column.process_result_value(sealed, dialect)", scope)
    domain = per_call_us("recipient_domain(address, address)", scope)
    # a yardstick: the same machine's SHA-256 of the address (shared or throttled CPUs show here)
    scope["hashlib"] = __import__("hashlib")
    yardstick = per_call_us("hashlib.sha256(address.encode()).hexdigest()", scope)
    print(f"yardstick, SHA-256 of the address:  {yardstick:6.2f} µs")
    print(f"open one address:                  {opened:6.2f} µs")
    print(f"open through the column type:      {typed:6.2f} µs")
    print(f"recipient_domain (throttling):     {domain:6.2f} µs")
    print(f"per message (email + ascii_email + domain): {2 * typed + domain:6.2f} µs added")
    seal = per_call_us("ring.seal(address, 'subscriber.email')", scope)
    index = per_call_us("ring.blind_index(address)", scope)
    print(f"seal one address (signup):         {seal:6.2f} µs")
    print(f"blind index (look-up by address):  {index:6.2f} µs")


if __name__ == "__main__":
    main()
