"""OpenTelemetry traces for guru_async (extra ``otel``, on ``opentelemetry-api`` only).

::

    from guru_async import GuruSession, LoggingHook
    from guru_async.otel import OpenTelemetryHooks

    async with GuruSession(hooks=[LoggingHook(), OpenTelemetryHooks()]) as guru:
        ...

Spans:

- One CLIENT span per call (a request with its retries and its 401 refresh), named by its
  route template (``GET /videos/{id}/analysis``), with ``guru.route``, ``http.request.method``,
  ``http.response.status_code`` (of the last response), ``guru.attempts`` and
  ``guru.video_id`` when known; retries are ``guru.retry`` events on it. A failed call has
  status ERROR, ``error.type`` and the exception recorded. The token request is a span of its
  own, inside the call that waited for it.
- One INTERNAL span per video of ``analyze``, ``upload_video`` and ``batch_upload``
  (``guru_async analyze``, ...), covering its create, upload and analysis polls, which are its
  children; it carries ``guru.operation``, ``guru.filename`` and ``guru.video_id``.

No span or event ever holds a token, a URL or a query (presigned signatures live there). While
a call span is current, HTTP instrumentation of the same request (such as
``opentelemetry-instrumentation-aiohttp-client``) is suppressed, so each request is one
client span, not two, and its presigned URL is not recorded by it.

Importing this module needs the extra; ``import guru_async`` never imports OpenTelemetry.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError(
        'guru_async.otel needs OpenTelemetry: pip install "guru-async[otel]"'
    ) from exc

from ._instrumentation import RequestDetails, RetryDetails, TraceScope
from ._version import __version__

__all__ = ["OpenTelemetryHooks"]

# The context key every OpenTelemetry HTTP instrumentation checks before making its span
# (opentelemetry.instrumentation.utils.suppress_http_instrumentation sets the same one).
_SUPPRESS_HTTP: Any = getattr(otel_context, "_SUPPRESS_HTTP_INSTRUMENTATION_KEY", None)


class OpenTelemetryHooks:
    """An instrumentation hook that turns calls and videos into OpenTelemetry spans.

    Pass it in ``GuruSession(hooks=[...])``, with a LoggingHook if you want the log lines too.

    Args:
        tracer_provider: Where spans go; defaults to the global provider
            (``opentelemetry.trace.set_tracer_provider``).
        suppress_http_instrumentation: Keep HTTP client instrumentations (such as
            ``opentelemetry-instrumentation-aiohttp-client``) from making a second span, with
            the full URL, for each request the SDK sends. Set False to get their spans too, as
            children of the SDK's call spans; then give them a URL filter that drops queries.
    """

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        suppress_http_instrumentation: bool = True,
    ) -> None:
        self._tracer = trace.get_tracer("guru_async", __version__, tracer_provider)
        self._suppress = suppress_http_instrumentation and _SUPPRESS_HTTP is not None
        # This hook's own spans, so on_request/on_retry find their call (and its video) even
        # when another tracer's span is current.
        self._call: contextvars.ContextVar[trace.Span | None] = contextvars.ContextVar(
            "guru_async.otel.call", default=None
        )
        self._video: contextvars.ContextVar[trace.Span | None] = contextvars.ContextVar(
            "guru_async.otel.video", default=None
        )

    def __repr__(self) -> str:
        return "OpenTelemetryHooks()"

    @contextmanager
    def trace(self, scope: TraceScope) -> Iterator[None]:
        """A span for ``scope``, current while its work runs."""
        attributes: dict[str, Any] = {}
        if scope.kind == "call":
            name = scope.name
            kind = trace.SpanKind.CLIENT
            attributes["guru.route"] = scope.name
            if scope.method is not None:
                attributes["http.request.method"] = scope.method
            mine = self._call
        else:
            name = f"guru_async {scope.name}"
            kind = trace.SpanKind.INTERNAL
            attributes["guru.operation"] = scope.name
            if scope.filename is not None:
                attributes["guru.filename"] = scope.filename
            mine = self._video
        if scope.video_id is not None:
            attributes["guru.video_id"] = scope.video_id
        span = self._tracer.start_span(name, kind=kind, attributes=attributes)
        ctx = trace.set_span_in_context(span)
        if self._suppress and scope.kind == "call":
            ctx = otel_context.set_value(_SUPPRESS_HTTP, True, ctx)
        attached = otel_context.attach(ctx)
        ours = mine.set(span)
        try:
            yield
        except BaseException as exc:
            span.set_attribute("error.type", _error_type(exc))
            span.record_exception(exc)
            span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            mine.reset(ours)
            otel_context.detach(attached)
            span.end()

    def on_request(self, details: RequestDetails) -> None:
        """Record the attempt's status, the attempt count and the video on the call's span."""
        span = self._call.get()
        if span is None or not span.is_recording():
            return
        span.set_attribute("guru.attempts", details.attempt)
        if details.status is not None:
            span.set_attribute("http.response.status_code", details.status)
        if details.video_id is not None:
            span.set_attribute("guru.video_id", details.video_id)
            video = self._video.get()
            if video is not None and video.is_recording():
                video.set_attribute("guru.video_id", details.video_id)

    def on_retry(self, details: RetryDetails) -> None:
        """Add a ``guru.retry`` event to the call's span."""
        span = self._call.get()
        if span is None or not span.is_recording():
            return
        span.add_event(
            "guru.retry",
            {
                "guru.attempt": details.attempt,
                "guru.retry.wait": details.wait,
                "error.type": _error_type(details.cause),
            },
        )


def _error_type(exc: BaseException) -> str:
    # OpenTelemetry's HTTP conventions: the status code when there is one, else the class.
    status = getattr(exc, "status", None)
    if isinstance(status, int) and status >= 400:
        return str(status)
    return type(exc).__qualname__
