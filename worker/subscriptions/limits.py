"""Abuse limits of the double opt-in: how many signups and confirmation mails a window allows.

Signup forms are used to bomb strangers' inboxes with confirmation mails. Three limits, each a
sliding window shared by every process through Redis:

- signups per IP address per hour (a refused signup is recorded, nothing is stored or sent);
- confirmation mails per address per day, and at most one per *resend window* for an address
  that is already pending (a repeated signup re-sends at most once per window);
- confirmation mails per recipient domain per minute (pacing: the mail waits for a slot);
- stored refusals per source and per hour overall, so that a flood of bad requests cannot grow
  the database without bound (a refusal over the limit is answered, counted, not stored).

IPv6 sources are counted per /64 (one customer's network: RFC 6177 §2 assigns at least a /64, and
anyone holding one can pick any address in it); addresses per mailbox (``Address.mailbox_key``).

``SignupLimiter`` is the port the domain (``worker.subscriptions.signups``) and the actors use;
``RedisSignupLimiter`` is the adapter (one Lua script: an exact sliding log per key, all keys
checked before any is counted), ``MemorySignupLimiter`` the single-process stand-in for the demo.
Keys hold keyed hashes (HMAC-SHA256 under a key derived from the secret key, :func:`limit_key`)
of the IP group, the mailbox and the recipient domain, never an address, IP or domain in clear;
members are random ids; every key expires with its window (``PEXPIRE``).
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv6Address, ip_address, ip_network
from typing import Any, Protocol

DAY = 86_400.0
HOUR = 3_600.0
MINUTE = 60.0


@dataclass(frozen=True)
class AbuseLimits:
    """Configured limits; a limit of 0 means unlimited. Windows in seconds."""

    confirmations_per_address_per_day: int = 3
    signups_per_ip_per_hour: int = 20
    confirmations_per_domain_per_minute: int = 60
    resend_window_seconds: float = 600.0
    refusals_per_source_per_hour: int = 20  # stored signup refusals (beyond: logged only)
    refusals_per_hour: int = 600

    @classmethod
    def from_settings(cls, settings: Any) -> AbuseLimits:
        """From ``worker.settings.Settings`` (``confirmation_resend_minutes`` is in minutes)."""
        return cls(
            confirmations_per_address_per_day=settings.confirmations_per_address_per_day,
            signups_per_ip_per_hour=settings.signups_per_ip_per_hour,
            confirmations_per_domain_per_minute=settings.confirmations_per_domain_per_minute,
            resend_window_seconds=settings.confirmation_resend_minutes * 60.0,
            refusals_per_source_per_hour=settings.stored_refusals_per_source_per_hour,
            refusals_per_hour=settings.stored_refusals_per_hour,
        )


@dataclass(frozen=True)
class Verdict:
    """The answer of a limiter: ``reason`` names the limit that refused (None when allowed),
    ``retry_after`` the seconds until that limit has room again."""

    allowed: bool
    reason: str | None = None
    retry_after: float = 0.0


ALLOWED = Verdict(True)


class SignupLimiter(Protocol):
    """The abuse limits as the domain sees them. Each call that returns ``allowed`` counts."""

    def allow_signup(self, ip: str) -> Verdict:
        """One signup from ``ip``; refused with reason ``ip_limit``."""
        ...

    def allow_confirmation(self, address_key: str, *, repeat: bool = True) -> Verdict:
        """One confirmation mail to the address with de-duplication key ``address_key``;
        refused with reason ``resend_window`` (only when ``repeat``: the address was already
        waiting for a confirmation) or ``address_limit``."""
        ...

    def allow_signup_and_confirmation(
        self, ip: str, address_key: str, *, repeat: bool = True
    ) -> tuple[Verdict, Verdict | None]:
        """``allow_signup(ip)`` and, only if it allows, ``allow_confirmation(address_key,
        repeat=repeat)``, in one call (for a new reader, whose mail is known to be due before
        anything is written). Returns (the IP's verdict, the mailbox's or None when the IP was
        refused: then the mailbox is neither checked nor counted)."""
        ...

    def allow_new_reader(
        self, ip: str | None, address_key: str, domain: str
    ) -> tuple[Verdict, Verdict | None, Verdict | None]:
        """A first signup of an address, whose confirmation mail is due unless a limit refuses,
        in one call: ``allow_signup(ip)`` (skipped without an IP), then
        ``allow_confirmation(address_key, repeat=True)``, then ``allow_domain(domain)`` (the
        mail's pacing slot), each only if the one before allowed. Returns (the IP's verdict,
        ALLOWED without an IP; the mailbox's; the domain's), None for what was neither checked
        nor counted. A refused domain slot counts nothing and leaves the other two counted: the
        mail is due, it only waits (``retry_after``)."""
        ...

    def allow_record(self, source: str | None) -> Verdict:
        """One stored signup refusal from ``source`` (an IP, None when unknown); refused with
        reason ``record_limit`` (the refusal is then counted, not stored)."""
        ...

    def allow_domain(self, domain: str) -> Verdict:
        """One confirmation mail to recipient ``domain`` (A-label); refused with reason
        ``domain_limit`` and the seconds until a slot frees."""
        ...


@dataclass(frozen=True)
class _Window:
    key: str
    limit: int
    seconds: float
    reason: str


class _WindowedLimiter:
    """The key naming shared by both implementations; subclasses implement ``_take``."""

    def __init__(
        self, limits: AbuseLimits, hash_key: str, prefix: str = "newsletter:abuse"
    ) -> None:
        self.limits = limits
        self._hash_key = limit_key(hash_key)
        self._prefix = prefix

    def _hashed(self, kind: str, value: str) -> str:
        digest = hmac.new(self._hash_key, value.casefold().encode(), hashlib.sha256).hexdigest()[
            :32
        ]
        return f"{self._prefix}:{kind}:{digest}"

    def allow_signup(self, ip: str) -> Verdict:
        limit = self.limits.signups_per_ip_per_hour
        return self._take([_Window(self._hashed("ip", ip_group(ip)), limit, HOUR, "ip_limit")])

    def allow_record(self, source: str | None) -> Verdict:
        windows = [
            _Window(f"{self._prefix}:record", self.limits.refusals_per_hour, HOUR, "record_limit")
        ]
        if source:  # an event without a source (the website's, through the queue): overall only
            limit = self.limits.refusals_per_source_per_hour
            key = self._hashed("record", ip_group(source))
            windows.append(_Window(key, limit, HOUR, "record_limit"))
        return self._take(windows)

    def allow_confirmation(self, address_key: str, *, repeat: bool = True) -> Verdict:
        return self._take(self._confirmation(address_key, repeat))

    def allow_signup_and_confirmation(
        self, ip: str, address_key: str, *, repeat: bool = True
    ) -> tuple[Verdict, Verdict | None]:
        limit = self.limits.signups_per_ip_per_hour
        signup = [_Window(self._hashed("ip", ip_group(ip)), limit, HOUR, "ip_limit")]
        first, second = self._take_groups([signup, self._confirmation(address_key, repeat)])
        assert first is not None  # the first group is always checked
        return first, second

    def allow_new_reader(
        self, ip: str | None, address_key: str, domain: str
    ) -> tuple[Verdict, Verdict | None, Verdict | None]:
        groups = [self._confirmation(address_key, True), [self._domain(domain)]]
        if ip:
            limit = self.limits.signups_per_ip_per_hour
            groups.insert(0, [_Window(self._hashed("ip", ip_group(ip)), limit, HOUR, "ip_limit")])
        verdicts = self._take_groups(groups)
        first, mailbox, slot = verdicts if ip else [ALLOWED, *verdicts]
        assert first is not None  # the first group is always checked
        return first, mailbox, slot

    def _confirmation(self, address_key: str, repeat: bool) -> list[_Window]:
        resend = self.limits.resend_window_seconds
        # A first mail is not checked against the resend window but starts it (limit -1).
        resend_limit = (1 if repeat else -1) if resend > 0 else 0
        return [
            _Window(
                self._hashed("resend", address_key),
                resend_limit,
                resend,
                "resend_window",
            ),
            _Window(
                self._hashed("address", address_key),
                self.limits.confirmations_per_address_per_day,
                DAY,
                "address_limit",
            ),
        ]

    def allow_domain(self, domain: str) -> Verdict:
        return self._take([self._domain(domain)])

    def _domain(self, domain: str) -> _Window:
        limit = self.limits.confirmations_per_domain_per_minute
        # hashed too: a reader's own domain (anna-k.by) names the reader as well as the address
        key = self._hashed("domain", domain.lower())
        return _Window(key, limit, MINUTE, "domain_limit")

    def _take(self, windows: Sequence[_Window]) -> Verdict:
        verdict = self._take_groups([windows])[0]
        assert verdict is not None  # the first group is always checked
        return verdict

    def _take_groups(self, groups: Sequence[Sequence[_Window]]) -> list[Verdict | None]:
        """Each group in turn, as one ``_take``, until one refuses: the verdict of each group
        checked, None for the groups after a refusal (neither checked nor counted)."""
        raise NotImplementedError


# Sliding log per key: drop entries older than the window, refuse if any key of a group is full
# (with the wait until its oldest entry leaves), otherwise add one entry to every key of the
# group and go on with the next group (a refusal ends the call: later groups are untouched). A
# limit of 0 means no limit (nothing stored), -1 "record only" (stored, not checked). ARGV: the
# member, then (limit, window ms, group number) per key, groups in order. Server time, so that
# processes on different hosts agree.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local first = 1
while first <= #KEYS do
  local group = ARGV[3 * first + 1]
  local last = first
  while last < #KEYS and ARGV[3 * (last + 1) + 1] == group do last = last + 1 end
  for i = first, last do
    local limit = tonumber(ARGV[3 * i - 1])
    local window = tonumber(ARGV[3 * i])
    if limit > 0 then
      redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - window)
      if redis.call('ZCARD', KEYS[i]) >= limit then
        local oldest = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
        return {i, tonumber(oldest[2]) + window - now}
      end
    end
  end
  for i = first, last do
    if tonumber(ARGV[3 * i - 1]) ~= 0 then
      redis.call('ZADD', KEYS[i], now, ARGV[1])
      redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[3 * i]))
    end
  end
  first = last + 1
end
return {0, 0}
"""


class RedisSignupLimiter(_WindowedLimiter):
    """The limits in Redis, shared by every worker and web process (one script call each)."""

    def __init__(
        self, client: Any, limits: AbuseLimits, hash_key: str, prefix: str = "newsletter:abuse"
    ) -> None:
        super().__init__(limits, hash_key, prefix)
        self._script: Callable[..., Any] = client.register_script(_TAKE)

    def _take_groups(self, groups: Sequence[Sequence[_Window]]) -> list[Verdict | None]:
        args: list[object] = [uuid.uuid4().hex]
        keys: list[str] = []
        owner: list[int] = []  # the group of each key
        for number, windows in enumerate(groups):
            for window in windows:
                args += [window.limit, max(1, int(window.seconds * 1000)), number]
                keys.append(window.key)
                owner.append(number)
        index, wait_ms = self._script(keys=keys, args=args)
        if int(index) == 0:
            return [ALLOWED for _ in groups]
        refused = owner[int(index) - 1]
        window = [w for windows in groups for w in windows][int(index) - 1]
        verdict = Verdict(False, window.reason, max(0.0, int(wait_ms) / 1000))
        return [ALLOWED] * refused + [verdict] + [None] * (len(groups) - refused - 1)


class MemorySignupLimiter(_WindowedLimiter):
    """The same limits in this process only (the demo without Redis; not for several processes)."""

    def __init__(
        self, limits: AbuseLimits, hash_key: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(limits, hash_key)
        self._logs: dict[str, deque[float]] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def _take_groups(self, groups: Sequence[Sequence[_Window]]) -> list[Verdict | None]:
        verdicts: list[Verdict | None] = []
        with self._lock:
            for windows in groups:
                verdict = self._take_one(windows, self._clock())
                verdicts.append(verdict)
                if not verdict.allowed:
                    break
        return verdicts + [None] * (len(groups) - len(verdicts))

    def _take_one(self, windows: Sequence[_Window], now: float) -> Verdict:
        for window in windows:
            if window.limit <= 0:
                continue
            log = self._logs.setdefault(window.key, deque())
            while log and log[0] <= now - window.seconds:
                log.popleft()
            if len(log) >= window.limit:
                return Verdict(False, window.reason, log[0] + window.seconds - now)
        for window in windows:
            if window.limit != 0:
                self._logs.setdefault(window.key, deque()).append(now)
        return ALLOWED


LIMIT_KEY_PURPOSE = b"newsletter abuse-limit keys v1"


def limit_key(secret_key: str) -> bytes:
    """The key of the limits' HMACs: derived from the secret key (HMAC-SHA256 of a fixed purpose
    label, the "extract" step of RFC 5869 §2.2), so that the Redis key names of one purpose are
    no oracle for the secret key's other uses (link tokens, the website's signature)."""
    return hmac.new(secret_key.encode(), LIMIT_KEY_PURPOSE, hashlib.sha256).digest()


def ip_group(ip: str) -> str:
    """What one sender controls: an IPv4 address, or the /64 of an IPv6 address (an IPv4-mapped
    IPv6 address is its IPv4 address). Text that is no IP address is returned as it is.

    ``"2001:db8::1"`` -> ``"2001:db8::/64"``.
    """
    try:
        address = ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ip_network(f"{address}/64", strict=False))
    return str(address)


def signup_limiter(settings: Any) -> SignupLimiter:
    """The limiter for ``worker.settings.Settings``: Redis if ``redis_url`` is set, else memory."""
    limits = AbuseLimits.from_settings(settings)
    if not settings.redis_url:
        return MemorySignupLimiter(limits, settings.secret_key)
    import redis

    return RedisSignupLimiter(redis.Redis.from_url(settings.redis_url), limits, settings.secret_key)
