"""``guru-async demo``: the main job, a journaled batch against an embedded emulator."""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
from pathlib import Path
from typing import Final

from .._batch import BatchResult, VideoSpec
from .._enums import AnalysisStatus
from .._session import GuruSession
from ._commands import key_value_text
from ._constants import EMULATOR_POLLS, EXIT_FAILED, EXIT_OK, PROG
from ._output import (
    RESULT_HEADER,
    RESULT_WRAP,
    BatchDisplay,
    Output,
    compact_json,
    item_path,
    megabytes,
    result_json,
    result_row,
    result_status,
    summary_line,
)

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
    from ..testing import UNANALYZABLE_MARKER

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
    from ..testing import GuruEmulator

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
        emu.session(poll_policy=EMULATOR_POLLS) as guru,
    ):
        out.note(f"{PROG} demo: {len(specs)} sample clips, one journaled batch, a local emulator")
        out.note(
            key_value_text(
                [
                    ("emulator", f"{emu.base_url} (analysis takes 1-2 s)"),
                    ("clips", f"{clips}{os.sep} ({len(specs)} files, {megabytes(clip_bytes)})"),
                    ("journal", journal),
                ]
            )
            + "\n"
        )
        display = BatchDisplay(total=len(specs), bytes_total=clip_bytes)
        results: list[BatchResult] = []
        batch = guru.batch_upload(
            specs, upload_concurrency=3, journal=journal, progress=display.update, timeout=30.0
        )
        async with display:
            results = [r async for r in batch]
        order = {Path(s.path).name: i for i, s in enumerate(specs)}
        results.sort(key=lambda r: order.get(Path(item_path(r.item)).name, len(order)))
        lines = [compact_json(result_json(r)) for r in results]
        results_path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        if out.json:
            for line in lines:
                out.result(line)
        else:
            rows = (result_row(r, name=lambda p: Path(p).name) for r in results)
            out.table(RESULT_HEADER, rows, right=4, wrap=RESULT_WRAP)
        out.note("")
        out.note(summary_line([result_status(r) for r in results], time.monotonic() - started))

        # The journal's promise: the same batch again uploads nothing and restores every result.
        uploads_before = sum(emu.uploads_completed.values())
        again = [r async for r in guru.batch_upload(specs, journal=journal, timeout=30.0)]
        new_uploads = sum(emu.uploads_completed.values()) - uploads_before
        out.note(
            f"rerun with the journal: {len(again)} results restored, {new_uploads} new uploads"
        )

        squat = next((r for r in results if Path(item_path(r.item)).name == "squat.mp4"), None)
        plot_note = await _demo_plot(guru, squat, plot_path)
        out.note(plot_note)
        out.note(f"results: {results_path}")

    expected = all(
        r.analysis is not None and r.analysis.status == AnalysisStatus.FAILED
        if Path(item_path(r.item)).name == DEMO_UNANALYZABLE
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
    from ..plot import matplotlib_available, plot_joint_angle

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
