"""Where the test suite finds its services, so that two runs on one machine never share them.

``TEST_REDIS_URL`` names the Redis server and the database number of the main slot (default
``redis://127.0.0.1:6379/15``); tests that need a Redis of their own take the next lower database
numbers (:func:`redis_url`). A second run on the same machine sets another server or database
range, e.g. ``TEST_REDIS_URL=redis://127.0.0.1:6380/15``. ``TEST_PG_ADMIN`` names the PostgreSQL
server; each run creates databases of its own there.
"""

from __future__ import annotations

import os

# The tests' data key (worker.safety.keyring, base64 of 32 bytes) and an environment holding it.
DATA_KEY = "dGVzdC1kYXRhLWtleS0wMTIzNDU2Nzg5YWJjZGVmMDE="
DATA_KEY_ENV = {"NEWSLETTER_DATA_KEY": DATA_KEY}
PG_ADMIN = os.environ.get("TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")
_REDIS = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def redis_url(slot: int = 0) -> str:
    """The Redis URL of ``slot`` (0: the main test database; 1, 2, 3: tests that need their own)."""
    server, _, db = _REDIS.rpartition("/")
    number = int(db) - slot
    if number < 0:
        raise ValueError(f"TEST_REDIS_URL={_REDIS}: slot {slot} needs database {number}")
    return f"{server}/{number}"
