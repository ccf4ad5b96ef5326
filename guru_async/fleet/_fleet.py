"""The producer's side of a fleet: items in as saq jobs, one BatchResult per item back out.

Every batch finishes without relying on saq's sweep being atomic (a sweeper killed between its
abort and its re-queue leaves a job ``aborting`` in no list): every ``check_interval`` the
producer reconciles its pending items with saq's job records and enqueues again, under a fresh
job key, any item whose job is gone, ended early, or stuck in a transient state (``aborting``,
or ``active`` without a heartbeat for ``heartbeat`` seconds), at once, and any whose job
finished without a result reaching us at two checks in a row (the result may be on its way).
So with one worker and Redis up, every item has its result within ``heartbeat +
check_interval`` plus its own work after the last fault. The claims and fences (``_claims``)
make a duplicate job harmless, and a result counts only for the item key it names while that
item is pending.
"""

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
from redis.asyncio.lock import Lock
from redis.exceptions import LockError, RedisError
from saq.job import Job, Status
from saq.queue.redis import RedisQueue
from yarl import URL

from .._aio import wait_for
from .._batch import (
    DEFAULT_MAX_IN_FLIGHT,
    BatchItem,
    BatchProgress,
    BatchResult,
    BatchUpload,
    UploadProgress,
    VideoSpec,
)
from .._batch_count import count_input, countable
from .._payloads import resolve_fields
from .._polling import DEFAULT_TIMEOUT
from .._session import DEFAULT_BASE_URL
from .._types import ActivityArg, DomainArg
from .._upload import is_url
from .._urls import checked_url
from .._validation import check_int
from ._protocol import (
    DEFAULT_QUEUE,
    DEFAULT_RETENTION,
    UPLOAD_FUNCTION,
    FleetJobError,
    account_of,
    decode_analysis,
    decode_error,
    poll_queue_name,
    producer_key,
    results_key,
    upload_queue_name,
)
from ._redis import RedisUnavailableError, describe_client, describe_url
from ._status import (
    FleetStatus,
    item_states,
    live_workers,
    queue_depth,
    request_rate,
    token_times,
    worker_infos,
)
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
    process only enqueues items and reads results back, so it needs no Guru secret, only the
    account: the client id and base URL the workers use (``GURU_CLIENT_ID`` and
    ``GURU_BASE_URL``, or ``client_id=`` and ``base_url=``). Every Redis key is namespaced by
    that account, so fleets of two accounts can share one Redis and never take each other's
    items.

    Guarantees: each item yields exactly one BatchResult; each item gets one video, its
    content uploaded to it however often saq delivers its job (sweeps, workers killed or
    frozen mid-upload: see ``_claims``), except when a worker dies between Create Video's
    answer and recording it (logged at WARNING as a possible orphan); with one worker and
    Redis up, every item has its result within ``heartbeat + check_interval`` plus its own
    work after the last fault; a journaled batch rerun after a crash restores finished
    items, awaits uploaded ones and uploads only the rest.

    Args:
        redis: A ``redis://``/``rediss://`` URL (the Fleet then owns its connections), or a
            ``redis.asyncio.Redis`` the caller owns.
        client_id: The account's client id; default ``$GURU_CLIENT_ID``. Required (one or
            the other): a ValueError here otherwise.
        base_url: The API's root the workers use; default ``$GURU_BASE_URL`` or the
            production API.
        queue: The saq queue's name; the workers must use the same.
        retention: Seconds a finished item's claim (and an unread result) stays in Redis; a
            journaled rerun within it restores finished items instead of redoing them.
        heartbeat: Seconds without a sign of life after which an item's worker counts as dead
            and the item goes to another worker.
        attempts: How many times saq delivers an item's job before giving up on it (each
            worker death costs one, and so does a transient failure, such as a throttled
            token endpoint, that outlasts the calls' own retries: the last attempt reports it).
        check_interval: Seconds between reconciliations of the pending items with saq's jobs.
        redis_timeout: How long this producer rides out a Redis outage before it raises.
        no_worker_warning: Seconds a batch waits with no live worker on its queue before it
            says so (once, at WARNING, and in ``BatchProgress.notice``), naming the queue and
            the command that starts a worker.
    """

    def __init__(
        self,
        redis: str | redis_async.Redis,
        *,
        client_id: str | None = None,
        base_url: str | None = None,
        queue: str = DEFAULT_QUEUE,
        retention: int = DEFAULT_RETENTION,
        heartbeat: int = 10,
        attempts: int = 10,
        check_interval: float = 5.0,
        redis_timeout: float = 60.0,
        no_worker_warning: float = 30.0,
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
        if isinstance(check_interval, bool) or not (
            isinstance(check_interval, (int, float)) and 0 < check_interval < float("inf")
        ):
            raise ValueError(
                f"check_interval must be a number of seconds > 0, got {check_interval!r}"
            )
        if isinstance(no_worker_warning, bool) or not (
            isinstance(no_worker_warning, (int, float)) and 0 < no_worker_warning < float("inf")
        ):
            raise ValueError(
                f"no_worker_warning must be a number of seconds > 0, got {no_worker_warning!r}"
            )
        self.no_worker_warning = float(no_worker_warning)
        self.account = _account(client_id, base_url)
        self.queue = queue
        self.retention = retention
        self.heartbeat = heartbeat
        self.attempts = attempts
        self.check_interval = float(check_interval)
        self.redis_timeout = float(redis_timeout)
        self._uploads: RedisQueue | None = None
        self._polls: RedisQueue | None = None

    def __repr__(self) -> str:
        return f"Fleet({self.where!r}, queue={self.queue!r}, account={self.account!r})"

    @property
    def queue_names(self) -> tuple[str, str]:
        """The saq queues of this account's fleet: uploads, then analyses being awaited (for
        saq's web UI, say)."""
        return upload_queue_name(self.queue, self.account), poll_queue_name(
            self.queue, self.account
        )

    async def status(self) -> FleetStatus:
        """A snapshot of this account's fleet, read from Redis (nothing is written): the live
        workers with what each is working on, the queues' depths, the items per state, the
        request rate against the ceiling and the shared token's age. What ``guru-async fleet
        status`` shows.

        The items are counted with one SCAN of the account's item records, so this takes
        longer the more items are kept (``retention``). A process that only reads the fleet
        (this one, saq's web UI) is never counted as a worker.

        Raises:
            RuntimeError: The Fleet is not open (use ``async with``).
            RedisUnavailableError: Redis did not answer.
        """
        client = self._client
        if client is None or self._uploads is None:
            raise RuntimeError("the Fleet is not open; use 'async with Fleet(...) as fleet'")
        uploads, polls = self.queue_names
        try:
            workers = await live_workers(client, uploads)
            infos = await _published(client, uploads)
            rate = None
            if infos.get("rate_key"):
                rate = await request_rate(client, infos["rate_key"])
            token = None
            if infos.get("token_key"):
                token = await token_times(client, infos["token_key"])
            pattern = f"guru:fleet:{self.account}:{self.queue}:item:*"
            return FleetStatus(
                where=self.where,
                queue=self.queue,
                account=self.account,
                workers=tuple(workers),
                uploads=await queue_depth(client, uploads),
                analyses=await queue_depth(client, polls),
                items=await item_states(client, pattern),
                request_rate=None if rate is None else rate[0],
                rate_ceiling=None if rate is None else rate[1],
                token_age=None if token is None else token[0],
                token_expires_in=None if token is None else token[1],
            )
        except (RedisError, OSError) as exc:
            raise RedisUnavailableError(
                f"Redis at {self.where} is unavailable: {type(exc).__name__}"
            ) from None

    def start_hint(self) -> str:
        """The command that starts a worker for this fleet (the Redis URL, which may hold a
        password, is left to ``GURU_REDIS_URL``)."""
        queue = "" if self.queue == DEFAULT_QUEUE else f" --queue {self.queue}"
        return f"guru-async worker{queue}"

    async def __aenter__(self) -> Fleet:
        if self._url is not None:
            self._client = redis_client(self._url)
        assert self._client is not None
        try:
            await ping(self._client, self.where, url=self._url)
        except BaseException:
            await self._close_own()
            raise
        uploads, polls = self.queue_names
        self._uploads = RedisQueue(self._client, name=uploads)
        self._polls = RedisQueue(self._client, name=polls)
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
        count_ahead: bool | None = None,
        domain: DomainArg = None,
        activity: ActivityArg = None,
        rep_count: int | None = None,
        source: str | None = None,
    ) -> BatchUpload:
        """Upload many videos through the fleet, yielding one result per item as it completes.

        The same contract and the same ``BatchUpload`` as ``GuruSession.batch_upload``: an
        async iterator of results in completion order and an async context manager that stops
        the batch when its block ends, with live ``.progress`` and ``aclose()``. Every item is
        accounted for (a path missing on the worker is a result with its
        ``FileNotFoundError``, a source URL that fails one with its ``SourceError``), with at
        most ``max_in_flight`` items enqueued and not yet reported, so Redis and this process
        stay bounded for any number of items. Stopping the batch stops this producer only:
        items already enqueued are still uploaded by the workers.

        A fleet takes sources any worker can reach: paths (on storage every worker mounts) and
        http(s) URLs, which the worker that takes the item streams straight into the upload
        (its size from Content-Length; never buffered whole, never written to disk). A file
        object, a StreamSource or any other async byte stream lives in this process only and
        cannot travel to a worker on another machine: upload those with
        ``GuruSession.upload_video`` or ``GuruSession.batch_upload``.

        An item's identity (its key) is the account, the path, the file's size and
        ``mtime_ns`` as this process sees them, and the fields; a URL is keyed by the URL and
        the fields. A file re-recorded between two runs is therefore a new item, never given
        the old content's result. A path this process cannot stat (storage only the workers
        mount) is keyed by its path and fields alone: within ``retention``, a journaled rerun
        then restores its earlier result even if the file changed on the workers' storage.

        Args:
            items: Paths every worker can read, http(s) URLs, or VideoSpec with either as
                its ``path``.
            journal: A name for this batch. The same name is the same batch: rerunning with
                it after a crash restores finished items, awaits uploaded ones and uploads the
                rest (within the fleet's ``retention``); nothing is uploaded twice. A new name
                is a new batch.
            wait: Await each analysis (True) or report each item once its upload is done.
            progress: Called with the BatchProgress counters whenever they change.
            timeout: Seconds to wait for each analysis after its upload.
            max_in_flight: The most items enqueued and not yet reported.
            count_ahead: Read ``items`` a second time, on a worker thread ahead of the
                enqueuing, so ``BatchProgress.total`` is known early (as for
                ``GuruSession.batch_upload``: None counts a list, tuple or set; True any
                iterable whose every ``iter()`` is a fresh reading; False nothing). The
                bytes to send are not counted ahead: the workers alone may see the files.
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
        counted: Iterable[BatchItem] | None = None
        if isinstance(items, AsyncIterable):
            if count_ahead:
                raise TypeError("count_ahead=True cannot read an async iterable twice")
        else:
            counted = countable(items, count_ahead)
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
            counted=counted,
        )
        return BatchUpload(run)


async def _published(client: redis_async.Redis, queue_name: str) -> dict[str, str]:
    """Where the live workers' ceiling and token live, as they publish it (key names only)."""
    found: dict[str, str] = {}
    for info in await worker_infos(client, queue_name):
        meta = info.get("metadata")
        if isinstance(meta, dict):
            for name in ("rate_key", "token_key"):
                value = meta.get(name)
                if isinstance(value, str) and name not in found:
                    found[name] = value
    return found


def _account(client_id: str | None, base_url: str | None) -> str:
    """The account the producer's keys are namespaced by, as its workers compute it."""
    client_id = client_id or os.environ.get("GURU_CLIENT_ID")
    if not isinstance(client_id, str) or not client_id:
        raise ValueError(
            "a Fleet needs the account's client id, the one its workers use: set "
            "GURU_CLIENT_ID or pass Fleet(..., client_id=...) (the secret is not needed)"
        )
    base = base_url or os.environ.get("GURU_BASE_URL") or DEFAULT_BASE_URL
    # Parsed as the session parses it, so producer and workers hash the same text.
    parsed = checked_url(base, name="base_url", allow_insecure_http=True)
    return account_of(client_id, str(parsed))


@define
class _Pending:
    item: BatchItem
    path: str
    fields: dict[str, Any]
    since: float
    job_key: str
    number: int = 0
    enqueued: int = 1
    uploaded: bool = False
    suspect: int = 0
    # Taken by a worker (news from it), its size counted, and its bytes sent so far.
    started: bool = False
    sized: bool = False
    sent: int = 0


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


def _content_identity(path: str) -> list[int | None]:
    """Size and mtime_ns of a path this process can stat; [None, None] for a URL or a path
    only the workers can read."""
    if is_url(path):
        return [None, None]
    try:
        st = os.stat(path)
    except OSError:
        return [None, None]
    return [st.st_size, st.st_mtime_ns]


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


# One Redis command may take this long before it counts as failed: a connection that went
# silent (a server stopped, a network partition) must not hang the batch.
_COMMAND_TIMEOUT = 10.0


class _FleetRun:
    """One execution of Fleet.batch_upload (the run behind its BatchUpload)."""

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
        counted: Iterable[BatchItem] | None = None,
    ) -> None:
        self._fleet = fleet
        self._counted = counted
        self._client = client
        self._uploads = uploads
        self._polls = polls
        self._items = items
        self._batch = batch
        self._results_key = results_key(fleet.account, fleet.queue, batch)
        self._wait = wait
        self._on_progress = progress
        self._timeout = timeout
        self._defaults = defaults
        self.progress = BatchProgress()
        if isinstance(counted, Collection):
            # Only the number of items is counted here (the workers may be the only ones to
            # see the files): a collection knows it from the start.
            self.progress.total = len(counted)
            counted = self._counted = None
        if counted is not None:
            self.progress.counting = True
        self._slots = asyncio.Semaphore(max_in_flight)
        self._pending: dict[str, _Pending] = {}
        self._out: asyncio.Queue[Any] = asyncio.Queue(maxsize=64)
        self._feeding = True
        self._input_error: BaseException | None = None
        self._down_since: float | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self._owner: Lock | None = None
        # Clear while another producer owns this journaled batch: results are not read then.
        self._owning = asyncio.Event()
        self._owning.set()
        self._crash: list[BaseException] = []
        self._worker_seen = time.monotonic()
        self._warned = False
        # Set when a worker's news arrives while none is counted: count again at once.
        self._recount = asyncio.Event()

    async def start(self) -> None:
        """Start feeding, receiving and reconciling; idempotent."""
        if self._started:
            return
        self._started = True
        await self._own_batch()
        self._tasks = [
            asyncio.create_task(self._feed()),
            asyncio.create_task(self._receive()),
            asyncio.create_task(self._check()),
            asyncio.create_task(self._watch()),
        ]
        if self._counted is not None:
            self._tasks.append(asyncio.create_task(self._count(self._counted)))
        if self._owner is not None:
            self._tasks.append(asyncio.create_task(self._keep_owning(self._owner)))

        def died(task: asyncio.Task[None]) -> None:
            if not task.cancelled() and task.exception() is not None:
                self._crash.append(task.exception())  # type: ignore[arg-type]
                self._out.put_nowait(_END) if not self._out.full() else None

        for task in self._tasks:
            task.add_done_callback(died)

    async def results(self) -> AsyncGenerator[BatchResult, None]:
        """Run the batch, yielding each item's result as it arrives."""
        try:
            await self.start()
            while True:
                if self._crash:
                    raise self._crash[0]
                result = await self._out.get()
                if result is _END:
                    if self._crash:
                        raise self._crash[0]
                    break
                yield result
            if self._input_error is not None:
                raise self._input_error
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        """Stop this producer's tasks (the workers go on with what is enqueued); idempotent."""
        self._started = True  # a stopped run never starts again
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        owner, self._owner = self._owner, None
        if owner is not None:
            # Handed on at once; if Redis is down it expires by itself.
            with contextlib.suppress(LockError, RedisError, OSError, asyncio.TimeoutError):
                await wait_for(owner.release(), _COMMAND_TIMEOUT)

    # -- one producer per journaled batch ----------------------------------------------------

    async def _own_batch(self, lock: Lock | None = None) -> None:
        """Become the one producer of a journaled batch, waiting while another runs it.

        Results travel on one Redis list read with BLPOP, which hands each message to one
        reader: two producers of one batch would take each other's results. So a second
        producer (a rerun started while the first still runs) waits until the first ends, or
        dies and its lease runs out (``heartbeat`` seconds), then restores what it finished.
        """
        if not self._batch.startswith("j:"):
            return  # a batch without a journal has a name of its own
        fleet = self._fleet
        if lock is None:
            lock = Lock(
                self._client,
                producer_key(fleet.account, fleet.queue, self._batch),
                timeout=float(fleet.heartbeat),
                thread_local=False,  # one event loop, many tasks: the token is this object's
            )
        taken = lock
        said = False
        while not await self._redis(lambda: taken.acquire(blocking=False)):
            if not said:
                said = True
                log.info(
                    "fleet: batch %r is being run by another producer; waiting for it to end",
                    self._batch[2:],
                )
            await asyncio.sleep(min(0.5, fleet.heartbeat / 4))
        self._owner = lock

    async def _keep_owning(self, lock: Lock) -> None:
        """Renew the batch's lease. Lost (it ran out during a Redis outage, or this process was
        frozen past it and another producer took the batch), this producer stops reading
        results and reconciling until it owns the batch again, so it never takes another
        producer's results; what it missed meanwhile, reconciling finds again."""
        interval = self._fleet.heartbeat / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await wait_for(lock.reacquire(), _COMMAND_TIMEOUT)
                continue
            except (RedisError, OSError, asyncio.TimeoutError):
                continue  # an outage: the other tasks ride it out and report it
            except LockError:
                pass
            self._owning.clear()
            log.info(
                "fleet: batch %r: this producer's lease ran out; taking it again",
                self._batch[2:],
            )
            await self._own_batch(lock)
            self._owning.set()

    # -- Redis calls that ride out an outage -------------------------------------------------

    async def _redis(self, op: Callable[[], Any]) -> Any:
        while True:
            try:
                result = await wait_for(op(), _COMMAND_TIMEOUT)
            except (RedisError, OSError, asyncio.TimeoutError) as exc:
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
        # Exact now: every item is read.
        self.progress.total = self.progress.started
        self.progress.counting = False
        self._report()
        await self._maybe_end()

    async def _count(self, items: Iterable[BatchItem]) -> None:
        """Count the input ahead of the enqueuing (see ``_batch_count``): the total only."""

        async def weigh(_: int) -> int:
            return 0

        def counted(count: int, _weight: int, done: bool) -> None:
            if self._feeding:
                self.progress.total = max(count, self.progress.total or 0)
                self.progress.counting = not done
                self._report()

        try:
            await count_input(items, inspect=lambda _: 0, weigh=weigh, on_count=counted)
        except Exception:
            # Only a display's total depends on it: unknown until the input runs out.
            log.debug("fleet batch_upload: counting the input failed", exc_info=True)
            if self._feeding:
                self.progress.total = None
                self.progress.counting = False

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
        # The account and the content's identity: a file recorded again is a new key, so an
        # earlier run's result for the old content is never taken for it.
        identity = [self._fleet.account, path, *_content_identity(path), fields]
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        key = f"{self._batch}:{number}:{digest[:24]}"
        self._pending[key] = _Pending(
            item, path, fields, time.monotonic(), job_key=key, number=number
        )
        await self._enqueue(key)
        self.progress.queued += 1
        self._report()

    async def _enqueue(self, key: str) -> None:
        pending = self._pending[key]
        fleet = self._fleet
        await self._redis(
            lambda: self._uploads.enqueue(
                UPLOAD_FUNCTION,
                key=pending.job_key,
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
                result_key=key,
                account=fleet.account,
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
            await self._owning.wait()
            popped = await self._redis(lambda: self._client.blpop([self._results_key], 1))
            if popped is None:
                continue
            message = json.loads(popped[1])
            pending = self._pending.get(message.get("key"))
            if pending is None:
                continue  # a duplicate, or news of another run or content: not ours
            if "news" in message:
                self._news(pending, message)
                continue
            if message.get("uploaded"):
                if not pending.uploaded:
                    pending.uploaded = True
                    self.progress.uploaded += 1
                    if message.get("restored"):
                        self.progress.restored += 1
                    size = message.get("size")
                    self._taken(pending, size if isinstance(size, int) else None)
                    if isinstance(size, int):
                        self._count_sent(pending, size)
                    self.progress.uploading.pop(pending.number, None)
                    self._report()
                continue
            if message.get("restored") and not pending.uploaded:
                self.progress.restored += 1
            await self._finish(message["key"], self._decode(pending, message))

    def _news(self, pending: _Pending, message: dict[str, Any]) -> None:
        """A worker's news of an item: taken, or bytes sent (the highest count stands, so a
        late or repeated message changes nothing)."""
        if pending.uploaded:
            return
        size = message.get("size")
        size = size if isinstance(size, int) else None
        self._taken(pending, size)
        upload = self.progress.uploading.get(pending.number)
        if upload is None:
            upload = self.progress.uploading[pending.number] = UploadProgress(
                pending.item, bytes_total=size or 0
            )
        sent = message.get("sent")
        if isinstance(sent, int):
            self._count_sent(pending, sent)
        upload.bytes_sent = pending.sent
        self._report()

    def _taken(self, pending: _Pending, size: int | None) -> None:
        if not self.progress.workers:
            self._recount.set()
        if not pending.started:
            pending.started = True
            self.progress.queued -= 1
            self.progress.running += 1
        if size is not None and not pending.sized:
            pending.sized = True
            self.progress.bytes_total += size

    def _count_sent(self, pending: _Pending, sent: int) -> None:
        if sent > pending.sent:
            self.progress.bytes_sent += sent - pending.sent
            pending.sent = sent

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
        if pending.started:
            self.progress.running -= 1
        else:
            self.progress.queued -= 1
        self.progress.uploading.pop(pending.number, None)
        if not pending.uploaded and result.error is None:
            self.progress.uploaded += 1
        elif not pending.uploaded:
            self.progress.upload_failed += 1
        await self._emit(result)
        await self._maybe_end()

    # -- live workers ------------------------------------------------------------------------

    async def _watch(self) -> None:
        """Every second, count the live workers on the queue; after ``no_worker_warning``
        seconds without one while items wait, say so once (until a worker shows up)."""
        fleet = self._fleet
        queue_name = fleet.queue_names[0]
        while True:
            try:
                workers = len(await wait_for(live_workers(self._client, queue_name), 5.0))
            except (RedisError, OSError, asyncio.TimeoutError, ValueError):
                workers = None  # the other tasks ride out (and report) an outage
            now = time.monotonic()
            if workers is not None:
                self.progress.workers = workers
                if workers:
                    self._worker_seen = now
                    if self._warned:
                        self._warned = False
                        self.progress.notice = None
                        log.info("fleet: a worker is taking items from queue %s", fleet.queue)
                elif (
                    not self._warned
                    and self._pending
                    and now - self._worker_seen >= fleet.no_worker_warning
                ):
                    self._warned = True
                    self.progress.notice = (
                        f"no live worker on queue {fleet.queue!r} for "
                        f"{now - self._worker_seen:.0f} s: items wait until one starts; start "
                        f"one with '{fleet.start_hint()}' (the same GURU_REDIS_URL, "
                        "GURU_CLIENT_ID and GURU_BASE_URL, and the secret; account "
                        f"{fleet.account}, Redis {fleet.where})"
                    )
                    log.warning("fleet: %s", self.progress.notice)
                self._report()
            self._recount.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await wait_for(self._recount.wait(), 1.0)

    # -- reconciliation ----------------------------------------------------------------------

    async def _check(self) -> None:
        """Every check_interval, reconcile the pending items with saq's job records: report
        the ones saq gave up on, enqueue again the ones whose job is lost or stuck."""
        interval = self._fleet.check_interval
        while True:
            await asyncio.sleep(interval)
            await self._owning.wait()
            cutoff = time.monotonic() - interval
            keys = [k for k, p in self._pending.items() if p.since < cutoff]
            for start in range(0, len(keys), 500):
                chunk = [
                    (k, p.job_key)
                    for k in keys[start : start + 500]
                    if (p := self._pending.get(k)) is not None
                ]
                uploads: list[Job | None] = await self._redis(
                    functools.partial(self._uploads.jobs, [j for _, j in chunk])
                )
                polls: list[Job | None] = await self._redis(
                    functools.partial(self._polls.jobs, [f"{j}:poll" for _, j in chunk])
                )
                for (key, _), upload, poll in zip(chunk, uploads, polls, strict=True):
                    await self._inspect(key, upload, poll)

    async def _inspect(self, key: str, upload: Job | None, poll: Job | None) -> None:
        pending = self._pending.get(key)
        if pending is None:
            return
        job = poll if poll is not None else upload
        ended = job is not None and job.status in (Status.FAILED, Status.ABORTED)
        # saq gave up on a job after its attempts; a job ended early (a worker that woke up
        # after its job was swept aborts it) is enqueued again, as many times.
        gave_up = ended and job is not None and job.attempts >= job.retries
        if ended and (gave_up or pending.enqueued >= self._fleet.attempts):
            assert job is not None
            reason = (job.error or "").strip().splitlines()
            detail = reason[-1] if reason else "no error recorded"
            error = FleetJobError(
                f"the fleet gave up on this item after {job.attempts} attempt(s): saq job "
                f"{job.key} {job.status.value} ({detail})",
                status=job.status.value,
            )
            await self._finish(key, BatchResult(pending.item, error=error))
            return
        # Finished without a result reaching us: seen twice in a row, so not a result still
        # on its way (pushed just before the job finished, not yet read).
        unanswered = job is not None and (
            job.status == Status.COMPLETE and (job is poll or not self._wait or poll is None)
        )
        # Enqueued again at once, so the bound holds (heartbeat + check_interval): ended early,
        # gone (expired, lost in a Redis restart), or stuck where saq's sweep left it
        # (``aborting`` in no list, its sweeper killed) or before any sweep (``active``
        # without a heartbeat for ``heartbeat`` seconds).
        stalled = (
            ended
            or job is None
            or job.status == Status.ABORTING
            or (job.status == Status.ACTIVE and job.stuck)
        )
        if not (unanswered or stalled):
            pending.suspect = 0
            return
        if unanswered:
            pending.suspect += 1
            if pending.suspect < 2:
                return
        pending.suspect = 0
        old = pending.job_key
        if job is not None and job.status == Status.ABORTING:
            # A record saq will never finish: let it expire like a finished job's.
            ttl = min(self._fleet.retention, 3600)
            stale = (self._polls if job is poll else self._uploads).job_id(job.key)
            await self._redis(lambda: self._client.expire(stale, ttl))
        # saq refuses a key it still holds, so the item goes under a fresh job key; its
        # results still name the item's key.
        pending.job_key = f"{key}#{pending.enqueued}"
        pending.enqueued += 1
        pending.since = time.monotonic()
        if pending.started:
            # Back in the queue until a worker takes it again (its bytes stay counted).
            pending.started = False
            self.progress.running -= 1
            self.progress.queued += 1
            self.progress.uploading.pop(pending.number, None)
        log.info(
            "fleet: item %s has no result and its job %s is %s; enqueuing it again",
            key,
            old,
            "gone" if job is None else job.status.value,
        )
        await self._enqueue(key)
