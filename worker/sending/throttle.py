"""Sending limits shared by every worker process: one atomic Redis script per message.

dramatiq's bucket and window limiters were measured letting 175–180 messages through in a sliding
second for a limit of 100. Here one Lua script reserves a send
slot instead, reading the server's clock (``TIME``):

- the global rate is a calendar of slots ``1/rate`` apart (a sorted set of booked slot numbers):
  a message takes the first free slot not earlier than its domain allows, so booking a far slot
  for a slow domain never blocks an earlier free slot for another domain;
- each recipient domain keeps the time of its next free slot, moved ``1/rate`` past the slot just
  granted, so its messages are spaced exactly ``1/rate`` apart in sending time;
- nothing is booked beyond ``max_wait`` seconds: the caller is told how far the slot is and comes
  back later (a batch re-enqueues itself).

All processes on all machines share the same calendar, so any one-second window holds at most
``rate`` (+1 at the edge) messages. A rate change starts a new calendar at once (the old one's
bookings, at most ``max_wait`` ahead, still go out).

Rates live in the Redis hash ``<prefix>:rates`` (fields ``global``, ``domain:<name>`` in messages
per second, 0 = unlimited, and ``connections``) so that ``newsletter throttle set`` changes a
running send. Defaults come from the settings.

Adaptive slowing: a 421/451 from a domain doubles its penalty factor (the rate is divided by it, at
most by 16); each ``recover_seconds`` without a new 421/451 halves the factor again, so the rate
climbs back step by step. A domain with no rate of its own is slowed from the global rate.

Concurrent SMTP connections are capped by a sorted set of holders scored by their expiry (a
semaphore that frees the slot of a killed process after its ttl).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

import redis

from worker.sending.ports import Reservation

_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local grate = tonumber(redis.call('HGET', KEYS[1], 'global') or ARGV[1])
local drate = tonumber(redis.call('HGET', KEYS[1], 'domain:' .. ARGV[3]) or ARGV[2])
local pen = redis.call('HMGET', KEYS[4], 'factor', 'since')
local factor = tonumber(pen[1] or '1')
if factor > 1 then
  local steps = math.floor((now - tonumber(pen[2])) / tonumber(ARGV[5]))
  factor = math.max(1, factor / (2 ^ steps))
  if drate <= 0 then drate = grate end
  drate = drate / factor
end
local maxwait = tonumber(ARGV[4])
local slot = now
if drate > 0 then
  slot = math.max(now, tonumber(redis.call('GET', KEYS[3]) or '0'))
end
if slot - now > maxwait then
  return {0, math.ceil(slot - now)}
end
if grate > 0 then
  -- the global calendar: slot k is at k * interval; take the first free one not before the
  -- domain allows. Booking ahead never blocks an earlier free slot of another domain.
  local gi = 1000 / grate
  local cal = KEYS[2] .. ':' .. tostring(grate)
  local k = math.floor(slot / gi)  -- the current cell counts: a message may go at once
  if (k + 1) * gi <= slot then k = k + 1 end  -- float rounding at a cell boundary
  local kmax = math.floor((now + maxwait) / gi)
  local taken = redis.call('ZRANGEBYSCORE', cal, k, kmax + 1)
  for _, member in ipairs(taken) do
    local v = tonumber(member)
    if v == k then k = k + 1 elseif v > k then break end
  end
  if k > kmax then
    return {0, math.ceil(k * gi - now)}
  end
  redis.call('ZADD', cal, k, string.format('%d', k))
  redis.call('ZREMRANGEBYSCORE', cal, '-inf', math.floor(now / gi) - 2)
  redis.call('PEXPIRE', cal, math.floor(maxwait) + 60000)
  slot = math.max(k * gi, slot)
end
if drate > 0 then
  local nxt = slot + 1000 / drate
  redis.call('SET', KEYS[3], string.format('%.3f', nxt), 'PX', math.floor(nxt - now) + 60000)
end
return {1, math.floor(slot - now + 0.5), string.format('%.3f', slot)}
"""

_SLOW_DOWN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local pen = redis.call('HMGET', KEYS[1], 'factor', 'since')
local factor = tonumber(pen[1] or '1')
if factor > 1 then
  local steps = math.floor((now - tonumber(pen[2])) / tonumber(ARGV[1]))
  factor = math.max(1, factor / (2 ^ steps))
end
factor = math.min(factor * 2, 16)
redis.call('HSET', KEYS[1], 'factor', factor, 'since', now)
redis.call('PEXPIRE', KEYS[1], math.floor(tonumber(ARGV[1]) * 5))
return tostring(factor)
"""

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(redis.call('HGET', KEYS[2], 'connections') or ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZSCORE', KEYS[1], ARGV[2])
if limit > 0 and not held and redis.call('ZCARD', KEYS[1]) >= limit then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
return 1
"""


class RedisThrottle:
    """A ``Throttle`` (see ``worker.sending.ports``) held in Redis.

    ``global_rate`` and ``domain_rates`` are messages per second (0 = unlimited) and
    ``max_connections`` the cap on concurrent SMTP connections (0 = none), used when the Redis hash
    has no value. Slots have sub-millisecond arithmetic; waits are rounded to milliseconds.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        global_rate: float = 0.0,
        domain_rates: Mapping[str, float] | None = None,
        max_connections: int = 0,
        prefix: str = "newsletter:throttle",
        recover_seconds: float = 60.0,
    ) -> None:
        self.client = client
        self.global_rate = global_rate
        self.domain_rates = {k.lower(): v for k, v in (domain_rates or {}).items()}
        self.max_connections = max_connections
        self.prefix = prefix
        self.recover_ms = max(int(recover_seconds * 1000), 1)
        self._reserve = client.register_script(_RESERVE)
        self._slow_down = client.register_script(_SLOW_DOWN)
        self._acquire = client.register_script(_ACQUIRE)

    def reserve(self, domain: str, max_wait: float) -> Reservation:
        """See ``worker.sending.ports.Throttle.reserve``. Raises ``redis.RedisError`` if Redis is
        down."""
        return self.reserve_at(domain, max_wait)[0]

    def reserve_at(self, domain: str, max_wait: float) -> tuple[Reservation, float | None]:
        """``reserve``, plus the granted slot as Unix time on Redis's clock (for benchmarks)."""
        domain = domain.lower()
        keys = [
            f"{self.prefix}:rates",
            f"{self.prefix}:next:global",
            f"{self.prefix}:next:domain:{domain}",
            f"{self.prefix}:penalty:{domain}",
        ]
        args: list[float | int | str] = [
            self.global_rate,
            self.domain_rates.get(domain, 0.0),
            domain,
            int(max_wait * 1000),
            self.recover_ms,
        ]
        reply = self._reserve(keys=keys, args=args)
        at = float(reply[2]) / 1000.0 if len(reply) > 2 else None
        return Reservation(granted=bool(reply[0]), wait=int(reply[1]) / 1000.0), at

    def slow_down(self, domain: str) -> None:
        """Halve ``domain``'s rate (again on each call, down to 1/16); it recovers step by step."""
        self._slow_down(keys=[f"{self.prefix}:penalty:{domain.lower()}"], args=[self.recover_ms])

    def penalty(self, domain: str) -> float:
        """The factor ``domain``'s rate is divided by right now (1 = full rate)."""
        factor, since = self.client.hmget(
            f"{self.prefix}:penalty:{domain.lower()}", ["factor", "since"]
        )
        if factor is None or since is None:
            return 1.0
        seconds, micros = self.client.time()
        now_ms = seconds * 1000 + micros // 1000
        steps = (now_ms - int(since)) // self.recover_ms
        return max(1.0, float(factor) / float(2**steps))

    def set_rate(self, rate: float, domain: str | None = None) -> None:
        """Change a rate for every process at once (messages per second; 0 = unlimited)."""
        field = "global" if domain is None else f"domain:{domain.lower()}"
        self.client.hset(f"{self.prefix}:rates", field, rate)

    def set_max_connections(self, limit: int) -> None:
        """Change the cap on concurrent SMTP connections for every process (0 = none)."""
        self.client.hset(f"{self.prefix}:rates", "connections", limit)

    def rates(self) -> dict[str, float]:
        """The live overrides in the Redis hash (field → value)."""
        raw = self.client.hgetall(f"{self.prefix}:rates")
        return {(k.decode() if isinstance(k, bytes) else k): float(v) for k, v in raw.items()}

    def acquire_connection(self, holder: str, ttl: float) -> bool:
        """See ``worker.sending.ports.Throttle.acquire_connection``."""
        keys = [f"{self.prefix}:connections", f"{self.prefix}:rates"]
        return bool(self._acquire(keys=keys, args=[self.max_connections, holder, int(ttl * 1000)]))

    def release_connection(self, holder: str) -> None:
        self.client.zrem(f"{self.prefix}:connections", holder)


class LocalThrottle:
    """A ``Throttle`` for one process (the demo without Redis): same slot arithmetic, in memory."""

    def __init__(
        self,
        global_rate: float = 0.0,
        domain_rates: Mapping[str, float] | None = None,
        max_connections: int = 0,
    ) -> None:
        self.global_rate = global_rate
        self.domain_rates = dict(domain_rates or {})
        self.max_connections = max_connections
        self._next: dict[str, float] = {}
        self._holders: dict[str, float] = {}
        self._lock = threading.Lock()

    def reserve(self, domain: str, max_wait: float) -> Reservation:
        now = time.monotonic()
        plan = [
            ("global", self.global_rate),
            ("domain:" + domain, self.domain_rates.get(domain, 0.0)),
        ]
        with self._lock:
            slot = max(now, self._next.get("global", 0.0)) if self.global_rate > 0 else now
            domain_key, domain_rate = plan[1]
            free = max(now, self._next.get(domain_key, 0.0)) if domain_rate > 0 else now
            if free > slot:  # the domain is the bottleneck: ask again then (see RedisThrottle)
                return Reservation(False, free - now)
            if slot - now > max_wait:
                return Reservation(False, slot - now)
            if self.global_rate > 0:
                self._next["global"] = slot + 1.0 / self.global_rate
            if domain_rate > 0:
                self._next[domain_key] = free + 1.0 / domain_rate
        return Reservation(True, slot - now)

    def slow_down(self, domain: str) -> None:
        if domain in self.domain_rates:
            self.domain_rates[domain] = max(self.domain_rates[domain] / 2, 0.01)

    def acquire_connection(self, holder: str, ttl: float) -> bool:
        now = time.monotonic()
        with self._lock:
            self._holders = {h: t for h, t in self._holders.items() if t > now}
            full = 0 < self.max_connections <= len(self._holders)
            if full and holder not in self._holders:
                return False
            self._holders[holder] = now + ttl
            return True

    def release_connection(self, holder: str) -> None:
        with self._lock:
            self._holders.pop(holder, None)
