"""Client-side flow control that adapts to throttling, after botocore's "adaptive" retry mode.

Until the service first answers 429 (or storage ``SlowDown``) requests go out unthrottled.
From then on they pass through a token bucket whose rate is cut to 70% of the rate measured
when the throttle came (at most once a second, however many calls hear the same 429s, and only
while throttles are a tenth or more of recent responses), then grows back along a cubic curve
(fast at first, gently near the old rate, then probing above it) as requests succeed. Shared
by every call of a session (pass one limiter to several sessions to share it wider), so
thousands of concurrent calls slow down together instead of each retrying into a 429 storm.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Protocol, runtime_checkable

_BETA = 0.7  # multiplicative decrease on throttle
_SCALE = 0.4  # cubic growth constant (botocore's)
_MIN_RATE = 0.5  # requests per second: never stall completely
_SMOOTH = 0.8  # weight of the newest window in the measured send rate (botocore's)
_BUCKET = 1.0  # measurement window, seconds
_MIN_WINDOW = 0.05
# Throttles within this long of a cut belong to the same overload episode (many calls in
# flight all hear the same 429s): one cut per episode, as TCP CUBIC cuts once per loss event.
_COOLDOWN = 1.0
# A throttle cuts the rate only while throttles are at least this share of recent responses
# (counted with a decay of about a second): an overloaded service throttles much of what it
# gets, while a stray 429 now and then is no reason to crawl.
_SIGNIFICANT = 0.1
_DECAY = 1.0


class AdaptiveLimiter:
    """A token-bucket limiter that engages on throttling and recovers gradually.

    Attributes:
        enabled: Whether throttling has been seen, so requests are being paced.
        rate: The current allowed requests per second (meaningful when enabled).
    """

    def __init__(self) -> None:
        self.enabled = False
        self.rate = float("inf")
        self._max_rate_at_throttle = 0.0
        self._throttled_at = 0.0
        self._tokens = 0.0
        self._last_refill = time.monotonic()
        self._measured = 0.0
        self._window_start = time.monotonic()
        self._window_count = 0
        self._responses = 0.0
        self._throttles = 0.0
        self._last_response = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        """Wait for a slot to send one request (immediate while not throttled)."""
        self._count_send()
        if not self.enabled:
            return
        async with self._lock:
            while True:
                self._refill()
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return
                await asyncio.sleep((1.0 - self._tokens) / self.rate)

    def try_acquire(self) -> bool:
        """Take a slot without waiting: True while not throttled (the send is counted, as by
        ``acquire``); False, taking nothing, when the caller must ``await acquire()``."""
        if self.enabled:
            return False
        self._count_send()
        return True

    def record(self, *, throttled: bool) -> None:
        """Feed back a response: throttled (429/SlowDown) or not."""
        now = time.monotonic()
        keep = math.exp(-(now - self._last_response) / _DECAY)
        self._last_response = now
        self._responses = self._responses * keep + 1.0
        self._throttles = self._throttles * keep + (1.0 if throttled else 0.0)
        if throttled and (
            (self.enabled and now - self._throttled_at < _COOLDOWN)
            or self._throttles < _SIGNIFICANT * self._responses
        ):
            return
        if throttled:
            measured = self._measured
            if measured == 0.0:
                # Throttled within the first window: estimate from it as it stands. Err high
                # (a short floor on its length): later windows correct an overestimate within
                # a second or two, while an underestimate would pace a burst to a crawl.
                measured = self._window_count / max(now - self._window_start, _MIN_WINDOW)
            base = measured if not self.enabled else min(measured, self.rate)
            self._max_rate_at_throttle = max(base, _MIN_RATE)
            self._throttled_at = now
            self.rate = max(_MIN_RATE, self._max_rate_at_throttle * _BETA)
            self._tokens = min(self._tokens, 1.0)
            self.enabled = True
        elif self.enabled:
            self.rate = max(_MIN_RATE, self._cubic(now))

    def _cubic(self, now: float) -> float:
        # W(t) = C (t - K)^3 + W_max with K = cbrt(W_max (1 - beta) / C): the curve starts at
        # beta * W_max right after the throttle and passes W_max at t = K.
        w_max = self._max_rate_at_throttle
        k = float((w_max * (1 - _BETA) / _SCALE) ** (1 / 3))
        return float(_SCALE * (now - self._throttled_at - k) ** 3 + w_max)

    def _refill(self) -> None:
        now = time.monotonic()
        # Capacity of one second's worth (at least one token) keeps bursts short.
        self._tokens = min(
            max(1.0, self.rate), self._tokens + (now - self._last_refill) * self.rate
        )
        self._last_refill = now

    def _count_send(self) -> None:
        now = time.monotonic()
        if self._window_count == 0 and self._measured == 0.0:
            self._window_start = now  # the first window starts at the first send, not at init
        self._window_count += 1
        elapsed = now - self._window_start
        if elapsed >= _BUCKET:
            current = self._window_count / elapsed
            if self._measured == 0.0:
                self._measured = current
            else:
                self._measured = current * _SMOOTH + self._measured * (1 - _SMOOTH)
            self._window_start = now
            self._window_count = 0

    def __repr__(self) -> str:
        state = f"rate={self.rate:.1f}/s" if self.enabled else "not throttled"
        return f"<AdaptiveLimiter {state}>"


@runtime_checkable
class RateLimiter(Protocol):
    """A ceiling on API requests that a session obeys besides its own adaptive limiter, such as
    ``guru_async.fleet.RedisRateLimiter`` (one ceiling for many processes).

    The session awaits ``acquire()`` before every attempt of every API request (retries and
    polls included; not storage transfers nor token requests), then sends it at once.
    """

    async def acquire(self) -> None:
        """Return when one more API request may be sent (wait, never fail, to pace)."""
        ...
