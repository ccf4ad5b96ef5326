"""The fleet's learned poll schedule: poll each video near the time analyses like it finish.

The schedules and how they are learned are in ``guru_async._prediction`` (shared with a local
``batch_upload``); this module keeps the fleet's samples in Redis and notes what a poll job saw.

Workers record how long each analysis took, with the video's size, in one bounded Redis list
(:class:`Durations`; an entry is ``"SECONDS WIDTH SIZE"``, ``SIZE`` being ``-`` when unknown;
entries of earlier workers, ``"SECONDS WIDTH"``, still read, without a size). Once
``MIN_SAMPLES`` are known a poll job follows a learned schedule: one fitted to its own video's
size when that saves polls on the samples seen, else the fleet-wide one (first poll at the 5th
percentile of the durations), else the session's policy. A job that starts after its planned
first poll (behind a backlog of waiting videos) polls at once, and one that started late and
found the analysis done learns nothing.

Times come from Redis's clock (``TIME``), so the upload and the polls may happen on machines
whose clocks disagree.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence

import redis.asyncio as redis_async
from redis.exceptions import RedisError

from .._models import Analysis
from .._polling import PollPolicy
from .._prediction import (
    EARLY,
    LAG,
    LATE,
    MIN_SAMPLES,
    PRECISE,
    DurationSample,
    LearnedSchedule,
    Prediction,
    estimate,
    learn,
    precise_first,
    quantile,
)

__all__ = [
    "CACHE_SECONDS",
    "EARLY",
    "LAG",
    "LATE",
    "MAX_SAMPLES",
    "MIN_SAMPLES",
    "PRECISE",
    "DurationSample",
    "Durations",
    "LearnedSchedule",
    "Observer",
    "decode_sample",
    "encode_sample",
    "estimate",
    "learn",
    "plan",
    "quantile",
    "redis_time",
    "usable",
]

log = logging.getLogger("guru_async.fleet")

MAX_SAMPLES = 200
# Once learned, the durations change slowly: a worker rereads them at most this often.
CACHE_SECONDS = 2.0


def plan(
    samples: Sequence[float], *, policy: PollPolicy, origin: float, lag: float = LAG
) -> LearnedSchedule | None:
    """The learned schedule for a video uploaded at ``origin`` (monotonic), or None (see
    :func:`learn`)."""
    learned = learn(samples, policy=policy, lag=lag)
    if learned is None:
        return None
    return LearnedSchedule(policy, origin=origin, first=learned[0], late=learned[1], lag=lag)


def usable(entries: Sequence[tuple[float, float]]) -> list[float]:
    """The durations to learn from (seconds, width pairs): see :func:`precise_first`."""
    return [s.seconds for s in precise_first([DurationSample(*entry) for entry in entries])]


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


def encode_sample(sample: DurationSample) -> str:
    """A sample as a Redis list entry: ``"SECONDS WIDTH SIZE"`` (``SIZE`` is ``-`` when
    unknown)."""
    size = "-" if sample.size is None else str(sample.size)
    return f"{sample.seconds:.3f} {sample.width:.3f} {size}"


def decode_sample(entry: bytes | str) -> DurationSample | None:
    """A Redis list entry as a sample (the older ``"SECONDS WIDTH"`` too), or None when it is
    not one."""
    text = entry.decode() if isinstance(entry, bytes) else entry
    parts = text.split()
    if len(parts) not in (2, 3):
        return None
    try:
        seconds, width = float(parts[0]), float(parts[1])
        size = None if len(parts) == 2 or parts[2] == "-" else int(parts[2])
    except ValueError:
        return None
    if not (math.isfinite(seconds) and seconds >= 0 and math.isfinite(width) and width >= 0):
        return None
    if size is not None and size < 0:
        return None
    return DurationSample(seconds, width, size)


class Durations:
    """The fleet's recent analyses: a Redis list of the latest MAX_SAMPLES, newest first."""

    def __init__(self, client: redis_async.Redis, key: str) -> None:
        self._redis = client
        self._key = key
        self._cached: list[DurationSample] = []
        self._read_at = -math.inf
        self._predictions: dict[PollPolicy, Prediction] = {}
        self._refresh = asyncio.Lock()

    async def entries(self) -> list[DurationSample]:
        """The known samples, oldest first (the last read when Redis fails: the policy's
        schedule holds until there are enough)."""
        now = time.monotonic()
        if len(self._cached) >= MIN_SAMPLES and now - self._read_at < CACHE_SECONDS:
            return self._cached
        try:
            raw = await self._redis.lrange(self._key, 0, MAX_SAMPLES - 1)  # type: ignore[misc]
        except (RedisError, OSError) as exc:
            log.debug("fleet: analysis durations unavailable (%s)", type(exc).__name__)
            return self._cached
        decoded = (decode_sample(item) for item in reversed(raw))
        self._cached = [sample for sample in decoded if sample is not None]
        self._read_at = now
        self._predictions.clear()
        return self._cached

    async def samples(self) -> list[float]:
        """The known durations to learn from (see :func:`usable`)."""
        return [s.seconds for s in precise_first(await self.entries())]

    async def plan(
        self, *, policy: PollPolicy, origin: float, size: int | None = None
    ) -> LearnedSchedule | None:
        """The learned schedule of a video of ``size`` bytes (None: unknown) uploaded at
        ``origin`` (monotonic), or None for the policy's own; the model is fitted once per
        read."""
        # One job at a time rereads and refits: the many jobs that start together would each
        # fit the same samples (costly: seconds of a worker's CPU for a few hundred), and
        # every first poll would come late.
        async with self._refresh:
            entries = await self.entries()
            prediction = self._predictions.get(policy)
            if prediction is None:
                prediction = self._predictions[policy] = Prediction(entries, policy=policy)
        return prediction.schedule(size=size, origin=origin)

    async def record(self, sample: DurationSample, *, retention: int) -> None:
        """Add one sample, keeping the latest MAX_SAMPLES; a Redis failure loses only it."""
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.lpush(self._key, encode_sample(sample))
                pipe.ltrim(self._key, 0, MAX_SAMPLES - 1)
                pipe.expire(self._key, retention)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.debug("fleet: analysis duration not recorded (%s)", type(exc).__name__)
