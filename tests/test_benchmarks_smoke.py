"""Smoke tests of ``python -m benchmarks``: every figure at its smallest, for correctness only.

No timing is asserted: these prove each benchmark runs end to end and measures what it says.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from benchmarks import (
    _baselines,
    decode,
    fleet_limits,
    memory,
    overhead,
    polling,
    prediction,
    scale,
    soak,
    tokens,
    upload,
)
from benchmarks._harness import MIB, Figure, render, run_child


def _by_number(figures: list[Figure]) -> dict[str, Figure]:
    return {f.number: f for f in figures}


def _measured(figure: Figure) -> None:
    assert figure.met is not None, figure
    assert figure.ratio is not None, figure
    assert figure.ratio > 0, figure


async def test_upload_measures_every_method(tmp_path: Path) -> None:
    """Figure 1 uploads with guru_async and every available baseline and reports a ratio."""
    size = upload.Size(
        files=2,
        file_bytes=64 * 1024,
        concurrency=2,
        rounds=1,
        link_files=2,
        link_file_bytes=64 * 1024,
        link_bytes_per_s=4e6,
    )
    figures = _by_number(await upload.run(size, tmp_path))
    _measured(figures["1a"])
    text = " ".join(figures["1a"].details)
    assert "guru_async" in text
    assert "raw aiohttp" in text
    if shutil.which("curl"):
        assert "curl -F" in text
    if _baselines.requests is not None:
        _measured(figures["1b"])


async def test_memory_measures_peak_rss_in_children(tmp_path: Path) -> None:
    """Figure 2 runs each upload in a child process and reports its peak above baseline."""
    size = memory.Size(big_bytes=2 * MIB, many=2, many_bytes=512 * 1024)
    figures = _by_number(await memory.run(size, tmp_path))
    for number in ("2a", "2b"):
        assert figures[number].value.endswith("MiB")
        assert figures[number].met is not None
    if _baselines.requests is not None:
        _measured(figures["2a"])


async def test_child_reports_peak_at_least_what_the_workload_held(tmp_path: Path) -> None:
    """A child measurement sees memory the workload allocated, above the baseline."""
    run = await run_child("benchmarks._harness:calibrate", size=32 * MIB)
    assert run.result == 32 * MIB
    assert run.above_baseline >= 30 * MIB


async def test_tokens_counts_token_requests(tmp_path: Path) -> None:
    """Figure 3 sees one token request from guru_async and one per call from the naive cache."""
    figures = _by_number(await tokens.run(tokens.Size(calls=20, cli_runs=2), tmp_path))
    assert figures["3a"].value == "1"
    assert figures["3a"].baselines.endswith(": 20")
    if tokens.cli_available():
        assert figures["3b"].value == "1", figures["3b"].details


async def test_fleet_limits_counts_tokens_and_arrivals(tmp_path: Path) -> None:
    """Figures F1-F2 run real processes on a real Redis: one token request for the fleet (one
    per process without Redis) and measured window and mean ratios under the ceiling."""
    size = fleet_limits.Size(token_processes=2, calls=5, rate_processes=2, rate=20, seconds=1.5)
    figures = _by_number(await fleet_limits.run(size, tmp_path))
    assert figures["F1"].value == "1"
    assert figures["F1"].baselines.endswith(": 2")
    _measured(figures["F2a"])
    _measured(figures["F2b"])


async def test_polling_sees_every_analysis_after_it_is_ready(tmp_path: Path) -> None:
    """Figure 4 waits out every analysis with both clients and never detects one early."""
    size = polling.Size(videos=12, speedup=60.0)
    figures = _by_number(await polling.run(size, tmp_path))
    for number in ("4a", "4b"):
        _measured(figures[number])
    assert float(figures["4a"].value) >= 1
    assert not figures["4b"].value.startswith("-")


async def test_prediction_runs_every_setting_of_a_local_batch(tmp_path: Path) -> None:
    """Figure 9g runs its four batch_upload batches and counts, for each, the create and at
    least one poll per video and a lag that is never negative."""
    size = prediction.Size(videos=10, speedup=40.0)
    files = prediction._files(size, tmp_path / "videos")
    outcomes = await prediction._local(size, tmp_path, files)
    assert list(outcomes) == list(prediction.MODES)
    for outcome in outcomes.values():
        assert outcome.requests >= 2
        assert len(outcome.lags) == 10
        assert min(outcome.lags) >= 0
    figure = prediction._figure("9g", "batch_upload", size, outcomes)
    assert figure.met is not None


async def test_overhead_times_both_clients(tmp_path: Path) -> None:
    """Figure 5 reports client CPU per get_analysis for both clients (the ratio of the two),
    with the wall-clock ratio as context."""
    size = overhead.Size(calls=40, concurrency=4, videos=4, rounds=2, warmup=8, callgrind_calls=0)
    figure = _by_number(await overhead.run(size, tmp_path))["5"]
    _measured(figure)
    guru_us = float(figure.value.removesuffix(" us/call"))
    raw_us = float(figure.baselines.split(": ")[1].split(" us/call")[0])
    assert guru_us > 0
    assert raw_us > 0
    # The cells are rounded to 1 us; the ratio is of the unrounded values.
    assert figure.ratio is not None
    assert abs(figure.ratio * raw_us - guru_us) <= 0.5 + 0.5 * figure.ratio
    assert "(context)" in figure.baselines
    assert any(d.startswith("Wall clock, context only") for d in figure.details)


async def test_decode_structures_the_emulators_joint_data(tmp_path: Path) -> None:
    """Figure 6 decodes a real emulator j2p body into JointData and times json.loads too."""
    figure = _by_number(await decode.run(decode.Size(seconds=2.0, repeats=1), tmp_path))["6"]
    _measured(figure)
    assert "17 joints" in figure.details[0]


async def test_scale_runs_both_batches(tmp_path: Path) -> None:
    """Figure 7 completes a small and a large batch in child processes."""
    size = scale.Size(small=8, large=16, upload_concurrency=4)
    figures = _by_number(await scale.run(size, tmp_path))
    for number in ("7a", "7b"):
        _measured(figures[number])


async def test_soak_batch_survives_faults(tmp_path: Path) -> None:
    """The soak figure completes a small batch under 30% faults with nothing lost."""
    figures = _by_number(await soak.run(soak.Size(videos=20, upload_concurrency=4), tmp_path))
    figure = figures["4s"]
    _measured(figure)
    assert figure.met is True, figure
    assert figure.value.startswith("20/20 ok"), figure


def test_render_writes_one_row_per_figure() -> None:
    """RESULTS.md has the table header, one row per figure and the machine line."""
    figures = [
        Figure("1", "one", "1 MB/s", "base 2 MB/s", 0.5, "base", ">= 1", False, ["note"]),
        Figure("2", "two", "skipped", "-", None, "", "x", None),
    ]
    text = render(figures, mode="", seconds=1.0, date="today", load=(0.1, 0.2), methods="m")
    assert "| 1 | one | 1 MB/s | base 2 MB/s | 0.50x vs base | >= 1 | **no** |" in text
    assert "| 2 | two | skipped | - | - | x | n/a |" in text
    assert "Machine:" in text
