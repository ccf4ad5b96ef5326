"""batch_upload and download against the emulator over real sockets.

Every batch test checks the batch's one promise: exactly one result per input item, whatever
happens to the item, and a video is never uploaded twice (even when the batch is killed and
run again with its journal).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import signal
import sqlite3
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest

from guru_async import (
    Activity,
    Analysis,
    AnalysisStatus,
    AnalysisTimeoutError,
    BadRequestError,
    BatchProgress,
    BatchResult,
    CreatedVideo,
    Domain,
    GuruConnectionError,
    GuruSession,
    Unvalidated,
    UploadError,
    VideoSpec,
)
from guru_async._client import Client
from guru_async.testing import (
    ANALYSIS_ROUTE,
    CREATE_ROUTE,
    DOWNLOAD_ROUTE,
    FAILURE_REASON,
    GET_VIDEO_ROUTE,
    UNANALYZABLE_MARKER,
    UPLOAD_ROUTE,
    FaultRule,
    GuruEmulator,
)
from tests.helpers import recorded_on

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().with_name("batch_worker.py")

MakeFile = Callable[..., Path]


async def collect(results: AsyncIterator[BatchResult]) -> list[BatchResult]:
    """Drain a batch into a list."""
    return [r async for r in results]


def small_files(video_file: MakeFile, count: int, prefix: str = "clip") -> list[Path]:
    """``count`` 2 KiB files with distinct random contents."""
    return [video_file(f"{prefix}-{i:03d}.mp4", size=2048) for i in range(count)]


def sha256(path: Path) -> str:
    """The hex SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def create_bodies(emulator: GuruEmulator) -> dict[str, dict[str, Any]]:
    """The JSON bodies of every Create Video request, by filename."""
    bodies = [rec.json for rec in recorded_on(emulator, CREATE_ROUTE)]
    return {body["filename"]: body for body in bodies if isinstance(body, dict)}


def journal_states(journal: Path) -> Counter[str]:
    """How many journal rows are in each state, read straight from the SQLite file."""
    with contextlib.closing(sqlite3.connect(journal)) as db:
        return Counter(dict(db.execute("SELECT state, COUNT(*) FROM items GROUP BY state")))


# -- 1. a large batch ----------------------------------------------------------------------------


async def test_200_items_give_one_complete_result_each(
    guru: GuruSession, emulator: GuruEmulator, video_file: MakeFile
) -> None:
    """200 files give exactly 200 ok results, one per file, each uploaded exactly once."""
    paths = small_files(video_file, 200)

    results = await collect(
        guru.batch_upload(paths, upload_concurrency=16, poll_rate=1000, activity="squat")
    )

    assert len(results) == 200
    assert Counter(r.item for r in results) == Counter(paths)
    assert all(r.ok and r.error is None for r in results)
    for r in results:
        assert r.analysis is not None
        assert r.analysis.status == AnalysisStatus.COMPLETE
        assert r.analysis.activity == Activity.SQUAT
    video_ids = {r.video_id for r in results}
    assert len(video_ids) == 200
    assert set(emulator.uploads_completed) == video_ids
    assert set(emulator.uploads_completed.values()) == {1}
    # Each result names the video that holds that item's bytes, not some other item's.
    for r in results:
        assert isinstance(r.item, Path)
        assert r.video_id is not None
        assert emulator.videos[r.video_id].content_sha256 == sha256(r.item)
    assert emulator.requests[CREATE_ROUTE] == 200


# -- 2. failures stay in their own result --------------------------------------------------------


async def test_each_failure_is_reported_in_its_own_result(
    guru: GuruSession, emulator: GuruEmulator, video_file: MakeFile, tmp_path: Path
) -> None:
    """Bad paths, bad metadata, a refused upload and a failed analysis each get their own
    result with the right error, and the good files still succeed."""
    missing = tmp_path / "missing.mp4"
    folder = tmp_path / "a-folder"
    folder.mkdir()
    bad_activity = VideoSpec(video_file("bad-activity.mp4", size=2048), activity="juggling")
    bad_pair = VideoSpec(video_file("bad-pair.mp4", size=2048), domain="running", activity="squat")
    refused = video_file("refused.mp4", size=2048)
    unanalyzable = video_file("unanalyzable.mp4", content=UNANALYZABLE_MARKER + os.urandom(2048))
    good = small_files(video_file, 3, prefix="good")
    items: list[Any] = [missing, folder, bad_activity, bad_pair, refused, unanalyzable, *good]
    # The first upload to reach storage is refused. One worker takes items in input order, so
    # that is `refused` (the items before it fail before any request).
    emulator.faults.add(FaultRule(route=UPLOAD_ROUTE, kind="status", status=403, rate=1.0, times=1))

    results = await collect(guru.batch_upload(items, upload_concurrency=1, activity="squat"))

    assert len(results) == len(items)
    by_item = {id(r.item): r for r in results}
    assert set(by_item) == {id(item) for item in items}

    def result(item: Any) -> BatchResult:
        return by_item[id(item)]

    assert isinstance(result(missing).error, FileNotFoundError)
    assert isinstance(result(folder).error, IsADirectoryError)
    for spec in (bad_activity, bad_pair):
        assert type(result(spec).error) is ValueError
        assert result(spec).video_id is None
    assert "juggling" in str(result(bad_activity).error)
    for r in (result(missing), result(folder), result(bad_activity), result(bad_pair)):
        assert not r.ok
        assert r.analysis is None

    rejected = result(refused)
    assert isinstance(rejected.error, UploadError)
    assert rejected.error.status == 403
    assert rejected.error.code == "AccessDenied"
    assert rejected.video_id is not None
    assert not rejected.ok
    assert emulator.uploads_completed[rejected.video_id] == 0

    failed = result(unanalyzable)
    assert failed.error is None
    assert not failed.ok
    assert failed.analysis is not None
    assert failed.analysis.status == AnalysisStatus.FAILED
    assert failed.analysis.reason == FAILURE_REASON == "LOW_QUALITY_POSE_ESTIMATE"

    for path in good:
        r = result(path)
        assert r.ok
        assert r.analysis is not None
        assert r.analysis.status == AnalysisStatus.COMPLETE
        assert r.video_id is not None
        assert emulator.uploads_completed[r.video_id] == 1
    # Bad paths and bad metadata are caught before any request: only 5 videos were created.
    assert emulator.requests[CREATE_ROUTE] == 5
    assert sorted(create_bodies(emulator)) == sorted(
        ["refused.mp4", "unanalyzable.mp4", *(p.name for p in good)]
    )


# -- 3. per-item metadata ------------------------------------------------------------------------


async def test_video_spec_metadata_overrides_the_batch_defaults(
    guru: GuruSession, emulator: GuruEmulator, video_file: MakeFile
) -> None:
    """VideoSpec fields override the batch-wide ones, and an item's own activity picks its
    domain rather than the batch's default domain."""
    plain = video_file("plain.mp4", size=2048)
    sprint = VideoSpec(video_file("sprint.mp4", size=2048), activity="sprint", source="item-src")
    reps = VideoSpec(video_file("reps.mp4", size=2048), rep_count=9)
    items: list[Any] = [plain, sprint, reps]

    results = await collect(
        guru.batch_upload(
            items,
            upload_concurrency=3,
            domain="weightlifting",
            activity="squat",
            rep_count=5,
            source="batch-src",
        )
    )

    assert len(results) == 3
    assert all(r.ok for r in results), [r.error for r in results]
    by_name = {
        Path(r.item.path if isinstance(r.item, VideoSpec) else r.item).name: r for r in results
    }
    created = create_bodies(emulator)

    assert created["plain.mp4"] == {
        "filename": "plain.mp4",
        "size": 2048,
        "source": "batch-src",
        "domain": "weightlifting",
        "activity": "squat",
        "repCount": 5,
    }
    # The sprint's own activity wins, and the batch's weightlifting domain is not sent with it.
    sprint_body = created["sprint.mp4"]
    assert sprint_body["activity"] == "sprint"
    assert sprint_body.get("domain", "running") == "running"
    assert sprint_body["source"] == "item-src"
    assert sprint_body["repCount"] == 5
    assert created["reps.mp4"]["repCount"] == 9
    assert created["reps.mp4"]["activity"] == "squat"
    assert created["reps.mp4"]["source"] == "batch-src"

    sprint_video = emulator.videos[str(by_name["sprint.mp4"].video_id)]
    assert sprint_video.activity is Activity.SPRINT
    assert sprint_video.effective_domain is Domain.RUNNING
    assert sprint_video.source == "item-src"
    sprint_analysis = by_name["sprint.mp4"].analysis
    assert sprint_analysis is not None
    assert sprint_analysis.domain == Domain.RUNNING
    assert sprint_analysis.activity == Activity.SPRINT

    plain_video = emulator.videos[str(by_name["plain.mp4"].video_id)]
    assert plain_video.activity is Activity.SQUAT
    assert plain_video.domain is Domain.WEIGHTLIFTING
    assert plain_video.rep_count == 5
    reps_video = emulator.videos[str(by_name["reps.mp4"].video_id)]
    assert reps_video.activity is Activity.SQUAT
    assert reps_video.rep_count == 9


async def test_an_unvalidated_item_activity_is_sent_as_given(
    guru: GuruSession, emulator: GuruEmulator, video_file: MakeFile
) -> None:
    """A batch item's Unvalidated activity reaches Create Video as given (the service's 400 is
    the item's error), as it does for create_video, instead of being refused by the SDK."""
    item = VideoSpec(
        video_file("handstand.mp4", size=2048),
        domain="calisthenics",
        activity=Unvalidated("handstand"),
    )

    (result,) = await collect(guru.batch_upload([item]))

    assert create_bodies(emulator)["handstand.mp4"] == {
        "filename": "handstand.mp4",
        "size": 2048,
        "domain": "calisthenics",
        "activity": "handstand",
    }
    assert isinstance(result.error, BadRequestError)
    assert result.error.status == 400


# -- 4. wait=False -------------------------------------------------------------------------------


async def test_wait_false_yields_once_uploaded_without_polling(
    start_emulator: Callable[..., Any],
    session_for: Callable[..., GuruSession],
    video_file: MakeFile,
) -> None:
    """With wait=False each result carries the video id and no analysis as soon as its upload
    is done, while the (slow) analyses are still pending and never polled."""
    emu: GuruEmulator = await start_emulator(analysis_delay=60.0)
    guru = session_for(emu)
    paths = small_files(video_file, 6)

    results = await collect(guru.batch_upload(paths, upload_concurrency=3, wait=False))

    assert Counter(r.item for r in results) == Counter(paths)
    for r in results:
        assert r.ok
        assert r.analysis is None
        assert r.error is None
        assert r.video_id is not None
        assert emu.uploads_completed[r.video_id] == 1
        assert emu.videos[r.video_id].analysis_status() is AnalysisStatus.PENDING
    assert emu.requests[ANALYSIS_ROUTE] == 0


# -- 5. kill and resume --------------------------------------------------------------------------


def stored_files(storage_dir: Path) -> dict[str, tuple[int, int]]:
    """The emulator's committed uploads (named by video id): name -> (inode, mtime_ns)."""
    found = {}
    for path in storage_dir.iterdir():
        if not path.name.endswith(".part"):
            st = path.stat()
            found[path.name] = (st.st_ino, st.st_mtime_ns)
    return found


@contextlib.asynccontextmanager
async def standalone_emulator(*args: str) -> AsyncIterator[dict[str, str]]:
    """Run ``python -m guru_async.testing --json`` in its own process; yield its endpoints."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "guru_async.testing",
        "--json",
        *args,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), timeout=20)
        yield json.loads(line)
    finally:
        if process.returncode is None:
            process.terminate()
        assert await asyncio.wait_for(process.wait(), timeout=10) == 0


async def emulator_stats(endpoints: dict[str, str]) -> dict[str, Any]:
    """The standalone emulator's counters, read from its stats endpoint."""
    async with aiohttp.ClientSession() as http, http.get(endpoints["stats_url"]) as response:
        assert response.status == 200
        stats: dict[str, Any] = await response.json()
        return stats


async def start_worker(
    endpoints: dict[str, str],
    journal: Path,
    concurrency: int,
    files: list[Path],
    *,
    env: dict[str, str] | None = None,
) -> asyncio.subprocess.Process:
    """Start tests/batch_worker.py on ``files`` against the standalone emulator (with extra
    ``env``, and then its stderr captured)."""
    extra = env
    env = {
        **os.environ,
        **(extra or {}),
        "PYTHONPATH": str(REPO),
        "GURU_BASE_URL": endpoints["base_url"],
        "GURU_TOKEN_URL": endpoints["token_url"],
        "GURU_CLIENT_ID": endpoints["client_id"],
        "GURU_CLIENT_SECRET": endpoints["client_secret"],
    }
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(WORKER),
        str(journal),
        str(concurrency),
        *map(str, files),
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=None if extra is None else asyncio.subprocess.PIPE,
    )


async def read_result(process: asyncio.subprocess.Process) -> dict[str, Any] | None:
    """The worker's next result line, or None at the end of its output."""
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), timeout=20)
    return json.loads(line) if line else None


@pytest.mark.slow
async def test_killed_worker_resumes_from_journal_without_reuploading(
    tmp_path: Path, video_file: MakeFile
) -> None:
    """A batch process killed with SIGKILL mid-run and rerun with its journal ends with one
    result and exactly one uploaded video per item, never rewriting an upload."""
    files = [video_file(f"resume-{i:02d}.mp4", size=64 * 1024) for i in range(30)]
    journal = tmp_path / "batch.db"
    storage_dir = tmp_path / "emulator-storage"
    # Instant analyses and two upload workers: results start while most files still wait to
    # be uploaded, so the kill lands in the middle of the upload phase.
    args = ("--analysis-delay", "0", "--storage-dir", str(storage_dir))
    async with standalone_emulator(*args) as endpoints:
        first = await start_worker(endpoints, journal, 2, files)
        first_run: list[dict[str, Any]] = []
        while len(first_run) < 3:
            line = await read_result(first)
            assert line is not None, "the worker ended before printing 3 results"
            first_run.append(line)
        first.send_signal(signal.SIGKILL)
        assert first.stdout is not None
        await first.stdout.read()  # drain whatever it printed before dying
        assert await first.wait() == -signal.SIGKILL
        after_kill = stored_files(storage_dir)
        assert len(after_kill) < len(files), "the worker finished its uploads before the kill"

        second = await start_worker(endpoints, journal, 2, files)
        second_run: list[dict[str, Any]] = []
        while (line := await read_result(second)) is not None:
            second_run.append(line)
        assert await second.wait() == 0
        after_resume = stored_files(storage_dir)
        stats = await emulator_stats(endpoints)

    names = [str(f) for f in files]
    assert all(r["ok"] and r["status"] == "Complete" for r in first_run + second_run)
    assert {r["item"] for r in first_run} <= set(names)
    # The rerun reports every item exactly once, with the same video for items already done.
    assert Counter(r["item"] for r in second_run) == Counter(names)
    resumed_ids = {r["item"]: r["video_id"] for r in second_run}
    for r in first_run:
        assert resumed_ids[r["item"]] == r["video_id"]
    assert len(set(resumed_ids.values())) == len(files)
    # Exactly one completed upload per item, to the video its result names, and no other.
    assert stats["uploads_completed"] == dict.fromkeys(resumed_ids.values(), 1)
    assert set(after_resume) == set(resumed_ids.values())
    # Nothing stored before the kill was uploaded again.
    for name, stamp in after_kill.items():
        assert after_resume[name] == stamp
    assert journal_states(journal) == {"done": len(files)}


async def test_closed_batch_resumes_in_process_without_reuploading(
    start_emulator: Callable[..., Any],
    session_for: Callable[..., GuruSession],
    video_file: MakeFile,
    tmp_path: Path,
) -> None:
    """A batch closed after a few results (as on Ctrl-C) and rerun with its journal yields
    every item once, restores finished items and uploads each item exactly once overall."""
    # Instant analyses and two upload workers: results come while most files still wait to be
    # uploaded, so the batch is closed in the middle of its uploads.
    emulator: GuruEmulator = await start_emulator(analysis_delay=0.0)
    paths = small_files(video_file, 40)
    journal = tmp_path / "batch.db"

    first: list[BatchResult] = []
    async with session_for(emulator) as guru:
        batch = guru.batch_upload(paths, upload_concurrency=2, journal=journal, poll_rate=1000)
        async with contextlib.aclosing(batch) as results:
            async for r in results:
                first.append(r)
                if len(first) == 5:
                    break
    assert len(first) == 5
    assert all(r.ok for r in first)
    # Closing the generator stopped the batch: none of its tasks outlive it.
    leftover = [t for t in asyncio.all_tasks() if "BatchRun" in repr(t.get_coro())]
    assert leftover == []
    finished_ids = {str(r.video_id) for r in first}
    attempts_before = Counter(emulator.upload_attempts)
    completed_before = sum(emulator.uploads_completed.values())
    posts_before = emulator.requests[UPLOAD_ROUTE]
    assert completed_before < len(paths), "the first run uploaded everything before closing"

    async with session_for(emulator) as guru:
        second = await collect(
            guru.batch_upload(paths, upload_concurrency=2, journal=journal, poll_rate=1000)
        )

    assert len(second) == len(paths)
    assert Counter(r.item for r in second) == Counter(paths)
    assert all(r.ok for r in second), [r.error for r in second if not r.ok]
    video_of = {r.item: r.video_id for r in second}
    for r in first:
        assert video_of[r.item] == r.video_id
        restored = next(s for s in second if s.item == r.item)
        assert restored.analysis == r.analysis
    # Finished items were not sent to storage again.
    for video_id in finished_ids:
        assert emulator.upload_attempts[video_id] == attempts_before[video_id] == 1
    # One completed upload per item in total, each to the video its result names.
    assert set(emulator.uploads_completed) == set(video_of.values())
    assert set(emulator.uploads_completed.values()) == {1}
    assert sum(emulator.uploads_completed.values()) == len(paths)
    # The rerun uploaded only the items that had no completed upload yet.
    assert emulator.requests[UPLOAD_ROUTE] - posts_before == len(paths) - completed_before
    assert journal_states(journal) == {"done": len(paths)}


async def test_timed_out_items_resume_waiting_on_rerun(
    start_emulator: Callable[..., Any],
    session_for: Callable[..., GuruSession],
    video_file: MakeFile,
    tmp_path: Path,
) -> None:
    """Items whose analysis outlasts the batch timeout get AnalysisTimeoutError naming their
    video, and a rerun with the journal waits for those same videos without uploading again."""
    emulator: GuruEmulator = await start_emulator(analysis_delay=0.8)
    paths = small_files(video_file, 4)
    journal = tmp_path / "batch.db"
    guru = session_for(emulator)

    first = await collect(guru.batch_upload(paths, journal=journal, timeout=0.1))

    assert Counter(r.item for r in first) == Counter(paths)
    for r in first:
        assert isinstance(r.error, AnalysisTimeoutError)
        assert r.error.video_id == r.video_id
        assert r.error.last is not None
        assert r.error.last.status == AnalysisStatus.PENDING
        assert not r.ok

    second = await collect(guru.batch_upload(paths, journal=journal, timeout=10))

    assert all(r.ok for r in second)
    assert {r.item: r.video_id for r in second} == {r.item: r.video_id for r in first}
    assert sum(emulator.uploads_completed.values()) == len(paths)
    assert emulator.requests[CREATE_ROUTE] == len(paths)


# -- 6. a lazy input of 100,000 items ------------------------------------------------------------


class StubClient(Client):
    """A client whose create, upload and analysis calls answer at once without I/O, so a
    huge batch measures only the batch machinery (this stubs the SDK's calls, not aiohttp)."""

    created = 0

    async def create_video(
        self, filename: str, size: int, fields: Any, *, max_retries: Any = None
    ) -> CreatedVideo:
        self.created += 1
        video_id = f"stub-{self.created}"
        await asyncio.sleep(0)  # a real create suspends on the network at least once
        return CreatedVideo(id=video_id, url="https://storage.invalid/guru-videos", fields={})

    async def upload(
        self, created: CreatedVideo, source: Any, progress: Any, max_retries: Any = None
    ) -> None:
        return None

    async def get_analysis(
        self, video_id: str, max_retries: int | None = None
    ) -> tuple[Analysis, float | None]:
        return Analysis(status=AnalysisStatus.COMPLETE), None


class StubSession(GuruSession):
    """A session whose batches run on a StubClient."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        real = self._client
        self.stub = StubClient(
            real.transport,
            base_url=self.base_url,
            service=real.service,
            allow_insecure_http=False,
            hooks=real.hooks,
        )
        self._client = self.stub

    @property
    def created(self) -> int:
        """Videos the stub created."""
        return self.stub.created


LAZY_ITEMS = 100_000


async def test_lazy_100k_input_keeps_tasks_and_read_ahead_bounded(video_file: MakeFile) -> None:
    """100,000 lazily generated items all get a result while the task count and how far the
    input is read ahead of the results both stay bounded."""
    path = video_file("one.mp4", size=2048)
    concurrency = 16
    pulled = 0

    def items() -> Iterator[VideoSpec]:
        nonlocal pulled
        for _ in range(LAZY_ITEMS):
            pulled += 1
            yield VideoSpec(path, activity="squat")

    # max_in_flight bounds items read but not yet reported; add the result queue (2c + 16)
    # and slack: a bounded pipeline stays under this, one that reads its input eagerly does not.
    max_in_flight = 64
    ahead_limit = max_in_flight + 2 * concurrency + 32
    received = 0
    max_ahead = 0
    task_counts = []
    stub = StubSession("stub-id", "stub-secret")
    async with stub as guru:
        async for r in guru.batch_upload(
            items(),
            upload_concurrency=concurrency,
            poll_rate=1e6,
            max_in_flight=max_in_flight,
            activity="squat",
        ):
            assert r.ok
            received += 1
            max_ahead = max(max_ahead, pulled - received)
            if received % 1000 == 0:
                task_counts.append(len(asyncio.all_tasks()))
        assert stub.created == LAZY_ITEMS

    assert received == LAZY_ITEMS
    assert len(task_counts) == LAZY_ITEMS // 1000
    assert max(task_counts) < concurrency + 20
    assert max_ahead <= ahead_limit, f"input read {max_ahead} items ahead of the results"


# -- 7. progress ---------------------------------------------------------------------------------

MONOTONIC_COUNTERS = ("started", "uploaded", "succeeded", "failed", "bytes_sent", "bytes_total")


def assert_monotonic(snapshots: list[dict[str, int]]) -> None:
    """Every counter but ``waiting`` never goes down from one snapshot to the next."""
    for before, after in itertools.pairwise(snapshots):
        for name in MONOTONIC_COUNTERS:
            assert after[name] >= before[name], f"{name} went down: {before} -> {after}"


async def test_progress_counters_only_grow_and_add_up(
    guru: GuruSession, video_file: MakeFile, tmp_path: Path
) -> None:
    """The progress callback sees counters that never decrease and end with every item
    counted and every byte sent."""
    sizes = [1000 * (i + 1) for i in range(8)]
    good = [video_file(f"p-{i}.mp4", size=size) for i, size in enumerate(sizes)]
    unanalyzable = video_file("p-bad.mp4", content=UNANALYZABLE_MARKER + b"x" * 500)
    items = [*good, unanalyzable, tmp_path / "missing.mp4"]
    snapshots: list[dict[str, int]] = []

    def progress(p: BatchProgress) -> None:
        snapshots.append(attrs.asdict(p))

    results = await collect(guru.batch_upload(items, upload_concurrency=4, progress=progress))

    assert len(results) == len(items)
    assert len(snapshots) > len(items)
    assert_monotonic(snapshots)
    last = snapshots[-1]
    assert last["succeeded"] + last["failed"] == len(items)
    assert last["succeeded"] == len(good)
    assert last["failed"] == 2
    assert last["started"] == len(items)
    assert last["uploaded"] == len(good) + 1
    assert last["bytes_total"] == sum(sizes) + unanalyzable.stat().st_size
    assert last["bytes_sent"] == last["bytes_total"]
    assert last["waiting"] == 0


async def test_progress_stays_monotonic_when_an_upload_is_retried(
    guru: GuruSession, emulator: GuruEmulator, video_file: MakeFile
) -> None:
    """An upload retried after a transient storage 503 does not make bytes_sent go down, and
    the batch still ends with bytes_sent == bytes_total."""
    paths = small_files(video_file, 4)
    emulator.faults.add(
        FaultRule(route=UPLOAD_ROUTE, kind="status", status=503, rate=1.0, times=1, retry_after=0)
    )
    snapshots: list[dict[str, int]] = []

    results = await collect(
        guru.batch_upload(
            paths, upload_concurrency=1, progress=lambda p: snapshots.append(attrs.asdict(p))
        )
    )

    assert all(r.ok for r in results)
    assert emulator.faults.fired[UPLOAD_ROUTE] == 1
    assert emulator.requests[UPLOAD_ROUTE] == 5
    assert_monotonic(snapshots)
    assert snapshots[-1]["bytes_sent"] == snapshots[-1]["bytes_total"] == 4 * 2048


# -- 8. download ---------------------------------------------------------------------------------


async def test_download_raw_and_overlay_are_the_uploaded_bytes(
    guru: GuruSession, emulator: GuruEmulator, video_file: MakeFile, tmp_path: Path
) -> None:
    """The raw video and an overlay download byte-identical to the upload, replacing dest by
    a rename that leaves no temporary file behind."""
    content = os.urandom(300_000)
    video_id = await guru.upload_video(video_file("dl.mp4", content=content), activity="squat")
    analysis = await guru.await_analysis(video_id, timeout=10)
    assert analysis.status == AnalysisStatus.COMPLETE
    out = tmp_path / "out"
    out.mkdir()
    raw = out / "raw.mp4"
    raw.write_bytes(b"an older file")
    old_inode = raw.stat().st_ino

    assert await guru.download(video_id, raw) == raw
    overlay = await guru.download(video_id, out / "overlay.mp4", overlay="all")
    skeleton = await guru.download(video_id, out / "skeleton.mp4", overlay="skeleton")

    assert raw.read_bytes() == content
    assert overlay.read_bytes() == content
    assert skeleton.read_bytes() == content
    assert raw.stat().st_ino != old_inode  # a new file renamed into place, not rewritten
    assert sorted(p.name for p in out.iterdir()) == ["overlay.mp4", "raw.mp4", "skeleton.mp4"]


async def test_cut_short_download_leaves_dest_untouched(
    guru: GuruSession, emulator: GuruEmulator, video_file: MakeFile, tmp_path: Path
) -> None:
    """A download whose body is cut short raises and leaves dest as it was, with no
    temporary file left in the folder."""
    video_id = await guru.upload_video(video_file("cut.mp4", size=200_000), activity="squat")
    out = tmp_path / "out"
    out.mkdir()
    dest = out / "dest.mp4"
    dest.write_bytes(b"keep me")
    emulator.faults.add(FaultRule(route=DOWNLOAD_ROUTE, kind="truncate", rate=1.0))

    with pytest.raises(GuruConnectionError):
        await guru.download(video_id, dest, max_retries=0)

    assert emulator.faults.fired[DOWNLOAD_ROUTE] == 1
    assert dest.read_bytes() == b"keep me"
    assert [p.name for p in out.iterdir()] == ["dest.mp4"]


async def test_download_rejects_unknown_overlay_and_missing_content(
    guru: GuruSession, emulator: GuruEmulator, tmp_path: Path
) -> None:
    """An unknown overlay and a video with nothing uploaded yet raise ValueError and write
    nothing."""
    created = await guru.create_video("later.mp4", size=10, activity="squat")
    out = tmp_path / "out"
    out.mkdir()
    dest = out / "dest.mp4"

    with pytest.raises(ValueError, match="unknown overlay 'wireframe'"):
        await guru.download(created.id, dest, overlay="wireframe")
    assert emulator.requests[GET_VIDEO_ROUTE] == 0

    with pytest.raises(ValueError, match="not available"):
        await guru.download(created.id, dest)
    with pytest.raises(ValueError, match="not available"):
        await guru.download(created.id, dest, overlay="all")
    assert emulator.requests[DOWNLOAD_ROUTE] == 0
    assert list(out.iterdir()) == []


# -- 9. an input that fails midway ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_input_error_propagates_after_pulled_items(
    guru: GuruSession, emulator: GuruEmulator, video_file: MakeFile, kind: str
) -> None:
    """When the input iterable raises midway, the items it gave are still uploaded and
    reported, and then its exception propagates."""
    paths = small_files(video_file, 3)

    def sync_items() -> Iterator[Path]:
        yield from paths
        raise RuntimeError("listing the bucket failed")

    async def async_items() -> AsyncIterator[Path]:
        for path in paths:
            yield path
        raise RuntimeError("listing the bucket failed")

    items = sync_items() if kind == "sync" else async_items()
    got: list[BatchResult] = []

    async def drain() -> None:
        async for r in guru.batch_upload(items, upload_concurrency=2):
            got.append(r)

    with pytest.raises(RuntimeError, match="listing the bucket failed"):
        await drain()

    assert Counter(r.item for r in got) == Counter(paths)
    assert all(r.ok for r in got)
    assert sum(emulator.uploads_completed.values()) == 3


# -- robustness against the caller's own code and repeated items ----------------------------------


async def test_a_raising_progress_callback_loses_no_video(
    guru: GuruSession, video_file: MakeFile
) -> None:
    """A progress callback that raises is logged, not fatal: every item still gets exactly one
    result."""
    paths = small_files(video_file, 6, prefix="noisy")

    def progress(p: BatchProgress) -> None:
        raise RuntimeError("display bug")

    results = await asyncio.wait_for(
        collect(guru.batch_upload(paths, progress=progress, activity="squat")), timeout=30
    )
    assert sorted(str(r.item) for r in results) == sorted(str(p) for p in paths)
    assert all(r.ok for r in results)


async def test_the_same_file_twice_in_a_journaled_batch_gets_two_results(
    guru: GuruSession, video_file: MakeFile, tmp_path: Path
) -> None:
    """An item repeated in a journaled batch still gets one result per occurrence."""
    a, b = small_files(video_file, 2, prefix="twice")
    results = await asyncio.wait_for(
        collect(
            guru.batch_upload(
                [a, a, b], upload_concurrency=1, journal=tmp_path / "twice.db", activity="squat"
            )
        ),
        timeout=30,
    )
    assert Counter(str(r.item) for r in results) == {str(a): 2, str(b): 1}
    assert all(r.ok for r in results)
