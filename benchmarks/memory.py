"""Figure 2: peak memory while uploading large files.

Every measurement runs in a fresh interpreter (``benchmarks._child``) against a fresh emulator
subprocess. The child imports everything first (guru_async, aiohttp and requests alike), then
resets the kernel's peak-RSS counter and reads its RSS as the baseline; the figure is the peak
RSS during the upload minus that baseline, so the interpreter and its imports do not count.

- guru_async, one file: ``upload_video`` of a 1 GiB file.
- guru_async, many files: ``upload_video`` of 16 files of 256 MiB, all at once. The 16 files are
  hard links to one 256 MiB file: the same bytes go over the wire as with 16 distinct files,
  without writing 4 GiB of test data.
- requests: the reference example of guru-api.md on the same 1 GiB file, and on one 256 MiB
  file (the baseline for the concurrent case: requests uploads one file at a time).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

from benchmarks import _baselines
from benchmarks._harness import (
    MB,
    MIB,
    ChildRun,
    Endpoints,
    Figure,
    emulator_process,
    log,
    run_child,
    size_text,
    write_file,
)

NAME = "memory"
TARGET = 64 * MIB


@dataclass(frozen=True)
class Size:
    """The files to upload."""

    big_bytes: int = 1024 * MIB
    many: int = 16
    many_bytes: int = 256 * MIB


FULL = Size()
QUICK = Size(big_bytes=64 * MIB, many=4, many_bytes=16 * MIB)


# -- workloads, run inside the child process ---------------------------------------------------


def guru_upload(endpoints: dict[str, str], paths: list[str]) -> int:
    """Upload every path at once with one GuruSession; return how many were uploaded."""

    async def upload_all() -> int:
        async with Endpoints.from_dict(endpoints).session() as guru:
            ids = await asyncio.gather(
                *(guru.upload_video(p, activity=_baselines.ACTIVITY) for p in paths)
            )
        return len(ids)

    return asyncio.run(upload_all())


def requests_upload(endpoints: dict[str, str], path: str) -> int:
    """Upload one file with the reference example."""
    ep = Endpoints.from_dict(endpoints)
    _baselines.reference_upload_video(ep, path, _baselines.reference_token(ep))
    return 1


# -- the figure --------------------------------------------------------------------------------


async def _measure(workdir: Path, target: str, **kwargs: object) -> ChildRun:
    async with emulator_process(workdir) as endpoints:
        result = await run_child(target, endpoints=endpoints.as_dict(), **kwargs)
    log(
        f"[memory] {target} {kwargs}: {result.above_baseline / MIB:.1f} MiB above baseline "
        f"in {result.seconds:.1f} s"
    )
    return result


def _describe(label: str, run: ChildRun, total: int) -> str:
    return (
        f"{label}: peak RSS {run.peak / MIB:.1f} MiB, baseline after imports "
        f"{run.baseline / MIB:.1f} MiB, so {run.above_baseline / MIB:.1f} MiB above baseline; "
        f"{run.seconds:.1f} s ({total / run.seconds / MB:.0f} MB/s)"
    )


async def run(size: Size, workdir: Path) -> list[Figure]:
    """Measure each case in its own child process and return figure 2's rows."""
    big = write_file(workdir / "big.mp4", size.big_bytes)
    one = write_file(workdir / "part-00.mp4", size.many_bytes)
    many = [one]
    for i in range(1, size.many):
        link = workdir / f"part-{i:02d}.mp4"
        os.link(one, link)
        many.append(link)

    guru_big = await _measure(workdir, "benchmarks.memory:guru_upload", paths=[str(big)])
    guru_many = await _measure(
        workdir, "benchmarks.memory:guru_upload", paths=[str(p) for p in many]
    )
    req_big = req_one = None
    if _baselines.requests is not None:
        req_big = await _measure(workdir, "benchmarks.memory:requests_upload", path=str(big))
        req_one = await _measure(workdir, "benchmarks.memory:requests_upload", path=str(one))

    big_label = f"one {size_text(size.big_bytes)} file"
    one_label = f"one {size_text(size.many_bytes)} file"
    many_label = f"{size.many} concurrent {size_text(size.many_bytes)} files"
    per_upload = (guru_many.above_baseline - guru_big.above_baseline) / (size.many - 1)
    details_big = [_describe(f"guru_async, {big_label}", guru_big, size.big_bytes)]
    details_many = [
        _describe(f"guru_async, {many_label}", guru_many, size.many * size.many_bytes),
        f"guru_async's peak grows by about {per_upload / MIB:.1f} MiB per upload in flight "
        f"(from one upload in 2a to {size.many} here).",
    ]
    if req_big is not None and req_one is not None:
        details_big.append(_describe(f"requests, {big_label}", req_big, size.big_bytes))
        details_many.append(_describe(f"requests, {one_label}", req_one, size.many_bytes))
    else:
        details_big.append("requests is not installed: its baseline was skipped.")

    def figure(
        number: str, label: str, guru: ChildRun, base: ChildRun | None, what: str, notes: list[str]
    ) -> Figure:
        return Figure(
            number,
            f"Peak memory above baseline, {label}",
            f"{guru.above_baseline / MIB:.1f} MiB",
            "-" if base is None else f"requests, {what}: {base.above_baseline / MIB:.0f} MiB",
            None if base is None else guru.above_baseline / base.above_baseline,
            "requests",
            "< 64 MiB above baseline",
            guru.above_baseline < TARGET,
            notes,
        )

    return [
        figure("2a", big_label, guru_big, req_big, big_label, details_big),
        figure("2b", many_label, guru_many, req_one, one_label, details_many),
    ]
