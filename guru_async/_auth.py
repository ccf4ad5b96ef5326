"""OAuth client-credentials tokens: the token, where it is kept, and how it is refreshed.

The API reference asks clients to store a token with its expiry and reuse it until it runs
out, since fetching one per call gets an account rate limited. ``TokenProvider`` does that:
one token per credentials, reused until shortly before it expires, refreshed by exactly one
caller at a time however many are waiting, and kept in a ``TokenStore`` so other sessions (and,
with ``FileTokenStore``, other processes and restarts) reuse it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import sys
import tempfile
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

from attrs import field, frozen

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
        it. Processes starting together then make one token request between them.

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
    make one token request, the first one's, and the others read its token. Waiting for the
    lock happens in a worker thread, never on the event loop. (On Windows there is no
    ``flock``: only tasks of one process are coordinated.)

    Args:
        path: The file to keep tokens in, e.g. ``~/.cache/guru-async/tokens.json``.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser()
        self._lock_path = self.path.with_name(self.path.name + ".lock")

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

        Args:
            key: The credentials' store key.
            fetch: Gets a new token from the token endpoint.
            stale: A token the API rejected, never to be returned; None if there is none.
        """
        async with self._process_guard():
            fd = await self._acquire()
            handed_off = False
            try:
                stored = _token_from((await asyncio.to_thread(self._read)).get(key))
                if stored is not None and stored.is_fresh() and stored.access_token != stale:
                    return stored
                token = await fetch()
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

    async def _acquire(self) -> int:
        future = asyncio.get_running_loop().run_in_executor(None, self._lock)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # The waiting thread cannot be interrupted: release the lock as soon as it has it.
            future.add_done_callback(_close_acquired)
            raise

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
            self._replace(data)
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _locked_discard(self, key: str, access_token: str) -> None:
        fd = self._lock()
        try:
            data = self._read()
            entry = data.get(key)
            if isinstance(entry, dict) and entry.get("access_token") == access_token:
                data = self._valid_entries()
                data.pop(key, None)
                self._replace(data)
        finally:
            os.close(fd)

    def _read(self) -> dict[str, object]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

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

    def _replace(self, data: dict[str, object]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".tokens-", dir=self.path.parent)  # created 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
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


def _close_acquired(future: asyncio.Future[int]) -> None:
    if not future.cancelled() and future.exception() is None:
        os.close(future.result())


def credentials_key(token_url: str, client_id: str, client_secret: str, scope: str) -> str:
    """A store key for one set of credentials; a hash, so the secret never appears in it."""
    material = "\0".join((token_url, client_id, client_secret, scope)).encode()
    return "guru:" + hashlib.sha256(material).hexdigest()


FetchToken = Callable[[], Awaitable[Token]]

# Held only while some provider holds them (weak values), so locks of finished loops go away.
_REFRESH_LOCKS: weakref.WeakValueDictionary[tuple[int, int, str], asyncio.Lock] = (
    weakref.WeakValueDictionary()
)


class TokenProvider:
    """Hands out a fresh token, refreshing it single-flight through ``fetch``."""

    refreshable = True

    def __init__(self, *, key: str, store: TokenStore, fetch: FetchToken) -> None:
        self._key = key
        self._store = store
        self._fetch = fetch
        self._token: Token | None = None
        self._rejected: str | None = None
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    async def get(self) -> str:
        """Return a usable access token, fetching one only when none is fresh."""
        token = self._token
        if token is not None and token.is_fresh():
            return token.access_token
        # One refresh at a time: everyone else waits here and then reuses its result.
        async with self._refresh_lock():
            token = self._token
            if token is not None and token.is_fresh():
                return token.access_token
            stored = await self._store.load(self._key)
            if stored is not None and stored.is_fresh() and stored.access_token != self._rejected:
                self._token = stored
                return stored.access_token
            fetch_once = getattr(self._store, "fetch_once", None)
            if fetch_once is not None:
                # The store coordinates processes: the first one's fetch serves the others.
                token = await fetch_once(self._key, self._fetch, stale=self._rejected)
            else:
                token = await self._fetch()
                await self._store.save(self._key, token)
            self._token = token
            return token.access_token

    def _refresh_lock(self) -> asyncio.Lock:
        # Shared by every provider of this event loop with the same store and credentials, so
        # sessions that share a token store also share a single refresh in flight.
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            key = (id(loop), id(self._store), self._key)
            lock = _REFRESH_LOCKS.get(key)
            if lock is None:
                lock = _REFRESH_LOCKS[key] = asyncio.Lock()
            self._lock, self._lock_loop = lock, loop
        return self._lock

    async def invalidate(self, access_token: str) -> None:
        """Forget ``access_token`` after the API rejected it, so the next get() refreshes; a
        store with ``discard`` drops it too, unless another token replaced it meanwhile."""
        self._rejected = access_token
        if self._token is not None and self._token.access_token == access_token:
            self._token = None
        discard = getattr(self._store, "discard", None)
        if discard is not None:
            await discard(self._key, access_token)


class StaticTokenProvider:
    """A ready token given by the caller: never refreshed, so a 401 is final."""

    refreshable = False

    def __init__(self, access_token: str) -> None:
        self._access_token = access_token

    async def get(self) -> str:
        """Return the caller's token."""
        return self._access_token

    async def invalidate(self, access_token: str) -> None:
        """Nothing to refresh: the caller owns this token."""
