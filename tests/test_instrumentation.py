"""Instrumentation hooks: on_request and on_retry with typed details, LoggingHook as the default,
tracing scopes, and hooks that fail without breaking calls."""

from __future__ import annotations

import contextvars
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

from guru_async import (
    GuruSession,
    LoggingHook,
    NotFoundError,
    RequestDetails,
    RetryDetails,
    RetryPolicy,
    ServerError,
    Timeouts,
    TraceScope,
    TracingHook,
)
from guru_async.testing import (
    ANALYSIS_ROUTE,
    CREATE_ROUTE,
    TOKEN_ROUTE,
    UPLOAD_ROUTE,
    FaultRule,
    GuruEmulator,
)
from tests.helpers import total_requests

MakeSession = Callable[..., GuruSession]
VideoFile = Callable[..., Path]
QUICK = RetryPolicy(max_retries=3, wait_initial=0.01, wait_max=0.02)


class Recorder:
    """A hook that keeps every event it is told of."""

    def __init__(self) -> None:
        self.requests: list[RequestDetails] = []
        self.retries: list[RetryDetails] = []

    def on_request(self, details: RequestDetails) -> None:
        self.requests.append(details)

    def on_retry(self, details: RetryDetails) -> None:
        self.retries.append(details)


async def test_on_request_sees_every_attempt_with_its_route_status_and_video(
    emulator: GuruEmulator, make_session: MakeSession, video_file: VideoFile
) -> None:
    """on_request gets one RequestDetails per attempt of every request (token, API, storage):
    route templates the emulator counts under, the status (None for a timed-out attempt),
    the attempt number, the video id, the error and a positive elapsed time."""
    hook = Recorder()
    emulator.faults.add(FaultRule(route=ANALYSIS_ROUTE, kind="status", status=503, times=1))
    emulator.faults.add(FaultRule(route=ANALYSIS_ROUTE, kind="delay", delay=0.5, times=1))
    timeouts = Timeouts(read=0.1)
    async with make_session(hooks=[hook], retry_policy=QUICK, timeouts=timeouts) as guru:
        analysis = await guru.analyze(video_file(), activity="squat")
    assert analysis.status == "Complete"

    assert Counter(d.route for d in hook.requests) == emulator.requests
    token, create, upload, *polls = hook.requests
    assert (token.route, token.method, token.status, token.video_id) == (
        TOKEN_ROUTE,
        "POST",
        200,
        None,
    )
    assert (create.route, create.status, create.video_id, create.error) == (
        CREATE_ROUTE,
        200,
        None,
        None,
    )
    video_id = upload.video_id
    assert video_id is not None
    assert video_id in emulator.videos
    assert (upload.route, upload.status, upload.attempt) == (UPLOAD_ROUTE, 204, 1)
    assert "?" not in upload.path
    assert upload.host == "127.0.0.1"
    first, second, *_ = polls
    assert (first.status, first.attempt, type(first.error)) == (503, 1, ServerError)
    assert (second.status, second.attempt) == (None, 2)
    assert "Get analysis" in str(second.error)
    assert all(p.route == ANALYSIS_ROUTE and p.video_id == video_id for p in polls)
    assert (polls[-1].status, polls[-1].error) == (200, None)
    assert all(d.elapsed > 0 for d in hook.requests)
    assert polls[0].path == f"/videos/{video_id}/analysis"


async def test_on_retry_says_what_is_retried_after_which_attempt_and_how_long_it_waits(
    emulator: GuruEmulator, make_session: MakeSession
) -> None:
    """on_retry gets a RetryDetails before each backoff: the call, its route, the failed
    attempt, the exact wait a Retry-After asked for and the error that caused it."""
    hook = Recorder()
    emulator.faults.add(
        FaultRule(route=ANALYSIS_ROUTE, kind="status", status=503, retry_after=0.05, times=2)
    )
    async with make_session(hooks=[hook], retry_policy=QUICK) as guru:
        created = await guru.create_video("clip.mp4", size=10, activity="squat")
        await guru.get_analysis(created.id)
    assert [(r.attempt, r.wait, r.route, r.video_id) for r in hook.retries] == [
        (1, 0.05, ANALYSIS_ROUTE, created.id),
        (2, 0.05, ANALYSIS_ROUTE, created.id),
    ]
    assert all(r.what == f"Get analysis of video {created.id}" for r in hook.retries)
    assert all(isinstance(r.cause, ServerError) and r.cause.status == 503 for r in hook.retries)
    # Each retry comes between the failed attempt and the next one.
    polls = [d for d in hook.requests if d.route == ANALYSIS_ROUTE]
    assert [(d.attempt, d.status) for d in polls] == [(1, 503), (2, 503), (3, 200)]


async def test_default_logging_hook_logs_with_structured_extra_fields(
    emulator: GuruEmulator, make_session: MakeSession, caplog: pytest.LogCaptureFixture
) -> None:
    """Without hooks=, each request logs a DEBUG line and each retry an INFO line, carrying
    the facts as extra fields (guru_async.route, .status, .attempt, .video_id, .wait, ...)."""
    caplog.set_level(logging.DEBUG, logger="guru_async")
    emulator.faults.add(FaultRule(route=ANALYSIS_ROUTE, kind="status", status=503, times=1))
    async with make_session(retry_policy=QUICK) as guru:
        created = await guru.create_video("clip.mp4", size=10, activity="squat")
        await guru.get_analysis(created.id)
    polls = [r for r in caplog.records if getattr(r, "guru_async.route", "") == ANALYSIS_ROUTE]
    debug = [r for r in polls if r.levelno == logging.DEBUG]
    assert [getattr(r, "guru_async.status") for r in debug] == [503, 200]
    assert [getattr(r, "guru_async.attempt") for r in debug] == [1, 2]
    assert all(getattr(r, "guru_async.video_id") == created.id for r in debug)
    assert all(getattr(r, "guru_async.method") == "GET" for r in debug)
    assert all(getattr(r, "guru_async.elapsed") > 0 for r in debug)
    assert debug[0].getMessage().startswith(f"GET 127.0.0.1/videos/{created.id}/analysis -> 503")
    (retry,) = [r for r in polls if r.levelno == logging.INFO]
    assert retry.getMessage().startswith(f"Get analysis of video {created.id}: retrying in")
    assert getattr(retry, "guru_async.cause") == "ServerError"
    assert getattr(retry, "guru_async.attempt") == 1
    assert 0 <= getattr(retry, "guru_async.wait") <= 0.02


_LOG_LINE = re.compile(r"^(GET|POST|PUT) 127\.0\.0\.1(/\S*) -> (\d{3}) in [\d.]+ ms$")


async def test_default_logging_hook_logs_one_line_per_request(
    emulator: GuruEmulator,
    guru: GuruSession,
    video_file: VideoFile,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """At DEBUG, each request (token, API and storage, retries included) logs its method, path
    and status once. (That no secret reaches a log: test_security.py.)"""
    caplog.set_level(logging.DEBUG, logger="guru_async")
    emulator.faults.add(FaultRule(route=UPLOAD_ROUTE, kind="status", status=503, times=1))
    path = video_file()
    video_id = await guru.upload_video(path, activity="squat")
    await guru.await_analysis(video_id, timeout=10)
    video = await guru.get_video(video_id, include=["analysis"])
    assert video.uri is not None

    lines: Counter[tuple[str, str, str]] = Counter()
    for record in caplog.records:
        if record.name == "guru_async" and record.levelno == logging.DEBUG:
            match = _LOG_LINE.match(record.getMessage())
            assert match, record.getMessage()
            lines[(match[1], match[2], match[3])] += 1
    requests: Counter[tuple[str, str]] = Counter((r.method, r.path) for r in emulator.recorded)
    assert sum(lines.values()) == total_requests(emulator)
    assert Counter((method, path) for method, path, _ in lines.elements()) == requests
    assert lines[("POST", "/guru-videos", "503")] == 1
    assert lines[("POST", "/guru-videos", "204")] == 1
    assert lines[("POST", "/oauth2/token", "200")] == 1
    assert any(r.levelno == logging.INFO and "retrying" in r.getMessage() for r in caplog.records)


async def test_hooks_replace_the_logging_hook(
    emulator: GuruEmulator, make_session: MakeSession, caplog: pytest.LogCaptureFixture
) -> None:
    """hooks=[...] replaces the default: without a LoggingHook nothing is logged, and a
    LoggingHook with its own logger logs there."""
    caplog.set_level(logging.DEBUG)
    own = logging.getLogger("my_app.guru")
    async with make_session(hooks=[]) as guru:
        await guru.create_video("clip.mp4", size=10, activity="squat")
    assert not [r for r in caplog.records if r.name == "guru_async"]
    async with make_session(hooks=[LoggingHook(own), Recorder()]) as guru:
        await guru.create_video("clip.mp4", size=10, activity="squat")
    assert [getattr(r, "guru_async.route") for r in caplog.records if r.name == own.name] == [
        TOKEN_ROUTE,
        CREATE_ROUTE,
    ]


class Broken:
    """A hook whose every method raises."""

    def on_request(self, details: RequestDetails) -> None:
        raise RuntimeError("request hook bug")

    def on_retry(self, details: RetryDetails) -> None:
        raise RuntimeError("retry hook bug")

    def trace(self, scope: TraceScope) -> AbstractContextManager[object]:
        raise RuntimeError("trace hook bug")


async def test_a_failing_hook_never_breaks_the_call_and_is_logged_once(
    emulator: GuruEmulator,
    make_session: MakeSession,
    video_file: VideoFile,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A hook that raises in on_request, on_retry and trace leaves every call working, the
    other hooks still told, and says so once at WARNING."""
    caplog.set_level(logging.DEBUG, logger="guru_async")
    hook = Recorder()
    emulator.faults.add(FaultRule(route=ANALYSIS_ROUTE, kind="status", status=503, times=1))
    async with make_session(hooks=[Broken(), hook], retry_policy=QUICK) as guru:
        analysis = await guru.analyze(video_file(), activity="squat")
    assert analysis.status == "Complete"
    assert len(hook.retries) == 1
    assert len(hook.requests) == sum(emulator.requests.values())
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "instrumentation hook" in warnings[0].getMessage()
    assert "hook bug" in warnings[0].getMessage()


def test_hooks_must_be_a_sequence_of_hooks() -> None:
    """A hook without on_request/on_retry, or a bare hook instead of a list, is a TypeError
    naming what is missing, raised before anything is sent."""
    with pytest.raises(TypeError, match="on_retry"):
        GuruSession(access_token="t", hooks=[object()])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="sequence of hooks"):
        GuruSession(access_token="t", hooks=Recorder())  # type: ignore[arg-type]


_CURRENT: contextvars.ContextVar[str] = contextvars.ContextVar("scope", default="")


class Tracer(Recorder):
    """A TracingHook that records its scopes' nesting, and the scope current at each event."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []
        self.inside: list[tuple[str, str]] = []

    @contextmanager
    def trace(self, scope: TraceScope) -> Iterator[None]:
        label = f"{scope.kind}:{scope.name}"
        token = _CURRENT.set(f"{_CURRENT.get()}/{label}")
        self.events.append(f"enter {label}")
        try:
            yield
        except BaseException as exc:
            self.events.append(f"error {label} {type(exc).__name__}")
            raise
        finally:
            self.events.append(f"exit {label}")
            _CURRENT.reset(token)

    def on_request(self, details: RequestDetails) -> None:
        super().on_request(details)
        self.inside.append((details.route, _CURRENT.get()))


async def test_tracing_hook_wraps_each_call_and_each_video(
    emulator: GuruEmulator, make_session: MakeSession, video_file: VideoFile
) -> None:
    """A hook with trace() wraps analyze in a video scope and each call (retries included) in
    a call scope inside it; on_request runs within its call's scope; a failed call's scope
    exits with its error."""
    tracer = Tracer()
    assert isinstance(tracer, TracingHook)
    async with make_session(hooks=[tracer], retry_policy=QUICK) as guru:
        await guru.analyze(video_file(), activity="squat")
        with pytest.raises(NotFoundError):
            await guru.get_analysis("no-such-video")
    video, calls = "video:analyze", "call:"
    assert tracer.events[0] == f"enter {video}"
    assert tracer.events[1:3] == [f"enter {calls}{CREATE_ROUTE}", f"enter {calls}{TOKEN_ROUTE}"]
    assert tracer.events[tracer.events.index(f"exit {video}") - 1] == (
        f"exit {calls}{ANALYSIS_ROUTE}"
    )
    assert tracer.events[-2:] == [
        f"error {calls}{ANALYSIS_ROUTE} NotFoundError",
        f"exit {calls}{ANALYSIS_ROUTE}",
    ]
    # The token is fetched inside the first call that needed it.
    assert tracer.inside[:3] == [
        (TOKEN_ROUTE, f"/{video}/{calls}{CREATE_ROUTE}/{calls}{TOKEN_ROUTE}"),
        (CREATE_ROUTE, f"/{video}/{calls}{CREATE_ROUTE}"),
        (UPLOAD_ROUTE, f"/{video}/{calls}{UPLOAD_ROUTE}"),
    ]
    assert tracer.inside[-1] == (ANALYSIS_ROUTE, f"/{calls}{ANALYSIS_ROUTE}")
