"""One token for the whole fleet: a TokenStore in Redis with a fleet-wide single-flight refresh.

Keys written, all named by the credentials hash ``KEY`` (``guru:<sha256>`` of token URL, client
id, secret and scope, which already tells accounts apart) after ``prefix``
(``guru_async:token:`` by default):

- ``{prefix}KEY``, a hash (``access_token``, ``token_type``, ``lifetime``, ``margin``): the
  token. TTL: its lifetime less a margin (a tenth of the lifetime, at most 30 s).
- ``{prefix}KEY:lock``, a string (the holder's random value): the refresh lock. TTL:
  ``lock_timeout`` (10 s), renewed every third of it while the holder's token request runs.
- ``{prefix}KEY:failure``, a string (JSON: ``type``, ``status``, ``message``, ``body``,
  ``retry_after``): the token endpoint's refusal of the last fetch. TTL: as long as a session
  remembers it (1 s, or its ``Retry-After`` up to 60 s), on Redis's clock; deleted when a token
  is saved.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from types import TracebackType

import redis.asyncio as redis_async

from .._aio import wait_for
from .._auth import Token, reusable
from .._errors import APIError, GuruError
from .._token_failure import rebuilt, shared_record
from ._redis import RedisLink, Unavailable, log

DEFAULT_PREFIX = "guru_async:token:"

# The token's key expires on Redis's clock this long before the token does (a tenth of the
# lifetime for short-lived tokens), so no process is ever handed a token about to run out;
# processes refresh earlier still, by Token.is_fresh's own margin.
_KEY_MARGIN = 30.0
_KEY_FRACTION = 0.1
# Waiters re-read the token this often (growing), while another process fetches it.
_POLL_FIRST = 0.02
_POLL_MAX = 0.2

# Compare-and-delete: only the owner of the lock (its random value) may release it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
# Extend the lock while its owner's token request runs, only while the owner still holds it.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# Keep a failed fetch for the others, only while its owner still holds the lock: a holder that
# lost it (frozen past lock_timeout) must not overwrite what the next holder learned.
_REMEMBER_FAILURE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""
# Drop the stored token only if it is still the one that failed, so a 401 on an old token
# never deletes the fresh one another process has just saved.
_DISCARD = """
if redis.call('HGET', KEYS[1], 'access_token') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

FetchToken = Callable[[], Awaitable[Token]]


class RedisTokenStore:
    """Tokens in Redis, shared by every process of a fleet, with one refresh for all of them.

    A ``TokenStore`` (``load``/``save``), plus what a session uses to refresh a token once for
    the whole fleet (``fetch_once``) and to drop one the API rejected (``discard``)::

        async with RedisTokenStore("redis://cache:6379/0") as store:
            async with GuruSession(token_store=store) as guru:
                ...

    How a refresh goes: the process that needs a token takes a short lock (``SET NX PX`` with
    a random value, released by compare-and-delete), re-reads the token, and fetches one only if
    none is there; the others poll the token's key and use what it saved. The holder renews its
    lock every third of ``lock_timeout`` for as long as its token request runs (the session
    allows it up to ``Timeouts.total``, retries included), so a slow request is never made
    twice; if the holder dies or freezes, its lock expires after ``lock_timeout`` and the next
    process takes over. A waiting call is bounded by its own ``Timeouts.total``. The token's key
    expires on Redis's clock a margin before the token does, and a token read back takes its
    lifetime from that key's TTL, so the machines' clocks never matter.

    A fetch the token endpoint refused (a 429 or 503 with ``Retry-After``, rejected
    credentials: any ``APIError``) is stored beside the token, under the lock, for as long as a
    session remembers it (1 s, or its ``Retry-After`` up to 60 s, on Redis's clock); every
    process that comes for a token meanwhile raises it (same type and status, ``retry_after``
    the time left) without asking the endpoint again. A failure to reach the endpoint
    (``GuruConnectionError``) may be one machine's network: it is not stored, and the others
    still ask.

    Redis down, slow or refusing the password never fails a call: the process keeps its own
    copy of the token, fetches for itself when it needs one (still one fetch at a time within
    the process), logs one WARNING per outage, and tries Redis again every ``cooldown``
    seconds. Call ``check()`` to fail fast instead.

    Security: the stored token is a bearer secret: anyone who can read this Redis can call the
    Guru API as your account until the token expires (an hour). Keep Redis private, require a
    password (``redis://:PASSWORD@host:6379/0``) or an ACL user, and use ``rediss://`` (TLS)
    across networks. The client secret never goes to Redis (keys hold a hash of the
    credentials), and neither the token nor the Redis password reaches logs, reprs or errors.

    Keys written (``KEY`` is the session's credentials hash, ``guru:<sha256>``): the token as a
    hash at ``{prefix}KEY`` (fields ``access_token``, ``token_type``, ``lifetime``,
    ``margin``; expires with the token), the refresh lock as a string at ``{prefix}KEY:lock``
    (expires after ``lock_timeout``, renewed while its holder fetches), and a refused fetch as
    a JSON string at ``{prefix}KEY:failure`` (expires when the failure's memory runs out).

    Args:
        redis: A ``redis://``, ``rediss://`` or ``unix://`` URL (the store then owns its
            connections: close it with ``aclose()`` or ``async with``), or a
            ``redis.asyncio.Redis`` that the caller owns and closes.
        prefix: Put before every key this store writes.
        lock_timeout: How long the refresh lock lives in Redis unless renewed, in seconds:
            how long the others wait for a process that died or froze while fetching. Its
            holder renews it every third of that while its token request runs.
        timeout: The longest one Redis operation may take before Redis counts as down.
        cooldown: How long to use the local fallback after Redis failed before trying again.
    """

    def __init__(
        self,
        redis: str | redis_async.Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        lock_timeout: float = 10.0,
        timeout: float = 1.0,
        cooldown: float = 5.0,
    ) -> None:
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
        self._link = RedisLink(
            redis,
            what="its token",
            fallback="this process fetches and keeps its own token",
            timeout=timeout,
            cooldown=cooldown,
        )
        if isinstance(lock_timeout, bool) or not isinstance(lock_timeout, (int, float)):
            raise ValueError(f"lock_timeout must be a number of seconds, got {lock_timeout!r}")
        if not 0.01 <= lock_timeout <= 3600:
            raise ValueError(f"lock_timeout must be between 0.01 and 3600 s, got {lock_timeout!r}")
        self.prefix = prefix
        self.lock_timeout = float(lock_timeout)
        # This process's copy of each token: what calls use while Redis is unavailable.
        self._local: dict[str, Token] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._locks_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"RedisTokenStore({self._link.where!r}, prefix={self.prefix!r})"

    async def __aenter__(self) -> RedisTokenStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections this store opened (not a caller's client). It can still be
        used afterwards: it reconnects when needed."""
        await self._link.aclose()

    async def check(self) -> None:
        """Raise ``RedisUnavailableError`` (naming the server, never its password) unless Redis
        answers now: for a worker that should refuse to start without its fleet's Redis."""
        await self._link.check()

    # -- TokenStore ------------------------------------------------------------------------

    async def load(self, key: str) -> Token | None:
        """Return the token stored for ``key`` (this process's copy while Redis is down)."""
        try:
            token = await self._read(key)
        except Unavailable:
            return self._local.get(key)
        if token is not None:
            self._local[key] = token
        return token

    async def save(self, key: str, token: Token) -> None:
        """Store ``token`` for ``key`` until shortly before it expires."""
        self._local[key] = token
        with contextlib.suppress(Unavailable):
            await self._write(key, token)

    # -- fleet-wide refresh ----------------------------------------------------------------

    async def fetch_once(self, key: str, fetch: FetchToken, *, stale: str | None) -> Token:
        """Return a fresh token for ``key``, calling ``fetch`` only if no process has one.

        Under the fleet's lock for ``key``: re-read the stored token and return it if it is
        fresh and not ``stale`` (the token the API just rejected); else fetch one, save it,
        release the lock and return it. Redis unavailable: fetch for this process.

        Args:
            key: The credentials' store key.
            fetch: Requests a new token from the token endpoint; its errors propagate.
            stale: An access token known to be rejected, never to be returned; or None.
        """
        async with self._local_lock(key):
            # Callers of this process queue here; the ones after the first reuse its token.
            token = self._local.get(key)
            if reusable(token, stale):
                return token
            try:
                return await self._fetch_fleet_wide(key, fetch, stale)
            except Unavailable:
                pass
            token = self._local.get(key)
            if reusable(token, stale):
                return token
            token = await fetch()
            self._local[key] = token
            return token

    async def discard(self, key: str, access_token: str) -> None:
        """Drop the token stored for ``key`` if it is still ``access_token`` (after a 401)."""
        local = self._local.get(key)
        if local is not None and local.access_token == access_token:
            del self._local[key]
        with contextlib.suppress(Unavailable):
            await self._link.run(lambda r: r.eval(_DISCARD, 1, self._token_key(key), access_token))

    async def _fetch_fleet_wide(self, key: str, fetch: FetchToken, stale: str | None) -> Token:
        lock_key = self._token_key(key) + ":lock"
        lock_ms = max(1, round(self.lock_timeout * 1000))
        delay = _POLL_FIRST
        while True:
            token = await self._stored_or_raise(key, stale)
            if token is not None:
                return token
            owner = secrets.token_hex(16)
            if await self._take_lock(lock_key, owner, lock_ms):
                try:
                    # Re-read: the previous holder may have saved a token (or its failure) just
                    # before releasing.
                    token = await self._stored_or_raise(key, stale)
                    if token is not None:
                        return token
                    return await self._fetch_holding(key, fetch, lock_key, owner, lock_ms)
                finally:
                    with contextlib.suppress(Unavailable):
                        await self._release_lock(lock_key, owner)
            # The holder renews its lock while it fetches: wait for what it stores for as long
            # as it lives. The call's own deadline bounds this (TokenProvider cancels the
            # refresh once no caller waits), and a dead holder's lock expires.
            await asyncio.sleep(delay * (0.5 + secrets.randbelow(1000) / 1000))
            delay = min(delay * 1.5, _POLL_MAX)

    async def _stored_or_raise(self, key: str, stale: str | None) -> Token | None:
        """The stored token if it is reusable; else raise the stored failure if there is one;
        else None."""
        token, failure = await self._read_state(key)
        if reusable(token, stale):
            self._local[key] = token
            return token
        if failure is not None:
            raise failure
        return None

    async def _take_lock(self, lock_key: str, owner: str, lock_ms: int) -> bool:
        return bool(await self._link.run(lambda r: r.set(lock_key, owner, nx=True, px=lock_ms)))

    async def _release_lock(self, lock_key: str, owner: str) -> None:
        await self._link.run(lambda r: r.eval(_RELEASE, 1, lock_key, owner))

    async def _fetch_holding(
        self, key: str, fetch: FetchToken, lock_key: str, owner: str, lock_ms: int
    ) -> Token:
        """Fetch under the lock, renewing it meanwhile; save the token, or store the failure
        for the other processes if it is one to share."""
        # Set when the fetch ends: the renewal also stops on it, so a cancellation it swallowed
        # (turned into a Redis timeout on its way) cannot keep it, and this fetch, waiting.
        done = asyncio.Event()
        renewal = asyncio.ensure_future(self._renew(lock_key, owner, lock_ms, done))
        try:
            token = await fetch()
        except GuruError as exc:
            shared = shared_record(exc)
            if shared is not None:
                with contextlib.suppress(Unavailable):
                    await self._remember_failure(key, lock_key, owner, *shared)
            raise
        finally:
            done.set()
            renewal.cancel()
            await asyncio.wait({renewal})
        self._local[key] = token
        with contextlib.suppress(Unavailable):
            await self._write(key, token)
        return token

    async def _renew(self, lock_key: str, owner: str, lock_ms: int, done: asyncio.Event) -> None:
        while not done.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await wait_for(done.wait(), self.lock_timeout / 3)
            if done.is_set():
                return
            try:
                held = await self._link.run(
                    lambda r: r.eval(_RENEW, 1, lock_key, owner, str(lock_ms))
                )
            except Unavailable:
                continue  # the breaker said so once; the lock may still be there next time
            if not held:
                # Frozen past lock_timeout, or Redis lost its data: another process may be
                # fetching too. Nothing to do about it but let this fetch finish.
                log.info(
                    "the token refresh lock at %s expired while this process fetched a token",
                    self._link.where,
                )
                return

    async def _remember_failure(
        self, key: str, lock_key: str, owner: str, record: dict[str, object], memory: float
    ) -> None:
        failure_key = self._token_key(key) + ":failure"
        value = json.dumps(record)
        ms = str(max(1, round(memory * 1000)))
        await self._link.run(
            lambda r: r.eval(_REMEMBER_FAILURE, 2, lock_key, failure_key, owner, value, ms)
        )

    async def _read(self, key: str) -> Token | None:
        def read(r: redis_async.Redis) -> Awaitable[list[object]]:
            # One transaction, so the fields and the TTL belong to the same token.
            pipe = r.pipeline(transaction=True)
            pipe.hgetall(self._token_key(key))
            pipe.pttl(self._token_key(key))
            return pipe.execute()

        fields, pttl = await self._link.run(read)
        assert isinstance(fields, dict)
        assert isinstance(pttl, int)
        return _decode(fields, pttl)

    async def _read_state(self, key: str) -> tuple[Token | None, APIError | None]:
        token_key = self._token_key(key)

        def read(r: redis_async.Redis) -> Awaitable[list[object]]:
            pipe = r.pipeline(transaction=True)
            pipe.hgetall(token_key)
            pipe.pttl(token_key)
            pipe.get(token_key + ":failure")
            pipe.pttl(token_key + ":failure")
            return pipe.execute()

        fields, pttl, failure, failure_pttl = await self._link.run(read)
        assert isinstance(fields, dict)
        assert isinstance(pttl, int)
        assert isinstance(failure_pttl, int)
        return _decode(fields, pttl), _decode_failure(failure, failure_pttl)

    async def _write(self, key: str, token: Token) -> None:
        now = time.time()
        remaining = token.expires_at - now
        lifetime = None if token.issued_at is None else token.expires_at - token.issued_at
        margin = min(_KEY_MARGIN, _KEY_FRACTION * (lifetime if lifetime else remaining))
        ttl_ms = round((remaining - margin) * 1000)
        if ttl_ms <= 0:
            return  # too close to expiry to be worth sharing
        mapping = {
            "access_token": token.access_token,
            "token_type": token.token_type,
            "lifetime": "" if lifetime is None else repr(lifetime),
            "margin": repr(margin),
        }

        def write(r: redis_async.Redis) -> Awaitable[list[object]]:
            pipe = r.pipeline(transaction=True)
            pipe.delete(self._token_key(key))
            pipe.hset(self._token_key(key), mapping=mapping)
            pipe.pexpire(self._token_key(key), ttl_ms)
            pipe.delete(self._token_key(key) + ":failure")  # a token now: nothing failed
            return pipe.execute()

        await self._link.run(write)

    def _token_key(self, key: str) -> str:
        return self.prefix + key

    def _local_lock(self, key: str) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._locks_loop is not loop:
            self._locks, self._locks_loop = {}, loop
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock


def _decode(fields: dict[object, object], pttl: int) -> Token | None:
    """A stored token, its expiry taken from the key's TTL (Redis's clock), or None."""
    if pttl <= 0 or not fields:
        return None
    try:
        text = {_text(k): _text(v) for k, v in fields.items()}
        margin = float(text["margin"])
        expires_at = time.time() + pttl / 1000 + margin
        lifetime = float(text["lifetime"]) if text.get("lifetime") else None
        return Token(
            access_token=text["access_token"],
            expires_at=expires_at,
            token_type=text.get("token_type", "Bearer"),
            issued_at=None if lifetime is None else expires_at - lifetime,
        )
    except (KeyError, ValueError, UnicodeDecodeError):
        return None  # a foreign or damaged value: fetch a fresh token rather than fail


def _decode_failure(raw: object, pttl: int) -> APIError | None:
    """A stored failure with its memory's time left (the key's TTL, on Redis's clock), or None
    when there is none or it is a value this version cannot read."""
    if raw is None or pttl <= 0:
        return None
    try:
        record = json.loads(_text(raw))
    except (ValueError, UnicodeDecodeError):
        return None
    return rebuilt(record, pttl / 1000)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
