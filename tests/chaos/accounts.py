"""One account of a chaos run: its emulator, files, worker processes and producer runs."""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from guru_async.testing import GuruEmulator
from tests.chaos.schedule import Config
from tests.fleet_helpers import WorkerProcess, worker_env

REPO = Path(__file__).resolve().parents[2]


def child_env(emu: GuruEmulator) -> dict[str, str]:
    """A worker's or producer's environment: ``emu``'s account, this checkout's code."""
    env = worker_env(emu)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO) if not path else f"{REPO}{os.pathsep}{path}"
    return env


@attrs.define
class Account:
    """One account's emulator, files, workers and producer runs."""

    name: str
    emu: GuruEmulator
    files: list[Path]
    journal: str
    workdir: Path
    contents: dict[str, set[bytes]] = attrs.Factory(dict)  # file name -> every content it had
    workers: list[WorkerProcess] = attrs.Factory(list)
    killed: set[int] = attrs.Factory(set)  # pids the harness killed
    exited: set[int] = attrs.Factory(set)  # pids whose exit is in the history
    runs: list[subprocess.Popen[bytes]] = attrs.Factory(list)
    run_started: list[float] = attrs.Factory(list)
    generation: int = 0
    retry_at: float | None = None  # when to rerun a producer that found Redis down at start

    def output(self, run: int) -> Path:
        return self.workdir / f"{self.name}-producer-{run + 1}.jsonl"

    def events(self, run: int) -> list[dict[str, Any]]:
        """The JSON lines producer run ``run`` printed (a killed run's last line may be cut)."""
        path = self.output(run)
        if not path.exists():
            return []
        found = []
        for line in path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                found.append(json.loads(line))
        return found

    def done(self, run: int) -> float | None:
        """When run ``run`` printed its done line, on the monotonic clock."""
        for event in self.events(run):
            if event.get("done"):
                return float(event["t"])
        return None

    def all_pids(self) -> Iterator[subprocess.Popen[bytes]]:
        yield from (w.process for w in self.workers)
        yield from self.runs


def write_files(
    directory: Path, prefix: str, count: int, rng: random.Random, config: Config
) -> list[Path]:
    """``count`` files of distinct random sizes and contents, named ``{prefix}-NNN.mp4``."""
    directory.mkdir(parents=True, exist_ok=True)
    sizes = rng.sample(range(config.min_bytes, config.max_bytes + 1), count)
    files = []
    for number, size in enumerate(sizes):
        path = directory / f"{prefix}-{number:03d}.mp4"
        path.write_bytes(rng.randbytes(size))
        files.append(path)
    return files


def second_account_supported() -> bool:
    """Whether ``Fleet`` takes ``client_id=``: only then do two accounts on one Redis have
    keys of their own (before that, account B's worker takes A's items by design)."""
    from guru_async.fleet import Fleet

    return "client_id" in inspect.signature(Fleet).parameters
