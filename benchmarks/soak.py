"""Issue 4's soak, at scale: a batch under 30% injected transient faults loses nothing.

``batch_upload`` of ``videos`` distinct small files against an in-process emulator (fault
injection is configured through its Python API, so this one shares the client's event loop)
whose every route fails 30% of requests: 503s, 429s with ``Retry-After``, dropped connections
and bodies cut short, drawn from a seeded generator. Create video gets only the faults by which
a service says it did not act (503 and 429 with ``Retry-After``): after an ambiguous one it is
raised, not retried, by design (README, Reliability), so no call makes two videos. The
session keeps its default retry budget and uses a quicker retry backoff than the default
(0.05 s growing to 1 s), so the run takes seconds, not minutes.

Checks: every item yields one result and all are ok; each stored upload is byte-identical to
its source; no video is lost or uploaded twice; the open file descriptors of the process are
the same before and after. The baseline is the same batch with no faults, in the same run.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks._harness import Figure, log
from guru_async import PollPolicy, RetryPolicy
from guru_async.testing import (
    ANALYSIS_ROUTE,
    CREATE_ROUTE,
    TOKEN_ROUTE,
    UPLOAD_ROUTE,
    FaultRule,
    GuruEmulator,
)

NAME = "soak"
RETRIES = RetryPolicy(max_retries=12, wait_initial=0.05, wait_max=1.0)


@dataclass(frozen=True)
class Size:
    """How many videos, and how hard the faults hit."""

    videos: int = 1_000
    file_bytes: int = 8 * 1024
    fault_rate: float = 0.3
    upload_concurrency: int = 32


FULL = Size()
QUICK = Size(videos=60)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _faults(rate: float) -> list[FaultRule]:
    # Split the rate between kinds: most are status errors, some drop or truncate.
    rules = []
    for route in (TOKEN_ROUTE, UPLOAD_ROUTE, ANALYSIS_ROUTE):  # every other route a batch uses
        rules += [
            FaultRule(route=route, rate=rate * 0.5, kind="status", status=503),
            FaultRule(route=route, rate=rate * 0.2, kind="status", status=429, retry_after=0.05),
            FaultRule(route=route, rate=rate * 0.2, kind="drop"),
            FaultRule(route=route, rate=rate * 0.1, kind="truncate"),
        ]
    return [
        *rules,
        FaultRule(route=CREATE_ROUTE, rate=rate * 0.7, status=503, retry_after=0.05),
        FaultRule(route=CREATE_ROUTE, rate=rate * 0.3, status=429, retry_after=0.05),
    ]


async def _batch(paths: list[Path], size: Size, workdir: Path, rate: float) -> dict[str, float]:
    storage = workdir / f"storage-{rate}"
    # Counted around the emulator too: its sockets for the client's connections close with it.
    before = _open_fds()
    async with GuruEmulator(analysis_delay=0.05, storage_dir=storage, seed=4) as emu:
        for rule in _faults(rate) if rate else []:
            emu.faults.add(rule)
        started = time.perf_counter()
        ids: dict[Path, str] = {}
        failed = 0
        async with emu.session(
            retry_policy=RETRIES, poll_policy=PollPolicy(interval=0.02, max_interval=0.1)
        ) as guru:
            async for r in guru.batch_upload(
                paths,
                upload_concurrency=size.upload_concurrency,
                poll_rate=1000,
                activity="squat",
            ):
                if r.ok and r.video_id is not None:
                    ids[Path(str(r.item))] = r.video_id
                else:
                    failed += 1
                    log(f"[soak] failed: {r.item}: {r.error!r}")
        seconds = time.perf_counter() - started
        identical = sum(
            emu.stored_path(video_id).read_bytes() == path.read_bytes()
            for path, video_id in ids.items()
        )
        outcome = {
            "seconds": seconds,
            "ok": len(ids),
            "failed": failed,
            "identical": identical,
            "uploaded_twice": sum(n > 1 for n in emu.uploads_completed.values()),
            "faults": sum(emu.faults.fired.values()),
            "requests": sum(emu.requests.values()),
        }
    outcome["fd_leak"] = _open_fds() - before
    return outcome


async def run(size: Size, workdir: Path) -> list[Figure]:
    """Run the batch without and with faults; return the soak's row."""
    folder = workdir / "videos"
    folder.mkdir()
    paths = []
    for i in range(size.videos):
        path = folder / f"soak-{i:05d}.mp4"
        path.write_bytes(os.urandom(size.file_bytes))
        paths.append(path)
    clean = await _batch(paths, size, workdir, 0.0)
    faulty = await _batch(paths, size, workdir, size.fault_rate)
    log(f"[soak] clean {clean}, faulty {faulty}")
    n = size.videos
    met = (
        faulty["ok"] == n
        and faulty["identical"] == n
        and faulty["uploaded_twice"] == 0
        and faulty["fd_leak"] <= 0
    )
    return [
        Figure(
            "4s",
            f"Soak: {n:,}-video batch, {size.fault_rate:.0%} transient faults on every route",
            f"{faulty['ok']:.0f}/{n} ok in {faulty['seconds']:.1f} s",
            f"no faults: {clean['ok']:.0f}/{n} in {clean['seconds']:.1f} s",
            faulty["seconds"] / clean["seconds"],
            "no faults",
            f"{n}/{n} ok, byte-identical, none uploaded twice, no fd leak",
            met,
            [
                f"With faults: {faulty['faults']:.0f} faults injected over "
                f"{faulty['requests']:.0f} requests; {faulty['identical']:.0f} stored uploads "
                f"byte-identical; {faulty['uploaded_twice']:.0f} uploaded twice; file "
                f"descriptors after - before: {faulty['fd_leak']:+.0f}.",
                f"Without faults: {clean['requests']:.0f} requests.",
            ],
        )
    ]
