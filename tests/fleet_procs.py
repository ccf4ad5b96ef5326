"""Real processes for the fleet tests: a standalone emulator and tests/fleet_worker.py workers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).with_name("fleet_worker.py")


@contextlib.asynccontextmanager
async def standalone_emulator(*args: str) -> AsyncIterator[dict[str, str]]:
    """Run ``python -m guru_async.testing --json`` in its own process; yield its endpoints."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "guru_async.testing",
        "--json",
        *args,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), timeout=30)
        yield json.loads(line)
    finally:
        if process.returncode is None:
            process.terminate()
        await asyncio.wait_for(process.wait(), timeout=10)


async def emulator_stats(endpoints: dict[str, str], *, arrivals: bool = False) -> dict[str, Any]:
    """The standalone emulator's counters (and arrival times), from its stats endpoint."""
    url = endpoints["stats_url"] + ("?arrivals=1" if arrivals else "")
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.status == 200
        stats: dict[str, Any] = await response.json()
        return stats


class Worker:
    """One tests/fleet_worker.py process, started and waiting for its go line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def go(self) -> None:
        """Release the worker."""
        assert self.process.stdin is not None
        self.process.stdin.write(b"go\n")
        await self.process.stdin.drain()

    async def outcome(self, timeout: float = 60) -> dict[str, Any]:
        """The worker's JSON line, after it exited cleanly."""
        assert self.process.stdout is not None
        out, err = await asyncio.wait_for(self.process.communicate(), timeout)
        assert self.process.returncode == 0, err.decode(errors="replace")[-2000:]
        result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
        return result

    def kill(self) -> None:
        """SIGKILL: a crash, not a shutdown."""
        if self.process.returncode is None:
            os.kill(self.process.pid, signal.SIGKILL)


class Workers:
    """Starts workers against an emulator; kills any still running at the end."""

    def __init__(self) -> None:
        self.started: list[Worker] = []

    async def start(self, endpoints: dict[str, str], *args: str, count: int = 1) -> list[Worker]:
        """Start ``count`` workers with ``args`` and wait until each is ready (imports done)."""
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "GURU_BASE_URL": endpoints["base_url"],
            "GURU_TOKEN_URL": endpoints["token_url"],
            "GURU_CLIENT_ID": endpoints["client_id"],
            "GURU_CLIENT_SECRET": endpoints["client_secret"],
        }
        workers = []
        for _ in range(count):
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                str(WORKER),
                *args,
                cwd=REPO,
                env=env,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            workers.append(Worker(process))
        self.started += workers
        for worker in workers:
            assert worker.process.stdout is not None
            line = await asyncio.wait_for(worker.process.stdout.readline(), timeout=60)
            assert line == b"ready\n", line
        return workers

    async def close(self) -> None:
        """Kill and reap every worker still running."""
        for worker in self.started:
            worker.kill()
            with contextlib.suppress(ProcessLookupError):
                await worker.process.wait()
