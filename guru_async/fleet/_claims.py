"""Claims: what makes saq's at-least-once delivery upload each item's content at most once.

An item is identified by what it would upload: the service and account, the file's absolute
path, its size and modification time, and the metadata sent with it. Before a worker creates a
video for an item it takes the item's lease (a redis-py ``Lock``: ``SET NX PX`` with a random
token, released and extended by compare-and-set scripts), and under it reads and moves the
item's record forward, as the SQLite journal does in one process:

    created  -> the video exists (id recorded before the first byte is sent)
    uploaded -> storage accepted the content; only the analysis is awaited
    done     -> the final analysis is recorded

A job run twice (a sweep re-running it, a killed worker's job retried elsewhere, two batches
naming the same file) finds the record and resumes from it instead of uploading again. The
lease expires a few seconds after its holder dies, so the item moves on to another worker;
a holder that cannot extend its lease in time stops its work before anyone else may start.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import redis.asyncio as redis_async
from attrs import frozen
from redis.asyncio.lock import Lock
from redis.exceptions import LockError, RedisError

from .._aio import wait_for
from ._protocol import item_record_key, lease_key

log = logging.getLogger("guru_async.fleet")


class LeaseLostError(Exception):
    """Internal: this worker could not keep an item's lease, so it must stop working on it."""


@frozen
class ItemRecord:
    """What the fleet knows of one item."""

    state: str | None
    video_id: str | None
    analysis: str | None


def item_hash(service: str, path: Path | str, fields: dict[str, Any]) -> str:
    """The identity of an item's work: a changed file (size or mtime) is a new item; a URL
    (a str) is identified by itself, since its content is known only by fetching it."""
    identity: list[Any] = [service, path, fields]
    if isinstance(path, Path):
        st = path.stat()
        identity = [service, str(path.resolve()), st.st_size, st.st_mtime_ns, fields]
    raw = json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(raw).hexdigest()


class Claims:
    """Item records and leases of one fleet queue in Redis."""

    def __init__(self, redis: redis_async.Redis, *, queue: str) -> None:
        self._redis = redis
        self._queue = queue

    async def read(self, item: str) -> ItemRecord:
        """The item's record (all None when it was never claimed or has expired)."""
        raw: dict[bytes, bytes] = await self._redis.hgetall(  # type: ignore[misc]
            item_record_key(self._queue, item)
        )

        def text(name: bytes) -> str | None:
            value = raw.get(name)
            return None if value is None else value.decode()

        return ItemRecord(text(b"state"), text(b"video_id"), text(b"analysis"))

    async def record(
        self,
        item: str,
        state: str,
        *,
        video_id: str,
        retention: int,
        analysis: str | None = None,
    ) -> None:
        """Move the item to ``state``; the record expires ``retention`` s after this."""
        key = item_record_key(self._queue, item)
        mapping: dict[str, str | float] = {
            "state": state,
            "video_id": video_id,
            "updated_at": time.time(),
        }
        if analysis is not None:
            mapping["analysis"] = analysis
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=mapping)
            pipe.expire(key, retention)
            await pipe.execute()

    @contextlib.asynccontextmanager
    async def lease(self, item: str, *, seconds: float) -> AsyncIterator[None]:
        """Hold the item's lease for the block; wait for it while another job holds it.

        The lease is extended every third of ``seconds``. If it cannot be (Redis unreachable
        for too long, or the lease already expired), the block is cancelled and
        LeaseLostError raised: another worker may take the item over from then on.
        """
        lock = Lock(
            self._redis,
            lease_key(self._queue, item),
            timeout=seconds,
            sleep=min(0.2, seconds / 4),
            thread_local=False,  # one event loop, many jobs: the token belongs to this object
        )
        if not await lock.acquire(blocking=False):
            log.debug("item %s: waiting for its lease (another job holds it)", item[:12])
            await lock.acquire()
        log.debug("item %s: lease taken", item[:12])
        body = asyncio.current_task()
        assert body is not None
        lost: list[BaseException] = []

        async def keep() -> None:
            last_ok = time.monotonic()
            while True:
                await asyncio.sleep(seconds / 3)
                try:
                    await wait_for(lock.reacquire(), seconds / 3)
                    last_ok = time.monotonic()
                except LockError as exc:
                    lost.append(exc)
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
            yield
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
                with contextlib.suppress(LockError, RedisError, OSError):
                    await lock.release()
                log.debug("item %s: lease released", item[:12])
