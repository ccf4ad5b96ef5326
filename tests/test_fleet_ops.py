"""What an operator sees of a fleet: the producer's progress (workers, queued / running / done,
bytes in flight, a notice when no worker takes the queue), ``guru-async fleet status`` and the
workers' log lines. Real redis-server, real worker processes, the CLI through a pipe or a
pseudo-terminal read back with pyte."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import select
import socket
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pyte
import pytest
from saq.queue.redis import RedisQueue

from guru_async import BatchProgress
from guru_async.fleet import Fleet
from guru_async.fleet._protocol import account_of, upload_queue_name
from guru_async.testing import GuruEmulator

from .fleet_helpers import WorkerProcess, start_worker, worker_env
from .helpers import wait_until

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
# 160 kB at 100 kB/s: an upload takes about 1.6 s, long enough to see its bytes move.
CLIP_SIZE = 160_000
BANDWIDTH = 100_000.0


# Seconds an analysis takes in ops_emulator, read at each upload (a test may lengthen it).
ANALYSIS_SECONDS = {"value": 0.2}


@pytest.fixture
async def ops_emulator(start_emulator: Callable[..., Awaitable[GuruEmulator]]) -> GuruEmulator:
    """An emulator with throttled storage and analyses done 0.2 s after upload."""
    ANALYSIS_SECONDS["value"] = 0.2
    return await start_emulator(
        analysis_delay=lambda _video: ANALYSIS_SECONDS["value"], storage_bandwidth=BANDWIDTH
    )


@pytest.fixture(autouse=True)
def ops_account(monkeypatch: pytest.MonkeyPatch, ops_emulator: GuruEmulator) -> None:
    """A producer in this process takes the workers' account from the environment."""
    monkeypatch.setenv("GURU_CLIENT_ID", ops_emulator.client_id)
    monkeypatch.setenv("GURU_BASE_URL", ops_emulator.base_url)


@pytest.fixture
async def workers(
    tmp_path: Path, ops_emulator: GuruEmulator
) -> AsyncIterator[Callable[..., Awaitable[list[WorkerProcess]]]]:
    """Start worker processes against the emulator; all are killed at teardown."""
    started: list[WorkerProcess] = []

    async def start(redis_url: str, count: int, *extra: str) -> list[WorkerProcess]:
        batch = [
            start_worker(
                ops_emulator,
                redis_url,
                tmp_path / f"worker-{len(started) + i}.log",
                concurrency=2,
                extra=extra,
            )
            for i in range(count)
        ]
        started.extend(batch)
        for worker in batch:
            await asyncio.to_thread(worker.wait_ready)
        return batch

    yield start
    for worker in started:
        worker.kill()


def make_clips(folder: Path, count: int, size: int = CLIP_SIZE) -> list[Path]:
    """``count`` files of distinct random content."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"take-{i:02}.mp4"
        path.write_bytes(os.urandom(size))
        paths.append(path)
    return paths


def producer_env(emu: GuruEmulator, redis_url: str) -> dict[str, str]:
    """A CLI producer's environment: the account and the fleet's Redis, no secret."""
    env = {k: v for k, v in worker_env(emu).items() if k != "GURU_CLIENT_SECRET"}
    env["PYTHONPATH"] = str(REPO)
    env["GURU_REDIS_URL"] = redis_url
    return env


def batch_command(redis_url: str, files: list[Path], *extra: str) -> list[str]:
    """``batch ... --fleet`` with the Redis URL in ``GURU_REDIS_URL`` (see ``producer_env``);
    ``--fleet`` last, so no path is ever taken for its value."""
    del redis_url  # in the environment, out of ``ps``
    return [
        sys.executable, "-m", "guru_async", "batch",
        *map(str, files), "--activity", "squat", *extra, "--fleet",
    ]  # fmt: skip


async def test_pipe_shows_no_worker_once_then_the_fleets_counts(
    tmp_path: Path,
    redis_url: str,
    ops_emulator: GuruEmulator,
    workers: Callable[..., Awaitable[list[WorkerProcess]]],
) -> None:
    """A fleet batch with no worker says so once (queue name and start command) after the
    configured wait, its progress lines count 3 queued and no live worker instead of looking
    hung, and once a worker starts they count it and the items done."""
    files = make_clips(tmp_path / "clips", 3, size=20_000)
    process = await asyncio.create_subprocess_exec(
        *batch_command(redis_url, files, "--no-worker-warning", "1.5"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=producer_env(ops_emulator, redis_url),
    )
    assert process.stderr is not None
    lines: list[str] = []

    async def read() -> None:
        assert process.stderr is not None
        async for raw in process.stderr:
            lines.append(raw.decode().rstrip("\n"))

    reader = asyncio.create_task(read())
    await wait_until(lambda: any("WARNING" in line for line in lines), timeout=30)
    await workers(redis_url, 1)
    assert process.stdout is not None
    out = await asyncio.wait_for(process.stdout.read(), timeout=60)
    await asyncio.wait_for(process.wait(), timeout=30)
    await reader
    assert process.returncode == 0, "\n".join(lines)
    warnings = [line for line in lines if "WARNING" in line]
    assert len(warnings) == 1, warnings
    assert "no live worker on queue 'guru-fleet'" in warnings[0]
    assert "start one with 'guru-async worker'" in warnings[0]
    waiting = [
        line for line in lines if "fleet: no live worker, 3 queued, 0 running, 0 done" in line
    ]
    assert waiting, "\n".join(lines)
    assert "fleet: 1 worker, 0 queued, 0 running, 3 done" in lines[-1], lines[-1]
    assert out.decode().count("Complete") == 3


class PtyRun:
    """A command on a pseudo-terminal, its screen read back by pyte as it draws (in a
    thread), so a test can wait for what a user would see."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        leader, follower = os.openpty()
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 220, 0, 0))
        self.process = subprocess.Popen(
            args,
            env={**env, "TERM": "xterm-256color"},
            stdin=follower,
            stdout=follower,
            stderr=follower,
            close_fds=True,
        )
        os.close(follower)
        self._leader = leader
        self.screen = pyte.Screen(220, 40)
        self._stream = pyte.ByteStream(self.screen)
        self.frames: list[list[str]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            ready, _, _ = select.select([self._leader], [], [], 60)
            if not ready:
                return
            try:
                chunk = os.read(self._leader, 65536)
            except OSError:  # EIO: the command exited
                return
            if not chunk:
                return
            with self._lock:
                self._stream.feed(chunk)
                self.frames.append([line.rstrip() for line in self.screen.display])

    def shown(self, pattern: str) -> bool:
        """Whether some frame so far has a line matching ``pattern``."""
        with self._lock:
            return any(re.search(pattern, line) for frame in self.frames for line in frame)

    def finish(self, timeout: float = 60) -> int:
        status = self.process.wait(timeout=timeout)
        self._thread.join(timeout=10)
        os.close(self._leader)
        return status


async def test_terminal_shows_the_notice_then_workers_and_bytes_in_flight(
    tmp_path: Path,
    redis_url: str,
    ops_emulator: GuruEmulator,
    workers: Callable[..., Awaitable[list[WorkerProcess]]],
) -> None:
    """On a terminal, a fleet batch with no worker shows a fleet row (no live worker, 4
    queued) and the notice naming the queue and the start command; with two workers the row
    counts them and the items running, and per-file rows show the bytes the workers send."""
    files = make_clips(tmp_path / "clips", 4)
    run = PtyRun(
        batch_command(redis_url, files, "--no-worker-warning", "1.5"),
        producer_env(ops_emulator, redis_url),
    )
    try:
        # The display's own row (the log's WARNING is printed above the display, once).
        await wait_until(lambda: run.shown(r"^no live worker on queue 'guru-fleet'"), timeout=30)
        assert run.shown(r"^fleet: no live worker, 4 queued, 0 running, 0 done")
        assert run.shown(r"start one with 'guru-async worker'")
        await workers(redis_url, 2)
        await wait_until(lambda: run.shown(r"^fleet: 2 workers, 0 queued, 4 running"), timeout=30)
        status = await asyncio.to_thread(run.finish)
    finally:
        if run.process.poll() is None:
            run.process.kill()
    final = run.frames[-1]
    assert status == 0, "\n".join(final)
    # While no upload was done yet, per-file rows showed the bytes the workers sent.
    file_row = re.compile(r"^take-0\d\.mp4 .* ([\d.]+)/160\.0 kB")
    sending = [
        frame
        for frame in run.frames
        if any(line.startswith("uploads 0") for line in frame)
        and any((m := file_row.match(line)) and float(m.group(1)) > 0 for line in frame)
    ]
    assert sending, "no per-file row with bytes sent before the first upload was done"
    assert any(line.startswith("fleet: 2 workers, 0 queued, 0 running, 4 done") for line in final)
    assert not any(line.startswith("no live worker on queue") for line in final)
    assert len([line for line in final if "WARNING fleet: no live worker" in line]) == 1


async def test_fleet_progress_counts_items_and_bytes_from_the_workers(
    tmp_path: Path,
    redis_url: str,
    workers: Callable[..., Awaitable[list[WorkerProcess]]],
) -> None:
    """While workers upload, the producer's BatchProgress has each upload in flight with its
    bytes (never going back), the bytes sent before any upload is done, and items running;
    at the end every byte and item is counted once; the list's total is known from the start,
    and a journaled rerun counts every item restored, with nothing sent."""
    files = make_clips(tmp_path / "clips", 4)
    await workers(redis_url, 2)
    seen: list[dict[str, Any]] = []

    def note(p: BatchProgress) -> None:
        seen.append(
            {
                "uploading": {n: (u.bytes_sent, u.bytes_total) for n, u in p.uploading.items()},
                "bytes_sent": p.bytes_sent,
                "uploaded": p.uploaded,
                "queued": p.queued,
                "running": p.running,
                "workers": p.workers,
                "total": p.total,
            }
        )

    async with Fleet(redis_url, heartbeat=2, check_interval=1.0) as fleet:
        batch = fleet.batch_upload(files, activity="squat", progress=note, journal="ops")
        results = [r async for r in batch]
        final = batch.progress
        rerun = fleet.batch_upload(files, activity="squat", journal="ops")
        again = [r async for r in rerun]
    assert all(r.ok for r in results)
    mid_upload = [
        s for s in seen if s["uploaded"] == 0 and 0 < s["bytes_sent"] < len(files) * CLIP_SIZE
    ]
    assert mid_upload, "no bytes were counted before an upload finished"
    # Each upload in flight is listed with its size, and its bytes as a worker reports them
    # (the sending side's count: on loopback a clip is all in the socket buffers at once).
    in_flight = [b for s in seen if s["uploaded"] == 0 for b in s["uploading"].values() if b[0] > 0]
    assert in_flight, "no upload in flight showed its bytes"
    assert all(total == CLIP_SIZE for _, total in in_flight)
    assert max(s["running"] for s in seen) == 4
    assert 2 in {s["workers"] for s in seen}
    sent = [s["bytes_sent"] for s in seen]
    assert sent == sorted(sent)
    assert final.bytes_sent == final.bytes_total == len(files) * CLIP_SIZE
    assert (final.queued, final.running, final.succeeded, final.uploading) == (0, 0, 4, {})
    assert {s["total"] for s in seen} == {4}
    assert [r.video_id for r in again] == [r.video_id for r in again if r.ok]
    assert sorted(r.video_id or "" for r in again) == sorted(r.video_id or "" for r in results)
    p = rerun.progress
    assert (p.restored, p.uploaded, p.upload_failed, p.bytes_sent, p.total) == (4, 4, 0, 0, 4)


async def test_fleet_status_shows_workers_items_queues_rate_and_token(
    tmp_path: Path,
    redis_url: str,
    ops_emulator: GuruEmulator,
    workers: Callable[..., Awaitable[list[WorkerProcess]]],
) -> None:
    """``guru-async fleet status --json`` (and Fleet.status()) mid-batch: the two live workers
    with host, pid, concurrency, uptime and their current files by name; queue depths; items
    per state; the request rate against the --rate ceiling; the token's age. A process that
    registers on the queue without being a fleet worker (a monitor) is not counted; a pipe
    gets the same as plain text."""
    ANALYSIS_SECONDS["value"] = 8.0  # every item waits for its analysis while we look
    files = make_clips(tmp_path / "clips", 4, size=20_000)
    started = await workers(redis_url, 2, "--rate", "40")
    # A monitor registered in saq's worker registry (as saq's web UI process might be).
    account = account_of(ops_emulator.client_id, ops_emulator.base_url)
    monitor = RedisQueue.from_url(redis_url, name=upload_queue_name("guru-fleet", account))
    await monitor.worker_info("monitor", queue_key=monitor.name, metadata=None, ttl=60)
    env = producer_env(ops_emulator, redis_url)

    def run_status(*extra: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "guru_async", "fleet", "status", "--redis", redis_url, *extra],
            env=env,
            capture_output=True,
            timeout=60,
            check=False,
        )

    async with Fleet(redis_url, heartbeat=2, check_interval=1.0) as fleet:
        batch = fleet.batch_upload(files, activity="squat")
        consumer = asyncio.create_task(_consume(batch))

        async def published() -> bool:
            # Every item awaits its analysis, and the workers have said so.
            status = await fleet.status()
            items = [item for w in status.workers for item in w.items]
            return len(items) == 4 and {i.state for i in items} == {"awaiting analysis"}

        deadline = asyncio.get_running_loop().time() + 30
        while not await published():
            assert asyncio.get_running_loop().time() < deadline, await fleet.status()
            await asyncio.sleep(0.1)
        done = await asyncio.to_thread(run_status, "--json")
        piped = await asyncio.to_thread(run_status)
        results = await consumer
    await monitor.disconnect()
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert [(w["host"], w["pid"]) for w in status["workers"]] == sorted(
        (socket.gethostname(), w.pid) for w in started
    )
    for worker in status["workers"]:
        assert (worker["concurrency"], worker["max_waiting"]) == (2, 32)
        assert 0 < worker["uptime"] < 120
    current = [item for w in status["workers"] for item in w["items"]]
    assert sorted(item["file"] for item in current) == [p.name for p in files]
    assert all(item["video_id"] for item in current)
    assert status["uploads"] == {"queued": 0, "active": 0, "scheduled": 0}
    assert status["analyses"] == {"queued": 0, "active": 4, "scheduled": 0}
    assert status["items"] == {"created": 0, "uploaded": 4, "done": 0}
    assert status["rate_ceiling"] == 40.0
    assert 0 < status["request_rate"] <= 40
    assert 0 <= status["token_age"] < 120 < status["token_expires_in"]
    assert len(results) == 4
    text = piped.stdout.decode()
    assert piped.returncode == 0, piped.stderr
    assert "2 live workers" in text
    assert "\x1b" not in text
    assert all(p.name in text for p in files), text
    assert "items: 0 created, 4 uploaded, 0 done" in text
    assert "of a 40/s ceiling" in text
    assert "token: issued" in text


async def _consume(batch: Any) -> list[Any]:
    return [r async for r in batch]


async def test_worker_logs_one_info_line_per_item_step_with_file_and_video(
    tmp_path: Path,
    redis_url: str,
    workers: Callable[..., Awaitable[list[WorkerProcess]]],
) -> None:
    """A worker's log names the file and the video at INFO for an item's start, upload and
    analysis, and its failure (a file missing on the worker) in one line; no DEBUG lines."""
    files = make_clips(tmp_path / "clips", 1, size=20_000)
    missing = tmp_path / "clips" / "gone.mp4"
    (started,) = await workers(redis_url, 1)
    async with Fleet(redis_url, heartbeat=2, check_interval=1.0) as fleet:
        results = [r async for r in fleet.batch_upload([*files, missing], activity="squat")]
    video = next(r.video_id for r in results if r.ok)
    assert video is not None
    started.terminate()
    log = started.log.read_text()
    name = files[0].name
    assert re.search(rf"INFO fleet: {name}: uploading to video {video}$", log, re.M), log
    assert re.search(rf"INFO fleet: {name}: uploaded to video {video} \(20000 bytes", log), log
    assert re.search(rf"INFO fleet: {name}: analysis of video {video} done: Complete", log), log
    failures = [line for line in log.splitlines() if "gone.mp4" in line]
    assert len(failures) == 1, failures
    assert "fleet: gone.mp4: failed: FileNotFoundError" in failures[0]
    assert " DEBUG " not in log
    assert log.count(f"{name}:") == 3
