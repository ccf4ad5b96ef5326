"""The fleet: real worker processes, a real redis-server, the emulator over real sockets."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from guru_async import AnalysisStatus, BatchResult, SourceError, StreamSource, VideoSpec
from guru_async.fleet import Fleet, RedisUnavailableError
from guru_async.testing import CREATE_ROUTE, GuruEmulator

from .fleet_helpers import WorkerProcess, start_worker, worker_env
from .helpers import wait_until
from .redis_server import RedisServer, free_port

pytestmark = pytest.mark.slow

# Uploads of 32 KiB at 100 kB/s take about a third of a second: long enough to kill a worker
# in the middle of some, short enough for a 90-item batch to take seconds.
CLIP_SIZE = 32 * 1024
BANDWIDTH = 100_000.0


@pytest.fixture
async def fleet_emulator(
    start_emulator: Callable[..., Awaitable[GuruEmulator]],
) -> GuruEmulator:
    """An emulator with capped upload speed and analyses done 0.1 s after upload."""
    return await start_emulator(analysis_delay=0.1, storage_bandwidth=BANDWIDTH)


@pytest.fixture(autouse=True)
def fleet_account(monkeypatch: pytest.MonkeyPatch, fleet_emulator: GuruEmulator) -> None:
    """The producer in this process takes the workers' account from the environment."""
    monkeypatch.setenv("GURU_CLIENT_ID", fleet_emulator.client_id)
    monkeypatch.setenv("GURU_BASE_URL", fleet_emulator.base_url)


@pytest.fixture
async def workers(
    tmp_path: Path, fleet_emulator: GuruEmulator
) -> AsyncIterator[Callable[..., Awaitable[list[WorkerProcess]]]]:
    """Start worker processes against the emulator; all are killed at teardown."""
    started: list[WorkerProcess] = []

    async def start(redis_url: str, count: int) -> list[WorkerProcess]:
        batch = [
            start_worker(fleet_emulator, redis_url, tmp_path / f"worker-{len(started) + i}.log")
            for i in range(count)
        ]
        started.extend(batch)
        for worker in batch:
            await asyncio.to_thread(worker.wait_ready)
        return batch

    yield start
    for worker in started:
        worker.kill()


def make_clips(folder: Path, count: int) -> list[Path]:
    """``count`` files of distinct random content."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"clip-{i:03}.mp4"
        path.write_bytes(os.urandom(CLIP_SIZE))
        paths.append(path)
    return paths


def assert_stored_once(emu: GuruEmulator, files: list[Path]) -> None:
    """Every file's content reached storage exactly once, and no upload was repeated."""
    stored = collections.Counter(
        v.content_sha256 for v in emu.videos.values() if v.content_sha256 is not None
    )
    for path in files:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert stored[digest] == 1, f"{path.name} stored {stored[digest]} times"
    assert set(emu.uploads_completed.values()) == {1}


def assert_all_complete(results: list[BatchResult], files: list[Path]) -> None:
    assert sorted(str(r.item) for r in results) == sorted(str(p) for p in files)
    for r in results:
        assert r.error is None, f"{r.item}: {r.error!r}"
        assert r.analysis is not None
        assert r.analysis.status == AnalysisStatus.COMPLETE


async def test_fleet_batch_survives_a_worker_killed_mid_upload(
    tmp_path: Path,
    redis_url: str,
    fleet_emulator: GuruEmulator,
    workers: Callable[..., Awaitable[list[WorkerProcess]]],
) -> None:
    """90 items on 3 workers, one SIGKILLed mid-upload: 90 complete results, 90 videos (the
    cut-off uploads resumed on their recorded targets) plus one per possible orphan the other
    workers logged (a kill between Create Video's answer and its record), each file stored
    once, one token for the whole fleet."""
    emu = fleet_emulator
    files = make_clips(tmp_path / "clips", 90)
    fleet_workers = await workers(redis_url, 3)
    results: list[BatchResult] = []
    cut_short: list[str] = []

    async def kill_one_mid_upload() -> None:
        await wait_until(lambda: sum(emu.uploads_completed.values()) >= 20, timeout=30)
        fleet_workers[0].kill()
        cut_short.extend(v for v, n in emu.upload_attempts.items() if emu.uploads_completed[v] < n)

    killer = asyncio.create_task(kill_one_mid_upload())
    async with Fleet(redis_url, heartbeat=2, check_interval=1.0) as fleet:
        async for r in fleet.batch_upload(files, activity="squat"):
            results.append(r)
    await killer

    assert len(results) == 90
    assert_all_complete(results, files)
    assert_stored_once(emu, files)
    assert cut_short, "the killed worker had no upload in flight"
    orphans = [
        line
        for w in fleet_workers[1:]
        for line in w.log.read_text().splitlines()
        if "possible orphan" in line
    ]
    assert len(orphans) <= 4  # at most one per item the killed worker held (concurrency 4)
    assert len(emu.videos) == 90 + len(orphans), orphans
    assert emu.token_requests <= 2


async def test_missing_path_on_the_worker_is_its_items_typed_error(
    tmp_path: Path,
    redis_url: str,
    fleet_emulator: GuruEmulator,
    workers: Callable[..., Awaitable[list[WorkerProcess]]],
) -> None:
    """A path missing on the worker, and a folder, fail with FileNotFoundError and
    IsADirectoryError in their own results; the other items complete."""
    files = make_clips(tmp_path / "clips", 3)
    missing = tmp_path / "clips" / "not-there.mp4"
    folder = tmp_path / "clips"
    await workers(redis_url, 1)
    async with Fleet(redis_url, heartbeat=2) as fleet:
        results = [
            r
            async for r in fleet.batch_upload(
                [files[0], missing, files[1], folder, files[2]], activity="squat"
            )
        ]
    by_item = {r.item: r for r in results}
    assert len(results) == 5
    assert isinstance(by_item[missing].error, FileNotFoundError)
    assert "not-there.mp4" in str(by_item[missing].error)
    assert isinstance(by_item[folder].error, IsADirectoryError)
    assert by_item[missing].video_id is None
    assert_all_complete([by_item[p] for p in files], files)
    assert fleet_emulator.requests[CREATE_ROUTE] == 3


async def test_bad_item_metadata_fails_that_item_in_the_producer(redis_url: str) -> None:
    """An item with an unknown activity gets a ValueError result without reaching Redis."""
    async with Fleet(redis_url) as fleet:
        results = [r async for r in fleet.batch_upload([VideoSpec("a.mp4", activity="juggling")])]
    assert len(results) == 1
    assert isinstance(results[0].error, ValueError)
    assert "juggling" in str(results[0].error)


async def test_rerun_of_a_killed_producer_uploads_nothing_twice(
    tmp_path: Path,
    redis_url: str,
    fleet_emulator: GuruEmulator,
    workers: Callable[..., Awaitable[list[WorkerProcess]]],
) -> None:
    """A producer SIGKILLed mid-batch and rerun with the same journal name reports every item
    complete, and no content is uploaded twice."""
    files = make_clips(tmp_path / "clips", 30)
    await workers(redis_url, 2)
    args = [
        sys.executable,
        str(Path(__file__).parent / "fleet_producer.py"),
        redis_url,
        "nightly",
        *map(str, files),
    ]
    env = worker_env(fleet_emulator)
    first = await asyncio.create_subprocess_exec(*args, stdout=subprocess.PIPE, env=env)
    assert first.stdout is not None
    seen = 0
    while seen < 5:
        line = await first.stdout.readline()
        assert line, "the producer ended early"
        seen += 1
    first.kill()
    await first.wait()

    rerun = await asyncio.create_subprocess_exec(*args, stdout=subprocess.PIPE, env=env)
    out, _ = await asyncio.wait_for(rerun.communicate(), timeout=60)
    lines = [json.loads(line) for line in out.decode().splitlines()]

    assert rerun.returncode == 0
    assert sorted(line["item"] for line in lines) == sorted(map(str, files))
    assert all(line["ok"] for line in lines), [line["error"] for line in lines]
    assert_stored_once(fleet_emulator, files)


async def test_fleet_batch_survives_a_redis_restart(
    tmp_path: Path,
    start_redis: Callable[..., RedisServer],
    fleet_emulator: GuruEmulator,
    workers: Callable[..., Awaitable[list[WorkerProcess]]],
) -> None:
    """Redis (append-only file on) restarted mid-batch: every item completes, each file is
    stored once."""
    server = start_redis(appendonly=True)
    files = make_clips(tmp_path / "clips", 30)
    await workers(server.url, 2)
    results: list[BatchResult] = []
    async with Fleet(server.url, heartbeat=2, check_interval=1.0) as fleet:
        async for r in fleet.batch_upload(files, activity="squat"):
            results.append(r)
            if len(results) == 5:
                await asyncio.to_thread(server.restart)
    assert len(results) == 30
    assert_all_complete(results, files)
    assert_stored_once(fleet_emulator, files)


async def test_unreachable_redis_is_a_typed_error_before_anything_is_sent() -> None:
    """A Redis nothing listens on fails ``async with Fleet`` with RedisUnavailableError."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(RedisUnavailableError, match=r"127\.0\.0\.1"):
        async with Fleet(url):
            pass


async def test_wrong_redis_password_is_a_typed_error_that_hides_it(
    start_redis: Callable[..., RedisServer],
) -> None:
    """A wrong password fails with RedisUnavailableError whose message never shows it."""
    server = start_redis(password="right-horse-battery")
    url = f"redis://:wrong-staple-9@127.0.0.1:{server.port}/0"
    with pytest.raises(RedisUnavailableError) as info:
        async with Fleet(url):
            pass
    assert "password" in str(info.value)
    assert "wrong-staple-9" not in str(info.value)
    assert "wrong-staple-9" not in repr(Fleet(url))


def test_not_a_redis_url_is_a_value_error() -> None:
    """A URL of another scheme is refused when the Fleet is made."""
    with pytest.raises(ValueError, match="redis://"):
        Fleet("http://127.0.0.1:6379")


async def test_cli_batch_on_the_fleet_prints_the_table(
    tmp_path: Path,
    redis_url: str,
    fleet_emulator: GuruEmulator,
    workers: Callable[..., Awaitable[list[WorkerProcess]]],
) -> None:
    """``guru-async batch --fleet --redis URL`` runs on the workers and prints the usual table;
    the producer needs the account's client id, not its secret."""
    files = make_clips(tmp_path / "clips", 3)
    await workers(redis_url, 1)
    env = {k: v for k, v in worker_env(fleet_emulator).items() if k != "GURU_CLIENT_SECRET"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "guru_async",
        "batch",
        "--fleet",
        "--redis",
        redis_url,
        *map(str, files),
        "--activity",
        "squat",
        stdout=subprocess.PIPE,
        env=env,
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0
    text = out.decode()
    for path in files:
        assert str(path) in text
    assert text.count("Complete") == 3
    assert_stored_once(fleet_emulator, files)


async def test_demo_on_a_local_fleet_completes_every_video_once(tmp_path: Path) -> None:
    """``guru-async demo --fleet`` kills a worker mid-run and still stores every clip once."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "guru_async",
        "demo",
        "--fleet",
        "--out",
        str(tmp_path / "demo"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    text = out.decode() + err.decode()
    assert process.returncode == 0, text
    assert "SIGKILLed mid-run" in text
    assert "6 results for 6 clips, 6 videos stored, 0 uploaded twice" in text
    assert "Traceback" not in text  # the killed upload is expected, not an error to show


async def test_sigterm_finishes_uploads_in_flight_and_hands_back_the_rest(
    tmp_path: Path,
    redis_url: str,
    fleet_emulator: GuruEmulator,
    workers: Callable[..., Awaitable[list[WorkerProcess]]],
) -> None:
    """A worker stopped with SIGTERM mid-batch exits 0 without cutting an upload short, and a
    worker started later finishes the rest: every item complete, each file stored once."""
    emu = fleet_emulator
    files = make_clips(tmp_path / "clips", 16)
    (first,) = await workers(redis_url, 1)
    results: list[BatchResult] = []

    async def stop_then_replace() -> None:
        await wait_until(lambda: sum(emu.uploads_completed.values()) >= 2, timeout=30)
        assert await asyncio.to_thread(first.terminate) == 0
        await workers(redis_url, 1)

    swap = asyncio.create_task(stop_then_replace())
    async with Fleet(redis_url, heartbeat=2, check_interval=1.0) as fleet:
        async for r in fleet.batch_upload(files, activity="squat"):
            results.append(r)
    await swap

    assert_all_complete(results, files)
    assert_stored_once(emu, files)
    assert emu.upload_attempts == emu.uploads_completed  # no upload was cut short
    assert b"worker stopped" in first.log.read_bytes()


@contextlib.asynccontextmanager
async def source_server(content: bytes) -> AsyncIterator[str]:
    """A real aiohttp server on 127.0.0.1 the workers fetch from: ``/video.mp4`` is
    ``content``, ``/missing.mp4`` answers 404 and ``/short.mp4`` announces every byte of
    ``content`` but sends all but the last 1000 before closing. Yields its root URL."""

    async def serve(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name == "missing.mp4":
            return web.Response(status=404, text="<Error><Code>NoSuchKey</Code></Error>")
        response = web.StreamResponse(headers={"Content-Type": "video/mp4"})
        response.content_length = len(content)
        await response.prepare(request)
        if name == "short.mp4":
            await response.write(content[:-1000])
            assert request.transport is not None
            request.transport.close()
            return response
        await response.write(content)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/{name}", serve)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_url_items_are_streamed_by_the_worker_and_bad_sources_fail_alone(
    tmp_path: Path,
    redis_url: str,
    fleet_emulator: GuruEmulator,
    workers: Callable[..., Awaitable[list[WorkerProcess]]],
) -> None:
    """A worker streams an http URL item into storage like a path; a source URL that 404s or
    sends fewer bytes than its Content-Length fails with SourceError in its own result, and
    the other items complete, each stored once."""
    (path,) = make_clips(tmp_path / "clips", 1)
    content = os.urandom(CLIP_SIZE)
    await workers(redis_url, 1)
    async with source_server(content) as root, Fleet(redis_url, heartbeat=2) as fleet:
        good, missing, short = (f"{root}/{name}" for name in ("video", "missing", "short"))
        good, missing, short = f"{good}.mp4?sig=s3cr3t", f"{missing}.mp4", f"{short}.mp4"
        items = [good, path, missing, short]
        results = {r.item: r async for r in fleet.batch_upload(items, activity="squat")}
    assert len(results) == 4
    for ok in (good, path):
        analysis = results[ok].analysis
        assert results[ok].error is None, f"{ok}: {results[ok].error!r}"
        assert analysis is not None
        assert analysis.status == AnalysisStatus.COMPLETE
    stored = {v.filename: v.content_sha256 for v in fleet_emulator.videos.values()}
    assert stored["video.mp4"] == hashlib.sha256(content).hexdigest()
    assert_stored_once(fleet_emulator, [path])
    not_found = results[missing].error
    assert isinstance(not_found, SourceError)
    assert not_found.status == 404
    assert not_found.url == missing
    assert results[missing].video_id is None  # refused before any video was created
    lied = results[short].error
    assert isinstance(lied, SourceError)
    assert f"announced {CLIP_SIZE}" in str(lied)
    assert results[short].video_id is not None
    assert fleet_emulator.uploads_completed[results[short].video_id] == 0
    assert "s3cr3t" not in "".join(str(r.error) for r in results.values())


async def test_a_fleet_refuses_in_process_sources_before_enqueuing(redis_url: str) -> None:
    """A file object or a StreamSource among a fleet's items is a TypeError from the call
    itself, naming what a fleet takes, and nothing reaches the queue."""
    stream = StreamSource(io.BytesIO(b"video"), size=5, filename="a.mp4")
    async with Fleet(redis_url) as fleet:
        for source in (io.BytesIO(b"video"), stream):
            with pytest.raises(TypeError, match=r"a fleet takes paths .* and http\(s\) URLs"):
                fleet.batch_upload(["a.mp4", VideoSpec(source)], activity="squat")  # type: ignore[arg-type]
    import redis as redis_sync

    client = redis_sync.Redis.from_url(redis_url)
    try:
        assert client.keys("saq:*") == []
    finally:
        client.close()


def test_saq_log_lines_never_show_a_source_urls_query(caplog: pytest.LogCaptureFixture) -> None:
    """saq's job lines (which list a job's arguments) reach the log with a source URL's query,
    a possible presigned signature, cut out."""
    import guru_async.fleet._worker  # noqa: F401  (installs the filter on saq's logger)

    caplog.set_level(logging.DEBUG, logger="saq")
    job = {"path": "https://bucket.example/v.mp4?X-Amz-Signature=s3cr3t", "wait": True}
    logging.getLogger("saq").debug("Processing %s", job)
    (record,) = [r for r in caplog.records if r.name == "saq"]
    assert "s3cr3t" not in record.getMessage()
    assert "https://bucket.example/v.mp4?" in record.getMessage()
