"""Sending limits shared by every worker process: one atomic Redis script per message (none for
a chunk whose domains have no rate: ``unlimited``, one ``HMGET`` per chunk).

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

The provider counts arrivals, not our slots: a message delayed by a busy machine arrives later
than its slot, next to the following ones, and an 11th message lands in some second. So the
global rate is also held as a sliding window over what the provider can have seen: a message
may start only while fewer than ``rate`` messages are in flight or were completed (its reply
read) within the second before its slot. The provider's acceptance of a message lies between
our start and our reading of its reply, so no one-second window of its acceptances holds more
than ``rate``, however late any thread runs. ``reserve`` returns a ``token``; ``sent(token)``
reports the reply (a token never reported stops counting after ``inflight_ttl``).

Adaptive slowing (AIMD, as TCP does): a 421/451 about the rate from a domain halves its rate
(at most once a second, so the replies to messages already under way count once; down to 1/16);
the rate then climbs back linearly, reaching the configured rate ``recover_seconds`` after the
deepest cut. A domain with no rate of its own is slowed from the global rate.

Concurrent SMTP connections are capped by a sorted set of holders scored by their expiry (a
semaphore that frees the slot of a killed process after its ttl). A released slot stays taken
for ``settle_seconds`` more: the provider still counts a session for a moment after our QUIT,
and a slot reused at once looks like one connection too many. A 421 at connect (too many
connections) lowers the cap by one for ``recover_seconds`` (``fewer_connections``), not the rate.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Collection, Mapping

import redis

from worker.sending.ports import Reservation

MIN_SHARE = 1 / 16  # the deepest cut of a domain's rate
HOLD_MS = 1000  # one cut per second at most: replies to messages already under way count once
BUSY_WAIT_MS = 50  # the window is full of messages in flight: ask again this much later

# The keys (KEYS) and arguments (ARGV) of every script are listed where it is called.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
if ARGV[6] ~= '' and redis.call('ZREM', KEYS[5], ARGV[6]) == 1 then
  redis.call('ZADD', KEYS[6], now, ARGV[6])  -- the previous message's reply: folded in here
end
local grate = tonumber(redis.call('HGET', KEYS[1], 'global') or ARGV[1])
local drate = tonumber(redis.call('HGET', KEYS[1], 'domain:' .. ARGV[3]) or ARGV[2])
local pen = redis.call('HMGET', KEYS[4], 'share', 'since')
if pen[1] then
  local share = math.min(1, tonumber(pen[1]) + (now - tonumber(pen[2])) / tonumber(ARGV[5]))
  if share < 1 then
    if drate <= 0 then drate = grate end
    drate = drate * share
  end
end
local maxwait = tonumber(ARGV[4])
local wstart = 0
local slot = now
if drate > 0 then
  slot = math.max(now, tonumber(redis.call('GET', KEYS[3]) or '0'))
end
if grate > 0 then
  -- the window: fewer than `rate` messages in flight or replied within the second before the
  -- slot (the provider's view, whatever the delays between our slot and its clock)
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
  redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now - 1000)
  local places = math.max(1, math.floor(grate)) - redis.call('ZCARD', KEYS[5])
  if places <= 0 then
    return {0, tonumber(ARGV[8])}
  end
  local nth = redis.call('ZREVRANGE', KEYS[6], places - 1, places - 1, 'WITHSCORES')
  if nth[2] then
    wstart = tonumber(nth[2]) + 1000
    slot = math.max(slot, wstart)
  end
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
  -- pushed by the window: the next whole cell, so slots stay 1/rate apart
  if k * gi < wstart then k = math.ceil(wstart / gi) end
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
local token = ''
if grate > 0 then
  token = tostring(redis.call('INCR', KEYS[7]))
  redis.call('ZADD', KEYS[5], slot + tonumber(ARGV[7]), token)
  redis.call('PEXPIRE', KEYS[5], math.floor(maxwait + tonumber(ARGV[7])) + 60000)
  redis.call('PEXPIRE', KEYS[6], 60000)
end
return {1, math.floor(slot - now + 0.5), string.format('%.3f', slot), token}
"""

_SENT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('ZADD', KEYS[2], now, ARGV[1])
  redis.call('PEXPIRE', KEYS[2], 60000)
end
return 1
"""

_SLOW_DOWN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local pen = redis.call('HMGET', KEYS[1], 'share', 'since')
local share = 1
if pen[1] then
  if now - tonumber(pen[2]) < tonumber(ARGV[2]) then return pen[1] end  -- cut once per hold
  share = math.min(1, tonumber(pen[1]) + (now - tonumber(pen[2])) / tonumber(ARGV[1]))
end
share = math.max(share / 2, tonumber(ARGV[3]))
redis.call('HSET', KEYS[1], 'share', string.format('%.6f', share), 'since', now)
redis.call('PEXPIRE', KEYS[1], math.floor(tonumber(ARGV[1])) + 1000)
return string.format('%.6f', share)
"""

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(redis.call('HGET', KEYS[2], 'connections') or ARGV[1])
local cut = tonumber(redis.call('GET', KEYS[3]) or '0')
if limit > 0 then limit = math.max(1, limit - cut) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZSCORE', KEYS[1], ARGV[2])
if limit > 0 and not held and redis.call('ZCARD', KEYS[1]) >= limit then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
return 1
"""

_RELEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 and tonumber(ARGV[2]) > 0 then
  -- the closed session still counts at the provider for a moment: keep its place that long
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1] .. ':settling')
end
return 1
"""

_FEWER = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local last = tonumber(redis.call('HGET', KEYS[2], 'cut_at') or '0')
if now - last < tonumber(ARGV[3]) then return redis.call('GET', KEYS[1]) or '0' end
redis.call('HSET', KEYS[2], 'cut_at', now)
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]))
local cut = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return tostring(cut)
"""


def recovered_share(share: float, since_ms: float, now_ms: float, recover_ms: float) -> float:
    """The share of its configured rate a slowed-down domain may use at ``now_ms``: ``share``
    at ``since_ms`` (the last cut), climbing linearly back to 1 over ``recover_ms``."""
    return min(1.0, share + (now_ms - since_ms) / recover_ms)


class RedisThrottle:
    """A ``Throttle`` (see ``worker.sending.ports``) held in Redis.

    ``global_rate`` and ``domain_rates`` are messages per second (0 = unlimited) and
    ``max_connections`` the cap on concurrent SMTP connections (0 = none), used when the Redis hash
    has no value. ``recover_seconds``: a slowed domain is back at its rate this long after the
    deepest cut, and a lowered connection cap comes back after it. ``settle_seconds``: a released
    connection slot stays taken this long. ``inflight_seconds``: a reservation whose reply is
    never reported stops counting in the rate window after this long. Slots have sub-millisecond
    arithmetic; waits are rounded to milliseconds.
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
        settle_seconds: float = 1.0,
        inflight_seconds: float = 130.0,
    ) -> None:
        self.client = client
        self.global_rate = global_rate
        self.domain_rates = {k.lower(): v for k, v in (domain_rates or {}).items()}
        self.max_connections = max_connections
        self.prefix = prefix
        self.recover_ms = max(int(recover_seconds * 1000), 1)
        self.settle_ms = max(int(settle_seconds * 1000), 0)
        self.inflight_ms = max(int(inflight_seconds * 1000), 1)
        self._reserve = client.register_script(_RESERVE)
        self._sent = client.register_script(_SENT)
        self._slow_down = client.register_script(_SLOW_DOWN)
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)
        self._fewer = client.register_script(_FEWER)

    def reserve(self, domain: str, max_wait: float, done: str = "") -> Reservation:
        """See ``worker.sending.ports.Throttle.reserve``. Raises ``redis.RedisError`` if Redis is
        down."""
        return self.reserve_at(domain, max_wait, done)[0]

    def reserve_at(
        self, domain: str, max_wait: float, done: str = ""
    ) -> tuple[Reservation, float | None]:
        """``reserve``, plus the granted slot as Unix time on Redis's clock (for benchmarks)."""
        keys, args = self._reserve_call(domain, max_wait, done)
        reply = self._reserve(keys=keys, args=args)
        at = float(reply[2]) / 1000.0 if len(reply) > 2 else None
        return _reservation(reply), at

    def reserve_many(self, domains: list[str], max_wait: float) -> list[Reservation]:
        """``reserve`` for each of ``domains`` in order, in one round trip to Redis (the scripts
        pipelined): for a chunk sent without waiting between messages. Raises
        ``redis.RedisError`` if Redis is down."""
        pipe = self.client.pipeline(transaction=False)
        for domain in domains:
            keys, args = self._reserve_call(domain, max_wait, "")
            self._reserve(keys=keys, args=args, client=pipe)
        return [_reservation(reply) for reply in pipe.execute()]

    def _reserve_call(
        self, domain: str, max_wait: float, done: str
    ) -> tuple[list[str], list[float | int | str]]:
        domain = domain.lower()
        keys = [
            f"{self.prefix}:rates",
            f"{self.prefix}:next:global",
            f"{self.prefix}:next:domain:{domain}",
            f"{self.prefix}:penalty:{domain}",
            f"{self.prefix}:window:inflight",
            f"{self.prefix}:window:done",
            f"{self.prefix}:window:tokens",
        ]
        args: list[float | int | str] = [
            self.global_rate,
            self.domain_rates.get(domain, 0.0),
            domain,
            int(max_wait * 1000),
            self.recover_ms,
            done,
            self.inflight_ms,
            BUSY_WAIT_MS,
        ]
        return keys, args

    def unlimited(self, domains: Collection[str]) -> bool:
        """See ``worker.sending.ports.Throttle.unlimited``: one ``HMGET`` of the live rates (the
        reservation script reads the same fields; a slowed domain is slowed from its own or
        the global rate, so with both 0 a penalty changes nothing). Raises
        ``redis.RedisError`` if Redis is down."""
        names = sorted({domain.lower() for domain in domains})
        fields = ["global", *(f"domain:{name}" for name in names)]
        values = self.client.hmget(f"{self.prefix}:rates", fields)
        defaults = [self.global_rate, *(self.domain_rates.get(name, 0.0) for name in names)]
        return all(
            float(default if value is None else value) <= 0
            for value, default in zip(values, defaults, strict=True)
        )

    def sent(self, token: str) -> None:
        """See ``worker.sending.ports.Throttle.sent``."""
        if token:
            keys = [f"{self.prefix}:window:inflight", f"{self.prefix}:window:done"]
            self._sent(keys=keys, args=[token])

    def slow_down(self, domain: str) -> None:
        """Halve ``domain``'s rate (once a second at most, down to 1/16); it climbs back
        linearly over ``recover_seconds``."""
        self._slow_down(
            keys=[f"{self.prefix}:penalty:{domain.lower()}"],
            args=[self.recover_ms, HOLD_MS, MIN_SHARE],
        )

    def penalty(self, domain: str) -> float:
        """The factor ``domain``'s rate is divided by right now (1 = full rate)."""
        share, since = self.client.hmget(
            f"{self.prefix}:penalty:{domain.lower()}", ["share", "since"]
        )
        if share is None or since is None:
            return 1.0
        seconds, micros = self.client.time()
        now_ms = seconds * 1000 + micros // 1000
        return 1.0 / recovered_share(float(share), float(since), now_ms, self.recover_ms)

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
        keys = [
            f"{self.prefix}:connections",
            f"{self.prefix}:rates",
            f"{self.prefix}:connections:cut",
        ]
        return bool(self._acquire(keys=keys, args=[self.max_connections, holder, int(ttl * 1000)]))

    def release_connection(self, holder: str) -> None:
        """See ``worker.sending.ports.Throttle.release_connection``: the slot frees
        ``settle_seconds`` later."""
        self._release(keys=[f"{self.prefix}:connections"], args=[holder, self.settle_ms])

    def fewer_connections(self) -> int:
        """See ``worker.sending.ports.Throttle.fewer_connections``. Returns the current cut."""
        keys = [f"{self.prefix}:connections:cut", f"{self.prefix}:connections:cut-at"]
        return int(self._fewer(keys=keys, args=["", self.recover_ms, HOLD_MS]))


class LocalThrottle:
    """A ``Throttle`` for one process (the demo without Redis): the same rules, in memory.

    Arguments as ``RedisThrottle``'s; the slots follow ``time.monotonic``.
    """

    def __init__(
        self,
        global_rate: float = 0.0,
        domain_rates: Mapping[str, float] | None = None,
        max_connections: int = 0,
        *,
        recover_seconds: float = 60.0,
        settle_seconds: float = 1.0,
        inflight_seconds: float = 130.0,
    ) -> None:
        self.global_rate = global_rate
        self.domain_rates = {k.lower(): v for k, v in (domain_rates or {}).items()}
        self.max_connections = max_connections
        self.recover_ms = max(recover_seconds * 1000, 1.0)
        self.settle = max(settle_seconds, 0.0)
        self.inflight = max(inflight_seconds, 0.001)
        self._next: dict[str, float] = {}
        self._holders: dict[str, float] = {}
        self._penalty: dict[str, tuple[float, float]] = {}  # domain → (share, since ms)
        self._cut: tuple[int, float, float] = (0, 0.0, 0.0)  # (cut, since, until), seconds
        self._inflight: dict[str, float] = {}  # token → expiry
        self._done: dict[str, float] = {}  # token → reply time
        self._lock = threading.Lock()

    def _share(self, domain: str, now: float) -> float:
        share, since = self._penalty.get(domain, (1.0, 0.0))
        return recovered_share(share, since, now * 1000, self.recover_ms)

    def _window_start(self, now: float) -> float | None:
        """The earliest start the sliding window allows (None: full of messages in flight)."""
        self._inflight = {k: t for k, t in self._inflight.items() if t > now}
        self._done = {k: t for k, t in self._done.items() if t > now - 1.0}
        places = max(1, int(self.global_rate)) - len(self._inflight)
        if places <= 0:
            return None
        recent = sorted(self._done.values(), reverse=True)
        return recent[places - 1] + 1.0 if len(recent) >= places else now

    def reserve(self, domain: str, max_wait: float, done: str = "") -> Reservation:
        """See ``worker.sending.ports.Throttle.reserve``."""
        domain = domain.lower()
        now = time.monotonic()
        with self._lock:
            if done and self._inflight.pop(done, None) is not None:
                self._done[done] = now
            domain_rate = self.domain_rates.get(domain, 0.0)
            share = self._share(domain, now)
            if share < 1:
                domain_rate = (domain_rate or self.global_rate) * share
            slot = max(now, self._next.get("domain:" + domain, 0.0)) if domain_rate > 0 else now
            if self.global_rate > 0:
                start = self._window_start(now)
                if start is None:
                    return Reservation(False, BUSY_WAIT_MS / 1000)
                slot = max(slot, start, self._next.get("global", 0.0))
            if slot - now > max_wait:
                return Reservation(False, slot - now)
            token = ""
            if self.global_rate > 0:
                self._next["global"] = slot + 1.0 / self.global_rate
                token = uuid.uuid4().hex
                self._inflight[token] = slot + self.inflight
            if domain_rate > 0:
                self._next["domain:" + domain] = slot + 1.0 / domain_rate
        return Reservation(True, slot - now, token)

    def reserve_many(self, domains: list[str], max_wait: float) -> list[Reservation]:
        """See ``RedisThrottle.reserve_many``."""
        return [self.reserve(domain, max_wait) for domain in domains]

    def unlimited(self, domains: Collection[str]) -> bool:
        """See ``worker.sending.ports.Throttle.unlimited``."""
        return self.global_rate <= 0 and all(
            self.domain_rates.get(domain.lower(), 0.0) <= 0 for domain in domains
        )

    def sent(self, token: str) -> None:
        """See ``worker.sending.ports.Throttle.sent``."""
        with self._lock:
            if token and self._inflight.pop(token, None) is not None:
                self._done[token] = time.monotonic()

    def slow_down(self, domain: str) -> None:
        """See ``RedisThrottle.slow_down``."""
        domain = domain.lower()
        now_ms = time.monotonic() * 1000
        with self._lock:
            if domain in self._penalty and now_ms - self._penalty[domain][1] < HOLD_MS:
                return
            share = self._share(domain, now_ms / 1000)
            self._penalty[domain] = (max(share / 2, MIN_SHARE), now_ms)

    def penalty(self, domain: str) -> float:
        """See ``RedisThrottle.penalty``."""
        with self._lock:
            return 1.0 / self._share(domain.lower(), time.monotonic())

    def _limit(self, now: float) -> int:
        cut, _, until = self._cut
        if self.max_connections <= 0:
            return 0
        return max(1, self.max_connections - (cut if until > now else 0))

    def acquire_connection(self, holder: str, ttl: float) -> bool:
        """See ``worker.sending.ports.Throttle.acquire_connection``."""
        now = time.monotonic()
        with self._lock:
            self._holders = {h: t for h, t in self._holders.items() if t > now}
            limit = self._limit(now)
            full = 0 < limit <= len(self._holders)
            if full and holder not in self._holders:
                return False
            self._holders[holder] = now + ttl
            return True

    def release_connection(self, holder: str) -> None:
        """See ``RedisThrottle.release_connection``."""
        with self._lock:
            if self._holders.pop(holder, None) is not None and self.settle > 0:
                self._holders[holder + ":settling"] = time.monotonic() + self.settle

    def fewer_connections(self) -> int:
        """See ``RedisThrottle.fewer_connections``."""
        now = time.monotonic()
        with self._lock:
            cut, since, until = self._cut
            if until <= now:
                cut = 0
            if now - since >= HOLD_MS / 1000:
                cut, since = cut + 1, now
            self._cut = (cut, since, now + self.recover_ms / 1000)
            return cut


def _reservation(reply: list[int | bytes]) -> Reservation:
    """The reply of the reserve script: granted (1/0), wait (ms)[, slot (ms), token]."""
    token = reply[3] if len(reply) > 3 else b""
    text = token.decode() if isinstance(token, bytes) else str(token)
    return Reservation(granted=bool(reply[0]), wait=int(reply[1]) / 1000.0, token=text)
