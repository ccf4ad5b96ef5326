"""What the CLI prints: progress lines, result tables and JSON."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import IO, Any, Final, TextIO

from .._batch import BatchItem, BatchProgress, BatchResult, VideoSpec
from .._converter import converter
from .._enums import AnalysisStatus
from .._errors import AnalysisTimeoutError
from .._models import Rep
from ._constants import _TABLE_REP_VALUES

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
