"""A fleet worker: two saq workers in one process, sharing one GuruSession.

A worker serves one account (its session's client id and base URL, see ``_protocol``): it
only ever dequeues that account's queues, and refuses (reports an error for) a job that names
another account.

- The upload queue (``Q.A``) runs ``concurrency`` jobs at once; each takes its item's lease
  (with a fencing number), resumes or creates its video, records the video id and its
  presigned target before the first byte, uploads, and records the upload (see ``_claims``).
  With ``wait`` it then hands the video to the poll queue, so upload slots never sit waiting.
- The poll queue (``Q-poll.A``) runs many cheap jobs at once, each awaiting one analysis; every
  poll goes through the session's limiter, so with ``rate`` the fleet's polls share the
  fleet's one ceiling. Once the fleet has seen a few analyses finish, a job sleeps until near
  its video's expected finish and polls in steps proportional to the duration (``_schedule``);
  until then, or when that would not save polls, it follows the session's poll policy. A job
  holds its slot from its first wait to the result either way, so the learned schedule does
  not keep slots any longer (it spends fewer requests in the same time). It records the
  analysis and reports it under the item's lease, and only while the item still stands on
  its video.

Every job keeps saq's heartbeat, so a job whose worker died is swept and retried elsewhere
after ``heartbeat`` seconds (and the producer enqueues again what a sweep failed to hand
over); results go back to the producer on its batch's Redis list, each pushed under the
item's fence, so a worker that lost its lease reports nothing. News of each item (taken by
this worker, bytes sent, at most every 0.5 s) goes the same way, for the producer's display.

What a worker is (host, pid, concurrency, account, start time, the rate and token keys it
uses) and the files it is busy with are published in saq's worker info every 2 s (see
``_status``): ``guru-async fleet status``, a producer's count of live workers and saq's web UI
read it. Each item gets one INFO line per step (uploading to its video, uploaded, analysis
done) and one WARNING line if it fails, each naming the file and the video.

SIGTERM (or SIGINT): stop taking jobs, let uploads in flight finish for ``grace`` seconds,
then hand back what is left (saq re-queues a cancelled job at once); analyses being awaited
are handed back at once. SIGKILL loses nothing either: the jobs are swept and retried, and
their claims keep the content from being uploaded twice or to a second video.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as redis_async
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import AuthenticationError as RedisAuthError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from saq.job import Job
from saq.queue.redis import RedisQueue

from .._auth import TokenProvider
from .._client import Client
from .._converter import to_json
from .._enums import AnalysisStatus, VideoStatus
from .._errors import APIError, GuruError, NotFoundError, UploadError, redact
from .._journal import UploadTarget
from .._models import Analysis, CreatedVideo
from .._payloads import VideoFields
from .._polling import DEFAULT_TIMEOUT, PollSchedule, poll_analysis
from .._retry import is_retryable
from .._session import GuruSession, client_of
from .._upload import (
    EXPIRY_MARGIN,
    UploadSource,
    check_file,
    is_url,
    policy_expiration,
    presign_expired,
)
from .._validation import check_int
from ._availability import RedisWatch, wait_for_redis
from ._claims import Claims, ItemRecord, Lease, LeaseLostError, item_hash
from ._protocol import (
    DEFAULT_QUEUE,
    DEFAULT_RETENTION,
    POLL_FUNCTION,
    UPLOAD_FUNCTION,
    FleetError,
    account_of,
    durations_key,
    encode_news,
    encode_result,
    poll_queue_name,
    results_key,
    upload_queue_name,
)
from ._rate import COUNTS_SUFFIX, RedisRateLimiter, deferrable_requests
from ._redis import RedisUnavailableError, check_url, describe_url
from ._saq_worker import QuietWorker
from ._schedule import Durations, DurationSample, Observer, estimate, redis_time
from ._status import WorkerActivity, display_name
from ._tokens import RedisTokenStore

log = logging.getLogger("guru_async.fleet")


class _RedactQueries(logging.Filter):
    """saq logs a job with its arguments (at DEBUG, and when a job raises): a source URL's
    query, which may hold a presigned signature, is cut out of those lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


class _TryLater(Exception):
    """Internal: the item met a transient failure (throttled, a 5xx, the network) that outlasted
    its calls' own retries; saq delivers its job again after its retry delay."""


class _QuietRetries(logging.Filter):
    """The worker logs a transient failure in one line; saq's traceback of it is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], _TryLater))


logging.getLogger("saq").addFilter(_RedactQueries())
logging.getLogger("saq").addFilter(_QuietRetries())

DEFAULT_CONCURRENCY = 4
# Each slot is a saq task with its own blocking dequeue (and Redis connection): enough for
# the analyses a few uploads at a time keep waiting, not hundreds.
DEFAULT_MAX_WAITING = 32


def redis_client(url: str) -> redis_async.Redis:
    """A client that rides out a Redis restart: redis-py's own retries, for about 15 s."""
    check_url(url)
    return redis_async.Redis.from_url(
        url,
        socket_connect_timeout=5.0,
        health_check_interval=10,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 20),
        retry_on_error=[RedisConnectionError, RedisTimeoutError, ConnectionResetError],
    )


async def ping(client: redis_async.Redis, where: str, *, url: str | None = None) -> None:
    """Raise RedisUnavailableError (no password in it) unless Redis answers now.

    Given the URL, the check uses a client without retries, so a wrong address or password
    fails at once instead of after the long client's retries.
    """
    probe = client
    if url is not None:
        probe = redis_async.Redis.from_url(
            url, socket_connect_timeout=5.0, socket_timeout=5.0, retry=Retry(NoBackoff(), 0)
        )
    try:
        await asyncio.wait_for(probe.ping(), 10.0)  # type: ignore[arg-type]
    except (RedisError, OSError, asyncio.TimeoutError) as exc:
        if isinstance(exc, RedisAuthError) or "auth" in str(exc).lower():
            detail = "it refused the password or user"
        else:
            detail = type(exc).__name__
        raise RedisUnavailableError(f"Redis at {where} is unavailable: {detail}") from None
    finally:
        if probe is not client:
            with contextlib.suppress(RedisError, OSError):
                await probe.aclose()


class _FleetQueue(RedisQueue):
    """saq's Redis queue with a short abort wait in its sweep.

    saq's sweep aborts each stuck job and then waits up to ``abort`` seconds (default 5) for
    its worker to acknowledge, one job after another. The worker of a swept job is usually
    dead and never answers, so a killed worker's ten jobs would take 50 s to hand over. The
    claims make a job that still runs somewhere harmless, so the wait is cut to a moment.
    """

    async def sweep(self, lock: int = 60, abort: float = 5.0) -> list[str]:
        return await super().sweep(lock, abort=min(abort, 0.2))


class _Context:
    """What every job of one worker process shares."""

    def __init__(
        self,
        session: GuruSession,
        redis: redis_async.Redis,
        *,
        account: str,
        queue: str,
        poll: RedisQueue,
        activity: WorkerActivity,
    ) -> None:
        self.session = session
        self.activity = activity
        self.client: Client = client_of(session)
        self.redis = redis
        self.account = account
        self.queue = queue
        self.poll = poll
        self.claims = Claims(redis, account=account, queue=queue)
        self.durations = Durations(redis, durations_key(account, queue))

    def results(self, batch: str, account: str | None = None) -> str:
        return results_key(account or self.account, self.queue, batch)

    async def push(
        self, batch: str, message: str, retention: int, *, account: str | None = None
    ) -> None:
        """Push a result no claim stands behind (the item failed before it was claimed)."""
        key = self.results(batch, account)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, message)
            pipe.expire(key, retention)
            await pipe.execute()

    async def report(self, lease: Lease, batch: str, message: str, retention: int) -> None:
        """Push a result under the item's fence (nothing is pushed if it is stale)."""
        await self.claims.push(lease, self.results(batch), message, retention=retention)


@contextlib.asynccontextmanager
async def _working(
    fleet: _Context, job: Job, name: str, state: str, video_id: str | None = None
) -> Any:
    """The job's heartbeat, and its item in this worker's published activity."""
    fleet.activity.begin(job.key, name, state, video_id)
    try:
        async with _heartbeat(job):
            yield
    finally:
        fleet.activity.end(job.key)


@contextlib.asynccontextmanager
async def _heartbeat(job: Job) -> Any:
    """Touch the job every third of its heartbeat so saq's sweep leaves it alone."""
    interval = max(job.heartbeat / 3, 0.2) if job.heartbeat else None

    async def beat() -> None:
        assert interval is not None
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(RedisError, OSError):
                await job.update()

    task = asyncio.create_task(beat()) if interval is not None else None
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _lease_seconds(job: Job) -> float:
    return max(float(job.heartbeat or 10), 1.0)


async def _other_account(
    fleet: _Context, job: Job, account: str | None, batch: str, key: str, retention: int
) -> bool:
    """Refuse (and report) a job of another account: its queue is not this worker's, so it
    can only come from a misconfigured producer or a hand-made job."""
    if account is None or account == fleet.account:
        return False
    log.error("fleet: job %s belongs to another account; not running it", job.key)
    error = FleetError(
        f"a worker of account {fleet.account} refused this item of account {account}: check "
        "GURU_CLIENT_ID and GURU_BASE_URL on the producer and the workers"
    )
    message = encode_result(key, video_id=None, error=error)
    await fleet.push(batch, message, retention, account=account)
    return True


async def _upload_job(
    ctx: dict[str, Any],
    *,
    batch: str,
    path: str,
    fields: dict[str, Any],
    wait: bool,
    analysis_timeout: float = DEFAULT_TIMEOUT,
    retention: int = DEFAULT_RETENTION,
    result_key: str | None = None,
    account: str | None = None,
) -> None:
    job: Job = ctx["job"]
    fleet: _Context = ctx["fleet"]
    # The producer may enqueue an item again under a fresh job key: results name the item.
    key = result_key or job.key
    if await _other_account(fleet, job, account, batch, key, retention):
        return
    async with _heartbeat(job):
        # Redis failing or the lease lost: the infrastructure failed, not the item. saq
        # retries the job (or, after its last attempt, the producer reports it failed); a
        # fenced-out worker reports nothing.
        await _upload_item(fleet, job, batch, key, path, fields, wait, analysis_timeout, retention)


async def _upload_item(
    fleet: _Context,
    job: Job,
    batch: str,
    key: str,
    path: str,
    fields: dict[str, Any],
    wait: bool,
    analysis_timeout: float,
    retention: int,
) -> None:
    name = display_name(path)
    try:
        # A URL is fetched only once the item is claimed and its content is still to send.
        file = None if is_url(path) else check_file(path)
        item = item_hash(fleet.account, path if file is None else file, fields)
        # The producer resolved these against its own table: taken as they are.
        sent_fields = VideoFields.from_dict(fields)
    except (OSError, ValueError, TypeError) as exc:
        if isinstance(exc, ConnectionError):
            raise
        _log_failure(name, None, exc)
        await fleet.push(batch, encode_result(key, video_id=None, error=exc), retention)
        return
    async with fleet.claims.lease(item, seconds=_lease_seconds(job), retention=retention) as lease:
        created: list[str] = []
        record = ItemRecord(None, None, None)
        try:
            record = await fleet.claims.read(item)
            if record.state == "done" and record.video_id and record.analysis:
                log.info("fleet: %s: already done (video %s)", name, record.video_id)
                message = encode_result(
                    key, video_id=record.video_id, analysis=record.analysis, restored=True
                )
                await fleet.report(lease, batch, message, retention)
                return
            video_id = record.video_id if record.state == "uploaded" else None
            size = None if file is None else file.stat().st_size
            if video_id is None:
                fleet.activity.begin(job.key, name, "uploading", record.video_id)
                await fleet.report(lease, batch, encode_news(key, size=size), retention)
                began = time.monotonic()
                news = _UploadNews(fleet, lease, batch, key, retention, job=job.key, name=name)
                try:
                    video_id, size = await _deliver(
                        fleet, lease, record, path, file, sent_fields, retention, created, news
                    )
                finally:
                    await news.aclose()
                await fleet.claims.record(lease, "uploaded", video_id=video_id, retention=retention)
                log.info(
                    "fleet: %s: uploaded to video %s (%s bytes in %.1f s)",
                    name,
                    video_id,
                    "?" if size is None else size,
                    time.monotonic() - began,
                )
            else:
                log.info("fleet: %s: already uploaded to video %s", name, video_id)
        except (RedisError, LeaseLostError):
            raise
        except (GuruError, OSError, ValueError, TypeError) as exc:
            if isinstance(exc, ConnectionError):
                raise
            video = created[-1] if created else record.video_id
            if is_retryable(exc) and job.attempts < job.retries:
                # The service throttled or failed for longer than the calls' own retries
                # wait (a token endpoint answering 429 for seconds, say): not the item's
                # failure yet. Its job is delivered again, and resumes from the record; only
                # its last attempt reports the error.
                log.warning(
                    "fleet: %s: %s: %s; trying again (attempt %d of %d)",
                    name,
                    type(exc).__name__,
                    redact(str(exc)),
                    job.attempts,
                    job.retries,
                )
                raise _TryLater(type(exc).__name__) from None
            _log_failure(name, video, exc)
            failed = encode_result(key, video_id=video, error=exc)
            await fleet.report(lease, batch, failed, retention)
            return
        finally:
            fleet.activity.end(job.key)
        restored = record.state == "uploaded"
        message = encode_result(
            key,
            video_id=video_id,
            uploaded=True,
            size=None if restored else size,
            restored=restored,
        )
        await fleet.report(lease, batch, message, retention)
        if not wait:
            await fleet.report(lease, batch, encode_result(key, video_id=video_id), retention)
            return
        # On Redis's clock: the poll job may run on a machine whose clock disagrees with this.
        uploaded_at = await redis_time(fleet.redis)
        await fleet.poll.enqueue(
            POLL_FUNCTION,
            key=f"{job.key}:poll",
            timeout=0,
            heartbeat=job.heartbeat,
            retries=job.retries,
            retry_delay=1.0,
            ttl=job.ttl,
            batch=batch,
            result_key=key,
            item=item,
            video_id=video_id,
            deadline=time.time() + analysis_timeout,
            retention=retention,
            uploaded_at=uploaded_at,
            account=fleet.account,
            name=name,
            size=size,
        )


def _log_failure(name: str, video_id: str | None, exc: BaseException) -> None:
    """The one line an item's failure gets (its result goes to the producer)."""
    video = f" (video {video_id})" if video_id else ""
    log.warning("fleet: %s: failed%s: %s: %s", name, video, type(exc).__name__, redact(str(exc)))


# An upload's bytes sent go to the producer's display at most this often.
NEWS_INTERVAL = 0.5


class _UploadNews:
    """An upload's progress callback that pushes its bytes sent to the producer, under the
    item's fence, at most every NEWS_INTERVAL seconds (news only: a push that fails is
    dropped, the upload goes on)."""

    def __init__(
        self,
        fleet: _Context,
        lease: Lease,
        batch: str,
        key: str,
        retention: int,
        *,
        job: str,
        name: str,
    ) -> None:
        self._fleet = fleet
        self._job = job
        self.name = name
        self._lease = lease
        self._batch = batch
        self._key = key
        self._retention = retention
        self._sent = 0
        self._size: int | None = None
        self._last = 0.0
        self._task: asyncio.Task[None] | None = None

    def __call__(self, sent: int, total: int) -> None:
        self._sent = max(self._sent, sent)
        self._size = total or None
        if self._task is None or self._task.done():
            # The latest count goes out within NEWS_INTERVAL, even if no call follows.
            self._task = asyncio.create_task(self._push())

    async def _push(self) -> None:
        pushed = -1
        while pushed != self._sent:
            await asyncio.sleep(max(self._last + NEWS_INTERVAL - time.monotonic(), 0))
            self._last = time.monotonic()
            pushed = self._sent
            message = encode_news(self._key, size=self._size, sent=pushed)
            try:
                await self._fleet.report(self._lease, self._batch, message, self._retention)
            except (RedisError, OSError, LeaseLostError):
                return

    def starting(self, video_id: str, *, resumed: bool) -> None:
        """The item's one start line (with its video), before the first byte goes."""
        self._fleet.activity.video(self._job, video_id)
        again = " (resumed: its recorded target)" if resumed else ""
        log.info("fleet: %s: uploading to video %s%s", self.name, video_id, again)

    async def aclose(self) -> None:
        """Stop pushing (the upload ended)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


async def _deliver(
    fleet: _Context,
    lease: Lease,
    record: ItemRecord,
    path: str,
    file: Path | None,
    fields: VideoFields,
    retention: int,
    created_ids: list[str],
    news: _UploadNews | None = None,
) -> tuple[str, int | None]:
    """Get the item's content to storage, once: resume its recorded video if there is one,
    else create one and record it (with its presigned target) before any byte is sent.
    Returns the video's id and the content's size."""
    client = fleet.client
    name = os.path.basename(path)
    resume: CreatedVideo | None = None
    if record.state == "creating":
        # The holder before this one marked the create and stopped (killed, or frozen past its
        # lease) before recording an answer: the service may have made a video nobody knows.
        log.warning(
            "fleet: possible orphan: a worker stopped while creating a video for %s; if the "
            "service made it, that video stays empty",
            name,
        )
    if record.state == "created" and record.video_id is not None:
        try:
            video = await client.get_video(record.video_id)
        except NotFoundError:
            log.warning(
                "fleet: video %s recorded for %s is gone (404); creating a new one",
                record.video_id,
                name,
            )
        else:
            if video.status == VideoStatus.SUCCESS:
                # Its content arrived (the worker died before recording that): not again.
                size = None if file is None else file.stat().st_size
                return record.video_id, size
            target = record.target
            if target is not None and (
                target.expires is None or time.time() < target.expires - EXPIRY_MARGIN
            ):
                # The same key at storage: a second upload replaces the first, one video.
                resume = CreatedVideo(record.video_id, target.url, target.fields)
            else:
                log.debug(
                    "fleet: the upload target of video %s (%s) expired; creating a new video",
                    record.video_id,
                    name,
                )
    # Streamed from a URL into the upload: never held whole, never on disk.
    source = await client.source(path, None) if file is None else UploadSource(file)
    try:
        for attempt in (1, 2):
            resumed = resume is not None
            if resume is not None:
                target_video, resume = resume, None
            else:
                target_video = await _create(fleet, lease, source, fields, name, retention)
                created_ids.append(target_video.id)
            if news is not None:
                news.starting(target_video.id, resumed=resumed)
            try:
                await client.upload(target_video, source, news)
            except UploadError as exc:
                # An expired presign is replaced by a fresh video once, as upload_video does.
                if attempt == 1 and presign_expired(exc) and source.restartable:
                    continue
                raise
            return target_video.id, source.size
        raise AssertionError("unreachable")  # pragma: no cover
    finally:
        source.release()


async def _create(
    fleet: _Context,
    lease: Lease,
    source: UploadSource,
    fields: VideoFields,
    name: str,
    retention: int,
) -> CreatedVideo:
    """Create the item's video and record it with its target under the item's fence; the
    one window for a second video (a crash between the answer and the record) is logged."""
    # Marked first, so whoever takes the item over after a crash or a freeze in the window
    # knows a video may exist and logs it (this worker cannot, once SIGKILLed).
    await fleet.claims.record(lease, "creating", video_id="", retention=retention)
    try:
        created = await fleet.client.create_video(
            os.path.basename(source.name) or "video", source.size, fields
        )
    except asyncio.CancelledError:
        log.warning(
            "fleet: possible orphan: Create Video for %s was cut short and may have made a video",
            name,
        )
        raise
    except APIError:
        # An answer (Create Video's error, or the token endpoint's, before anything was sent):
        # no video was made, so the mark comes off and a retry warns of no orphan.
        with contextlib.suppress(RedisError, OSError, LeaseLostError):
            await fleet.claims.record(lease, "", video_id="", retention=retention)
        raise
    target = UploadTarget(created.url, created.fields, policy_expiration(created.fields))
    try:
        await fleet.claims.record(
            lease, "created", video_id=created.id, target=target, retention=retention
        )
    except BaseException:
        log.warning(
            "fleet: possible orphan: video %s was created for %s but could not be recorded",
            created.id,
            name,
        )
        raise
    return created


async def _poll_job(
    ctx: dict[str, Any],
    *,
    batch: str,
    result_key: str,
    item: str,
    video_id: str,
    deadline: float,
    retention: int = DEFAULT_RETENTION,
    uploaded_at: float | None = None,
    account: str | None = None,
    name: str | None = None,
    size: int | None = None,
) -> None:
    job: Job = ctx["job"]
    fleet: _Context = ctx["fleet"]
    if await _other_account(fleet, job, account, batch, result_key, retention):
        return
    shown = name or f"video {video_id}"
    async with _working(fleet, job, shown, "awaiting analysis", video_id):
        record = await fleet.claims.read(item)
        if record.video_id != video_id:
            # The item moved on to another video (re-created after a 404, say): the job of
            # that video reports it.
            log.debug("fleet: video %s is no longer its item's; not awaiting it", video_id)
            return
        analysis: str | None = None
        message: str
        if record.state == "done" and record.analysis:
            analysis = record.analysis
            message = encode_result(result_key, video_id=video_id, analysis=analysis)
        else:
            began = time.monotonic()
            try:
                # Under a binding ceiling, polls yield to creates (see deferrable_requests).
                with deferrable_requests(total=client_of(fleet.session).transport.timeouts.total):
                    awaited = await _await_analysis(
                        fleet, video_id, deadline, uploaded_at, retention, size
                    )
            except GuruError as exc:
                _log_failure(shown, video_id, exc)
                message = encode_result(result_key, video_id=video_id, error=exc)
            else:
                log.info(
                    "fleet: %s: analysis of video %s done: %s (awaited %.1f s)",
                    shown,
                    video_id,
                    awaited.status,
                    time.monotonic() - began,
                )
                analysis = to_json(awaited).decode()
                message = encode_result(result_key, video_id=video_id, analysis=analysis)
        # Written and reported under the item's lease and fence, and only while the item
        # still stands on this video.
        async with fleet.claims.lease(
            item, seconds=_lease_seconds(job), retention=retention
        ) as lease:
            current = await fleet.claims.read(item)
            if current.video_id != video_id:
                return
            if analysis is not None and current.state != "done":
                await fleet.claims.record(
                    lease, "done", video_id=video_id, analysis=analysis, retention=retention
                )
            await fleet.report(lease, batch, message, retention)


async def _await_analysis(
    fleet: _Context,
    video_id: str,
    deadline: float,
    uploaded_at: float | None,
    retention: int,
    size: int | None = None,
) -> Analysis:
    """await_analysis on the learned schedule when there is one (from the video's ``size``
    in bytes when known: a job from an older worker has none); learn from the answer."""
    session = fleet.session
    timeout = max(deadline - time.time(), 0.001)

    def fetch() -> Awaitable[tuple[Analysis, float | None]]:
        return fleet.client.get_analysis(video_id)

    if uploaded_at is None:  # a job from a worker that did not note the upload's time
        return await poll_analysis(
            fetch, video_id=video_id, timeout=timeout, policy=session.poll_policy
        )
    offset = await redis_time(fleet.redis) - time.time()
    since = time.time() + offset - uploaded_at
    origin = time.monotonic() - since
    observer = Observer(lambda: time.monotonic() - origin)
    schedule: PollSchedule = session.poll_policy
    delay = 0.0
    planned_first = None
    sized = False
    learned = await fleet.durations.plan(policy=session.poll_policy, origin=origin, size=size)
    if learned is not None:
        schedule, delay, planned_first = learned, learned.delay(time.monotonic()), learned.first
        sized = learned.sized
    analysis = await poll_analysis(
        observer.wrap(fetch), video_id=video_id, timeout=timeout, policy=schedule, delay=delay
    )
    if analysis.status == AnalysisStatus.COMPLETE and observer.done is not None:
        assert observer.first is not None
        sample = estimate(
            pending=observer.pending,
            done=observer.done,
            first_poll=observer.first,
            planned_first=planned_first,
            sized=sized,
        )
        if sample is not None:
            await fleet.durations.record(DurationSample(*sample, size=size), retention=retention)
    return analysis


class FleetWorker:
    """One worker process of a fleet: takes items from the fleet's queue and uploads them.

    ``guru-async worker --redis URL`` runs one; in Python::

        async with GuruSession() as guru:
            await FleetWorker("redis://cache:6379/0", session=guru).run()

    Args:
        redis: The fleet's Redis, a ``redis://`` or ``rediss://`` URL.
        session: The session to call the API with (its token store and limiter are the
            fleet's: pass RedisTokenStore and RedisRateLimiter on the same Redis).
        queue: The fleet's queue name; producer and workers must agree.
        concurrency: Uploads at once in this process.
        max_waiting: Analyses awaited at once in this process.
        grace: Seconds uploads in flight may take to finish after SIGTERM before they are
            handed back.
        sweep_interval: How often (seconds) saq looks for jobs whose worker died.
    """

    def __init__(
        self,
        redis: str,
        *,
        session: GuruSession,
        queue: str = DEFAULT_QUEUE,
        concurrency: int = DEFAULT_CONCURRENCY,
        max_waiting: int = DEFAULT_MAX_WAITING,
        grace: float = 30.0,
        sweep_interval: int = 5,
    ) -> None:
        if not isinstance(redis, str):
            raise TypeError(f"redis must be a redis:// URL, got {type(redis).__name__}")
        check_url(redis)
        check_int("concurrency", concurrency, minimum=1)
        check_int("max_waiting", max_waiting, minimum=1)
        # saq counts the sweep interval in whole seconds.
        check_int("sweep_interval", sweep_interval, minimum=1, unit="seconds")
        self._url = redis
        self.where = describe_url(redis)
        self._session = session
        self._queue = queue
        self._concurrency = concurrency
        self._max_waiting = max_waiting
        self._grace = grace
        self._sweep = sweep_interval
        self._stop = asyncio.Event()
        if not session.client_id:
            raise ValueError(
                "a fleet worker needs a session with a client id: it names the account whose "
                "items the worker takes (set GURU_CLIENT_ID or pass client_id=)"
            )
        self.account = account_of(session.client_id, str(session.base_url))

    def __repr__(self) -> str:
        return f"FleetWorker({self.where!r}, queue={self._queue!r}, account={self.account!r})"

    def stop(self) -> None:
        """Ask :meth:`run` to finish (what SIGTERM does)."""
        self._stop.set()

    def _activity(self) -> WorkerActivity:
        """What this worker publishes about itself for ``guru-async fleet status``: who it
        is, and where its ceiling and token live (key names only: the token key is a hash)."""
        transport = client_of(self._session).transport
        extra: dict[str, Any] = {}
        ceiling = transport.ceiling
        if isinstance(ceiling, RedisRateLimiter):
            extra["rate_key"] = ceiling.key + COUNTS_SUFFIX
        token = transport.token
        if isinstance(token, TokenProvider) and isinstance(token.store, RedisTokenStore):
            extra["token_key"] = token.store.prefix + token.key
        return WorkerActivity(
            concurrency=self._concurrency,
            max_waiting=self._max_waiting,
            account=self.account,
            queue=self._queue,
            extra=extra,
        )

    async def run(
        self, *, handle_signals: bool = True, on_ready: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Work until stopped (SIGTERM, SIGINT or :meth:`stop`), then shut down cleanly.

        Started while Redis is down, it waits for Redis (one WARNING, then INFO when it
        answers); a stop while waiting returns at once. A later outage is ridden out the same
        way, and a stop of an idle worker takes about a second, Redis up or down.

        Raises:
            RedisUnavailableError: Redis refused the password or user (or answered with
                another error that waiting will not change).
        """
        clients = [redis_client(self._url) for _ in range(3)]
        loop = asyncio.get_running_loop()
        if handle_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self._stop.set)
        try:
            if not await wait_for_redis(self._url, where=self.where, stop=self._stop):
                return
            # Only this account's queues: a worker never sees another account's items.
            uploads = _FleetQueue(clients[0], name=upload_queue_name(self._queue, self.account))
            polls = _FleetQueue(clients[1], name=poll_queue_name(self._queue, self.account))
            fleet = _Context(
                self._session,
                clients[2],
                account=self.account,
                queue=self._queue,
                poll=polls,
                activity=self._activity(),
            )
            # Upkeep loops notice a stop only between sleeps: keep them short, so a SIGTERM
            # is not held up by them.
            # worker_info: what ``fleet status`` shows is at most 2 s old, and a dead worker
            # drops out of it within 3 s.
            timers = {"sweep": self._sweep, "schedule": 1, "abort": 1, "worker_info": 2}
            # saq publishes the metadata with its worker info (saq's web UI shows it too).
            common: dict[str, Any] = {"timers": timers, "metadata": fleet.activity.metadata}
            upload_worker = QuietWorker(
                uploads,
                [(UPLOAD_FUNCTION, _upload_job)],
                concurrency=self._concurrency,
                # A dequeue gives up after 1 s, so a stopping worker's idle slots end promptly
                # instead of taking a job they would only hand back.
                dequeue_timeout=1.0,
                grace=self._grace,
                **common,
            )
            poll_worker = QuietWorker(
                polls,
                [(POLL_FUNCTION, _poll_job)],
                concurrency=self._max_waiting,
                dequeue_timeout=5.0,
                grace=0,  # an analysis being awaited is handed back at once
                **common,
            )
            for worker in (upload_worker, poll_worker):
                # Signals are this object's: one SIGTERM must stop both, in order.
                worker.SIGNALS = []
                worker.context["fleet"] = fleet
            async with RedisWatch(self._url, where=self.where).watching():
                for queue in (uploads, polls):
                    await queue.connect()
                running = [
                    asyncio.create_task(upload_worker.start()),
                    asyncio.create_task(poll_worker.start()),
                ]
                log.info(
                    "fleet worker on %s, queue %s, account %s: ready",
                    self.where,
                    self._queue,
                    self.account,
                )
                if on_ready is not None:
                    await on_ready()
                await self._stop.wait()
                log.info("fleet worker: stopping (uploads in flight get %g s)", self._grace)
                await upload_worker.stop()
                await poll_worker.stop()
                await asyncio.gather(*running, return_exceptions=True)
        finally:
            if handle_signals:
                for signum in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(signum)
            for client in clients:
                with contextlib.suppress(RedisError, OSError):
                    await client.aclose()
