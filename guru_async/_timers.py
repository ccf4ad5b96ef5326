"""Timeouts that cost no timer per request: the transport's total and read timeouts, enforced
by timers re-armed only when they fire.

aiohttp arms a fresh event-loop timer for a request's total, another when the request is sent
(``sock_read``) and re-arms it on every chunk received, cancelling each: on a loopback API call
that was 8 % of the client's instructions per call (figure 5). The loop keeps cancelled timers
in its heap and compares them in Python, so the cost is in arming, not in firing. Here each
timer is armed once and, when it fires, looks at the time it guards: past it, the timeout
happens as aiohttp's would, with the same exception (a total at its exact deadline, where
aiohttp rounded one of 5 s or more up to the next whole second); not yet (more data came, or
the attempt it was armed for is over), it is re-armed for the time now due, or left to lapse.
Between requests nothing is armed anew, whatever their number.
"""

from __future__ import annotations

import asyncio
import functools
import math
import sys
from typing import Any, Protocol

import aiohttp
from aiohttp.client_proto import ResponseHandler


class Watched(Protocol):
    """An attempt under a ``DeadlineWatch``: when it expires, and the task running it."""

    expires: float  # loop.time() (time.monotonic()) at which the attempt times out
    task: asyncio.Task[Any] | None
    expired: bool  # set by the watch as it cancels the task


class DeadlineWatch:
    """One timer for the total timeouts of every attempt of a transport.

    ``watch`` before an attempt's first await, ``unwatch`` once it is over (however it
    ended): a dict insertion and a deletion per attempt. The timer is armed for the soonest
    deadline when a new one comes before it (rarely: deadlines are mostly a fixed total after
    each start, so later than those already watched), and on firing cancels the tasks of the
    attempts past their deadline, then re-arms for the soonest left.
    """

    __slots__ = ("_handle", "_loop", "_watched", "_when")

    def __init__(self) -> None:
        self._watched: dict[Watched, None] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._when = math.inf  # when the armed timer fires (inf: none armed)
        self._loop: asyncio.AbstractEventLoop | None = None

    def watch(self, attempt: Watched) -> None:
        """Cancel ``attempt.task`` (the running task) at ``attempt.expires``, unless
        ``unwatch`` comes first."""
        loop = asyncio.get_running_loop()
        attempt.task = asyncio.current_task(loop)
        attempt.expired = False
        self._watched[attempt] = None
        if attempt.expires < self._when or loop is not self._loop:
            self._arm(loop, attempt.expires)

    def unwatch(self, attempt: Watched) -> None:
        """``attempt`` is over: its deadline no longer matters (the timer stays armed; when
        it fires with nothing due, it re-arms for what is still watched, if anything)."""
        self._watched.pop(attempt, None)
        task, attempt.task = attempt.task, None
        if attempt.expired:
            # Cancelled for its deadline, but it ended otherwise (the cancellation was not
            # raised as such): the cancel request is taken back, as asyncio.timeout does.
            attempt.expired = False
            if sys.version_info >= (3, 11) and task is not None:
                task.uncancel()

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._loop, self._when = loop, when
        self._handle = loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._handle, self._when = None, math.inf
        loop = self._loop
        assert loop is not None
        now = loop.time()
        soonest = math.inf
        for attempt in list(self._watched):
            if attempt.expires <= now:
                del self._watched[attempt]
                attempt.expired = True
                if attempt.task is not None:
                    attempt.task.cancel()
            elif attempt.expires < soonest:
                soonest = attempt.expires
        if soonest < math.inf:
            self._arm(loop, soonest)


def timed_out(attempt: Watched, cancelled: asyncio.CancelledError) -> bool:
    """Whether ``cancelled``, raised in ``attempt``, is its deadline's doing, to be raised as
    ``asyncio.TimeoutError`` (else it is a cancellation from outside, raised as it is).

    As aiohttp's timer decides: on Python 3.11+, a task also cancelled by someone else stays
    cancelled.
    """
    if not attempt.expired:
        return False
    attempt.expired = False  # handled here: unwatch has nothing to take back
    task = attempt.task
    if sys.version_info >= (3, 11) and task is not None:
        return task.uncancel() == 0
    return True


class LazyReadTimeout(ResponseHandler):
    """aiohttp's response protocol with its ``sock_read`` timer re-armed only when it fires.

    The same rule as aiohttp's: the attempt fails with its ``SocketTimeoutError`` once nothing
    was received for ``sock_read`` seconds since the request was sent or the last bytes came
    in, while a response is awaited or read. Receiving only stamps the time; the one armed
    timer, when it fires before that silence is up, is re-armed for the moment it would be;
    once the response is read it is not cancelled but left to lapse, or to serve the next
    request on this connection.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self._read_from = 0.0  # when the silence being timed began
        self._read_timing = False  # a response is awaited or read (aiohttp's timer would run)

    def _reschedule_timeout(self) -> None:
        timeout = self._read_timeout
        if not timeout:
            self._read_timing = False
            return
        self._read_timing = True
        self._read_from = now = self._loop.time()
        if self._read_timeout_handle is None:
            self._read_timeout_handle = self._loop.call_at(now + timeout, self._read_timer_fired)

    def _drop_timeout(self) -> None:
        self._read_timing = False

    def _read_timer_fired(self) -> None:
        self._read_timeout_handle = None
        timeout = self._read_timeout
        if not self._read_timing or not timeout:
            return
        due = self._read_from + timeout
        if self._loop.time() >= due:
            self._on_read_timeout()
        else:
            self._read_timeout_handle = self._loop.call_at(due, self._read_timer_fired)

    def connection_lost(self, exc: BaseException | None) -> None:
        # Not left to lapse: a closed connection's protocol need not live until it fires.
        handle, self._read_timeout_handle = self._read_timeout_handle, None
        if handle is not None:
            handle.cancel()
        super().connection_lost(exc)


def _lazy_read_supported() -> bool:
    """Whether this aiohttp's response protocol times reads the way LazyReadTimeout relies on
    (private names that a future aiohttp may change: then its own timer is kept)."""
    needed = ("_reschedule_timeout", "_drop_timeout", "_on_read_timeout", "start_timeout")
    return all(callable(getattr(ResponseHandler, name, None)) for name in needed)


LAZY_READ_SUPPORTED = _lazy_read_supported()


def connector(**options: Any) -> aiohttp.TCPConnector:
    """A TCPConnector whose connections time reads with ``LazyReadTimeout`` (where this
    aiohttp allows; else aiohttp's own protocol)."""
    made = aiohttp.TCPConnector(**options)
    factory = getattr(made, "_factory", None)
    if (
        LAZY_READ_SUPPORTED
        and isinstance(factory, functools.partial)
        and factory.func is ResponseHandler
        and not factory.args
    ):
        lazy: Any = functools.partial(LazyReadTimeout, **factory.keywords)
        made._factory = lazy
    return made


def reads_lazily(http: aiohttp.ClientSession) -> bool:
    """Whether ``http``'s connections time reads with ``LazyReadTimeout``."""
    factory = getattr(http.connector, "_factory", None)
    return isinstance(factory, functools.partial) and factory.func is LazyReadTimeout
