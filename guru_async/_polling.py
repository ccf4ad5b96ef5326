"""How ``await_analysis`` waits: poll Get Analysis with backoff until Complete or Failed.

An analysis typically takes about 30 s. The default schedule polls at once, then after 1 s,
growing by 1.5x to a 5 s cap (each wait jittered by ±10% so many waiters do not poll in step):
polls land near 0, 1, 2.5, 4.8, 8.1, 13.1, 18.1, 23.1, 28.1, 33.1 s, so a 30 s analysis costs
10 requests and is seen about 3 s after it finishes; a 60 s one costs 16.

Failed polls are "no news" while the analysis runs on server-side, but not forever: when every
poll has failed for ``PollPolicy.max_outage`` the wait ends with a GuruConnectionError rather
than polling a dead network until the timeout.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Protocol

import backoff
from attrs import frozen

from ._aio import wait_for
from ._error_mapping import analysis_timeout
from ._errors import (
    GuruConnectionError,
    RateLimitError,
    ResponseDecodeError,
    ServerError,
)
from ._models import Analysis

DEFAULT_TIMEOUT = 600.0
LAST_POLL_GRACE = 1.0
DEFAULT_MAX_OUTAGE = 60.0


def is_transient_poll_error(exc: BaseException) -> bool:
    """A failure that says nothing about the analysis, so the wait goes on through it. (A body
    that is JSON but not an Analysis is not one: waiting longer would not change it.)"""
    if isinstance(exc, ResponseDecodeError):
        return exc.not_json
    return isinstance(exc, (GuruConnectionError, ServerError, RateLimitError, asyncio.TimeoutError))


class _PollState:
    # Not callable on purpose: backoff calls any callable it is given as a wait_gen kwarg.
    __slots__ = ("error", "failing_since", "hint", "last")

    def __init__(self) -> None:
        self.hint: float | None = None
        self.last: Analysis | None = None
        self.error: BaseException | None = None  # the latest failed poll's, until one succeeds
        self.failing_since: float | None = None  # when the current run of failed polls began


class PollSchedule(Protocol):
    """What poll_analysis needs of a schedule: PollPolicy, or the fleet's learned schedule."""

    @property
    def max_outage(self) -> float | None: ...

    def waits(self, *, deadline: float, state: _PollState) -> Generator[float, Any, None]: ...


@frozen
class PollPolicy:
    """The schedule of polls, in seconds.

    A server's polling hint (``Retry-After`` on a Pending answer) replaces the schedule's next
    wait, down to a floor of ``interval``: a shorter hint, 0 included, waits ``interval``. A
    server can pace or slow the polling, never turn it into a busy loop (a hint of 0 once made
    8,000 polls in 3 s; with the default policy it now makes 4).

    Attributes:
        interval: The wait before the second poll (the first is immediate), and the shortest
            wait a server's hint can ask for.
        max_interval: The longest wait between two polls.
        multiplier: How much each wait grows over the one before.
        jitter: Each wait is scaled by a random factor in ``[1 - jitter, 1 + jitter]``.
        max_outage: How long polls may all fail (connection errors, 5xx, bodies cut short)
            before the wait ends with GuruConnectionError (``.video_id`` set, the last failure
            as its ``__cause__``) instead of polling on until the timeout; default 60 s, which
            rides out a restart or a network blip. Checked after each failed poll, so the error
            comes up to one poll's wait and retries later. A 429 is not a failure here (the
            service is up). None: ride out any outage until the timeout.
    """

    interval: float = 1.0
    max_interval: float = 5.0
    multiplier: float = 1.5
    jitter: float = 0.1
    max_outage: float | None = DEFAULT_MAX_OUTAGE

    def __attrs_post_init__(self) -> None:
        if not 0 < self.interval <= self.max_interval:
            raise ValueError(
                f"need 0 < interval <= max_interval, got {self.interval} and {self.max_interval}"
            )
        if self.multiplier < 1 or not 0 <= self.jitter < 1:
            raise ValueError("need multiplier >= 1 and 0 <= jitter < 1")
        if self.max_outage is not None and not self.max_outage > 0:
            raise ValueError(f"max_outage must be > 0 seconds or None, got {self.max_outage}")

    def next_wait(self, wait: float, hint: float | None) -> tuple[float, float]:
        """The seconds until the next poll (the server's hint when it gave one, no shorter than
        ``interval``; else ``wait`` jittered), and the base wait for the poll after it."""
        if hint is not None:
            step = max(hint, self.interval)
        else:
            step = wait * random.uniform(1 - self.jitter, 1 + self.jitter)
        return step, min(self.max_interval, wait * self.multiplier)

    def waits(self, *, deadline: float, state: _PollState) -> Generator[float, Any, None]:
        """backoff wait generator: the policy's waits, or the server's hint when it gave one,
        ending at the deadline (the last poll happens right at it)."""
        yield 0.0  # primed by backoff
        wait = self.interval
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            step, wait = self.next_wait(wait, state.hint)
            yield min(step, remaining)


async def poll_analysis(
    fetch: Callable[[], Awaitable[tuple[Analysis, float | None]]],
    *,
    video_id: str,
    timeout: float,
    policy: PollSchedule,
    delay: float = 0.0,
) -> Analysis:
    """Poll ``fetch`` until the analysis is done, or raise AnalysisTimeoutError at ``timeout``
    (GuruConnectionError once every poll has failed for ``policy.max_outage``).

    ``fetch`` returns the analysis and the server's hint (seconds) for the next poll, if any.
    The first poll comes after ``delay`` seconds (a schedule that knows the analysis cannot be
    done sooner), at the latest at the deadline: the delay counts in ``timeout``.
    """
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
        raise ValueError(f"timeout must be a number of seconds >= 0, got {timeout!r}")
    deadline = time.monotonic() + timeout
    state = _PollState()
    if delay > 0:
        await asyncio.sleep(min(delay, timeout))

    async def poll() -> Analysis | None:
        # Each poll ends by the deadline (plus a moment for the last one): a poll's own retries
        # (a server asking for Retry-After, say) must not stretch the caller's timeout.
        started = time.monotonic()
        limit = max(0.0, deadline - started) + LAST_POLL_GRACE
        try:
            analysis, state.hint = await wait_for(fetch(), timeout=limit)
        except Exception as exc:
            if not is_transient_poll_error(exc):
                raise
            # The request already retried; the analysis is still running server-side, so a
            # failed poll only means "no news", until the deadline or a long outage says
            # otherwise.
            state.hint = None
            state.error = exc
            if isinstance(exc, RateLimitError):
                state.failing_since = None  # an answer: the service is up, just busy
                return None
            if state.failing_since is None:
                state.failing_since = started
            down = time.monotonic() - state.failing_since
            if policy.max_outage is not None and down >= policy.max_outage:
                # The cause is the SDK's own error, already free of URLs and secrets.
                raise GuruConnectionError(
                    f"analysis of video {video_id}: every poll failed for {down:.0f} s (last: "
                    f"{_describe(exc)}); the video is safe: await_analysis({video_id!r}) again "
                    "once the API is reachable",
                    video_id=video_id,
                ) from exc
            return None
        state.last = analysis
        state.error = state.failing_since = None
        return analysis

    done = await backoff.on_predicate(
        policy.waits,
        predicate=lambda a: a is None or not a.is_done,
        max_tries=None,
        jitter=None,
        logger=None,  # waiting is normal, not worth backoff's log line per poll
        deadline=deadline,
        state=state,
    )(poll)()
    if done is not None and done.is_done:
        return done
    failing = ""
    if state.error is not None:
        failing = f"; the latest poll failed: {_describe(state.error)}"
        if state.failing_since is not None:
            since = time.monotonic() - state.failing_since
            failing = f"; every poll of the last {since:.0f} s failed, the latest: " + (
                _describe(state.error)
            )
    raise analysis_timeout(
        video_id, timeout=timeout, last=state.last, failing=failing
    ) from state.error


def _describe(exc: BaseException) -> str:
    # GuruErrors carry secret-free messages; a bare asyncio timeout has none.
    return str(exc) or type(exc).__name__
