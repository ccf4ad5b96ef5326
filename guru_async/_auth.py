"""OAuth client-credentials tokens, the whole story: the exchange with the token endpoint,
the token, where it is kept, and how it is refreshed.

The API reference asks clients to store a token with its expiry and reuse it until it runs
out, since fetching one per call gets an account rate limited. ``ClientCredentials`` is the
exchange (one form POST, decoded into a ``Token``); ``TokenProvider`` hands tokens out: one
token per credentials, reused until shortly before it expires, refreshed by exactly one caller
at a time however many are waiting, and kept in a ``TokenStore`` so other sessions (and, with
``FileTokenStore``, other processes and restarts) reuse it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import os
import sys
import tempfile
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Protocol, TypeGuard, runtime_checkable
from urllib.parse import urlencode

from attrs import field, frozen
from yarl import URL

from . import _routes as routes
from ._aio import run_owning
from ._converter import decode_json
from ._error_mapping import token_error
from ._errors import (
    APIError,
    GuruConnectionError,
    GuruError,
    ResponseDecodeError,
    SessionClosedError,
)
from ._token_failure import memory_of, rebuilt, shared_record
from ._transport import Request, Response

if sys.platform != "win32":
    import fcntl

# Refresh this long before expiry, so a token never expires between check and use; for short
# lifetimes (tests, token churn) a fraction of the lifetime instead.
_REFRESH_MARGIN = 60.0
_REFRESH_FRACTION = 0.2


@frozen
class Token:
    """An access token and when it expires.

    Attributes:
        access_token: The opaque token sent as ``Authorization`` (hidden from repr).
        expires_at: Expiry as a Unix timestamp (seconds).
        token_type: The token type the endpoint reported (``Bearer``); the Guru API takes the
            raw token without it.
        issued_at: When the token was obtained (Unix time), used to refresh short-lived tokens
            in proportion to their lifetime; None when unknown.
    """

    access_token: str = field(repr=False)
    expires_at: float
    token_type: str = "Bearer"  # noqa: S105 - a token type, not a secret
    issued_at: float | None = None

    def is_fresh(self, now: float | None = None) -> bool:
        """True while the token can still be used with a safety margin before expiry."""
        now = time.time() if now is None else now
        margin = _REFRESH_MARGIN
        if self.issued_at is not None:
            margin = min(margin, (self.expires_at - self.issued_at) * _REFRESH_FRACTION)
        return now < self.expires_at - margin


def reusable(token: Token | None, stale: str | None) -> TypeGuard[Token]:
    """Whether a stored token can be handed out instead of fetching one: it is fresh, and it
    is not ``stale`` (the token the API just rejected), the rule of ``fetch_once``."""
    return token is not None and token.is_fresh() and token.access_token != stale


@runtime_checkable
class TokenStore(Protocol):
    """Where tokens are kept between calls, sessions and (for persistent stores) restarts.

    ``key`` identifies the credentials (a hash: it never contains the secret). Implement this
    to keep tokens in Redis, a database or a secrets manager shared by many workers.

    A store shared by several processes MAY also implement two optional methods, which the
    session detects at runtime and then uses (``FileTokenStore`` has both):

    ``async def fetch_once(self, key: str, fetch: Callable[[], Awaitable[Token]], *,
    stale: str | None) -> Token``
        Cross-process single flight: take the store's lock; re-read ``key``; if a fresh token
        whose ``access_token`` is not ``stale`` (the token the API just rejected, or None) is
        stored, return it; else ``token = await fetch()``, save it, release the lock and return
        it. Processes starting together then make one token request between them. A store
        shared by processes should also keep a failed fetch worth sharing (see
        ``_token_failure.shared_record``) under the lock, and raise it (``rebuilt``) instead of
        fetching until its memory runs out, as ``FileTokenStore`` and ``RedisTokenStore`` do.

    ``async def discard(self, key: str, access_token: str) -> None``
        Compare-and-delete after a 401: drop the stored token only if it is still
        ``access_token``, so a token another process stored meanwhile survives.
    """

    async def load(self, key: str) -> Token | None:
        """Return the stored token for ``key``, or None."""
        ...

    async def save(self, key: str, token: Token) -> None:
        """Store ``token`` for ``key``, replacing any earlier one."""
        ...


class MemoryTokenStore:
    """Tokens in this process's memory.

    The default store is one shared instance, so every session of a process with the same
    credentials reuses one token.
    """

    def __init__(self) -> None:
        self._tokens: dict[str, Token] = {}

    async def load(self, key: str) -> Token | None:
        """Return the token saved for ``key``, or None."""
        return self._tokens.get(key)

    async def save(self, key: str, token: Token) -> None:
        """Keep ``token`` for ``key``."""
        self._tokens[key] = token

    def __repr__(self) -> str:
        return f"MemoryTokenStore(<{len(self._tokens)} tokens>)"


DEFAULT_TOKEN_STORE = MemoryTokenStore()


class FileTokenStore:
    """Tokens in a JSON file that survives restarts and is shared by processes.

    The file is created with mode 0600 inside a folder created with mode 0700, and replaced
    atomically (write a temporary file, then rename), so a reader never sees half a file. A
    corrupt or foreign file is ignored and replaced on the next save, never a crash.

    Writers take an advisory lock (``fcntl.flock`` on the sidecar file ``<path>.lock``, 0600)
    and merge their key into what the file holds under it, so concurrent saves of different
    keys, from any number of tasks or processes, all survive. The store also implements the
    optional ``fetch_once``/``discard`` methods of ``TokenStore``: processes starting together
    make one token request, the first one's, and the others read its token. A fetch the token
    endpoint refused (a 429 with ``Retry-After``, rejected credentials, a 5xx) is kept in the
    sidecar file ``<path>.failures`` (0600) for as long as a session remembers it (1 s, or the
    ``Retry-After``, up to 60 s), and every process raises it from there instead of asking
    again; a network failure on the way to the endpoint is not kept. The lock is held for the
    whole fetch however long it takes, so a slow fetch is never made twice. Waiting for the
    lock happens in a worker thread, never on the event loop. (On Windows there is no
    ``flock``: only tasks of one process are coordinated.)

    Args:
        path: The file to keep tokens in, e.g. ``~/.cache/guru-async/tokens.json``.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser()
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._failures_path = self.path.with_name(self.path.name + ".failures")

    async def load(self, key: str) -> Token | None:
        """Return the token saved for ``key``, or None (also when the file is unreadable)."""
        return _token_from((await asyncio.to_thread(self._read)).get(key))

    async def save(self, key: str, token: Token) -> None:
        """Save ``token`` for ``key``, keeping other keys' tokens that are still valid."""
        async with self._process_guard():
            await asyncio.to_thread(self._locked_save, key, token)

    async def fetch_once(self, key: str, fetch: FetchToken, *, stale: str | None) -> Token:
        """Return the fresh token stored for ``key`` (unless it is ``stale``), else fetch and
        save one, all under the file lock, so concurrent processes make one fetch.

        A fetch that the token endpoint refused (see ``_token_failure``) is kept beside the
        file, and raised again by every process that comes for a token until its memory (1 s,
        or the ``Retry-After`` it carried, up to 60 s) runs out.

        Args:
            key: The credentials' store key.
            fetch: Gets a new token from the token endpoint.
            stale: A token the API rejected, never to be returned; None if there is none.
        """
        async with self._process_guard():
            # Cancelled while waiting for the lock: it is released as soon as the thread has it.
            fd = await run_owning(self._lock, os.close)
            handed_off = False
            try:
                tokens, failures = await asyncio.to_thread(self._read_both)
                stored = _token_from(tokens.get(key))
                if reusable(stored, stale):
                    return stored
                failure = _failure_from(failures.get(key))
                if failure is not None:
                    raise failure
                try:
                    token = await fetch()
                except GuruError as exc:
                    shared = shared_record(exc)
                    if shared is not None:
                        handed_off = True
                        await asyncio.to_thread(self._save_failure_and_unlock, fd, key, *shared)
                    raise
                # The thread releases the lock after writing, even if this task is cancelled
                # meanwhile: the lock must cover the whole write.
                handed_off = True
                await asyncio.to_thread(self._save_and_unlock, fd, key, token)
                return token
            finally:
                if not handed_off:
                    os.close(fd)

    async def discard(self, key: str, access_token: str) -> None:
        """Delete the token saved for ``key`` if it is still ``access_token``."""
        async with self._process_guard():
            await asyncio.to_thread(self._locked_discard, key, access_token)

    @contextlib.asynccontextmanager
    async def _process_guard(self) -> AsyncIterator[None]:
        # One task per process and file waits for the file lock at a time: waiters blocked in
        # flock would otherwise fill the default executor, which the lock holder needs to
        # finish its write.
        loop = asyncio.get_running_loop()
        guard_key = (id(loop), str(self.path.absolute()))
        guard = _FILE_GUARDS.get(guard_key)
        if guard is None:
            guard = _FILE_GUARDS[guard_key] = asyncio.Lock()
        async with guard:
            yield

    def _lock(self) -> int:
        """Open the sidecar lock file and wait for its exclusive lock; return its descriptor."""
        self._make_folder()
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if sys.platform != "win32":
                fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _locked_save(self, key: str, token: Token) -> None:
        self._save_and_unlock(self._lock(), key, token)

    def _save_and_unlock(self, fd: int, key: str, token: Token) -> None:
        try:
            data = self._valid_entries()
            data[key] = {
                "access_token": token.access_token,
                "expires_at": token.expires_at,
                "token_type": token.token_type,
                "issued_at": token.issued_at,
            }
            self._replace(self.path, data)
            failures = self._live_failures()
            if failures.pop(key, None) is not None:
                self._replace(self._failures_path, failures)
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _save_failure_and_unlock(
        self, fd: int, key: str, record: dict[str, object], memory: float
    ) -> None:
        try:
            failures = self._live_failures()
            # Wall-clock time: every process sharing this file runs on the machine it is on.
            failures[key] = {**record, "until": time.time() + memory}
            self._replace(self._failures_path, failures)
        finally:
            os.close(fd)

    def _locked_discard(self, key: str, access_token: str) -> None:
        fd = self._lock()
        try:
            data = self._read()
            entry = data.get(key)
            if isinstance(entry, dict) and entry.get("access_token") == access_token:
                data = self._valid_entries()
                data.pop(key, None)
                self._replace(self.path, data)
        finally:
            os.close(fd)

    def _read(self, path: Path | None = None) -> dict[str, object]:
        try:
            data = json.loads((path or self.path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _read_both(self) -> tuple[dict[str, object], dict[str, object]]:
        return self._read(), self._read(self._failures_path)

    def _live_failures(self) -> dict[str, object]:
        now = time.time()
        return {
            k: v
            for k, v in self._read(self._failures_path).items()
            if isinstance(v, dict) and isinstance(v.get("until"), (int, float)) and v["until"] > now
        }

    def _valid_entries(self) -> dict[str, object]:
        now = time.time()
        return {
            k: v
            for k, v in self._read().items()
            if isinstance(v, dict)
            and isinstance(v.get("expires_at"), (int, float))
            and v["expires_at"] > now
        }

    def _make_folder(self) -> None:
        folder = self.path.parent
        # Every folder this creates is private (mkdir(parents=True) would give the parents
        # the default mode).
        missing = [p for p in (folder, *folder.parents) if not p.exists()]
        for path in reversed(missing):
            path.mkdir(mode=0o700, exist_ok=True)

    def _replace(self, path: Path, data: dict[str, object]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".tokens-", dir=path.parent)  # created 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def __repr__(self) -> str:
        return f"FileTokenStore({str(self.path)!r})"


# Held only while a task holds or waits for them (weak values).
_FILE_GUARDS: weakref.WeakValueDictionary[tuple[int, str], asyncio.Lock] = (
    weakref.WeakValueDictionary()
)


def _token_from(entry: object) -> Token | None:
    if not isinstance(entry, dict):
        return None
    try:
        return Token(
            access_token=str(entry["access_token"]),
            expires_at=float(entry["expires_at"]),
            token_type=str(entry.get("token_type", "Bearer")),
            issued_at=None if entry.get("issued_at") is None else float(entry["issued_at"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


def _failure_from(entry: object) -> APIError | None:
    """A failure kept beside the token file, while its memory lasts."""
    if not isinstance(entry, dict) or not isinstance(entry.get("until"), (int, float)):
        return None
    return rebuilt(entry, entry["until"] - time.time())


def credentials_key(token_url: str, client_id: str, client_secret: str, scope: str) -> str:
    """A store key for one set of credentials; a hash, so the secret never appears in it."""
    material = "\0".join((token_url, client_id, client_secret, scope)).encode()
    return "guru:" + hashlib.sha256(material).hexdigest()


FetchToken = Callable[[], Awaitable[Token]]


class ClientCredentials:
    """The OAuth 2.0 client-credentials exchange: calling it gets a new token.

    One ``application/x-www-form-urlencoded`` POST of ``grant_type=client_credentials``,
    ``client_id``, ``client_secret`` and ``scope`` to the token endpoint, sent through ``send``
    (the session's transport, so it has the session's retries and timeouts), its answer decoded
    into a ``Token``. Rejected credentials raise ``AuthenticationError``; the secret never
    appears in a repr, an error or a log line.

    Args:
        token_url: The token endpoint.
        client_id: The OAuth client id.
        client_secret: The OAuth client secret.
        scope: The scope requested.
        send: Sends a request and returns its decoded result.
    """

    def __init__(
        self,
        *,
        token_url: URL,
        client_id: str,
        client_secret: str,
        scope: str,
        send: Callable[[Request[Token]], Awaitable[Token]],
    ) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self._client_secret = client_secret
        self.scope = scope
        self._send = send
        self.key = credentials_key(str(token_url), client_id, client_secret, scope)

    async def __call__(self) -> Token:
        """Ask the token endpoint for a new token."""
        form = urlencode(
            {
                "grant_type": "client_credentials",
                "client_id": self.client_id,
                "client_secret": self._client_secret,
                "scope": self.scope,
            }
        ).encode()
        return await self._send(
            Request(
                method="POST",
                url=self.token_url,
                what="Token request",
                errors=token_error,
                decode=_decode_token,
                body=lambda: form,
                headers={"Content-Type": "application/x-www-form-urlencoded"},
                route=routes.TOKEN,
            )
        )

    def __repr__(self) -> str:
        return f"ClientCredentials(token_url={str(self.token_url)!r}, client_id={self.client_id!r})"


def _decode_token(resp: Response) -> Token:
    data = decode_json(resp.body, what="Token request", status=resp.status, echo=False)
    token = data.get("access_token") if isinstance(data, dict) else None
    expires_in = data.get("expires_in") if isinstance(data, dict) else None
    if (
        not isinstance(token, str)
        or not token
        or isinstance(expires_in, bool)
        or not isinstance(expires_in, (int, float))
    ):
        # Never echo this body: it may hold a token.
        raise ResponseDecodeError(
            "Token request: response lacks access_token or a numeric expires_in",
            status=resp.status,
        )
    now = time.time()
    token_type = data.get("token_type")
    return Token(
        access_token=token,
        expires_at=now + float(expires_in),
        token_type=token_type if isinstance(token_type, str) else "Bearer",
        issued_at=now,
    )


REJECTED_TOKEN_COOLDOWN = 60.0
"""Seconds during which a 401 is raised as it is, with no refresh, after a freshly fetched token
was rejected too: a new token would not help, and fetching one per call gets an account rate
limited. After the cool-down, the next 401 refreshes once again."""


class _Shared:
    """The token state every provider of one event loop with the same store and credentials
    shares: sessions sharing a token store share one refresh, its failure and its cool-down."""

    __slots__ = (
        "__weakref__",
        "cool_until",
        "failed_until",
        "failure",
        "failure_tb",
        "flight",
        "flight_owner",
        "rejected",
        "token",
        "waiters",
    )

    def __init__(self) -> None:
        self.token: Token | None = None
        # The refresh in flight, awaited by every caller that needs a token meanwhile.
        self.flight: asyncio.Task[Token] | None = None
        self.flight_owner: TokenProvider | None = None  # whose fetch the flight sends
        self.waiters = 0
        self.failure: BaseException | None = None
        self.failure_tb: TracebackType | None = None
        self.failed_until = 0.0
        self.rejected: str | None = None  # the latest token the API answered 401 to
        self.cool_until = 0.0  # until then, 401s stand without refresh


# Held only while some provider holds them (weak values), so states of finished loops go away.
_SHARED: weakref.WeakValueDictionary[tuple[int, int, str], _Shared] = weakref.WeakValueDictionary()


class TokenProvider:
    """Hands out a fresh token, refreshing it single-flight through ``fetch``.

    Every caller that needs a token while a refresh is in flight awaits that one refresh, each
    for no longer than its own deadline; a failed refresh is shared with all of them and
    remembered for ``FAILED_FETCH_MEMORY`` seconds (or the ``Retry-After`` it carried, see
    ``_token_failure``); a caller that was not cancelled never gets ``CancelledError`` from a
    refresh another caller gave up on. A 401 refreshes once, however many calls got it on the
    same token; when a call's retry with the fresh token is rejected too, 401s stand without
    refresh for ``REJECTED_TOKEN_COOLDOWN`` seconds.
    """

    def __init__(self, *, key: str, store: TokenStore, fetch: FetchToken) -> None:
        self._key = key
        self._store = store
        self._fetch = fetch
        self._shared: _Shared | None = None
        self._shared_loop: asyncio.AbstractEventLoop | None = None

    @property
    def key(self) -> str:
        """The credentials' store key (a hash: never the secret)."""
        return self._key

    @property
    def store(self) -> TokenStore:
        """Where tokens are kept."""
        return self._store

    def fresh(self) -> str | None:
        """The token in hand if it is fresh, else None (then ``get`` one): what every call
        but the first few in a token's life needs, without a coroutine."""
        token = self._state().token
        if token is not None and token.is_fresh():
            return token.access_token
        return None

    async def get(self, deadline: float | None = None) -> str:
        """Return a usable access token, fetching one only when none is fresh.

        Args:
            deadline: The caller's deadline (``time.monotonic()``); waiting for a refresh in
                flight ends there with ``GuruConnectionError``, the refresh going on for others.
        """
        shared = self._state()
        token = shared.token
        if token is not None and token.is_fresh():
            return token.access_token
        while True:
            if shared.failure is not None and time.monotonic() < shared.failed_until:
                # Like a Future's result: the same error for everyone, its traceback not growing.
                raise shared.failure.with_traceback(shared.failure_tb)
            flight = shared.flight
            if flight is None:
                flight = shared.flight = asyncio.ensure_future(self._refresh(shared))
                flight.add_done_callback(functools.partial(_landed, shared))
                shared.flight_owner = self
            owner = shared.flight_owner
            shared.waiters += 1
            try:
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                done, _ = await asyncio.wait({flight}, timeout=timeout)
            finally:
                shared.waiters -= 1
                if shared.waiters == 0 and not flight.done():
                    flight.cancel()  # nobody wants it any more
                    # Forgotten at once, not when it lands: a caller arriving before then
                    # starts a refresh of its own instead of awaiting a cancelled one.
                    if shared.flight is flight:
                        shared.flight = shared.flight_owner = None
            if not done:
                raise GuruConnectionError(
                    "Token request: timed out waiting for a token (the call's Timeouts.total "
                    "ran out)"
                )
            if flight.cancelled():
                # Not this caller's cancellation (that would have raised in wait): the refresh
                # was cancelled by another party, e.g. its last waiter leaving. Start anew.
                continue
            if owner is not self and isinstance(flight.exception(), SessionClosedError):
                continue  # another session, closed meanwhile, sent it: this one is open
            return flight.result().access_token

    async def _refresh(self, shared: _Shared) -> Token:
        stale = shared.rejected
        stored = await self._store.load(self._key)
        if reusable(stored, stale):
            return stored
        fetch_once = getattr(self._store, "fetch_once", None)
        if fetch_once is not None:
            # The store coordinates processes: the first one's fetch serves the others.
            token: Token = await fetch_once(self._key, self._fetch, stale=stale)
            return token
        token = await self._fetch()
        await self._store.save(self._key, token)
        return token

    def _state(self) -> _Shared:
        loop = asyncio.get_running_loop()
        if self._shared is None or self._shared_loop is not loop:
            key = (id(loop), id(self._store), self._key)
            shared = _SHARED.get(key)
            if shared is None:
                shared = _SHARED[key] = _Shared()
            self._shared, self._shared_loop = shared, loop
        return self._shared

    async def invalidate(self, access_token: str, *, refreshed: bool = False) -> bool:
        """Handle a 401 the API answered to ``access_token``.

        Args:
            access_token: The rejected token.
            refreshed: The call already refreshed once: ``access_token`` is the fresh token
                that was to cure its first 401.

        Returns:
            True when the call should be retried with a fresh token (the next get() refreshes,
            once for every call rejected on this token); False when the 401 stands: a fresh
            token was rejected too (which starts the cool-down), or the cool-down is running.
            When it refreshes, a store with ``discard`` drops the rejected token too, unless
            another token replaced it meanwhile.
        """
        shared = self._state()
        now = time.monotonic()
        if now < shared.cool_until:
            return False
        current = shared.token
        if refreshed:
            if current is not None and current.access_token == access_token:
                # A new token did not help: more would not either, and fetching one per call
                # gets the account rate limited. Keep this one (other routes may take it).
                shared.cool_until = now + REJECTED_TOKEN_COOLDOWN
            return False
        if access_token == shared.rejected or (
            current is not None and current.access_token != access_token
        ):
            return True  # already being replaced, or replaced: the next get() has the new one
        shared.rejected = access_token
        shared.token = None
        discard = getattr(self._store, "discard", None)
        if discard is not None:
            await discard(self._key, access_token)
        return True

    def __repr__(self) -> str:
        return f"TokenProvider(store={self._store!r})"


def _landed(shared: _Shared, flight: asyncio.Task[Token]) -> None:
    """Record how a refresh ended, for the callers that come after it."""
    if shared.flight is flight:
        shared.flight = shared.flight_owner = None
    if flight.cancelled():
        return
    error = flight.exception()
    if error is None:
        token = flight.result()
        shared.token = token
        shared.failure = shared.failure_tb = None
        return
    # The same rule as a shared store's (memory_of): a failure another process stored is
    # remembered here just as long as it is there.
    memory = memory_of(error)
    if memory is not None:
        shared.failure, shared.failure_tb = error, error.__traceback__
        shared.failed_until = time.monotonic() + memory


class StaticTokenProvider:
    """A ready token given by the caller: never refreshed, so a 401 is final."""

    def __init__(self, access_token: str) -> None:
        self._access_token = access_token

    def fresh(self) -> str:
        """Return the caller's token."""
        return self._access_token

    async def get(self, deadline: float | None = None) -> str:
        """Return the caller's token."""
        return self._access_token

    async def invalidate(self, access_token: str, *, refreshed: bool = False) -> bool:
        """Nothing to refresh (the caller owns this token): the 401 stands."""
        return False
