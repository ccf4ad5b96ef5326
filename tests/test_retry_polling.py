"""Failure semantics of retries and polling: polling hints have a floor, the retry budget pays
only for retries that happen, Create video is never repeated when it may have reached the
service, and a wait on an API that has gone away ends with a network error. Real sockets."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from guru_async import (
    AnalysisStatus,
    AnalysisTimeoutError,
    GuruConnectionError,
    GuruSession,
    MemoryTokenStore,
    NotFoundError,
    PollPolicy,
    ResponseDecodeError,
    RetryBudget,
    RetryPolicy,
    ServerError,
    Timeouts,
)
from guru_async.testing import (
    ANALYSIS_ROUTE,
    CREATE_ROUTE,
    GET_VIDEO_ROUTE,
    FaultRule,
    GuruEmulator,
)
from tests.crafted_server import CraftedServer
from tests.helpers import wait_until
from tests.redis_server import free_port

MakeSession = Callable[..., GuruSession]
StartEmulator = Callable[..., Awaitable[GuruEmulator]]
SessionFor = Callable[..., GuruSession]
VideoFile = Callable[..., Path]


def quick(max_retries: int = 4) -> RetryPolicy:
    """A retry policy that backs off for milliseconds, not seconds."""
    return RetryPolicy(max_retries=max_retries, wait_initial=0.01, wait_max=0.05)


def exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception reachable from it through ``__cause__``/``__context__``."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        todo += [current.__cause__, current.__context__]
    return seen


@pytest.fixture
async def video_id(emulator: GuruEmulator, make_session: MakeSession) -> str:
    """A created (not uploaded) video, with the emulator's counters reset afterwards."""
    async with make_session() as setup:
        created = await setup.create_video("clip.mp4", size=10, activity="squat")
    emulator.reset_counters()
    emulator.recorded.clear()
    return created.id


@pytest.fixture
async def crafted() -> AsyncIterator[CraftedServer]:
    """A server on 127.0.0.1 that answers whatever the test sets."""
    server = await CraftedServer().start()
    yield server
    await server.close()


# -- item 9: polling hints have a floor ----------------------------------------------------------


def test_a_polling_hint_is_obeyed_above_the_floor_of_interval() -> None:
    """A hint longer than ``interval`` is waited exactly; a shorter one (0 too) waits interval."""
    policy = PollPolicy(interval=1.0, max_interval=5.0)
    assert policy.next_wait(5.0, 3.0) == (3.0, 5.0)
    assert policy.next_wait(5.0, 0.0)[0] == 1.0
    assert policy.next_wait(1.0, 0.2)[0] == 1.0
    assert policy.next_wait(1.0, 1.0)[0] == 1.0


async def test_a_zero_polling_hint_does_not_make_a_busy_loop(crafted: CraftedServer) -> None:
    """A server answering Pending with ``Retry-After: 0`` gets one poll per ``interval``
    (about 10 in 0.5 s at 50 ms), not thousands."""
    crafted.respond(200, '{"status": "Pending"}', headers={"Retry-After": "0"})
    policy = PollPolicy(interval=0.05, max_interval=0.1)
    async with GuruSession(
        access_token="t", base_url=crafted.url, token_store=MemoryTokenStore(), poll_policy=policy
    ) as guru:
        with pytest.raises(AnalysisTimeoutError) as info:
            await guru.await_analysis("abc-123", timeout=0.5)
    assert info.value.last is not None
    assert info.value.last.status is AnalysisStatus.PENDING
    # Polls at 0, 0.05, ... 0.5 s: 11 at most, fewer when the machine is busy.
    assert 1 <= len(crafted.hits) <= 12


# -- item 15: a wait on an API that has gone away ------------------------------------------------


async def test_await_analysis_ends_with_a_network_error_when_the_api_is_gone(
    start_emulator: StartEmulator, session_for: SessionFor, video_file: VideoFile
) -> None:
    """When the API stops mid-wait, await_analysis ends after ``max_outage`` (not the timeout)
    with a GuruConnectionError carrying the video id and the last failure as its cause, with no
    URL or secret anywhere in the exception chain."""
    emu = await start_emulator(analysis_delay=60)
    policy = PollPolicy(interval=0.01, max_interval=0.05, max_outage=0.3)
    async with session_for(emu, poll_policy=policy, retry_policy=quick(1)) as guru:
        video_id = await guru.upload_video(video_file(), activity="squat")
        waiting = asyncio.create_task(guru.await_analysis(video_id, timeout=10))
        await wait_until(lambda: emu.requests[ANALYSIS_ROUTE] >= 2)
        base_url = emu.base_url
        await emu.close()
        with pytest.raises(GuruConnectionError) as info:
            await waiting
    error = info.value
    assert error.video_id == video_id
    assert f"analysis of video {video_id}: every poll failed for" in str(error)
    assert f"await_analysis({video_id!r}) again" in str(error)
    cause = error.__cause__
    assert isinstance(cause, GuruConnectionError)
    assert f"Get analysis of video {video_id}" in str(cause)
    assert "connect" in str(cause).lower()
    for exc in exception_chain(error):
        assert base_url not in str(exc)
        assert emu.client_secret not in str(exc)
        assert "Authorization" not in str(exc)


async def test_await_analysis_rides_out_a_short_outage(
    start_emulator: StartEmulator,
    session_for: SessionFor,
    video_file: VideoFile,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An API that goes away for a few failed polls and comes back (same ports) is waited
    through: the analysis is returned Complete."""
    caplog.set_level(logging.DEBUG, logger="guru_async")
    emu = await start_emulator(analysis_delay=0.3, port=free_port(), storage_port=free_port())
    policy = PollPolicy(interval=0.01, max_interval=0.05, max_outage=30)
    async with session_for(emu, poll_policy=policy, retry_policy=quick(0)) as guru:
        video_id = await guru.upload_video(video_file(), activity="squat")
        waiting = asyncio.create_task(guru.await_analysis(video_id, timeout=20))
        await wait_until(lambda: emu.requests[ANALYSIS_ROUTE] >= 1)
        await emu.close()

        def failed_polls() -> int:
            return sum("/analysis -> error" in r.getMessage() for r in caplog.records)

        await wait_until(lambda: failed_polls() >= 3)
        await emu.start()
        analysis = await waiting
    assert analysis.status is AnalysisStatus.COMPLETE
    assert failed_polls() >= 3


async def test_a_timeout_during_an_outage_says_the_polls_failed(
    start_emulator: StartEmulator, session_for: SessionFor, video_file: VideoFile
) -> None:
    """When the timeout comes while every poll fails, AnalysisTimeoutError says so and has the
    last network failure as its cause."""
    emu = await start_emulator(analysis_delay=60)
    policy = PollPolicy(interval=0.01, max_interval=0.05, max_outage=None)
    async with session_for(emu, poll_policy=policy, retry_policy=quick(0)) as guru:
        video_id = await guru.upload_video(video_file(), activity="squat")
        await emu.close()
        with pytest.raises(AnalysisTimeoutError) as info:
            await guru.await_analysis(video_id, timeout=0.3)
    assert info.value.video_id == video_id
    assert "every poll of the last" in str(info.value)
    assert "Cannot connect" in str(info.value)
    assert isinstance(info.value.__cause__, GuruConnectionError)


def test_max_outage_must_be_positive_or_none() -> None:
    """A max_outage of 0 or less is refused with a message naming it."""
    with pytest.raises(ValueError, match="max_outage"):
        PollPolicy(max_outage=0)
    assert PollPolicy().max_outage == 60.0
    assert PollPolicy(max_outage=None).max_outage is None


# -- item 11: the retry budget pays only for retries that happen --------------------------------


async def test_a_maintenance_window_longer_than_the_deadline_leaves_the_budget_whole(
    emulator: GuruEmulator, make_session: MakeSession, video_id: str
) -> None:
    """Calls failing with a 503 whose Retry-After is past their deadline are not retried and
    cost no budget, so once the service recovers a transient 503 is still retried."""
    budget = RetryBudget(capacity=20, available=20)
    emulator.faults.add(FaultRule(route=GET_VIDEO_ROUTE, status=503, retry_after=5))
    async with make_session(
        retry_policy=quick(), retry_budget=budget, timeouts=Timeouts(total=1)
    ) as guru:
        for _ in range(10):
            with pytest.raises(ServerError) as info:
                await guru.get_video(video_id)
            assert info.value.retry_after == 5
        assert (
            emulator.requests[GET_VIDEO_ROUTE] == 10
        )  # one attempt each: the wait is past the deadline
        assert budget.available == 20
        emulator.faults.clear()
        emulator.faults.add(FaultRule(route=GET_VIDEO_ROUTE, status=503, times=1))
        video = await guru.get_video(video_id)
    assert video.status == "Pending"
    assert emulator.requests[GET_VIDEO_ROUTE] == 12
    assert budget.available == 20  # the retry's cost was given back by its success


# -- item 14: Create video is never repeated when it may have reached the service ---------------


@pytest.mark.parametrize(
    ("rule", "error", "detail"),
    [
        (FaultRule(route=CREATE_ROUTE, kind="drop"), GuruConnectionError, "disconnected"),
        (FaultRule(route=CREATE_ROUTE, kind="truncate"), GuruConnectionError, "payload"),
        (FaultRule(route=CREATE_ROUTE, kind="malformed"), ResponseDecodeError, "not JSON"),
        (FaultRule(route=CREATE_ROUTE, kind="delay", delay=0.6), GuruConnectionError, "timed out"),
        (FaultRule(route=CREATE_ROUTE, status=500), ServerError, "HTTP 500"),
        (FaultRule(route=CREATE_ROUTE, status=502), ServerError, "HTTP 502"),
        (FaultRule(route=CREATE_ROUTE, status=503), ServerError, "HTTP 503"),
        (FaultRule(route=CREATE_ROUTE, status=504), ServerError, "HTTP 504"),
    ],
    ids=["drop", "truncate", "malformed", "read-timeout", "500", "502", "503-no-hint", "504"],
)
async def test_create_is_not_retried_after_an_ambiguous_failure(
    emulator: GuruEmulator,
    make_session: MakeSession,
    rule: FaultRule,
    error: type[Exception],
    detail: str,
) -> None:
    """A failure after which the service may have created the video is raised after one
    request (never a second video), saying the video may have been created."""
    async with make_session(retry_policy=quick(), timeouts=Timeouts(read=0.3)) as guru:
        emulator.faults.add(rule)
        with pytest.raises(error) as info:
            await guru.create_video("clip.mp4", size=10, activity="squat")
    message = str(info.value)
    assert message.startswith("Create video")
    assert detail.lower() in message.lower()
    assert message.endswith(
        "; not retried, as the video may have been created (a retry could create a second one)"
    )
    assert emulator.requests[CREATE_ROUTE] == 1
    assert len(emulator.videos) <= 1


async def test_a_create_whose_answer_was_cut_short_made_exactly_one_video(
    emulator: GuruEmulator, make_session: MakeSession
) -> None:
    """When the service created the video but its answer was cut short, that one video is all
    there is: the call is not repeated into a second one."""
    emulator.faults.add(FaultRule(route=CREATE_ROUTE, kind="truncate"))
    async with make_session(retry_policy=quick()) as guru:
        with pytest.raises(GuruConnectionError) as info:
            await guru.create_video("clip.mp4", size=10, activity="squat")
    assert len(emulator.videos) == 1  # 5 before the fix: one per attempt
    assert emulator.requests[CREATE_ROUTE] == 1
    assert "may have been created" in str(info.value)


@pytest.mark.parametrize(
    "rule",
    [
        FaultRule(route=CREATE_ROUTE, status=429, times=2),
        FaultRule(route=CREATE_ROUTE, status=429, retry_after=0.01, times=2),
        FaultRule(route=CREATE_ROUTE, status=503, retry_after=0.01, times=2),
        FaultRule(route=CREATE_ROUTE, status=408, times=2),
    ],
    ids=["429", "429-retry-after", "503-retry-after", "408"],
)
async def test_create_is_retried_when_the_service_asks_for_it(
    emulator: GuruEmulator, make_session: MakeSession, rule: FaultRule
) -> None:
    """An answer by which the service did not act and asks for a retry (429, 408, 503 with
    Retry-After) is retried, and the call makes exactly one video."""
    emulator.faults.add(rule)
    async with make_session(retry_policy=quick()) as guru:
        created = await guru.create_video("clip.mp4", size=10, activity="squat")
    assert list(emulator.videos) == [created.id]
    assert emulator.requests[CREATE_ROUTE] == 3


async def test_create_is_retried_when_the_request_surely_was_not_sent(
    start_emulator: StartEmulator,
    session_for: SessionFor,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Connection refused (the API restarting) is retried until the API is back, and the call
    makes exactly one video."""
    caplog.set_level(logging.DEBUG, logger="guru_async")
    emu = await start_emulator(port=free_port(), storage_port=free_port())
    # Up to 40 retries 0.05-0.2 s apart: seconds for the restart below, within the budget.
    policy = RetryPolicy(max_retries=40, wait_initial=0.05, wait_max=0.2)
    async with session_for(emu, retry_policy=policy) as guru:
        with pytest.raises(NotFoundError):
            await guru.get_video("no-such-video")  # fetches the token before the outage
        await emu.close()

        def refused() -> int:
            return sum("/videos -> error" in r.getMessage() for r in caplog.records)

        creating = asyncio.create_task(guru.create_video("clip.mp4", size=10, activity="squat"))
        await wait_until(lambda: refused() >= 2)
        await emu.start()
        created = await creating
    assert list(emu.videos) == [created.id]
    assert emu.requests[CREATE_ROUTE] == 1
    assert refused() >= 2
