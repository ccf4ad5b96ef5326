"""Errors: bad input fails before sending, and statuses map to typed errors. (Secrets in errors:
test_security.py; broken responses, retries and closing: test_reliability.py.)"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from guru_async import (
    APIError,
    AuthenticationError,
    BadRequestError,
    GuruSession,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    Unvalidated,
)
from guru_async.testing import (
    ANALYSIS_ROUTE,
    CREATE_ROUTE,
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
