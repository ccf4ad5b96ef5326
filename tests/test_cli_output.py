"""What the CLI draws: rich progress and tables on a terminal, plain text in a pipe, and a
clear message when the cli extra is missing. The CLI runs in subprocesses, as a user meets it:
attached to a pseudo-terminal (its screen read back through the pyte terminal emulator) or to
pipes."""

from __future__ import annotations

import fcntl
import io
import json
import os
import re
import select
import struct
import subprocess
import sys
import termios
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyte
import pytest

from guru_async import BatchProgress, GuruSession, PollPolicy, UploadProgress
from guru_async.cli._output import RESULT_HEADER, BatchDisplay, format_table, printable
from guru_async.testing import UPLOAD_ROUTE, FaultRule

from .test_cli import emulator_env, thread_emulator

REPO = Path(__file__).resolve().parents[1]
COLUMNS, LINES = 200, 40  # wide enough that no cell wraps
# Each upload is throttled to this, so a 240 kB file takes about 0.3 s: long enough for the
# display to draw a row per file mid-upload, short enough to keep each test near a second.
BANDWIDTH = 800_000
SIZE = 240_000
ESC = b"\x1b"
FAST_POLLS = PollPolicy(interval=0.01, max_interval=0.05)
# The names a results table must cope with: wide characters and a newline.
NAMES = ("plain.mp4", "スクワット.mp4", "new\nline.mp4")
PLAIN_LINE = re.compile(
    r"^uploads 3/3 \(3 uploaded, 0 restored, 0 failed\): 0\.7/0\.7 MB, [\d.]+ MB/s \| "
    r"analyses: 0 pending, 3 complete, 0 failed"
    r" \| [\d.]+ s$"
)


def base_env(**extra: str) -> dict[str, str]:
    """This environment without GURU_* settings or anything that changes rich's choices."""
    drop = ("GURU_", "FORCE_COLOR", "NO_COLOR", "TTY_", "COLUMNS", "LINES", "TERM")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment of a CLI pointed at a standalone emulator process whose uploads are
    throttled and whose analyses take 0.1 s."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "guru_async.testing",
            "--json",
            "--analysis-delay",
            "0.1",
            "--storage-bandwidth",
            str(BANDWIDTH),
        ],
        env=base_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    try:
        endpoints = json.loads(process.stdout.readline())
        yield base_env(
            GURU_CLIENT_ID=endpoints["client_id"],
            GURU_CLIENT_SECRET=endpoints["client_secret"],
            GURU_BASE_URL=endpoints["base_url"],
            GURU_TOKEN_URL=endpoints["token_url"],
            GURU_ASYNC_CACHE_DIR=str(tmp_path_factory.mktemp("cache")),
        )
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()


@pytest.fixture
def clips(tmp_path: Path) -> list[str]:
    """Three clips with awkward names in the current folder (tmp_path, where the CLI runs);
    the same bytes in every test, so the emulator gives each the same analysis whichever way
    the CLI is run."""
    for i, name in enumerate(NAMES):
        (tmp_path / name).write_bytes(bytes([i + 1]) * SIZE)
    return list(NAMES)


def command(*args: str) -> list[str]:
    """``python -m guru_async ARGS``."""
    return [sys.executable, "-m", "guru_async", *args]


def run_in_pty(
    args: list[str], env: dict[str, str], cwd: Path, *, stdout_pipe: bool = False
) -> tuple[int, bytes, list[list[str]], bytes]:
    """Run ``args`` with stderr (and stdout, unless ``stdout_pipe``) on a pseudo-terminal.

    Returns the exit status, every byte the terminal received, the screen after each read
    (as pyte draws it), and what stdout's pipe received (with ``stdout_pipe``).
    """
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", LINES, COLUMNS, 0, 0))
    process = subprocess.Popen(
        args,
        env={**env, "TERM": "xterm-256color"},
        cwd=cwd,
        stdin=follower,
        stdout=subprocess.PIPE if stdout_pipe else follower,
        stderr=follower,
        close_fds=True,
    )
    os.close(follower)
    screen = pyte.Screen(COLUMNS, LINES)
    stream = pyte.ByteStream(screen)
    received = b""
    frames = []
    try:
        while True:
            ready, _, _ = select.select([leader], [], [], 30)
            assert ready, "the CLI went silent for 30 s"
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the last process holding the terminal has exited
                break
            if not chunk:
                break
            received += chunk
            stream.feed(chunk)
            frames.append([line.rstrip() for line in screen.display])
        piped = process.stdout.read() if process.stdout is not None else b""
        status = process.wait(timeout=30)
    finally:
        os.close(leader)
        if process.stdout is not None:
            process.stdout.close()
    return status, received, frames, piped


def table_rows(lines: list[str]) -> dict[str, list[str]]:
    """The results table's rows by file name: cells split on runs of two or more spaces."""
    rows = {}
    for line in lines:
        cells = re.split(r" {2,}", line.strip())
        name = Path(cells[0]).name
        if name in {printable(n) for n in NAMES}:
            rows[name] = cells
    return rows


def column(line: str, cell: str) -> int:
    """The terminal cell where ``cell`` (a whole word group) starts in ``line``."""
    found = re.search(rf"(?<!\S){re.escape(cell)}(?!\S)", line)
    assert found is not None, (cell, line)
    return cell_width(line[: found.start()])


def cell_width(text: str) -> int:
    """How many terminal cells ``text`` takes (wide East Asian characters take two)."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def test_terminal_shows_rich_progress_per_file_and_a_table(
    cli_env: dict[str, str], clips: list[str], tmp_path: Path
) -> None:
    """On a terminal, upload --wait draws rich progress in place (a row per file with bytes,
    then the totals and the analyses' counts) and ends with the results table."""
    status, received, frames, _ = run_in_pty(
        command("upload", *clips, "--wait", "--activity", "squat"), cli_env, tmp_path
    )
    final = frames[-1]
    assert status == 0, "\n".join(final)
    # Drawn in place: rich erases lines and moves the cursor up between frames.
    assert b"\x1b[2K" in received
    assert b"\x1b[1A" in received
    # Mid-upload, a frame had a row per file with its own bytes (of 240.0 kB).
    file_row = re.compile(r"^plain\.mp4 .*/240\.0 kB")
    assert any(file_row.match(line) for frame in frames for line in frame), "no per-file row"
    # The last frame: the per-file rows are gone, the totals are complete.
    uploads = next(line for line in final if line.startswith("uploads 3/3"))
    assert "720.0/720.0 kB" in uploads
    assert "/s" in uploads  # the speed
    analyses = next(line for line in final if line.startswith("analyses 3/3"))
    assert "0 pending, 3 complete, 0 failed" in analyses
    assert not any(file_row.match(line) for line in final)
    header = next(line for line in final if line.startswith("VIDEO"))
    assert re.split(r" {2,}", header) == [h for h in RESULT_HEADER if h != "REASON"]
    rows = table_rows(final)
    assert sorted(rows) == sorted(printable(n) for n in NAMES)
    assert all(row[2:4] == ["squat", "Complete"] for row in rows.values()), "\n".join(final)
    # The wide name keeps the ID column aligned, the newline is shown escaped.
    id_columns = {column(line, row[1]) for row in rows.values() for line in final if row[1] in line}
    assert id_columns == {column(header, "ID")}


def test_pipe_gets_plain_lines_and_the_same_table(
    cli_env: dict[str, str], clips: list[str], tmp_path: Path
) -> None:
    """In pipes, upload --wait writes no control code at all: plain progress lines on stderr
    and on stdout the same table as on a terminal, one line per video."""
    done = subprocess.run(
        command("upload", *clips, "--wait", "--activity", "squat"),
        env=cli_env,
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert ESC not in done.stdout
    assert ESC not in done.stderr
    assert b"\r" not in done.stderr
    progress = done.stderr.decode().splitlines()
    assert progress, "no progress line"
    assert PLAIN_LINE.match(progress[-1]), progress[-1]
    lines = done.stdout.decode().splitlines()
    assert re.split(r" {2,}", lines[0]) == [h for h in RESULT_HEADER if h != "REASON"]
    rows = table_rows(lines[1:4])
    assert sorted(rows) == sorted(printable(n) for n in NAMES)
    assert "new\\nline.mp4" in rows  # escaped: the row stays one line
    # Every row's ID starts in the header's ID column, counted in terminal cells.
    for line in lines[1:4]:
        assert column(line, re.split(r" {2,}", line)[1]) == column(lines[0], "ID"), line
    # The same cells a terminal shows (but the ids, new for every upload).
    _, _, frames, _ = run_in_pty(
        command("upload", *clips, "--wait", "--activity", "squat"), cli_env, tmp_path
    )
    on_terminal = table_rows(frames[-1])
    assert {k: v[:1] + v[2:] for k, v in rows.items()} == {
        k: v[:1] + v[2:] for k, v in on_terminal.items()
    }


# A row's bytes as rich shows them, e.g. "1.2/8.0 MB".
SHOWN_BYTES = re.compile(r"([\d.]+)/[\d.]+ (kB|MB)")


def shown_bytes(frames: list[list[str]], row: re.Pattern[str]) -> list[float]:
    """The bytes sent that ``row`` showed, frame after frame (frames without it left out)."""
    sent = []
    for frame in frames:
        line = next((line for line in frame if row.match(line)), None)
        found = SHOWN_BYTES.search(line) if line is not None else None
        if found is not None:
            sent.append(float(found.group(1)) * (1e3 if found.group(2) == "kB" else 1e6))
    return sent


def test_progress_never_goes_back_when_an_upload_is_retried(tmp_path: Path) -> None:
    """upload --json with its connection to storage dropped mid-body: the upload is sent again
    from byte 0, yet the terminal's per-file and total bytes only rise, and the JSON result is
    the one video, stored once."""
    # Storage stops reading for 1.5 s before it hangs up, so the terminal draws the first
    # attempt's bytes (what the socket buffers took) several times before the retry from 0.
    size, bandwidth = 8_000_000, 8_000_000.0
    (tmp_path / "retried.mp4").write_bytes(os.urandom(size))
    with thread_emulator(analysis_delay=0.1, storage_bandwidth=bandwidth) as emu:
        emu.faults.add(FaultRule(route=UPLOAD_ROUTE, kind="drop", delay=1.5, times=1))
        env = base_env(**emulator_env(emu, tmp_path / "cache"))
        status, _, frames, piped = run_in_pty(
            command("--json", "upload", "retried.mp4", "--wait", "--activity", "squat"),
            env,
            tmp_path,
            stdout_pipe=True,
        )
        (result,) = json.loads(piped)
        assert status == 0, "\n".join(frames[-1])
        assert result["ok"] is True
        assert emu.upload_attempts[result["videoId"]] == 2
        assert emu.uploads_completed[result["videoId"]] == 1
    for row in (re.compile(r"^retried\.mp4 "), re.compile(r"^uploads ")):
        sent = shown_bytes(frames, row)
        assert len(set(sent)) > 2, f"too few frames showed {row.pattern}: {sent}"
        assert sent == sorted(sent), f"{row.pattern} went back: {sent}"
    assert shown_bytes(frames, re.compile(r"^uploads "))[-1] == size


def test_json_batch_keeps_stdout_clean_while_a_terminal_shows_progress(
    cli_env: dict[str, str], clips: list[str], tmp_path: Path
) -> None:
    """batch --json with stdout piped and stderr on a terminal: stdout holds only JSON lines,
    one per video, while the terminal shows rich progress with a row per file in flight."""
    status, received, frames, piped = run_in_pty(
        command("--json", "batch", *clips, "--activity", "squat"),
        cli_env,
        tmp_path,
        stdout_pipe=True,
    )
    assert status == 0, "\n".join(frames[-1])
    assert ESC not in piped
    results = [json.loads(line) for line in piped.decode().splitlines()]
    assert sorted(r["file"] for r in results) == sorted(NAMES)
    assert {r["status"] for r in results} == {"Complete"}
    assert b"\x1b[1A" in received
    file_row = re.compile(r"^スクワット\.mp4 .*/240\.0 kB")
    assert any(file_row.match(line) for frame in frames for line in frame), "no per-file row"
    assert any(line.startswith("analyses 3/3") for line in frames[-1])


def test_without_rich_the_cli_names_the_extra(tmp_path: Path) -> None:
    """With rich unimportable, a command exits 2 with one line naming the cli extra, no
    traceback; --help still works."""
    hidden = tmp_path / "hide"
    hidden.mkdir()
    (hidden / "rich.py").write_text(
        "raise ImportError('No module named rich (hidden by a test)')\n"
    )
    env = base_env()
    env["PYTHONPATH"] = os.pathsep.join([str(hidden), env["PYTHONPATH"]])
    done = subprocess.run(
        command("--emulator", "upload", "clip.mp4"),
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "guru-async: error: the command line needs the cli extra (No module named rich "
        '(hidden by a test)): pip install "guru-async[cli]"'
    ]
    assert done.stdout == ""
    helped = subprocess.run(
        command("--help"), env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert helped.returncode == 0
    assert "usage: guru-async" in helped.stdout


# -- the table and the display, in process ---------------------------------------------------


def test_table_aligns_wide_characters_and_keeps_odd_names_on_one_line() -> None:
    """Off a terminal, every row of the table is one line, whatever the file name holds
    (wide characters, a newline, an escape code, rich markup), and columns line up in cells."""
    names = ["a.mp4", "スクワット.mp4", "new\nline.mp4", "\x1b[31mred.mp4", "[bold]b[/bold].mp4"]
    rows = [[name, f"id{i}", "squat", "Complete", str(i), "", ""] for i, name in enumerate(names)]
    text = format_table(RESULT_HEADER, rows, right=4)
    lines = text.splitlines()
    assert len(lines) == 1 + len(names)
    assert "\x1b" not in text
    assert [re.split(r" {2,}", line)[0] for line in lines[1:]] == [
        "a.mp4",
        "スクワット.mp4",
        "new\\nline.mp4",
        "\\x1b[31mred.mp4",
        "[bold]b[/bold].mp4",
    ]
    for i, line in enumerate(lines[1:]):
        assert column(line, f"id{i}") == column(lines[0], "ID"), line
        # REPS is right-aligned: its last digit ends where the header does.
        assert column(line, str(i)) == column(lines[0], "REPS") + len("REPS") - 1, line
    # Columns empty in every row (KEY ANALYSIS, REASON) are left out.
    assert re.split(r" {2,}", lines[0]) == ["VIDEO", "ID", "ACTIVITY", "STATUS", "REPS"]


def test_terminal_table_wraps_only_the_long_columns() -> None:
    """On a narrow terminal the key analysis wraps within its column while ids stay whole, and
    a name's escape code is shown, never sent to the terminal."""
    analysis = "HIP_KNEE_ANGLE_DEGREES " + ", ".join(f"{90 + i}.5 good" for i in range(6))
    rows = [["\x1b[2Jclear.mp4", "0123456789abcdef", "squat", "Complete", "6", analysis, ""]]
    text = format_table(RESULT_HEADER, rows, right=4, wrap=(0, 5, 6), terminal=True, width=80)
    screen = pyte.Screen(80, 20)
    pyte.Stream(screen).feed(text.replace("\n", "\r\n"))
    lines = [line.rstrip() for line in screen.display if line.strip()]
    assert all(len(line) <= 80 for line in lines)
    first = next(i for i, line in enumerate(lines) if "0123456789abcdef" in line)
    assert "\\x1b[2Jclear.mp4" in lines[first]
    assert "\x1b[2J" not in text
    start = lines[first].index("HIP_KNEE")
    wrapped = [line[start:] for line in lines[first:]]
    assert len(wrapped) > 1
    assert all(not line[:start].strip() for line in lines[first + 1 :])
    assert "".join(wrapped).replace(" ", "") == analysis.replace(" ", "")


async def test_batch_progress_reports_each_upload_in_flight(
    start_emulator: Callable[..., Any], tmp_path: Path
) -> None:
    """BatchProgress.uploading holds one entry per upload in flight, each with its video's id
    and its own bytes going only forward up to its size, at most upload_concurrency at once,
    empty at the end."""
    emu = await start_emulator(analysis_delay=0.05, storage_bandwidth=4_000_000)
    sizes = {f"v{i}.mp4": 100_000 * (i + 1) for i in range(4)}
    for name, size in sizes.items():
        (tmp_path / name).write_bytes(os.urandom(size))
    seen: dict[int, list[UploadProgress]] = {}
    most = 0

    def on_progress(progress: BatchProgress) -> None:
        nonlocal most
        most = max(most, len(progress.uploading))
        for number, upload in progress.uploading.items():
            seen.setdefault(number, []).append(UploadProgress(**vars_of(upload)))

    async with emu.session(poll_policy=FAST_POLLS) as guru:
        assert isinstance(guru, GuruSession)
        items = [str(tmp_path / name) for name in sizes]
        batch = guru.batch_upload(items, upload_concurrency=2, wait=False, progress=on_progress)
        results = [r async for r in batch]
        assert all(r.ok for r in results)
        assert batch.progress.uploading == {}
        video_ids = {r.item: r.video_id for r in results}
    assert most == 2
    assert len(seen) == 4
    for snapshots in seen.values():
        item = snapshots[0].item
        assert isinstance(item, str)
        size = sizes[Path(item).name]
        sent = [s.bytes_sent for s in snapshots]
        assert sent == sorted(sent)
        assert {s.bytes_total for s in snapshots} == {size}
        assert sent[-1] == size
        assert {s.video_id for s in snapshots} == {video_ids[item]}


def vars_of(upload: UploadProgress) -> dict[str, Any]:
    """An UploadProgress's fields, to copy it at one moment."""
    return {
        "item": upload.item,
        "bytes_sent": upload.bytes_sent,
        "bytes_total": upload.bytes_total,
        "video_id": upload.video_id,
    }


async def test_display_writes_plain_lines_while_the_batch_runs(
    start_emulator: Callable[..., Any], tmp_path: Path
) -> None:
    """Off a terminal the batch display writes a plain line every log_interval and a last one
    with the final counts, with no control code."""
    emu = await start_emulator(analysis_delay=0.2)
    (tmp_path / "a.mp4").write_bytes(os.urandom(50_000))
    stream = io.StringIO()
    display = BatchDisplay(
        total=1, bytes_total=50_000, stream=stream, tty_interval=0.01, log_interval=0.05
    )
    async with emu.session(poll_policy=FAST_POLLS) as guru, display:
        batch = guru.batch_upload([str(tmp_path / "a.mp4")], progress=display.update)
        assert [r.ok async for r in batch] == [True]
    lines = stream.getvalue().splitlines()
    assert len(lines) >= 3  # the analysis alone takes 0.2 s: several intervals
    assert "\x1b" not in stream.getvalue()
    assert re.match(
        r"^uploads 1/1 \(1 uploaded, 0 restored, 0 failed\): 0\.1/0\.1 MB, [\d.]+ MB/s \| "
        r"analyses: 0 pending, 1 complete, 0 failed",
        lines[-1],
    )
    assert any("1 pending" in line for line in lines)


# "uploads 3/4" (or "uploads 3/≥4" while counted, "uploads 3" with no total) and the bytes.
UPLOADS_ROW = re.compile(r"^uploads (\d+)(?:/(≥?\d+))? .*?([\d.]+)/([\d.?]+) (kB|MB|bytes)")


def test_folder_batch_counts_the_folder_and_tells_restored_items_apart(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """A folder batch on a terminal shows items settled of the folder's count and bytes sent of
    the bytes to send, totals that never move (a failing file included) and bytes that never
    go back; rerun with its journal in a pipe, its plain line counts the restored videos apart,
    with nothing to send."""
    folder = tmp_path / "videos"
    folder.mkdir()
    for i in range(3):
        (folder / f"clip{i}.mp4").write_bytes(bytes([i + 1]) * SIZE)
    (folder / "empty.mp4").write_bytes(b"")
    args = command("batch", "videos", "--activity", "squat", "--journal", "batch.db")

    status, _, frames, _ = run_in_pty(args, cli_env, tmp_path)

    final = frames[-1]
    assert status == 1, "\n".join(final)  # the empty file failed
    rows = [m for frame in frames for line in frame if (m := UPLOADS_ROW.match(line))]
    assert rows, "no uploads row"
    # Every frame that showed totals showed the whole folder's: 4 items, 720 kB to send.
    shown = {(m.group(2), m.group(4), m.group(5)) for m in rows if m.group(4) != "?"}
    assert shown == {("4", "720.0", "kB")}, shown
    sent = shown_bytes(frames, re.compile(r"^uploads "))
    assert sent == sorted(sent), f"the bytes sent went back: {sent}"
    uploads = next(line for line in final if line.startswith("uploads "))
    assert uploads.startswith("uploads 4/4 "), uploads
    assert "720.0/720.0 kB" in uploads
    # The items settled, told apart, on the line below (the row is a terminal's width).
    assert final[final.index(uploads) + 1] == "  3 uploaded, 0 restored, 1 failed"
    assert any(line.startswith("analyses 4/4 ") for line in final), "\n".join(final)

    rerun = subprocess.run(
        args, env=cli_env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert rerun.returncode == 1, rerun.stderr
    last = rerun.stderr.splitlines()[-1]
    assert re.match(
        r"^uploads 4/4 \(0 uploaded, 3 restored, 1 failed\): 0\.0/0\.0 MB(, [\d.]+ MB/s)? \| "
        r"analyses: 0 pending, 3 complete, 1 failed \| [\d.]+ s$",
        last,
    ), last


def test_display_shows_lower_bounds_while_the_input_is_counted() -> None:
    """While a huge input is still being counted the plain line shows its totals as lower
    bounds (``/≥N``), then as exact numbers once the count is complete."""
    progress = BatchProgress(
        started=14, uploaded=13, restored=1, upload_failed=1, failed=1, succeeded=9, waiting=3
    )
    progress.bytes_sent, progress.total, progress.bytes_to_send = 4_200_000, 300, 12_700_000
    progress.counting = True
    display = BatchDisplay(progress, total=None, stream=io.StringIO())
    assert display.plain().startswith(
        "uploads 14/≥300 (12 uploaded, 1 restored, 1 failed): 4.2/≥12.7 MB"
    ), display.plain()
    progress.counting = False
    assert display.plain().startswith(
        "uploads 14/300 (12 uploaded, 1 restored, 1 failed): 4.2/12.7 MB"
    ), display.plain()
    assert "analyses: 3 pending, 9 complete, 1 failed" in display.plain()
