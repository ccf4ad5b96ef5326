"""Learned poll schedules: poll each video near the time analyses like it finish.

On a big night the API's rate ceiling, not bandwidth, bounds the batch, and polls are most of
the requests: the default schedule (``PollPolicy``) spends about 10 polls on a 30 s analysis.
So finished analyses are recorded (:class:`DurationSample`: how long it took, how sure that is,
and the video's size) and, once ``MIN_SAMPLES`` are known, a video's wait follows a learned
schedule (:class:`LearnedSchedule`):

- its first poll comes near the time hardly any analysis like it is done yet;
- then it polls at steps of ``LAG`` times the time since the upload (jittered downwards only),
  so an analysis that finishes between two polls is seen at most ``LAG`` of its duration late,
  however wide the spread of durations;
- past a late point the analysis runs long and the polls fall back to the policy's own backoff
  (growing to ``max_interval``). A server's hint (``Retry-After`` on a Pending answer) still
  sets the next wait, no shorter than the policy's ``interval``, which is also the shortest
  step; ``max_outage`` holds as the policy says.

Two ways to learn, the better one on the samples seen is used:

- one schedule for every video (:func:`learn`): the first poll at the 5th percentile
  (``EARLY``) of the durations, the fallback past the 95th (``LATE``) plus one step. Analyses
  spread from 5 to 60 s make this no better than the policy;
- a schedule per video from its size (:class:`SizeModel`): an analysis's duration grows with
  the video (frames to process), so a line ``seconds = intercept + slope * bytes`` is fitted by
  Theil-Sen (the median of the slopes between every two samples, robust to a few odd
  analyses, deterministic, no numpy; through zero when it would give an empty video a
  negative duration), corrected near each size by the median of the nearest
  half of the samples (so a region the line misses, say small videos all done by their first
  poll, follows its own analyses), and the spread is kept as quantiles of each sample's
  duration over that prediction (relative: a 60 s analysis varies by more seconds than a 5 s
  one). The first poll comes ``LAG`` after the predicted early end of the spread, so even
  the earliest analyses like it are seen about ``LAG`` of their duration late, and most are
  seen at the first or second poll (with durations +/- 15 % around the line, under 2 polls
  on average). The early end is mirrored from the late one around the median (below the first
  poll the samples only say "done by then", so the low tail cannot be read from them), and the
  first poll is never past the ``FIRST`` quantile, so the median stays observable and the line
  follows analyses that get faster, nor before the ``FLOOR`` quantile: each estimate is off by
  up to half a step, which widens the late quantile from one fit to the next, and a wide one
  mirrored would poll nearly every video two or three times.

Either is used only when, summed over the samples seen, it costs fewer polls than the policy's
own schedule (and the per-video one than the common one); a Failed analysis is not learned
from: it often ends early (unreadable content) and would pull every first poll forward.

How a duration is estimated (:func:`estimate`): the true finish lies between the last Pending
answer and the first finished one, and the midpoint is recorded, so the estimate does not carry
the lag. A video found already done at its planned first poll says only "done by then": it is
recorded as if it had been Pending one step earlier (``done / (1 + LAG)``), so when analyses get
faster the prediction moves down instead of sticking. On the common schedule, whose first poll
comes before hardly any analysis is done, that is the step's early end (the cautious side);
on a per-video one, by design near the middle of analyses like it, the step's midpoint, as for
any other answer: the early end, for the many analyses done by then, taught the next run to
poll a region of sizes mostly done by its first polls about 13 % early (2 or 3 polls each,
then too late again: runs alternated between under 3 requests a video and 3.5). Each estimate
keeps the width of its interval: once enough are precise (within ``PRECISE`` of their value, as
the learned schedule's are), the coarse ones of the first analyses, polled on the policy's
schedule, are left out (:func:`precise_first`).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Generator, Sequence
from typing import Any

from attrs import define, frozen

from ._polling import PollPolicy, _PollState

MIN_SAMPLES = 5
LAG = 0.15
EARLY = 0.05
LATE = 0.95
# An estimate known within this fraction of itself is precise: the learned schedule's are.
PRECISE = 2 * LAG
# The size model is fitted on at most this many of the latest samples (Theil-Sen looks at every
# pair: 200 samples, 19,900 pairs, fit in about 15 ms). Not fewer than a batch keeps: analyses
# finish short ones first, so the latest 100 of a batch would leave out its small videos, and
# the model would never see their first polls coming late.
FIT_SAMPLES = 200
# The size model's first poll is at most this quantile of the durations (relative to the
# prediction): later, the median would be censored too and the model could not move down.
FIRST = 0.45
# ... and at least this one, so some analyses like it are seen at the first poll even when the
# late quantile came out wide (the mirrored low end plus a lag is about the 40th percentile of
# durations +/- 15 %: the floor holds only then).
FLOOR = 0.10
# The line is corrected near a size by the median of the nearest half of the samples (a
# narrower window follows a region faster but its noise spreads the first polls: more polls).
NEAR = 2
# Off only to measure the common schedule alone (the benchmarks compare the two).
SIZE_MODEL = True


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (linear between the two nearest ranks)."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


@frozen
class DurationSample:
    """One finished analysis, as recorded to learn from.

    Attributes:
        seconds: How long the analysis took, from the end of the upload (an estimate).
        width: How uncertain ``seconds`` is: the width of the interval the finish lies in.
        size: The uploaded video's size in bytes, when known.
        video_seconds: The video's own length in seconds, when known (kept for a future model;
            the size model fits on bytes).
    """

    seconds: float
    width: float
    size: int | None = None
    video_seconds: float | None = None

    @property
    def precise(self) -> bool:
        """Known within ``PRECISE`` of its value."""
        return self.width <= PRECISE * self.seconds


def precise_first(samples: Sequence[DurationSample]) -> list[DurationSample]:
    """The samples to learn from: the precise ones once there are ``MIN_SAMPLES``, else all.
    The first analyses, polled on the policy's coarse schedule, then stop pulling the
    prediction off as soon as the learned schedule's own, narrow, estimates come in."""
    precise = [s for s in samples if s.precise]
    return precise if len(precise) >= MIN_SAMPLES else list(samples)


@frozen
class LearnedSchedule:
    """A poll schedule for one video, learned from the analyses seen (a PollSchedule).

    Attributes:
        policy: The session's policy: its ``interval`` is the shortest step, its backoff the
            fallback, its ``max_outage`` and jitter hold as they are.
        origin: The end of the video's upload, on this process's ``time.monotonic()``.
        first: Seconds after the upload of the first poll.
        late: Seconds after the upload past which the policy's backoff takes over.
        lag: The longest lag, as a fraction of the time since the upload.
        sized: Planned from the video's size (its first poll near the middle of analyses like
            it), not one schedule for every video (its first poll before hardly any is done).
    """

    policy: PollPolicy
    origin: float
    first: float
    late: float
    lag: float = LAG
    sized: bool = False

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


def learned_polls(policy: PollPolicy, first: float, late: float, lag: float, end: float) -> int:
    """Polls a learned schedule makes (without jitter) until one lands at or after ``end``."""
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


def policy_polls(policy: PollPolicy, end: float) -> int:
    """Polls the policy makes (without jitter) until one lands at or after ``end``."""
    polls, at, wait = 1, 0.0, policy.interval
    while at < end:
        at += wait
        wait = min(policy.max_interval, wait * policy.multiplier)
        polls += 1
    return polls


def learn(
    samples: Sequence[float], *, policy: PollPolicy, lag: float = LAG
) -> tuple[float, float] | None:
    """The common learned schedule's first poll and fallback point (seconds after the upload),
    or None while fewer than MIN_SAMPLES durations are known or when, on the durations seen,
    it would not poll less than ``policy``."""
    if len(samples) < MIN_SAMPLES:
        return None
    first = max(quantile(samples, EARLY), 0.0)
    late = max(quantile(samples, LATE) * (1 + lag), first)
    learned = sum(learned_polls(policy, first, late, lag, d) for d in samples)
    if learned >= sum(policy_polls(policy, d) for d in samples):
        return None
    return first, late


def theil_sen(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """The Theil-Sen line through the points: (intercept, slope). The slope is the median of
    the slopes between every two points of different ``x``, the intercept the median of
    ``y - slope * x``; with all ``x`` equal the slope is 0.

    Raises:
        ValueError: No points, or ``xs`` and ``ys`` of different lengths.
    """
    if not xs or len(xs) != len(ys):
        raise ValueError(f"need as many xs as ys, at least one, got {len(xs)} and {len(ys)}")
    slopes = [
        (ys[j] - ys[i]) / (xs[j] - xs[i])
        for i in range(len(xs))
        for j in range(i + 1, len(xs))
        if xs[j] != xs[i]
    ]
    slope = quantile(slopes, 0.5) if slopes else 0.0
    intercept = quantile([y - slope * x for x, y in zip(xs, ys, strict=True)], 0.5)
    return intercept, slope


@frozen
class SizeModel:
    """Analysis duration from the video's size: a line, corrected near each size, and the
    spread around it.

    The line alone is set by the bulk of the samples; where it is off (early estimates were
    coarse, or most analyses of small videos were done by their first poll and recorded at that
    bound, one step early), the median of the samples of the nearest sizes corrects it, so each
    region of sizes follows its own analyses down or up.

    Attributes:
        intercept: Seconds of an empty video, by the line.
        slope: Seconds per byte.
        first: When to poll first, as a fraction of the prediction.
        late: The ``LATE`` quantile of duration / prediction over the samples: past it (and
            one step) the policy's backoff takes over.
        near: The samples' sizes and their duration / line, ordered by size (the correction).
        neighbours: How many samples of the nearest sizes correct the line.
    """

    intercept: float
    slope: float
    first: float
    late: float
    near: tuple[tuple[float, float], ...] = ()
    neighbours: int = 0

    def line(self, size: float) -> float:
        """The line's duration for a video of ``size`` bytes."""
        return self.intercept + self.slope * size

    def predict(self, size: float) -> float:
        """The duration of a video of ``size`` bytes: the line times the median ratio of the
        samples of the nearest sizes."""
        line = self.line(size)
        if not self.near or self.neighbours < 1:
            return line
        nearest = sorted(self.near, key=lambda item: abs(item[0] - size))[: self.neighbours]
        return line * quantile([ratio for _, ratio in nearest], 0.5)

    def schedule_points(self, size: float, *, lag: float = LAG) -> tuple[float, float] | None:
        """The first poll and fallback point (seconds after the upload) for a video of
        ``size`` bytes, or None when the model predicts no positive duration for it."""
        predicted = self.predict(size)
        if not predicted > 0:
            return None
        first = max(predicted * self.first, 0.0)
        return first, max(predicted * self.late * (1 + lag), first)


def fit(samples: Sequence[DurationSample], *, lag: float = LAG) -> SizeModel | None:
    """The size model of the latest ``FIT_SAMPLES`` samples with a size, or None while fewer
    than MIN_SAMPLES have one, or when their sizes are all equal or predict a duration <= 0
    for one of them (nothing to learn from the size)."""
    sized = [s for s in samples if s.size is not None][-FIT_SAMPLES:]
    if len(sized) < MIN_SAMPLES or len({s.size for s in sized}) < 2:
        return None
    xs = [float(s.size) for s in sized if s.size is not None]
    ys = [s.seconds for s in sized]
    intercept, slope = theil_sen(xs, ys)
    if intercept < 0 and min(xs) > 0:
        # An empty video done in less than no time: the noise of a line fitted far from zero,
        # which would predict the smallest videos' analyses far too short (every one polled
        # early and often). Through zero instead: seconds in proportion to the bytes.
        intercept, slope = 0.0, quantile([y / x for x, y in zip(xs, ys, strict=True)], 0.5)
    line = [intercept + slope * x for x in xs]
    if min(line) <= 0:
        return None
    near = tuple(sorted(zip(xs, (y / p for y, p in zip(ys, line, strict=True)), strict=True)))
    corrected = SizeModel(intercept, slope, 1.0, 1.0, near, max(MIN_SAMPLES, len(xs) // NEAR))
    predicted = [corrected.predict(x) for x in xs]
    if min(predicted) <= 0:
        return None
    ratios = [y / p for y, p in zip(ys, predicted, strict=True)]
    middle, late = quantile(ratios, 0.5), quantile(ratios, LATE)
    # The low end mirrored from the high one: below the first poll the durations are censored
    # ("done by then"), so the low tail cannot be read from the samples; the high one can.
    low = max(2 * middle - late, 0.0)
    # Each estimate is off by up to half its interval (a lag), which widens the late quantile
    # from refit to refit: the first poll is kept no earlier than the FLOOR quantile, so a
    # wide draw does not make nearly every video poll twice or three times.
    first = min(max(low * (1 + lag), quantile(ratios, FLOOR)), quantile(ratios, FIRST))
    return SizeModel(intercept, slope, first, late, near, corrected.neighbours)


class Prediction:
    """What the samples seen predict for the next video: a per-video schedule from its size
    when that beats the common one and the policy, else the common one when it beats the
    policy, else nothing (the policy's own schedule).

    Args:
        samples: The samples, oldest first.
        policy: The session's poll policy.
        lag: The longest lag of a learned schedule, as a fraction of the duration.
    """

    def __init__(
        self, samples: Sequence[DurationSample], *, policy: PollPolicy, lag: float = LAG
    ) -> None:
        kept = precise_first(samples)
        self.policy = policy
        self.lag = lag
        self.common = learn([s.seconds for s in kept], policy=policy, lag=lag)
        self.model = fit(kept, lag=lag) if SIZE_MODEL else None
        if self.model is not None and not self._model_pays(kept, self.model):
            self.model = None

    def _model_pays(self, samples: Sequence[DurationSample], model: SizeModel) -> bool:
        # Every cost on the same sized samples, so the comparison is like for like.
        policy, lag = self.policy, self.lag
        by_size = common = default = 0
        for sample in samples:
            if sample.size is None:
                continue
            points = model.schedule_points(sample.size, lag=lag)
            if points is None:
                return False
            by_size += learned_polls(policy, *points, lag, sample.seconds)
            default += policy_polls(policy, sample.seconds)
            if self.common is not None:
                common += learned_polls(policy, *self.common, lag, sample.seconds)
        return by_size < default and (self.common is None or by_size < common)

    def points(self, size: int | None) -> tuple[float, float] | None:
        """The first poll and fallback point for a video of ``size`` bytes (None: unknown),
        or None for the policy's own schedule."""
        if self.model is not None and size is not None:
            points = self.model.schedule_points(size, lag=self.lag)
            if points is not None:
                return points
        return self.common

    def schedule(self, *, size: int | None, origin: float) -> LearnedSchedule | None:
        """The learned schedule of a video of ``size`` bytes uploaded at ``origin``
        (monotonic), or None for the policy's own schedule."""
        points = self.points(size)
        if points is None:
            return None
        return LearnedSchedule(
            self.policy,
            origin=origin,
            first=points[0],
            late=points[1],
            lag=self.lag,
            sized=points is not self.common,  # the size model's, not the common ones
        )


def estimate(
    *,
    pending: float | None,
    done: float,
    first_poll: float,
    planned_first: float | None,
    lag: float = LAG,
    sized: bool = False,
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
        lag: The learned schedule's lag.
        sized: The first poll was planned from the video's size (near the middle of analyses
            like it, see :class:`SizeModel`), not where hardly any analysis is done yet.
    """
    if pending is not None:
        return max((pending + done) / 2, 0.0), max(done - pending, 0.0)
    # On plan, give or take a round trip and the event loop's scheduling; later, the job was
    # held up and "done by then" is no news about the duration.
    if planned_first is not None and first_poll <= planned_first * (1 + lag) + 0.1:
        low = done / (1 + lag)
        if sized:
            # Many analyses are done by a sized first poll, by design: the one lag early end
            # would be biased low for all of them, and a region of sizes mostly done by it
            # would teach the next run to poll it about 13 % early (2 or 3 polls each).
            return (low + done) / 2, done - low
        return low, done - low
    return None


class SampleLog:
    """The samples one process learns from (a local ``batch_upload``), latest ``limit`` kept,
    with the prediction refitted as they come: after every new sample at first, then once a
    tenth more have come (at most every 20), so a long batch does not spend its CPU refitting.

    Args:
        policy: The session's poll policy.
        limit: How many of the latest samples are kept.
    """

    def __init__(self, *, policy: PollPolicy, limit: int = 200) -> None:
        self.policy = policy
        self.limit = limit
        self.samples: list[DurationSample] = []
        self._prediction: Prediction | None = None
        self._fresh = 0  # samples added since the prediction was made

    def extend(self, samples: Sequence[DurationSample]) -> None:
        """Add samples, oldest first."""
        self.samples = [*self.samples, *samples][-self.limit :]
        self._fresh += len(samples)

    def add(self, sample: DurationSample) -> None:
        """Add one sample."""
        self.extend([sample])

    @property
    def prediction(self) -> Prediction:
        """The prediction from the samples (refitted when enough are new)."""
        known = len(self.samples) - self._fresh
        if self._prediction is None or self._fresh >= min(20, max(1, known // 10)):
            self._prediction = Prediction(self.samples, policy=self.policy)
            self._fresh = 0
        return self._prediction

    def schedule(self, *, size: int | None, origin: float) -> LearnedSchedule | None:
        """The learned schedule of a video of ``size`` bytes uploaded at ``origin``, or None
        for the policy's own (see :meth:`Prediction.schedule`)."""
        return self.prediction.schedule(size=size, origin=origin)


@define
class Watch:
    """What one video's polls saw, in seconds after its upload, to learn its duration from.

    Attributes:
        video_id: The video.
        origin: The end of its upload, on ``time.monotonic()``.
        size: Its size in bytes, when known.
        schedule: Its learned schedule, or None on the policy's.
        first: When the first answer came.
        pending: When the last Pending answer came.
        done: When the first finished answer came.
    """

    video_id: str
    origin: float
    size: int | None = None
    schedule: LearnedSchedule | None = None
    first: float | None = None
    pending: float | None = None
    done: float | None = None

    def seen(self, *, done: bool, now: float) -> None:
        """Note an answer that came at ``now`` (monotonic)."""
        at = now - self.origin
        if self.first is None:
            self.first = at
        if not done:
            self.pending = at
        elif self.done is None:
            self.done = at

    def sample(self) -> DurationSample | None:
        """The duration to learn from, once done, or None when the polls say nothing."""
        if self.done is None or self.first is None:
            return None
        found = estimate(
            pending=self.pending,
            done=self.done,
            first_poll=self.first,
            planned_first=None if self.schedule is None else self.schedule.first,
            sized=self.schedule is not None and self.schedule.sized,
        )
        if found is None:
            return None
        return DurationSample(found[0], found[1], self.size)
