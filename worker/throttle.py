"""Sending rate limits shared by every worker process: one atomic Redis script per message.

dramatiq's bucket and window limiters were measured letting 175–180 messages through in a sliding
second for a limit of 100. Here a Lua script reserves the next free send slot instead: it reads the
server's clock (``TIME``), takes the later of "now" and the next free time of the global and the
recipient domain's schedules, and moves both schedules one interval past that slot. Slots are
therefore spaced exactly ``1/rate`` apart across all processes and machines.

Rates live in the Redis hash ``<prefix>:rates`` (fields ``global`` and one per domain, messages per
second; 0 = unlimited) so that ``newsletter throttle set`` changes a running send. Defaults come
from the settings. A 421/451 from a domain halves its rate for ``penalty_seconds``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

import redis

from worker.ports import Reservation

_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rates = KEYS[1]
local grate = tonumber(redis.call('HGET', rates, 'global') or ARGV[1])
local drate = tonumber(redis.call('HGET', rates, 'domain:' .. ARGV[3]) or ARGV[2])
local penalty = tonumber(redis.call('GET', KEYS[4]) or '1')
drate = drate / penalty
local maxwait = tonumber(ARGV[4])
local slot = now
local g = 0
local d = 0
if grate > 0 then
  g = tonumber(redis.call('GET', KEYS[2]) or '0')
  if g > slot then slot = g end
end
if drate > 0 then
  d = tonumber(redis.call('GET', KEYS[3]) or '0')
  if d > slot then slot = d end
end
if slot - now > maxwait then
  return {0, slot - now}
end
if grate > 0 then
  local nxt = slot + math.floor(1000 / grate + 0.5)
  redis.call('SET', KEYS[2], nxt, 'PX', nxt - now + 60000)
end
if drate > 0 then
  local nxt = slot + math.floor(1000 / drate + 0.5)
  redis.call('SET', KEYS[3], nxt, 'PX', nxt - now + 60000)
end
return {1, slot - now}
"""


class RedisThrottle:
    """A ``Throttle`` (see ``worker.ports``) held in Redis.

    ``global_rate`` and ``domain_rates`` are messages per second (0 = unlimited) used when the
    Redis hash has no value. Millisecond slot resolution: rates above 1000/s are unlimited in effect.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        global_rate: float = 0.0,
        domain_rates: Mapping[str, float] | None = None,
        prefix: str = "newsletter:throttle",
        penalty_seconds: float = 300.0,
    ) -> None:
        self.client = client
        self.global_rate = global_rate
        self.domain_rates = dict(domain_rates or {})
        self.prefix = prefix
        self.penalty_seconds = penalty_seconds
        self._script = client.register_script(_RESERVE)

    def reserve(self, domain: str, max_wait: float) -> Reservation:
        """See ``worker.ports.Throttle.reserve``. Raises ``redis.RedisError`` if Redis is down."""
        domain = domain.lower()
        keys = [
            f"{self.prefix}:rates",
            f"{self.prefix}:next:global",
            f"{self.prefix}:next:domain:{domain}",
            f"{self.prefix}:penalty:{domain}",
        ]
        args = [self.global_rate, self.domain_rates.get(domain, 0.0), domain, int(max_wait * 1000)]
        granted, wait_ms = self._script(keys=keys, args=args)
        return Reservation(granted=bool(granted), wait=int(wait_ms) / 1000.0)

    def slow_down(self, domain: str) -> None:
        """Halve ``domain``'s rate (again on each call, down to 1/16) for ``penalty_seconds``."""
        key = f"{self.prefix}:penalty:{domain.lower()}"
        current = float(self.client.get(key) or 1)
        self.client.set(key, min(current * 2, 16), ex=int(self.penalty_seconds))

    def set_rate(self, rate: float, domain: str | None = None) -> None:
        """Change a rate for every process at once (messages per second; 0 = unlimited)."""
        field = "global" if domain is None else f"domain:{domain.lower()}"
        self.client.hset(f"{self.prefix}:rates", field, rate)


class LocalThrottle:
    """A ``Throttle`` for one process (the demo without Redis): same slot arithmetic, in memory."""

    def __init__(self, global_rate: float = 0.0, domain_rates: Mapping[str, float] | None = None) -> None:
        self.global_rate = global_rate
        self.domain_rates = dict(domain_rates or {})
        self._next: dict[str, float] = {}
        self._lock = threading.Lock()

    def reserve(self, domain: str, max_wait: float) -> Reservation:
        now = time.monotonic()
        plan = [("global", self.global_rate), ("domain:" + domain, self.domain_rates.get(domain, 0.0))]
        with self._lock:
            slot = max([now] + [self._next.get(k, 0.0) for k, rate in plan if rate > 0])
            if slot - now > max_wait:
                return Reservation(False, slot - now)
            for key, rate in plan:
                if rate > 0:
                    self._next[key] = slot + 1.0 / rate
        return Reservation(True, slot - now)

    def slow_down(self, domain: str) -> None:
        if domain in self.domain_rates:
            self.domain_rates[domain] = max(self.domain_rates[domain] / 2, 0.01)
