"""What the fleet's Redis pieces share: a client from a URL or the caller's own, descriptions of
it that never carry a password, and a circuit breaker that turns an unreachable or slow Redis
into a local fallback with one WARNING instead of failed calls."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as redis_async
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError as RedisAuthError
from redis.exceptions import RedisError

from .._aio import wait_for
from .._errors import GuruConnectionError

log = logging.getLogger("guru_async.fleet")


_SCHEMES = ("redis", "rediss", "unix")


class RedisUnavailableError(GuruConnectionError):
    """Redis could not be reached or refused this client (a wrong password, for instance).

    The message names the server without its password. Raised by ``check()``; the token store
    and the rate limiter never raise it from a call: they fall back to this process (see their
    docs) and log one WARNING.
    """


class Unavailable(Exception):
    """Internal: a Redis operation failed or was skipped while the breaker is open."""


def describe_url(url: str) -> str:
    """``url`` with its password (and query, which may hold one) replaced: safe for logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
        host = f"{host}:?"
    if port is not None:
        host = f"{host}:{port}"
    user = ""
    if parts.username or parts.password:
        user = f"{parts.username or ''}:***@" if parts.password else f"{parts.username}@"
    query = "?…" if parts.query else ""
    return f"{parts.scheme}://{user}{host}{parts.path}{query}"


def describe_client(client: redis_async.Redis) -> str:
    """Where a caller's client connects, from its pool's settings, with no credentials."""
    kwargs: dict[str, Any] = client.connection_pool.connection_kwargs
    if kwargs.get("path"):
        return f"unix://{kwargs['path']}?db={kwargs.get('db', 0)}"
    tls = "ssl" in client.connection_pool.connection_class.__name__.lower()
    scheme = "rediss" if tls else "redis"
    host = kwargs.get("host", "localhost")
    return f"{scheme}://{host}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


def check_url(url: str, *, name: str = "redis") -> None:
    """Refuse a URL redis-py would misread, before anything connects."""
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise ValueError(
            f"{name} must be a redis://, rediss:// or unix:// URL (or a redis.asyncio.Redis), "
            f"got {describe_url(url)[:120]!r}"
        )
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError(f"{name}: a unix:// URL needs a socket path: {describe_url(url)!r}")
        return
    if not parts.hostname:
        raise ValueError(f"{name}: no host in {describe_url(url)!r}")
    try:
        parts.port  # noqa: B018 - parsing it raises on a port that is not a number
    except ValueError:
        raise ValueError(f"{name}: the port is not a number in {describe_url(url)!r}") from None
    db = unquote(parts.path).strip("/")
    if db and not db.isdigit():
        # redis-py would silently use database 0 instead.
        raise ValueError(
            f"{name}: the database in {describe_url(url)!r} must be a number, e.g. redis://host:6379/0"
        )


class RedisLink:
    """A Redis client for one fleet piece, guarded by a circuit breaker.

    Given a URL, the client is created on first use, on the running event loop (redis-py's
    connections belong to one loop), with short socket timeouts and no retries of its own: the
    breaker decides. Given a client, the caller owns it and its settings; ``timeout`` still
    bounds each operation.
    """

    def __init__(
        self,
        redis: str | redis_async.Redis,
        *,
        what: str,
        fallback: str,
        timeout: float,
        cooldown: float,
    ) -> None:
        if isinstance(redis, str):
            check_url(redis)
            self._url: str | None = redis
            self._owned: redis_async.Redis | None = None
            self._given: redis_async.Redis | None = None
            self.where = describe_url(redis)
            self._password = urlsplit(redis).password
        elif isinstance(redis, redis_async.Redis):
            self._url = None
            self._owned = None
            self._given = redis
            self.where = describe_client(redis)
            self._password = redis.connection_pool.connection_kwargs.get("password")
        else:
            raise TypeError(
                f"redis must be a redis:// URL or a redis.asyncio.Redis, got {type(redis).__name__}"
            )
        _check_seconds(timeout, "timeout")
        _check_seconds(cooldown, "cooldown")
        self._what = what
        self._fallback = fallback
        self._timeout = timeout
        self._cooldown = cooldown
        self._loop: asyncio.AbstractEventLoop | None = None
        self._open_until = 0.0
        self.down = False

    def client(self) -> redis_async.Redis:
        """The client to use on the running loop."""
        if self._given is not None:
            return self._given
        loop = asyncio.get_running_loop()
        if self._owned is None or self._loop is not loop:
            assert self._url is not None
            self._owned = redis_async.Redis.from_url(
                self._url,
                socket_timeout=self._timeout,
                socket_connect_timeout=self._timeout,
                retry=Retry(NoBackoff(), 0),
            )
            self._loop = loop
        return self._owned

    def allows(self) -> bool:
        """Whether to try Redis now: always while healthy; once per cool-down while down."""
        if not self.down:
            return True
        now = time.monotonic()
        if now < self._open_until:
            return False
        # One probe at a time: the others keep using the fallback until it answers.
        self._open_until = now + self._cooldown
        return True

    async def run(self, op: Callable[[redis_async.Redis], Any]) -> Any:
        """Run ``op`` on the client within ``timeout``; raise Unavailable if it fails or the
        breaker is open, after logging the first failure of an outage at WARNING."""
        if not self.allows():
            raise Unavailable
        try:
            # redis-py's command types say "awaitable or value"; on an asyncio client it is
            # always awaitable.
            result = await wait_for(op(self.client()), self._timeout)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            self._failed(exc)
            raise Unavailable from None
        if self.down:
            self.down = False
            log.info("Redis at %s answers again; the fleet shares %s again", self.where, self._what)
        return result

    def _failed(self, exc: BaseException) -> None:
        self._open_until = time.monotonic() + self._cooldown
        if self.down:
            return
        self.down = True
        log.warning(
            "Redis at %s is unavailable (%s); until it answers, %s (retrying every %g s)",
            self.where,
            self.reason(exc),
            self._fallback,
            self._cooldown,
        )

    def reason(self, exc: BaseException) -> str:
        """A one-line description of a Redis failure, with the password removed."""
        if isinstance(exc, asyncio.TimeoutError):
            return f"no answer within {self._timeout:g} s"
        if isinstance(exc, RedisAuthError):
            detail = "it refused the password or user"
        else:
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if self._password:
            detail = detail.replace(self._password, "***")
        return detail

    async def check(self) -> None:
        """Raise RedisUnavailableError unless Redis answers PING now."""
        try:
            await wait_for(self.client().ping(), self._timeout)  # type: ignore[arg-type]
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            raise RedisUnavailableError(f"Redis at {self.where}: {self.reason(exc)}") from None

    async def aclose(self) -> None:
        """Close the connections of a client created from a URL (a caller's is left alone)."""
        owned, self._owned = self._owned, None
        if owned is not None and self._loop is asyncio.get_running_loop():
            await owned.aclose()


def _check_seconds(value: float, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
