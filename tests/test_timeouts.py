"""Timeouts timed without a loop timer per request (guru_async._timers): the read timeout of the
session's own pool (LazyReadTimeout) and every attempt's total (DeadlineWatch) keep the rules
of aiohttp's own timers, over real sockets against the emulator and a crafted server."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.client_proto import ResponseHandler
from aiohttp.helpers import TimeoutHandle

from guru_async import (
    AnalysisStatus,
    GuruConnectionError,
    GuruSession,
    MemoryTokenStore,
    RequestDetails,
    RetryDetails,
    Timeouts,
)
from guru_async._timers import DeadlineWatch, reads_lazily
from guru_async.testing import ANALYSIS_ROUTE, FaultRule, GuruEmulator
from tests.crafted_server import CraftedServer
from tests.helpers import wait_until

MakeSession = Callable[..., GuruSession]
VIDEO = "0b8e4c1e-0000-4000-8000-00000000a11a"
BODY = json.dumps(
    {
        "status": "Complete",
        "domain": "weightlifting",
        "activity": "squat",
        "reps": [{"startTimestampMs": i * 1000, "analyses": []} for i in range(40)],
    }
).encode()


@pytest.fixture
async def video_id(emulator: GuruEmulator, make_session: MakeSession) -> str:
    """A created (not uploaded) video, with the emulator's counters reset afterwards."""
    async with make_session() as setup:
        created = await setup.create_video("clip.mp4", size=10, activity="squat")
    emulator.reset_counters()
    return created.id


@pytest.fixture
async def crafted() -> AsyncIterator[CraftedServer]:
    """A crafted server, closed after the test."""
    server = await CraftedServer().start()
    try:
        yield server
    finally:
        await server.close()


def crafted_session(server: CraftedServer, **options: Any) -> GuruSession:
    """A session with a static token against ``server``, without retries."""
    return GuruSession(
        access_token="t",
        base_url=server.url,
        token_store=MemoryTokenStore(),
        max_retries=0,
        **options,
    )


def trickled(gaps: list[float]) -> Callable[[web.Request], Any]:
    """A handler sending BODY in ``len(gaps) + 1`` pieces, sleeping each gap between them."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(BODY)
        await response.prepare(request)
        size = len(BODY) // (len(gaps) + 1) + 1
        pieces = [BODY[i : i + size] for i in range(0, len(BODY), size)]
        for piece, gap in zip(pieces, [*gaps, 0.0], strict=True):
            await response.write(piece)
            await asyncio.sleep(gap)
        return response

    return handler


class Recorder:
    """Hooks that keep what they are told."""

    def __init__(self) -> None:
        self.requests: list[RequestDetails] = []
        self.retries: list[RetryDetails] = []

    def on_request(self, details: RequestDetails) -> None:
        self.requests.append(details)

    def on_retry(self, details: RetryDetails) -> None:
        self.retries.append(details)


async def test_calls_arm_no_loop_timer_per_request(
    make_session: MakeSession, video_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty calls on a warm session arm no new client timer (aiohttp's own timers armed
    three per call: the total, and sock_read on sending and again on the answer's bytes)."""
    async with make_session() as guru:
        await guru.get_analysis(video_id)  # token and connection ready, timers armed once
        loop = asyncio.get_running_loop()
        armed: list[object] = []
        call_at = loop.call_at

        def counting(when: float, callback: Any, *args: Any, context: Any = None) -> Any:
            owner = getattr(callback, "__self__", None)
            if isinstance(owner, (ResponseHandler, TimeoutHandle, DeadlineWatch)):
                armed.append(owner)  # the client's timers (the emulator's server has its own)
            return call_at(when, callback, *args, context=context)

        monkeypatch.setattr(loop, "call_at", counting)
        for _ in range(20):
            analysis = await guru.get_analysis(video_id)
        assert analysis.video_id == video_id
        assert len(armed) == 0
        assert reads_lazily(guru._transport.http())


async def test_a_response_trickling_for_longer_than_read_is_not_timed_out(
    crafted: CraftedServer,
) -> None:
    """An answer whose pieces come 0.1 s apart is read whole under a 0.25 s read timeout,
    though it takes 0.6 s: only silence counts, as with aiohttp's timer."""
    crafted.handle(trickled([0.1] * 6))
    async with crafted_session(crafted, timeouts=Timeouts(read=0.25)) as guru:
        started = time.monotonic()
        analysis = await guru.get_analysis(VIDEO)
        elapsed = time.monotonic() - started
    assert elapsed >= 0.6
    assert analysis.status == AnalysisStatus.COMPLETE
    assert len(analysis.reps) == 40
    assert analysis.video_id == VIDEO


async def test_an_answer_silent_mid_body_for_read_times_out(crafted: CraftedServer) -> None:
    """An answer that stops after its first piece fails "timed out" once it has been silent
    for the read timeout, not when the server would have gone on."""
    crafted.handle(trickled([1.0]))
    async with crafted_session(crafted, timeouts=Timeouts(read=0.25)) as guru:
        started = time.monotonic()
        with pytest.raises(GuruConnectionError, match="timed out") as info:
            await guru.get_analysis(VIDEO)
        elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 0.9
    assert f"Get analysis of video {VIDEO}" in str(info.value)


async def test_the_total_ends_an_attempt_that_outlasts_it(
    emulator: GuruEmulator, make_session: MakeSession, video_id: str
) -> None:
    """An attempt still waiting when the call's total runs out fails "timed out" at the total
    (the read timeout being longer), the hooks hear it, and the task is left uncancelled: the
    next call succeeds."""
    hook = Recorder()
    timeouts = Timeouts(read=5.0, total=0.4)
    async with make_session(hooks=[hook], timeouts=timeouts, max_retries=0) as guru:
        await guru.get_analysis(video_id)
        emulator.faults.add(FaultRule(route=ANALYSIS_ROUTE, kind="delay", delay=1.0, times=1))
        started = time.monotonic()
        with pytest.raises(GuruConnectionError, match="timed out"):
            await guru.get_analysis(video_id)
        elapsed = time.monotonic() - started
        if sys.version_info >= (3, 11):
            task = asyncio.current_task()
            assert task is not None
            assert task.cancelling() == 0
        analysis = await guru.get_analysis(video_id)
    assert 0.4 <= elapsed < 0.9
    assert analysis.video_id == video_id
    timed_out = hook.requests[-2]
    assert (timed_out.route, timed_out.status, timed_out.attempt) == (ANALYSIS_ROUTE, None, 1)
    assert "timed out" in str(timed_out.error)
    assert hook.requests[-1].status == 200


async def test_a_call_cancelled_from_outside_is_cancelled_not_timed_out(
    emulator: GuruEmulator, make_session: MakeSession, video_id: str
) -> None:
    """Cancelling a call in flight raises CancelledError in it (never a timeout error), and
    the session's later calls are unaffected."""
    async with make_session(timeouts=Timeouts(total=5.0)) as guru:
        await guru.get_analysis(video_id)
        emulator.faults.add(FaultRule(route=ANALYSIS_ROUTE, kind="delay", delay=1.0, times=1))
        task = asyncio.create_task(guru.get_analysis(video_id))
        await wait_until(lambda: emulator.requests[ANALYSIS_ROUTE] == 2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        analysis = await guru.get_analysis(video_id)
    assert analysis.video_id == video_id


async def test_a_callers_own_pool_keeps_aiohttps_read_timer(
    emulator: GuruEmulator, make_session: MakeSession, video_id: str
) -> None:
    """A session on a caller's aiohttp.ClientSession leaves its connections as they are (the
    read timeout is aiohttp's own there), and a stalled answer still fails "timed out"."""
    http = aiohttp.ClientSession()
    timeouts = Timeouts(read=0.2)
    async with http, make_session(http_session=http, timeouts=timeouts, max_retries=0) as guru:
        await guru.get_analysis(video_id)
        emulator.faults.add(FaultRule(route=ANALYSIS_ROUTE, kind="delay", delay=1.0, times=1))
        started = time.monotonic()
        with pytest.raises(GuruConnectionError, match="timed out"):
            await guru.get_analysis(video_id)
        elapsed = time.monotonic() - started
        assert not reads_lazily(http)
    assert elapsed < 0.9
