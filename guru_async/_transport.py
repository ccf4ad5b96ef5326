"""The one HTTP path: every request the SDK makes goes through ``Transport.send``.

It owns what no endpoint should re-implement: the connection pool (made on first use, closed
once), the Authorization header (API requests only, never storage), the single
refresh-and-retry after a 401, retries with backoff under one policy and a shared budget,
timeouts, raising typed errors (each request brings its mapping of an error status; what aiohttp
raises is mapped by ``_error_mapping``), and instrumentation hooks (by default a DEBUG log line
per request) that never see a secret.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, Generic, Protocol, TypeVar

import aiohttp
import backoff
from attrs import define, frozen
from multidict import CIMultiDictProxy
from yarl import URL

from ._error_mapping import attempt_failure, stalled_error
from ._errors import (
    AuthenticationError,
    BodyAbort,
    GuruConnectionError,
    GuruError,
    SessionClosedError,
)
from ._instrumentation import Hooks, RequestDetails, RetryDetails, TraceScope
from ._limiter import AdaptiveLimiter, RateLimiter
from ._retry import RetryBudget, RetryPolicy, is_retryable, is_safe_to_repeat, wait_times
from ._timers import DeadlineWatch, connector, timed_out
from ._types import UNSET, UnsetType
from ._validation import check_int

T = TypeVar("T")

# Failures raised before any byte of the request was sent (aiohttp < 3.10 has no
# ConnectionTimeoutError: its connect timeouts are then treated as ambiguous).
_NOT_SENT: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectorError,
    getattr(aiohttp, "ConnectionTimeoutError", aiohttp.ClientConnectorError),
)


@frozen
class Timeouts:
    """How long requests may take, in seconds.

    Attributes:
        connect: To open a connection (TCP and TLS). Waiting for a free connection in the
            pool is not included: an API call's wait counts against ``total``, and an upload
            or download queues until a connection frees up (its stall clock starts only once
            it holds one).
        read: The longest silence while reading a response, and while sending an upload.
        total: The whole of one API call, retries, their waits and the wait for a token
            included. Uploads and downloads have no total (a large file must not hit it);
            ``read`` bounds them.
    """

    connect: float = 10.0
    read: float = 60.0
    total: float = 120.0


class AccessToken(Protocol):
    """What the transport needs from a token provider."""

    def fresh(self) -> str | None:
        """A token usable now, without waiting, or None (then ``get`` it)."""
        ...

    async def get(self, deadline: float | None = None) -> str:
        """A token, waited for no later than ``deadline`` (``time.monotonic()``)."""
        ...

    async def invalidate(self, access_token: str, *, refreshed: bool) -> bool:
        """The API answered 401 to ``access_token`` (after the call's one refresh if
        ``refreshed``): True to retry with a fresh token."""
        ...


# Response and Request are built on every call: plain attrs classes (frozen ones set each
# attribute through object.__setattr__, which made building a Request cost more than a
# third of the SDK's own work per call). Treat them as read-only all the same.
@define(eq=False)
class Response:
    """A successful response's parts, handed to a request's decoder."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


ErrorMapper = Callable[[int, "CIMultiDictProxy[str]", bytes], GuruError]


@define(eq=False)
class Request(Generic[T]):
    """One logical call: what to send, and how to read the answer.

    Attributes:
        what: Names the call in errors and logs (e.g. ``"Get analysis of video 1234"``).
        body: Builds a fresh body for each attempt (a streamed file payload is consumed).
        decode: Turns a successful response into the result, inside the retried attempt, so
            a body cut short is retried like a dropped connection.
        stream: For large responses: receives the live response instead of its bytes.
        errors: Maps an error status and body to the exception to raise.
        authorized: Send the API token (never true for storage or the token endpoint).
        total: Overrides ``Timeouts.total``; None means no total (uploads, downloads).
        cleanup: Called after every attempt, however it ended (closes an upload's file even
            when aiohttp abandons the body half-read).
        idle_since: For uploads: when the body last made progress (+inf once sent); an
            attempt idle for ``Timeouts.read`` fails as a stalled connection.
        repeat_risk: For a request that must not reach the service twice (Create video):
            what a repeat could do, e.g. ``"the video may have been created"``. Then only
            failures after which a repeat is surely safe are retried (``is_safe_to_repeat``);
            any other is raised at once, with this said in its message.
        route: The route template hooks and traces see, e.g. ``"GET /videos/{id}"``.
        video_id: The video the request is about, when known (for hooks and traces).
    """

    method: str
    url: URL
    what: str
    errors: ErrorMapper
    decode: Callable[[Response], T] | None = None
    stream: Callable[[aiohttp.ClientResponse], Awaitable[T]] | None = None
    body: Callable[[], Any] | None = None
    headers: Mapping[str, str] | None = None
    params: Mapping[str, str] | None = None
    authorized: bool = False
    total: float | UnsetType | None = UNSET  # UNSET: the session's Timeouts.total
    cleanup: Callable[[], None] | None = None
    idle_since: Callable[[], float] | None = None
    repeat_risk: str | None = None
    route: str = ""
    video_id: str | None = None


class _Call(Generic[T]):
    """One send(): the request and what its attempts share (its auth state included)."""

    __slots__ = (
        "attempts",
        "deadline",
        "expired",
        "expires",
        "max_tries",
        "refreshed",
        "req",
        "retry_cost",
        "status",
        "task",
        "token",
        "token_failed",
        "unsent",
    )

    def __init__(self, req: Request[T], deadline: float | None, max_tries: int) -> None:
        self.req = req
        self.deadline = deadline
        self.max_tries = max_tries
        self.retry_cost = 0  # taken from the budget by the latest retry
        self.attempts = 0
        self.status: int | None = None  # of the latest attempt (None: no response), for hooks
        self.unsent = False  # the latest attempt failed before sending anything
        self.token: str | None = None  # sent by the latest attempt
        self.refreshed = False  # the token was refreshed after a 401 once already
        # Getting the token failed (its own request already retried): do not retry on top.
        self.token_failed = False
        # The latest attempt's total timeout, under the transport's DeadlineWatch.
        self.expires = math.inf
        self.task: asyncio.Task[Any] | None = None
        self.expired = False


class Transport:
    """Sends Requests with auth, retries, timeouts, error mapping and logging."""

    def __init__(
        self,
        *,
        token: AccessToken | None,
        policy: RetryPolicy,
        timeouts: Timeouts,
        http_session: aiohttp.ClientSession | None = None,
        user_agent: str | None = None,
        budget: RetryBudget | None = None,
        limiter: AdaptiveLimiter | None = None,
        ceiling: RateLimiter | None = None,
        hooks: Hooks | None = None,
    ) -> None:
        self._http_session = http_session
        self._owns_http = http_session is None
        self._user_agent = user_agent
        self._closed = False
        self.hooks = hooks if hooks is not None else Hooks(None)
        self.token = token
        self.policy = policy
        self.timeouts = timeouts
        self.budget = budget if budget is not None else RetryBudget()
        self.limiter = limiter if limiter is not None else AdaptiveLimiter()
        self.ceiling = ceiling
        # Each attempt's total, and its reads on a pool of our own, are timed by timers that
        # are not armed per request (see _timers); aiohttp is left the connect timeout, and the
        # read timeout on a caller's own pool.
        self._deadlines = DeadlineWatch()
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeouts.connect, sock_read=timeouts.read
        )

    # -- the connection pool's lifecycle ------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once close() was called."""
        return self._closed

    def http(self) -> aiohttp.ClientSession:
        """The connection pool, created on first use (a caller's own session is used as is)."""
        if self._closed:
            raise SessionClosedError("this GuruSession is closed; open a new one")
        if self._http_session is None:
            headers = {} if self._user_agent is None else {"User-Agent": self._user_agent}
            self._http_session = aiohttp.ClientSession(
                connector=connector(limit=100, ttl_dns_cache=300), headers=headers
            )
        elif self._http_session.closed:
            raise SessionClosedError("the aiohttp.ClientSession given as http_session is closed")
        return self._http_session

    async def close(self) -> None:
        """Close the pool if this transport made it (a caller's http_session stays open);
        requests in flight then end with SessionClosedError. Closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        if self._owns_http and self._http_session is not None:
            await self._http_session.close()

    # -- sending -----------------------------------------------------------------------------

    def send(self, req: Request[T], *, max_retries: int | None = None) -> Coroutine[Any, Any, T]:
        """Send ``req`` until it succeeds, fails for good, or runs out of retries or time.

        A plain function returning the coroutine to await (``await transport.send(req)``):
        one coroutine frame less on every resume of every call.
        """
        if max_retries is None:
            retries = self.policy.max_retries  # checked once, when the policy was made
        else:
            retries = check_int("max_retries", max_retries)
        if not self.hooks.tracers:
            return self._send(req, retries)
        return self._traced(req, retries)

    async def _traced(self, req: Request[T], retries: int) -> T:
        name = req.route or req.method
        scope = TraceScope("call", name, method=req.method, video_id=req.video_id)
        with self.hooks.scope(scope):
            return await self._send(req, retries)

    async def _send(self, req: Request[T], retries: int) -> T:
        total = self.timeouts.total if isinstance(req.total, UnsetType) else req.total
        deadline = None if total is None else time.monotonic() + total
        call = _Call(req, deadline, retries + 1)
        while True:
            try:
                # The first attempt runs bare: the retry machinery is built only once an
                # attempt has failed (most calls never need it, and building it costs more
                # than the rest of the SDK's work on a loopback request).
                failed: GuruError | None = None
                try:
                    result: T = await self._attempt(call)
                except GuruError as exc:
                    failed = exc
                if failed is not None:
                    # Outside the handler, so a failure raised from here has no __context__.
                    result = await self._retry(call, failed)
            except AuthenticationError as exc:
                # An expired or revoked token: refresh once and try the call once more. The
                # provider hears of every 401, also the one after the refresh, so a route that
                # rejects fresh tokens too stops costing token requests (its cool-down).
                if not (
                    req.authorized
                    and self.token is not None
                    and exc.status == 401
                    and call.token is not None
                    and not call.token_failed
                ):
                    raise
                if not await self.token.invalidate(call.token, refreshed=call.refreshed):
                    raise
                call.refreshed = True
                continue
            self.budget.success(call.retry_cost)
            return result

    async def _retry(self, call: _Call[T], first: GuruError) -> T:
        """Go on after ``call``'s first attempt failed with ``first``: backoff decides, from
        that failure on, whether to retry, when, and how often, exactly as if it had made the
        first attempt itself (it is handed ``first`` as that attempt's outcome)."""
        pending = [first]

        async def attempt(call: _Call[T]) -> T:
            if pending:
                raise pending.pop()
            return await self._attempt(call)

        retried: Callable[[_Call[T]], Awaitable[T]] = backoff.on_exception(
            wait_times,
            GuruError,
            max_tries=call.max_tries,
            giveup=functools.partial(self._giveup, call),
            jitter=None,
            logger=None,  # the hooks hear of retries (LoggingHook logs them, redacted)
            on_backoff=(self._charge, self._retrying),
            policy=self.policy,
            deadline=call.deadline,
        )(attempt)
        return await retried(call)

    def _giveup(self, call: _Call[Any], exc: Exception) -> bool:
        if self._closed or call.token_failed or not is_retryable(exc):
            return True
        risk = call.req.repeat_risk
        if risk is not None and not is_safe_to_repeat(exc, unsent=call.unsent):
            exc.args = (f"{exc}; not retried, as {risk}",)
            return True
        if call.attempts >= call.max_tries:
            return True  # backoff stops anyway; a retry that will not happen costs nothing
        # Only whether the budget could pay: the deadline (wait_times, asked next) may still
        # rule the retry out, and a retry that does not happen must cost nothing, or a
        # maintenance window drains the budget and disables retries after it. _charge pays.
        return self.budget.cost(exc) > self.budget.available

    def _charge(self, details: Any) -> None:
        # backoff's on_backoff: the retry is certain now. backoff does not yield to the loop
        # between _giveup and here, so the amount checked there is still available.
        call: _Call[Any] = details["args"][0]
        cost = self.budget.cost(details["exception"])
        call.retry_cost = cost if self.budget.take(cost) else 0

    def _retrying(self, details: Any) -> None:
        # backoff's on_backoff, after _charge: the retry will happen after details["wait"].
        call: _Call[Any] = details["args"][0]
        req = call.req
        self.hooks.retry(
            RetryDetails(
                what=req.what,
                route=req.route,
                attempt=details.get("tries", call.attempts),
                wait=details.get("wait") or 0.0,
                cause=details["exception"],
                video_id=req.video_id,
            )
        )

    async def _attempt(self, call: _Call[T]) -> T:
        req, deadline = call.req, call.deadline
        call.attempts += 1
        if self._closed:
            raise SessionClosedError(f"{req.what}: the GuruSession is closed")
        headers = {**req.headers} if req.headers else {}
        if req.authorized:
            assert self.token is not None
            # A fresh cached token is taken without a coroutine; else waited for.
            call.token = token = self.token.fresh()
            if token is None:
                try:
                    call.token = token = await self.token.get(deadline)
                except GuruError:
                    call.token_failed = True
                    raise
            headers["Authorization"] = token  # the raw token: the API takes no "Bearer"
            if self.ceiling is not None:
                # Before the deadline is read: a wait for a slot counts against the total.
                await self.ceiling.acquire()
        remaining = None if deadline is None else max(0.001, deadline - time.monotonic())
        timeout = self._timeout
        if not self.limiter.try_acquire():
            await self.limiter.acquire()
        started = time.monotonic()
        if remaining is not None:
            # The attempt's total runs from here, as aiohttp's did (the limiter's wait above
            # is not in it), until its answer is read.
            call.expires = started + remaining
            self._deadlines.watch(call)
        call.status = None
        call.unsent = False
        failure: BaseException | None = None
        error: BaseException | None = None
        try:
            # The body is built before the watch starts: building it restarts its idle clock.
            body = req.body() if req.body is not None else None
            exchange = self._exchange(req, call, body, headers, timeout)
            if req.idle_since is None:
                return await exchange
            return await _watched(exchange, req.idle_since, self.timeouts.read, req.what)
        except GuruError as exc:
            error = exc
            raise
        except BodyAbort as exc:
            # Raised by a stream handler (a download's file could not be written).
            failure = exc.error
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            failure = attempt_failure(exc, what=req.what, closed=self.closed)
            call.unsent = isinstance(failure, GuruConnectionError) and isinstance(exc, _NOT_SENT)
        except asyncio.CancelledError as exc:
            if remaining is None or not timed_out(call, exc):
                error = exc  # cancelled: told to the hooks, raised as it is
                raise
            # The attempt's total ran out: what aiohttp's own total timer raised.
            failure = attempt_failure(asyncio.TimeoutError(), what=req.what, closed=self.closed)
        except BaseException as exc:  # told to the hooks, raised as it is
            error = exc
            raise
        finally:
            if remaining is not None:
                self._deadlines.unwatch(call)
            if req.cleanup is not None:
                req.cleanup()
            if self.hooks.wants_requests():
                self.hooks.request(
                    RequestDetails(
                        method=req.method,
                        route=req.route,
                        status=call.status,
                        elapsed=time.monotonic() - started,
                        attempt=call.attempts,
                        video_id=req.video_id,
                        error=failure if failure is not None else error,
                        host=req.url.host,
                        path=req.url.path,
                    )
                )
        # Raised here, outside the handler, so it carries no __context__: aiohttp's exceptions
        # can hold the full (presigned) URL.
        assert failure is not None
        raise failure

    async def _exchange(
        self, req: Request[T], call: _Call[T], body: Any, headers: dict[str, str], timeout: Any
    ) -> T:
        # Awaited, then released by hand, rather than `async with`: the same steps (release,
        # then wait for the body's writer) without four coroutines of context managers.
        resp = await self.http().request(
            req.method,
            req.url,
            data=body,
            headers=headers,
            params=req.params,
            timeout=timeout,
            # Never followed by aiohttp (it would follow one to plain http on any host): a 3xx
            # goes to the request's error mapper, which may hand it back to its caller to check
            # the next hop (a download's Redirected).
            allow_redirects=False,
        )
        try:
            call.status = resp.status
            if resp.status >= 300:
                raw = await resp.read()
                error = req.errors(resp.status, resp.headers, raw)
                self.limiter.record(throttled=_is_throttle(error))
                raise error
            self.limiter.record(throttled=False)
            if req.stream is not None:
                return await req.stream(resp)
            raw = await resp.read()
            assert req.decode is not None
            return req.decode(Response(resp.status, resp.headers, raw))
        finally:
            resp.release()
            await resp.wait_for_close()


async def _watched(
    work: Coroutine[Any, Any, T], idle_since: Callable[[], float], limit: float, what: str
) -> T:
    """Run ``work``, ending it when ``idle_since()`` (the last time the body made progress)
    is ``limit`` seconds old: aiohttp has no timeout for a peer that stops reading an upload,
    and a large file must not be bounded by a total."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            idle = time.monotonic() - idle_since()
            if idle >= limit:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                raise stalled_error(what, limit)
            # idle_since() is +inf before the body starts (queued for a pooled connection,
            # connecting) and once it is sent (the response has sock_read's timeout): look
            # again later, as the body may start meanwhile.
            wait = limit if idle == -math.inf else limit - idle
            done, _ = await asyncio.wait({task}, timeout=wait)
            if done:
                return task.result()
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def _is_throttle(error: GuruError) -> bool:
    return getattr(error, "status", None) == 429 or getattr(error, "code", None) == "SlowDown"
