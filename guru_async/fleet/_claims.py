"""Claims: what makes saq's at-least-once delivery give each item one video and one result.

An item is identified by what it would upload: the account, the file's absolute path, its size
and modification time, and the metadata sent with it. Before a worker creates a video for an
item it takes the item's lease (``SET NX PX`` with a random token, renewed and released by
compare-and-set scripts), which yields a fencing number (``INCR`` on the item's fence key, in
the same script). Under it the worker reads and moves the item's record forward, as the SQLite
journal does in one process:

    created  -> the video exists; its id and presigned target (url, fields, expiry) are
                recorded before the first byte is sent
    uploaded -> storage accepted the content; only the analysis is awaited
    done     -> the final analysis is recorded

Every write to the record and every result pushed to the producer is a compare-and-set on the
fence (one Lua script each): a worker that wakes up after losing its lease (frozen past it, a
paused VM) finds a newer fence and writes and reports nothing. A job run twice (a sweep
re-running it, a killed worker's job retried elsewhere, the producer enqueuing it again, two
batches naming the same file) finds the record and resumes from it: an item in "created" is
uploaded again to the same target (idempotent at storage: same key) instead of a new video.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import redis.asyncio as redis_async
from attrs import frozen
from redis.exceptions import RedisError

from .._aio import wait_for
from .._journal import UploadTarget
from ._protocol import fence_key, item_record_key, lease_key

log = logging.getLogger("guru_async.fleet")

# KEYS: lease, fence. ARGV: token, lease ms, fence TTL s. The fencing number, or false.
_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local fence = redis.call('INCR', KEYS[2])
  redis.call('EXPIRE', KEYS[2], ARGV[3])
  return fence
end
return false
"""
# KEYS: lease. ARGV: token, lease ms.
_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# KEYS: lease. ARGV: token.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS: fence, record. ARGV: fence, retention s, then field, value pairs (the whole record).
_RECORD = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""
# KEYS: fence, results list. ARGV: fence, retention s, message.
_PUSH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""


class LeaseLostError(Exception):
    """Internal: this worker no longer holds an item's lease (or fence), so it must stop
    working on it and write nothing more."""


@frozen
class ItemRecord:
    """What the fleet knows of one item."""

    state: str | None
    video_id: str | None
    analysis: str | None
    target: UploadTarget | None = None


def item_hash(account: str, path: Path | str, fields: dict[str, Any]) -> str:
    """The identity of an item's work: a changed file (size or mtime) is a new item; a URL
    (a str) is identified by itself, since its content is known only by fetching it."""
    identity: list[Any] = [account, path, fields]
    if isinstance(path, Path):
        st = path.stat()
        identity = [account, str(path.resolve()), st.st_size, st.st_mtime_ns, fields]
    raw = json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(raw).hexdigest()


class Lease:
    """One holding of an item's lease, with the fencing number it yielded."""

    def __init__(self, item: str, fence: int, token: str) -> None:
        self.item = item
        self.fence = fence
        self.token = token


class Claims:
    """Item records, leases and fences of one account's fleet queue in Redis."""

    def __init__(self, redis: redis_async.Redis, *, account: str, queue: str) -> None:
        self._redis = redis
        self._account = account
        self._queue = queue
        self._acquire = redis.register_script(_ACQUIRE)
        self._extend = redis.register_script(_EXTEND)
        self._release = redis.register_script(_RELEASE)
        self._record = redis.register_script(_RECORD)
        self._push = redis.register_script(_PUSH)

    def _keys(self, item: str) -> tuple[str, str, str]:
        a, q = self._account, self._queue
        return lease_key(a, q, item), fence_key(a, q, item), item_record_key(a, q, item)

    async def read(self, item: str) -> ItemRecord:
        """The item's record (all None when it was never claimed or has expired)."""
        raw: dict[bytes, bytes] = await self._redis.hgetall(  # type: ignore[misc]
            self._keys(item)[2]
        )

        def text(name: bytes) -> str | None:
            value = raw.get(name)
            return None if value is None or value == b"" else value.decode()

        target = None
        url, fields = text(b"url"), text(b"fields")
        if url is not None and fields is not None:
            expires = text(b"expires")
            until = None if expires is None else float(expires)
            target = UploadTarget(url, json.loads(fields), until)
        return ItemRecord(text(b"state"), text(b"video_id"), text(b"analysis"), target)

    async def record(
        self,
        lease: Lease,
        state: str,
        *,
        video_id: str,
        retention: int,
        target: UploadTarget | None = None,
        analysis: str | None = None,
    ) -> None:
        """Replace the item's record with ``state`` if ``lease`` still holds the newest fence,
        else raise LeaseLostError; the record expires ``retention`` s after this."""
        mapping: list[str] = [
            "state", state,
            "video_id", video_id,
            "fence", str(lease.fence),
            "updated_at", repr(time.time()),
        ]  # fmt: skip
        if target is not None:
            mapping += ["url", target.url, "fields", json.dumps(target.fields)]
            if target.expires is not None:
                mapping += ["expires", repr(target.expires)]
        if analysis is not None:
            mapping += ["analysis", analysis]
        _, fence, record = self._keys(lease.item)
        done = await self._record(
            keys=[fence, record], args=[lease.fence, retention, *mapping], client=self._redis
        )
        if not done:
            raise LeaseLostError(f"item {lease.item[:12]}: fence {lease.fence} is stale")

    async def push(self, lease: Lease, results: str, message: str, *, retention: int) -> None:
        """Push ``message`` to the ``results`` list if ``lease`` still holds the newest fence,
        else raise LeaseLostError (the message is not pushed)."""
        fence = self._keys(lease.item)[1]
        done = await self._push(
            keys=[fence, results], args=[lease.fence, retention, message], client=self._redis
        )
        if not done:
            raise LeaseLostError(f"item {lease.item[:12]}: fence {lease.fence} is stale")

    async def take(self, item: str, *, seconds: float, retention: int) -> Lease:
        """Take the item's lease, waiting while another job holds it."""
        lease, fence, _ = self._keys(item)
        token = secrets.token_hex(16)
        waited = False
        while True:
            got = await self._acquire(
                keys=[lease, fence],
                args=[token, int(seconds * 1000), retention],
                client=self._redis,
            )
            if got:
                taken = Lease(item, int(got), token)
                log.debug("item %s: lease taken (fence %d)", item[:12], taken.fence)
                return taken
            if not waited:
                waited = True
                log.debug("item %s: waiting for its lease (another job holds it)", item[:12])
            await asyncio.sleep(min(0.2, seconds / 4))

    @contextlib.asynccontextmanager
    async def lease(self, item: str, *, seconds: float, retention: int) -> AsyncIterator[Lease]:
        """Hold the item's lease for the block; wait for it while another job holds it.

        The lease is renewed every third of ``seconds``. If it cannot be (Redis unreachable
        for too long, or the lease already expired), the block is cancelled and
        LeaseLostError raised: another worker may take the item over from then on, and the
        fence keeps this one from writing anything more.
        """
        taken = await self.take(item, seconds=seconds, retention=retention)
        token = taken.token
        key = self._keys(item)[0]
        body = asyncio.current_task()
        assert body is not None
        lost: list[BaseException] = []

        async def keep() -> None:
            last_ok = time.monotonic()
            while True:
                await asyncio.sleep(seconds / 3)
                try:
                    renewed = await wait_for(
                        self._extend(
                            keys=[key], args=[token, int(seconds * 1000)], client=self._redis
                        ),
                        seconds / 3,
                    )
                    if not renewed:
                        lost.append(LeaseLostError(f"the lease of item {item[:12]} expired"))
                    last_ok = time.monotonic()
                except (RedisError, OSError, asyncio.TimeoutError) as exc:
                    # Redis may come back before the lease would have run out; past that
                    # point another worker may hold it, so stop.
                    if time.monotonic() - last_ok < seconds * 2 / 3:
                        continue
                    lost.append(exc)
                if lost:
                    body.cancel()
                    return

        keeper = asyncio.create_task(keep())
        try:
            yield taken
        except asyncio.CancelledError:
            if lost:
                raise LeaseLostError(f"lost the lease of item {item[:12]}") from lost[0]
            raise
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            if not lost:
                # Released for the next job at once; if Redis is down it expires by itself.
                with contextlib.suppress(RedisError, OSError):
                    await self._release(keys=[key], args=[token], client=self._redis)
                log.debug("item %s: lease released", item[:12])
