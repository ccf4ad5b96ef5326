"""The subcommands that talk to the API: upload, batch, video, analysis, j2p, update,
download and plot."""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import csv
import io
import os
import shutil
import sys
import time
from collections.abc import Coroutine, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Final, TextIO, TypeVar

import attrs

from .._batch import BatchProgress, BatchResult
from .._converter import converter
from .._enums import AnalysisStatus
from .._errors import AnalysisTimeoutError, APIError, AuthenticationError, GuruConnectionError
from .._models import Analysis, JointData, Rep, Video
from .._types import UNSET
from .._upload import check_file
from ._config import UsageError, open_session, video_fields
from ._constants import EXIT_FAILED, EXIT_OK, PROG, VIDEO_SUFFIXES
from ._fleet import REDIS_ENV, REDIS_SCHEMES, open_batch
from ._output import (
    RESULT_HEADER,
    RESULT_WRAP,
    BatchDisplay,
    LiveProgress,
    Output,
    TransferDisplay,
    WaitDisplay,
    compact_json,
    format_table,
    item_path,
    megabytes,
    result_json,
    result_row,
    result_status,
    summary_line,
)

T = TypeVar("T")

# -- commands --------------------------------------------------------------------------------


def resume_command(video_id: str) -> str:
    """The command that goes on waiting for a video's analysis."""
    return f"{PROG} analysis {video_id} --wait"


def timeout_message(exc: AnalysisTimeoutError) -> str:
    """An analysis timeout in the CLI's words: the command that resumes, not the library call."""
    status = exc.last.status if exc.last is not None else "unknown (no poll succeeded)"
    cause = exc.__cause__
    why = f"; last failure: {type(cause).__name__}: {cause}" if cause is not None else ""
    return (
        f"analysis of video {exc.video_id} not finished in time (last status: {status}{why}); "
        f"the video is safe: run '{resume_command(exc.video_id)}' to keep waiting"
    )


def _cli_timeout(result: BatchResult) -> BatchResult:
    # The library's message names await_analysis(); a CLI user needs the command instead.
    error = result.error
    if not isinstance(error, AnalysisTimeoutError):
        return result
    cli_error = AnalysisTimeoutError(
        timeout_message(error), video_id=error.video_id, last=error.last
    )
    cli_error.__cause__ = error.__cause__
    return attrs.evolve(result, error=cli_error)


class SentVideos:
    """The videos an upload command has sent, for the resume hint of an interrupted run.

    A batch hands over a video's id with its result, which under ``--wait`` comes only once
    the analysis is done; the id of each upload in flight is in the batch's progress, so it is
    read from there. Feed it every progress report and every result.
    """

    def __init__(self) -> None:
        self._seen: dict[int, tuple[str, str]] = {}
        self._sending: frozenset[int] = frozenset()
        self._failed: set[str] = set()

    def update(self, progress: BatchProgress) -> None:
        """Note the uploads in flight and their videos."""
        self._sending = frozenset(progress.uploading)
        for number, upload in progress.uploading.items():
            if upload.video_id is not None:
                self._seen[number] = (item_path(upload.item), upload.video_id)

    def result(self, result: BatchResult) -> None:
        """Note a result: a video that failed (but for a timeout) is not one to wait for."""
        error = result.error
        if error is not None and not isinstance(error, AnalysisTimeoutError) and result.video_id:
            self._failed.add(result.video_id)

    def sent(self) -> dict[str, str]:
        """Each file whose upload finished, with its video's id."""
        return {
            name: video_id
            for number, (name, video_id) in self._seen.items()
            if number not in self._sending and video_id not in self._failed
        }


async def cmd_upload(args: argparse.Namespace, out: Output) -> int:
    """``upload FILE...``: upload each file (and wait for its analysis with ``--wait``)."""
    paths = [check_file(p) for p in args.files]
    fields = video_fields(args)
    started = time.monotonic()
    bytes_total = sum(p.stat().st_size for p in paths)
    display = BatchDisplay(total=len(paths), bytes_total=bytes_total, wait=args.wait)
    videos = SentVideos()

    def on_progress(progress: BatchProgress) -> None:
        display.update(progress)
        videos.update(progress)

    # Results come in completion order; the table and the JSON list keep the order given.
    places: dict[str, collections.deque[int]] = collections.defaultdict(collections.deque)
    for place, given in enumerate(args.files):
        places[given].append(place)
    results: list[BatchResult | None] = [None] * len(args.files)
    try:
        async with open_session(args) as guru, display:
            batch = guru.batch_upload(
                args.files, wait=args.wait, progress=on_progress, timeout=args.timeout, **fields
            )
            setup = SetupCheck()
            async with batch:
                async for result in batch:
                    setup.check(result, display)
                    videos.result(result)
                    assert isinstance(result.item, str)
                    results[places[result.item].popleft()] = _cli_timeout(result)
    finally:
        args.created.update(videos.sent())  # named if the command is interrupted
    done = [r for r in results if r is not None]
    if out.json:
        out.result(compact_json([result_json(r) for r in done]))
    else:
        rows = [result_row(r, default_activity=fields["activity"], short_id=False) for r in done]
        out.table(RESULT_HEADER, rows, right=4, wrap=RESULT_WRAP)
        out.note(summary_line([result_status(r) for r in done], time.monotonic() - started))
    return EXIT_OK if all(r.ok for r in done) else EXIT_FAILED


class SetupCheck:
    """Stops a batch at its first result that every other item would repeat.

    Credentials the API refuses, or an API not reachable before anything succeeded, fail every
    video alike: one line and exit 2 instead of a row per video and exit 1. Once the API has
    answered, a network failure is that item's own (a row), as a later outage may be brief.
    """

    def __init__(self) -> None:
        self._answered = False

    def check(self, result: BatchResult, display: LiveProgress) -> None:
        """Raise the setup error ``result`` shows (its progress display erased), if any."""
        error = result.error
        fatal: Exception | None = None
        if isinstance(error, AuthenticationError):
            fatal = error
        elif result.video_id is not None or error is None or isinstance(error, APIError):
            self._answered = True
        elif isinstance(error, GuruConnectionError) and not self._answered:
            fatal = UsageError(
                f"cannot reach the Guru API ({error}); no request has succeeded, so the batch "
                "stops here: check the network and GURU_BASE_URL"
            )
        if fatal is not None:
            display.abandon()
            raise fatal


@attrs.define
class Skipped:
    """What a folder walk left out: sub-folders (without ``--recursive``) and other files."""

    folders: int = 0
    files: int = 0

    def note(self) -> str | None:
        """One line saying what was skipped and how to include it, or None."""
        parts = []
        if self.folders:
            parts.append(
                f"{self.folders} sub-folder{'s' * (self.folders != 1)} (add --recursive to "
                "include their videos)"
            )
        if self.files:
            suffixes = ", ".join(sorted(VIDEO_SUFFIXES))
            parts.append(
                f"{self.files} file{'s' * (self.files != 1)} without a video suffix ({suffixes})"
            )
        return f"skipped {' and '.join(parts)}" if parts else None


def video_files(
    folder: Path, *, recursive: bool = False, skipped: Skipped | None = None
) -> Iterator[str]:
    """The video files inside ``folder`` (and its sub-folders when ``recursive``), read lazily.

    Hidden files and folders are left out without counting; anything else left out is counted
    in ``skipped``, so the user hears about it.
    """
    pending = [os.fspath(folder)]
    while pending:
        subfolders = []
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith("."):
                    continue
                if entry.is_dir():
                    if recursive:
                        subfolders.append(entry.path)
                    elif skipped is not None:
                        skipped.folders += 1
                elif os.path.splitext(name)[1].lower() in VIDEO_SUFFIXES and (
                    entry.is_file() or entry.is_symlink()
                ):
                    # A link to nowhere is yielded too: its row says the file is missing.
                    yield entry.path
                elif skipped is not None:
                    skipped.files += 1
        pending.extend(sorted(subfolders, reverse=True))


class BatchInputs:
    """The ``batch`` command's items: the files given and the videos in the folders given,
    listed afresh by each ``iter()``, so the batch can count them ahead of its uploads while
    it reads them lazily (a huge folder starts at once and its total grows as it is counted).

    Args:
        paths: The files and folders given.
        recursive: Look in folders' sub-folders too.
    """

    def __init__(self, paths: Sequence[str], *, recursive: bool) -> None:
        self._paths = list(paths)
        self._recursive = recursive
        self.found = 0
        self.skipped = Skipped()

    def __iter__(self) -> Iterator[str]:
        # Each reading tallies on its own (the batch and its count read concurrently); the
        # last one to finish is what the command reports.
        found = 0
        skipped = Skipped()
        for given in self._paths:
            if Path(given).is_dir():
                for file in video_files(Path(given), recursive=self._recursive, skipped=skipped):
                    found += 1
                    yield file
            else:
                found += 1
                yield given
        self.found, self.skipped = found, skipped


async def cmd_batch(args: argparse.Namespace, out: Output) -> int:
    """``batch PATH...``: upload files and folders' videos concurrently, optionally journaled."""
    for number, given in enumerate(args.paths, 1):
        if given.startswith(REDIS_SCHEMES):
            # Not echoed: the URL may hold a password.
            raise UsageError(
                f"PATH {number} is a Redis URL: --fleet takes no value; give the fleet's Redis "
                f"with ${REDIS_ENV} (kept out of 'ps') or --redis URL"
            )
        if not Path(given).exists():
            raise FileNotFoundError(f"no such file or folder: {given!r}")
        # Reads only up to the first video, so a huge folder costs nothing here.
        if Path(given).is_dir():
            probe = Skipped()
            if next(video_files(Path(given), recursive=args.recursive, skipped=probe), None):
                continue
            suffixes = ", ".join(sorted(VIDEO_SUFFIXES))
            hint = "; add --recursive to look in its sub-folders" if probe.folders else ""
            raise UsageError(f"no video files ({suffixes}) in folder {given!r}{hint}")
    fields = video_fields(args)
    total = None if any(Path(p).is_dir() for p in args.paths) else len(args.paths)
    inputs = BatchInputs(args.paths, recursive=args.recursive)
    statuses: list[tuple[str, bool]] = []
    rows: list[list[str]] = []
    # The bytes to send are known up front only for listed files in a batch with no journal
    # (a journal may already hold some of them); else a local batch counts them ahead.
    bytes_total = None
    if total is not None and args.journal is None:
        bytes_total = sum(Path(p).stat().st_size for p in args.paths)
    display = BatchDisplay(total=total, bytes_total=bytes_total, wait=not args.no_wait)
    started = time.monotonic()

    with contextlib.ExitStack() as files:
        results_file: TextIO | None = None
        if args.out is not None:
            # Opened once; each line written is a few hundred bytes, no reason for a thread.
            results_file = files.enter_context(open(args.out, "w", encoding="utf-8"))  # noqa: ASYNC230
        async with contextlib.AsyncExitStack() as stack:
            # One or the other: this process's session, or the fleet's workers (--fleet).
            batch = await open_batch(
                stack,
                args,
                inputs,
                display.update,
            )
            setup = SetupCheck()
            async with display, contextlib.aclosing(batch):
                async for raw in batch:
                    setup.check(raw, display)
                    result = _cli_timeout(raw)
                    # Written as each result arrives, so an interrupted batch keeps its output.
                    line = compact_json(result_json(result))
                    if results_file is not None:
                        results_file.write(line + "\n")
                        results_file.flush()
                    if out.json:
                        out.result(line)
                    else:
                        rows.append(result_row(result, default_activity=fields["activity"]))
                    # Statuses only: a batch of 100,000 videos must not keep every analysis.
                    statuses.append((result_status(result), result.ok))
    if inputs.found == 0:
        raise UsageError(f"no video files found in {', '.join(args.paths)}")
    if not out.json:
        rows.sort(key=lambda row: row[0])
        out.table(RESULT_HEADER, rows, right=4, wrap=RESULT_WRAP)
        out.note(summary_line([s for s, _ in statuses], time.monotonic() - started))
        if args.out is not None:
            out.note(f"results written to {args.out}")
    skipped_note = inputs.skipped.note()
    if skipped_note is not None:
        out.note(skipped_note)
    return EXIT_OK if all(ok for _, ok in statuses) else EXIT_FAILED


def key_value_text(pairs: Iterable[tuple[str, object]]) -> str:
    """``key  value`` lines, the values aligned in one column."""
    items = [(k, "" if v is None else str(v)) for k, v in pairs]
    width = max(len(k) for k, _ in items)
    return "\n".join(f"{k.ljust(width)}  {v}".rstrip() for k, v in items)


def _joint_summary(j2p: JointData) -> str:
    frames = max((len(f) for f in j2p.joint_to_points.values()), default=0)
    size = ""
    if j2p.resolution_width and j2p.resolution_height:
        size = f", {j2p.resolution_width}x{j2p.resolution_height}"
    return f"{j2p.status}, {len(j2p.joint_to_points)} joints x {frames} frames{size}"


def _analysis_summary(analysis: Analysis) -> str:
    parts = [str(analysis.status)]
    if analysis.activity:
        parts.append(str(analysis.activity))
    if analysis.status == AnalysisStatus.COMPLETE:
        parts.append(f"{len(analysis.reps)} reps")
    if analysis.reason:
        parts.append(analysis.reason)
    return ", ".join(parts)


def parse_include(value: str) -> list[str]:
    """``--include j2p,analysis`` as a list of names."""
    return [item.strip() for item in value.split(",") if item.strip()]


async def cmd_video(args: argparse.Namespace, out: Output) -> int:
    """``video ID``: a video's status, links and overlays (and embedded data with --include)."""
    async with open_session(args) as guru:
        video = await guru.get_video(args.id, include=args.include)
    if out.json:
        out.result(compact_json(converter.unstructure(video)))
        return EXIT_OK
    out.result(key_value_text(_video_lines(args.id, video)))
    return EXIT_OK


def _video_lines(video_id: str, video: Video) -> Iterator[tuple[str, object]]:
    yield "video", video_id
    yield "status", video.status
    if video.reason:
        yield "reason", video.reason
    if video.fps is not None:
        yield "fps", f"{video.fps:g}"
    yield "uri", video.uri or "(not uploaded yet)"
    for name, overlay in sorted(video.overlays.items()):
        yield f"overlay {name}", overlay.status
    if video.analysis is not None:
        yield "analysis", _analysis_summary(video.analysis)
    if video.j2p is not None:
        yield "j2p", _joint_summary(video.j2p)
    if video.objects is not None:
        kinds = ", ".join(
            f"{o.object_type or '?'} ({len(o.bounding_boxes)} boxes)" for o in video.objects
        )
        yield "objects", kinds or "none"


def _seconds(ms: float | None) -> str:
    return "-" if ms is None else f"{ms / 1000:.2f}s"


def _analysis_value(rep: Rep, kind: str) -> str:
    found = next((a for a in rep.analyses if a.analysis_type == kind), None)
    if found is None:
        return ""
    value = "-" if found.analysis_scalar is None else f"{found.analysis_scalar:g}"
    return f"{value} {found.analysis_opinion}" if found.analysis_opinion else value


def analysis_text(
    video_id: str, analysis: Analysis, *, terminal: bool = False, width: int | None = None
) -> str:
    """An analysis for humans: status and metadata, then one line per rep (a table drawn for
    a terminal with ``terminal``, see ``format_table``)."""
    lines: list[tuple[str, object]] = [("video", video_id), ("status", analysis.status)]
    if analysis.reason:
        lines.append(("reason", analysis.reason))
    lines += [
        (k, v) for k, v in (("domain", analysis.domain), ("activity", analysis.activity)) if v
    ]
    if analysis.status == AnalysisStatus.COMPLETE:
        lines.append(("reps", len(analysis.reps)))
    if analysis.runner_progress:
        first, last = analysis.runner_progress[0], analysis.runner_progress[-1]
        lines.append(
            (
                "runner",
                f"{first.distance_from_start or 0:.2f} m to {last.distance_from_start or 0:.2f} m"
                f" in {(last.timestamp or 0) / 1000:.2f} s",
            )
        )
    markers = analysis.field_markers
    if markers is not None:
        found = [markers.start_line, markers.middle_line, markers.finish_line]
        lines.append(
            (
                "markers",
                f"{sum(m is not None for m in found)} yard lines, {len(markers.cones or [])} cones",
            )
        )
    text = key_value_text(lines)
    if analysis.reps:
        # One column per analysis type, in the order the API lists them.
        kinds = list(dict.fromkeys(a.analysis_type for r in analysis.reps for a in r.analyses))
        rows = [
            [
                str(i),
                _seconds(r.start_timestamp_ms),
                _seconds(r.mid_timestamp_ms),
                _seconds(r.end_timestamp_ms),
                *(_analysis_value(r, kind) for kind in kinds),
            ]
            for i, r in enumerate(analysis.reps, 1)
        ]
        header = ["#", "START", "MID", "END", *kinds]
        text += "\n\n" + format_table(header, rows, right=0, terminal=terminal, width=width)
    return text


async def cmd_analysis(args: argparse.Namespace, out: Output) -> int:
    """``analysis ID``: a video's analysis, now or (``--wait``) once it is done."""
    async with open_session(args) as guru:
        if args.wait:
            async with WaitDisplay(f"analysis of {args.id}"):
                analysis = await guru.await_analysis(args.id, timeout=args.timeout)
        else:
            analysis = await guru.get_analysis(args.id)
    if out.json:
        out.result(compact_json(converter.unstructure(analysis)))
    else:
        width = shutil.get_terminal_size().columns if out.terminal else None
        out.result(analysis_text(args.id, analysis, terminal=out.terminal, width=width))
    return EXIT_FAILED if analysis.status == AnalysisStatus.FAILED else EXIT_OK


J2P_CSV_HEADER: Final = ("frame_idx", "part", "x", "y", "score", "timestamp")


def write_j2p_csv(joint_data: JointData, stream: IO[str]) -> int:
    """Write joint data as CSV (frame_idx,part,x,y,score,timestamp), frame by frame; returns
    the number of rows. x and y are normalised to 0..1 as the API sends them."""
    order = {joint: i for i, joint in enumerate(joint_data.joint_to_points)}
    frames = sorted(
        (f for joint_frames in joint_data.joint_to_points.values() for f in joint_frames),
        key=lambda f: (f.frame_idx, order.get(f.part, len(order))),
    )
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(J2P_CSV_HEADER)
    writer.writerows(
        (f.frame_idx, f.part, f.position.x, f.position.y, f.score, f.timestamp) for f in frames
    )
    return len(frames)


async def cmd_j2p(args: argparse.Namespace, out: Output) -> int:
    """``j2p ID``: per-frame joint positions as JSON or CSV, to stdout or ``--out``."""
    async with open_session(args) as guru:
        joint_data = await guru.get_joint_data(args.id)
    if joint_data.status != AnalysisStatus.COMPLETE:
        reason = f" ({joint_data.reason})" if joint_data.reason else ""
        hint = f"; wait for it with '{PROG} analysis {args.id} --wait'"
        print(
            f"{PROG}: joint data of video {args.id} is {joint_data.status}{reason}"
            f"{hint if joint_data.status == AnalysisStatus.PENDING else ''}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    buffer = io.StringIO()
    if args.format == "csv":
        rows = write_j2p_csv(joint_data, buffer)
        what = f"{rows} rows"
    else:
        buffer.write(compact_json(converter.unstructure(joint_data)) + "\n")
        what = _joint_summary(joint_data)
    if args.out is None:
        sys.stdout.write(buffer.getvalue())
        sys.stdout.flush()
    else:
        Path(args.out).write_text(buffer.getvalue(), encoding="utf-8")
        print(f"wrote {args.out} ({what})", file=sys.stderr)
    return EXIT_OK


async def cmd_update(args: argparse.Namespace, out: Output) -> int:
    """``update ID``: change a video's rep count, activity or domain."""
    changes = {
        "rep_count": UNSET if args.rep_count is None else args.rep_count,
        "activity": UNSET if args.activity is None else args.activity,
        "domain": UNSET if args.domain is None else args.domain,
    }
    given = {k: v for k, v in changes.items() if v is not UNSET}
    if not given:
        raise UsageError("update: give at least one of --rep-count, --activity, --domain")
    async with open_session(args) as guru:
        video_id = await guru.update_video(args.id, **changes)  # type: ignore[arg-type]
    if out.json:
        out.result(compact_json({"id": video_id}))
    else:
        out.result(f"updated {video_id}: " + ", ".join(f"{k}={v}" for k, v in given.items()))
    return EXIT_OK


async def _progress_once_started(
    work: Coroutine[object, object, T], started: asyncio.Event, display: LiveProgress
) -> T:
    """Await ``work``, drawing a progress line only once ``started`` is set: a call that fails
    before any byte moves (an unknown id) prints its error alone, not "0.0 MB" first."""
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(started.wait())
    try:
        await asyncio.wait((task, waiter), return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        async with display:
            return await task
    finally:
        task.cancel()
        waiter.cancel()
        await asyncio.gather(task, waiter, return_exceptions=True)


async def cmd_download(args: argparse.Namespace, out: Output) -> int:
    """``download ID``: the raw video, or an overlay, to a file."""
    suffix = f"-{args.overlay}" if args.overlay else ""
    dest = Path(args.out if args.out is not None else f"{args.id}{suffix}.mp4")
    started = asyncio.Event()
    display = TransferDisplay(f"download {dest.name}")

    def on_bytes(done: int, total: int) -> None:
        display.update(done, total)
        started.set()

    async with open_session(args) as guru:
        download = guru.download(args.id, dest, overlay=args.overlay, progress=on_bytes)
        path = await _progress_once_started(download, started, display)
    size = path.stat().st_size
    if out.json:
        out.result(
            compact_json({"id": args.id, "overlay": args.overlay, "path": str(path), "bytes": size})
        )
    else:
        out.result(f"downloaded {path} ({megabytes(size)})")
    return EXIT_OK


async def cmd_plot(args: argparse.Namespace, out: Output) -> int:
    """``plot ID --out F``: a joint angle over time with the reps marked, as an image."""
    from ..plot import joints_for, plot_joint_angle

    joints = joints_for(args.joint_angle, args.side)
    # Fail on a missing matplotlib before spending requests on data that cannot be drawn.
    _require_matplotlib()
    async with open_session(args) as guru:
        joint_data, analysis = await asyncio.gather(
            guru.get_joint_data(args.id), guru.get_analysis(args.id)
        )
    if joint_data.status != AnalysisStatus.COMPLETE:
        print(
            f"{PROG}: cannot plot video {args.id}: its joint data is {joint_data.status}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    path = await asyncio.to_thread(plot_joint_angle, joint_data, analysis, args.out, joints=joints)
    if out.json:
        out.result(compact_json({"id": args.id, "path": str(path), "joints": list(joints)}))
    else:
        out.result(f"wrote {path} ({'-'.join(joints)} angle, {len(analysis.reps)} reps marked)")
    return EXIT_OK


def _require_matplotlib() -> None:
    from ..plot import matplotlib_available

    if not matplotlib_available():
        raise ImportError('plotting needs matplotlib: pip install "guru-async[plot]"')
