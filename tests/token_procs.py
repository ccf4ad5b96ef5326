"""Real processes sharing a token store: tests/token_worker.py, started, released, reaped."""

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

from guru_async.testing import GuruEmulator

REPO = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).with_name("token_worker.py")


class TokenWorker:
    """One tests/token_worker.py process, started and waiting for its go line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def go(self) -> None:
        """Release the worker: it makes its one call."""
        assert self.process.stdin is not None
        self.process.stdin.write(b"go\n")
        await self.process.stdin.drain()

    async def outcome(self, timeout: float = 60) -> dict[str, Any]:
        """The worker's JSON line, after it exited cleanly."""
        out, err = await asyncio.wait_for(self.process.communicate(), timeout)
        assert self.process.returncode == 0, err.decode(errors="replace")[-2000:]
        result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
        return result


@contextlib.asynccontextmanager
async def token_workers(emu: GuruEmulator) -> AsyncIterator[Any]:
    """Yield ``start(store, *args, count=1)``, which starts ``count`` workers on the token
    store ``store`` (a file or a redis:// URL) against ``emu`` and returns them once each is
    ready; every worker still running at the end is killed."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "GURU_BASE_URL": emu.base_url,
        "GURU_TOKEN_URL": emu.token_url,
        "GURU_CLIENT_ID": emu.client_id,
        "GURU_CLIENT_SECRET": emu.client_secret,
    }
    started: list[TokenWorker] = []

    async def start(store: str, *args: str, count: int = 1) -> list[TokenWorker]:
        workers = []
        for _ in range(count):
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                str(WORKER),
                store,
                *args,
                cwd=REPO,
                env=env,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            workers.append(TokenWorker(process))
        started.extend(workers)
        for worker in workers:
            assert worker.process.stdout is not None
            line = await asyncio.wait_for(worker.process.stdout.readline(), timeout=60)
            assert line == b"ready\n", line
        return workers

    try:
        yield start
    finally:
        for worker in started:
            if worker.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, signal.SIGKILL)
                await worker.process.wait()
