"""What the CLI prints: progress lines, result tables and JSON."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import shutil
import sys
import textwrap
import time
import unicodedata
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, TextIO, TypeVar

from .._batch import BatchItem, BatchProgress, BatchResult, VideoSpec
from .._converter import converter
from .._enums import AnalysisStatus
from .._errors import AnalysisTimeoutError
from .._models import Rep
from ._constants import TABLE_REP_VALUES

# -- rich, from the cli extra ---------------------------------------------------------------

try:
    from rich import box
    from rich.cells import cell_len
    from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
    from rich.live import Live
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        SpinnerColumn,
        TaskID,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    from rich.table import Column, Table
    from rich.text import Text
except ImportError as exc:  # the cli extra is not installed: main() says so
    _MISSING_RICH: ImportError | None = exc
else:
    _MISSING_RICH = None

CLI_EXTRA: Final = 'pip install "guru-async[cli]"'


def missing_extra() -> str | None:
    """What to install when the CLI's own dependencies are missing, or None."""
    if _MISSING_RICH is None:
        return None
    return f"the command line needs the cli extra ({_MISSING_RICH}): {CLI_EXTRA}"


# -- progress --------------------------------------------------------------------------------


def _isatty(stream: IO[Any]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _draws(stream: IO[Any]) -> bool:
    # A terminal that can move the cursor and show styles; TERM=dumb (an editor's shell
    # buffer) gets plain text, like a pipe.
    return _isatty(stream) and os.environ.get("TERM", "").lower() not in ("dumb", "unknown")


def megabytes(n: int) -> str:
    """A byte count in MB with one decimal, e.g. ``1.2 MB``."""
    return f"{n / 1e6:.1f} MB"


# Characters that would break a row across lines, move the cursor, recolour the terminal or
# reorder text (bidi overrides); shown escaped, like ``ls`` does for odd names.
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_ESCAPES: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """``text`` with control, line-separator and bidi characters escaped (``\\n``, ``\\x1b``):
    one table cell stays one line and cannot move the cursor or reorder a row."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif unicodedata.category(ch) in ("Cc", "Zl", "Zp") or ch in _BIDI:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


_Display = TypeVar("_Display", bound="LiveProgress")


class LiveProgress:
    """Progress on stderr, drawn in place by rich on a terminal; anywhere else (a CI log, a
    pipe, a file) a plain line every ``log_interval`` seconds and once at the end, with no
    control codes at all.

    Use it as ``async with``; subclasses say what to draw.

    Args:
        stream: Where to draw; default stderr.
        tty_interval: Seconds between redraws on a terminal.
        log_interval: Seconds between plain lines elsewhere.
    """

    def __init__(
        self,
        *,
        stream: TextIO | None = None,
        tty_interval: float = 0.1,
        log_interval: float = 5.0,
    ) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self.tty = _draws(self._stream)
        self._tty_interval = tty_interval
        self._log_interval = log_interval
        self._started = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self._live: Live | None = None
        self._handlers: list[tuple[logging.StreamHandler[Any], Any]] = []
        self._abandoned = False

    @property
    def elapsed(self) -> float:
        """Seconds since the display started."""
        return time.monotonic() - self._started

    def plain(self) -> str:
        """The line written where no terminal draws."""
        raise NotImplementedError

    def renderable(self) -> RenderableType:
        """What rich draws on a terminal; built once, then kept current by ``sync``."""
        raise NotImplementedError

    def sync(self) -> None:
        """Bring the rich renderable up to date (called before each redraw)."""

    def abandon(self) -> None:
        """Leave no progress behind on exit: the command ends with a one-line error instead
        (a setup error that every item would repeat)."""
        self._abandoned = True

    async def __aenter__(self: _Display) -> _Display:
        self._started = time.monotonic()
        if self.tty:
            console = Console(file=self._stream, force_terminal=True, soft_wrap=True)
            # stdout is redirected above the display only when it is a terminal too: piped
            # results (--json) must reach the pipe untouched.
            self._live = Live(
                self.renderable(),
                console=console,
                auto_refresh=False,  # redrawn by the task below, on the loop's thread
                redirect_stdout=_isatty(sys.stdout),
                redirect_stderr=True,
                transient=False,
            )
            self.sync()
            self._live.start(refresh=True)
            self._redirect_logging()
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
        if not self._abandoned:
            self.draw()
        if self._live is not None:
            self._live.transient = self._abandoned  # rich then erases what it drew
            self._restore_logging()
            self._live.stop()
            self._live = None

    def _redirect_logging(self) -> None:
        # Log lines (-v) written straight to the terminal would be overwritten by the next
        # redraw; through the redirected stderr they are printed above the display.
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is sys.__stderr__:
                self._handlers.append((handler, handler.setStream(sys.stderr)))

    def _restore_logging(self) -> None:
        for handler, stream in self._handlers:
            handler.setStream(stream)
        self._handlers.clear()

    async def _tick(self) -> None:
        # Wakes at the terminal's pace everywhere, so measures (a batch's sending time) stay
        # fine-grained even when a log gets a line only every few seconds.
        written = time.monotonic()
        while True:
            await asyncio.sleep(self._tty_interval)
            self.sample()
            if self.tty or time.monotonic() - written >= self._log_interval:
                written = time.monotonic()
                self.draw()

    def sample(self) -> None:
        """Take a measure between drawings (called at the terminal's pace, drawn or not)."""

    def draw(self) -> None:
        """Redraw now (a terminal) or write the plain line (anywhere else)."""
        if self._live is not None:
            self.sync()
            self._live.refresh()
        elif not self.tty:
            self._stream.write(self.plain() + "\n")
            self._stream.flush()


def _bytes_columns() -> list[Any]:
    # Fixed widths, so the per-file rows and the totals row (separate tables) line up.
    return [
        TextColumn("{task.description}", markup=False, table_column=Column(width=24)),
        BarColumn(bar_width=30),
        DownloadColumn(table_column=Column(width=16, justify="right")),
        TransferSpeedColumn(table_column=Column(width=11, justify="right")),
        TimeRemainingColumn(table_column=Column(width=8, justify="right")),
    ]


class BatchDisplay(LiveProgress):
    """The progress of uploads and analyses: a row per upload in flight (bytes, speed, ETA),
    a row for all uploads (items settled of the total: uploaded by this run, restored from
    the journal, failed; bytes sent of the bytes to send), and a row for the analyses
    (pending, complete, failed).

    Feed it the batch's counters: pass ``progress`` (read at each redraw), or use ``update``
    as ``batch_upload``'s ``progress=`` callback. Totals the batch counts ahead
    (``BatchProgress.total`` and ``bytes_to_send``) are shown as they grow, as ``/≥N`` until
    the count is complete.

    Args:
        progress: The counters to show; ``update`` replaces them.
        total: How many items, when the caller knows better than the counters (else
            ``BatchProgress.total``).
        bytes_total: The bytes all uploads will send, when the caller knows better than the
            counters (else ``BatchProgress.bytes_to_send``; when neither is known, the totals
            row shows bytes sent without an ETA).
        wait: Whether the command awaits analyses (the last row counts them), else it counts
            videos uploaded.
        stream, tty_interval, log_interval: As for LiveProgress.
    """

    def __init__(
        self,
        progress: BatchProgress | None = None,
        *,
        total: int | None,
        bytes_total: int | None = None,
        wait: bool = True,
        stream: TextIO | None = None,
        tty_interval: float = 0.1,
        log_interval: float = 5.0,
    ) -> None:
        super().__init__(stream=stream, tty_interval=tty_interval, log_interval=log_interval)
        self.progress = progress if progress is not None else BatchProgress()
        self.total = total
        self.bytes_total = bytes_total
        self.wait = wait
        self._files: Progress | None = None
        self._totals: Progress | None = None
        self._results: Progress | None = None
        self._rows: dict[int, TaskID] = {}
        self._breakdown = Text(no_wrap=True, overflow="ellipsis")
        self._last_sent = 0
        self._sent_at: float | None = None
        self._all: TaskID | None = None
        self._done: TaskID | None = None
        self._notice: str | None = None

    def update(self, progress: BatchProgress) -> None:
        """Show these counters from now on (fits ``batch_upload(progress=...)``)."""
        self.progress = progress

    def _counts(self) -> str:
        p = self.progress
        if self.wait:
            return f"{p.waiting} pending, {p.succeeded} complete, {p.failed} failed"
        return f"{p.succeeded} uploaded, {p.failed} failed"

    def _total(self) -> int | None:
        return self.total if self.total is not None else self.progress.total

    def _counting(self) -> bool:
        # Still growing: shown as a lower bound.
        return self.progress.counting

    def _of(self, done: int) -> str:
        """``done/total``, ``done/≥total`` while the input is counted, or ``done``."""
        total = self._total()
        if total is None:
            return f"{done}"
        return f"{done}/{'≥' if self.total is None and self._counting() else ''}{total}"

    def _bytes_to_send(self) -> int | None:
        if self.bytes_total is not None:
            return self.bytes_total
        return self.progress.bytes_to_send

    def _uploads(self) -> str:
        p = self.progress
        return self._of(p.uploaded + p.upload_failed)

    def _upload_counts(self) -> str:
        p = self.progress
        sent = p.uploaded - p.restored
        return f"{sent} uploaded, {p.restored} restored, {p.upload_failed} failed"

    def plain(self) -> str:
        """E.g. ``uploads 2/6 (1 uploaded, 1 restored, 0 failed): 1.2/3.4 MB, 2.1 MB/s |
        analyses: 1 pending, ... | 5.0 s``."""
        p = self.progress
        elapsed = self.elapsed
        to_send = self._bytes_to_send()
        at_least = "≥" if self.bytes_total is None and self._counting() else ""
        of = f"{at_least}{(p.bytes_total if to_send is None else to_send) / 1e6:.1f}"
        sending = self._sending_time()
        speed = f", {p.bytes_sent / sending / 1e6:.1f} MB/s" if sending > 0 else ""
        what = "analyses" if self.wait else "videos"
        return (
            f"uploads {self._uploads()} ({self._upload_counts()}): "
            f"{p.bytes_sent / 1e6:.1f}/{of} MB{speed} | "
            f"{what}: {self._counts()}{fleet_counts(p, prefix=' | fleet: ')} | {elapsed:.1f} s"
        )

    def renderable(self) -> RenderableType:
        """Rich Progress tables: uploads in flight, all uploads, and the results."""
        console = Console(file=self._stream, force_terminal=True)
        self._files = Progress(*_bytes_columns(), console=console, auto_refresh=False)
        self._totals = Progress(*_bytes_columns(), console=console, auto_refresh=False)
        self._all = self._totals.add_task("uploads", total=self._bytes_to_send())
        self._results = Progress(
            TextColumn("{task.description}", markup=False, table_column=Column(width=24)),
            BarColumn(bar_width=30),
            TextColumn("{task.fields[counts]}", markup=False),
            TimeElapsedColumn(),
            console=console,
            auto_refresh=False,
        )
        self._done = self._results.add_task(
            self._what(), total=self._total(), counts=self._counts()
        )
        # Item counts on a line of their own: the rows above fill a terminal's width already.
        return Group(self._files, self._totals, self._breakdown, self._results, _FleetRow(self))

    def sync(self) -> None:
        """Add a row for each new upload in flight, move every bar, drop finished uploads."""
        files, totals, results = self._files, self._totals, self._results
        if files is None or totals is None or results is None:
            return
        assert self._all is not None
        assert self._done is not None
        p = self.progress
        for number, upload in list(p.uploading.items()):
            row = self._rows.get(number)
            if row is None:
                name = printable(Path(item_path(upload.item)).name)
                row = self._rows[number] = files.add_task(name, total=upload.bytes_total)
            files.update(row, completed=upload.bytes_sent)
        for number in [n for n in self._rows if n not in p.uploading]:
            files.remove_task(self._rows.pop(number))
        totals.update(
            self._all,
            description=f"uploads {self._uploads()}",
            completed=p.bytes_sent,
            total=self._bytes_to_send(),
        )
        self._breakdown.plain = f"  {self._upload_counts()}"
        results.update(
            self._done,
            description=self._what(),
            completed=p.succeeded + p.failed,
            total=self._total(),
            counts=self._counts(),
        )

    def draw(self) -> None:
        """As LiveProgress.draw; once every upload is sent, the speed shown is the average."""
        if self._totals is not None and self._all is not None:
            p = self.progress
            task = next(t for t in self._totals.tasks if t.id == self._all)
            total = self._total()
            if (
                p.bytes_sent
                and not p.uploading
                and (total is None or p.uploaded + p.upload_failed >= total)
            ):
                # rich measures speed over recent redraws: a quick upload has too few to show.
                task.finished_speed = p.bytes_sent / max(self._sending_time(), 1e-3)
        super().draw()

    def sample(self) -> None:
        """Note when the bytes sent last grew (the average speed leaves analysis time out);
        where no terminal draws, write a line at once when the batch's notice appears, so it
        stands beside the log's warning."""
        if self.progress.bytes_sent != self._last_sent:
            self._last_sent, self._sent_at = self.progress.bytes_sent, self.elapsed
        if self.progress.notice != self._notice:
            self._notice = self.progress.notice
            if self._notice and not self.tty:
                self.draw()

    def _sending_time(self) -> float:
        self.sample()
        return self._sent_at if self._sent_at is not None else self.elapsed

    def _what(self) -> str:
        done = self.progress.succeeded + self.progress.failed
        return f"{'analyses' if self.wait else 'videos'} {self._of(done)}"


def fleet_counts(progress: BatchProgress, *, prefix: str = "") -> str:
    """A fleet's batch's counts, e.g. ``3 workers, 10 queued, 4 running, 6 done`` (after
    ``prefix``); empty for a batch in one process."""
    p = progress
    if p.workers is None:
        return ""
    if p.workers:
        workers = f"{p.workers} worker{'' if p.workers == 1 else 's'}"
    else:
        workers = "no live worker"
    done = p.succeeded + p.failed
    return f"{prefix}{workers}, {p.queued} queued, {p.running} running, {done} done"


class _FleetRow:
    """The fleet's line under a batch's progress (nothing for a batch in one process): its
    workers and items, and the batch's notice (no live worker) while it stands."""

    def __init__(self, display: BatchDisplay) -> None:
        self._display = display

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        progress = self._display.progress
        counts = fleet_counts(progress, prefix="fleet: ")
        if counts:
            yield Text(counts)
        if progress.notice:
            # Wrapped here: the live display crops long lines, and the notice ends with the
            # command to run.
            for line in textwrap.wrap(printable(progress.notice), max(options.max_width, 20)):
                yield Text(line, style="bold yellow")


class TransferDisplay(LiveProgress):
    """One transfer's progress (a download): bytes, speed and ETA.

    Args:
        description: What moves, e.g. ``"download ID.mp4"``.
        stream, tty_interval, log_interval: As for LiveProgress.
    """

    def __init__(
        self,
        description: str,
        *,
        stream: TextIO | None = None,
        tty_interval: float = 0.1,
        log_interval: float = 5.0,
    ) -> None:
        super().__init__(stream=stream, tty_interval=tty_interval, log_interval=log_interval)
        self.description = description
        self.done = 0
        self.size: int | None = None
        self._progress: Progress | None = None
        self._row: TaskID | None = None

    def update(self, done: int, total: int) -> None:
        """Record the bytes moved so far (fits ``download(progress=...)``)."""
        self.done, self.size = done, total or None

    def plain(self) -> str:
        """E.g. ``download x.mp4: 1.2/3.4 MB, 2.1 MB/s | 5.0 s``."""
        elapsed = self.elapsed
        of = f"/{megabytes(self.size)}" if self.size else ""
        speed = f", {self.done / elapsed / 1e6:.1f} MB/s" if elapsed > 0 else ""
        return f"{self.description}: {megabytes(self.done)}{of}{speed} | {elapsed:.1f} s"

    def renderable(self) -> RenderableType:
        """A rich Progress with one row."""
        self._progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(bar_width=30),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(file=self._stream, force_terminal=True),
            auto_refresh=False,
        )
        self._row = self._progress.add_task(printable(self.description), total=None)
        return self._progress

    def sync(self) -> None:
        """Move the bar."""
        if self._progress is not None and self._row is not None:
            self._progress.update(self._row, completed=self.done, total=self.size)


class WaitDisplay(LiveProgress):
    """A wait with no measurable progress (one analysis): a spinner and the time so far.

    Args:
        description: What is awaited, e.g. ``"analysis of ID"``.
        stream, tty_interval, log_interval: As for LiveProgress.
    """

    def __init__(
        self,
        description: str,
        *,
        stream: TextIO | None = None,
        tty_interval: float = 0.1,
        log_interval: float = 5.0,
    ) -> None:
        super().__init__(stream=stream, tty_interval=tty_interval, log_interval=log_interval)
        self.description = description

    def plain(self) -> str:
        """E.g. ``waiting for the analysis of ID: 5.0 s``."""
        return f"waiting for the {self.description}: {self.elapsed:.1f} s"

    def renderable(self) -> RenderableType:
        """A spinner, the description and the time elapsed."""
        progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}", markup=False),
            TimeElapsedColumn(),
            console=Console(file=self._stream, force_terminal=True),
            auto_refresh=False,
        )
        progress.add_task(printable(f"waiting for the {self.description}"), total=None)
        return progress


# -- results: rows, table, JSON --------------------------------------------------------------


def item_path(item: BatchItem) -> str:
    """A batch item's path (a VideoSpec's own), as text."""
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


def key_analysis(reps: Sequence[Rep], limit: int = TABLE_REP_VALUES) -> str:
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
        name(item_path(result.item)),
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
# The results table's columns that wrap on a narrow terminal; ids and statuses never do.
RESULT_WRAP: Final = (0, 5, 6)


def format_table(
    header: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    right: int = -1,
    wrap: Collection[int] | None = None,
    terminal: bool = False,
    width: int | None = None,
) -> str:
    """Rows as a rich table under ``header``: column ``right`` is right-aligned, and columns
    empty in every row are left out.

    Widths count terminal cells, so wide characters (CJK, emoji) keep columns aligned; control
    characters in cells are escaped (see ``printable``), so a row is one line.

    Args:
        header: The column titles.
        rows: The cells, as text (never parsed as rich markup).
        right: The index of the right-aligned column, or -1.
        wrap: The columns whose cells may wrap to fit a terminal (default: all); the others
            keep each cell on one line.
        terminal: Draw for a terminal: a bold header, its rule, and cells wrapped to ``width``.
            Elsewhere the table is plain text with no control codes, each row on one line
            however long, columns two spaces apart.
        width: The terminal's width in cells (with ``terminal``); default: the real one.
    """
    all_rows = [[printable(cell) for cell in row] for row in rows]
    used = [i for i in range(len(header)) if any(row[i] for row in all_rows)]
    table = Table(
        *(
            Column(
                header[i],
                justify="right" if i == right else "left",
                no_wrap=not terminal or (wrap is not None and i not in wrap),
                overflow="fold",
            )
            for i in used
        ),
        box=box.SIMPLE_HEAD if terminal else None,
        header_style="bold" if terminal else "",
        show_edge=False,
        pad_edge=False,
        padding=(0, 1),
        collapse_padding=terminal,  # a box's own column gap is the second space
    )
    for row in all_rows:
        table.add_row(*(Text(row[i]) for i in used))
    buffer = io.StringIO()
    if not terminal:
        # As wide as the widest row, so nothing wraps: a log or a pipe gets one line per row.
        width = sum(max(cell_len(r[i]) for r in [list(header), *all_rows]) + 2 for i in used)
    console = Console(
        file=buffer,
        width=width,
        force_terminal=terminal,
        color_system="standard" if terminal else None,
        highlight=False,
    )
    console.print(table)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines())


def result_json(result: BatchResult) -> dict[str, Any]:
    """A result as JSON: the file, id, ok, status, the analysis in the wire's camelCase, and
    the error (type and message) if any."""
    error = None
    if result.error is not None:
        error = {"type": type(result.error).__name__, "message": str(result.error)}
    return {
        "file": item_path(result.item),
        "videoId": result.video_id,
        "ok": result.ok,
        "status": result_status(result),
        "analysis": None if result.analysis is None else converter.unstructure(result.analysis),
        "error": error,
    }


def compact_json(data: Any) -> str:
    """``data`` as JSON on one line, without spaces."""
    return json.dumps(data, separators=(",", ":"))


def summary_line(statuses: Sequence[str], elapsed: float) -> str:
    """E.g. ``3 videos in 4.2 s: 2 complete, 1 failed``."""
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
        self.terminal = _draws(sys.stdout)

    def table(
        self,
        header: Sequence[str],
        rows: Iterable[Sequence[str]],
        *,
        right: int = -1,
        wrap: Collection[int] | None = None,
    ) -> None:
        """Print a results table: drawn for the terminal when stdout is one, else plain text
        (see ``format_table``)."""
        width = shutil.get_terminal_size().columns if self.terminal else None
        self.result(
            format_table(header, rows, right=right, wrap=wrap, terminal=self.terminal, width=width)
        )

    def result(self, text: str) -> None:
        """Print the command's result."""
        print(text, flush=True)

    def note(self, text: str) -> None:
        """Print a message for humans."""
        print(text, file=sys.stderr if self.json else sys.stdout, flush=True)
