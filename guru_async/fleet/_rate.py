"""One ceiling on the fleet's API requests per second, kept in Redis on Redis's clock."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import secrets
import time
from collections.abc import Iterator
from contextvars import ContextVar
from types import TracebackType

import redis.asyncio as redis_async

from .._session import DEFAULT_BASE_URL
from ._protocol import account_of
from ._redis import RedisLink, Unavailable

# The default key's prefix; the account it paces follows it (``guru_async:rate:<account>``).
DEFAULT_KEY = "guru_async:rate"
# After the key: the requests booked per second of the last minute, and the ceiling.
COUNTS_SUFFIX = ":counts"
# Processes that reserved a slot within this window count as sharing the ceiling, for the
# fallback share while Redis is down.
_MEMBER_WINDOW = 60.0
# The share assumed before this process ever reached Redis: it cannot know the fleet's size.
_UNKNOWN_FLEET = 4
# Deferrable requests (a fleet worker's polls) book a slot only while the booked backlog is
# within the burst; otherwise they wait for it to drain, rechecking at most this far apart.
_RECHECK = 1.0
# A deferrable request waits at most this long for the backlog to drain (and at most half
# of its call's ``Timeouts.total``, which the wait counts in), then books like any other.
MAX_DEFERRAL = 60.0
# Whether deferrable requests yield at all (the benchmarks switch it off for the baseline).
ORDERED = True
# How long a request made here may defer (0.0: not deferrable).
_deferrable: ContextVar[float] = ContextVar("guru_async_fleet_deferrable", default=0.0)


@contextlib.contextmanager
def deferrable_requests(*, total: float | None = None) -> Iterator[None]:
    """API requests made in this block (by this task and the tasks it starts) yield a binding
    ceiling to the others: they book a slot only when the fleet has no backlog beyond its burst,
    waiting for that at most MAX_DEFERRAL seconds, or half of ``total`` (the session's
    ``Timeouts.total``, which the wait counts in) if less.

    A fleet worker's polls run in this block, so when the ceiling binds, creates go first:
    each create starts an upload and an analysis that the night must wait for, while a poll
    that waits sees its video finished more often (the same answer in fewer requests). When
    the ceiling does not bind, a deferrable request books at once, as any other.
    """
    most = MAX_DEFERRAL if total is None else min(MAX_DEFERRAL, total / 2)
    token = _deferrable.set(most)
    try:
        yield
    finally:
        _deferrable.reset(token)


# GCRA (the generic cell rate algorithm) as reservations: every call books the next slot and
# is told how long to wait for it, so callers pace instead of failing. KEYS[1] holds the
# theoretical arrival time (TAT) in microseconds of Redis's clock, KEYS[2] the processes seen,
# KEYS[3] the requests per second of the last minute (for ``guru-async fleet status``): a ring
# of 64 buckets, ``s<i>`` a second of Redis's clock and ``n<i>`` the requests booked in it,
# beside ``rate``, the ceiling. ARGV: the interval between requests (µs), the burst tolerance
# (µs), this process's id, the member window (µs), the ceiling (requests per second), and for
# a deferrable request 1 (else 0): it books nothing while the backlog is beyond the burst and
# gets back how long until it drains, with a last element 0 (1 when a slot was booked).
# Numbers go back to Redis through '%.0f': Lua's default formatting keeps only 14 digits, and
# microseconds since 1970 have 16.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local wait = tat - tolerance - now
if ARGV[6] == '1' and wait > 0 then
  return {string.format('%.0f', wait), redis.call('ZCARD', KEYS[2]), 0}
end
if wait < 0 then wait = 0 end
tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', tat),
           'PX', string.format('%.0f', math.floor((tat - now) / 1000) + 1000))
local slot = string.format('%.0f', math.floor((now + wait) / 1000000))
local bucket = tostring(math.floor(tonumber(slot) % 64))
if redis.call('HGET', KEYS[3], 's' .. bucket) == slot then
  redis.call('HINCRBY', KEYS[3], 'n' .. bucket, 1)
else
  redis.call('HSET', KEYS[3], 's' .. bucket, slot, 'n' .. bucket, 1)
end
redis.call('HSET', KEYS[3], 'rate', ARGV[5])
redis.call('PEXPIRE', KEYS[3], 70000)
local window = tonumber(ARGV[4])
redis.call('ZADD', KEYS[2], string.format('%.0f', now), ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', string.format('%.0f', now - window))
redis.call('PEXPIRE', KEYS[2], string.format('%.0f', window / 1000))
return {string.format('%.0f', wait), redis.call('ZCARD', KEYS[2]), 1}
"""


class RedisRateLimiter:
    """A ceiling on the whole fleet's API requests per second, shared through Redis.

    Pass it to every session of the fleet: ``GuruSession(limiter=RedisRateLimiter(url,
    rate=50))``. Each API request (every route, polls included; uploads to storage and token
    requests are not API requests) first books the next free slot with one Lua script that
    runs GCRA on Redis's own clock (``TIME``), then waits for its slot: the fleet stays under
    ``rate`` requests in every second, plus ``burst`` after an idle spell, however many
    processes share it and whatever their clocks say. The session's own adaptive limiter still
    slows down on 429s below this ceiling. The wait counts against each call's
    ``Timeouts.total``; a call cancelled while it waits leaves its slot unused (the fleet then
    sends less than ``rate``, never more).

    When the ceiling binds, a fleet worker's polls yield to its other requests (creates, first
    of all): a poll books a slot only when no backlog beyond the burst is booked, and waits
    until then (one poll per process rechecking; at most 60 s from its call, or half the
    session's ``Timeouts.total``). Creates start the uploads and analyses the night waits for;
    a poll that waits sees its video finished more often.

    Redis down, slow or refusing the password: each process paces itself at a local share,
    never unlimited: ``fallback_rate`` if given, else ``rate`` divided by the number of
    processes that used this limiter in the last minute as last counted in Redis (``rate / 4``
    if this process never reached Redis). It logs one WARNING per outage and tries Redis again
    every ``cooldown`` seconds.

    Keys written: ``{key}`` (a string: the next free slot, in microseconds of Redis's clock;
    expires a second after the booked slots), ``{key}:members`` (a sorted set of the
    processes seen in the last minute; expires a minute after the last request) and
    ``{key}:counts`` (a hash: the ceiling and the requests booked in each second of the last
    minute, which ``guru-async fleet status`` reads; expires 70 s after the last request).
    The default key is ``guru_async:rate:<account>``, the account (a short hash of client id
    and base URL, as for every fleet key) taken from the session the limiter is given to, so
    two accounts on one Redis never share a ceiling; used without a session, from
    ``GURU_CLIENT_ID`` and ``GURU_BASE_URL`` (``guru_async:rate`` when there is no client id
    at all).

    Args:
        redis: A ``redis://``, ``rediss://`` or ``unix://`` URL (the limiter then owns its
            connections: close it with ``aclose()`` or ``async with``), or a
            ``redis.asyncio.Redis`` that the caller owns and closes.
        rate: Requests per second for the whole fleet.
        burst: How many requests may go at once after an idle spell; default a tenth of a
            second's worth (at least 1).
        key: The Redis key; limiters with the same key share one ceiling, whatever their
            accounts. Default: one ceiling per account (see above).
        fallback_rate: Requests per second for this process while Redis is unavailable.
        timeout: The longest one Redis operation may take before Redis counts as down.
        cooldown: How long to pace locally after Redis failed before trying it again.
    """

    def __init__(
        self,
        redis: str | redis_async.Redis,
        *,
        rate: float,
        burst: float | None = None,
        key: str | None = None,
        fallback_rate: float | None = None,
        timeout: float = 0.5,
        cooldown: float = 5.0,
    ) -> None:
        self.rate = _positive(rate, "rate")
        if burst is None:
            self.burst = max(1.0, math.ceil(self.rate / 10))
        elif _positive(burst, "burst") < 1:
            raise ValueError(f"burst must be at least 1 request, got {burst!r}")
        else:
            self.burst = float(burst)
        if key is not None and (not isinstance(key, str) or not key):
            raise ValueError(f"key must be a non-empty str, got {key!r}")
        self.fallback_rate = (
            None if fallback_rate is None else _positive(fallback_rate, "fallback_rate")
        )
        self._explicit_key = key is not None
        self._account: str | None = None
        self.key = key if key is not None else DEFAULT_KEY
        self._link = RedisLink(
            redis,
            what="its rate ceiling",
            fallback="this process paces its API requests at its own share of the rate",
            timeout=timeout,
            cooldown=cooldown,
        )
        self._member = secrets.token_hex(8)
        self._interval_us = 1e6 / self.rate
        self._tolerance_us = (self.burst - 1) * self._interval_us
        self._members = 0  # processes sharing the ceiling, as last counted in Redis
        self._local_next = 0.0  # the local fallback's next free slot (time.monotonic())
        # Deferrable requests of this process recheck the backlog one at a time, in turn.
        self._deferring = asyncio.Lock()

    def __repr__(self) -> str:
        return (
            f"RedisRateLimiter({self._link.where!r}, rate={self.rate:g}, burst={self.burst:g}, "
            f"key={self.key!r})"
        )

    async def __aenter__(self) -> RedisRateLimiter:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections this limiter opened (not a caller's client). It can still
        be used afterwards: it reconnects when needed."""
        await self._link.aclose()

    async def check(self) -> None:
        """Raise ``RedisUnavailableError`` (naming the server, never its password) unless Redis
        answers now."""
        await self._link.check()

    @property
    def local_rate(self) -> float:
        """The requests per second this process allows itself while Redis is unavailable."""
        if self.fallback_rate is not None:
            return self.fallback_rate
        return self.rate / (self._members or _UNKNOWN_FLEET)

    async def acquire(self) -> None:
        """Wait until the fleet may send one more API request (in a
        ``deferrable_requests()`` block, after the fleet's backlog of other requests)."""
        try:
            most = _deferrable.get()
            if ORDERED and most > 0:
                wait = await self._reserve_deferred(most)
            else:
                wait, _ = await self._reserve()
        except Unavailable:
            wait = self._reserve_locally()
        if wait > 0:
            await asyncio.sleep(wait)

    async def _reserve_deferred(self, most: float) -> float:
        # One deferrable request per process rechecks at a time (the others queue behind it,
        # in order), so a binding ceiling costs Redis one script call per recheck, not one
        # per waiting poll. Unbound, the lock is free and the first call books. The deferral
        # counts from the call, queueing included: it is bounded for every request, not only
        # for the one rechecking.
        give_up = time.monotonic() + most
        async with self._deferring:
            while True:
                left = give_up - time.monotonic()
                wait, booked = await self._reserve(deferrable=left > 0)
                if booked:
                    return wait
                await asyncio.sleep(min(max(wait, self._interval_us / 1e6), _RECHECK, left))

    def bind_session(self, *, client_id: str | None, base_url: str) -> None:
        """Key the default ceiling by the account of a session that uses this limiter
        (``GuruSession`` calls this when given the limiter); an explicit ``key`` is kept.

        Raises:
            ValueError: The limiter already paces another account with its default key.
        """
        if self._explicit_key or not client_id:
            return
        account = account_of(client_id, base_url)
        if self._account is not None and self._account != account:
            raise ValueError(
                "this RedisRateLimiter already paces another account; give each account its "
                "own limiter (or one explicit key= to share a ceiling across accounts)"
            )
        self._account = account
        self.key = f"{DEFAULT_KEY}:{account}"

    async def _reserve(self, *, deferrable: bool = False) -> tuple[float, bool]:
        """Book the next slot: its wait in seconds and True; for a deferrable request while
        a backlog is booked, nothing: the time until it drains and False."""
        if self._account is None and not self._explicit_key:
            client_id = os.environ.get("GURU_CLIENT_ID")
            if client_id:
                base = os.environ.get("GURU_BASE_URL") or DEFAULT_BASE_URL
                self.bind_session(client_id=client_id, base_url=base)
        args = (
            self._interval_us,
            self._tolerance_us,
            self._member,
            _MEMBER_WINDOW * 1e6,
            self.rate,
            "1" if deferrable else "0",
        )
        keys = (self.key, self.key + ":members", self.key + COUNTS_SUFFIX)
        wait_us, members, booked = await self._link.run(
            lambda r: r.eval(_RESERVE, 3, *keys, *(_number(a) for a in args))
        )
        self._members = max(1, int(members))
        return int(wait_us) / 1e6, bool(int(booked))

    def _reserve_locally(self) -> float:
        # The same reservation, on this process's clock, at its share of the rate, no burst.
        now = time.monotonic()
        slot = max(self._local_next, now)
        self._local_next = slot + 1.0 / self.local_rate
        return slot - now


def _number(value: float | str) -> str:
    return value if isinstance(value, str) else repr(float(value))


def _positive(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a number > 0, got {value!r}")
    return float(value)
