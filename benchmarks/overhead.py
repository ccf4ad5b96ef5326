"""Figure 5: the client CPU one API call costs through guru_async, against raw aiohttp.

``calls`` Get Analysis requests, ``concurrency`` at a time, over ``videos`` ids, against a
minimal aiohttp server in its own process (``benchmarks._minimal_api``: a token endpoint, and
one fixed Complete 5-rep squat analysis for every Get Analysis, so the server's work per request
is as small as aiohttp allows):

- guru_async: ``get_analysis`` on one open GuruSession (token, retries, error mapping, typed
  ``Analysis``).
- baseline: raw aiohttp GET with the same Authorization header on one ClientSession, then
  ``json.loads`` of the body: no typing, no retries, no error mapping.

Each side runs in a fresh process per round (``benchmarks._child``), so neither inherits the
other's heap, caches or garbage: it opens its client, warms it (``warmup`` calls: pool, token,
code paths), then times ``calls`` calls. The primary figure is client CPU per call,
``time.process_time()`` of that process over the timed calls (the server's CPU is in its own
process): what the SDK adds. The sides alternate (ABBA order) for ``rounds`` rounds; the ratio
is of the least CPU of each side (the run least disturbed by other work on the machine), with
the ratio of the medians beside it. Wall clock is reported as context only: both clients share
the loopback server and the machine, so it moves with load far more than CPU does.

Where valgrind is installed, each side's instructions per call are also counted with callgrind
(a process making ``callgrind_calls`` calls after its warm-up, less one making none, the same
imports and warm-up in both): user-space instructions only, so the kernel's socket work (alike
for both) is left out, but deterministic to a fraction of a percent whatever else the machine
is doing, which CPU time on a shared machine is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import statistics
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks import _baselines
from benchmarks._harness import (
    Endpoints,
    Figure,
    bounded,
    child_env,
    communicate,
    log,
    run_child,
    server_process,
)
from guru_async import AnalysisStatus, GuruSession

NAME = "overhead"
TARGET = 1.15


@dataclass(frozen=True)
class Size:
    """How many calls, how many at once, over how many distinct videos, and rounds."""

    calls: int = 2000
    concurrency: int = 32
    videos: int = 32
    rounds: int = 8
    warmup: int = 500
    # Calls per side counted under callgrind (0: skip; also skipped without valgrind).
    callgrind_calls: int = 500


FULL = Size()
QUICK = Size(calls=500, rounds=2, warmup=100, callgrind_calls=0)


def video_ids(count: int) -> list[str]:
    """``count`` distinct ids of the shape Create Video returns."""
    return [f"00000000-0000-4000-8000-{i:012d}" for i in range(count)]


def _cycle(values: list[str], count: int) -> list[str]:
    return [values[i % len(values)] for i in range(count)]


async def calls_guru(guru: GuruSession, ids: list[str], calls: int, concurrency: int) -> None:
    """``calls`` get_analysis, ``concurrency`` at a time."""
    await bounded(concurrency, guru.get_analysis, _cycle(ids, calls))


async def calls_raw(
    http: aiohttp.ClientSession, base_url: str, token: str, ids: list[str], calls: int, conc: int
) -> None:
    """The same requests with raw aiohttp and json.loads."""
    urls = [f"{base_url}/videos/{v}/analysis" for v in ids]

    async def call(url: str) -> Any:
        return await _baselines.raw_get_json(http, url, token)

    await bounded(conc, call, _cycle(urls, calls))


def measure(
    *, side: str, endpoints: dict[str, str], calls: int, concurrency: int, videos: int, warmup: int
) -> dict[str, float]:
    """One side of one round, in a child process: warm up, then time ``calls`` calls.

    Returns ``cpu`` and ``wall`` seconds of the timed calls alone.
    """
    return asyncio.run(
        _measure(side, Endpoints.from_dict(endpoints), calls, concurrency, videos, warmup)
    )


async def _measure(
    side: str, endpoints: Endpoints, calls: int, concurrency: int, videos: int, warmup: int
) -> dict[str, float]:
    ids = video_ids(videos)
    async with contextlib.AsyncExitStack() as stack:
        if side == "guru":
            guru = await stack.enter_async_context(endpoints.session())
            analysis = await guru.get_analysis(ids[0])
            assert analysis.status == AnalysisStatus.COMPLETE
            assert len(analysis.reps) == 5

            async def work(n: int) -> None:
                await calls_guru(guru, ids, n, concurrency)
        else:
            http = await stack.enter_async_context(aiohttp.ClientSession())
            token = await _baselines.raw_token(http, endpoints)

            async def work(n: int) -> None:
                await calls_raw(http, endpoints.base_url, token, ids, n, concurrency)

        await work(warmup)
        wall, cpu = time.perf_counter(), time.process_time()
        await work(calls)
        return {"cpu": time.process_time() - cpu, "wall": time.perf_counter() - wall}


@contextlib.asynccontextmanager
async def minimal_api() -> AsyncIterator[Endpoints]:
    """Run ``benchmarks._minimal_api`` in a subprocess for the duration of the block."""
    async with server_process(
        "benchmarks._minimal_api", [], what="the minimal API", env=child_env()
    ) as endpoints:
        yield endpoints


@dataclass(frozen=True)
class _Run:
    cpu_us: float  # per call
    wall_ms: float  # whole run


async def _side(side: str, endpoints: Endpoints, size: Size) -> _Run:
    child = await run_child(
        "benchmarks.overhead:measure",
        side=side,
        endpoints=endpoints.as_dict(),
        calls=size.calls,
        concurrency=size.concurrency,
        videos=size.videos,
        warmup=size.warmup,
    )
    return _Run(child.result["cpu"] / size.calls * 1e6, child.result["wall"] * 1000)


async def _instructions(side: str, endpoints: Endpoints, size: Size, calls: int) -> int:
    """Instructions (callgrind's Ir) of one side's child process making ``calls`` calls after
    its warm-up, from start to exit."""
    kwargs = {
        "side": side,
        "endpoints": endpoints.as_dict(),
        "calls": calls,
        "concurrency": size.concurrency,
        "videos": size.videos,
        "warmup": 100,
    }
    proc = await asyncio.create_subprocess_exec(
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        "-m",
        "benchmarks._child",
        "benchmarks.overhead:measure",
        json.dumps(kwargs),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=child_env(),
    )
    _, err = await communicate(proc, timeout=1800)
    found = re.search(rb"Collected : (\d+)", err)
    if proc.returncode != 0 or found is None:
        raise RuntimeError(f"callgrind of {side} failed: {err[-2000:].decode(errors='replace')}")
    return int(found.group(1))


async def instructions_per_call(side: str, endpoints: Endpoints, size: Size) -> float:
    """Instructions one call costs a side, counted by callgrind: a process making
    ``callgrind_calls`` calls less one making none (same imports, same warm-up), per call.
    Deterministic up to a fraction of a percent, so it holds on a loaded machine."""
    none, some = await asyncio.gather(
        _instructions(side, endpoints, size, 0),
        _instructions(side, endpoints, size, size.callgrind_calls),
    )
    return (some - none) / size.callgrind_calls


async def run(size: Size, workdir: Path) -> list[Figure]:
    """Measure both clients round by round, each in its own process; return figure 5's row."""
    guru_runs: list[_Run] = []
    raw_runs: list[_Run] = []
    async with minimal_api() as endpoints:
        for round_ in range(size.rounds):
            # Alternate which goes first (ABBA), so neither always runs right after the other.
            order = ("guru", "raw") if round_ % 2 == 0 else ("raw", "guru")
            for side in order:
                measured = await _side(side, endpoints, size)
                (guru_runs if side == "guru" else raw_runs).append(measured)
            log(
                f"[overhead] round {round_ + 1}: client CPU per call guru_async "
                f"{guru_runs[-1].cpu_us:.0f} us, raw {raw_runs[-1].cpu_us:.0f} us (wall "
                f"{guru_runs[-1].wall_ms:.0f} vs {raw_runs[-1].wall_ms:.0f} ms)"
            )
        counted: dict[str, float] = {}
        if size.callgrind_calls > 0 and shutil.which("valgrind"):
            for side in ("guru", "raw"):
                counted[side] = await instructions_per_call(side, endpoints, size)
                log(f"[overhead] callgrind: {side} {counted[side]:,.0f} instructions per call")
    guru_cpu = [r.cpu_us for r in guru_runs]
    raw_cpu = [r.cpu_us for r in raw_runs]
    best_guru, best_raw = min(guru_cpu), min(raw_cpu)
    med_guru, med_raw = statistics.median(guru_cpu), statistics.median(raw_cpu)
    ratio, med_ratio = best_guru / best_raw, med_guru / med_raw
    guru_wall = [r.wall_ms for r in guru_runs]
    raw_wall = [r.wall_ms for r in raw_runs]
    wall_ratio = min(guru_wall) / min(raw_wall)
    wall_med_ratio = statistics.median(guru_wall) / statistics.median(raw_wall)

    if counted:
        instr = counted["guru"] / counted["raw"]
        counted_text = (
            f"Instructions per call (callgrind, {size.callgrind_calls} calls per side after "
            f"the warm-up, less a process making none): guru_async {counted['guru']:,.0f}, raw "
            f"aiohttp {counted['raw']:,.0f}, {instr:.2f}x: unmoved by other load (user-space "
            f"instructions only: the kernel's share of the socket work, alike for both, is "
            f"left out)."
        )
    else:
        counted_text = "Instructions per call: not counted (valgrind missing, or skipped)."

    def rounds(runs: list[_Run]) -> str:
        return ", ".join(f"{r.cpu_us:.0f} us ({r.wall_ms:.0f} ms wall)" for r in runs)

    return [
        Figure(
            "5",
            f"Client CPU per call: {size.calls:,} get_analysis at concurrency {size.concurrency}",
            f"{best_guru:.0f} us/call",
            f"raw aiohttp GET + json.loads: {best_raw:.0f} us/call; median of rounds "
            f"{med_guru:.0f} vs {med_raw:.0f} us = {med_ratio:.2f}x; wall {wall_ratio:.2f}x "
            f"(context)"
            + (f"; instructions {counted['guru'] / counted['raw']:.2f}x" if counted else ""),
            ratio,
            "raw aiohttp",
            f"<= {TARGET:.2f} (least and median)",
            ratio <= TARGET and med_ratio <= TARGET,
            [
                f"Client CPU per call, each side in a fresh process per round: least of "
                f"{size.rounds} rounds guru_async {best_guru:.0f} us, raw aiohttp {best_raw:.0f} "
                f"us ({ratio:.2f}x), so the SDK adds {best_guru - best_raw:.0f} us of CPU per "
                f"call; median of rounds {med_guru:.0f} vs {med_raw:.0f} us ({med_ratio:.2f}x).",
                f"guru_async rounds: {rounds(guru_runs)}.",
                f"raw aiohttp rounds: {rounds(raw_runs)}.",
                f"Wall clock, context only (both clients share one loopback server and the "
                f"machine, so it moves with load): least {min(guru_wall):.0f} vs "
                f"{min(raw_wall):.0f} ms ({wall_ratio:.2f}x), median "
                f"{statistics.median(guru_wall):.0f} vs {statistics.median(raw_wall):.0f} ms "
                f"({wall_med_ratio:.2f}x).",
                counted_text,
            ],
        )
    ]
