"""Figure 7: batch_upload at scale: time per video and peak memory, small batch vs large.

``batch_upload`` of ``small`` and then ``large`` tiny videos (4 KiB files, read lazily from a
generator), ``wait=True``, ``upload_concurrency`` 16, ``poll_rate`` 500, each batch in a fresh
child process (``benchmarks._child``, peak RSS above the interpreter's baseline after imports)
against a fresh emulator subprocess whose analyses finish 10 ms after upload. The child counts
results without keeping them, as a streaming consumer would, and records the most videos
waiting for their analysis at once (``BatchProgress.waiting``): the state batch_upload holds.

The baseline of the large batch is the small one, measured in the same run: linear cost means
the same time per video, and flat memory means the same peak.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._harness import (
    MIB,
    ChildRun,
    Endpoints,
    Figure,
    emulator_process,
    log,
    run_child,
    write_files,
)
from guru_async import BatchProgress, PollPolicy

NAME = "scale"
ANALYSIS_DELAY = 0.01
FLAT_SLACK = 4 * MIB


@dataclass(frozen=True)
class Size:
    """The two batch sizes and the batch's settings."""

    small: int = 1_000
    large: int = 10_000
    file_bytes: int = 4096
    upload_concurrency: int = 16
    poll_rate: float = 500.0


FULL = Size()
QUICK = Size(small=100, large=500)


def batch(
    endpoints: dict[str, str], folder: str, count: int, upload_concurrency: int, poll_rate: float
) -> dict[str, Any]:
    """Run one batch_upload of ``count`` files from ``folder``; return result counts."""
    paths = (Path(folder) / f"clip-{i:05d}.mp4" for i in range(count))
    outcome: dict[str, Any] = {"ok": 0, "failed": 0, "first_error": None, "max_waiting": 0}

    def progress(p: BatchProgress) -> None:
        outcome["max_waiting"] = max(outcome["max_waiting"], p.waiting)

    async def go() -> None:
        policy = PollPolicy(interval=0.02, max_interval=0.1)
        async with Endpoints.from_dict(endpoints).session(poll_policy=policy) as guru:
            async for result in guru.batch_upload(
                paths,
                upload_concurrency=upload_concurrency,
                poll_rate=poll_rate,
                progress=progress,
                activity="squat",
            ):
                if result.ok:
                    outcome["ok"] += 1
                else:
                    outcome["failed"] += 1
                    outcome["first_error"] = outcome["first_error"] or repr(result.error)

    asyncio.run(go())
    return outcome


async def _measure(size: Size, folder: Path, count: int, workdir: Path) -> ChildRun:
    async with emulator_process(workdir, analysis_delay=ANALYSIS_DELAY) as endpoints:
        result = await run_child(
            "benchmarks.scale:batch",
            endpoints=endpoints.as_dict(),
            folder=str(folder),
            count=count,
            upload_concurrency=size.upload_concurrency,
            poll_rate=size.poll_rate,
        )
    if result.result["ok"] != count:
        raise RuntimeError(f"batch of {count}: {result.result}")
    log(
        f"[scale] {count:,} videos: {result.seconds:.1f} s, "
        f"{result.above_baseline / MIB:.1f} MiB above baseline, {result.result}"
    )
    return result


async def run(size: Size, workdir: Path) -> list[Figure]:
    """Run the small and the large batch; return figure 7's rows."""
    folder = workdir / "videos"
    write_files(folder, size.large, size.file_bytes)
    small = await _measure(size, folder, size.small, workdir)
    large = await _measure(size, folder, size.large, workdir)

    def per_video(run: ChildRun, count: int) -> float:
        return run.seconds / count * 1000

    details = [
        f"{count:,} videos: {run.seconds:.1f} s ({per_video(run, count):.2f} ms per video, "
        f"{count / run.seconds:.0f} videos/s); peak RSS {run.peak / MIB:.1f} MiB, "
        f"{run.above_baseline / MIB:.1f} MiB above the baseline after imports "
        f"({run.baseline / MIB:.1f} MiB)."
        for count, run in ((size.small, small), (size.large, large))
    ]
    details.append(
        "Most videos waiting for their analysis at once: "
        f"{small.result['max_waiting']:,} ({size.small:,} videos), "
        f"{large.result['max_waiting']:,} ({size.large:,} videos)."
    )
    time_ratio = per_video(large, size.large) / per_video(small, size.small)
    memory_ratio = large.above_baseline / small.above_baseline
    # A few MiB of growth reads as a big ratio of small numbers; "flat" allows either.
    memory_flat = memory_ratio <= 1.25 or large.above_baseline - small.above_baseline <= FLAT_SLACK
    return [
        Figure(
            "7a",
            f"batch_upload time per video, {size.large:,} videos",
            f"{per_video(large, size.large):.2f} ms",
            f"{size.small:,} videos: {per_video(small, size.small):.2f} ms",
            time_ratio,
            f"{size.small:,} videos",
            "<= 1.25 (linear)",
            time_ratio <= 1.25,
            details,
        ),
        Figure(
            "7b",
            f"batch_upload peak memory above baseline, {size.large:,} videos",
            f"{large.above_baseline / MIB:.1f} MiB",
            f"{size.small:,} videos: {small.above_baseline / MIB:.1f} MiB",
            memory_ratio,
            f"{size.small:,} videos",
            f"<= 1.25, or <= {FLAT_SLACK // MIB} MiB more (flat)",
            memory_flat,
        ),
    ]
