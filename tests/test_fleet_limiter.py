"""RedisRateLimiter: one ceiling on a fleet's API requests, on a real redis-server."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from guru_async import GuruSession, NotFoundError
from guru_async.fleet import RedisRateLimiter, RedisUnavailableError
from guru_async.fleet._rate import deferrable_requests
from guru_async.testing import (
    ANALYSIS_ROUTE,
    GET_VIDEO_ROUTE,
    TOKEN_ROUTE,
    FaultRule,
    GuruEmulator,
)

from .fleet_procs import Workers, emulator_stats, standalone_emulator
from .redis_server import RedisServer

MISSING = "0b8e4c1e-0000-4000-8000-000000000000"


@pytest.fixture
async def workers() -> AsyncIterator[Workers]:
    """Start fleet worker processes; any still running at teardown are killed."""
    started = Workers()
    yield started
    await started.close()


def worst_window(arrivals: list[float], seconds: float = 1.0) -> int:
    """The most arrivals in any half-open window of ``seconds`` (one starts at each arrival)."""
    ordered = sorted(arrivals)
    worst, end = 0, 0
    for start, t in enumerate(ordered):
        while end < len(ordered) and ordered[end] < t + seconds:
            end += 1
        worst = max(worst, end - start)
    return worst


class CountingLimiter:
    """A RateLimiter that lets everything through and counts the requests it was asked for."""

    def __init__(self) -> None:
        self.acquired = 0

    async def acquire(self) -> None:
        """Count one request."""
        self.acquired += 1


@pytest.mark.slow
async def test_four_processes_stay_under_one_ceiling(redis_url: str, workers: Workers) -> None:
    """Four processes, 16 tasks each, under rate=20: after the first second, no 1 s window of
    the server's arrival times holds more than 10 % above the ceiling."""
    rate = 20
    async with standalone_emulator("--analysis-delay", "0") as endpoints:
        started = await workers.start(endpoints, "rate", redis_url, str(rate), "3", count=4)
        await asyncio.gather(*(w.go() for w in started))
        outcomes = await asyncio.gather(*(w.outcome() for w in started))
        stats = await emulator_stats(endpoints, arrivals=True)
    assert [o["errors"] for o in outcomes] == [[]] * 4
    api = sorted(t for route, t in stats["arrivals"] if route == GET_VIDEO_ROUTE)
    assert len(api) == sum(o["calls"] for o in outcomes)
    after_first_second = [t for t in api if t >= api[0] + 1.0]
    assert len(after_first_second) >= rate  # a real load, not an idle fleet
    assert worst_window(after_first_second) <= math.floor(rate * 1.10)


async def test_every_api_attempt_passes_the_ceiling_but_storage_and_tokens_do_not(
    emulator: GuruEmulator, video_file: Callable[..., Path]
) -> None:
    """The ceiling is asked once per API request attempt (retries included), never for the
    token request or the upload to storage."""
    limiter = CountingLimiter()
    emulator.faults.add(FaultRule(GET_VIDEO_ROUTE, status=503, times=2))
    async with emulator.session(limiter=limiter, max_retries=3) as guru:
        video_id = await guru.upload_video(video_file(), activity="squat")  # create + upload
        assert limiter.acquired == 1
        await guru.get_video(video_id)  # two 503s, then 200
    assert limiter.acquired == 4
    assert emulator.token_requests == 1
    assert emulator.requests[TOKEN_ROUTE] == 1


async def test_one_limiter_books_a_burst_then_one_slot_per_interval(redis_url: str) -> None:
    """From idle, ``burst`` requests go at once, then each waits one more interval, as booked
    by Redis on its own clock."""
    async with RedisRateLimiter(redis_url, rate=10, burst=3) as limiter:
        started = time.monotonic()
        waits = [(await limiter._reserve())[0] for _ in range(6)]
        elapsed = time.monotonic() - started
    assert waits[:3] == [0.0, 0.0, 0.0]
    for booked, ideal in zip(waits[3:], (0.1, 0.2, 0.3), strict=True):
        assert ideal - elapsed <= booked <= ideal


async def test_the_ceiling_paces_a_session_through_redis(
    emulator: GuruEmulator, redis_url: str
) -> None:
    """Twelve concurrent calls under rate=20, burst=1 reach the server at least 50 ms apart
    on average: the session waits for its slots instead of failing."""
    async with (
        RedisRateLimiter(redis_url, rate=20, burst=1) as limiter,
        emulator.session(limiter=limiter) as guru,
    ):
        await asyncio.gather(*(_missing(guru) for _ in range(12)))
    arrivals = [r.received_at for r in emulator.recorded if r.route == GET_VIDEO_ROUTE]
    assert len(arrivals) == 12
    assert max(arrivals) - min(arrivals) >= 11 * 0.05 * 0.95


async def _polls_among_busy_requests(
    emulator: GuruEmulator, redis_url: str, *, total: float | None, polls: int = 1
) -> tuple[list[float], list[float]]:
    """Four tasks keep a rate=20 ceiling busy with 32 requests; after the first of them,
    ``polls`` polls in ``deferrable_requests(total=total)``. Their arrivals, and the busy
    requests'."""
    async with (
        RedisRateLimiter(redis_url, rate=20, burst=1) as limiter,
        emulator.session(limiter=limiter) as guru,
    ):

        async def busy() -> None:
            for _ in range(8):
                await _missing(guru)

        async def poll() -> None:
            with deferrable_requests(total=total), pytest.raises(NotFoundError):
                await guru.get_analysis(MISSING)

        tasks = [asyncio.create_task(busy()) for _ in range(4)]
        deadline = time.monotonic() + 10
        # Polling the in-process emulator's counter: there is no event to wait on.
        while emulator.requests[GET_VIDEO_ROUTE] < 2:
            assert time.monotonic() < deadline, "the busy tasks never reached the server"
            await asyncio.sleep(0.01)
        await asyncio.gather(*(poll() for _ in range(polls)), *tasks)
    gets = [r.received_at for r in emulator.recorded if r.route == GET_VIDEO_ROUTE]
    polled = [r.received_at for r in emulator.recorded if r.route == ANALYSIS_ROUTE]
    assert len(gets) == 32
    assert len(polled) == polls
    return polled, gets


async def test_under_a_binding_ceiling_a_deferrable_poll_yields_to_other_requests(
    emulator: GuruEmulator, redis_url: str
) -> None:
    """Four tasks keeping a rate=20 ceiling busy with 32 requests: a poll made in
    ``deferrable_requests()`` after the first of them reaches the server after all 32 (in
    arrival order it would have been among the first few)."""
    (polled,), gets = await _polls_among_busy_requests(emulator, redis_url, total=None)
    assert polled > max(gets)


async def test_a_deferrable_poll_yields_for_at_most_half_of_its_total(
    emulator: GuruEmulator, redis_url: str
) -> None:
    """With ``total=0.4`` six deferrable polls at once each yield for 0.2 s from its call
    (queueing behind the one rechecking included), then book like any other request: all six
    reach the server while most of the 1.6 s of busy requests are still to come."""
    polled, gets = await _polls_among_busy_requests(emulator, redis_url, total=0.4, polls=6)
    assert min(sum(t > at for t in gets) for at in polled) >= 12


async def test_an_idle_ceiling_books_a_deferrable_request_at_once(redis_url: str) -> None:
    """With nothing booked, a deferrable request books its slot with its first script call,
    as any other (the ordering costs nothing while the ceiling does not bind)."""
    async with RedisRateLimiter(redis_url, rate=10, burst=1) as limiter:
        first = await limiter._reserve(deferrable=True)
        second = await limiter._reserve(deferrable=True)
    assert first == (0.0, True)
    assert second[1] is False
    assert 0 < second[0] <= 0.1


async def test_redis_down_paces_each_process_at_its_share(
    emulator: GuruEmulator,
    start_redis: Callable[..., RedisServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis stops: calls still succeed, paced at rate / (processes last seen in Redis),
    never unlimited, with one WARNING."""
    server = start_redis()
    async with (
        RedisRateLimiter(server.url, rate=20, burst=1) as limiter,
        RedisRateLimiter(server.url, rate=20, burst=1) as other_process,
        emulator.session(limiter=limiter) as guru,
        emulator.session(limiter=other_process),  # the same account: one ceiling
    ):
        await limiter.acquire()
        await other_process.acquire()
        await limiter.acquire()
        assert limiter.local_rate == 10.0  # two processes were sharing the ceiling
        server.stop()
        emulator.recorded.clear()
        await asyncio.gather(*(_missing(guru) for _ in range(6)))
    arrivals = [r.received_at for r in emulator.recorded if r.route == GET_VIDEO_ROUTE]
    assert len(arrivals) == 6
    assert max(arrivals) - min(arrivals) >= 5 * 0.1 * 0.95
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "this process paces its API requests at its own share of the rate" in warnings[0]


async def test_never_reached_redis_assumes_a_fleet_of_four() -> None:
    """A limiter that never reached Redis paces itself at a quarter of the rate, or at the
    fallback_rate given."""
    assert RedisRateLimiter("redis://127.0.0.1:1/0", rate=40).local_rate == 10.0
    limiter = RedisRateLimiter("redis://127.0.0.1:1/0", rate=40, fallback_rate=5)
    assert limiter.local_rate == 5.0


async def test_a_wrong_password_is_a_typed_error_from_check(
    start_redis: Callable[..., RedisServer],
) -> None:
    """check() with a wrong password raises RedisUnavailableError without the password."""
    server = start_redis(password="right-password")
    url = f"redis://:wrong-password@127.0.0.1:{server.port}/0"
    async with RedisRateLimiter(url, rate=5) as limiter:
        with pytest.raises(RedisUnavailableError, match="refused the password") as raised:
            await limiter.check()
        await limiter.acquire()  # the fallback: paced locally, no error
    assert "wrong-password" not in str(raised.value)
    assert "wrong-password" not in repr(limiter)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate": 0}, "rate must be a number > 0"),
        ({"rate": -1}, "rate must be a number > 0"),
        ({"rate": True}, "rate must be a number > 0"),
        ({"rate": float("nan")}, "rate must be a number > 0"),
        ({"rate": "50"}, "rate must be a number > 0"),
        ({"rate": 10, "burst": 0.5}, "burst must be at least 1"),
        ({"rate": 10, "key": ""}, "key must be a non-empty str"),
        ({"rate": 10, "fallback_rate": 0}, "fallback_rate must be a number > 0"),
        ({"rate": 10, "timeout": 0}, "timeout must be a number of seconds > 0"),
    ],
)
def test_bad_arguments_are_value_errors(kwargs: dict[str, object], message: str) -> None:
    """Each bad argument is a ValueError naming it, before anything connects."""
    with pytest.raises(ValueError, match=message):
        RedisRateLimiter("redis://127.0.0.1:6379/0", **kwargs)  # type: ignore[arg-type]


def test_a_session_refuses_a_limiter_without_acquire(emulator: GuruEmulator) -> None:
    """GuruSession(limiter=) takes an AdaptiveLimiter or a RateLimiter, else a TypeError."""
    with pytest.raises(TypeError, match="limiter must be an AdaptiveLimiter or a RateLimiter"):
        emulator.session(limiter=object())


async def _missing(guru: GuruSession) -> None:
    with pytest.raises(NotFoundError):
        await guru.get_video(MISSING)
