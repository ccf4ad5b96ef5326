"""Instrumentation hooks: what happened to every request and retry, as typed events.

``GuruSession(hooks=[...])`` takes objects with two methods, ``on_request(RequestDetails)``
(after every attempt of every request) and ``on_retry(RetryDetails)`` (before each backoff
wait). Logging is just the default hook (``LoggingHook``): a DEBUG line per request and an INFO
line per retry, with the same facts as structured ``extra=`` fields. A hook that also has
``trace(scope)`` (a ``TracingHook``) wraps each API call, and each video's whole journey, in a
context manager of its own: that is how ``guru_async.otel`` makes spans.

Hooks run inline, on the event loop: keep them quick. One that raises is logged once at WARNING
and never breaks the call.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Literal, Protocol, cast, runtime_checkable

from attrs import field, frozen

from ._errors import redact

_log = logging.getLogger("guru_async")


@frozen
class RequestDetails:
    """One attempt of one request, as ``on_request`` receives it after the attempt ended.

    Attributes:
        method: The HTTP method, e.g. ``"GET"``.
        route: The route template, e.g. ``"GET /videos/{id}/analysis"``; storage uploads and
            downloads are ``"POST /storage"`` and ``"GET /storage"`` (their URLs are presigned).
        status: The response's HTTP status, or None when no response came (a network failure,
            a timeout, a cancelled attempt).
        elapsed: Seconds the attempt took, from sending to the end of reading the response.
        attempt: Which attempt of the call this was: 1, then 2 after the first retry, ...
        video_id: The video the request is about, when known (in the route, or an upload's
            or download's video); None for Create Video and the token request.
        error: What the attempt raised (an error status is an ``APIError``), or None when it
            succeeded. Retried errors show up here too, once per failed attempt.
        host: The host the request went to.
        path: The URL's path. Never the query: presigned signatures live there.
    """

    method: str
    route: str
    status: int | None
    elapsed: float
    attempt: int
    video_id: str | None = None
    error: BaseException | None = field(default=None, eq=False)
    host: str | None = None
    path: str = ""


@frozen
class RetryDetails:
    """A retry about to happen, as ``on_retry`` receives it before the wait.

    Attributes:
        what: The call, in words, e.g. ``"Get analysis of video 1234"``.
        route: The route template, as in RequestDetails.
        attempt: The attempt that failed (1 for the first); the next one is ``attempt + 1``.
        wait: Seconds until the next attempt (a ``Retry-After`` is waited exactly).
        cause: The failure that is retried.
        video_id: The video the request is about, when known.
    """

    what: str
    route: str
    attempt: int
    wait: float
    cause: BaseException = field(eq=False)
    video_id: str | None = None


@frozen
class TraceScope:
    """A unit of work a TracingHook wraps: one call, or one video's create → upload → analysis.

    Attributes:
        kind: ``"call"``: one request with its retries (and its 401 refresh), from the first
            attempt to the result; ``"video"``: one video of ``analyze``, ``upload_video`` or
            a batch, covering its calls.
        name: For a call, its route template (``"GET /videos/{id}/analysis"``); for a video,
            the operation: ``"analyze"``, ``"upload_video"`` or ``"batch_upload"``.
        method: A call's HTTP method; None for a video.
        video_id: The video, when known at the start (a call's route or upload; a batch item
            resumed from its journal). A video scope learns its id from the ``on_request`` of
            its upload, whose ``video_id`` is set.
        filename: A video's file name as sent to Create Video; None for a call.
    """

    kind: Literal["call", "video"]
    name: str
    method: str | None = None
    video_id: str | None = None
    filename: str | None = None


class InstrumentationHook(Protocol):
    """What ``GuruSession(hooks=...)`` calls. Both methods run on the event loop, inline."""

    def on_request(self, details: RequestDetails) -> None:
        """Called after every attempt of every request (API, token and storage)."""
        ...

    def on_retry(self, details: RetryDetails) -> None:
        """Called when a failed attempt will be retried, before the wait."""
        ...


@runtime_checkable
class TracingHook(InstrumentationHook, Protocol):
    """An InstrumentationHook that also wraps calls and videos in a context manager of its own.

    ``on_request`` and ``on_retry`` of a call run inside its ``trace`` scope, in the same
    context (``contextvars``), so a tracer can find its current span there.
    """

    def trace(self, scope: TraceScope) -> AbstractContextManager[object]:
        """A context manager entered before the work of ``scope`` and exited after it (with
        its exception, if it failed; the exception propagates whatever ``__exit__`` returns).
        """
        ...


class LoggingHook:
    """The default hook: a DEBUG line per request and an INFO line per retry on the
    ``guru_async`` logger, each with structured ``extra=`` fields.

    Request lines read ``GET api.getguru.fitness/videos/1234/analysis -> 200 in 41.3 ms`` with
    ``guru_async.method``, ``guru_async.route``, ``guru_async.status`` (None without a response),
    ``guru_async.elapsed`` (seconds), ``guru_async.attempt`` and ``guru_async.video_id``. Retry
    lines read ``Get analysis of video 1234: retrying in 0.42 s after attempt 1 failed: ...``
    with ``guru_async.what``, ``guru_async.route``, ``guru_async.attempt``, ``guru_async.wait``,
    ``guru_async.cause`` (the error's class name) and ``guru_async.video_id``.

    Args:
        logger: Where to log; defaults to ``logging.getLogger("guru_async")``.
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger if logger is not None else _log

    def __repr__(self) -> str:
        return f"LoggingHook(logger={self.logger.name!r})"

    def on_request(self, details: RequestDetails) -> None:
        """Log the attempt at DEBUG."""
        if not self.logger.isEnabledFor(logging.DEBUG):
            return
        status = details.status
        self.logger.debug(
            "%s %s%s -> %s in %.1f ms",
            details.method,
            details.host,
            details.path,
            "error" if status is None else status,
            details.elapsed * 1000,
            extra={
                "guru_async.method": details.method,
                "guru_async.route": details.route,
                "guru_async.status": status,
                "guru_async.elapsed": details.elapsed,
                "guru_async.attempt": details.attempt,
                "guru_async.video_id": details.video_id,
            },
        )

    def on_retry(self, details: RetryDetails) -> None:
        """Log the retry at INFO."""
        if not self.logger.isEnabledFor(logging.INFO):
            return
        self.logger.info(
            "%s: retrying in %.2f s after attempt %d failed: %s",
            details.what,
            details.wait,
            details.attempt,
            redact(str(details.cause)),
            extra={
                "guru_async.what": details.what,
                "guru_async.route": details.route,
                "guru_async.attempt": details.attempt,
                "guru_async.wait": details.wait,
                "guru_async.cause": type(details.cause).__name__,
                "guru_async.video_id": details.video_id,
            },
        )


class OpenScope:
    """The tracing hooks' context managers of one scope, entered (``enter``) and exited
    (``exit``) separately: a batch video is entered in one task and ends in another, so the
    caller runs both in one ``contextvars.Context`` of the video's own."""

    __slots__ = ("_entered", "_hooks")

    def __init__(self, hooks: Hooks) -> None:
        self._hooks = hooks
        self._entered: list[tuple[object, AbstractContextManager[object]]] = []

    def enter(self, scope: TraceScope) -> None:
        """Enter every tracing hook's context manager for ``scope``."""
        for hook in self._hooks.tracers:
            try:
                manager = hook.trace(scope)
                manager.__enter__()
            except Exception as exc:
                self._hooks.failed(hook, "trace", exc)
            else:
                self._entered.append((hook, manager))

    def exit(self, error: BaseException | None) -> None:
        """Exit what ``enter`` entered, innermost first, telling each of ``error``."""
        kind = None if error is None else type(error)
        tb = None if error is None else error.__traceback__
        while self._entered:
            hook, manager = self._entered.pop()
            try:
                manager.__exit__(kind, error, tb)
            except Exception as exc:
                self._hooks.failed(hook, "trace", exc)


class Hooks:
    """A session's hooks, sorted by what they do, so the hot path asks one cheap question."""

    __slots__ = ("_always", "_loggers", "_warned", "hooks", "tracers")

    def __init__(self, hooks: Sequence[InstrumentationHook] | None) -> None:
        given: object = hooks
        if hooks is None:
            chosen: tuple[InstrumentationHook, ...] = (LoggingHook(),)
        elif isinstance(given, (str, bytes)) or not isinstance(given, Sequence):
            raise TypeError(
                "hooks must be a sequence of hooks (objects with on_request and on_retry), "
                f"got {type(hooks).__name__}"
            )
        else:
            chosen = tuple(hooks)
        for hook in chosen:
            for method in ("on_request", "on_retry"):
                if not callable(getattr(hook, method, None)):
                    raise TypeError(
                        f"hook {hook!r} has no {method}(details) method; a hook needs "
                        "on_request and on_retry (see InstrumentationHook)"
                    )
        self.hooks = chosen
        self.tracers: tuple[TracingHook, ...] = tuple(
            cast(TracingHook, hook) for hook in chosen if callable(getattr(hook, "trace", None))
        )
        # A LoggingHook whose logger drops DEBUG needs no RequestDetails: skip building them.
        self._loggers = tuple(h.logger for h in chosen if type(h) is LoggingHook)
        self._always = any(type(h) is not LoggingHook for h in chosen)
        self._warned: set[int] = set()

    def wants_requests(self) -> bool:
        """True when some hook would use a RequestDetails (else the caller skips it)."""
        if self._always:
            return True
        for logger in self._loggers:  # noqa: SIM110 - any() costs 3x as much, once per request
            if logger.isEnabledFor(logging.DEBUG):
                return True
        return False

    def request(self, details: RequestDetails) -> None:
        """Tell every hook of a finished attempt."""
        for hook in self.hooks:
            try:
                hook.on_request(details)
            except Exception as exc:
                self.failed(hook, "on_request", exc)

    def retry(self, details: RetryDetails) -> None:
        """Tell every hook of a coming retry."""
        for hook in self.hooks:
            try:
                hook.on_retry(details)
            except Exception as exc:
                self.failed(hook, "on_retry", exc)

    @contextlib.contextmanager
    def scope(self, scope: TraceScope) -> Iterator[None]:
        """Run a block inside every tracing hook's context manager for ``scope``."""
        opened = OpenScope(self)
        opened.enter(scope)
        try:
            yield
        except BaseException:
            opened.exit(sys.exc_info()[1])
            raise
        opened.exit(None)

    def failed(self, hook: object, method: str, exc: Exception) -> None:
        """A hook raised: say so once per hook at WARNING (later ones at DEBUG), never more."""
        first = id(hook) not in self._warned
        self._warned.add(id(hook))
        _log.log(
            logging.WARNING if first else logging.DEBUG,
            "instrumentation hook %r failed in %s (the call goes on%s): %s: %s",
            hook,
            method,
            "; further failures of this hook are logged at DEBUG" if first else "",
            type(exc).__name__,
            redact(str(exc)),
        )
