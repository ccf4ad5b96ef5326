"""The one retry policy every request uses: which failures are retried, and how long to wait.

Built on ``backoff.on_exception`` with two corrections to its defaults: the wait generator
applies full jitter itself and returns exactly what a ``Retry-After`` asks (backoff's own jitter
would turn that into an upper bound), and giving up is decided against a monotonic deadline
(backoff's ``max_time`` reads the wall clock and can overshoot by a whole attempt).
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Generator
from typing import Any

from attrs import define, frozen

from ._errors import APIError, GuruConnectionError, ResponseDecodeError, UploadError
from ._validation import check_int

DEFAULT_MAX_RETRIES = 4
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
RETRYABLE_STORAGE_CODES = frozenset({"SlowDown", "InternalError", "RequestTimeout"})


@frozen
class RetryPolicy:
    """How failed requests are retried.

    Attributes:
        max_retries: Retries after the first attempt (0 disables retrying).
        wait_initial: The cap of the first backoff, in seconds; each retry doubles it.
        wait_max: The largest backoff between two attempts, in seconds.
        max_retry_after: The longest ``Retry-After`` honoured; longer asks are shortened to it.
    """

    max_retries: int = DEFAULT_MAX_RETRIES
    wait_initial: float = 0.5
    wait_max: float = 20.0
    max_retry_after: float = 60.0

    def __attrs_post_init__(self) -> None:
        check_int("max_retries", self.max_retries)
        if not (0 <= self.wait_initial <= self.wait_max):
            raise ValueError("need 0 <= wait_initial <= wait_max")


@define
class RetryBudget:
    """A token bucket shared by a session's requests, so a dead service is not hammered.

    botocore's standard mode: each retry takes ``retry_cost`` (``timeout_cost`` after a
    timeout or dropped connection), when it is sure to happen (a retry the call's deadline rules
    out costs nothing); a request that succeeds gives back what its last retry took, or
    ``refund`` if it needed none. Transient faults that retries overcome cost nothing
    in the long run; a service that keeps failing drains the bucket, and then failures are
    raised at once instead of retried.
    """

    capacity: int = 500
    retry_cost: int = 5
    timeout_cost: int = 10
    refund: int = 1
    available: int = 500

    def cost(self, exc: BaseException) -> int:
        """What retrying after ``exc`` takes from the bucket."""
        return self.timeout_cost if isinstance(exc, GuruConnectionError) else self.retry_cost

    def take(self, amount: int) -> bool:
        """Take ``amount`` if the bucket holds it; False (taking nothing) otherwise."""
        if amount > self.available:
            return False
        self.available -= amount
        return True

    def spend(self, exc: BaseException) -> bool:
        """Take the cost of retrying after ``exc``; False when the budget cannot pay it."""
        return self.take(self.cost(exc))

    def success(self, last_retry_cost: int = 0) -> None:
        """A request succeeded: give back its last retry's cost, or ``refund`` if none."""
        self.available = min(self.capacity, self.available + (last_retry_cost or self.refund))


def is_retryable(exc: BaseException) -> bool:
    """True for failures that a later identical attempt may not meet."""
    if isinstance(exc, GuruConnectionError):
        return True
    if isinstance(exc, APIError):
        return exc.status in RETRYABLE_STATUSES
    if isinstance(exc, UploadError):
        return exc.code in RETRYABLE_STORAGE_CODES or exc.status in RETRYABLE_STATUSES
    # A 2xx whose body was cut short or replaced by a proxy's page: the next try may be whole.
    # (JSON of the wrong shape is not retried: the same request would get the same answer.)
    return (
        isinstance(exc, ResponseDecodeError)
        and exc.not_json
        and exc.status is not None
        and exc.status < 300
    )


def is_safe_to_repeat(exc: BaseException, *, unsent: bool) -> bool:
    """For a request that must not reach the service twice (Create video): True when a retry
    after ``exc`` cannot make a duplicate. That is a network failure that surely came before the
    request was sent (``unsent``: refused, name not resolved, connect timeout), or an answer by
    which the service says it did not act and asks for a retry: 408, 429, or 503 with a
    ``Retry-After``. A dropped connection, a body cut short, a timeout while waiting for the
    answer and other 5xx are ambiguous: the service may have acted.
    """
    if isinstance(exc, GuruConnectionError):
        return unsent
    if isinstance(exc, APIError):
        return exc.status in (408, 429) or (exc.status == 503 and exc.retry_after is not None)
    return False


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def wait_times(
    *, policy: RetryPolicy, deadline: float | None, rng: random.Random | None = None
) -> Generator[float, Any, None]:
    """backoff wait generator: full jitter, exact Retry-After, and a monotonic deadline.

    backoff sends each failure in; the generator stops (and backoff re-raises that failure)
    when the next wait would pass the deadline.
    """
    rand = rng or random
    exc = yield 0.0  # primed by backoff with None
    attempt = 0
    while True:
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            wait = min(float(retry_after), policy.max_retry_after)
        else:
            wait = rand.uniform(0.0, min(policy.wait_max, policy.wait_initial * 2**attempt))
        if deadline is not None and time.monotonic() + wait >= deadline:
            return
        attempt += 1
        exc = yield wait
