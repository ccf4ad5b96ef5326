"""The guru-async command line, run in subprocesses against a standalone emulator process."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from guru_async.testing import UNANALYZABLE_MARKER, GuruEmulator

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Short synthetic videos keep j2p bodies small: 4 s at 15 fps is 60 frames of 17 joints.
VIDEO_SECONDS, FPS, JOINTS = 4, 15, 17

Run = Callable[..., subprocess.CompletedProcess[str]]


def base_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any GURU_* setting, with the repo importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GURU_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env.update(extra)
    return env


def cli(
    *args: str, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m guru_async ARGS`` and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "guru_async", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def env_for(endpoints: dict[str, str], cache: Path) -> dict[str, str]:
    """Credentials and URLs of an emulator, the way a user sets them: in the environment."""
    return base_env(
        GURU_CLIENT_ID=endpoints["client_id"],
        GURU_CLIENT_SECRET=endpoints["client_secret"],
        GURU_BASE_URL=endpoints["base_url"],
        GURU_TOKEN_URL=endpoints["token_url"],
        GURU_ASYNC_CACHE_DIR=str(cache),
    )


@pytest.fixture(scope="module")
def endpoints() -> Iterator[dict[str, str]]:
    """A standalone emulator process (analyses take 0.2 s), terminated at teardown."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "guru_async.testing",
            "--json",
            "--analysis-delay",
            "0.2",
            "--video-seconds",
            str(VIDEO_SECONDS),
            "--fps",
            str(FPS),
        ],
        env=base_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    try:
        yield json.loads(process.stdout.readline())
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()


@pytest.fixture
def run(endpoints: dict[str, str], tmp_path: Path) -> Run:
    """Run the CLI against the emulator, with this test's own token cache."""
    env = env_for(endpoints, tmp_path / "cache")
    return lambda *args, cwd=tmp_path: cli(*args, env=env, cwd=cwd)


@pytest.fixture
def clip(tmp_path: Path) -> Callable[..., Path]:
    """Write a clip of random bytes (optionally unanalysable) and return its path."""

    def make(name: str = "clip.mp4", *, analyzable: bool = True, folder: Path = tmp_path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        head = b"" if analyzable else UNANALYZABLE_MARKER
        path.write_bytes(head + os.urandom(64 * 1024))
        return path

    return make


def upload_json(run: Run, path: Path, *options: str) -> dict[str, Any]:
    """Upload one file with --wait --json and return its result object."""
    done = run("--json", "upload", str(path), "--wait", *options)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert len(results) == 1
    result: dict[str, Any] = results[0]
    return result


@pytest.fixture(scope="module")
def video_id(endpoints: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    """One analysed squat video, shared by the tests that only read it."""
    folder = tmp_path_factory.mktemp("shared")
    (folder / "squat.mp4").write_bytes(os.urandom(64 * 1024))
    env = env_for(endpoints, folder / "cache")
    done = cli(
        "--json", "upload", "squat.mp4", "--wait", "--activity", "squat", env=env, cwd=folder
    )
    assert done.returncode == 0, done.stderr
    vid: str = json.loads(done.stdout)[0]["videoId"]
    return vid


def test_upload_wait_prints_a_table(run: Run, clip: Callable[..., Path]) -> None:
    """upload --wait prints an aligned results table with the analysis per rep and exits 0."""
    path = clip("squat.mp4")
    done = run("upload", str(path), "--wait", "--activity", "squat", "--rep-count", "4")
    assert done.returncode == 0, done.stderr
    header, row = done.stdout.splitlines()[:2]
    for column in ("VIDEO", "ID", "ACTIVITY", "STATUS", "REPS", "KEY ANALYSIS PER REP"):
        assert column in header
    assert row.split()[2:5] == ["squat", "Complete", "4"]
    assert "HIP_KNEE_ANGLE_DEGREES" in row
    assert "1 video in" in done.stdout
    assert "Traceback" not in done.stderr


def test_json_output_parses(run: Run, clip: Callable[..., Path]) -> None:
    """--json prints one JSON document with the analysis in the API's camelCase shape."""
    result = upload_json(run, clip(), "--activity", "push_up", "--rep-count", "3")
    assert result["ok"] is True
    assert result["status"] == "Complete"
    assert result["analysis"]["activity"] == "push_up"
    assert len(result["analysis"]["reps"]) == 3
    assert "startTimestampMs" in result["analysis"]["reps"][0]
    assert result["error"] is None


@pytest.fixture
def folder_batch(run: Run, clip: Callable[..., Path], tmp_path: Path) -> tuple[Any, Path]:
    """A batch over a folder of two good clips, one unanalysable clip and a non-video file."""
    folder = tmp_path / "videos"
    clip("a.mp4", folder=folder)
    clip("b.mov", folder=folder)
    clip("bad.mp4", folder=folder, analyzable=False)
    (folder / "notes.txt").write_text("not a video")
    out = tmp_path / "results.jsonl"
    done = run("batch", str(folder), "--activity", "squat", "--out", str(out), "--journal", "j.db")
    return done, out


def test_batch_folder_reports_the_unanalyzable_clip(folder_batch: tuple[Any, Path]) -> None:
    """A folder batch with an unanalysable clip exits 1 and names the clip and the reason."""
    done, _ = folder_batch
    assert done.returncode == 1, done.stderr
    rows = {line.split()[0]: line for line in done.stdout.splitlines()[1:] if "videos/" in line}
    assert len(rows) == 3  # notes.txt is not a video
    bad = next(line for name, line in rows.items() if name.endswith("bad.mp4"))
    assert "Failed" in bad
    assert "LOW_QUALITY_POSE_ESTIMATE" in bad
    assert "3 videos in" in done.stdout
    assert "1 failed" in done.stdout


def test_batch_out_has_one_line_per_item(folder_batch: tuple[Any, Path]) -> None:
    """batch --out writes one JSON line per input video, failures included."""
    _, out = folder_batch
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 3
    assert sorted(Path(line["file"]).name for line in lines) == ["a.mp4", "b.mov", "bad.mp4"]
    failed = [line for line in lines if not line["ok"]]
    assert [Path(line["file"]).name for line in failed] == ["bad.mp4"]
    assert failed[0]["analysis"]["status"] == "Failed"


def test_batch_json_lines(run: Run, clip: Callable[..., Path]) -> None:
    """batch --json prints one JSON object per line, one per input file."""
    paths = [str(clip(f"{i}.mp4")) for i in range(2)]
    done = run("--json", "batch", *paths, "--activity", "lunge", "--no-wait")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert sorted(line["file"] for line in lines) == sorted(paths)
    assert {line["status"] for line in lines} == {"Uploaded"}


def test_j2p_csv(run: Run, video_id: str) -> None:
    """j2p --format csv has the documented header and one row per joint per frame."""
    done = run("j2p", video_id, "--format", "csv")
    assert done.returncode == 0, done.stderr
    rows = list(csv.reader(io.StringIO(done.stdout)))
    assert rows[0] == ["frame_idx", "part", "x", "y", "score", "timestamp"]
    assert len(rows) - 1 == JOINTS * VIDEO_SECONDS * FPS
    assert rows[1][:2] == ["0", "nose"]
    assert 0 <= float(rows[1][2]) <= 1


def test_update_video_analysis_download_round_trip(
    run: Run, clip: Callable[..., Path], tmp_path: Path
) -> None:
    """update changes what video and analysis then report, and download returns the bytes."""
    path = clip()
    vid = upload_json(run, path, "--activity", "squat")["videoId"]

    done = run("update", vid, "--rep-count", "2", "--activity", "push_up")
    assert done.returncode == 0, done.stderr
    assert f"updated {vid}" in done.stdout

    video = json.loads(run("--json", "video", vid, "--include", "analysis").stdout)
    assert video["status"] == "Success"
    assert video["analysis"]["activity"] == "push_up"
    assert len(video["analysis"]["reps"]) == 2
    human = run("video", vid).stdout
    assert "overlay skeleton" in human
    assert "Success" in human

    done = run("analysis", vid, "--wait", "--timeout", "10")
    assert done.returncode == 0, done.stderr
    assert "push_up" in done.stdout
    assert "ELBOW_ANGLE_DEGREES" in done.stdout
    assert json.loads(run("analysis", vid, "--json").stdout)["status"] == "Complete"

    done = run("download", vid, "--out", "raw.mp4")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "raw.mp4").read_bytes() == path.read_bytes()
    done = run("download", vid, "--overlay", "skeleton")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / f"{vid}-skeleton.mp4").stat().st_size > 0


def test_missing_credentials_exit_2(tmp_path: Path) -> None:
    """Without GURU_CLIENT_ID the CLI names the missing variable and exits 2."""
    env = base_env(GURU_CLIENT_SECRET="s", GURU_ASYNC_CACHE_DIR=str(tmp_path))
    done = cli("video", "abc", env=env)
    assert done.returncode == 2
    assert "set GURU_CLIENT_ID in the environment" in done.stderr
    assert "Traceback" not in done.stderr


def test_unknown_activity_exit_2(run: Run, clip: Callable[..., Path]) -> None:
    """An unknown activity exits 2 with the SDK's message listing the accepted values."""
    done = run("upload", str(clip()), "--activity", "squats")
    assert done.returncode == 2
    assert "unknown activity 'squats'" in done.stderr
    assert "accepted values" in done.stderr
    for accepted in ("squat", "push_up", "sprint"):
        assert accepted in done.stderr
    assert "Traceback" not in done.stderr


def test_missing_file_exit_2(run: Run) -> None:
    """A file that does not exist exits 2 before anything is uploaded."""
    done = run("upload", "nope.mp4")
    assert done.returncode == 2
    assert "nope.mp4" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.fixture
def counting_emulator() -> Iterator[GuruEmulator]:
    """An emulator on a thread of this process, so a test reads its counters while CLI
    subprocesses use it (the standalone emulator process exposes none)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    emu = GuruEmulator(analysis_delay=0.2)
    try:
        asyncio.run_coroutine_threadsafe(emu.start(), loop).result(timeout=10)
        yield emu
    finally:
        asyncio.run_coroutine_threadsafe(emu.close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def test_ten_invocations_fetch_one_token(
    counting_emulator: GuruEmulator, clip: Callable[..., Path], tmp_path: Path
) -> None:
    """Ten CLI runs make exactly one token request: the token file is written once, then reused."""
    emu = counting_emulator
    endpoints = {
        "client_id": emu.client_id,
        "client_secret": emu.client_secret,
        "base_url": emu.base_url,
        "token_url": emu.token_url,
    }
    env = env_for(endpoints, tmp_path / "cache")
    token_file = tmp_path / "cache" / "tokens.json"
    done = cli("--json", "upload", str(clip()), "--wait", "--activity", "squat", env=env)
    assert done.returncode == 0, done.stderr
    vid = json.loads(done.stdout)[0]["videoId"]
    written = token_file.stat()
    assert written.st_mode & 0o777 == 0o600
    commands = [
        ["video", vid],
        ["analysis", vid],
        ["--json", "analysis", vid],
        ["video", vid, "--include", "analysis,objects"],
        ["j2p", vid, "--format", "csv"],
        ["update", vid, "--rep-count", "3"],
        ["analysis", vid, "--wait"],
        ["--json", "video", vid],
        ["download", vid, "--out", str(tmp_path / "v.mp4")],
    ]
    for args in commands:
        done = cli(*args, env=env)
        assert done.returncode == 0, (args, done.stderr)
    assert emu.token_requests == 1
    # Saving replaces the file (a new inode), so an unchanged inode and mtime mean no re-save.
    again = token_file.stat()
    assert (again.st_ino, again.st_mtime_ns) == (written.st_ino, written.st_mtime_ns)


def test_plot_writes_a_png(run: Run, video_id: str, tmp_path: Path) -> None:
    """plot fetches the joint data and analysis and writes a valid PNG."""
    pytest.importorskip("matplotlib")
    done = run("plot", video_id, "--out", "rep.png")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "rep.png").read_bytes()[:8] == PNG_SIGNATURE


def test_demo(tmp_path: Path) -> None:
    """demo exits 0, prints the results table with the expected failure, and writes a PNG."""
    pytest.importorskip("matplotlib")
    out = tmp_path / "demo"
    done = cli("demo", "--out", str(out), env=base_env(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    table = done.stdout
    for expected in ("squat.mp4", "push_up.mp4", "sprint.mp4", "HIP_KNEE_ANGLE_DEGREES"):
        assert expected in table
    failed = next(line for line in table.splitlines() if line.startswith("blurry_squat.mp4"))
    assert "Failed" in failed
    assert "LOW_QUALITY_POSE_ESTIMATE" in failed
    assert "0 new uploads" in table
    assert (out / "squat-hip-knee.png").read_bytes()[:8] == PNG_SIGNATURE
    assert len((out / "results.jsonl").read_text().splitlines()) == 6


def test_demo_without_matplotlib(tmp_path: Path) -> None:
    """Without matplotlib the demo still exits 0, skipping the plot with a one-line note."""
    hidden = tmp_path / "hide" / "matplotlib"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('hidden by test_cli')\n")
    env = base_env()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "hide"), env["PYTHONPATH"]])
    out = tmp_path / "demo"
    done = cli("demo", "--out", str(out), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "matplotlib is not installed" in done.stdout
    assert not (out / "squat-hip-knee.png").exists()


def test_embedded_emulator_flag(clip: Callable[..., Path], tmp_path: Path) -> None:
    """--emulator runs a command against an in-process emulator, with no credentials needed."""
    done = cli(
        "--emulator", "upload", str(clip()), "--wait", "--activity", "sprint", env=base_env()
    )
    assert done.returncode == 0, done.stderr
    assert "STRIDE_PEAK_FLEXION_ANGLE" in done.stdout


def test_emulator_subcommand_delegates() -> None:
    """guru-async emulator --json serves the emulator and prints its endpoints as JSON."""
    process = subprocess.Popen(
        [sys.executable, "-m", "guru_async", "emulator", "--json", "--analysis-delay", "0"],
        env=base_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    try:
        endpoints = json.loads(process.stdout.readline())
        assert endpoints["base_url"].startswith("http://127.0.0.1:")
        assert endpoints["client_id"]
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()
