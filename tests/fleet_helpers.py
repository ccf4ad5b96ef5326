"""Fleet worker processes for tests and benchmarks: started by pid, stopped or killed by pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import attrs

from guru_async.testing import GuruEmulator


@attrs.define
class WorkerProcess:
    """One ``guru-async worker`` process."""

    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait until the worker says it is ready (it has reached Redis)."""
        deadline = time.monotonic() + timeout
        while b"worker ready" not in self.log.read_bytes():
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited: {self.log.read_text(errors='replace')}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker not ready: {self.log.read_text(errors='replace')}")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: a crash, nothing cleaned up."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait for the exit status."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
        return self.process.wait(timeout=timeout)


def worker_env(emu: GuruEmulator) -> dict[str, str]:
    """The environment of a worker pointed at ``emu``."""
    env = dict(os.environ)
    env.update(
        GURU_CLIENT_ID=emu.client_id,
        GURU_CLIENT_SECRET=emu.client_secret,
        GURU_BASE_URL=emu.base_url,
        GURU_TOKEN_URL=emu.token_url,
    )
    return env


def start_worker(
    emu: GuruEmulator,
    redis_url: str,
    log: Path,
    *,
    concurrency: int = 4,
    extra: tuple[str, ...] = (),
) -> WorkerProcess:
    """Start a worker process against ``emu`` and ``redis_url`` (not yet waited for)."""
    args = [
        sys.executable, "-m", "guru_async", "worker",
        "--redis", redis_url,
        "--concurrency", str(concurrency),
        "--poll-interval", "0.05",
        "--sweep-interval", "1",
        "--grace", "5",
        *(["-v"] if os.environ.get("GURU_FLEET_TEST_VERBOSE") else []),
        *extra,
    ]  # fmt: skip
    with log.open("wb") as sink:
        process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=worker_env(emu),
        )
    return WorkerProcess(process, log)
