"""How ``await_analysis`` waits: poll Get Analysis with backoff until Complete or Failed.

An analysis typically takes about 30 s. The default schedule polls at once, then after 1 s,
growing by 1.5x to a 5 s cap (each wait jittered by ±10% so many waiters do not poll in step):
polls land near 0, 1, 2.5, 4.8, 8.1, 13.1, 18.1, 23.1, 28.1, 33.1 s, so a 30 s analysis costs
10 requests and is seen about 3 s after it finishes; a 60 s one costs 16.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Generator
from typing import Any

import backoff
from attrs import frozen

from ._errors import (
    AnalysisTimeoutError,
    GuruConnectionError,
    RateLimitError,
    ResponseDecodeError,
    ServerError,
)
from ._models import Analysis

DEFAULT_TIMEOUT = 600.0
LAST_POLL_GRACE = 1.0


def is_transient_poll_error(exc: BaseException) -> bool:
    """A failure that says nothing about the analysis, so the wait goes on through it. (A body
    that is JSON but not an Analysis is not one: waiting longer would not change it.)"""
    if isinstance(exc, ResponseDecodeError):
        return exc.not_json
    return isinstance(exc, (GuruConnectionError, ServerError, RateLimitError, asyncio.TimeoutError))


class _PollState:
    # Not callable on purpose: backoff calls any callable it is given as a wait_gen kwarg.
    __slots__ = ("hint", "last")

    def __init__(self) -> None:
        self.hint: float | None = None
        self.last: Analysis | None = None


@frozen
class PollPolicy:
    """The schedule of polls, in seconds.

    Attributes:
        interval: The wait before the second poll (the first is immediate).
        max_interval: The longest wait between two polls.
        multiplier: How much each wait grows over the one before.
        jitter: Each wait is scaled by a random factor in ``[1 - jitter, 1 + jitter]``.
    """

    interval: float = 1.0
    max_interval: float = 5.0
    multiplier: float = 1.5
    jitter: float = 0.1

    def __attrs_post_init__(self) -> None:
        if not 0 < self.interval <= self.max_interval:
            raise ValueError(
                f"need 0 < interval <= max_interval, got {self.interval} and {self.max_interval}"
            )
        if self.multiplier < 1 or not 0 <= self.jitter < 1:
            raise ValueError("need multiplier >= 1 and 0 <= jitter < 1")

    def next_wait(self, wait: float, hint: float | None) -> tuple[float, float]:
        """The seconds until the next poll (the server's hint when it gave one, else ``wait``
        jittered), and the base wait for the poll after it."""
        step = hint if hint is not None else wait * random.uniform(1 - self.jitter, 1 + self.jitter)
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
    policy: PollPolicy,
) -> Analysis:
    """Poll ``fetch`` until the analysis is done, or raise AnalysisTimeoutError at ``timeout``.

    ``fetch`` returns the analysis and the server's hint (seconds) for the next poll, if any.
    """
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
        raise ValueError(f"timeout must be a number of seconds >= 0, got {timeout!r}")
    deadline = time.monotonic() + timeout
    state = _PollState()

    async def poll() -> Analysis | None:
        # Each poll ends by the deadline (plus a moment for the last one): a poll's own retries
        # (a server asking for Retry-After, say) must not stretch the caller's timeout.
        limit = max(0.0, deadline - time.monotonic()) + LAST_POLL_GRACE
        try:
            analysis, state.hint = await asyncio.wait_for(fetch(), timeout=limit)
        except Exception as exc:
            if not is_transient_poll_error(exc):
                raise
            # The request already retried; the analysis is still running server-side, so a
            # failed poll only means "no news" until the deadline says otherwise.
            state.hint = None
            return None
        state.last = analysis
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
    last = state.last
    status = last.status if last is not None else "unknown (no poll succeeded)"
    raise AnalysisTimeoutError(
        f"analysis of video {video_id} not finished after {timeout:g} s (last status: "
        f"{status}); the video is safe: await_analysis({video_id!r}) again to keep waiting",
        video_id=video_id,
        last=last,
    )
