"""The producer's side of a fleet: items in as saq jobs, one BatchResult per item back out."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import itertools
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Collection, Iterable
from types import TracebackType
from typing import Any

import redis.asyncio as redis_async
from attrs import define
from redis.exceptions import RedisError
from saq.job import Job, Status
from saq.queue.redis import RedisQueue
from yarl import URL

from .._batch import DEFAULT_MAX_IN_FLIGHT, BatchItem, BatchProgress, BatchResult, VideoSpec
from .._payloads import resolve_fields
from .._polling import DEFAULT_TIMEOUT
from .._types import ActivityArg, DomainArg
from .._upload import is_url
from .._validation import check_int
from ._protocol import (
    DEFAULT_QUEUE,
    DEFAULT_RETENTION,
    UPLOAD_FUNCTION,
    FleetJobError,
    decode_analysis,
    decode_error,
    poll_queue_name,
    results_key,
)
from ._redis import RedisUnavailableError, describe_client, describe_url
from ._worker import ping, redis_client

log = logging.getLogger("guru_async.fleet")

_END = object()


class Fleet:
    """The producer's handle on a fleet of workers sharing one Redis and one saq queue.

    ::

        async with Fleet("redis://cache:6379/0") as fleet:
            async for r in fleet.batch_upload(paths, activity="squat", journal="nightly"):
                print(r.item, r.video_id, r.analysis, r.error)

    Workers (``guru-async worker --redis URL``) do the uploads and await the analyses; this
    process only enqueues items and reads results back, so it needs no Guru credentials.

    Guarantees: each item yields exactly one BatchResult; its content is uploaded at most once
    however often saq delivers its job (sweeps, workers killed mid-upload: see ``_claims``);
    a journaled batch rerun after a crash restores finished items, awaits uploaded ones and
    uploads only the rest.

    Args:
        redis: A ``redis://``/``rediss://`` URL (the Fleet then owns its connections), or a
            ``redis.asyncio.Redis`` the caller owns.
        queue: The saq queue's name; the workers must use the same.
        retention: Seconds a finished item's claim (and an unread result) stays in Redis; a
            journaled rerun within it restores finished items instead of redoing them.
        heartbeat: Seconds without a sign of life after which an item's worker counts as dead
            and the item goes to another worker.
        attempts: How many times saq delivers an item's job before giving up on it (each
            worker death costs one).
        check_interval: Seconds between checks for items whose job ended without a result.
        redis_timeout: How long this producer rides out a Redis outage before it raises.
    """

    def __init__(
        self,
        redis: str | redis_async.Redis,
        *,
        queue: str = DEFAULT_QUEUE,
        retention: int = DEFAULT_RETENTION,
        heartbeat: int = 10,
        attempts: int = 10,
        check_interval: float = 5.0,
        redis_timeout: float = 60.0,
    ) -> None:
        if isinstance(redis, str):
            self._client: redis_async.Redis | None = None
            self._url: str | None = redis
            self.where = describe_url(redis)
            redis_client(redis)  # checks the URL now: bad input fails here, not later
        elif isinstance(redis, redis_async.Redis):
            self._client = redis
            self._url = None
            self.where = describe_client(redis)
        else:
            raise TypeError(
                f"redis must be a redis:// URL or a redis.asyncio.Redis, got {type(redis).__name__}"
            )
        if not isinstance(queue, str) or not queue:
            raise ValueError(f"queue must be a non-empty str, got {queue!r}")
        check_int("retention", retention, minimum=1, unit="seconds")
        check_int("heartbeat", heartbeat, minimum=1, unit="seconds")
        check_int("attempts", attempts, minimum=1)
        self.queue = queue
        self.retention = retention
        self.heartbeat = heartbeat
        self.attempts = attempts
        self.check_interval = float(check_interval)
        self.redis_timeout = float(redis_timeout)
        self._uploads: RedisQueue | None = None
        self._polls: RedisQueue | None = None

    def __repr__(self) -> str:
        return f"Fleet({self.where!r}, queue={self.queue!r})"

    async def __aenter__(self) -> Fleet:
        if self._url is not None:
            self._client = redis_client(self._url)
        assert self._client is not None
        try:
            await ping(self._client, self.where, url=self._url)
        except BaseException:
            await self._close_own()
            raise
        self._uploads = RedisQueue(self._client, name=self.queue)
        self._polls = RedisQueue(self._client, name=poll_queue_name(self.queue))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close_own()

    async def _close_own(self) -> None:
        if self._url is not None and self._client is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._client.aclose()
            self._client = None

    def batch_upload(
        self,
        items: Iterable[BatchItem] | AsyncIterable[BatchItem],
        *,
        journal: str | os.PathLike[str] | None = None,
        wait: bool = True,
        progress: Callable[[BatchProgress], None] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        domain: DomainArg = None,
        activity: ActivityArg = None,
        rep_count: int | None = None,
        source: str | None = None,
    ) -> AsyncGenerator[BatchResult, None]:
        """Upload many videos through the fleet, yielding one result per item as it completes.

        The same contract as ``GuruSession.batch_upload``: results in completion order, every
        item accounted for (a path missing on the worker is a result with its
        ``FileNotFoundError``, a source URL that fails one with its ``SourceError``), at most
        ``max_in_flight`` items enqueued and not yet reported, so Redis and this process stay
        bounded for any number of items.

        A fleet takes sources any worker can reach: paths (on storage every worker mounts) and
        http(s) URLs, which the worker that takes the item streams straight into the upload
        (its size from Content-Length; never buffered whole, never written to disk). A file
        object, a StreamSource or any other async byte stream lives in this process only and
        cannot travel to a worker on another machine: upload those with
        ``GuruSession.upload_video`` or ``GuruSession.batch_upload``.

        Args:
            items: Paths every worker can read, http(s) URLs, or VideoSpec with either as
                its ``path``.
            journal: A name for this batch. Rerunning with the same name and items after a
                crash restores finished items, awaits uploaded ones and uploads the rest
                (within the fleet's ``retention``); nothing is uploaded twice.
            wait: Await each analysis (True) or report each item once its upload is done.
            progress: Called with the BatchProgress counters whenever they change.
            timeout: Seconds to wait for each analysis after its upload.
            max_in_flight: The most items enqueued and not yet reported.
            domain: The default for items that do not set theirs (as for upload_video).
            activity: The default for items that do not set theirs.
            rep_count: The default for items that do not set theirs.
            source: The default for items that do not set theirs.

        Raises:
            RuntimeError: The Fleet is not open (use ``async with``).
            TypeError: An item is neither a path nor an http(s) URL: raised here, before
                anything is enqueued, when ``items`` is a list, tuple or other collection; by
                the iteration when a lazy ``items`` reaches it (the items before it finish).
            RedisUnavailableError: Redis stayed unreachable for ``redis_timeout`` seconds.
        """
        if self._uploads is None or self._polls is None or self._client is None:
            raise RuntimeError("the Fleet is not open; use 'async with Fleet(...) as fleet'")
        if isinstance(items, (str, os.PathLike)):
            raise TypeError("batch_upload takes an iterable of paths; wrap one path in a list")
        check_int("max_in_flight", max_in_flight, minimum=1)
        if isinstance(items, Collection):
            for item in items:
                _location(item)
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        if journal is not None:
            name = os.fspath(journal)
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"journal must be a non-empty name, got {journal!r}")
            batch = f"j:{name}"
        else:
            batch = f"b:{uuid.uuid4().hex}"
        defaults = {
            "domain": domain,
            "activity": activity,
            "rep_count": rep_count,
            "source": source,
        }
        resolve_fields(defaults=defaults)  # a typo fails the call, not every item
        run = _FleetRun(
            self,
            self._client,
            self._uploads,
            self._polls,
            items,
            batch=batch,
            wait=wait,
            progress=progress,
            timeout=timeout,
            max_in_flight=max_in_flight,
            defaults=defaults,
        )
        return run.results()


@define
class _Pending:
    item: BatchItem
    path: str
    fields: dict[str, Any]
    since: float
    uploaded: bool = False
    suspect: int = 0


def _location(item: object) -> str:
    """Where a worker finds an item's content: an absolute path (workers share the storage,
    not this process's working directory) or an http(s) URL as given; else a TypeError."""
    path = item.path if isinstance(item, VideoSpec) else item
    if isinstance(path, URL):
        # As given (encoded): re-encoding would break a presigned URL's signature.
        return str(path)
    if isinstance(path, str) and is_url(path):
        return path
    if isinstance(path, (str, os.PathLike)):
        return os.path.abspath(os.fspath(path))
    raise TypeError(
        "a fleet takes paths every worker can read and http(s) URLs, got "
        f"{type(path).__name__}: a file object or byte stream cannot travel to another "
        "machine; upload it with GuruSession.upload_video or GuruSession.batch_upload"
    )


def _fields(spec: VideoSpec, d: dict[str, Any]) -> dict[str, Any]:
    # As in a one-process batch (an item's own activity picks its domain), as plain data for
    # the job and the item's identity.
    return resolve_fields(
        domain=spec.domain,
        activity=spec.activity,
        rep_count=spec.rep_count,
        source=spec.source,
        defaults=d,
    ).as_dict()


class _FleetRun:
    """One execution of Fleet.batch_upload."""

    def __init__(
        self,
        fleet: Fleet,
        client: redis_async.Redis,
        uploads: RedisQueue,
        polls: RedisQueue,
        items: Iterable[BatchItem] | AsyncIterable[BatchItem],
        *,
        batch: str,
        wait: bool,
        progress: Callable[[BatchProgress], None] | None,
        timeout: float,
        max_in_flight: int,
        defaults: dict[str, Any],
    ) -> None:
        self._fleet = fleet
        self._client = client
        self._uploads = uploads
        self._polls = polls
        self._items = items
        self._batch = batch
        self._results_key = results_key(fleet.queue, batch)
        self._wait = wait
        self._on_progress = progress
        self._timeout = timeout
        self._defaults = defaults
        self.progress = BatchProgress()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._pending: dict[str, _Pending] = {}
        self._out: asyncio.Queue[Any] = asyncio.Queue(maxsize=64)
        self._feeding = True
        self._input_error: BaseException | None = None
        self._down_since: float | None = None

    async def results(self) -> AsyncGenerator[BatchResult, None]:
        tasks = [
            asyncio.create_task(self._feed()),
            asyncio.create_task(self._receive()),
            asyncio.create_task(self._check()),
        ]
        crash: list[BaseException] = []

        def died(task: asyncio.Task[None]) -> None:
            if not task.cancelled() and task.exception() is not None:
                crash.append(task.exception())  # type: ignore[arg-type]
                self._out.put_nowait(_END) if not self._out.full() else None

        for task in tasks:
            task.add_done_callback(died)
        try:
            while True:
                if crash:
                    raise crash[0]
                result = await self._out.get()
                if result is _END:
                    if crash:
                        raise crash[0]
                    break
                yield result
            if self._input_error is not None:
                raise self._input_error
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- Redis calls that ride out an outage -------------------------------------------------

    async def _redis(self, op: Callable[[], Any]) -> Any:
        while True:
            try:
                result = await op()
            except (RedisError, OSError) as exc:
                now = time.monotonic()
                if self._down_since is None:
                    self._down_since = now
                    log.warning(
                        "fleet: Redis at %s failed (%s); retrying",
                        self._fleet.where,
                        type(exc).__name__,
                    )
                if now - self._down_since > self._fleet.redis_timeout:
                    raise RedisUnavailableError(
                        f"Redis at {self._fleet.where} unavailable for "
                        f"{self._fleet.redis_timeout:g} s ({type(exc).__name__}); rerun the "
                        "batch with its journal to resume"
                    ) from None
                await asyncio.sleep(0.2)
                continue
            self._down_since = None
            return result

    # -- input -------------------------------------------------------------------------------

    async def _feed(self) -> None:
        try:
            counter = itertools.count()
            if isinstance(self._items, AsyncIterable):
                async for item in self._items:
                    await self._submit(next(counter), item)
            else:
                for item in self._items:
                    await self._submit(next(counter), item)
        except asyncio.CancelledError:
            raise
        except (RedisUnavailableError, RuntimeError):
            raise
        except Exception as exc:
            # The caller's iterable failed: finish what is in flight, then raise it.
            self._input_error = exc
        finally:
            self._feeding = False
        await self._maybe_end()

    async def _submit(self, number: int, item: BatchItem) -> None:
        # Not a source a worker can reach: the caller's mistake, raised (see batch_upload).
        path = _location(item)
        await self._slots.acquire()
        self.progress.started += 1
        try:
            spec = item if isinstance(item, VideoSpec) else VideoSpec(item)
            fields = _fields(spec, self._defaults)
        except (TypeError, ValueError) as exc:
            await self._emit(BatchResult(item, error=exc))
            return
        identity = json.dumps([path, fields], sort_keys=True).encode()
        key = f"{self._batch}:{number}:{hashlib.sha256(identity).hexdigest()[:16]}"
        self._pending[key] = _Pending(item, path, fields, time.monotonic())
        await self._enqueue(key)
        self._report()

    async def _enqueue(self, key: str) -> None:
        pending = self._pending[key]
        fleet = self._fleet
        await self._redis(
            lambda: self._uploads.enqueue(
                UPLOAD_FUNCTION,
                key=key,
                timeout=0,  # liveness is the heartbeat's job: an upload may take long
                heartbeat=fleet.heartbeat,
                retries=fleet.attempts,
                retry_delay=1.0,
                ttl=min(fleet.retention, 3600),
                batch=self._batch,
                path=pending.path,
                fields=pending.fields,
                wait=self._wait,
                analysis_timeout=self._timeout,
                retention=fleet.retention,
            )
        )

    # -- output ------------------------------------------------------------------------------

    async def _emit(self, result: BatchResult) -> None:
        if result.ok:
            self.progress.succeeded += 1
        else:
            self.progress.failed += 1
        self._report()
        await self._out.put(result)
        self._slots.release()

    async def _maybe_end(self) -> None:
        if not self._feeding and not self._pending:
            await self._out.put(_END)

    def _report(self) -> None:
        self.progress.waiting = sum(1 for p in self._pending.values() if p.uploaded)
        if self._on_progress is not None:
            try:
                self._on_progress(self.progress)
            except Exception:
                log.exception("fleet batch_upload: the progress callback raised")

    async def _receive(self) -> None:
        while True:
            popped = await self._redis(lambda: self._client.blpop([self._results_key], 1))
            if popped is None:
                continue
            message = json.loads(popped[1])
            pending = self._pending.get(message.get("key"))
            if pending is None:
                continue  # a duplicate, or news of an earlier run: this run has its own
            if message.get("uploaded"):
                if not pending.uploaded:
                    pending.uploaded = True
                    self.progress.uploaded += 1
                    size = message.get("size")
                    if isinstance(size, int):
                        self.progress.bytes_total += size
                        self.progress.bytes_sent += size
                    self._report()
                continue
            await self._finish(message["key"], self._decode(pending, message))

    def _decode(self, pending: _Pending, message: dict[str, Any]) -> BatchResult:
        video_id = message.get("video_id")
        if "error" in message:
            return BatchResult(
                pending.item, video_id=video_id, error=decode_error(message["error"])
            )
        analysis = message.get("analysis")
        try:
            decoded = None if analysis is None else decode_analysis(analysis)
        except Exception as exc:
            return BatchResult(pending.item, video_id=video_id, error=exc)
        return BatchResult(pending.item, video_id=video_id, analysis=decoded)

    async def _finish(self, key: str, result: BatchResult) -> None:
        pending = self._pending.pop(key, None)
        if pending is None:
            return
        if not pending.uploaded and result.error is None:
            self.progress.uploaded += 1
        await self._emit(result)
        await self._maybe_end()

    # -- the safety net ----------------------------------------------------------------------

    async def _check(self) -> None:
        """Find items whose job ended without a result reaching us: report the ones saq gave
        up on, enqueue again the ones whose result was lost (the claim makes that safe)."""
        interval = self._fleet.check_interval
        while True:
            await asyncio.sleep(interval)
            cutoff = time.monotonic() - interval
            keys = [k for k, p in self._pending.items() if p.since < cutoff]
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                uploads: list[Job | None] = await self._redis(
                    functools.partial(self._uploads.jobs, chunk)
                )
                polls: list[Job | None] = await self._redis(
                    functools.partial(self._polls.jobs, [f"{k}:poll" for k in chunk])
                )
                for key, upload, poll in zip(chunk, uploads, polls, strict=True):
                    await self._inspect(key, upload, poll)

    async def _inspect(self, key: str, upload: Job | None, poll: Job | None) -> None:
        pending = self._pending.get(key)
        if pending is None:
            return
        job = poll if poll is not None else upload
        if job is not None and job.status in (Status.FAILED, Status.ABORTED):
            reason = (job.error or "").strip().splitlines()
            detail = reason[-1] if reason else "no error recorded"
            error = FleetJobError(
                f"the fleet gave up on this item after {job.attempts} attempt(s): saq job "
                f"{job.key} {job.status.value} ({detail})",
                status=job.status.value,
            )
            await self._finish(key, BatchResult(pending.item, error=error))
            return
        lost = job is None or (
            job.status == Status.COMPLETE and (job is poll or not self._wait or poll is None)
        )
        if not lost:
            pending.suspect = 0
            return
        # Seen twice in a row, so not a result still on its way: enqueue it again.
        pending.suspect += 1
        if pending.suspect >= 2:
            pending.suspect = 0
            log.info("fleet: item %s has no result; enqueuing it again", key)
            await self._enqueue(key)
