"""The fleet's learned poll schedule: its math, and real workers polling near the finish."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from guru_async import AnalysisStatus, BatchResult, GuruSession, PollPolicy
from guru_async._polling import poll_analysis
from guru_async._session import client_of
from guru_async.fleet import Fleet
from guru_async.fleet._schedule import (
    LAG,
    MAX_SAMPLES,
    LearnedSchedule,
    estimate,
    plan,
    quantile,
    usable,
)
from guru_async.testing import ANALYSIS_ROUTE, EmulatedVideo, GuruEmulator

from .fleet_helpers import WorkerProcess, start_worker

DEFAULT = PollPolicy()


def _polls(schedule: LearnedSchedule, finish: float) -> tuple[int, float]:
    """Walk the schedule (without sleeping) until a poll lands at or after ``finish``: the
    number of polls and the lag as a fraction of ``finish``."""
    at, wait, polls = schedule.first, schedule.policy.interval, 1
    while at < finish:
        step, wait = schedule.next_wait(at, wait, None)
        at += step
        polls += 1
    return polls, (at - finish) / finish


def test_no_schedule_until_enough_samples() -> None:
    """With fewer than 5 known durations a video is polled on the policy's own schedule."""
    assert plan([30.0] * 4, policy=DEFAULT, origin=0.0) is None
    assert plan([30.0] * 5, policy=DEFAULT, origin=0.0) is not None


def test_learned_schedule_polls_near_the_finish_with_small_lag() -> None:
    """Durations of 27-33 s learned: every analysis in that range costs at most 4 polls and is
    seen at most 15 % of its duration late (the default policy spends about 10)."""
    samples = [27.0 + 6.0 * i / 199 for i in range(200)]
    schedule = plan(samples, policy=DEFAULT, origin=100.0)
    assert schedule is not None
    assert 27.0 < schedule.first < 27.5
    assert schedule.late == pytest.approx(quantile(samples, 0.95) * (1 + LAG))
    assert schedule.delay(100.0) == pytest.approx(schedule.first)
    assert schedule.delay(100.0 + 40.0) == 0.0  # a job that starts late polls at once
    for finish in (27.5, 29.0, 30.0, 31.0, 33.0):
        polls, lag = _polls(schedule, finish)
        assert polls <= 4, finish
        assert 0 <= lag <= LAG, finish


def test_learned_schedule_keeps_the_floor_hint_and_fallback() -> None:
    """A server's hint still sets the next wait (no shorter than ``interval``), steps never go
    below ``interval``, and past the late quantile the policy's backoff takes over."""
    schedule = plan([20.0] * 10 + [40.0] * 10, policy=DEFAULT, origin=0.0)
    assert schedule is not None
    assert schedule.next_wait(25.0, 1.0, 7.0)[0] == 7.0
    assert schedule.next_wait(25.0, 1.0, 0.0)[0] == DEFAULT.interval
    assert schedule.next_wait(3.0, 1.0, None)[0] == DEFAULT.interval  # 0.15 x 3 s < 1 s
    step, base = schedule.next_wait(schedule.late + 1, 4.0, None)
    assert 3.6 <= step <= 4.4  # the policy's own wait of 4 s, jittered
    assert base == DEFAULT.max_interval


def test_no_learned_schedule_when_it_would_not_save_polls() -> None:
    """Durations spread from 1 to 100 s keep the policy's schedule: learning would not save
    polls on them."""
    assert plan([1.0, 100.0] * 10, policy=DEFAULT, origin=0.0) is None
    assert plan([1.0, 3.0, 100.0] * 10, policy=DEFAULT, origin=0.0) is None


def test_estimate_is_the_midpoint_or_one_step_early() -> None:
    """A duration is the midpoint between the last Pending and first done answers; done at the
    planned first poll is recorded a step earlier (half a step for a schedule from the video's
    size, whose first poll many analyses are done by); done at a late job's first poll is no
    news."""
    assert estimate(pending=20.0, done=30.0, first_poll=0.1, planned_first=None) == (25.0, 10.0)
    early = estimate(pending=None, done=23.0, first_poll=23.0, planned_first=23.0)
    assert early is not None
    assert early[0] == pytest.approx(23.0 / (1 + LAG))
    assert early[1] == pytest.approx(23.0 - early[0])
    sized = estimate(pending=None, done=23.0, first_poll=23.0, planned_first=23.0, sized=True)
    assert sized == (pytest.approx(21.5), pytest.approx(3.0))
    assert estimate(pending=None, done=60.0, first_poll=60.0, planned_first=23.0) is None
    assert estimate(pending=None, done=0.2, first_poll=0.2, planned_first=None) is None


async def test_first_poll_delay_counts_in_the_timeout(
    guru: GuruSession, emulator: GuruEmulator, video_file: Callable[..., Path]
) -> None:
    """A first-poll delay longer than the timeout still ends at the deadline with one poll, as
    a timeout without a delay would."""
    video_id = await guru.upload_video(video_file(), activity="squat")
    emulator.requests.clear()
    analysis = await asyncio.wait_for(
        poll_analysis(
            lambda: client_of(guru).get_analysis(video_id),
            video_id=video_id,
            timeout=0.3,
            policy=PollPolicy(interval=1.0),
            delay=3600.0,
        ),
        timeout=30,
    )
    assert analysis.status == AnalysisStatus.COMPLETE  # done 0.1 s after the upload
    assert emulator.requests[ANALYSIS_ROUTE] == 1


def test_coarse_estimates_give_way_to_precise_ones() -> None:
    """Once 5 estimates are known within 30 %, the coarse ones of the first, default-polled
    analyses are no longer learned from; before that, all are."""
    coarse = [(6.4, 3.4), (10.6, 5.0)] * 20
    precise = [(7.9, 1.0)] * 4
    assert len(usable(coarse + precise)) == 44
    assert usable(coarse + precise + [(8.1, 1.1)]) == [7.9] * 4 + [8.1]


# -- real workers, real Redis, the emulator over real sockets -----------------------------------

QUEUE = "learn"


def _delay(video: EmulatedVideo) -> float:
    """About 1.5 s, +/- 10 %, fixed per video id."""
    spread = hashlib.sha256(video.id.encode()).digest()[0] / 255
    return 1.5 * (0.9 + 0.2 * spread)


def _clips(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"clip-{i:03}.mp4"
        path.write_bytes(os.urandom(4096))
        paths.append(path)
    return paths


@pytest.mark.slow
async def test_fleet_polls_each_video_near_its_expected_finish(
    tmp_path: Path,
    redis_url: str,
    start_emulator: Callable[..., Awaitable[GuruEmulator]],
) -> None:
    """After a first batch teaches the fleet that analyses take ~1.5 s, a second batch costs at
    most 4 polls per video (5 requests with the create), every result still Complete, and the
    durations are kept in one bounded, expiring Redis list."""
    import redis as redis_sync

    emu = await start_emulator(analysis_delay=_delay)
    workers: list[WorkerProcess] = []
    try:
        for i in range(2):
            workers.append(
                start_worker(emu, redis_url, tmp_path / f"w{i}.log", extra=("--queue", QUEUE))
            )
        for worker in workers:
            await asyncio.to_thread(worker.wait_ready)

        async def batch(files: list[Path]) -> dict[str, BatchResult]:
            async with Fleet(
                redis_url,
                client_id=emu.client_id,
                base_url=emu.base_url,
                queue=QUEUE,
                heartbeat=2,
                check_interval=1.0,
            ) as fleet:
                return {str(r.item): r async for r in fleet.batch_upload(files, activity="squat")}

        await batch(_clips(tmp_path / "learn", 8))
        before = collections.Counter(r.path for r in emu.recorded)
        files = _clips(tmp_path / "learned", 12)
        results = await batch(files)
    finally:
        for worker in workers:
            worker.kill()

    assert sorted(results) == sorted(str(p) for p in files)
    polls = collections.Counter(r.path for r in emu.recorded) - before
    for r in results.values():
        assert r.error is None, r.error
        assert r.analysis is not None
        assert r.analysis.status == AnalysisStatus.COMPLETE
        assert r.video_id is not None
        assert 1 <= polls[f"/videos/{r.video_id}/analysis"] <= 4, polls
    client = redis_sync.Redis.from_url(redis_url)
    try:
        (key,) = client.keys(f"guru:fleet:*:{QUEUE}:durations")
        durations = [float(v.split()[0]) for v in client.lrange(key, 0, -1)]
        ttl = client.ttl(key)
    finally:
        client.close()
    assert 8 <= len(durations) <= min(20, MAX_SAMPLES)
    assert all(1.0 < d < 2.2 for d in durations), durations
    assert ttl > 0


@pytest.mark.slow
async def test_fleet_plans_each_video_from_its_size(
    tmp_path: Path,
    redis_url: str,
    start_emulator: Callable[..., Awaitable[GuruEmulator]],
) -> None:
    """Analyses that take 30 s per MB (+/- 5 %): after a first batch teaches the fleet, videos
    of 10 kB and 100 kB (0.3 s and 3 s analyses, a spread the one schedule for all cannot
    serve) each get at most 3 polls, and the fleet's samples carry the videos' sizes."""
    import redis as redis_sync

    queue = "by-size"
    emu = await start_emulator(
        analysis_delay=0.0, analysis_seconds_per_mb=30.0, analysis_spread=0.05, seed=3
    )
    workers: list[WorkerProcess] = []
    try:
        for i in range(2):
            workers.append(
                start_worker(emu, redis_url, tmp_path / f"w{i}.log", extra=("--queue", queue))
            )
        for worker in workers:
            await asyncio.to_thread(worker.wait_ready)

        async def batch(files: list[Path]) -> dict[str, BatchResult]:
            async with Fleet(
                redis_url,
                client_id=emu.client_id,
                base_url=emu.base_url,
                queue=queue,
                heartbeat=2,
                check_interval=1.0,
            ) as fleet:
                return {str(r.item): r async for r in fleet.batch_upload(files, activity="squat")}

        await batch(_sized_clips(tmp_path / "learn", [10_000 * (i % 10 + 1) for i in range(20)]))
        before = collections.Counter(r.path for r in emu.recorded)
        files = _sized_clips(tmp_path / "learned", [10_000, 100_000] * 5)
        results = await batch(files)
    finally:
        for worker in workers:
            worker.kill()

    polls = collections.Counter(r.path for r in emu.recorded) - before
    assert sorted(results) == sorted(str(p) for p in files)
    for r in results.values():
        assert r.error is None, r.error
        assert r.analysis is not None
        assert r.analysis.status == AnalysisStatus.COMPLETE
        assert 1 <= polls[f"/videos/{r.video_id}/analysis"] <= 3, polls
    client = redis_sync.Redis.from_url(redis_url)
    try:
        (key,) = client.keys(f"guru:fleet:*:{queue}:durations")
        entries = [v.decode().split() for v in client.lrange(key, 0, -1)]
    finally:
        client.close()
    assert len(entries) >= 25
    assert {int(size) for _, _, size in entries} <= {10_000 * (i + 1) for i in range(10)}


def _sized_clips(folder: Path, sizes: list[int]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, size in enumerate(sizes):
        path = folder / f"clip-{i:03}.mp4"
        path.write_bytes(os.urandom(size))
        paths.append(path)
    return paths


@pytest.mark.slow
async def test_benchmark_figure_counts_requests_and_lag(tmp_path: Path) -> None:
    """Figure 9f runs three batches on real workers and reports requests per video (the create
    and at least one poll each) and a lag fraction for the default and learned schedules."""
    from benchmarks import fleet as fleet_benchmark

    size = fleet_benchmark.Size(learn_videos=5, learn_seconds=1.0)
    figure = await fleet_benchmark._learned_polls(size, tmp_path)
    assert figure.number == "9f"
    assert figure.met is not None
    assert figure.ratio is not None
    assert figure.ratio > 0
    learned = float(figure.value.split(",")[0])
    default = float(figure.baselines.split(":")[1].split(",")[0])
    assert learned >= 2.0
    assert default >= 2.0
