"""Figure 6: decoding a large Get Joint Data body into typed models.

The body is the exact bytes an in-process ``GuruEmulator(video_seconds=60, fps=30)`` serves at
``GET /videos/{id}/j2p``: 17 joints x 1,800 frames, about 30,000 ``JointFrame`` objects.

- guru_async: ``decode_model(raw, JointData)``, exactly what ``get_joint_data`` does with a
  body (parse with orjson when installed, else json; then build the frozen attrs models).
- baseline: ``json.loads(raw)``, plain dicts and lists.
- context: ``orjson.loads(raw)`` alone, and ``structure`` alone on an already-parsed body.

Each is timed ``repeats`` times after a ``gc.collect()``; the best time counts.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks._harness import Figure, log, write_file
from guru_async import AnalysisStatus, GuruSession, JointData
from guru_async._converter import decode_json, decode_model, structure
from guru_async.testing import GuruEmulator

# orjson is optional ("guru-async[fast]"); without it there is no orjson context number.
orjson: Any = None
with contextlib.suppress(ImportError):
    orjson = importlib.import_module("orjson")

NAME = "decode"


@dataclass(frozen=True)
class Size:
    """The synthetic video's length and frame rate, and how many timings to take."""

    seconds: float = 60.0
    fps: float = 30.0
    repeats: int = 7


FULL = Size()
QUICK = Size(seconds=10.0, repeats=3)


async def joint_data_body(size: Size, workdir: Path) -> bytes:
    """Upload a clip to an in-process emulator and return its raw j2p response body."""
    async with GuruEmulator(
        analysis_delay=0.0,
        video_seconds=size.seconds,
        fps=size.fps,
        storage_dir=workdir / "storage",
    ) as emu:
        token = emu.issue_token()
        clip = write_file(workdir / "clip.mp4", 4096)
        async with GuruSession(access_token=token, base_url=emu.base_url) as guru:
            video_id = await guru.upload_video(clip, activity="squat")
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"{emu.base_url}/videos/{video_id}/j2p", headers={"Authorization": token}
            ) as resp,
        ):
            resp.raise_for_status()
            return await resp.read()


def typed(raw: bytes) -> JointData:
    """What get_joint_data does with a body."""
    return decode_model(raw, JointData, what="j2p")


def best_of(
    repeats: int, work: Callable[[Any], Any], setup: Callable[[], Any] = lambda: None
) -> float:
    """The fastest of ``repeats`` timed ``work(setup())`` calls (setup untimed), in seconds."""
    times = []
    for _ in range(repeats):
        given = setup()
        gc.collect()
        started = time.perf_counter()
        work(given)
        times.append(time.perf_counter() - started)
    return min(times)


async def run(size: Size, workdir: Path) -> list[Figure]:
    """Time typed decoding against json.loads; return figure 6's row."""
    raw = await joint_data_body(size, workdir)
    model = typed(raw)
    assert model.status == AnalysisStatus.COMPLETE
    frames = sum(len(points) for points in model.joint_to_points.values())
    guru = best_of(size.repeats, lambda _: typed(raw))
    stdlib = best_of(size.repeats, lambda _: json.loads(raw))
    # structure() may reuse the parsed dicts it is given, so each run gets a fresh parse.
    structure_only = best_of(
        size.repeats,
        lambda parsed: structure(parsed, JointData, what="j2p"),
        setup=lambda: decode_json(raw, what="j2p"),
    )
    details = [
        f"Body: {len(raw) / 1e6:.2f} MB, {len(model.joint_to_points)} joints, {frames:,} "
        f"JointFrames ({size.seconds:g} s at {size.fps:g} fps).",
        f"guru_async structure(decode_json(raw)): {guru * 1000:.1f} ms "
        f"({guru / frames * 1e6:.2f} us per frame).",
        f"json.loads: {stdlib * 1000:.1f} ms.",
        f"structure() alone on a parsed body: {structure_only * 1000:.1f} ms.",
    ]
    baselines = f"json.loads {stdlib * 1000:.1f} ms"
    if orjson is not None:
        fast = best_of(size.repeats, lambda _: orjson.loads(raw))
        details.append(f"orjson.loads alone (context; decode_json uses it): {fast * 1000:.1f} ms.")
        baselines += f"; orjson.loads {fast * 1000:.1f} ms (context)"
    else:
        details.append("orjson is not installed: decode_json parsed with json.")
    log("[decode] " + " ".join(details))
    ratio = guru / stdlib
    return [
        Figure(
            "6",
            f"Joint data decode, {size.seconds:g} s at {size.fps:g} fps ({frames:,} frames)",
            f"{guru * 1000:.1f} ms",
            baselines,
            ratio,
            "json.loads",
            "<= 1.5",
            ratio <= 1.5,
            details,
        )
    ]
