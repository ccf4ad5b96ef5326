"""``guru-async worker`` around its Redis: installed without rich, started before Redis, through
an outage, stopped idle. Real worker processes, a real redis-server, the emulator over sockets;
the producer is ``guru-async batch --fleet`` in its own process, with the workers' environment.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from guru_async.testing import GuruEmulator

from .fleet_helpers import WorkerProcess, worker_env
from .redis_server import RedisServer, free_port

pytestmark = pytest.mark.slow

# A Python that cannot import rich, as on a machine that installed only the fleet extra: a
# meta path finder refuses it before any other finder is asked.
WITHOUT_RICH = """\
import runpy, sys

class NoRich:
    def find_spec(self, name, path=None, target=None):
        if name == "rich" or name.startswith("rich."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoRich())
runpy.run_module("guru_async", run_name="__main__", alter_sys=True)
"""
# A log line of the worker: the logging format, or the worker's own two lines.
PLAIN_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [\w.]+ (DEBUG|INFO|WARNING|ERROR) \S"
    r"|worker (ready|stopped): pid \d+)"
)
WAITING = "the worker waits for it"


def launch(
    emu: GuruEmulator,
    redis_url: str,
    log: Path,
    *,
    without_rich: bool = False,
    extra: tuple[str, ...] = (),
) -> WorkerProcess:
    """Start ``guru-async worker`` (its default grace, 30 s) against ``emu`` and ``redis_url``."""
    python = [sys.executable, "-c", WITHOUT_RICH] if without_rich else [sys.executable, "-m"]
    module = [] if without_rich else ["guru_async"]
    args = [
        *python, *module, "worker", "--redis", redis_url, "--concurrency", "2",
        "--poll-interval", "0.05", "--sweep-interval", "1", *extra,
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


@pytest.fixture
async def emu(start_emulator: Callable[..., Awaitable[GuruEmulator]]) -> GuruEmulator:
    """An emulator whose analyses are done 0.1 s after the upload."""
    return await start_emulator(analysis_delay=0.1)


@pytest.fixture
def launched() -> Iterator[list[WorkerProcess]]:
    """Workers a test started; any still running is killed at teardown."""
    workers: list[WorkerProcess] = []
    yield workers
    for worker in workers:
        worker.kill()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """A redis-server on a port of the test's choosing (not started), stopped at teardown."""
    servers: list[RedisServer] = []

    def make(port: int, *, password: str | None = None) -> RedisServer:
        server = RedisServer(directory=tmp_path / f"redis-{port}", port=port, password=password)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def log_text(worker: WorkerProcess) -> str:
    return worker.log.read_text(errors="replace")


async def log_shows(worker: WorkerProcess, text: str, timeout: float = 15.0) -> None:
    """Wait until the worker's log holds ``text``."""
    deadline = time.monotonic() + timeout
    while text not in log_text(worker):
        assert time.monotonic() < deadline, f"no {text!r} in the log:\n{log_text(worker)}"
        await asyncio.sleep(0.02)


def lines_with(worker: WorkerProcess, level: str) -> list[str]:
    return [line for line in log_text(worker).splitlines() if f" {level} " in line]


async def fleet_batch(emu: GuruEmulator, redis_url: str, clip: Path) -> dict[str, object]:
    """Run ``guru-async --json batch --fleet CLIP`` (Redis from GURU_REDIS_URL); its one result."""
    env = {**worker_env(emu), "GURU_REDIS_URL": redis_url}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "guru_async", "--json", "batch", "--fleet", str(clip),
        "--activity", "squat", "--timeout", "30",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    (line,) = out.decode().splitlines()
    result: dict[str, object] = json.loads(line)
    return result


async def stopped_in(worker: WorkerProcess, timeout: float = 40.0) -> tuple[int, float]:
    """SIGTERM the worker; its exit status and the seconds it took to exit."""
    started = time.monotonic()
    status = await asyncio.to_thread(worker.terminate, timeout)
    return status, time.monotonic() - started


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    """A 16 KiB clip."""
    path = tmp_path / "squat.mp4"
    path.write_bytes(os.urandom(16 * 1024))
    return path


async def test_worker_runs_without_rich_and_logs_plain_lines(
    tmp_path: Path,
    redis_url: str,
    emu: GuruEmulator,
    clip: Path,
    launched: list[WorkerProcess],
) -> None:
    """With rich not importable (only the fleet extra installed), ``guru-async worker``
    starts, runs a job and logs plain lines; other commands still name the cli extra."""
    worker = launch(emu, redis_url, tmp_path / "worker.log", without_rich=True)
    launched.append(worker)
    await asyncio.to_thread(worker.wait_ready)
    result = await fleet_batch(emu, redis_url, clip)
    assert result["status"] == "Complete"
    assert sum(emu.uploads_completed.values()) == 1
    assert (await stopped_in(worker))[0] == 0
    text = log_text(worker)
    assert "\x1b" not in text
    assert text.splitlines(), "the worker logged nothing"
    for line in text.splitlines():
        assert PLAIN_LINE.match(line), line
    assert "worker stopped" in text

    upload = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WITHOUT_RICH, "--emulator", "upload", str(clip),
        stderr=subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(upload.communicate(), timeout=60)
    assert upload.returncode == 2
    assert "needs the cli extra" in err.decode()
    assert 'pip install "guru-async[cli]"' in err.decode()


async def test_worker_started_before_redis_waits_for_it_then_works(
    tmp_path: Path,
    emu: GuruEmulator,
    clip: Path,
    own_redis: Callable[..., RedisServer],
    launched: list[WorkerProcess],
) -> None:
    """A worker started while nothing listens on Redis's port waits (one WARNING, no password),
    becomes ready once redis-server starts there (one INFO), and runs a job."""
    server = own_redis(free_port(), password="hunter2-redis")
    worker = launch(emu, server.url, tmp_path / "worker.log")
    launched.append(worker)
    await log_shows(worker, WAITING)
    assert worker.process.poll() is None
    await asyncio.to_thread(server.start)
    await asyncio.to_thread(worker.wait_ready, 20.0)
    result = await fleet_batch(emu, server.url, clip)
    assert result["status"] == "Complete"
    assert (await stopped_in(worker))[0] == 0
    text = log_text(worker)
    (warning,) = lines_with(worker, "WARNING")
    assert f"127.0.0.1:{server.port}" in warning
    assert WAITING in warning
    assert [line for line in lines_with(worker, "INFO") if "answers" in line]
    assert "hunter2-redis" not in text
    assert "Traceback" not in text


async def test_sigterm_while_waiting_for_redis_exits_at_once(
    tmp_path: Path, emu: GuruEmulator, launched: list[WorkerProcess]
) -> None:
    """SIGTERM to a worker still waiting for Redis ends it promptly with status 0."""
    worker = launch(emu, f"redis://127.0.0.1:{free_port()}/0", tmp_path / "worker.log")
    launched.append(worker)
    await log_shows(worker, WAITING)
    status, seconds = await stopped_in(worker)
    assert status == 0
    assert seconds < 3.0
    assert "worker stopped" in log_text(worker)


@pytest.mark.parametrize(
    ("credentials", "shown"),
    [(":wrong-staple-9@", ":***@"), ("nobody:wrong-staple-9@", "nobody:***@")],
    ids=["password", "user"],
)
async def test_wrong_password_or_user_ends_the_worker_at_once(
    tmp_path: Path,
    emu: GuruEmulator,
    start_redis: Callable[..., RedisServer],
    credentials: str,
    shown: str,
) -> None:
    """A password or user Redis refuses ends the worker at once: exit 2, one line naming the
    server, never the password; so does a malformed URL."""
    server = start_redis(password="right-horse-battery")
    url = f"redis://{credentials}127.0.0.1:{server.port}/0"
    worker = launch(emu, url, tmp_path / "worker.log")
    status = await asyncio.to_thread(worker.process.wait, 15)
    text = log_text(worker)
    assert status == 2, text
    assert text.strip().splitlines() == [
        f"guru-async: error: Redis at redis://{shown}127.0.0.1:{server.port}/0 is unavailable: "
        "it refused the password or user"
    ]
    bad = launch(emu, "redis://127.0.0.1:port/0", tmp_path / "bad.log")
    assert await asyncio.to_thread(bad.process.wait, 15) == 2
    assert "the port is not a number" in log_text(bad)


async def test_idle_worker_stops_at_once_without_a_grace_warning(
    tmp_path: Path, redis_url: str, emu: GuruEmulator, launched: list[WorkerProcess]
) -> None:
    """An idle worker (default grace, 30 s) exits within 3 s of SIGTERM, and says nothing about
    tasks missing the grace period (nothing was running)."""
    worker = launch(emu, redis_url, tmp_path / "worker.log")
    launched.append(worker)
    await asyncio.to_thread(worker.wait_ready)
    status, seconds = await stopped_in(worker)
    assert status == 0
    assert seconds < 3.0, f"{seconds:.1f} s"
    assert "grace period" not in log_text(worker)
    assert not lines_with(worker, "WARNING")


async def test_idle_worker_stops_at_once_while_redis_is_down(
    tmp_path: Path,
    emu: GuruEmulator,
    start_redis: Callable[..., RedisServer],
    launched: list[WorkerProcess],
) -> None:
    """With Redis down, an idle worker still exits within 5 s of SIGTERM (Docker's default
    stop timeout is 10 s)."""
    server = start_redis()
    worker = launch(emu, server.url, tmp_path / "worker.log")
    launched.append(worker)
    await asyncio.to_thread(worker.wait_ready)
    await asyncio.to_thread(server.stop)
    await log_shows(worker, WAITING)
    status, seconds = await stopped_in(worker)
    assert status == 0
    assert seconds < 5.0, f"{seconds:.1f} s"
    assert "grace period" not in log_text(worker)


# Longer than redis-py's own retries of a command (about 16 s), after which saq's loops used to
# log a traceback each, every second or so.
OUTAGE = 20.0


async def test_redis_outage_is_one_warning_then_one_info(
    tmp_path: Path,
    emu: GuruEmulator,
    clip: Path,
    start_redis: Callable[..., RedisServer],
    launched: list[WorkerProcess],
) -> None:
    """Redis down for 20 s under a running worker: one WARNING when it goes, one INFO when it
    is back, no traceback (saq's included), and the worker takes jobs again."""
    server = start_redis(appendonly=True)
    worker = launch(emu, server.url, tmp_path / "worker.log")
    launched.append(worker)
    await asyncio.to_thread(worker.wait_ready)
    stopped = time.monotonic()
    await asyncio.to_thread(server.stop)
    await log_shows(worker, WAITING)
    await asyncio.sleep(max(0.0, OUTAGE - (time.monotonic() - stopped)))  # the outage itself
    await asyncio.to_thread(server.start)
    await log_shows(worker, "answers again")
    result = await fleet_batch(emu, server.url, clip)
    assert result["status"] == "Complete"
    assert (await stopped_in(worker))[0] == 0
    text = log_text(worker)
    assert "Traceback" not in text
    assert not lines_with(worker, "ERROR")
    (warning,) = lines_with(worker, "WARNING")
    assert f"127.0.0.1:{server.port}" in warning
    assert len([line for line in lines_with(worker, "INFO") if "answers again" in line]) == 1
