"""Batch uploads: many videos through one session, every input item accounted for.

Shape of a run: ``upload_concurrency`` worker tasks pull items from the (possibly lazy) input
one at a time and create + upload each; uploaded videos go to one shared poll loop that checks
every waiting video at a bounded request rate; results flow back through a bounded queue in
completion order. So tasks and memory stay bounded whatever the input's length, a video is
created only when a worker is about to upload it (its presign cannot expire in a queue), and
each input item yields exactly one BatchResult, success or failure.

With a journal, a worker claims its item there before creating the video (see _journal.py), so
an item listed twice, or shared with another batch, is uploaded once. The video's presigned
target is recorded with the claim before its upload starts, so a rerun (after Ctrl-C, SIGTERM or
SIGKILL) resumes an unfinished upload to the same target: one video per item. Every journal
write is fenced by the claim's generation; a write the journal refuses means another batch or
process took the item over, and this run follows that owner's outcome instead.

Stopping the batch (``aclose``, leaving ``async with``) cancels every task at once; a video whose
create answered but was not yet journaled is journaled then, and one that cannot be (or an
unjournaled batch's unreported video) is named in a WARNING. The one window left is a crash
(SIGKILL, SIGTERM, power loss) between Create Video's answer and its journal write: the rerun
names that item's file in a WARNING, as a possible orphan.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import heapq
import itertools
import logging
import os
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
)
from pathlib import Path
from typing import Any, Protocol, Union

from attrs import Factory, define, evolve, field, frozen

from ._aio import wait_for
from ._batch_count import count_input, countable
from ._client import CREATE_REPEAT_RISK, Client
from ._converter import decode_json, structure, to_json
from ._enums import AnalysisStatus, VideoStatus
from ._error_mapping import analysis_timeout
from ._errors import GuruError, JournalError, NotFoundError, UploadError
from ._instrumentation import OpenScope, TraceScope
from ._journal import AnalysisSample, Claim, Journal, JournalEntry, UploadTarget, item_key
from ._models import Analysis, CreatedVideo, Video
from ._payloads import VideoFields, resolve_fields
from ._polling import PollPolicy, is_transient_poll_error
from ._prediction import DurationSample, SampleLog, Watch
from ._types import ActivityArg, DomainArg
from ._upload import UploadSource, check_file, policy_expiration, presign_expired
from ._validation import check_int


@frozen
class VideoSpec:
    """One video of a batch with its own metadata (overrides the batch-wide fields).

    Attributes:
        path: The video file.
        domain: Its domain; filled in from ``activity`` when omitted.
        activity: Its activity, e.g. ``"sprint"``.
        rep_count: How many reps it should show.
        source: Your service's name.
    """

    path: str | os.PathLike[str]
    domain: DomainArg = None
    activity: ActivityArg = None
    rep_count: int | None = None
    source: str | None = None


BatchItem = Union[str, "os.PathLike[str]", VideoSpec]
"""One input item of a batch: a path, or a VideoSpec for per-video metadata."""


@frozen
class BatchResult:
    """The outcome of one input item of a batch.

    Attributes:
        item: The input item, exactly as given.
        video_id: The video's id once it was created (also on most failures, so the video can
            be inspected or awaited later), else None.
        analysis: The final analysis (Complete or Failed) when the batch waited for it.
        error: Why this item did not finish (bad file, upload refused, analysis timeout, ...),
            or None.
    """

    item: BatchItem
    video_id: str | None = None
    analysis: Analysis | None = None
    error: BaseException | None = field(default=None, eq=False)

    @property
    def ok(self) -> bool:
        """True when the item succeeded: uploaded, and analysed Complete if awaited."""
        if self.error is not None:
            return False
        return self.analysis is None or self.analysis.status == AnalysisStatus.COMPLETE


@define
class UploadProgress:
    """One upload in flight in a batch (see ``BatchProgress.uploading``).

    Attributes:
        item: The input item being uploaded, exactly as given.
        bytes_sent: Its bytes sent so far; never goes back when an attempt is retried.
        bytes_total: Its size in bytes.
        video_id: The video it goes to (from Create Video): a caller interrupted mid-batch
            can name the videos it already sent.
    """

    item: BatchItem
    bytes_sent: int = 0
    bytes_total: int = 0
    video_id: str | None = None


@define
class BatchProgress:
    """Counters of a running batch, passed to the ``progress`` callback after each change.

    Counters only grow (but ``waiting`` and ``uploading``), and totals never move once known:
    a display built on them never goes backwards.

    Attributes:
        started: Items read from the input and being worked on (or done).
        uploaded: Items whose video is uploaded, by this run or (``restored``) an earlier one.
        succeeded: Items finished successfully (restored ones included).
        failed: Items finished with an error or a Failed analysis.
        waiting: Uploaded videos whose analysis is being awaited.
        bytes_sent: Bytes uploaded so far, all items together.
        bytes_total: The size of every upload started so far.
        uploading: The uploads in flight, by a number unique within the batch, each with its
            own bytes: an entry appears when its content starts to go out and is removed when
            that upload ends, sent or failed. At most ``upload_concurrency`` entries.
        total: How many items the input holds, or None while that is unknown. A list, tuple
            or set (or with ``count_ahead=True`` any input that can be read twice, such as a
            folder listing) is counted ahead of the uploads, so it is known almost at once;
            any other input when it runs out. While ``counting``, the count so far (a lower
            bound), or None before the first items are counted.
        counting: True while ``total`` and ``bytes_to_send`` are still being counted (they
            only grow until then, and never move after).
        restored: Items an earlier run (or another batch sharing the journal) had already
            uploaded, taken from the journal with nothing sent: included in ``uploaded``.
        upload_failed: Items that failed before their video was uploaded (a bad file, a
            create or upload refused): included in ``failed``.
        bytes_to_send: The bytes the whole batch will send (the sizes of the items the journal
            does not already have uploaded), once counted (see ``total``); None for an input
            not counted ahead. A plan: ``bytes_sent`` ends below it when an upload fails or
            an item turns out already sent (listed twice, or an interrupted upload that had
            arrived), above it only when a journaled video the service lost is sent again.
        queued: A fleet's batch: items enqueued that no worker has taken yet (0 in one
            process).
        running: A fleet's batch: items a worker has taken (uploading or awaiting the
            analysis) and not yet reported (0 in one process).
        workers: A fleet's batch: the live workers on its queue, as last counted (every
            second); None in one process and until first counted.
        notice: Something the batch's watcher should be told, or None: a fleet's batch with
            no live worker for ``Fleet(no_worker_warning=)`` seconds says so here (and once
            in the log, at WARNING), with the queue's name and the command that starts one.
    """

    started: int = 0
    uploaded: int = 0
    succeeded: int = 0
    failed: int = 0
    waiting: int = 0
    bytes_sent: int = 0
    bytes_total: int = 0
    uploading: dict[int, UploadProgress] = Factory(dict)
    total: int | None = None
    counting: bool = False
    restored: int = 0
    upload_failed: int = 0
    bytes_to_send: int | None = None
    queued: int = 0
    running: int = 0
    workers: int | None = None
    notice: str | None = None


log = logging.getLogger("guru_async")

_END = object()
DEFAULT_UPLOAD_CONCURRENCY = 4
DEFAULT_POLL_RATE = 50.0
DEFAULT_MAX_IN_FLIGHT = 1000
POLL_CONCURRENCY = 8
# Analyses learned from (and kept in the journal, per service) to plan each video's polls.
LEARNED_SAMPLES = 200
# How long a stopped batch waits for creates in flight, to log the id of any video they made.
CUT_SHORT_WAIT = 5.0


@define
class _Waiting:
    number: int
    item: BatchItem
    video_id: str
    key: str | None
    deadline: float
    wait: float
    # The journal row's generation the item's "done" must be written with.
    generation: int = 0
    last: Analysis | None = None
    # The video came from the journal (an earlier run, or another batch): if it is gone
    # (404), the item is created and uploaded again, once.
    resumed: bool = False
    trace: _VideoTrace | None = None


@frozen
class _Unrecorded:
    """A created video no journal write or reported result accounts for yet."""

    item: BatchItem
    key: str | None
    generation: int
    created: CreatedVideo


class _ClaimLost(Exception):
    """The journal refused a write: another batch or process took the item over."""


def _target(created: CreatedVideo) -> UploadTarget:
    return UploadTarget(created.url, created.fields, policy_expiration(created.fields))


class _VideoTrace:
    """One item's video scope for tracing hooks, from its claim to its result.

    An item's work spans tasks (its worker creates and uploads it, the shared poll loop polls
    it), so its scope is entered and exited in a context of its own, and that work runs in
    tasks started from it: they all see the item's span, and the exit finds what enter set.
    """

    def __init__(self, run: BatchRun, item: BatchItem) -> None:
        self._run = run
        self._scope = OpenScope(run.hooks)
        self.context = contextvars.copy_context()
        path = item.path if isinstance(item, VideoSpec) else item
        name = os.path.basename(os.fspath(path)) if isinstance(path, (str, os.PathLike)) else None
        self.context.run(_ITEM_TRACE.set, self)
        self.context.run(self._scope.enter, TraceScope("video", "batch_upload", filename=name))
        run.traces.add(self)

    def start(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``work`` in a task that sees this item's scope."""
        return self.context.run(asyncio.ensure_future, work)

    def close(self, error: BaseException | None) -> None:
        """End the scope (once), with the item's error if it failed."""
        if self in self._run.traces:
            self._run.traces.discard(self)
            self.context.run(self._scope.exit, error)


_ITEM_TRACE: contextvars.ContextVar[_VideoTrace | None] = contextvars.ContextVar(
    "guru_async_batch_item", default=None
)


class BatchRun:
    """One execution of GuruSession.batch_upload, on the session's client."""

    def __init__(
        self,
        client: Client,
        items: Iterable[BatchItem] | AsyncIterable[BatchItem],
        *,
        upload_concurrency: int,
        wait: bool,
        journal: str | os.PathLike[str] | None,
        progress: Callable[[BatchProgress], None] | None,
        timeout: float,
        poll_policy: PollPolicy,
        poll_rate: float,
        max_in_flight: int,
        defaults: dict[str, Any],
        count_ahead: bool | None = None,
    ) -> None:
        check_int("upload_concurrency", upload_concurrency, minimum=1)
        check_int("max_in_flight", max_in_flight, minimum=None)
        if max_in_flight < upload_concurrency:
            raise ValueError(
                f"max_in_flight ({max_in_flight}) must be >= upload_concurrency "
                f"({upload_concurrency})"
            )
        if poll_rate <= 0:
            raise ValueError(f"poll_rate must be > 0 requests per second, got {poll_rate}")
        self._client = client
        self.hooks = client.hooks
        self.traces: set[_VideoTrace] = set()
        self._sync_items: Iterator[BatchItem] | None = None
        self._async_items: AsyncIterator[BatchItem] | None = None
        # An input that can be read twice is counted ahead of the uploads (see _batch_count).
        self._count_items: Iterable[BatchItem] | None = None
        if isinstance(items, AsyncIterable):
            if count_ahead:
                raise TypeError("count_ahead=True cannot read an async iterable twice")
            self._async_items = aiter(items)
        elif isinstance(items, (str, os.PathLike)):
            raise TypeError("batch_upload takes an iterable of paths; wrap one path in a list")
        else:
            self._count_items = countable(items, count_ahead)
            self._sync_items = iter(items)
        self._concurrency = upload_concurrency
        self._wait = wait
        self._journal = Journal(journal) if journal is not None else None
        self._on_progress = progress
        self._timeout = timeout
        self._policy = poll_policy
        self._poll_interval = 1.0 / poll_rate
        # Batch-wide metadata is checked now, so a typo fails the call, not every item.
        resolve_fields(defaults=defaults)
        self._defaults = defaults
        self.progress = BatchProgress()
        # Totals stay None until the count's first chunk is in.
        self.progress.counting = self._count_items is not None
        self._read = 0
        self._input_over = False
        self._sending: set[str] = set()  # journal keys whose content this run sends
        self._results: asyncio.Queue[Any] = asyncio.Queue(maxsize=2 * upload_concurrency + 16)
        self._pull_lock = asyncio.Lock()
        # Items read from the input but not yet reported: each reported result frees one, so
        # reading the input never runs ahead of analyses however fast uploads are.
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._input_error: BaseException | None = None
        # Keyed by a number per item, not by video id: two items may share a video (the same
        # file twice in a journaled batch) and each still needs its own result.
        self._waiting: dict[int, _Waiting] = {}
        self._due: list[tuple[float, int]] = []
        self._crash: BaseException | None = None
        self._seq = itertools.count()
        self._upload_numbers = itertools.count()
        self._wakeup = asyncio.Event()
        self._uploads_over = False
        self._upload_slots = asyncio.Semaphore(upload_concurrency)
        # Keys this run is claiming or owns, so its own repeats of an item wait in memory.
        self._active: dict[str, asyncio.Event] = {}
        # Video ids that exist but are neither in the journal nor handed to the consumer yet:
        # if the batch stops now, they are journaled then, or named in a log line.
        self._unsafe: dict[str, _Unrecorded] = {}
        self._consumed = asyncio.Event()
        self._started = False
        self._journal_open = False
        self._supervisor: asyncio.Task[None] | None = None
        self._shut = False
        self._cut_short: dict[asyncio.Future[CreatedVideo], tuple[BatchItem, str | None, int]] = {}
        # What the analyses seen so far predict, and what each waiting video's polls saw.
        self._learned = SampleLog(policy=poll_policy, limit=LEARNED_SAMPLES)
        self._watches: dict[int, Watch] = {}

    async def start(self) -> None:
        """Open the journal (a JournalError here means nothing was created) and start the
        workers; idempotent."""
        if self._started:
            return
        self._started = True
        if self._journal is not None:
            await self._journal.open()
            self._journal_open = True
        self._supervisor = asyncio.create_task(self._supervise())

    async def results(self) -> AsyncGenerator[BatchResult, None]:
        """Run the batch, yielding each item's result as it completes."""
        try:
            await self.start()
            while True:
                result = await self._results.get()
                self._consumed.set()
                if result is _END:
                    break
                if result.video_id is not None:
                    self._unsafe.pop(result.video_id, None)
                yield result
            assert self._supervisor is not None
            await self._supervisor
            # Never silent: a failing input iterable, or a failure of the batch machinery
            # itself (say the journal's disk is full), ends the batch with its error.
            if self._input_error is not None:
                raise self._input_error
            if self._crash is not None:
                raise self._crash
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        """Stop every task of the batch, release its claims and close its journal;
        idempotent."""
        if self._shut:
            return
        self._shut = True
        try:
            if self._supervisor is not None:
                self._supervisor.cancel()
                await asyncio.gather(self._supervisor, return_exceptions=True)
            await self._settle_cut_short()
            await self._journal_unsafe()
            where = "may not be in the journal" if self._journal is not None else "was not reported"
            for video_id, unrecorded in self._unsafe.items():
                log.warning(
                    "batch_upload stopped: video %s (%s) was created but %s",
                    video_id,
                    _describe(unrecorded.item),
                    where,
                )
            self._unsafe.clear()
            for trace in list(self.traces):
                trace.close(asyncio.CancelledError("batch_upload stopped"))
        finally:
            if self._journal is not None and self._journal_open:
                try:
                    # Claims this run still holds are free at once for a rerun or another
                    # batch (else they wait for the lease to run out).
                    await self._journal.release_all()
                except JournalError as exc:
                    log.warning("batch_upload: could not release the journal's claims: %s", exc)
                finally:
                    await self._journal.close()

    async def _settle_cut_short(self) -> None:
        """Wait (briefly) for creates the stop interrupted, to name any video they made."""
        if not self._cut_short:
            return
        done, pending = await asyncio.wait(self._cut_short, timeout=CUT_SHORT_WAIT)
        for create in pending:
            create.cancel()
            log.warning(
                "batch_upload stopped: a create for %s did not answer in time; it may have "
                "made a video the batch never saw",
                _describe(self._cut_short[create][0]),
            )
        for create in done:
            if not create.cancelled() and create.exception() is None:
                item, key, generation = self._cut_short[create]
                created = create.result()
                self._unsafe[created.id] = _Unrecorded(item, key, generation, created)
        self._cut_short.clear()

    async def _journal_unsafe(self) -> None:
        """Journal the videos created but not recorded when the batch stopped (a create cut
        short, or a record interrupted), with their claims, so a rerun uploads to them."""
        if self._journal is None or not self._journal_open:
            return
        for video_id, unrecorded in list(self._unsafe.items()):
            if unrecorded.key is None:
                continue
            try:
                written = await self._journal.record(
                    unrecorded.key,
                    "created",
                    generation=unrecorded.generation,
                    video_id=video_id,
                    target=_target(unrecorded.created),
                )
            except JournalError:
                return  # the rest are named in the WARNING lines
            if written:
                del self._unsafe[video_id]

    async def _supervise(self) -> None:
        workers = [asyncio.create_task(self._upload_worker()) for _ in range(self._concurrency)]
        poller = asyncio.create_task(self._poll_loop())
        tasks = [*workers, poller]
        counter = None
        if self._count_items is not None:
            counter = asyncio.create_task(self._count(self._count_items))
            tasks.append(counter)

        async def pipeline() -> None:
            await asyncio.gather(*workers)
            self._uploads_over = True
            self._wakeup.set()
            await poller
            if counter is not None:
                # A rerun that restores everything can outrun its count: the last report
                # still gets final totals (the count reads what the batch read, no more).
                await counter

        main = asyncio.create_task(pipeline())
        tasks.append(main)
        awaited = [main]
        if self._journal is not None:
            awaited.append(asyncio.create_task(self._heartbeat(main)))
            tasks.append(awaited[-1])
        try:
            await asyncio.gather(*awaited)
        except Exception as exc:
            self._crash = exc
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        # Only reached when not cancelled: the consumer is still reading, so this cannot block
        # for good.
        await self._results.put(_END)

    async def _heartbeat(self, main: asyncio.Task[None]) -> None:
        # Keeps this run's claims live; a failure (the journal's disk, say) stops the batch,
        # since claims that lapse could let another batch upload the same items.
        while not main.done():
            await asyncio.wait({main}, timeout=self._journal_or_fail().lease_seconds / 4)
            if not main.done():
                await self._journal_or_fail().renew()

    def _journal_or_fail(self) -> Journal:
        assert self._journal is not None
        return self._journal

    # -- input and output --------------------------------------------------------------------

    async def _next_item(self) -> Any:
        async with self._pull_lock:
            if self._input_over:
                return _END
            try:
                if self._async_items is not None:
                    item = await anext(self._async_items)
                else:
                    assert self._sync_items is not None
                    item = next(self._sync_items)
            except (StopIteration, StopAsyncIteration):
                self._end_of_input()
                return _END
            except Exception as exc:
                # The caller's iterable failed: finish what is in flight, then raise it.
                self._input_error = exc
                self._end_of_input()
                return _END
            self._read += 1
            return item

    def _end_of_input(self) -> None:
        self._input_over = True
        if self.progress.total is None or self.progress.counting:
            # Exact now: every item is read (a count still running only adds bytes).
            self.progress.total = max(self._read, self.progress.total or 0)
            self._report()

    # -- counting the input ahead (see _batch_count) -----------------------------------------

    async def _count(self, items: Iterable[BatchItem]) -> None:
        try:
            await count_input(
                items, inspect=self._inspect, weigh=self._weigh, on_count=self._counted
            )
        except Exception:
            # Only a display's totals depend on it: they go back to unknown, the batch goes on.
            log.debug("batch_upload: counting the input failed", exc_info=True)
            progress = self.progress
            progress.counting = False
            progress.bytes_to_send = None
            if not self._input_over:
                progress.total = None
            self._report()

    def _inspect(self, item: BatchItem) -> tuple[int, str | None]:
        """An item's size and (journaled) key, or (0, None) for one that will fail; on a
        worker thread."""
        try:
            path, fields = self._checked(item)
            size = path.stat().st_size
            if self._journal is None:
                return size, None
            return size, item_key(self._client.service, path, fields.as_dict())
        except Exception:
            return 0, None  # it fails when its turn comes, sending nothing

    async def _weigh(self, facts: tuple[int, str | None]) -> int:
        size, key = facts
        if key is None or self._journal is None:
            return size
        if key in self._sending:
            return size  # this run sends it (its journal row may already say so)
        entry = await self._journal.get(key)
        # Restored on its turn: an earlier run (or another batch) uploaded it already.
        return 0 if entry is not None and entry.state in ("uploaded", "done") else size

    def _counted(self, count: int, weight: int, done: bool) -> None:
        progress = self.progress
        if not self._input_over:
            progress.total = max(count, progress.total or 0)
        progress.bytes_to_send = weight
        progress.counting = not done
        if done:
            self._sending.clear()
        self._report()

    async def _emit(self, result: BatchResult) -> None:
        # Called exactly once per item read from the input.
        trace = _ITEM_TRACE.get()
        if trace is not None:
            trace.close(result.error)
        if result.ok:
            self.progress.succeeded += 1
        else:
            self.progress.failed += 1
        self._report()
        await self._results.put(result)
        self._in_flight.release()

    def _report(self) -> None:
        self.progress.waiting = len(self._waiting)
        if self._on_progress is not None:
            try:
                self._on_progress(self.progress)
            except Exception:
                # A display bug must not lose videos: log it and carry on.
                log.exception("batch_upload: the progress callback raised")

    # -- uploads -----------------------------------------------------------------------------

    async def _upload_worker(self) -> None:
        while True:
            # Start nothing new while the consumer has a backlog of results to read: one that
            # stopped reading (and did not close the batch) soon stops the uploads.
            while self._results.qsize() >= self._concurrency:
                self._consumed.clear()
                await self._consumed.wait()
            await self._in_flight.acquire()
            item = await self._next_item()
            if item is _END:
                self._in_flight.release()
                return
            self.progress.started += 1
            if not self.hooks.tracers:
                await self._process(item)
                continue
            task = _VideoTrace(self, item).start(self._process(item))
            try:
                await asyncio.wait({task})
            finally:
                if not task.done():  # this worker is cancelled: the item is, too, at once
                    task.cancel()
                    await asyncio.wait({task})
            task.result()

    async def _process(self, item: BatchItem) -> None:
        key: str | None = None
        created: list[str] = []
        try:
            path, fields = self._checked(item)
            if self._journal is None:
                video_id = await self._create_and_upload(item, path, fields, None, 0, created)
                await self._uploaded(item, None, video_id, generation=0, record=False)
                return
            key = item_key(self._client.service, path, fields.as_dict())
            while not await self._process_journaled(item, path, fields, key, created):
                # Another batch or process took the item over (this one was frozen past its
                # lease, say): wait for its owner and report what it recorded.
                log.info(
                    "batch_upload: %s was taken over by another batch or process; following it",
                    _describe(item),
                )
        except asyncio.CancelledError:
            raise
        except JournalError:
            raise  # the journal cannot be written: stop the batch rather than lose track
        except Exception as exc:
            self.progress.upload_failed += 1
            # A video created before the failure is named, so it can be inspected.
            await self._emit(
                BatchResult(item, video_id=created[-1] if created else None, error=exc)
            )

    async def _process_journaled(
        self, item: BatchItem, path: Path, fields: VideoFields, key: str, created: list[str]
    ) -> bool:
        """Claim the item and take it to its result or its wait; False when the claim was
        lost to another batch or process (nothing was recorded)."""
        claim = await self._claim(key)
        entry = claim.entry
        generation = claim.generation
        if not claim.owned:
            assert entry is not None
            if entry.state == "done":
                self.progress.uploaded += 1
                self.progress.restored += 1
                await self._emit(self._restore(item, entry))
            else:
                assert entry.video_id is not None
                await self._uploaded(
                    item, key, entry.video_id, generation=generation, record=False, resumed=True
                )
            return True
        try:
            try:
                video_id, arrived = await self._send_owned(item, path, fields, key, claim, created)
            except (asyncio.CancelledError, JournalError, _ClaimLost):
                raise
            except Exception as exc:
                # Released with the failure recorded (its video and target kept), so a rerun
                # or another batch tries again, to the same video.
                if not await self._journal_or_fail().record(
                    key, "error", generation=generation, error=exc
                ):
                    return False
                raise
            return await self._uploaded(
                item, key, video_id, generation=generation, record=True, resumed=arrived
            )
        except _ClaimLost:
            return False
        finally:
            self._unclaim(key)

    async def _send_owned(
        self,
        item: BatchItem,
        path: Path,
        fields: VideoFields,
        key: str,
        claim: Claim,
        created: list[str],
    ) -> tuple[str, bool]:
        """Get an owned item's content to storage: its video id, and whether an earlier run's
        upload had already arrived."""
        if self.progress.counting:
            # Counted as bytes to send even if the count reaches it after this run's own
            # journal write says "uploaded" (kept only while the count runs).
            self._sending.add(key)
        entry = claim.entry
        if claim.abandoned and entry is not None and entry.state == "claimed":
            # The one window left: a run that ended (crashed) between Create Video's answer
            # and its journal write leaves a video nothing records.
            log.warning(
                "batch_upload: an earlier run stopped while creating the video for %s; "
                "it may have left an unused video (orphan) that this run cannot know of",
                _describe(item),
            )
        resume = None
        if entry is not None and entry.video_id is not None:
            # A crash, Ctrl-C or failure after Create Video: ask the API whether the content
            # arrived, so it is never sent twice, and else send it to the same target.
            video = await self._recorded_video(entry.video_id)
            if video is not None and video.status == VideoStatus.SUCCESS:
                return entry.video_id, True
            if video is not None and entry.target is not None:
                resume = CreatedVideo(entry.video_id, entry.target.url, entry.target.fields)
        video_id = await self._create_and_upload(
            item,
            path,
            fields,
            key,
            claim.generation,
            created,
            resume=resume,
            marked=entry is None or entry.state == "claimed",
        )
        return video_id, False

    async def _claim(self, key: str, *, replacing: str | None = None) -> Claim:
        """Claim ``key``, waiting while another task, batch or process owns it. The caller
        must ``_unclaim`` an owned claim once it has recorded the item's next state."""
        while (event := self._active.get(key)) is not None:
            await event.wait()
        self._active[key] = asyncio.Event()
        try:
            journal = self._journal_or_fail()
            delay = 0.02
            while (claim := await journal.claim(key, replacing=replacing)) is None:
                # Another batch or process works on it: look again soon, then less often.
                await asyncio.sleep(delay)
                delay = min(2 * delay, 1.0)
        except BaseException:
            self._unclaim(key)
            raise
        if not claim.owned:
            self._unclaim(key)
        return claim

    def _unclaim(self, key: str) -> None:
        event = self._active.pop(key, None)
        if event is not None:
            event.set()

    def _checked(self, item: BatchItem) -> tuple[Path, VideoFields]:
        spec = item if isinstance(item, VideoSpec) else VideoSpec(item)
        fields = resolve_fields(
            domain=spec.domain,
            activity=spec.activity,
            rep_count=spec.rep_count,
            source=spec.source,
            defaults=self._defaults,
        )
        return check_file(spec.path), fields

    async def _recorded_video(self, video_id: str) -> Video | None:
        """A journaled video as the API has it now, or None when it is gone (404)."""
        try:
            return await self._client.get_video(video_id)
        except NotFoundError:
            log.info("batch_upload: journaled video %s is gone (404); creating a new one", video_id)
            return None

    async def _create_and_upload(
        self,
        item: BatchItem,
        path: Path,
        fields: VideoFields,
        key: str | None,
        generation: int,
        created_ids: list[str],
        *,
        resume: CreatedVideo | None = None,
        marked: bool = True,
    ) -> str:
        """Upload the item to ``resume`` (a journaled video still waiting for its content), or
        to a new video; an expired presign is replaced by a new video once.

        ``marked``: the item's journal row is in state ``claimed``, which tells a rerun after a
        crash that a create may have been in flight; otherwise it is put there before a create.
        """
        source = UploadSource(path)
        self.progress.bytes_total += source.size
        counted = 0
        mine = UploadProgress(item, bytes_total=source.size)
        number = next(self._upload_numbers)

        def on_bytes(sent: int, total: int) -> None:
            # A retried upload restarts from 0: count only bytes beyond what was counted.
            nonlocal counted
            if sent > counted:
                self.progress.bytes_sent += sent - counted
                counted = sent
                mine.bytes_sent = sent
                self._report()

        async def journal_created(created: CreatedVideo) -> None:
            created_ids.append(created.id)
            self._unsafe[created.id] = _Unrecorded(item, key, generation, created)
            if self._journal is None or key is None:
                return
            try:
                # With its target, before any byte is sent: a rerun uploads to this video.
                written = await self._journal.record(
                    key,
                    "created",
                    generation=generation,
                    video_id=created.id,
                    target=_target(created),
                )
            except JournalError:
                log.warning(
                    "batch_upload: video %s (%s) was created but the journal could not "
                    "record it; it is an unused orphan",
                    created.id,
                    _describe(item),
                )
                self._unsafe.pop(created.id, None)
                raise
            # Safe in the journal: a rerun finds it, so stopping now orphans nothing.
            self._unsafe.pop(created.id, None)
            if not written:
                log.warning(
                    "batch_upload: video %s (%s) was created but another batch or process "
                    "took the item over before the journal recorded it; it is an unused orphan",
                    created.id,
                    _describe(item),
                )
                raise _ClaimLost

        async def mark_creating() -> None:
            nonlocal marked
            if marked or self._journal is None or key is None:
                return
            if not await self._journal.record(key, "claimed", generation=generation):
                raise _ClaimLost
            marked = True

        async with self._upload_slots:
            for attempt in (1, 2):
                if attempt == 1 and resume is not None:
                    created = resume
                    created_ids.append(created.id)
                else:
                    await mark_creating()
                    created = await self._create(item, source, fields, key, generation)
                    marked = False  # "created" from here on
                    await journal_created(created)
                mine.video_id = created.id
                self.progress.uploading[number] = mine
                self._report()
                try:
                    await self._client.upload(created, source, on_bytes)
                except UploadError as exc:
                    if attempt == 1 and presign_expired(exc):
                        if resume is not None:
                            log.info(
                                "batch_upload: the upload target of journaled video %s (%s) "
                                "expired; creating a new video",
                                resume.id,
                                _describe(item),
                            )
                        continue
                    raise
                finally:
                    del self.progress.uploading[number]
                return created.id
            raise AssertionError("unreachable")  # pragma: no cover

    async def _create(
        self,
        item: BatchItem,
        source: UploadSource,
        fields: VideoFields,
        key: str | None,
        generation: int,
    ) -> CreatedVideo:
        # A create cut short by stopping the batch may still make a video: the request is let
        # finish (shielded), so shutdown can journal (or name) the video it made.
        create = asyncio.ensure_future(self._client.create_video(source.name, source.size, fields))
        try:
            return await asyncio.shield(create)
        except asyncio.CancelledError:
            self._cut_short[create] = (item, key, generation)
            raise
        except GuruError as exc:
            if CREATE_REPEAT_RISK in str(exc):
                # Its answer was lost: the one way left to a video nothing records.
                log.warning(
                    "batch_upload: Create Video for %s failed after it may have reached the "
                    "service; it may have left an unused video (orphan) whose id is unknown",
                    _describe(item),
                )
            raise

    async def _uploaded(
        self,
        item: BatchItem,
        key: str | None,
        video_id: str,
        *,
        generation: int,
        record: bool,
        resumed: bool = False,
    ) -> bool:
        """Hand an uploaded item to the poll loop (or to the consumer without ``wait``); False
        when the journal refused to record it (the claim was lost)."""
        if (
            self._journal is not None
            and key is not None
            and record
            and not await self._journal.record(
                key, "uploaded", generation=generation, video_id=video_id
            )
        ):
            return False
        self.progress.uploaded += 1
        if resumed:
            self.progress.restored += 1
        if not self._wait:
            await self._emit(BatchResult(item, video_id=video_id))
            return True
        number = next(self._seq)
        self._waiting[number] = _Waiting(
            number,
            item,
            video_id,
            key,
            time.monotonic() + self._timeout,
            self._policy.interval,
            generation=generation,
            resumed=resumed,
            trace=_ITEM_TRACE.get(),
        )
        heapq.heappush(self._due, (time.monotonic(), number))
        self._report()
        self._wakeup.set()
        return True

    def _restore(self, item: BatchItem, entry: JournalEntry) -> BatchResult:
        # Only finished items are restored ("done" always holds the final analysis); items
        # that failed are tried again on a rerun.
        analysis = None
        if entry.analysis is not None:
            analysis = structure(
                decode_json(entry.analysis.encode(), what="journal"), Analysis, what="journal"
            )
            if analysis.video_id is None and entry.video_id is not None:
                # Journals written before Analysis.video_id existed hold analyses without it.
                analysis = evolve(analysis, video_id=entry.video_id)
        return BatchResult(item, video_id=entry.video_id, analysis=analysis)

    async def _recreate(self, waiting: _Waiting) -> BatchResult | None:
        """Replace a journaled video that answers 404 with a new one, once; None when the
        item is waiting again (on the new video), else its final result."""
        assert waiting.key is not None
        gone = waiting.video_id
        log.info("batch_upload: journaled video %s is gone (404); creating a new one", gone)
        journal = self._journal_or_fail()
        while True:
            claim = await self._claim(waiting.key, replacing=gone)
            entry = claim.entry
            generation = claim.generation
            if not claim.owned:
                # Another batch replaced it already ("uploaded" or "done" with another video):
                # follow that video.
                assert entry is not None
                assert entry.video_id is not None
                if entry.state == "done":
                    return self._restore(waiting.item, entry)
                video_id = entry.video_id
                break
            try:
                path, fields = self._checked(waiting.item)
                video_id = await self._create_and_upload(
                    waiting.item, path, fields, waiting.key, generation, [], marked=False
                )
                written = await journal.record(
                    waiting.key, "uploaded", generation=generation, video_id=video_id
                )
            except _ClaimLost:
                written = False
            except JournalError:
                raise
            except Exception as exc:
                # Released with the failure recorded, so a rerun (or another batch) tries again.
                await journal.record(waiting.key, "error", generation=generation, error=exc)
                raise
            finally:
                self._unclaim(waiting.key)
            if written:
                break
            # Another batch or process took the item over: follow what it records.
        waiting.video_id = video_id
        waiting.generation = generation
        waiting.resumed = False
        waiting.last = None
        now = time.monotonic()
        waiting.deadline = now + self._timeout
        waiting.wait = self._policy.interval
        heapq.heappush(self._due, (now, waiting.number))
        return None

    # -- the shared poll loop ----------------------------------------------------------------

    async def _poll_loop(self) -> None:
        """Poll every waiting video from one loop: requests start at most ``poll_rate`` per
        second with at most POLL_CONCURRENCY in flight, however many videos wait."""
        slots = asyncio.Semaphore(POLL_CONCURRENCY)
        inflight: set[asyncio.Task[None]] = set()
        failures: list[BaseException] = []
        await self._warm_start()

        def finished(task: asyncio.Task[None]) -> None:
            inflight.discard(task)
            slots.release()
            if not task.cancelled() and (error := task.exception()) is not None:
                failures.append(error)
            self._wakeup.set()

        try:
            while True:
                if failures:
                    raise failures[0]  # the journal failed: the batch stops with it
                if not self._due:
                    if self._uploads_over and not inflight:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                delay = self._due[0][0] - time.monotonic()
                if delay > 0:
                    self._wakeup.clear()
                    # Sleep until the next video is due, or until something changes.
                    with contextlib.suppress(asyncio.TimeoutError):
                        await wait_for(self._wakeup.wait(), timeout=delay)
                    continue
                _, number = heapq.heappop(self._due)
                if self._first_poll_later(number):
                    continue
                await slots.acquire()
                trace = self._waiting[number].trace
                poll = self._poll_one(number)
                task = asyncio.create_task(poll) if trace is None else trace.start(poll)
                inflight.add(task)
                task.add_done_callback(finished)
                await asyncio.sleep(self._poll_interval)
        finally:
            for task in inflight:
                task.cancel()
            await asyncio.gather(*inflight, return_exceptions=True)

    async def _poll_one(self, number: int) -> None:
        waiting = self._waiting[number]
        try:
            result = await self._check(waiting)
        except asyncio.CancelledError:
            raise
        except JournalError:
            raise  # the journal cannot be written: stop the batch rather than lose track
        except Exception as exc:
            # Whatever failed, the item still gets its one result.
            result = BatchResult(waiting.item, video_id=waiting.video_id, error=exc)
        if result is None:
            return
        del self._waiting[number]
        self._watches.pop(number, None)
        await self._emit(result)

    async def _check(self, waiting: _Waiting) -> BatchResult | None:
        """Poll one video; its final result, or None after scheduling its next poll."""
        video_id = waiting.video_id
        hint = None
        try:
            analysis, hint = await self._client.get_analysis(video_id)
        except NotFoundError as exc:
            if waiting.resumed and waiting.key is not None:
                # A video recorded by an earlier run that no longer exists: every rerun would
                # fail the same way, so the item is created and uploaded again (once).
                return await self._recreate(waiting)
            return BatchResult(waiting.item, video_id=video_id, error=exc)
        except GuruError as exc:
            if not is_transient_poll_error(exc):
                return BatchResult(waiting.item, video_id=video_id, error=exc)
            analysis = None
        now = time.monotonic()
        watch = self._watches.get(waiting.number)
        if analysis is not None:
            waiting.last = analysis
            if watch is not None:
                watch.seen(done=analysis.is_done, now=now)
            if analysis.is_done:
                if self._journal is not None and waiting.key is not None:
                    # Refused only if another batch replaced the video since (it was gone for
                    # them): this analysis is still this item's result, reported as it is.
                    await self._journal.record(
                        waiting.key,
                        "done",
                        generation=waiting.generation,
                        video_id=video_id,
                        analysis=to_json(analysis).decode(),
                    )
                # A Failed analysis often ends early (unreadable content): not learned from.
                if watch is not None and analysis.status == AnalysisStatus.COMPLETE:
                    await self._learn(watch)
                return BatchResult(waiting.item, video_id=video_id, analysis=analysis)
        if now >= waiting.deadline:
            error = analysis_timeout(
                video_id,
                timeout=self._timeout,
                last=waiting.last,
                resume=f"await_analysis({video_id!r}) again, or rerun the batch with its journal",
            )
            return BatchResult(waiting.item, video_id=video_id, error=error)
        if watch is not None and watch.schedule is not None:
            step, waiting.wait = watch.schedule.next_wait(now - watch.origin, waiting.wait, hint)
        else:
            step, waiting.wait = self._policy.next_wait(waiting.wait, hint)
        heapq.heappush(self._due, (min(now + step, waiting.deadline), waiting.number))
        return None

    # -- learning each video's analysis time (see _prediction) ---------------------------------

    async def _warm_start(self) -> None:
        # A journal keeps what earlier runs learned: this run's first videos poll on it.
        if self._journal is None:
            return
        rows = await self._journal.analysis_samples(self._client.service, limit=LEARNED_SAMPLES)
        self._learned.extend(
            [DurationSample(r.seconds, r.width, r.size, r.video_seconds) for r in rows]
        )

    def _first_poll_later(self, number: int) -> bool:
        """Plan a video's polls when it comes up first; True when its first poll was put off
        to its planned time (it went back in the queue)."""
        waiting = self._waiting[number]
        watch = self._watches.get(number)
        if watch is not None and watch.video_id == waiting.video_id:
            return False
        if waiting.resumed:
            # Uploaded by an earlier run, at a time this one does not know: polled on the
            # policy, and nothing learned from it.
            self._watches.pop(number, None)
            return False
        # The upload ended when the video started waiting, its deadline a timeout later.
        origin = waiting.deadline - self._timeout
        size = _size_of(waiting.item)
        schedule = self._learned.schedule(size=size, origin=origin)
        self._watches[number] = Watch(waiting.video_id, origin, size, schedule)
        if schedule is None:
            return False
        first = min(origin + schedule.first, waiting.deadline)
        if first <= time.monotonic():
            return False
        heapq.heappush(self._due, (first, number))
        return True

    async def _learn(self, watch: Watch) -> None:
        sample = watch.sample()
        if sample is None:
            return
        self._learned.add(sample)
        if self._journal is None:
            return
        kept = AnalysisSample(sample.seconds, sample.width, sample.size, sample.video_seconds)
        try:
            await self._journal.add_analysis_sample(
                self._client.service, kept, keep=LEARNED_SAMPLES
            )
        except JournalError as exc:
            # Only a rerun's head start is lost; the item's own state was recorded.
            log.debug("batch_upload: analysis time not journaled: %s", exc)


class BatchRunner(Protocol):
    """What a BatchUpload runs: this process's BatchRun, or a fleet producer's run."""

    @property
    def progress(self) -> BatchProgress: ...

    async def start(self) -> None:
        """Start the batch (a failure here means nothing was done); idempotent."""

    def results(self) -> AsyncGenerator[BatchResult, None]:
        """The batch's results; the generator's end stops the batch."""
        ...

    async def shutdown(self) -> None:
        """Stop everything the batch runs; idempotent."""


class BatchUpload:
    """What ``GuruSession.batch_upload`` and ``Fleet.batch_upload`` return: the batch's results
    as an async iterator, and an async context manager that stops the batch when its block
    ends.

    ::

        async with guru.batch_upload(paths, journal="batch.db") as results:
            async for r in results:
                if r.error is not None:
                    break  # leaving the block stops every upload, create and poll at once

    Iterating it without ``async with`` works too; then stop an unfinished batch with
    ``await results.aclose()`` (or ``contextlib.aclosing``), else its uploads go on in the
    background until the object is garbage collected.
    """

    def __init__(self, run: BatchRunner) -> None:
        self._run = run
        self._results = run.results()

    @property
    def progress(self) -> BatchProgress:
        """The live counters of the batch."""
        return self._run.progress

    def __aiter__(self) -> BatchUpload:
        return self

    async def __anext__(self) -> BatchResult:
        return await anext(self._results)

    async def aclose(self) -> None:
        """Stop the batch now: cancel its uploads and polls, release its journal claims and
        close the journal. Videos created but not recorded anywhere are logged at WARNING."""
        try:
            await self._results.aclose()
        finally:
            await self._run.shutdown()

    async def __aenter__(self) -> BatchUpload:
        try:
            # Opens the journal now, so a bad journal fails the ``async with`` line itself.
            await self._run.start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _describe(item: BatchItem) -> str:
    path = item.path if isinstance(item, VideoSpec) else item
    return repr(os.fspath(path)) if isinstance(path, (str, os.PathLike)) else repr(path)


def _size_of(item: BatchItem) -> int | None:
    path = item.path if isinstance(item, VideoSpec) else item
    try:
        return os.stat(path).st_size if isinstance(path, (str, os.PathLike)) else None
    except OSError:
        return None
