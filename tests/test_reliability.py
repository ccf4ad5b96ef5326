"""Faults: retries, budgets, throttling, dropped and cut-short responses, timeouts, cancellation,
closing under load, token churn, and a small soak, all against the emulator over real sockets."""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import logging
import random
import time
import types
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

import guru_async._limiter as limiter_module
from guru_async import (
    AdaptiveLimiter,
    BadRequestError,
    BatchResult,
    GuruConnectionError,
    GuruSession,
    MemoryTokenStore,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestDetails,
    ResponseDecodeError,
    RetryBudget,
    RetryDetails,
    RetryPolicy,
    ServerError,
    SessionClosedError,
    Timeouts,
    VideoSpec,
)
from guru_async._retry import parse_retry_after, wait_times
from guru_async.testing import (
    ANALYSIS_ROUTE,
    CREATE_ROUTE,
    DOWNLOAD_ROUTE,
    GET_VIDEO_ROUTE,
    J2P_ROUTE,
    TOKEN_ROUTE,
    UPLOAD_ROUTE,
    FaultRule,
    GuruEmulator,
)
from tests.conftest import FAST_POLLS
from tests.helpers import open_fds, total_requests, wait_until

MISSING_ID = "0b8e4c1e-0000-4000-8000-000000000000"

MakeSession = Callable[..., GuruSession]
VideoFile = Callable[..., Path]


def quick(max_retries: int = 4) -> RetryPolicy:
    """A retry policy that backs off for milliseconds, not seconds."""
    return RetryPolicy(max_retries=max_retries, wait_initial=0.01, wait_max=0.05)


@pytest.fixture
async def video_id(emulator: GuruEmulator, make_session: MakeSession) -> str:
    """A created (not uploaded) video, with the emulator's counters reset afterwards."""
    async with make_session() as setup:
        created = await setup.create_video("clip.mp4", size=10, activity="squat")
    emulator.reset_counters()
    emulator.recorded.clear()
    return created.id


@pytest.fixture
async def fast(make_session: MakeSession) -> AsyncIterator[GuruSession]:
    """A session with 4 quick retries."""
    async with make_session(retry_policy=quick()) as session:
        yield session


# -- retries -----------------------------------------------------------------------------------


async def test_two_503s_then_success_takes_three_requests(
    emulator: GuruEmulator, fast: GuruSession, video_id: str
) -> None:
    """Two 503s followed by a success make the call succeed on its third request."""
    emulator.faults.add(FaultRule(route=GET_VIDEO_ROUTE, status=503, times=2))
    video = await fast.get_video(video_id)
    assert video.status == "Pending"
    assert emulator.requests[GET_VIDEO_ROUTE] == 3
    assert emulator.faults.fired[GET_VIDEO_ROUTE] == 2


async def test_max_retries_zero_fails_at_the_first_503(
    emulator: GuruEmulator, make_session: MakeSession, video_id: str
) -> None:
    """A session with max_retries=0 raises ServerError at the first 503, after one request."""
    emulator.faults.add(FaultRule(route=GET_VIDEO_ROUTE, status=503, times=1))
    async with make_session(max_retries=0) as guru:
        with pytest.raises(ServerError, match="HTTP 503") as info:
            await guru.get_video(video_id)
    assert info.value.status == 503
    assert emulator.requests[GET_VIDEO_ROUTE] == 1


async def test_per_call_max_retries_overrides_the_session(
    emulator: GuruEmulator, make_session: MakeSession, video_id: str
) -> None:
    """max_retries on a call beats the session's: more retries where it has none, fewer where it
    has many."""
    async with make_session(retry_policy=quick(), max_retries=0) as guru:
        emulator.faults.add(FaultRule(route=GET_VIDEO_ROUTE, status=503, times=2))
        await guru.get_video(video_id, max_retries=2)
        assert emulator.requests[GET_VIDEO_ROUTE] == 3

    emulator.faults.clear()
    emulator.reset_counters()
    async with make_session(retry_policy=quick(8)) as guru:
        emulator.faults.add(FaultRule(route=GET_VIDEO_ROUTE, status=503))
        with pytest.raises(ServerError):
            await guru.get_video(video_id, max_retries=1)
        assert emulator.requests[GET_VIDEO_ROUTE] == 2


@pytest.mark.parametrize(
    ("status", "error"),
    [(400, BadRequestError), (403, PermissionDeniedError), (404, NotFoundError)],
    ids=["400", "403", "404"],
)
async def test_client_errors_are_not_retried(
    emulator: GuruEmulator, fast: GuruSession, video_id: str, status: int, error: type[Exception]
) -> None:
    """400, 403 and 404 are final: one request, the matching error class."""
    emulator.faults.add(FaultRule(route=GET_VIDEO_ROUTE, status=status))
    with pytest.raises(error, match=f"HTTP {status}"):
        await fast.get_video(video_id)
    assert emulator.requests[GET_VIDEO_ROUTE] == 1


async def test_429_retry_after_is_waited_then_retried(
    emulator: GuruEmulator, fast: GuruSession, video_id: str
) -> None:
    """A 429 with Retry-After 0.2 is waited at least 0.2 s before the successful retry."""
    emulator.faults.add(FaultRule(route=GET_VIDEO_ROUTE, status=429, retry_after=0.2, times=1))
    started = time.monotonic()
    await fast.get_video(video_id)
    elapsed = time.monotonic() - started
    assert elapsed >= 0.2
    assert emulator.requests[GET_VIDEO_ROUTE] == 2


async def test_long_retry_after_is_capped(
    emulator: GuruEmulator, make_session: MakeSession, video_id: str
) -> None:
    """A Retry-After of 30 s is shortened to the policy's max_retry_after (0.1 s here)."""
    emulator.faults.add(FaultRule(route=GET_VIDEO_ROUTE, status=429, retry_after=30, times=1))
    async with make_session(retry_policy=RetryPolicy(max_retries=2, max_retry_after=0.1)) as guru:
        started = time.monotonic()
        await guru.get_video(video_id)
        elapsed = time.monotonic() - started
    assert 0.1 <= elapsed < 5.0
    assert emulator.requests[GET_VIDEO_ROUTE] == 2


def _started(policy: RetryPolicy, deadline: float | None, seed: int) -> object:
    gen = wait_times(policy=policy, deadline=deadline, rng=random.Random(seed))
    assert next(gen) == 0.0  # backoff primes the generator with send(None)
    return gen


def test_wait_times_full_jitter_within_the_doubling_cap() -> None:
    """Without Retry-After each wait is uniform in [0, min(wait_max, wait_initial * 2**n)]."""
    policy = RetryPolicy(max_retries=10, wait_initial=0.5, wait_max=4.0)
    gen = _started(policy, None, seed=42)
    twin = random.Random(42)
    failure = ServerError("x", status=503)
    for n in range(10):
        cap = min(4.0, 0.5 * 2**n)
        wait = gen.send(failure)  # type: ignore[attr-defined]
        assert wait == twin.uniform(0.0, cap)
        assert 0.0 <= wait <= cap


def test_wait_times_honours_retry_after_exactly_and_caps_it() -> None:
    """A Retry-After is waited exactly, and longer ones are cut to max_retry_after."""
    policy = RetryPolicy(max_retry_after=5.0)
    gen = _started(policy, None, seed=1)
    assert gen.send(RateLimitError("x", status=429, retry_after=0.7)) == 0.7  # type: ignore[attr-defined]
    assert gen.send(RateLimitError("x", status=429, retry_after=3600)) == 5.0  # type: ignore[attr-defined]
    assert gen.send(RateLimitError("x", status=429, retry_after=0.0)) == 0.0  # type: ignore[attr-defined]


def test_wait_times_stops_at_the_deadline() -> None:
    """A wait that would end past the deadline ends the generator (backoff then gives up)."""
    policy = RetryPolicy(max_retry_after=60.0)
    gen = _started(policy, time.monotonic() + 1.0, seed=1)
    assert gen.send(RateLimitError("x", status=429, retry_after=0.1)) == 0.1  # type: ignore[attr-defined]
    with pytest.raises(StopIteration):
        gen.send(RateLimitError("x", status=429, retry_after=5.0))  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("3", 3.0),
        ("0.2", 0.2),
        (" 7 ", 7.0),
        ("-5", 0.0),
        ("0", 0.0),
        ("soon", None),
        ("", None),
        (None, None),
        ("nan", None),
    ],
    ids=["int", "float", "spaces", "negative", "zero", "junk", "empty", "none", "nan"],
)
def test_parse_retry_after_seconds(value: str | None, expected: float | None) -> None:
    """Delta-seconds parse to a non-negative float; junk is None."""
    assert parse_retry_after(value) == expected


def test_parse_retry_after_http_date() -> None:
    """An HTTP-date is the seconds from now until then, and 0 when it is past."""
    now = 1_700_000_000.0
    later = email.utils.formatdate(now + 30, usegmt=True)
    earlier = email.utils.formatdate(now - 30, usegmt=True)
    assert parse_retry_after(later, now=now) == 30.0
    assert parse_retry_after(earlier, now=now) == 0.0


def test_retry_budget_spends_and_refunds() -> None:
    """Retries cost 5 (10 after a connection failure), successes refund 1 up to the capacity."""
    budget = RetryBudget(capacity=20, available=20)
    assert budget.spend(ServerError("x", status=503)) is True
    assert budget.available == 15
    assert budget.spend(GuruConnectionError("x")) is True
    assert budget.available == 5
    assert budget.spend(GuruConnectionError("x")) is False
    assert budget.available == 5
    assert budget.spend(ServerError("x", status=503)) is True
    assert budget.available == 0
    for _ in range(3):
        budget.success()
    assert budget.available == 3
    budget.success(10)  # a request that needed a retry gives back what that retry took
    assert budget.available == 13
    for _ in range(100):
        budget.success()
    assert budget.available == 20


async def test_exhausted_budget_stops_retrying(
    emulator: GuruEmulator, make_session: MakeSession, video_id: str
) -> None:
    """With a budget that pays for one retry, a dead route gets two requests, not eleven."""
    budget = RetryBudget(capacity=5, available=5)
    emulator.faults.add(FaultRule(route=GET_VIDEO_ROUTE, status=503))
    async with make_session(retry_policy=quick(10), retry_budget=budget) as guru:
        with pytest.raises(ServerError):
            await guru.get_video(video_id)
    assert emulator.requests[GET_VIDEO_ROUTE] == 2
    assert budget.available == 0


async def test_a_failure_that_is_not_retried_costs_no_budget(
    emulator: GuruEmulator, make_session: MakeSession, video_id: str
) -> None:
    """With max_retries=0 no retry happens, so the retry budget is left untouched."""
    budget = RetryBudget(capacity=100, available=100)
    emulator.faults.add(FaultRule(route=GET_VIDEO_ROUTE, status=503))
    async with make_session(max_retries=0, retry_budget=budget) as guru:
        with pytest.raises(ServerError):
            await guru.get_video(video_id)
    assert emulator.requests[GET_VIDEO_ROUTE] == 1
    assert budget.available == 100


class _BudgetWatcher:
    """A hook that notes the retry budget's balance when each retry is announced."""

    def __init__(self, budget: RetryBudget) -> None:
        self.budget = budget
        self.attempts: list[tuple[int, int | None]] = []
        self.retries: list[tuple[int, float, int]] = []

    def on_request(self, details: RequestDetails) -> None:
        self.attempts.append((details.attempt, details.status))

    def on_retry(self, details: RetryDetails) -> None:
        self.retries.append((details.attempt, details.wait, self.budget.available))


async def test_a_failed_first_attempt_is_retried_charged_and_heard_by_the_hooks(
    emulator: GuruEmulator, make_session: MakeSession, video_id: str
) -> None:
    """A call whose bare first attempt fails is retried by backoff after the exact Retry-After,
    each retry takes its cost from the budget before the hooks hear of it, and success gives
    back the last retry's cost (a call that needed none gives back 1)."""
    budget = RetryBudget(capacity=100, available=50)
    hook = _BudgetWatcher(budget)
    async with make_session(hooks=[hook], retry_policy=quick(), retry_budget=budget) as guru:
        await guru.get_analysis(video_id)  # the token request and this call: 1 back each
        assert budget.available == 52
        emulator.faults.add(
            FaultRule(route=ANALYSIS_ROUTE, kind="status", status=503, retry_after=0.05, times=1)
        )
        analysis = await guru.get_analysis(video_id)
        assert analysis.status == "Pending"
        assert hook.retries == [(1, 0.05, 47)]  # charged 5 before on_retry
        assert budget.available == 52  # the retry's 5 given back on success
        emulator.faults.add(FaultRule(route=ANALYSIS_ROUTE, kind="status", status=503, times=2))
        await guru.get_analysis(video_id)
    assert [(a, b) for a, _, b in hook.retries[1:]] == [(1, 47), (2, 42)]
    assert budget.available == 47  # 52 - 5 - 5, then the last retry's 5 back
    polls = hook.attempts[1:]  # after the token request
    assert polls == [(1, 200), (1, 503), (2, 200), (1, 503), (2, 503), (3, 200)]
    arrivals = [r.received_at for r in emulator.recorded if r.route == ANALYSIS_ROUTE]
    assert len(arrivals) == 6
    assert arrivals[2] - arrivals[1] >= 0.05  # the Retry-After was waited


async def test_a_first_attempt_timed_out_is_retried_charged_and_heard_by_the_hooks(
    emulator: GuruEmulator, make_session: MakeSession, video_id: str
) -> None:
    """A bare first attempt ended by the read timeout (timed by the pool's own lazy timer, not
    aiohttp's) is retried at once instead of waited out, the retry takes the timeout cost from
    the budget before the hooks hear of it, and success gives that cost back."""
    budget = RetryBudget(capacity=100, available=50)
    hook = _BudgetWatcher(budget)
    timeouts = Timeouts(read=0.2)
    async with make_session(
        hooks=[hook], retry_policy=quick(), retry_budget=budget, timeouts=timeouts
    ) as guru:
        await guru.get_analysis(video_id)  # the token request and this call: 1 back each
        emulator.faults.add(FaultRule(route=ANALYSIS_ROUTE, kind="delay", delay=1.0, times=1))
        started = time.monotonic()
        analysis = await guru.get_analysis(video_id)
        elapsed = time.monotonic() - started
    assert analysis.status == "Pending"
    assert elapsed < 0.9  # the stalled attempt was abandoned after 0.2 s of silence
    assert [(attempt, available) for attempt, _, available in hook.retries] == [(1, 42)]
    assert budget.available == 52  # 52 - 10, then the retry's 10 back on success
    assert hook.attempts[1:] == [(1, 200), (1, None), (2, 200)]
    assert emulator.requests[ANALYSIS_ROUTE] == 3


# -- broken responses --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["drop", "malformed"])
async def test_one_broken_response_is_retried(
    emulator: GuruEmulator, fast: GuruSession, video_id: str, kind: str
) -> None:
    """A dropped connection or an HTML page once is retried and succeeds (a cut-short body:
    the next test)."""
    emulator.faults.add(FaultRule(route=GET_VIDEO_ROUTE, kind=kind, times=1))  # type: ignore[arg-type]
    video = await fast.get_video(video_id, include=["analysis"])
    assert video.status == "Pending"
    assert video.analysis is not None
    assert emulator.requests[GET_VIDEO_ROUTE] == 2


async def test_truncated_response_is_retried(
    emulator: GuruEmulator, fast: GuruSession, video_file: VideoFile
) -> None:
    """A response cut off half way is retried transparently and the call returns whole data."""
    video_id = await fast.upload_video(video_file(), activity="squat", rep_count=3)
    await fast.await_analysis(video_id, timeout=10)
    emulator.faults.add(FaultRule(route=J2P_ROUTE, kind="truncate", times=1))
    joints = await fast.get_joint_data(video_id)
    assert len(joints.joint_to_points) == 17
    assert emulator.requests[J2P_ROUTE] == 2


@pytest.mark.parametrize(
    ("kind", "error", "detail"),
    [
        ("drop", GuruConnectionError, "disconnected"),
        ("truncate", GuruConnectionError, "payload"),
        ("malformed", ResponseDecodeError, "not JSON"),
    ],
    ids=["drop", "truncate", "malformed"],
)
async def test_persistently_broken_responses_end_in_a_clear_error(
    emulator: GuruEmulator,
    fast: GuruSession,
    video_id: str,
    kind: str,
    error: type[Exception],
    detail: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Always-broken responses end, after the retries, in a typed error naming the call and the
    problem, without the URL or its query; a dropped attempt is logged as an error, and an HTML
    page is kept on the error with its status."""
    caplog.set_level(logging.DEBUG, logger="guru_async")
    emulator.faults.add(FaultRule(route=GET_VIDEO_ROUTE, kind=kind))  # type: ignore[arg-type]
    with pytest.raises(error) as info:
        await fast.get_video(video_id, include=["analysis"])
    message = str(info.value)
    assert f"Get video {video_id}" in message
    assert detail.lower() in message.lower()
    assert "include=" not in message
    assert emulator.base_url not in message
    if kind == "drop":
        failed = [r for r in caplog.records if f"/videos/{video_id} -> error" in r.getMessage()]
        assert len(failed) == 5
    if isinstance(info.value, ResponseDecodeError):
        assert info.value.status == 200
        assert info.value.body.startswith("<html>")
    # 5 attempts; aiohttp itself resends an idempotent GET once when a kept-alive connection
    # drops (RFC 9112 9.3.1), so a drop may cost two requests per attempt.
    assert emulator.requests[GET_VIDEO_ROUTE] in ((5, 10) if kind == "drop" else (5,))


async def test_dropped_download_error_has_no_signature(
    emulator: GuruEmulator, fast: GuruSession, video_file: VideoFile, tmp_path: Path
) -> None:
    """A download whose connection always drops fails without the presigned signature."""
    uploaded = await fast.upload_video(video_file("raw.mp4", size=4096), activity="squat")
    uri = (await fast.get_video(uploaded)).uri
    assert uri is not None
    signature = uri.split("X-Amz-Signature=")[1]
    emulator.faults.add(FaultRule(route=DOWNLOAD_ROUTE, kind="drop"))
    with pytest.raises(GuruConnectionError) as info:
        await fast.download(uploaded, tmp_path / "out.mp4")
    assert f"video {uploaded}" in str(info.value)
    assert signature not in str(info.value)
    assert "X-Amz" not in str(info.value)
    assert not (tmp_path / "out.mp4").exists()


# -- upload replay ----------------------------------------------------------------------------


async def test_upload_dropped_twice_is_restreamed_from_the_start(
    emulator: GuruEmulator, fast: GuruSession, video_file: VideoFile
) -> None:
    """Two connections dropped mid-upload: the file is re-sent from byte 0 each time and stored
    byte-identical."""
    source = video_file("big.mp4", size=3 * 1024 * 1024 + 123)
    emulator.faults.add(FaultRule(route=UPLOAD_ROUTE, kind="drop", times=2))
    progress: list[int] = []
    uploaded = await fast.upload_video(
        source, activity="squat", progress=lambda sent, total: progress.append(sent)
    )
    assert emulator.requests[UPLOAD_ROUTE] == 3
    assert emulator.uploads_completed[uploaded] == 1
    assert emulator.stored_path(uploaded).read_bytes() == source.read_bytes()
    # Progress never goes back nor counts re-sent bytes twice: one rise from 0 to the end.
    assert progress[0] == 0
    assert progress == sorted(set(progress))
    assert progress[-1] == source.stat().st_size


async def test_upload_dropped_mid_body_closes_the_file(
    emulator: GuruEmulator, fast: GuruSession, video_file: VideoFile
) -> None:
    """An upload that fails on a dropped connection has closed its file when the error is
    raised, and the session goes on."""
    source = video_file("dropped.mp4", size=4096)
    created = await fast.create_video(source, activity="squat")
    emulator.faults.add(FaultRule(route=UPLOAD_ROUTE, kind="drop"))
    with pytest.raises(GuruConnectionError, match=f"Upload of video {created.id}"):
        await fast.upload(created, source, max_retries=0)
    assert str(source) not in open_fds()
    emulator.faults.clear()
    await fast.upload(created, source)
    assert emulator.stored_path(created.id).read_bytes() == source.read_bytes()
    assert str(source) not in open_fds()


# -- timeouts ---------------------------------------------------------------------------------


async def test_stalled_upload_fails_by_inactivity_then_is_retried(
    emulator: GuruEmulator, make_session: MakeSession, video_file: VideoFile
) -> None:
    """An upload whose storage host stops reading fails after Timeouts.read of silence (no
    total bounds uploads), and the retry sends it whole."""
    source = video_file("stalled.mp4", size=24 * 1024 * 1024)
    emulator.faults.add(FaultRule(route=UPLOAD_ROUTE, kind="delay", delay=5.0, times=1))
    async with make_session(timeouts=Timeouts(read=0.5), retry_policy=quick(2)) as guru:
        started = time.monotonic()
        video_id = await guru.upload_video(source, activity="squat")
        elapsed = time.monotonic() - started
    assert elapsed < 4.0  # the stalled attempt was abandoned, not waited out
    assert emulator.requests[UPLOAD_ROUTE] == 2
    assert emulator.stored_path(video_id).read_bytes() == source.read_bytes()


async def test_read_timeout_fails_fast(
    emulator: GuruEmulator, make_session: MakeSession, video_id: str
) -> None:
    """A server that stalls 2 s hits a 0.3 s read timeout: GuruConnectionError well before 2 s."""
    async with make_session(timeouts=Timeouts(read=0.3, total=1.0), max_retries=0) as guru:
        await guru.get_video(video_id)  # token and connection ready
        emulator.faults.add(FaultRule(route=GET_VIDEO_ROUTE, kind="delay", delay=2.0, times=1))
        started = time.monotonic()
        with pytest.raises(GuruConnectionError, match="timed out") as info:
            await guru.get_video(video_id)
        elapsed = time.monotonic() - started
    assert elapsed < 1.9
    assert f"Get video {video_id}" in str(info.value)


# -- adaptive limiter ---------------------------------------------------------------------------


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """Drive guru_async._limiter's clock (only that module's view of time)."""
    fake = FakeClock()
    monkeypatch.setattr(limiter_module, "time", types.SimpleNamespace(monotonic=fake.monotonic))
    return fake


async def _send_steadily(
    limiter: AdaptiveLimiter, clock: FakeClock, rate: float, secs: float
) -> None:
    for _ in range(round(rate * secs)):
        await limiter.acquire()
        limiter.record(throttled=False)
        clock.now += 1.0 / rate


async def test_limiter_throttle_cuts_below_the_measured_rate(clock: FakeClock) -> None:
    """After 5 s of 10 requests/s, a burst of 429s engages the limiter at a rate below 10
    requests/s."""
    limiter = AdaptiveLimiter()
    assert limiter.enabled is False
    await _send_steadily(limiter, clock, rate=10.0, secs=5.0)
    limiter.record(throttled=True)
    limiter.record(throttled=True)
    assert limiter.enabled is True
    assert limiter.rate < limiter._measured
    assert limiter.rate < 10.0


async def test_limiter_ignores_a_stray_429(clock: FakeClock) -> None:
    """One 429 among many successes is no sign of overload: the limiter stays off."""
    limiter = AdaptiveLimiter()
    await _send_steadily(limiter, clock, rate=50.0, secs=3.0)
    limiter.record(throttled=True)
    assert limiter.enabled is False


async def test_limiter_recovers_as_requests_succeed(clock: FakeClock) -> None:
    """After a throttle, successes raise the allowed rate over time, back past where it was."""
    limiter = AdaptiveLimiter()
    await _send_steadily(limiter, clock, rate=10.0, secs=2.0)
    limiter.record(throttled=True)
    limiter.record(throttled=True)
    assert limiter.enabled is True
    cut = limiter.rate
    before_throttle = cut / 0.7
    rates = []
    for _ in range(12):
        clock.now += 1.0
        limiter.record(throttled=False)
        rates.append(limiter.rate)
    assert rates == sorted(rates)
    assert rates[0] > cut * 0.99
    assert rates[-1] > before_throttle


async def test_limiter_engages_under_a_429_storm(
    emulator: GuruEmulator, make_session: MakeSession, video_id: str
) -> None:
    """200 concurrent calls with 30 % of requests throttled all succeed, and the limiter is on."""
    limiter = AdaptiveLimiter()
    async with make_session(retry_policy=quick(15), limiter=limiter) as guru:
        emulator.faults.add(FaultRule(route=GET_VIDEO_ROUTE, rate=0.3, status=429))
        # Without the limiter this takes well under a second; paced, it must still not crawl.
        videos = await asyncio.wait_for(
            asyncio.gather(*(guru.get_video(video_id) for _ in range(200))), timeout=15
        )
        assert len(videos) == 200
        assert all(v.status == "Pending" for v in videos)
        assert limiter.enabled is True
        assert emulator.faults.fired[GET_VIDEO_ROUTE] > 0


# -- cancellation ------------------------------------------------------------------------------


async def test_cancelled_call_is_not_retried_and_the_session_goes_on(
    emulator: GuruEmulator, fast: GuruSession, video_id: str
) -> None:
    """Cancelling a call stuck on a slow server raises CancelledError, sends nothing more, and
    the session serves the next call."""
    emulator.faults.add(FaultRule(route=GET_VIDEO_ROUTE, kind="delay", delay=3.0, times=1))
    task = asyncio.create_task(fast.get_video(video_id))
    await wait_until(lambda: emulator.requests[GET_VIDEO_ROUTE] == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert emulator.requests[GET_VIDEO_ROUTE] == 1
    video = await fast.get_video(video_id)
    assert video.status == "Pending"
    assert emulator.requests[GET_VIDEO_ROUTE] == 2


async def test_cancelled_upload_closes_the_file(
    emulator: GuruEmulator, fast: GuruSession, video_file: VideoFile
) -> None:
    """Cancelling an upload mid-stream closes the file and its connection; the session works on."""
    source = video_file("long.mp4", size=24 * 1024 * 1024)
    created = await fast.create_video(source, activity="squat")
    before = open_fds()
    first_chunk = asyncio.Event()

    def on_progress(sent: int, total: int) -> None:
        if sent > 0:
            first_chunk.set()

    task = asyncio.create_task(fast.upload(created, source, progress=on_progress))
    await asyncio.wait_for(first_chunk.wait(), timeout=10)
    assert str(source) in open_fds()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert str(source) not in open_fds()
    # The emulator (same process) lets go of its side of the connection once it notices.
    await wait_until(lambda: len(open_fds()) <= len(before))
    assert emulator.uploads_completed[created.id] == 0
    again = await fast.upload_video(video_file("short.mp4", size=2048), activity="squat")
    assert emulator.uploads_completed[again] == 1


# -- lifecycle ---------------------------------------------------------------------------------


async def test_closed_session_refuses_calls(emulator: GuruEmulator, guru: GuruSession) -> None:
    """After close() (twice is harmless), calls raise SessionClosedError and send nothing."""
    await guru.close()
    await guru.close()
    assert guru.closed
    with pytest.raises(SessionClosedError, match="closed"):
        await guru.get_analysis(MISSING_ID)
    with pytest.raises(SessionClosedError):
        await guru.create_video("x.mp4", size=1)
    assert total_requests(emulator) == 0
    assert "closed" in repr(guru)


async def test_close_ends_calls_in_flight(
    emulator: GuruEmulator, make_session: MakeSession, video_id: str
) -> None:
    """Closing the session ends calls waiting on a slow server and a wait between polls with
    SessionClosedError, long before they would have ended by themselves."""
    guru = make_session(retry_policy=quick())
    await guru.__aenter__()
    emulator.faults.add(FaultRule(route=GET_VIDEO_ROUTE, kind="delay", delay=3.0, times=5))
    tasks = [asyncio.create_task(guru.get_video(video_id)) for _ in range(5)]
    # Never uploaded, so Pending forever: the wait polls until its 30 s timeout or the close.
    tasks.append(asyncio.create_task(guru.await_analysis(video_id, timeout=30)))
    await wait_until(lambda: emulator.requests[GET_VIDEO_ROUTE] == 5)
    await wait_until(lambda: emulator.requests[ANALYSIS_ROUTE] >= 2)
    await guru.close()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=2.5)
    assert [type(r) for r in results] == [SessionClosedError] * 6
    assert emulator.requests[GET_VIDEO_ROUTE] == 5
    with pytest.raises(SessionClosedError, match="closed"):
        await guru.get_video(video_id)
    with pytest.raises(SessionClosedError):
        await guru.get_analysis(video_id)
    assert guru.closed is True


async def test_caller_owned_http_session_is_left_open(
    emulator: GuruEmulator, make_session: MakeSession, video_id: str
) -> None:
    """GuruSession.close() leaves a caller's aiohttp.ClientSession open and usable."""
    async with aiohttp.ClientSession() as http:
        async with make_session(http_session=http) as guru:
            await guru.get_video(video_id)
        assert guru.closed is True
        assert http.closed is False
        async with http.get(emulator.base_url + "/videos/" + video_id) as resp:
            assert resp.status == 401  # reachable, just not authorized
    assert http.closed is True


# -- token churn -------------------------------------------------------------------------------


async def test_token_churn_under_load(tmp_path: Path) -> None:
    """With 1 s tokens, 20 workers calling for 8 s never fail and refresh about once per 0.8 s."""
    run_time = 8.0
    async with GuruEmulator(
        token_lifetime=1.0, analysis_delay=0.1, storage_dir=tmp_path / "storage"
    ) as emu:
        async with GuruSession(
            emu.client_id,
            emu.client_secret,
            base_url=emu.base_url,
            token_url=emu.token_url,
            token_store=MemoryTokenStore(),
            poll_policy=FAST_POLLS,
        ) as guru:
            created = await guru.create_video("clip.mp4", size=10, activity="squat")
            emu.reset_counters()
            calls = 0
            failures: list[BaseException] = []
            stop = time.monotonic() + run_time

            async def worker() -> None:
                nonlocal calls
                while time.monotonic() < stop:
                    try:
                        analysis = await guru.get_analysis(created.id)
                        assert analysis.status == "Pending"
                    except Exception as exc:
                        failures.append(exc)
                    calls += 1
                    await asyncio.sleep(0.05)

            await asyncio.gather(*(worker() for _ in range(20)))
        assert failures == []
        assert calls > 1000
        assert run_time * 0.5 <= emu.token_requests <= run_time * 3
        assert emu.token_requests < calls / 50
        # A call sent in the refresh margin's last moments can reach the emulator after its token
        # expired when the machine is loaded; it is then refreshed and resent once, never failed.
        # Such resends stay rare: the proactive refresh, not the 401, does the work.
        resent = emu.requests[ANALYSIS_ROUTE] - calls
        assert 0 <= resent <= calls // 100


# -- soak --------------------------------------------------------------------------------------


async def test_soak_batch_of_200_under_faults(
    emulator: GuruEmulator, make_session: MakeSession, tmp_path: Path
) -> None:
    """200 uploads through 30 % 503s and 5 % dropped connections all complete, byte-identical,
    with no video lost and no file descriptor leaked."""
    folder = tmp_path / "videos"
    folder.mkdir()
    rng = random.Random(7)
    paths = []
    for i in range(200):
        path = folder / f"clip-{i:03d}.mp4"
        path.write_bytes(i.to_bytes(2, "big") + rng.randbytes(rng.randint(1000, 6000)))
        paths.append(path)
    digests = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}
    fds_before = len(open_fds())

    async with make_session(
        max_retries=12,
        retry_policy=quick(),
        retry_budget=RetryBudget(capacity=10**9, available=10**9),
    ) as guru:
        for route in (TOKEN_ROUTE, UPLOAD_ROUTE, ANALYSIS_ROUTE):  # every other route a batch uses
            emulator.faults.add(FaultRule(route=route, rate=0.3, kind="status", status=503))
            emulator.faults.add(FaultRule(route=route, rate=0.05, kind="drop"))
        # Create is retried only when the service says it did not act (test_retry_polling.py).
        emulator.faults.add(FaultRule(route=CREATE_ROUTE, rate=0.3, status=503, retry_after=0.01))
        emulator.faults.add(FaultRule(route=CREATE_ROUTE, rate=0.05, status=429, retry_after=0.01))
        items = [VideoSpec(p, activity="squat") if i % 2 else p for i, p in enumerate(paths)]
        results: list[BatchResult] = []

        async def run() -> None:
            async for r in guru.batch_upload(
                items, upload_concurrency=16, poll_rate=1000, activity="squat", timeout=60
            ):
                results.append(r)

        # About 15 s of work on 2 cores; the bound only keeps a stall from hanging the suite.
        await asyncio.wait_for(run(), timeout=45)
        emulator.faults.clear()
        # Every upload is over: none of the sources may still be open.
        assert [fd for fd in open_fds() if fd.startswith(str(folder))] == []

    errors = [repr(r.error) for r in results if r.error is not None]
    assert errors == []
    assert len(results) == 200
    assert all(r.ok for r in results)
    assert {id(r.item) for r in results} == {id(i) for i in items}
    ids = [r.video_id for r in results]
    assert len(set(ids)) == 200
    assert sum(emulator.faults.fired.values()) > 200
    for r in results:
        assert r.video_id is not None
        path = Path(r.item.path if isinstance(r.item, VideoSpec) else r.item)
        stored = emulator.stored_path(r.video_id).read_bytes()
        assert hashlib.sha256(stored).hexdigest() == digests[path]
        assert emulator.uploads_completed[r.video_id] == 1
        assert r.analysis is not None
        assert r.analysis.status == "Complete"
    assert abs(len(open_fds()) - fds_before) <= 2
