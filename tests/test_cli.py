"""The guru-async command line, run in subprocesses against a standalone emulator process."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from guru_async import GuruSession
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


@contextlib.contextmanager
def thread_emulator(**options: Any) -> Iterator[GuruEmulator]:
    """An emulator on a thread of this process, so a test reads its counters while CLI
    subprocesses use it (the standalone emulator process exposes none)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    emu = GuruEmulator(**options)
    try:
        asyncio.run_coroutine_threadsafe(emu.start(), loop).result(timeout=10)
        yield emu
    finally:
        asyncio.run_coroutine_threadsafe(emu.close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def emulator_env(emu: GuruEmulator, cache: Path) -> dict[str, str]:
    """The environment that points the CLI at ``emu``."""
    endpoints = {
        "client_id": emu.client_id,
        "client_secret": emu.client_secret,
        "base_url": emu.base_url,
        "token_url": emu.token_url,
    }
    return env_for(endpoints, cache)


@pytest.fixture
def counting_emulator() -> Iterator[GuruEmulator]:
    """An in-thread emulator whose analyses take 0.2 s."""
    with thread_emulator(analysis_delay=0.2) as emu:
        yield emu


@pytest.fixture
def slow_emulator() -> Iterator[GuruEmulator]:
    """An in-thread emulator whose analyses never finish within a test."""
    with thread_emulator(analysis_delay=3600.0) as emu:
        yield emu


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


def test_emulator_subcommand_port_taken(endpoints: dict[str, str]) -> None:
    """guru-async emulator on a taken port prints one line naming the problem and exits 2."""
    port = endpoints["base_url"].rsplit(":", 1)[1]
    done = cli("emulator", "--port", port, env=base_env())
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("guru-async emulator: error: cannot serve")
    assert "address already in use" in lines[0]
    assert "--port" in lines[0]


def test_emulator_subcommand_help() -> None:
    """guru-async emulator --help names that command and gives each option a help and default."""
    done = cli("emulator", "--help", env=base_env())
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: guru-async emulator ")
    assert "python -m guru_async.testing" not in done.stdout
    assert "seconds from a finished upload until its analysis is Complete (default: 1.0)" in (
        " ".join(done.stdout.split())
    )
    assert "API port; 0 picks a free one (default: 0)" in " ".join(done.stdout.split())


def test_standalone_emulator_help_keeps_its_name() -> None:
    """python -m guru_async.testing --help still names itself."""
    done = subprocess.run(
        [sys.executable, "-m", "guru_async.testing", "--help"],
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m guru_async.testing ")


UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"


@pytest.mark.parametrize("command", ["analysis", "download", "video", "j2p"])
def test_unknown_id_exits_2(run: Run, command: str) -> None:
    """An id the API does not know (404) is bad input: one error line naming it, exit 2."""
    done = run(command, UNKNOWN_ID)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        line for line in done.stderr.strip().splitlines() if line.startswith("guru-async: error:")
    ], done.stderr
    assert f"no video with id {UNKNOWN_ID!r}" in done.stderr
    assert "0.0 MB" not in done.stderr
    assert "Traceback" not in done.stderr


def test_embedded_emulator_explains_unknown_ids(tmp_path: Path) -> None:
    """--emulator with an id command says why the id is unknown there and what to do instead."""
    done = cli("--emulator", "analysis", UNKNOWN_ID, env=base_env(), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "--emulator starts an empty emulator for this one command" in done.stderr
    assert "guru-async --emulator upload FILE --wait" in done.stderr


def test_timeout_hint_names_the_cli_command(slow_emulator: GuruEmulator, tmp_path: Path) -> None:
    """A timed-out wait tells a CLI user the command that resumes, not the library call."""
    env = emulator_env(slow_emulator, tmp_path / "cache")
    path = tmp_path / "clip.mp4"
    path.write_bytes(os.urandom(32 * 1024))
    done = cli("--json", "upload", str(path), "--activity", "squat", env=env)
    assert done.returncode == 0, done.stderr
    vid = json.loads(done.stdout)[0]["videoId"]

    done = cli("analysis", vid, "--wait", "--timeout", "0.3", env=env)
    assert done.returncode == 1
    assert f"run 'guru-async analysis {vid} --wait' to keep waiting" in done.stderr
    assert "await_analysis" not in done.stderr

    done = cli("--json", "upload", str(path), "--wait", "--timeout", "0.3", env=env)
    assert done.returncode == 1
    error = json.loads(done.stdout)[0]["error"]
    assert error["type"] == "AnalysisTimeoutError"
    assert "guru-async analysis " in error["message"]
    assert "await_analysis" not in error["message"]


def stop_with(process: subprocess.Popen[str], signum: int) -> str:
    """Send ``signum`` and return the process's stderr once it exits; after 60 s it is aborted
    instead, so with PYTHONFAULTHANDLER set the failure shows where every thread hung."""
    process.send_signal(signum)
    try:
        return process.communicate(timeout=60)[1]
    except subprocess.TimeoutExpired as exc:
        process.send_signal(signal.SIGABRT)
        stdout, stderr = process.communicate()
        message = f"still running 60 s after signal {signum}:\n{stdout}\n{stderr}"
        raise AssertionError(message) from exc


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until true (an event another process causes), failing after 30 s."""
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_ctrl_c_after_upload_names_ids_and_the_resume_command(
    slow_emulator: GuruEmulator, tmp_path: Path
) -> None:
    """Ctrl-C while upload --wait waits prints each uploaded video's id and the resume command."""
    env = emulator_env(slow_emulator, tmp_path / "cache") | {"PYTHONFAULTHANDLER": "1"}
    for name in ("a.mp4", "b.mp4"):
        (tmp_path / name).write_bytes(os.urandom(32 * 1024))
    process = subprocess.Popen(
        [sys.executable, "-m", "guru_async", "upload", "a.mp4", "b.mp4", "--wait"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def both_polled() -> bool:
            # list() copies in one step under the GIL, while the emulator's thread appends.
            polled = {r.path for r in list(slow_emulator.recorded)}
            videos = list(slow_emulator.videos)
            return len(videos) == 2 and all(f"/videos/{v}/analysis" in polled for v in videos)

        # A video is polled only after the CLI has its id: both uploads are then recorded.
        wait_for(both_polled, "both analyses to be polled")
        stderr = stop_with(process, signal.SIGINT)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130
    assert "interrupted" in stderr
    assert "Traceback" not in stderr
    for vid in slow_emulator.videos:
        assert f"guru-async analysis {vid} --wait" in stderr
    named = dict(
        line.split() for line in stderr.splitlines() if line.startswith("  ") and ".mp4" in line
    )
    assert set(named) == {"a.mp4", "b.mp4"}
    assert set(named.values()) == set(slow_emulator.videos)


def test_sigterm_on_batch_says_what_ctrl_c_says(
    slow_emulator: GuruEmulator, tmp_path: Path
) -> None:
    """SIGTERM during a journaled batch prints the same resume hint as Ctrl-C, not silence."""
    env = emulator_env(slow_emulator, tmp_path / "cache") | {"PYTHONFAULTHANDLER": "1"}
    (tmp_path / "a.mp4").write_bytes(os.urandom(32 * 1024))
    process = subprocess.Popen(
        [sys.executable, "-m", "guru_async", "batch", "a.mp4", "--journal", "j.db"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: bool(dict(slow_emulator.uploads_completed)), "the upload")
        stderr = stop_with(process, signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 143
    assert "guru-async: interrupted; rerun with --journal j.db to resume" in stderr
    assert "Traceback" not in stderr


def test_batch_says_what_it_skipped_and_recursive_takes_subfolders(
    run: Run, clip: Callable[..., Path], tmp_path: Path
) -> None:
    """A folder batch counts the sub-folders and non-video files it skipped; --recursive takes
    the sub-folders' videos too."""
    folder = tmp_path / "videos"
    clip("a.mp4", folder=folder)
    clip("b.mp4", folder=folder / "day2")
    clip("c.mp4", folder=folder / "day2" / "evening")
    (folder / "notes.txt").write_text("not a video")
    (folder / ".DS_Store").write_text("hidden: not counted")

    done = run("--json", "batch", str(folder), "--activity", "squat", "--no-wait")
    assert done.returncode == 0, done.stderr
    assert [Path(json.loads(line)["file"]).name for line in done.stdout.splitlines()] == ["a.mp4"]
    assert "skipped 1 sub-folder (add --recursive to include their videos)" in done.stderr
    assert "1 file without a video suffix" in done.stderr

    done = run("--json", "batch", str(folder), "-r", "--activity", "squat", "--no-wait")
    assert done.returncode == 0, done.stderr
    names = sorted(Path(json.loads(line)["file"]).name for line in done.stdout.splitlines())
    assert names == ["a.mp4", "b.mp4", "c.mp4"]
    assert "sub-folder" not in done.stderr

    empty = tmp_path / "empty"
    clip("x.mp4", folder=empty / "inner")
    done = run("batch", str(empty), "--no-wait")
    assert done.returncode == 2
    assert "add --recursive to look in its sub-folders" in done.stderr


async def test_rep_labels_show_the_plotted_angle_only(
    guru: GuruSession, video_file: Callable[..., Path]
) -> None:
    """A plot's rep labels show Guru's value of the angle being plotted, never another angle's."""
    from guru_async.plot import joints_for, rep_label

    squat = await guru.analyze(video_file("s.mp4"), activity="squat", rep_count=2)
    push_up = await guru.analyze(video_file("p.mp4"), activity="push_up", rep_count=2)
    knee = next(a for a in squat.reps[0].analyses if a.analysis_type == "HIP_KNEE_ANGLE_DEGREES")
    elbow = next(a for a in push_up.reps[0].analyses if a.analysis_type == "ELBOW_ANGLE_DEGREES")
    assert knee.analysis_scalar is not None
    assert elbow.analysis_scalar is not None

    shoulder_elbow = joints_for("shoulder-elbow")
    assert rep_label(1, squat.reps[0], shoulder_elbow) == "rep 1"
    assert rep_label(1, push_up.reps[0], shoulder_elbow) == f"rep 1\n{elbow.analysis_scalar:.1f}°"
    assert rep_label(1, squat.reps[0], joints_for("hip-knee")) == (
        f"rep 1\n{knee.analysis_scalar:.1f}° {knee.analysis_opinion}"
    )
    assert rep_label(1, push_up.reps[0], joints_for("hip-knee")) == "rep 1"
