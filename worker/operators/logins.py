"""Failed dashboard logins, counted so that the operator password cannot be guessed at speed.

The dashboard has one account (HTTP Basic, any user name, one password), so "per account" is
every failure from anywhere. Two fixed windows of :data:`WINDOW_SECONDS`: failures per peer (an
IPv6 peer counts per /64, which one host usually holds whole) and failures in all. While either
is full every attempt is refused, right password or not, with the seconds until the window
ends; otherwise a guesser would learn the password from the one attempt that is not refused.

The total limit lets anyone lock the operators out for one window by failing on purpose; that is
the price of a limit a botnet cannot spread across peers, and the dashboard only reads.
Counters live in Redis (shared by every web process) under keyed hashes, never an IP in clear;
``MemoryLogins`` is the single-process stand-in for the demo without Redis.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from ipaddress import IPv6Address, ip_address, ip_network
from typing import Any

WINDOW_SECONDS = 900
# The dashboard's counters; the desk counts under its own prefixes (worker.web.desk.access)
PREFIX = "newsletter:login-failures"


def peer_group(host: str) -> str:
    """The unit a peer is counted in: the IPv4 address, or the IPv6 /64 (RFC 4291 §2.5.4: a
    host's interface identifier is the low 64 bits); text that is no address is itself."""
    try:
        address = ip_address(host)
    except ValueError:
        return host
    if not isinstance(address, IPv6Address):
        return str(address)
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ip_network(f"{address}/64", strict=False))


class _Logins:
    def __init__(
        self, per_peer: int, total: int, hash_key: str, window: int, prefix: str = PREFIX
    ) -> None:
        self.per_peer = per_peer
        self.prefix = prefix
        self.total = total
        self.window = window
        self._hash_key = hash_key.encode()

    def _keys(self, peer: str) -> tuple[tuple[str, int], ...]:
        digest = hmac.new(self._hash_key, peer_group(peer).encode(), hashlib.sha256).hexdigest()
        prefix = self.prefix
        return ((f"{prefix}:peer:{digest[:32]}", self.per_peer), (f"{prefix}:all", self.total))


class RedisLogins(_Logins):
    """The failure counters in Redis (``INCR`` and an expiry set by the first failure)."""

    def __init__(
        self,
        client: Any,
        per_peer: int,
        total: int,
        hash_key: str,
        window: int = WINDOW_SECONDS,
        prefix: str = PREFIX,
    ) -> None:
        super().__init__(per_peer, total, hash_key, window, prefix)
        self._client = client

    def retry_after(self, peer: str) -> int:
        """Seconds until ``peer`` may try again; 0 when it may now."""
        wait = 0
        for key, limit in self._keys(peer):
            count = self._client.get(key)
            if limit > 0 and count is not None and int(count) >= limit:
                wait = max(wait, int(self._client.ttl(key)), 1)
        return wait

    def failed(self, peer: str) -> None:
        """Count one failed login of ``peer``."""
        pipe = self._client.pipeline()
        for key, _limit in self._keys(peer):
            pipe.incr(key)
            pipe.expire(key, self.window, nx=True)
        pipe.execute()


class MemoryLogins(_Logins):
    """The same counters in this process only (the demo without Redis)."""

    def __init__(
        self,
        per_peer: int,
        total: int,
        hash_key: str,
        window: int = WINDOW_SECONDS,
        prefix: str = PREFIX,
    ) -> None:
        super().__init__(per_peer, total, hash_key, window, prefix)
        self._counts: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, peer: str) -> int:
        now = time.monotonic()
        wait = 0
        with self._lock:
            for key, limit in self._keys(peer):
                count, ends = self._counts.get(key, (0, now))
                if limit > 0 and ends > now and count >= limit:
                    wait = max(wait, int(ends - now) + 1)
        return wait

    def failed(self, peer: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key, _limit in self._keys(peer):
                count, ends = self._counts.get(key, (0, now))
                self._counts[key] = (count + 1, ends) if ends > now else (1, now + self.window)


Logins = RedisLogins | MemoryLogins
