"""Learned poll schedules from each video's size: the fit, the schedule, and a batch that learns
as it goes and starts the next run warm from its journal."""

from __future__ import annotations

import collections
import random
import sqlite3
import statistics
from pathlib import Path
from typing import Any

import pytest

from guru_async import AnalysisStatus, GuruSession, PollPolicy
from guru_async import _prediction as prediction
from guru_async._prediction import (
    LAG,
    DurationSample,
    Prediction,
    SampleLog,
    Watch,
    fit,
    theil_sen,
)
from guru_async.fleet._schedule import decode_sample, encode_sample
from guru_async.testing import ANALYSIS_ROUTE, GuruEmulator

DEFAULT = PollPolicy(jitter=0.0)


def _on_line(sizes: list[int], ratios: dict[int, float] | None = None) -> list[DurationSample]:
    """Samples on ``seconds = 1 + 2e-5 * size``, the ``i``-th scaled by ``ratios[i]``."""
    ratios = ratios or {}
    return [
        DurationSample((1 + 2e-5 * size) * ratios.get(i, 1.0), 0.1, size)
        for i, size in enumerate(sizes)
    ]


def test_theil_sen_ignores_an_outlier() -> None:
    """Five points on y = 2 + 3x and one far off it: the fitted line is exactly y = 2 + 3x."""
    xs = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    ys = [5.0, 8.0, 11.0, 14.0, 17.0, 100.0]
    assert theil_sen(xs, ys) == (2.0, 3.0)
    assert theil_sen([4.0, 4.0], [1.0, 3.0]) == (2.0, 0.0)  # one size: no slope
    with pytest.raises(ValueError, match="as many xs as ys"):
        theil_sen([1.0], [])


def test_fit_finds_the_line_and_its_relative_spread() -> None:
    """20 samples of 100 kB to 2 MB on 1 s + 20 s/MB, four of them off by -20 % to +30 %: the
    line is found exactly, the late quantile of duration/prediction is 1.11, and the first
    poll is at the prediction (the 45th percentile caps the mirrored low end, 0.89 x 1.15)."""
    sizes = [100_000 * (i + 1) for i in range(20)]
    model = fit(_on_line(sizes, {2: 0.8, 7: 0.9, 12: 1.1, 17: 1.3}))
    assert model is not None
    assert model.intercept == pytest.approx(1.0, rel=1e-9)
    assert model.slope == pytest.approx(2e-5, rel=1e-9)
    assert model.late == pytest.approx(1.11)
    assert model.first == pytest.approx(1.0)
    first, late = model.schedule_points(500_000)  # type: ignore[misc]
    assert first == pytest.approx(11.0)
    assert late == pytest.approx(11.0 * 1.11 * (1 + LAG))


def test_first_poll_mirrors_the_late_spread() -> None:
    """At each of 10 sizes three analyses take 0.8x, 1x and 1.2x the line: the line is found
    exactly, the late quantile is 1.2, and the first poll comes one lag after the low end
    mirrored from it (2 x 1 - 1.2 = 0.8), at 0.92x the prediction."""
    sizes = [100_000 * (i // 3 + 1) for i in range(30)]
    model = fit(_on_line(sizes, {i: (0.8, 1.0, 1.2)[i % 3] for i in range(30)}))
    assert model is not None
    assert model.intercept == pytest.approx(1.0, rel=1e-9)
    assert model.slope == pytest.approx(2e-5, rel=1e-9)
    assert model.late == pytest.approx(1.2)
    assert model.first == pytest.approx(0.8 * (1 + LAG))
    assert model.schedule_points(1_000_000) == (pytest.approx(21 * 0.92), pytest.approx(21 * 1.38))


def test_first_poll_is_held_when_the_late_quantile_is_wide() -> None:
    """At each of 10 sizes five analyses take 0.9x, 1x, 1x, 1.1x and 1.4x the line: the late
    quantile is 1.4, whose mirrored low end (a lag after 0.6, 0.69x the prediction) would poll
    nearly every video two or three times; the first poll is held at the 10th percentile, 0.9x."""
    pattern = (0.9, 1.0, 1.0, 1.1, 1.4)
    sizes = [100_000 * (i // 5 + 1) for i in range(50)]
    model = fit(_on_line(sizes, {i: pattern[i % 5] for i in range(50)}))
    assert model is not None
    assert (model.intercept, model.slope) == (pytest.approx(1.0), pytest.approx(2e-5))
    assert model.late == pytest.approx(1.4)
    assert model.first == pytest.approx(0.9)
    assert model.schedule_points(1_000_000) == (pytest.approx(18.9), pytest.approx(21 * 1.61))


def test_a_line_below_zero_goes_through_zero() -> None:
    """Videos of 300 kB to 1 MB at 30 s/MB, the larger ones up to 10 % slower: the Theil-Sen
    line would give an empty video -1.68 s (and a 10 kB one no duration at all); the fit goes
    through zero instead, at the median 30 s/MB, and a 10 kB video is predicted at 0.29 s (0.3 s
    times the median ratio of the nearest samples, 0.9725)."""
    sizes = [300_000 + 35_000 * i for i in range(21)]
    samples = [
        DurationSample(30e-6 * x * (0.95 + 0.1 * i / 20), 0.1, x) for i, x in enumerate(sizes)
    ]
    assert theil_sen([float(x) for x in sizes], [s.seconds for s in samples])[0] == pytest.approx(
        -1.6795, abs=1e-4
    )
    model = fit(samples)
    assert model is not None
    assert (model.intercept, model.slope) == (0.0, pytest.approx(3e-5))
    assert model.predict(10_000) == pytest.approx(0.3 * 0.9725)


def test_no_model_without_enough_sized_samples() -> None:
    """Four sized samples, or any number of one size, or none with a size, fit nothing."""
    assert fit(_on_line([100_000, 200_000, 300_000, 400_000])) is None
    assert fit(_on_line([100_000] * 10)) is None
    assert fit([DurationSample(10.0, 0.1)] * 10) is None
    assert fit(_on_line([100_000 * (i + 1) for i in range(5)])) is not None


def test_prediction_plans_each_video_from_its_size() -> None:
    """Durations of 3 to 41 s that follow the size: a 100 kB video's first poll comes at 3 s
    and a 2 MB one's at 41 s; a video of unknown size stays on the policy, since one schedule
    for all would not save polls on so wide a spread."""
    sizes = [100_000 * (i + 1) for i in range(20)]
    samples = _on_line(sizes)
    known = Prediction(samples, policy=DEFAULT)
    assert known.model is not None
    small = known.schedule(size=100_000, origin=50.0)
    large = known.schedule(size=2_000_000, origin=50.0)
    assert small is not None
    assert large is not None
    assert (small.first, large.first) == (pytest.approx(3.0), pytest.approx(41.0))
    assert large.late == pytest.approx(41.0 * (1 + LAG))
    assert large.delay(50.0) == pytest.approx(41.0)
    assert known.common is None
    assert known.schedule(size=None, origin=50.0) is None


def test_size_model_is_used_only_when_it_saves_polls() -> None:
    """When the durations do not follow the size (a 1 s and a 100 s analysis at every size)
    no learned schedule is used; with the size model switched off, durations of 19 to 21 s get
    the one schedule for all (first poll at the 5th percentile, 19.1 s)."""
    noise = [DurationSample(1.0 if i % 2 else 100.0, 0.1, 100_000 * (i % 7 + 1)) for i in range(30)]
    unrelated = Prediction(noise, policy=DEFAULT)
    assert unrelated.model is None
    assert unrelated.schedule(size=300_000, origin=0.0) is None
    samples = _on_line([900_000 + 5_000 * i for i in range(21)])
    prediction.SIZE_MODEL = False
    try:
        common_only = Prediction(samples, policy=DEFAULT)
    finally:
        prediction.SIZE_MODEL = True
    assert common_only.model is None
    common = common_only.schedule(size=900_000, origin=0.0)
    assert common is not None
    assert common.first == pytest.approx(19.1)


def _simulate(spread: float, videos: int, seed: int) -> tuple[float, float, float]:
    """Videos of 100 kB to 1 MB whose analyses take 60 s/MB +/- ``spread``, each polled on what
    the ones before taught (no jitter, no sleeping): polls, mean and p95 lag of the later half."""
    rng = random.Random(seed)
    learned = SampleLog(policy=DEFAULT)
    polls: list[int] = []
    lags: list[float] = []
    for _ in range(videos):
        size = rng.randint(100_000, 1_000_000)
        duration = 60.0 * size / 1_000_000 * rng.uniform(1 - spread, 1 + spread)
        schedule = learned.schedule(size=size, origin=0.0)
        watch = Watch("v", 0.0, size, schedule)
        at, wait, count = (0.0 if schedule is None else schedule.first), DEFAULT.interval, 0
        while True:
            count += 1
            watch.seen(done=at >= duration, now=at)
            if at >= duration:
                break
            if schedule is None:
                step, wait = DEFAULT.next_wait(wait, None)
            else:
                step, wait = schedule.next_wait(at, wait, None)
            at += step
        sample = watch.sample()
        if sample is not None:
            learned.add(sample)
        polls.append(count)
        lags.append((at - duration) / duration)
    later = slice(videos // 2, None)
    ordered = sorted(lags[later])
    return (
        statistics.mean(polls[later]),
        statistics.mean(ordered),
        ordered[len(ordered) * 95 // 100],
    )


def test_learning_as_it_goes_meets_the_targets() -> None:
    """Analyses of 6 to 60 s that follow the size +/- 15 %: once learned, a video costs under
    2 polls (3 requests with the create) seen under 10 % of its duration late on average and
    under 20 % at the 95th percentile, where the default policy spends about 9."""
    for seed in range(3):
        polls, lag, p95 = _simulate(0.15, 300, seed)
        assert polls < 2.0, seed
        assert lag < 0.10, seed
        assert p95 < 0.20, seed
    prediction.SIZE_MODEL = False
    try:
        common, _, _ = _simulate(0.15, 300, 0)
    finally:
        prediction.SIZE_MODEL = True
    assert common > 8


def _night(
    taught: list[DurationSample], durations: list[tuple[int, float]]
) -> tuple[Prediction, int, list[DurationSample]]:
    """Each video (size, seconds) polled on what ``taught`` predicts, no jitter: the prediction,
    the polls of the night and the samples it recorded."""
    predicted = Prediction(taught, policy=DEFAULT)
    polls, learned = 0, []
    for size, duration in durations:
        schedule = predicted.schedule(size=size, origin=0.0)
        assert schedule is not None
        assert schedule.sized
        watch = Watch("v", 0.0, size, schedule)
        at, wait = schedule.first, DEFAULT.interval
        while True:
            polls += 1
            watch.seen(done=at >= duration, now=at)
            if at >= duration:
                break
            step, wait = schedule.next_wait(at, wait, None)
            at += step
        sample = watch.sample()
        assert sample is not None
        learned.append(sample)
    return predicted, polls, learned


def test_a_night_mostly_done_at_its_first_polls_teaches_the_next_one_well() -> None:
    """100 videos of 100 kB to 1 MB take 60 s/MB spread evenly over +/- 15 %; a night planned
    on samples 10 % too long finds 77 of them done at their first poll. Recorded at the middle
    of the lag before it (not its early end, which taught 0.944x the truth and 198 polls), the
    next night predicts a 1 MB video at 1.015x the truth and polls 148 times."""
    n = 100
    durations = [
        (100_000 + 900_000 * i // (n - 1), 60e-6 * (100_000 + 900_000 * i // (n - 1)) * ratio)
        for i, ratio in enumerate(0.85 + 0.3 * (i * 37 % n) / (n - 1) for i in range(n))
    ]
    taught = [DurationSample(seconds * 1.1, 0.1, size) for size, seconds in durations]
    _, polls, recorded = _night(taught, durations)
    assert polls == 123
    following, polls, _ = _night(recorded, durations)
    assert following.model is not None
    assert following.model.predict(1_000_000) / 60 == pytest.approx(1.0151, abs=1e-4)
    assert polls == 148


def test_watch_estimates_like_the_fleet() -> None:
    """A video seen Pending at 9 s and done at 11 s took 10 s +/- 1; done at its first poll
    planned from its size it is recorded half a lag earlier (the middle of the lag before it);
    done at an unplanned first poll says nothing."""
    watch = Watch("v", 100.0, 5_000)
    watch.seen(done=False, now=109.0)
    watch.seen(done=True, now=111.0)
    watch.seen(done=True, now=112.0)
    assert watch.sample() == DurationSample(10.0, 2.0, 5_000)
    schedule = Prediction(_on_line([100_000 * (i + 1) for i in range(9)]), policy=DEFAULT).schedule(
        size=100_000, origin=100.0
    )
    planned = Watch("v", 100.0, 100_000, schedule)
    assert schedule is not None
    planned.seen(done=True, now=100.0 + schedule.first)
    sample = planned.sample()
    assert sample is not None
    assert schedule.sized
    assert sample.seconds == pytest.approx((schedule.first / (1 + LAG) + schedule.first) / 2)
    assert sample.width == pytest.approx(schedule.first - schedule.first / (1 + LAG))
    unplanned = Watch("v", 100.0, 100_000)
    unplanned.seen(done=True, now=100.5)
    assert unplanned.sample() is None


def test_sample_log_keeps_the_latest_and_refits_in_steps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The log keeps its latest ``limit`` samples; it refits after each of the first samples,
    then once a tenth more have come (at most every 20): 200 samples, 46 fits, not 200."""
    fits = []

    class Counted(Prediction):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            fits.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(prediction, "Prediction", Counted)
    log = SampleLog(policy=DEFAULT, limit=150)
    for i in range(200):
        log.add(DurationSample(float(i % 9 + 1), 0.1, 100_000 * (i % 9 + 1)))
        assert log.prediction.model is not None or i < 4
    assert len(log.samples) == 150
    assert log.samples[0] == DurationSample(float(50 % 9 + 1), 0.1, 100_000 * (50 % 9 + 1))
    assert len(fits) == 46


def test_fleet_entries_read_both_formats() -> None:
    """A fleet sample is written "SECONDS WIDTH SIZE"; entries of earlier workers ("SECONDS
    WIDTH") still read, without a size, and malformed ones are skipped."""
    sample = DurationSample(12.3456, 0.5, 1_234_567)
    assert encode_sample(sample) == "12.346 0.500 1234567"
    assert decode_sample(encode_sample(sample)) == DurationSample(12.346, 0.5, 1_234_567)
    assert decode_sample(b"8.000 1.000") == DurationSample(8.0, 1.0, None)
    assert decode_sample("8.000 1.000 -") == DurationSample(8.0, 1.0, None)
    for bad in ("", "8", "x 1", "nan 1", "-1 1", "8 1 -5", "8 1 big", "8 1 2 3"):
        assert decode_sample(bad) is None, bad


# -- a real batch over the emulator ---------------------------------------------------------------

POLICY = PollPolicy(interval=0.02, max_interval=0.1)


def _files(folder: Path, sizes: list[int]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, size in enumerate(sizes):
        path = folder / f"clip-{i:03}.mp4"
        path.write_bytes(random.Random(i).randbytes(size))
        paths.append(path)
    return paths


async def test_a_rerun_starts_warm_from_the_journal(tmp_path: Path) -> None:
    """A journaled batch of videos whose analyses take 2 s per 100 kB teaches the next batch on
    the same journal: the second batch's very first videos, 20 kB to 100 kB, are polled at most
    twice each (on the policy, a 2 s analysis takes about 25 polls), all Complete, and the
    journal keeps the samples in its own table."""
    journal = tmp_path / "batch.db"
    sizes = [20_000 * (i % 5 + 1) for i in range(10)]
    async with GuruEmulator(
        analysis_delay=0.0,
        analysis_seconds_per_mb=20.0,
        analysis_spread=0.05,
        storage_dir=tmp_path / "storage",
    ) as emu:

        async def batch(files: list[Path]) -> dict[str, str]:
            async with GuruSession(
                emu.client_id,
                emu.client_secret,
                base_url=emu.base_url,
                token_url=emu.token_url,
                poll_policy=POLICY,
            ) as guru:
                ids = {}
                async for r in guru.batch_upload(files, journal=journal, activity="squat"):
                    assert r.ok, r.error
                    assert r.analysis is not None
                    assert r.analysis.status == AnalysisStatus.COMPLETE
                    assert r.video_id is not None
                    ids[str(r.item)] = r.video_id
                return ids

        await batch(_files(tmp_path / "first", sizes))
        before = collections.Counter(r.path for r in emu.recorded if r.route == ANALYSIS_ROUTE)
        second = _files(tmp_path / "second", [100_000, 20_000, 60_000])
        ids = await batch(second)
        polls = collections.Counter(r.path for r in emu.recorded if r.route == ANALYSIS_ROUTE)
    polls -= before
    for path in second:
        assert 1 <= polls[f"/videos/{ids[str(path)]}/analysis"] <= 2, (path, polls)
    with sqlite3.connect(journal) as db:
        kept = db.execute("SELECT size, seconds, width FROM analysis_samples").fetchall()
    assert len(kept) == 13
    for size, seconds, width in kept:
        # Within the spread, one lag under it when done at the planned first poll, or up to
        # half a poll step over it (the first batch's estimates, on the policy's polls).
        assert 0.75 * size / 50_000 <= seconds <= 1.5 * size / 50_000
        assert width >= 0
