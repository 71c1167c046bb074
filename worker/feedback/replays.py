"""Used webhook signatures, remembered so that none is accepted twice for different content.

A provider that signs only a timestamp and a random token (Mailgun: HMAC of ``timestamp +
token``) lets anyone who saw one signed request paste its signature block onto another event
within the accepted window. Each token is remembered with a digest of the body it came with, for
as long as its timestamp is acceptable: the same body again is the provider's retry (recording
is idempotent on the event id), any other body is a replay.

``RedisReplays`` shares the memory between every web process (``SET NX`` with an expiry, so a
forgotten token is one that could no longer pass the freshness check anyway);
``MemoryReplays`` is the single-process stand-in for the demo without Redis.
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any, Protocol


class Replays(Protocol):
    """Remembers signature tokens; the port the webhook routes use."""

    def first_use(self, provider: str, token: str, body: bytes, ttl_seconds: int) -> bool:
        """True when ``token`` is new, or came before with exactly ``body`` (a retry); False
        when it came with another body (a replay). A new token is remembered ``ttl_seconds``."""
        ...


def _digest(value: bytes | str) -> str:
    data = value.encode("utf-8", "replace") if isinstance(value, str) else value
    return hashlib.sha256(data).hexdigest()


class RedisReplays:
    """Tokens in Redis under ``<prefix>:<provider>:<sha256(token)>`` (no token in clear)."""

    def __init__(self, client: Any, prefix: str = "newsletter:webhook-token") -> None:
        self._client = client
        self._prefix = prefix

    def first_use(self, provider: str, token: str, body: bytes, ttl_seconds: int) -> bool:
        key = f"{self._prefix}:{provider}:{_digest(token)}"
        digest = _digest(body)
        if self._client.set(key, digest, nx=True, ex=max(1, ttl_seconds)):
            return True
        stored = self._client.get(key)
        return stored is not None and stored.decode() == digest


class MemoryReplays:
    """The same in this process only (the demo without Redis; not for several processes)."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def first_use(self, provider: str, token: str, body: bytes, ttl_seconds: int) -> bool:
        now = time.monotonic()
        key, digest = f"{provider}:{_digest(token)}", _digest(body)
        with self._lock:
            self._seen = {k: v for k, v in self._seen.items() if v[1] > now}
            known = self._seen.get(key)
            if known is None:
                self._seen[key] = (digest, now + ttl_seconds)
                return True
            return known[0] == digest
