"""The ``guru-async`` command line: upload and analyse videos, inspect results, run a demo.

Credentials come only from the environment (``GURU_CLIENT_ID``, ``GURU_CLIENT_SECRET``, and
optionally ``GURU_BASE_URL`` / ``GURU_TOKEN_URL``), so they never land in shell history or in
``ps`` output. The access token is cached in ``$XDG_CACHE_HOME/guru-async/tokens.json`` (or
``$GURU_ASYNC_CACHE_DIR/tokens.json``), so repeated invocations reuse one token.

Exit status: 0 when everything succeeded, 1 when some video failed (analysis Failed, upload
refused, timeout, an API error), 2 for usage errors and bad input (missing file, unknown
activity, missing credentials).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import io
import json
import logging
import os
import random
import shutil
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, TextIO

from ._auth import FileTokenStore, MemoryTokenStore
from ._batch import BatchItem, BatchProgress, BatchResult, VideoSpec
from ._converter import converter
from ._enums import AnalysisStatus
from ._errors import AnalysisTimeoutError, AuthenticationError, GuruError
from ._models import Analysis, JointData, Rep, Video
from ._polling import DEFAULT_TIMEOUT, PollPolicy
from ._session import UNSET, GuruSession, __version__
from ._upload import check_file
from ._validation import check_rep_count, resolve_domain_activity
from .plot import JOINT_ANGLES

PROG: Final = "guru-async"
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130

VIDEO_SUFFIXES: Final = frozenset(
    {".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".3gp", ".wmv"}
)
# The embedded emulator analyses in about a second, so poll it far more often than the API.
EMULATOR_POLLS: Final = PollPolicy(interval=0.2, max_interval=0.5)
# At most this many analyses per rep in a table cell; the rest are counted.
_TABLE_REP_VALUES = 6

log = logging.getLogger("guru_async.cli")


class UsageError(Exception):
    """Bad input found by the CLI itself (exit status 2)."""


# -- configuration ---------------------------------------------------------------------------


def token_cache_path() -> Path:
    """Where the CLI keeps its access token between invocations.

    ``$GURU_ASYNC_CACHE_DIR/tokens.json`` when set, else ``$XDG_CACHE_HOME/guru-async/``,
    else ``~/.cache/guru-async/`` (``%LOCALAPPDATA%\\guru-async\\`` on Windows).
    """
    folder = os.environ.get("GURU_ASYNC_CACHE_DIR")
    if folder:
        return Path(folder).expanduser() / "tokens.json"
    base = os.environ.get("XDG_CACHE_HOME")
    if not base and os.name == "nt":
        base = os.environ.get("LOCALAPPDATA")
    return Path(base or "~/.cache").expanduser() / "guru-async" / "tokens.json"


def _credentials() -> tuple[str, str]:
    client_id = os.environ.get("GURU_CLIENT_ID", "")
    client_secret = os.environ.get("GURU_CLIENT_SECRET", "")
    missing = [
        name
        for name, value in (("GURU_CLIENT_ID", client_id), ("GURU_CLIENT_SECRET", client_secret))
        if not value
    ]
    if missing:
        raise UsageError(
            f"missing credentials: set {' and '.join(missing)} in the environment (the CLI "
            "takes credentials only from there, never from flags); to try it offline, add "
            f"--emulator or run '{PROG} demo'"
        )
    return client_id, client_secret


@contextlib.asynccontextmanager
async def open_session(args: argparse.Namespace) -> AsyncIterator[GuruSession]:
    """The session a command runs with: against the API, or an embedded emulator."""
    if args.emulator:
        from .testing import GuruEmulator

        async with (
            GuruEmulator(analysis_delay=1.0) as emu,
            GuruSession(
                emu.client_id,
                emu.client_secret,
                base_url=emu.base_url,
                token_url=emu.token_url,
                token_store=MemoryTokenStore(),
                poll_policy=EMULATOR_POLLS,
            ) as guru,
        ):
            log.debug("embedded emulator at %s", emu.base_url)
            yield guru
        return
    client_id, client_secret = _credentials()
    async with GuruSession(
        client_id,
        client_secret,
        base_url=args.base_url,
        token_store=FileTokenStore(token_cache_path()),
    ) as guru:
        yield guru


def _video_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The create-video fields shared by upload and batch, validated before any request."""
    domain, activity = resolve_domain_activity(args.domain, args.activity)
    return {
        "domain": domain,
        "activity": activity,
        "rep_count": check_rep_count(args.rep_count),
        "source": args.source,
    }


# -- progress --------------------------------------------------------------------------------


class ProgressLine:
    """One status line on stderr: redrawn in place with ``\\r`` on a terminal, and written as
    a plain line every ``log_interval`` seconds (and once at the end) anywhere else, so logs
    and CI output stay readable.

    Args:
        render: Builds the line from the elapsed seconds and whether a terminal draws it.
        stream: Where to draw; default stderr.
    """

    def __init__(
        self,
        render: Callable[[float, bool], str],
        *,
        stream: TextIO | None = None,
        tty_interval: float = 0.1,
        log_interval: float = 5.0,
    ) -> None:
        self._render = render
        self._stream = stream if stream is not None else sys.stderr
        self._tty = _isatty(self._stream)
        self._interval = tty_interval if self._tty else log_interval
        self._started = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ProgressLine:
        self._started = time.monotonic()
        self._task = asyncio.create_task(self._tick())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.draw(final=True)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self.draw()

    def draw(self, *, final: bool = False) -> None:
        """Draw the line now (and end it, when ``final``)."""
        line = self._render(time.monotonic() - self._started, self._tty)
        if self._tty:
            width = shutil.get_terminal_size().columns - 1
            # \x1b[K clears what a longer previous line left behind.
            self._stream.write("\r" + line[:width] + "\x1b[K" + ("\n" if final else ""))
        else:
            self._stream.write(line + "\n")
        self._stream.flush()


def _isatty(stream: IO[Any]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _bar(fraction: float, width: int = 8) -> str:
    filled = max(0, min(width, int(fraction * width)))
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def render_batch(
    progress: BatchProgress, total: int | None, elapsed: float, tty: bool, *, bytes_bar: bool
) -> str:
    """The status line of a batch or multi-file upload.

    Args:
        progress: The live counters.
        total: How many items there are, or None when the input is read lazily.
        elapsed: Seconds since the start.
        tty: Draw bars (a terminal) or only numbers (a log).
        bytes_bar: Show upload progress in bytes (all sizes known up front) instead of files.
    """
    done = progress.succeeded + progress.failed
    sent = f"{progress.bytes_sent / 1e6:.1f}/{progress.bytes_total / 1e6:.1f} MB"
    if total is None:
        uploaded, finished = f"{progress.uploaded}", f"{done}"
    else:
        if bytes_bar:
            up = progress.bytes_sent / progress.bytes_total if progress.bytes_total else 1.0
        else:
            up = progress.uploaded / total if total else 1.0
        uploaded, finished = f"{progress.uploaded}/{total}", f"{done}/{total}"
        if tty:
            uploaded = f"{_bar(up)} {uploaded}"
            finished = f"{_bar(done / total if total else 1.0)} {finished}"
    extras = "".join(
        f", {n} {what}"
        for n, what in ((progress.failed, "failed"), (progress.waiting, "analysing"))
        if n
    )
    # Short enough for an 80-column terminal in the common case; longer lines are cut.
    return f"up {uploaded} {sent} | done {finished}{extras} | {elapsed:.1f}s"


# -- results: rows, table, JSON --------------------------------------------------------------


def _item_path(item: BatchItem) -> str:
    return os.fspath(item.path if isinstance(item, VideoSpec) else item)


def result_status(result: BatchResult) -> str:
    """A one-word status for a result: the analysis status, Uploaded, Timeout or Error."""
    if result.error is not None:
        return "Timeout" if isinstance(result.error, AnalysisTimeoutError) else "Error"
    if result.analysis is None:
        return "Uploaded"
    return str(result.analysis.status or "?")


def result_reason(result: BatchResult) -> str:
    """Why a result did not succeed (empty when it did)."""
    if result.error is not None:
        return f"{type(result.error).__name__}: {result.error}"
    if result.analysis is not None and result.analysis.status == AnalysisStatus.FAILED:
        return result.analysis.reason or "analysis failed (no reason given)"
    return ""


def key_analysis(reps: Sequence[Rep], limit: int = _TABLE_REP_VALUES) -> str:
    """The most telling analysis type with its value per rep, e.g.
    ``HIP_KNEE_ANGLE_DEGREES 87.5 good, 102.3 bad``.

    The key type is the first with an opinion (Guru's own verdict), else the first angle,
    else the first that is not a flag such as ``IS_LEFT_LEG``.
    """
    opinionated: dict[str, bool] = {}
    for rep in reps:
        for item in rep.analyses:
            had = opinionated.get(item.analysis_type, False)
            opinionated[item.analysis_type] = had or item.analysis_opinion is not None
    if not opinionated:
        return ""
    kinds = list(opinionated)
    key = next(
        (k for k in kinds if opinionated[k]),
        next(
            (k for k in kinds if "ANGLE" in k and "TIMESTAMP" not in k),
            next((k for k in kinds if not k.startswith("IS_")), kinds[0]),
        ),
    )
    values = []
    for rep in reps:
        found = next((a for a in rep.analyses if a.analysis_type == key), None)
        if found is None or found.analysis_scalar is None:
            values.append("-")
            continue
        value = f"{found.analysis_scalar:.1f}"
        values.append(f"{value} {found.analysis_opinion}" if found.analysis_opinion else value)
    if len(values) > limit:
        values = [*values[:limit], f"... +{len(values) - limit}"]
    return f"{key} {', '.join(values)}"


def result_row(
    result: BatchResult,
    *,
    default_activity: str | None = None,
    short_id: bool = True,
    name: Callable[[str], str] = str,
) -> list[str]:
    """A results-table row: video, id, activity, status, reps, key analysis, reason.

    Args:
        result: The result.
        default_activity: The activity shown when neither the analysis nor the item has one.
        short_id: Show the first 8 characters of the id (enough to tell rows apart).
        name: How the video's path is shown.
    """
    analysis = result.analysis
    activity: object = analysis.activity if analysis is not None else None
    if activity is None and isinstance(result.item, VideoSpec):
        activity = result.item.activity
    activity = activity or default_activity or ""
    video_id = result.video_id or "-"
    if short_id and result.video_id:
        video_id = result.video_id[:8]
    complete = analysis is not None and analysis.status == AnalysisStatus.COMPLETE
    return [
        name(_item_path(result.item)),
        video_id,
        str(activity),
        result_status(result),
        str(len(analysis.reps)) if analysis is not None and complete else "",
        key_analysis(analysis.reps) if analysis is not None else "",
        result_reason(result),
    ]


RESULT_HEADER: Final = [
    "VIDEO",
    "ID",
    "ACTIVITY",
    "STATUS",
    "REPS",
    "KEY ANALYSIS PER REP",
    "REASON",
]


def format_table(header: Sequence[str], rows: Iterable[Sequence[str]], *, right: int = -1) -> str:
    """Rows as aligned columns under ``header``; column ``right`` is right-aligned."""
    all_rows = [list(header), *(list(r) for r in rows)]
    used = [i for i in range(len(header)) if any(r[i] for r in all_rows[1:])]
    widths = {i: max(len(r[i]) for r in all_rows) for i in used}
    lines = []
    for row in all_rows:
        cells = [row[i].rjust(widths[i]) if i == right else row[i].ljust(widths[i]) for i in used]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def result_json(result: BatchResult) -> dict[str, Any]:
    """A result as JSON: the file, id, ok, status, the analysis in the wire's camelCase, and
    the error (type and message) if any."""
    error = None
    if result.error is not None:
        error = {"type": type(result.error).__name__, "message": str(result.error)}
    return {
        "file": _item_path(result.item),
        "videoId": result.video_id,
        "ok": result.ok,
        "status": result_status(result),
        "analysis": None if result.analysis is None else converter.unstructure(result.analysis),
        "error": error,
    }


def _dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"))


def _summary(statuses: Sequence[str], elapsed: float) -> str:
    counts: dict[str, int] = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    parts = ", ".join(f"{n} {status.lower()}" for status, n in sorted(counts.items()))
    noun = "video" if len(statuses) == 1 else "videos"
    return f"{len(statuses)} {noun} in {elapsed:.1f} s: {parts}"


class Output:
    """Where a command's output goes: results to stdout; notes to stdout for humans and to
    stderr under ``--json``, so stdout stays parseable."""

    def __init__(self, json_mode: bool) -> None:
        self.json = json_mode

    def result(self, text: str) -> None:
        """Print the command's result."""
        print(text, flush=True)

    def note(self, text: str) -> None:
        """Print a message for humans."""
        print(text, file=sys.stderr if self.json else sys.stdout, flush=True)


# -- commands --------------------------------------------------------------------------------


async def cmd_upload(args: argparse.Namespace, out: Output) -> int:
    """``upload FILE...``: upload each file (and wait for its analysis with ``--wait``)."""
    paths = [check_file(p) for p in args.files]
    fields = _video_fields(args)
    started = time.monotonic()
    progress = BatchProgress(bytes_total=sum(p.stat().st_size for p in paths))
    slots = asyncio.Semaphore(4)

    async def one(given: str, path: Path) -> BatchResult:
        last = 0

        def on_bytes(sent: int, total: int) -> None:
            nonlocal last
            progress.bytes_sent += sent - last
            last = sent

        video_id: str | None = None
        result: BatchResult
        try:
            async with slots:
                progress.started += 1
                video_id = await guru.upload_video(path, progress=on_bytes, **fields)
            progress.uploaded += 1
            analysis: Analysis | None = None
            if args.wait:
                progress.waiting += 1
                try:
                    analysis = await guru.await_analysis(video_id, timeout=args.timeout)
                finally:
                    progress.waiting -= 1
            result = BatchResult(given, video_id=video_id, analysis=analysis)
        except AuthenticationError:
            raise  # the same for every file: one message and exit 2, not a row per file
        except (GuruError, OSError) as exc:
            result = BatchResult(given, video_id=video_id, error=exc)
        if result.ok:
            progress.succeeded += 1
        else:
            progress.failed += 1
        return result

    def render(elapsed: float, tty: bool) -> str:
        return render_batch(progress, len(paths), elapsed, tty, bytes_bar=True)

    async with open_session(args) as guru, ProgressLine(render):
        results = await asyncio.gather(*(one(g, p) for g, p in zip(args.files, paths, strict=True)))
    if out.json:
        out.result(_dumps([result_json(r) for r in results]))
    else:
        rows = [result_row(r, default_activity=fields["activity"], short_id=False) for r in results]
        out.result(format_table(RESULT_HEADER, rows, right=4))
        out.note(_summary([result_status(r) for r in results], time.monotonic() - started))
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAILED


def video_files(folder: Path) -> Iterator[str]:
    """The video files directly inside ``folder``, read lazily (hidden files skipped)."""
    with os.scandir(folder) as entries:
        for entry in entries:
            name = entry.name
            if (
                not name.startswith(".")
                and os.path.splitext(name)[1].lower() in VIDEO_SUFFIXES
                and entry.is_file()
            ):
                yield entry.path


def _batch_items(paths: Sequence[str], found: list[int]) -> Iterator[str]:
    for given in paths:
        if Path(given).is_dir():
            for file in video_files(Path(given)):
                found[0] += 1
                yield file
        else:
            found[0] += 1
            yield given


async def cmd_batch(args: argparse.Namespace, out: Output) -> int:
    """``batch PATH...``: upload files and folders' videos concurrently, optionally journaled."""
    for given in args.paths:
        if not Path(given).exists():
            raise FileNotFoundError(f"no such file or folder: {given!r}")
        # Reads only up to the first video, so a huge folder costs nothing here.
        if Path(given).is_dir() and next(video_files(Path(given)), None) is None:
            suffixes = ", ".join(sorted(VIDEO_SUFFIXES))
            raise UsageError(f"no video files ({suffixes}) in folder {given!r}")
    fields = _video_fields(args)
    total = None if any(Path(p).is_dir() for p in args.paths) else len(args.paths)
    found = [0]
    statuses: list[tuple[str, bool]] = []
    rows: list[list[str]] = []
    progress = BatchProgress()
    started = time.monotonic()

    def on_progress(live: BatchProgress) -> None:
        nonlocal progress
        progress = live

    def render(elapsed: float, tty: bool) -> str:
        return render_batch(progress, total, elapsed, tty, bytes_bar=False)

    with contextlib.ExitStack() as files:
        results_file: TextIO | None = None
        if args.out is not None:
            # Opened once; each line written is a few hundred bytes, no reason for a thread.
            results_file = files.enter_context(open(args.out, "w", encoding="utf-8"))  # noqa: ASYNC230
        async with open_session(args) as guru:
            batch = guru.batch_upload(
                _batch_items(args.paths, found),
                upload_concurrency=args.upload_concurrency,
                wait=not args.no_wait,
                journal=args.journal,
                progress=on_progress,
                timeout=args.timeout,
                **fields,
            )
            async with ProgressLine(render):
                async for result in batch:
                    # Written as each result arrives, so an interrupted batch keeps its output.
                    line = _dumps(result_json(result))
                    if results_file is not None:
                        results_file.write(line + "\n")
                        results_file.flush()
                    if out.json:
                        out.result(line)
                    else:
                        rows.append(result_row(result, default_activity=fields["activity"]))
                    # Statuses only: a batch of 100,000 videos must not keep every analysis.
                    statuses.append((result_status(result), result.ok))
    if found[0] == 0:
        raise UsageError(f"no video files found in {', '.join(args.paths)}")
    if not out.json:
        rows.sort(key=lambda row: row[0])
        out.result(format_table(RESULT_HEADER, rows, right=4))
        out.note(_summary([s for s, _ in statuses], time.monotonic() - started))
        if args.out is not None:
            out.note(f"results written to {args.out}")
    return EXIT_OK if all(ok for _, ok in statuses) else EXIT_FAILED


def _kv(pairs: Iterable[tuple[str, object]]) -> str:
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


def _parse_include(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


async def cmd_video(args: argparse.Namespace, out: Output) -> int:
    """``video ID``: a video's status, links and overlays (and embedded data with --include)."""
    async with open_session(args) as guru:
        video = await guru.get_video(args.id, include=args.include)
    if out.json:
        out.result(_dumps(converter.unstructure(video)))
        return EXIT_OK
    out.result(_kv(_video_lines(args.id, video)))
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


def analysis_text(video_id: str, analysis: Analysis) -> str:
    """An analysis for humans: status and metadata, then one line per rep."""
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
    text = _kv(lines)
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
        text += "\n\n" + format_table(header, rows, right=0)
    return text


async def cmd_analysis(args: argparse.Namespace, out: Output) -> int:
    """``analysis ID``: a video's analysis, now or (``--wait``) once it is done."""
    async with open_session(args) as guru:
        if args.wait:

            def render(elapsed: float, tty: bool) -> str:
                return f"waiting for the analysis of {args.id}: {elapsed:.1f}s"

            async with ProgressLine(render):
                analysis = await guru.await_analysis(args.id, timeout=args.timeout)
        else:
            analysis = await guru.get_analysis(args.id)
    if out.json:
        out.result(_dumps(converter.unstructure(analysis)))
    else:
        out.result(analysis_text(args.id, analysis))
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
        buffer.write(_dumps(converter.unstructure(joint_data)) + "\n")
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
        out.result(_dumps({"id": video_id}))
    else:
        out.result(f"updated {video_id}: " + ", ".join(f"{k}={v}" for k, v in given.items()))
    return EXIT_OK


async def cmd_download(args: argparse.Namespace, out: Output) -> int:
    """``download ID``: the raw video, or an overlay, to a file."""
    suffix = f"-{args.overlay}" if args.overlay else ""
    dest = Path(args.out if args.out is not None else f"{args.id}{suffix}.mp4")
    received = [0, 0]

    def on_bytes(done: int, total: int) -> None:
        received[:] = [done, total]

    def render(elapsed: float, tty: bool) -> str:
        done, total = received
        bar = _bar(done / total) + " " if tty and total else ""
        return f"download {bar}{_mb(done)}{'/' + _mb(total) if total else ''}  {elapsed:.1f}s"

    async with open_session(args) as guru, ProgressLine(render):
        path = await guru.download(args.id, dest, overlay=args.overlay, progress=on_bytes)
    size = path.stat().st_size
    if out.json:
        out.result(
            _dumps({"id": args.id, "overlay": args.overlay, "path": str(path), "bytes": size})
        )
    else:
        out.result(f"downloaded {path} ({_mb(size)})")
    return EXIT_OK


async def cmd_plot(args: argparse.Namespace, out: Output) -> int:
    """``plot ID --out F``: a joint angle over time with the reps marked, as an image."""
    from .plot import joints_for, plot_joint_angle

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
        out.result(_dumps({"id": args.id, "path": str(path), "joints": list(joints)}))
    else:
        out.result(f"wrote {path} ({'-'.join(joints)} angle, {len(analysis.reps)} reps marked)")
    return EXIT_OK


def _require_matplotlib() -> None:
    from .plot import matplotlib_available

    if not matplotlib_available():
        raise ImportError('plotting needs matplotlib: pip install "guru-async[plot]"')


# -- demo ------------------------------------------------------------------------------------

# (file name, activity, rep count); the last clip is the one the emulator cannot analyse.
DEMO_CLIPS: Final = (
    ("squat.mp4", "squat", 5),
    ("push_up.mp4", "push_up", 8),
    ("sprint.mp4", "sprint", 6),
    ("lunge.mp4", "lunge", 4),
    ("deadlift.mp4", "deadlift", 3),
    ("blurry_squat.mp4", "squat", 5),
)
DEMO_UNANALYZABLE: Final = "blurry_squat.mp4"


def write_demo_clips(folder: Path, *, seed: int = 7) -> list[VideoSpec]:
    """Write the demo's synthetic clips (random bytes; one unanalysable) into ``folder``.

    The bytes are seeded, so the emulator, which derives results from the content, shows the
    same reps on every run.
    """
    from .testing import UNANALYZABLE_MARKER

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    specs = []
    for name, activity, reps in DEMO_CLIPS:
        content = rng.randbytes(rng.randrange(200_000, 500_000))
        if name == DEMO_UNANALYZABLE:
            content = UNANALYZABLE_MARKER + content
        path = folder / name
        path.write_bytes(content)
        specs.append(VideoSpec(path, activity=activity, rep_count=reps, source="guru-async-demo"))
    return specs


async def cmd_demo(args: argparse.Namespace, out: Output) -> int:
    """``demo``: a journaled batch against an embedded emulator, a table and a plot."""
    from .testing import GuruEmulator

    started = time.monotonic()
    folder = Path(args.out)
    clips = folder / "clips"
    journal = folder / "journal.db"
    results_path = folder / "results.jsonl"
    plot_path = folder / "squat-hip-knee.png"
    # A journal from an earlier run points at videos of an emulator that no longer exists.
    for stale in (journal, Path(f"{journal}-wal"), Path(f"{journal}-shm"), plot_path):
        stale.unlink(missing_ok=True)
    specs = await asyncio.to_thread(write_demo_clips, clips)
    clip_bytes = sum(Path(s.path).stat().st_size for s in specs)
    delays = random.Random(1)

    async with (
        GuruEmulator(analysis_delay=lambda _: delays.uniform(1.0, 2.0), video_seconds=8.0) as emu,
        GuruSession(
            emu.client_id,
            emu.client_secret,
            base_url=emu.base_url,
            token_url=emu.token_url,
            token_store=MemoryTokenStore(),
            poll_policy=EMULATOR_POLLS,
        ) as guru,
    ):
        out.note(f"{PROG} demo: {len(specs)} sample clips, one journaled batch, a local emulator")
        out.note(
            _kv(
                [
                    ("emulator", f"{emu.base_url} (analysis takes 1-2 s)"),
                    ("clips", f"{clips}{os.sep} ({len(specs)} files, {_mb(clip_bytes)})"),
                    ("journal", journal),
                ]
            )
            + "\n"
        )
        progress = BatchProgress()

        def on_progress(live: BatchProgress) -> None:
            nonlocal progress
            progress = live

        def render(elapsed: float, tty: bool) -> str:
            return render_batch(progress, len(specs), elapsed, tty, bytes_bar=False)

        results: list[BatchResult] = []
        batch = guru.batch_upload(
            specs, upload_concurrency=3, journal=journal, progress=on_progress, timeout=30.0
        )
        async with ProgressLine(render):
            results = [r async for r in batch]
        order = {Path(s.path).name: i for i, s in enumerate(specs)}
        results.sort(key=lambda r: order.get(Path(_item_path(r.item)).name, len(order)))
        lines = [_dumps(result_json(r)) for r in results]
        results_path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        if out.json:
            for line in lines:
                out.result(line)
        else:
            rows = (result_row(r, name=lambda p: Path(p).name) for r in results)
            out.result(format_table(RESULT_HEADER, rows, right=4))
        out.note("")
        out.note(_summary([result_status(r) for r in results], time.monotonic() - started))

        # The journal's promise: the same batch again uploads nothing and restores every result.
        uploads_before = sum(emu.uploads_completed.values())
        again = [r async for r in guru.batch_upload(specs, journal=journal, timeout=30.0)]
        new_uploads = sum(emu.uploads_completed.values()) - uploads_before
        out.note(
            f"rerun with the journal: {len(again)} results restored, {new_uploads} new uploads"
        )

        squat = next((r for r in results if Path(_item_path(r.item)).name == "squat.mp4"), None)
        plot_note = await _demo_plot(guru, squat, plot_path)
        out.note(plot_note)
        out.note(f"results: {results_path}")

    expected = all(
        r.analysis is not None and r.analysis.status == AnalysisStatus.FAILED
        if Path(_item_path(r.item)).name == DEMO_UNANALYZABLE
        else r.ok
        for r in results
    )
    if expected:
        out.note(
            f"{DEMO_UNANALYZABLE} failed as intended, to show failure reporting. Next: set "
            f"GURU_CLIENT_ID and GURU_CLIENT_SECRET and run '{PROG} batch FOLDER --activity A'."
        )
        return EXIT_OK
    out.note("unexpected: the demo's results differ from what it was built to show")
    return EXIT_FAILED


async def _demo_plot(guru: GuruSession, squat: BatchResult | None, path: Path) -> str:
    from .plot import matplotlib_available, plot_joint_angle

    if not matplotlib_available():
        return 'plot: skipped, matplotlib is not installed (pip install "guru-async[plot]")'
    if squat is None or squat.video_id is None or not squat.ok:
        return "plot: skipped, the squat clip has no analysis"
    joint_data = await guru.get_joint_data(squat.video_id)
    await asyncio.to_thread(
        plot_joint_angle,
        joint_data,
        squat.analysis,
        path,
        title="squat.mp4: hip-knee angle (left knee) per rep",
    )
    return f"plot: {path} (hip-knee angle of squat.mp4, reps' start/mid/end marked)"


# -- the parser and main ---------------------------------------------------------------------


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {value!r}") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value!r}")
    return number


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    # Added to the main parser and to every subcommand, so they work before or after it; the
    # subcommands' copies default to SUPPRESS so they never undo a value given before.
    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="machine output: one JSON document (JSON lines for batch)",
    )
    parser.add_argument(
        "--emulator",
        action="store_true",
        default=default(False),
        help="run against an in-process Guru emulator started for this command",
    )
    parser.add_argument(
        "--base-url",
        default=default(None),
        metavar="URL",
        help="the API's root (default: $GURU_BASE_URL or the production API)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default(False),
        help="log guru_async's requests (DEBUG) to stderr",
    )


def _video_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--activity", metavar="A", help="e.g. squat, push_up, sprint")
    parser.add_argument("--domain", metavar="D", help="filled in from --activity when omitted")
    parser.add_argument("--rep-count", type=int, metavar="N", help="reps the video shows")
    parser.add_argument("--source", metavar="S", help="your service's name")


def build_parser() -> argparse.ArgumentParser:
    """The ``guru-async`` argument parser."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Upload workout videos to the Guru API and read their analyses. Credentials come "
            "from GURU_CLIENT_ID and GURU_CLIENT_SECRET (GURU_BASE_URL, GURU_TOKEN_URL "
            f"optional). Try '{PROG} demo' to see it work offline."
        ),
        epilog="exit status: 0 all good, 1 some video failed, 2 usage error or bad input",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _global_options(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, suppress=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text, parents=[common])

    p = command("upload", "upload video files (and wait for their analyses with --wait)")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--wait", action="store_true", help="wait for each analysis")
    p.add_argument(
        "--timeout",
        type=_positive_float,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"seconds to wait for each analysis ({DEFAULT_TIMEOUT:g})",
    )
    _video_options(p)
    p.set_defaults(handler=cmd_upload)

    p = command("batch", "upload many videos concurrently and collect their analyses")
    p.add_argument("paths", nargs="+", metavar="PATH", help="video files, or folders of them")
    p.add_argument(
        "--upload-concurrency", type=int, default=4, metavar="N", help="uploads at once (4)"
    )
    p.add_argument("--journal", metavar="F", help="SQLite journal: rerun to resume, never redo")
    p.add_argument("--out", metavar="F", help="write one JSON line per video to F")
    p.add_argument("--no-wait", action="store_true", help="do not wait for analyses")
    p.add_argument(
        "--timeout",
        type=_positive_float,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"seconds to wait for each analysis ({DEFAULT_TIMEOUT:g})",
    )
    _video_options(p)
    p.set_defaults(handler=cmd_batch)

    p = command("video", "show a video's status, download links and overlays")
    p.add_argument("id", metavar="ID")
    p.add_argument(
        "--include", type=_parse_include, metavar="LIST", help="any of j2p,analysis,objects"
    )
    p.set_defaults(handler=cmd_video)

    p = command("analysis", "show a video's analysis")
    p.add_argument("id", metavar="ID")
    p.add_argument("--wait", action="store_true", help="wait until it is Complete or Failed")
    p.add_argument(
        "--timeout",
        type=_positive_float,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"seconds to wait with --wait ({DEFAULT_TIMEOUT:g})",
    )
    p.set_defaults(handler=cmd_analysis)

    p = command("j2p", "export per-frame joint positions")
    p.add_argument("id", metavar="ID")
    p.add_argument("--format", choices=("json", "csv"), default="json")
    p.add_argument("--out", metavar="F", help="write to F instead of stdout")
    p.set_defaults(handler=cmd_j2p)

    p = command("update", "change a video's rep count, activity or domain")
    p.add_argument("id", metavar="ID")
    p.add_argument("--rep-count", type=int, metavar="N")
    p.add_argument("--activity", metavar="A")
    p.add_argument("--domain", metavar="D")
    p.set_defaults(handler=cmd_update)

    p = command("download", "download a video, or an overlay of it")
    p.add_argument("id", metavar="ID")
    p.add_argument("--overlay", choices=("skeleton", "all"))
    p.add_argument("--out", metavar="F", help="default: ID.mp4 (ID-OVERLAY.mp4)")
    p.set_defaults(handler=cmd_download)

    p = command("plot", "plot a joint angle over time with the reps marked")
    p.add_argument("id", metavar="ID")
    p.add_argument("--out", required=True, metavar="F", help="image file, e.g. rep.png")
    p.add_argument(
        "--joint-angle",
        choices=tuple(JOINT_ANGLES),
        default="hip-knee",
        help="the angle at the second joint (default: hip-knee, the knee angle)",
    )
    p.add_argument("--side", choices=("left", "right"), default="left")
    p.set_defaults(handler=cmd_plot)

    p = command("demo", "run a batch against a local emulator: table, journal, plot")
    p.add_argument("--out", default="guru-demo", metavar="DIR", help="default: ./guru-demo")
    p.set_defaults(handler=cmd_demo)

    # add_help=False: --help and every option belong to the emulator's own parser.
    p = sub.add_parser(
        "emulator", help="serve a local Guru emulator (see 'emulator --help')", add_help=False
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``guru-async`` command line.

    Args:
        argv: The arguments, without the program name; default ``sys.argv[1:]``.

    Returns:
        The exit status: 0 all good, 1 some video failed, 2 usage error or bad input.
    """
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if args.command == "emulator":
            from .testing import main as emulator_main

            return emulator_main((["--json"] if args.json else []) + extra)
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if args.emulator and args.base_url:
            parser.error("--emulator and --base-url cannot be combined")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE

    logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.verbose:
        logging.getLogger("guru_async").setLevel(logging.DEBUG)
    out = Output(args.json)
    try:
        status: int = asyncio.run(args.handler(args, out))
        return status
    except KeyboardInterrupt:
        journal = getattr(args, "journal", None)
        hint = f"; rerun with --journal {journal} to resume" if journal else ""
        print(f"\n{PROG}: interrupted{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (``guru-async ... | head``): not an error worth a message.
        # Point stdout at devnull so the interpreter's final flush does not fail again.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except AuthenticationError as exc:
        return _fail(exc, EXIT_USAGE)
    except GuruError as exc:
        return _fail(exc, EXIT_FAILED)
    except (UsageError, ValueError, ImportError, OSError) as exc:
        # Bad input the SDK or the CLI caught before (or instead of) a request: its message
        # names the accepted values, a traceback would only bury it.
        return _fail(exc, EXIT_USAGE)


def _fail(exc: BaseException, status: int) -> int:
    log.debug("%s failed", PROG, exc_info=exc)
    print(f"{PROG}: error: {exc}", file=sys.stderr)
    return status
