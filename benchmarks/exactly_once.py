"""``python -m benchmarks.exactly_once``: count creates and uploads in the journal's hard cases.

Prints one line per scenario with the emulator's counters (Create Video requests, completed
uploads), so the effect of journal claims and of stopping a batch early can be read directly:

- ``same-file-x3``: one journaled batch listing the same file 3 times, upload_concurrency=3.
- ``two-batches-one-process``: two batches of the same 10 files sharing one journal, run
  concurrently in one process.
- ``two-processes``: the same, in two processes against a standalone emulator.
- ``break-at-20``: a 200-item batch whose consumer breaks after 20 results while still holding
  the batch object (the pattern that kept working before), and 4 s later.
- ``break-at-20-async-with``: the same inside ``async with guru.batch_upload(...) as results``.
- ``interrupted-SIGINT`` / ``-SIGTERM`` / ``-SIGKILL``: a journaled 16-file batch in its own
  process (upload_concurrency=8, uploads slowed to about a second by the emulator) gets the
  signal while 8 uploads are in flight, then is rerun with the same journal: videos created per
  file (1.00 is one video per item) and empty videos left behind (0 is none).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from guru_async import MemoryTokenStore, PollPolicy
from guru_async.testing import GuruEmulator

FAST = PollPolicy(interval=0.02, max_interval=0.1)
CREATE = "POST /videos"
UPLOAD = "POST /storage"


def files(root: Path, count: int, prefix: str) -> list[Path]:
    """``count`` 8 KiB files of random bytes."""
    paths = []
    for i in range(count):
        path = root / f"{prefix}-{i:03d}.mp4"
        path.write_bytes(os.urandom(8192))
        paths.append(path)
    return paths


def counts(stats: dict[str, Any]) -> str:
    """Creates and completed uploads from emulator stats."""
    uploads = sum(stats["uploads_completed"].values())
    return f"creates={stats['requests'].get(CREATE, 0)} uploads={uploads}"


async def same_file_x3(root: Path) -> str:
    """The same file three times in one journaled batch."""
    (path,) = files(root, 1, "same")
    async with GuruEmulator(analysis_delay=0.05) as emu:
        async with emu.session(poll_policy=FAST) as guru:
            results = [
                r
                async for r in guru.batch_upload(
                    [path, path, path],
                    upload_concurrency=3,
                    journal=root / "same.db",
                    activity="squat",
                )
            ]
        ids = sorted({str(r.video_id) for r in results})
        return f"{counts(emu.stats())} results={len(results)} distinct_video_ids={len(ids)}"


async def two_batches_one_process(root: Path) -> str:
    """Two concurrent batches of the same files sharing one journal, in one process."""
    paths = files(root, 10, "shared")
    journal = root / "shared.db"
    async with GuruEmulator(analysis_delay=0.05) as emu:

        async def one() -> list[Any]:
            async with emu.session(poll_policy=FAST) as guru:
                return [
                    r
                    async for r in guru.batch_upload(
                        paths, upload_concurrency=4, journal=journal, activity="squat"
                    )
                ]

        a, b = await asyncio.gather(one(), one())
        same = sum(
            1
            for x in a
            for y in b
            if x.item == y.item and x.video_id == y.video_id and x.video_id is not None
        )
        return f"{counts(emu.stats())} results={len(a)}+{len(b)} same_video_in_both={same}"


WORKER = """
import asyncio, sys
from guru_async import GuruSession, MemoryTokenStore, PollPolicy
async def main():
    polls = PollPolicy(interval=0.02, max_interval=0.1)
    async with GuruSession(token_store=MemoryTokenStore(), poll_policy=polls) as guru:
        async for r in guru.batch_upload(sys.argv[3:], upload_concurrency=int(sys.argv[2]),
                                         journal=sys.argv[1], activity="squat"):
            print(r.item, r.video_id, r.ok, flush=True)
asyncio.run(main())
"""


@contextlib.asynccontextmanager
async def standalone_emulator(*args: str) -> AsyncIterator[dict[str, str]]:
    """A ``python -m guru_async.testing`` process; yields its endpoints."""
    emulator = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "guru_async.testing",
        "--json",
        *args,
        stdout=asyncio.subprocess.PIPE,
        # Uploads cut off by a kill make aiohttp's server log a traceback each: not results.
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert emulator.stdout is not None
        yield json.loads(await emulator.stdout.readline())
    finally:
        emulator.terminate()
        await emulator.wait()


def worker_env(endpoints: dict[str, str]) -> dict[str, str]:
    """The environment that points a worker process at the emulator."""
    return {
        **os.environ,
        "GURU_BASE_URL": endpoints["base_url"],
        "GURU_TOKEN_URL": endpoints["token_url"],
        "GURU_CLIENT_ID": endpoints["client_id"],
        "GURU_CLIENT_SECRET": endpoints["client_secret"],
    }


async def stats_of(endpoints: dict[str, str]) -> dict[str, Any]:
    """The standalone emulator's counters."""
    async with aiohttp.ClientSession() as http, http.get(endpoints["stats_url"]) as resp:
        stats: dict[str, Any] = await resp.json()
        return stats


async def two_processes(root: Path) -> str:
    """Two processes running the same journaled batch at the same time."""
    paths = files(root, 10, "procs")
    journal = root / "procs.db"
    async with standalone_emulator("--analysis-delay", "0.05") as endpoints:
        workers = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                WORKER,
                str(journal),
                "4",
                *map(str, paths),
                env=worker_env(endpoints),
                stdout=asyncio.subprocess.PIPE,
            )
            for _ in range(2)
        ]
        outputs = [(await w.communicate())[0].decode().split("\n") for w in workers]
        lines = [sorted(line for line in out if line) for out in outputs]
        stats = await stats_of(endpoints)
        return (
            f"{counts(stats)} results={len(lines[0])}+{len(lines[1])} "
            f"same_video_in_both={len(set(lines[0]) & set(lines[1]))}"
        )


INTERRUPT_FILES = 16
INTERRUPT_CONCURRENCY = 8


async def interrupted(root: Path, sig: signal.Signals) -> str:
    """A journaled batch process stopped by ``sig`` with 8 uploads in flight, then rerun."""
    paths = files(root, INTERRUPT_FILES, f"cut-{sig.name}")
    journal = root / f"cut-{sig.name}.db"
    # 8 KiB at 8 KiB/s: every upload takes about a second, so the signal lands mid-upload.
    args = ("--analysis-delay", "0.05", "--storage-bandwidth", "8192")
    async with standalone_emulator(*args) as endpoints:

        async def run() -> asyncio.subprocess.Process:
            return await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                WORKER,
                str(journal),
                str(INTERRUPT_CONCURRENCY),
                *map(str, paths),
                env=worker_env(endpoints),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )

        first = await run()
        deadline = asyncio.get_running_loop().time() + 60
        while len((await stats_of(endpoints))["upload_attempts"]) < INTERRUPT_CONCURRENCY:
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError("the batch never had 8 uploads in flight")
            await asyncio.sleep(0.02)
        first.send_signal(sig)
        await first.communicate()
        cut = await stats_of(endpoints)
        second = await run()
        out = (await second.communicate())[0].decode().split("\n")
        stats = await stats_of(endpoints)
    results = [line for line in out if line]
    videos = stats["videos"]
    empty = videos - len(stats["uploads_completed"])
    in_flight = len(cut["upload_attempts"]) - sum(1 for n in cut["uploads_completed"].values() if n)
    return (
        f"files={len(paths)} in_flight_at_signal={in_flight} creates="
        f"{stats['requests'].get(CREATE, 0)} videos={videos} "
        f"videos_per_file={videos / len(paths):.2f} empty_videos={empty} "
        f"results_on_rerun={len(results)}"
    )


async def break_at_20(root: Path) -> str:
    """Break out of a 200-item batch after 20 results, keeping a reference to the batch."""
    paths = files(root, 200, "brk")
    async with GuruEmulator(analysis_delay=0.05) as emu:
        async with emu.session(poll_policy=FAST, token_store=MemoryTokenStore()) as guru:
            batch = guru.batch_upload(paths, upload_concurrency=4, activity="squat")
            seen = 0
            async for _ in batch:
                seen += 1
                if seen == 20:
                    break
            at_break = counts(emu.stats())
            await asyncio.sleep(4)
            later = counts(emu.stats())
            del batch
        return f"at break: {at_break}; 4 s later: {later}"


async def break_at_20_async_with(root: Path) -> str:
    """Break out of a 200-item batch after 20 results inside ``async with``."""
    paths = files(root, 200, "brkcm")
    async with GuruEmulator(analysis_delay=0.05) as emu:
        async with emu.session(poll_policy=FAST, token_store=MemoryTokenStore()) as guru:
            async with guru.batch_upload(paths, upload_concurrency=4, activity="squat") as results:
                seen = 0
                async for _ in results:
                    seen += 1
                    if seen == 20:
                        break
            at_break = counts(emu.stats())
            await asyncio.sleep(4)
            later = counts(emu.stats())
        return f"at break: {at_break}; 4 s later: {later}"


async def main() -> None:
    """Run every scenario and print its counters."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, scenario in (
            ("same-file-x3", same_file_x3),
            ("two-batches-one-process", two_batches_one_process),
            ("two-processes", two_processes),
            ("break-at-20", break_at_20),
            ("break-at-20-async-with", break_at_20_async_with),
        ):
            print(f"{name}: {await scenario(root)}", flush=True)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            print(f"interrupted-{sig.name}: {await interrupted(root, sig)}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
