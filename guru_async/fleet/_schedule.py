"""The fleet's learned poll schedule: poll each video near the time analyses like it finish.

On a big night the fleet's shared rate ceiling, not bandwidth, bounds the batch, and polls are
most of the requests: the default schedule (``PollPolicy``) spends about 10 polls on a 30 s
analysis. So workers record how long analyses took, and once ``MIN_SAMPLES`` are known a poll
job follows the learned schedule:

- it sleeps until the early quantile (``EARLY``, the 5th percentile) of the durations, counted
  from the end of the upload: hardly any analysis is done sooner;
- then it polls at steps of ``LAG`` times the time since the upload (jittered downwards only),
  so an analysis that finishes between two polls is seen at most ``LAG`` of its duration late,
  however wide the spread of durations;
- past the late quantile (``LATE``, the 95th percentile, plus one step) the analysis runs long
  and the polls fall back to the policy's own backoff (growing to ``max_interval``).

A server's hint (``Retry-After`` on a Pending answer) still sets the next wait, no shorter than
the policy's ``interval``, which is also the shortest step. The learned schedule is used only
when, summed over the durations seen, it costs fewer polls than the policy's own (durations
spread from 1 to 100 s, say, may not), and a Failed analysis is not learned from: it often ends
early (unreadable content) and would pull every video's first poll forward. A job that starts
after its planned first poll (behind a backlog of waiting videos) polls at once.

How a duration is estimated: the true finish lies between the last Pending answer and the first
finished one, and the midpoint is recorded, so the estimate does not carry the lag. A video found
already done at its planned first poll says only "done by then": it is recorded one step earlier
(``done / (1 + LAG)``), so when analyses get faster the early quantile moves down instead of
sticking (about ``EARLY`` of the analyses finish before the first poll, at equilibrium; their
lag is the first poll's time minus their finish, small but not bound by ``LAG``). A poll job
that started late and found the analysis done learns nothing.
Each estimate is kept with the width of its interval: once enough are precise (within
``PRECISE`` of their value, as the learned schedule's are), the coarse ones of the first
analyses, polled on the policy's schedule, are left out.

Times come from Redis's clock (``TIME``), so the upload and the polls may happen on machines
whose clocks disagree.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Generator, Sequence
from typing import Any

import redis.asyncio as redis_async
from attrs import frozen
from redis.exceptions import RedisError

from .._models import Analysis
from .._polling import PollPolicy, _PollState

log = logging.getLogger("guru_async.fleet")

MIN_SAMPLES = 5
MAX_SAMPLES = 200
LAG = 0.15
EARLY = 0.05
LATE = 0.95
# An estimate known within this fraction of itself is precise: the learned schedule's are.
PRECISE = 2 * LAG
# Once learned, the durations change slowly: a worker rereads them at most this often.
CACHE_SECONDS = 2.0


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (linear between the two nearest ranks)."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


@frozen
class LearnedSchedule:
    """A poll schedule for one video, from the durations the fleet has seen (a PollSchedule).

    Attributes:
        policy: The session's policy: its ``interval`` is the shortest step, its backoff the
            fallback, its ``max_outage`` and jitter hold as they are.
        origin: The end of the video's upload, on this process's ``time.monotonic()``.
        first: Seconds after the upload of the first poll.
        late: Seconds after the upload past which the policy's backoff takes over.
        lag: The longest lag, as a fraction of the time since the upload.
    """

    policy: PollPolicy
    origin: float
    first: float
    late: float
    lag: float = LAG

    @property
    def max_outage(self) -> float | None:
        return self.policy.max_outage

    def delay(self, now: float) -> float:
        """Seconds from ``now`` (monotonic) until the first poll."""
        return max(0.0, self.origin + self.first - now)

    def next_wait(self, since: float, wait: float, hint: float | None) -> tuple[float, float]:
        """The seconds until the next poll, ``since`` seconds after the upload, and the base
        wait of the fallback backoff (``wait`` is the one before)."""
        policy = self.policy
        if since >= self.late:
            return policy.next_wait(wait, hint)
        if hint is not None:
            step = max(hint, policy.interval)
        else:
            # Jitter shortens a step, never lengthens it, so the lag stays within ``lag``.
            step = max(policy.interval, self.lag * since * random.uniform(1 - policy.jitter, 1))
        return step, min(policy.max_interval, max(wait, step))

    def waits(self, *, deadline: float, state: _PollState) -> Generator[float, Any, None]:
        """backoff wait generator, as PollPolicy.waits."""
        yield 0.0  # primed by backoff
        wait = self.policy.interval
        while True:
            now = time.monotonic()
            remaining = deadline - now
            if remaining <= 0:
                return
            step, wait = self.next_wait(now - self.origin, wait, state.hint)
            yield min(step, remaining)


def _learned_polls(policy: PollPolicy, first: float, late: float, lag: float, end: float) -> int:
    # Polls (without jitter) until one lands at or after ``end``.
    polls, at, wait = 1, first, policy.interval
    while at < end:
        if at < late:
            step = max(policy.interval, lag * at)
            wait = min(policy.max_interval, max(wait, step))
        else:
            step, wait = wait, min(policy.max_interval, wait * policy.multiplier)
        at += step
        polls += 1
    return polls


def _policy_polls(policy: PollPolicy, end: float) -> int:
    polls, at, wait = 1, 0.0, policy.interval
    while at < end:
        at += wait
        wait = min(policy.max_interval, wait * policy.multiplier)
        polls += 1
    return polls


def learn(
    samples: Sequence[float], *, policy: PollPolicy, lag: float = LAG
) -> tuple[float, float] | None:
    """The learned schedule's first poll and fallback point (seconds after the upload), or
    None while fewer than MIN_SAMPLES durations are known or when, on the durations seen, it
    would not poll less than ``policy``."""
    if len(samples) < MIN_SAMPLES:
        return None
    first = max(quantile(samples, EARLY), 0.0)
    late = max(quantile(samples, LATE) * (1 + lag), first)
    learned = sum(_learned_polls(policy, first, late, lag, d) for d in samples)
    if learned >= sum(_policy_polls(policy, d) for d in samples):
        return None
    return first, late


def plan(
    samples: Sequence[float], *, policy: PollPolicy, origin: float, lag: float = LAG
) -> LearnedSchedule | None:
    """The learned schedule for a video uploaded at ``origin`` (monotonic), or None (see
    :func:`learn`)."""
    learned = learn(samples, policy=policy, lag=lag)
    if learned is None:
        return None
    return LearnedSchedule(policy, origin=origin, first=learned[0], late=learned[1], lag=lag)


def estimate(
    *,
    pending: float | None,
    done: float,
    first_poll: float,
    planned_first: float | None,
    lag: float = LAG,
) -> tuple[float, float] | None:
    """The analysis's duration to record and how uncertain it is (the width of the interval
    the finish lies in), from when it was last seen Pending and first seen done (seconds after
    the upload), or None when the polls say nothing about it.

    Args:
        pending: When the last Pending answer came, or None if none did.
        done: When the first finished answer came.
        first_poll: When the first answer of this job came.
        planned_first: When the learned schedule meant the first poll to be, or None when the
            job polled on the policy's own schedule.
    """
    if pending is not None:
        return max((pending + done) / 2, 0.0), max(done - pending, 0.0)
    # On plan, give or take a round trip and the event loop's scheduling; later, the job was
    # held up and "done by then" is no news about the duration.
    if planned_first is not None and first_poll <= planned_first * (1 + lag) + 0.1:
        return done / (1 + lag), done - done / (1 + lag)
    return None


def usable(entries: Sequence[tuple[float, float]]) -> list[float]:
    """The durations to learn from: the precise ones (known within ``PRECISE`` of their value)
    once there are enough, else all. The first analyses, polled on the policy's coarse
    schedule, then stop pulling the quantiles off as soon as the learned schedule's own,
    narrow, estimates come in, not only once they have left the list."""
    precise = [seconds for seconds, width in entries if width <= PRECISE * seconds]
    if len(precise) >= MIN_SAMPLES:
        return precise
    return [seconds for seconds, _ in entries]


class Observer:
    """Wraps a poll's fetch to note when answers came (seconds after the upload)."""

    def __init__(self, since_upload: Callable[[], float]) -> None:
        self._since_upload = since_upload
        self.first: float | None = None
        self.pending: float | None = None
        self.done: float | None = None

    def wrap(
        self, fetch: Callable[[], Awaitable[tuple[Analysis, float | None]]]
    ) -> Callable[[], Awaitable[tuple[Analysis, float | None]]]:
        async def observed() -> tuple[Analysis, float | None]:
            analysis, hint = await fetch()
            # The answer's arrival: the server looked between the request and this moment,
            # and a loopback or LAN round trip is small next to an analysis.
            at = self._since_upload()
            if self.first is None:
                self.first = at
            if analysis.is_done:
                if self.done is None:
                    self.done = at
            else:
                self.pending = at
            return analysis, hint

        return observed


async def redis_time(client: redis_async.Redis) -> float:
    """Redis's clock, in seconds since the epoch."""
    seconds, micros = await client.time()
    return float(seconds) + float(micros) / 1e6


class Durations:
    """The fleet's recent analysis durations: a Redis list of the latest MAX_SAMPLES."""

    def __init__(self, client: redis_async.Redis, key: str) -> None:
        self._redis = client
        self._key = key
        self._cached: list[float] = []
        self._read_at = -math.inf
        self._learned: dict[PollPolicy, tuple[float, float] | None] = {}

    async def samples(self) -> list[float]:
        """The known durations (none when Redis fails: the policy's schedule then holds)."""
        now = time.monotonic()
        if len(self._cached) >= MIN_SAMPLES and now - self._read_at < CACHE_SECONDS:
            return self._cached
        try:
            raw = await self._redis.lrange(self._key, 0, MAX_SAMPLES - 1)  # type: ignore[misc]
        except (RedisError, OSError) as exc:
            log.debug("fleet: analysis durations unavailable (%s)", type(exc).__name__)
            return self._cached
        entries = []
        for item in raw:
            try:
                seconds, width = (float(part) for part in item.split())
            except ValueError:
                continue
            if math.isfinite(seconds) and seconds >= 0 and width >= 0:
                entries.append((seconds, width))
        values = usable(entries)
        self._cached, self._read_at = values, now
        self._learned.clear()
        return values

    async def plan(self, *, policy: PollPolicy, origin: float) -> LearnedSchedule | None:
        """:func:`plan` on the known durations (the costly part computed once per read)."""
        samples = await self.samples()
        if policy not in self._learned:
            self._learned[policy] = learn(samples, policy=policy)
        learned = self._learned[policy]
        if learned is None:
            return None
        return LearnedSchedule(policy, origin=origin, first=learned[0], late=learned[1])

    async def record(self, seconds: float, width: float, *, retention: int) -> None:
        """Add one duration and its uncertainty, keeping the latest MAX_SAMPLES; a Redis
        failure loses only it."""
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.lpush(self._key, f"{seconds:.3f} {width:.3f}")
                pipe.ltrim(self._key, 0, MAX_SAMPLES - 1)
                pipe.expire(self._key, retention)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.debug("fleet: analysis duration not recorded (%s)", type(exc).__name__)
