"""A fleet worker and its Redis going away: wait for it at start, ride out an outage quietly.

Redis restarts, fails over, or comes up after the workers (a fleet restarted as a whole).
Like Celery's ``broker_connection_retry_on_startup``, a worker started while Redis is down
waits for it with backoff instead of exiting; only an answer that waiting cannot change (a
refused password or user, a database that does not exist) ends it at once. While a worker runs,
an outage is one WARNING when it starts and one INFO when it ends: saq's own lines about the
lost connection, which repeat every second or so with a traceback each, are kept to DEBUG.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import redis.asyncio as redis_async
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError as RedisAuthError
from redis.exceptions import BusyLoadingError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .._aio import wait_for
from ._redis import RedisUnavailableError

log = logging.getLogger("guru_async.fleet")

# Waiting at start: the first retry after half a second, then doubling up to every 5 s (with
# some jitter, so workers restarted together do not knock in step).
FIRST_RETRY = 0.5
MAX_RETRY = 5.0
# A PING that takes longer than this counts as no answer.
PROBE_TIMEOUT = 5.0
# While a worker runs, how often it checks that Redis answers (one PING).
WATCH_INTERVAL = 1.0


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says Redis is unreachable for now (as opposed to refusing this client).

    Only redis-py's connection errors and the socket's own count: a bare timeout (saq waiting
    on a job, say) says nothing about Redis, and its log line is kept.
    """
    if isinstance(exc, RedisAuthError):  # a ConnectionError subclass in redis-py
        return False
    return isinstance(exc, (RedisConnectionError, RedisTimeoutError, BusyLoadingError)) or (
        isinstance(exc, OSError) and not isinstance(exc, TimeoutError)
    )


def _probe_client(url: str) -> redis_async.Redis:
    # No retries of its own: the callers decide when to ask again.
    return redis_async.Redis.from_url(
        url,
        socket_connect_timeout=PROBE_TIMEOUT,
        socket_timeout=PROBE_TIMEOUT,
        retry=Retry(NoBackoff(), 0),
    )


def _reason(exc: BaseException, url: str) -> str:
    """One line on why Redis did not answer, without the URL's password."""
    if isinstance(exc, asyncio.TimeoutError):
        return f"no answer within {PROBE_TIMEOUT:g} s"
    if isinstance(exc, RedisAuthError):
        return "it refused the password or user"
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    password = urlsplit(url).password
    return detail.replace(password, "***") if password else detail


async def wait_for_redis(url: str, *, where: str, stop: asyncio.Event) -> bool:
    """Wait until Redis answers PING: True then, False if ``stop`` is set first.

    Logs one WARNING when it starts waiting and one INFO when Redis answers.

    Raises:
        RedisUnavailableError: Redis refused the password or user, or answered with another
            error that waiting will not change (a database that does not exist).
    """
    client = _probe_client(url)
    delay = FIRST_RETRY
    since: float | None = None
    try:
        while not stop.is_set():
            try:
                await wait_for(client.ping(), PROBE_TIMEOUT)  # type: ignore[arg-type]
            except (RedisError, OSError, asyncio.TimeoutError) as exc:
                if not (is_outage(exc) or isinstance(exc, asyncio.TimeoutError)):
                    raise RedisUnavailableError(
                        f"Redis at {where} is unavailable: {_reason(exc, url)}"
                    ) from None
                if since is None:
                    since = time.monotonic()
                    log.warning(
                        "Redis at %s is unavailable (%s); the worker waits for it, retrying "
                        "up to every %g s",
                        where,
                        _reason(exc, url),
                        MAX_RETRY,
                    )
                else:
                    log.debug("Redis at %s: still no answer (%s)", where, _reason(exc, url))
            else:
                if since is not None:
                    log.info(
                        "Redis at %s answers after %.1f s; the worker starts",
                        where,
                        time.monotonic() - since,
                    )
                return True
            with contextlib.suppress(asyncio.TimeoutError):
                await wait_for(stop.wait(), delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, MAX_RETRY)
        return False
    finally:
        with contextlib.suppress(RedisError, OSError):
            await client.aclose()


class RedisWatch(logging.Filter):
    """Tells an outage in two lines: WARNING when Redis stops answering, INFO when it answers.

    A task PINGs Redis every ``WATCH_INTERVAL`` seconds and is the only one to tell; as a
    filter on saq's logger, it keeps saq's records about the lost connection (a traceback
    every second or so while Redis is down) to one DEBUG line each. Those may come late
    (redis-py retries a command for a while first), so they never start an outage of their own.
    """

    def __init__(self, url: str, *, where: str) -> None:
        super().__init__()
        self._url = url
        self._where = where
        self._since: float | None = None

    @property
    def down(self) -> bool:
        """Whether Redis is unavailable, as last seen."""
        return self._since is not None

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None or not is_outage(exc):
            return True
        log.debug("saq: %s (%s)", record.getMessage(), _reason(exc, self._url))
        return False

    def _went_down(self, exc: BaseException) -> None:
        if self._since is not None:
            return
        self._since = time.monotonic()
        log.warning(
            "Redis at %s is unavailable (%s); the worker waits for it and goes on when it answers",
            self._where,
            _reason(exc, self._url),
        )

    async def _watch(self) -> None:
        client = _probe_client(self._url)
        try:
            while True:
                try:
                    await wait_for(client.ping(), PROBE_TIMEOUT)  # type: ignore[arg-type]
                except (RedisError, OSError, asyncio.TimeoutError) as exc:
                    if is_outage(exc) or isinstance(exc, asyncio.TimeoutError):
                        self._went_down(exc)
                    else:  # a password changed under a running worker: say so, once
                        self._went_down(RedisUnavailableError(_reason(exc, self._url)))
                else:
                    if self._since is not None:
                        log.info(
                            "Redis at %s answers again after %.1f s",
                            self._where,
                            time.monotonic() - self._since,
                        )
                        self._since = None
                await asyncio.sleep(WATCH_INTERVAL)
        finally:
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[RedisWatch]:
        """Watch Redis, and filter saq's log, for the block's duration."""
        saq_log = logging.getLogger("saq")
        saq_log.addFilter(self)
        task = asyncio.create_task(self._watch())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            saq_log.removeFilter(self)
