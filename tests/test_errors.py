"""Errors: bad input fails before sending, and statuses map to typed errors. (Secrets in errors:
test_security.py; broken responses, retries and closing: test_reliability.py.)"""

from __future__ import annotations

import io
import pickle
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import guru_async
import guru_async.fleet
from guru_async import (
    Analysis,
    AnalysisStatus,
    AnalysisTimeoutError,
    APIError,
    AuthenticationError,
    BadRequestError,
    GuruConnectionError,
    GuruError,
    GuruSession,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ResponseDecodeError,
    ServerError,
    SessionClosedError,
    Unvalidated,
    UploadError,
)
from guru_async.testing import (
    ANALYSIS_ROUTE,
    CREATE_ROUTE,
    GET_VIDEO_ROUTE,
    FaultRule,
    GuruEmulator,
)
from tests.helpers import total_requests

SOME_ID = "0b8e4c1e-0000-4000-8000-000000000000"

MakeSession = Callable[..., GuruSession]
VideoFile = Callable[..., Path]
Call = Callable[[GuruSession, Path], Awaitable[object]]

BAD_CALLS: list[tuple[str, Call, type[Exception], str]] = [
    (
        "unknown activity",
        lambda g, d: g.create_video("x.mp4", size=1, activity="squats"),
        ValueError,
        r"unknown activity 'squats'; accepted values: .*bench_press.*squat",
    ),
    (
        "activity outside its domain",
        lambda g, d: g.create_video("x.mp4", size=1, domain="running", activity="squat"),
        ValueError,
        r"'squat' belongs to domain 'weightlifting', not 'running'",
    ),
    (
        "unknown domain",
        lambda g, d: g.create_video("x.mp4", size=1, domain="cardio"),
        ValueError,
        r"unknown domain 'cardio'; accepted values: calisthenics, .*weightlifting",
    ),
    (
        "negative rep count",
        lambda g, d: g.create_video("x.mp4", size=1, rep_count=-1),
        ValueError,
        r"rep_count must be between 0 and",
    ),
    (
        "huge rep count",
        lambda g, d: g.create_video("x.mp4", size=1, rep_count=10**9),
        ValueError,
        r"rep_count must be between 0 and",
    ),
    (
        "bool rep count",
        lambda g, d: g.create_video("x.mp4", size=1, rep_count=True),
        TypeError,
        r"rep_count must be an int",
    ),
    (
        "negative size",
        lambda g, d: g.create_video("x.mp4", size=-5),
        ValueError,
        r"size must be >= 0",
    ),
    (
        "missing file to upload",
        lambda g, d: g.upload_video(d / "missing.mp4", activity="squat"),
        FileNotFoundError,
        r"missing\.mp4",
    ),
    (
        "missing file to create from",
        lambda g, d: g.create_video(d / "missing.mp4"),
        FileNotFoundError,
        r"missing\.mp4",
    ),
    (
        "missing file to analyze",
        lambda g, d: g.analyze(d / "missing.mp4"),
        FileNotFoundError,
        r"missing\.mp4",
    ),
    (
        "folder to upload",
        lambda g, d: g.upload_video(d),
        IsADirectoryError,
        r"is a folder",
    ),
    (
        "bad include value",
        lambda g, d: g.get_video(SOME_ID, include=["j2p", "skeleton"]),
        ValueError,
        r"\['skeleton'\]; accepted values: j2p, analysis, objects",
    ),
    (
        "path-like video id",
        lambda g, d: g.get_analysis("../x"),
        ValueError,
        r"invalid video_id",
    ),
    (
        "empty video id",
        lambda g, d: g.get_video(""),
        ValueError,
        r"invalid video_id",
    ),
    (
        "video id with a slash in await_analysis",
        lambda g, d: g.await_analysis("a/b", timeout=1),
        ValueError,
        r"invalid video_id",
    ),
    (
        "video id with a slash in update",
        lambda g, d: g.update_video("x/../y", rep_count=1),
        ValueError,
        r"invalid video_id",
    ),
    (
        "unknown activity in update",
        lambda g, d: g.update_video(SOME_ID, activity="yoga"),
        ValueError,
        r"unknown activity 'yoga'",
    ),
    (
        "unknown activity with a URL source (not fetched first)",
        lambda g, d: g.upload_video(str(g.base_url.with_path("/clip.mp4")), activity="yoga"),
        ValueError,
        r"unknown activity 'yoga'",
    ),
]


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [pytest.param(call, error, match, id=name) for name, call, error, match in BAD_CALLS],
)
async def test_bad_input_fails_before_anything_is_sent(
    emulator: GuruEmulator,
    guru: GuruSession,
    tmp_path: Path,
    call: Call,
    error: type[Exception],
    match: str,
) -> None:
    """Each bad argument raises its built-in error, naming what is accepted, before any request."""
    with pytest.raises(error, match=match):
        await call(guru, tmp_path)
    assert total_requests(emulator) == 0
    assert emulator.token_requests == 0


async def test_unvalidated_value_is_sent_as_given(
    emulator: GuruEmulator, guru: GuruSession
) -> None:
    """Unvalidated("handstand") is sent as given; the server's 400 comes back as BadRequestError."""
    with pytest.raises(BadRequestError) as caught:
        await guru.create_video(
            "x.mp4", size=1, domain="calisthenics", activity=Unvalidated("handstand")
        )
    (sent,) = [r for r in emulator.recorded if r.route == CREATE_ROUTE]
    assert sent.json == {
        "filename": "x.mp4",
        "size": 1,
        "domain": "calisthenics",
        "activity": "handstand",
    }
    assert caught.value.status == 400
    assert isinstance(caught.value.body, dict)
    message = caught.value.body["message"]
    assert "'activity' must be one of" in message
    assert message in str(caught.value)
    assert emulator.requests[CREATE_ROUTE] == 1  # a 400 is not retried


@pytest.mark.parametrize(
    ("status", "error", "attempts"),
    [
        (400, BadRequestError, 1),
        (422, BadRequestError, 1),
        (403, PermissionDeniedError, 1),
        (404, NotFoundError, 1),
        (500, ServerError, 2),
        (502, ServerError, 2),
        (503, ServerError, 2),
    ],
)
async def test_status_maps_to_its_error(
    emulator: GuruEmulator,
    make_session: MakeSession,
    status: int,
    error: type[APIError],
    attempts: int,
) -> None:
    """Each error status raises its APIError subclass; only 5xx are retried (max_retries=1)."""
    emulator.faults.add(FaultRule(route=ANALYSIS_ROUTE, kind="status", status=status))
    async with make_session(max_retries=1) as guru:
        with pytest.raises(error) as caught:
            await guru.get_analysis(SOME_ID)
    assert type(caught.value) is error
    assert caught.value.status == status
    assert caught.value.body == {"message": "Injected fault"}
    assert f"HTTP {status}" in str(caught.value)
    assert "Injected fault" in str(caught.value)
    assert emulator.requests[ANALYSIS_ROUTE] == attempts


async def test_rate_limit_honours_retry_after(
    emulator: GuruEmulator, make_session: MakeSession
) -> None:
    """429 is retried after Retry-After, then raised as RateLimitError with retry_after parsed."""
    emulator.faults.add(
        FaultRule(route=ANALYSIS_ROUTE, kind="status", status=429, retry_after=0.05, times=10)
    )
    async with make_session(max_retries=1) as guru:
        await guru.create_video("x.mp4", size=1)  # fetch the token outside the timing
        started = time.monotonic()
        with pytest.raises(RateLimitError) as caught:
            await guru.get_analysis(SOME_ID)
        elapsed = time.monotonic() - started
    assert caught.value.status == 429
    assert caught.value.retry_after == pytest.approx(0.05)
    assert emulator.requests[ANALYSIS_ROUTE] == 2
    assert 0.05 <= elapsed < 1.0


async def test_persistent_401_raises_after_one_refresh(
    emulator: GuruEmulator, guru: GuruSession
) -> None:
    """A 401 that survives one token refresh raises AuthenticationError: one refresh, no storm."""
    emulator.faults.add(FaultRule(route=ANALYSIS_ROUTE, kind="status", status=401))
    with pytest.raises(AuthenticationError) as caught:
        await guru.get_analysis(SOME_ID)
    assert caught.value.status == 401
    assert emulator.token_requests == 2
    assert emulator.requests[ANALYSIS_ROUTE] == 2


# One instance of every public error, with every attribute a caller reads set.
PICKLED_ERRORS: list[GuruError] = [
    GuruError("base"),
    APIError("teapot", status=418, body="short and stout"),
    BadRequestError("bad", status=422, body={"message": "repCount"}),
    AuthenticationError("who", status=401, body={"error": "invalid_client"}),
    PermissionDeniedError("no", status=403, body=""),
    NotFoundError("gone", status=404, body={"message": "Video not found"}),
    RateLimitError("slow down", status=429, body=None, retry_after=2.5),
    ServerError("down", status=503, body="<html>", retry_after=None),
    UploadError("refused", status=403, code="AccessDenied", retry_after=1.0),
    guru_async.SourceError("source", status=404, url="https://example.com/a.mp4"),
    AnalysisTimeoutError(
        "late",
        video_id=SOME_ID,
        last=Analysis(status=AnalysisStatus.PENDING),
    ),
    ResponseDecodeError("not json", status=200, body="<html", not_json=True),
    GuruConnectionError("reset", video_id=SOME_ID),
    SessionClosedError("closed"),
    guru_async.JournalError("journal", path="batch.db"),
    guru_async.fleet.FleetError("fleet"),
    guru_async.fleet.FleetItemError("KeyError: 'x'", type_name="KeyError"),
    guru_async.fleet.FleetJobError("gave up", status="aborted"),
    guru_async.fleet.RedisUnavailableError("Redis at localhost:6379: refused"),
]


def _round_trip(error: GuruError) -> Any:
    return pickle.loads(pickle.dumps(error))  # noqa: S301 - the bytes were made just above


def test_every_public_error_survives_pickling() -> None:
    """Every public error crosses a process boundary (multiprocessing, fleet) with its type,
    message and attributes intact, keyword-only constructors included."""
    public = {
        obj
        for module in (guru_async, guru_async.fleet)
        for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, GuruError)
    }
    assert public == {type(error) for error in PICKLED_ERRORS}  # a new error needs a case here
    for error in PICKLED_ERRORS:
        copy = _round_trip(error)
        assert type(copy) is type(error)
        assert str(copy) == str(error)
        assert copy.args == error.args
        assert vars(copy) == vars(error)
    timeout = _round_trip(PICKLED_ERRORS[10])
    assert isinstance(timeout, TimeoutError)
    assert timeout.last is not None
    assert timeout.last.status == "Pending"


def _fleet(**kwargs: Any) -> object:
    return guru_async.fleet.Fleet("redis://127.0.0.1:1/0", **kwargs)


def _worker(**kwargs: Any) -> object:
    session = GuruSession(access_token="t", base_url="http://127.0.0.1:1")
    return guru_async.fleet.FleetWorker("redis://127.0.0.1:1/0", session=session, **kwargs)


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (
            lambda: guru_async.RetryPolicy(max_retries="3"),
            TypeError,
            "max_retries must be an int, got str",
        ),
        (
            lambda: guru_async.RetryPolicy(max_retries=True),
            TypeError,
            "max_retries must be an int, got bool",
        ),
        (
            lambda: guru_async.StreamSource(io.BytesIO(), size=2.0),
            TypeError,
            "size must be an int number of bytes, got float",
        ),
        (
            lambda: guru_async.StreamSource(io.BytesIO(), size=-1),
            ValueError,
            "size must be >= 0 bytes, got -1",
        ),
        (lambda: _fleet(heartbeat=0), ValueError, "heartbeat must be >= 1 seconds, got 0"),
        (lambda: _fleet(attempts="2"), TypeError, "attempts must be an int, got str"),
        (
            lambda: _worker(sweep_interval=0.5),
            TypeError,
            "sweep_interval must be an int number of seconds, got float",
        ),
        (lambda: _worker(concurrency=0), ValueError, "concurrency must be >= 1, got 0"),
    ],
)
def test_integer_arguments_are_checked_alike(
    make: Callable[[], object], error: type[Exception], message: str
) -> None:
    """Every integer argument refuses another type (a bool too) with TypeError and a value out
    of bounds with ValueError, each message naming the argument and what it got."""
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        make()


async def test_per_call_max_retries_is_checked_like_the_session_one(
    emulator: GuruEmulator, guru: GuruSession
) -> None:
    """A call's max_retries is checked like the session's: TypeError for a str, ValueError
    below 0, before anything is sent."""
    with pytest.raises(TypeError, match=r"^max_retries must be an int, got str$"):
        await guru.get_video(SOME_ID, max_retries="2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^max_retries must be >= 0, got -1$"):
        await guru.get_video(SOME_ID, max_retries=-1)
    assert emulator.requests[GET_VIDEO_ROUTE] == 0


async def test_await_and_batch_say_an_analysis_timeout_the_same_way(
    start_emulator: Callable[..., Awaitable[GuruEmulator]],
    session_for: Callable[..., GuruSession],
    video_file: VideoFile,
) -> None:
    """An analysis that outlives its timeout gives one message whether awaited or batched:
    the seconds waited, the last status seen, and how to keep waiting."""
    emu = await start_emulator(analysis_delay=60)
    async with session_for(emu) as guru:
        video_id = await guru.upload_video(video_file(), activity="squat")
        with pytest.raises(AnalysisTimeoutError) as awaited:
            await guru.await_analysis(video_id, timeout=0.05)
        results = [r async for r in guru.batch_upload([video_file()], timeout=0.05)]
    assert str(awaited.value) == (
        f"analysis of video {video_id} not finished after 0.05 s (last status: Pending); "
        f"the video is safe: await_analysis({video_id!r}) again to keep waiting"
    )
    [result] = results
    batched = result.error
    assert isinstance(batched, AnalysisTimeoutError)
    assert batched.video_id == result.video_id
    assert batched.last is not None
    assert batched.last.status == "Pending"
    assert str(batched) == (
        f"analysis of video {result.video_id} not finished after 0.05 s (last status: "
        f"Pending); the video is safe: await_analysis({result.video_id!r}) again, or rerun "
        "the batch with its journal"
    )
