"""The CLI's batch against setups that would fail every video alike, and its folder walk: one
line and exit 2, not a row per video. Subprocesses against an emulator over real sockets."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from guru_async.testing import CREATE_ROUTE, GuruEmulator

from .redis_server import free_port
from .test_cli import base_env, cli, emulator_env, thread_emulator
from .test_cli_output import command, run_in_pty

CLIPS = 30


@pytest.fixture
def emu() -> Iterator[GuruEmulator]:
    """An in-thread emulator, so the test reads what reached it."""
    with thread_emulator(analysis_delay=0.2) as emulator:
        yield emulator


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A folder of 30 small clips."""
    videos = tmp_path / "videos"
    videos.mkdir()
    for n in range(CLIPS):
        (videos / f"clip-{n:02}.mp4").write_bytes(os.urandom(4096))
    return videos


def test_refused_credentials_stop_the_batch_with_one_line(
    emu: GuruEmulator, folder: Path, tmp_path: Path
) -> None:
    """Credentials the token endpoint refuses end a 30-video batch with one line naming them
    and exit 2, no table, no video created."""
    env = emulator_env(emu, tmp_path / "cache") | {"GURU_CLIENT_SECRET": "not-the-secret"}
    done = cli("batch", str(folder), "--activity", "squat", env=env)
    assert done.returncode == 2
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith("guru-async: error: the token endpoint rejected the client credentials")
    assert "GURU_CLIENT_SECRET" in line
    assert "not-the-secret" not in line
    assert emu.requests[CREATE_ROUTE] == 0


def test_unreachable_api_stops_the_batch_with_one_line(folder: Path, tmp_path: Path) -> None:
    """An API nothing answers at, before any request succeeded, ends a 30-video batch with one
    line and exit 2, not 30 identical rows and exit 1."""
    root = f"http://127.0.0.1:{free_port()}"
    env = base_env(
        GURU_CLIENT_ID="id",
        GURU_CLIENT_SECRET="secret",
        GURU_BASE_URL=root,
        GURU_TOKEN_URL=f"{root}/oauth2/token",
        GURU_ASYNC_CACHE_DIR=str(tmp_path / "cache"),
    )
    done = cli("batch", str(folder), "--activity", "squat", env=env)
    assert done.returncode == 2
    assert done.stdout == ""
    *progress, line = done.stderr.splitlines()
    # Connecting is retried for a few seconds, so a pipe may get its periodic progress line
    # (every 5 s) first; never a row per video.
    assert all(p.startswith("uploads 0/30 ") for p in progress), progress
    assert len(progress) <= 1
    assert line.startswith("guru-async: error: cannot reach the Guru API (")
    assert "the batch stops here" in line


def test_unreachable_redis_stops_a_fleet_batch_with_one_line(folder: Path) -> None:
    """``batch --fleet`` with nothing listening at the fleet's Redis exits 2 with one line that
    names the server without its password."""
    env = base_env(
        GURU_REDIS_URL=f"redis://:pass-9f2e@127.0.0.1:{free_port()}/0",
        GURU_CLIENT_ID="the-workers-account",  # a producer names the account it feeds
    )
    done = cli("batch", "--fleet", str(folder), "--activity", "squat", env=env)
    assert done.returncode == 2
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith("guru-async: error: Redis at redis://:***@127.0.0.1:")
    assert "pass-9f2e" not in done.stderr


def test_fleet_takes_no_value_and_the_url_stays_out_of_argv(folder: Path) -> None:
    """``--fleet`` is a plain flag: a Redis URL given after it is refused with a hint to
    GURU_REDIS_URL (and not echoed, it may hold a password); without any URL, the error says
    where to set one."""
    env = base_env()
    done = cli("batch", "--fleet", "redis://:pass-9f2e@cache:6379/0", str(folder), env=env)
    assert done.returncode == 2
    assert "--fleet takes no value" in done.stderr
    assert "GURU_REDIS_URL" in done.stderr
    assert "pass-9f2e" not in done.stderr

    done = cli("batch", "--fleet", str(folder), env=env)
    assert done.returncode == 2
    assert "export GURU_REDIS_URL=" in done.stderr
    assert "Traceback" not in done.stderr

    done = cli("batch", "--redis", "redis://cache:6379/0", str(folder), env=env)
    assert done.returncode == 2
    assert "add --fleet" in done.stderr


def test_dangling_link_in_a_folder_is_a_missing_file(emu: GuruEmulator, tmp_path: Path) -> None:
    """A link to nowhere named like a video is that item's FileNotFoundError, not a file
    "without a video suffix"; the other videos upload."""
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "squat.mp4").write_bytes(os.urandom(4096))
    (videos / "gone.mp4").symlink_to(tmp_path / "deleted.mp4")
    env = emulator_env(emu, tmp_path / "cache")
    done = cli("--json", "batch", str(videos), "--activity", "squat", "--no-wait", env=env)
    assert done.returncode == 1, done.stderr
    results = {Path(r["file"]).name: r for r in map(json.loads, done.stdout.splitlines())}
    assert results["squat.mp4"]["status"] == "Uploaded"
    assert results["gone.mp4"]["status"] == "Error"
    assert results["gone.mp4"]["error"]["type"] == "FileNotFoundError"
    assert "gone.mp4" in results["gone.mp4"]["error"]["message"]
    assert "without a video suffix" not in done.stderr


def test_refused_credentials_on_a_terminal_leave_only_the_error(
    emu: GuruEmulator, folder: Path, tmp_path: Path
) -> None:
    """On a terminal, a batch stopped by refused credentials leaves the error on the screen and
    no progress rows (the drawn display is erased)."""
    env = emulator_env(emu, tmp_path / "cache") | {"GURU_CLIENT_SECRET": "not-the-secret"}
    status, _, frames, _ = run_in_pty(
        command("batch", str(folder), "--activity", "squat"), env, tmp_path
    )
    assert status == 2
    screen = " ".join(line for line in frames[-1] if line)
    assert screen.startswith("guru-async: error: the token endpoint rejected the client")
    assert "uploads" not in screen
    assert "analyses" not in screen
