"""guru_async.otel: spans from a real TracerProvider (in-memory exporter) against the emulator."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from guru_async import GuruSession, NotFoundError, RetryPolicy
from guru_async.otel import OpenTelemetryHooks
from guru_async.testing import (
    ANALYSIS_ROUTE,
    CREATE_ROUTE,
    TOKEN_ROUTE,
    UPLOAD_ROUTE,
    FaultRule,
    GuruEmulator,
)

MakeSession = Callable[..., GuruSession]
VideoFile = Callable[..., Path]
QUICK = RetryPolicy(max_retries=3, wait_initial=0.01, wait_max=0.02)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    """Finished spans, kept in memory."""
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    """A real SDK TracerProvider exporting every span to ``exporter`` as it ends."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    """The spans called ``name``, in the order they ended."""
    return [s for s in spans if s.name == name]


def scope_of(span: ReadableSpan) -> str:
    """The name of the instrumentation that made ``span``."""
    return span.instrumentation_scope.name if span.instrumentation_scope else ""


def leaks(spans: tuple[ReadableSpan, ...], secrets: set[str]) -> list[str]:
    """Every attribute or event value of ``spans`` that contains one of ``secrets``."""
    found = []
    for span in spans:
        values = [*dict(span.attributes or {}).values()]
        for event in span.events:
            values += [*dict(event.attributes or {}).values()]
        for value in values:
            found += [f"{span.name}: {value}" for s in secrets if s in str(value)]
    return found


async def test_analyze_is_one_video_span_over_its_call_spans(
    emulator: GuruEmulator,
    make_session: MakeSession,
    video_file: VideoFile,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    """One analyze call is a 'guru_async analyze' span with the video id and file name, whose
    children are one CLIENT span per API call (route template as name, method, status,
    attempts, video id) with the token request inside the first call; a retry is an event."""
    emulator.faults.add(FaultRule(route=ANALYSIS_ROUTE, kind="status", status=503, times=1))
    hooks = OpenTelemetryHooks(tracer_provider=provider)
    async with make_session(hooks=[hooks], retry_policy=QUICK) as guru:
        analysis = await guru.analyze(video_file("squat.mp4"), activity="squat")
    assert analysis.status == "Complete"
    spans = exporter.get_finished_spans()
    (video,) = by_name(spans, "guru_async analyze")
    video_id = dict(video.attributes or {})["guru.video_id"]
    assert isinstance(video_id, str)
    assert video_id in emulator.videos
    assert dict(video.attributes or {}) == {
        "guru.operation": "analyze",
        "guru.filename": "squat.mp4",
        "guru.video_id": video_id,
    }
    assert video.kind is SpanKind.INTERNAL
    assert video.parent is None
    (token,) = by_name(spans, TOKEN_ROUTE)
    (create,) = by_name(spans, CREATE_ROUTE)
    (upload,) = by_name(spans, UPLOAD_ROUTE)
    polls = by_name(spans, ANALYSIS_ROUTE)
    assert len(polls) == emulator.requests[ANALYSIS_ROUTE] - 1  # one poll was retried
    assert len(spans) == 4 + len(polls)
    assert video.context is not None
    assert create.context is not None
    assert token.parent is not None
    assert token.parent.span_id == create.context.span_id
    for call in (create, upload, *polls):
        assert call.kind is SpanKind.CLIENT
        assert call.parent is not None
        assert call.parent.span_id == video.context.span_id
        assert call.context is not None
        assert call.context.trace_id == video.context.trace_id
    assert dict(create.attributes or {}) == {
        "guru.route": CREATE_ROUTE,
        "http.request.method": "POST",
        "http.response.status_code": 200,
        "guru.attempts": 1,
    }
    assert dict(upload.attributes or {}) == {
        "guru.route": UPLOAD_ROUTE,
        "http.request.method": "POST",
        "http.response.status_code": 204,
        "guru.attempts": 1,
        "guru.video_id": video_id,
    }
    first = polls[0]
    assert dict(first.attributes or {}) == {
        "guru.route": ANALYSIS_ROUTE,
        "http.request.method": "GET",
        "guru.video_id": video_id,
        "http.response.status_code": 200,
        "guru.attempts": 2,
    }
    (retry,) = first.events
    assert retry.name == "guru.retry"
    event = dict(retry.attributes or {})
    assert (event["guru.attempt"], event["error.type"]) == (1, "503")
    assert 0 <= float(event["guru.retry.wait"]) <= 0.02  # type: ignore[arg-type]
    assert all(s.status.status_code is StatusCode.UNSET for s in spans)
    created = emulator.videos[video_id]
    secrets = {emulator.client_secret, created.fields["x-amz-signature"], created.fields["policy"]}
    secrets |= {r.headers.get("Authorization", "") for r in emulator.recorded} - {""}
    assert not leaks(spans, secrets)
    assert not [s for s in spans if any("://" in str(v) for v in (s.attributes or {}).values())]


async def test_a_failed_call_is_an_error_span(
    emulator: GuruEmulator,
    make_session: MakeSession,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    """A call that fails is a span with status ERROR, error.type set to the HTTP status and the
    exception recorded as an event."""
    async with make_session(hooks=[OpenTelemetryHooks(tracer_provider=provider)]) as guru:
        with pytest.raises(NotFoundError):
            await guru.get_analysis("no-such-video")
    (span,) = by_name(exporter.get_finished_spans(), ANALYSIS_ROUTE)
    assert span.status.status_code is StatusCode.ERROR
    attributes = dict(span.attributes or {})
    assert attributes["error.type"] == "404"
    assert attributes["http.response.status_code"] == 404
    assert attributes["guru.video_id"] == "no-such-video"
    assert [e.name for e in span.events] == ["exception"]


async def test_aiohttp_instrumentation_adds_no_duplicate_span_and_no_url(
    emulator: GuruEmulator,
    make_session: MakeSession,
    video_file: VideoFile,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    """With opentelemetry-instrumentation-aiohttp-client on, the SDK's requests are still one
    span each (the instrumentation is suppressed inside call spans, so no presigned URL is
    recorded), while the app's own aiohttp requests are still traced."""
    stats_url = f"{emulator.base_url}/_emulator/stats"
    instrumentor = AioHttpClientInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        async with make_session(hooks=[OpenTelemetryHooks(tracer_provider=provider)]) as guru:
            video_id = await guru.upload_video(video_file(), activity="squat")
            await guru.await_analysis(video_id, timeout=10)
            await guru.download(video_id, video_file().with_name("out.mp4"))
        # The app's own request: still traced.
        async with aiohttp.ClientSession() as http, http.get(f"{stats_url}") as resp:
            await resp.read()
    finally:
        instrumentor.uninstrument()
    spans = exporter.get_finished_spans()
    ours = [s for s in spans if scope_of(s) == "guru_async"]
    theirs = [s for s in spans if scope_of(s) != "guru_async"]
    assert sum(emulator.requests.values()) == len(ours) - 1  # + the upload_video span
    assert len(theirs) == 1
    assert "/_emulator/stats" in json.dumps(dict(theirs[0].attributes or {}))
    assert not [s for s in ours if any("://" in str(v) for v in (s.attributes or {}).values())]


async def test_without_suppression_aiohttp_spans_nest_and_need_a_url_filter(
    emulator: GuruEmulator,
    make_session: MakeSession,
    video_file: VideoFile,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    """suppress_http_instrumentation=False lets the aiohttp instrumentation add its span per
    attempt as a child of the SDK's call span; it then records a download's presigned
    signature (X-Amz-Signature is not among the query keys it redacts) unless given a
    url_filter that drops the query, as README says."""

    async def download_spans(**instrument: Any) -> tuple[ReadableSpan, ...]:
        exporter.clear()
        instrumentor = AioHttpClientInstrumentor()
        instrumentor.instrument(tracer_provider=provider, **instrument)
        try:
            hooks = OpenTelemetryHooks(
                tracer_provider=provider, suppress_http_instrumentation=False
            )
            async with make_session(hooks=[hooks]) as guru:
                video_id = await guru.upload_video(video_file(), activity="squat")
                await guru.await_analysis(video_id, timeout=10)
                await guru.download(video_id, video_file().with_name("out.mp4"))
        finally:
            instrumentor.uninstrument()
        return exporter.get_finished_spans()

    def signature_in(spans: tuple[ReadableSpan, ...]) -> bool:
        return any("X-Amz-Signature" in json.dumps(dict(s.attributes or {})) for s in spans)

    spans = await download_spans()
    (create,) = by_name(spans, CREATE_ROUTE)
    assert create.context is not None
    parent = create.context.span_id
    children = [s for s in spans if s.parent is not None and s.parent.span_id == parent]
    assert sorted(scope_of(s) for s in children) == [
        "guru_async",  # the token request it waited for
        "opentelemetry.instrumentation.aiohttp_client",
    ]
    assert signature_in(spans)
    assert not signature_in(await download_spans(url_filter=lambda url: str(url.with_query(None))))


def test_import_guru_async_does_not_import_opentelemetry() -> None:
    """Without guru_async.otel imported, OpenTelemetry is never loaded: zero cost when unused."""
    code = (
        "import sys, guru_async, guru_async.testing\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


async def test_batch_has_one_span_per_video_over_its_calls(
    emulator: GuruEmulator,
    make_session: MakeSession,
    video_file: VideoFile,
    tmp_path: Path,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    """Each video of a batch is a 'guru_async batch_upload' span from its create to its
    analysis, parent of that video's create, upload and polls (made by the shared poll loop);
    an item that fails is an error span."""
    paths = [video_file(f"v{i}.mp4") for i in range(3)]
    missing = tmp_path / "missing.mp4"
    hooks = OpenTelemetryHooks(tracer_provider=provider)
    async with make_session(hooks=[hooks]) as guru:
        results = [r async for r in guru.batch_upload([*paths, missing], activity="squat")]
    assert sorted(r.ok for r in results) == [False, True, True, True]
    spans = exporter.get_finished_spans()
    videos = by_name(spans, "guru_async batch_upload")
    assert sorted(str(dict(v.attributes or {})["guru.filename"]) for v in videos) == [
        "missing.mp4",
        "v0.mp4",
        "v1.mp4",
        "v2.mp4",
    ]
    (failed,) = [v for v in videos if dict(v.attributes or {})["guru.filename"] == "missing.mp4"]
    assert failed.status.status_code is StatusCode.ERROR
    assert dict(failed.attributes or {})["error.type"] == "FileNotFoundError"
    calls = [s for s in spans if s.kind is SpanKind.CLIENT and s.name != TOKEN_ROUTE]
    parented = 0
    for video in videos:
        if video is failed:
            continue
        assert video.context is not None
        video_id = dict(video.attributes or {})["guru.video_id"]
        children = [c for c in calls if c.parent and c.parent.span_id == video.context.span_id]
        parented += len(children)
        names = [c.name for c in children]
        assert names[:2] == [CREATE_ROUTE, UPLOAD_ROUTE]
        assert set(names[2:]) == {ANALYSIS_ROUTE}
        assert len(names) >= 3
        assert {dict(c.attributes or {}).get("guru.video_id") for c in children[1:]} == {video_id}
        # The span covers the whole journey: it ends after its last poll.
        assert video.end_time is not None
        assert children[-1].end_time is not None
        assert video.end_time >= children[-1].end_time
    # Every request but the token's is a call span under its video.
    assert parented == len(calls) == sum(emulator.requests.values()) - 1


async def test_a_stopped_batch_ends_every_video_span(
    make_session: MakeSession,
    video_file: VideoFile,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    """Leaving a batch early ends the span of every video it started (the unfinished ones as
    errors), so no span is left open and lost."""
    paths = [video_file(f"v{i}.mp4") for i in range(6)]
    hooks = OpenTelemetryHooks(tracer_provider=provider)
    async with make_session(hooks=[hooks]) as guru:
        async with guru.batch_upload(paths, activity="squat", upload_concurrency=2) as results:
            first = await anext(results)
        started = results.progress.started
    assert first.ok
    videos = by_name(exporter.get_finished_spans(), "guru_async batch_upload")
    assert len(videos) == started >= 2
    assert any(v.status.status_code is StatusCode.UNSET for v in videos)  # the one reported
