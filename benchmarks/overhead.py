"""Figure 5: the cost of one API call through guru_async, against raw aiohttp.

``calls`` Get Analysis requests, ``concurrency`` at a time, on videos whose analyses are
Complete (a realistic body with reps), against an emulator subprocess:

- guru_async: ``get_analysis`` on one open GuruSession (token, retries, error mapping, typed
  ``Analysis``).
- baseline: raw aiohttp GET with the same Authorization header on one ClientSession, then
  ``json.loads`` of the body: no typing, no retries, no error mapping.

Both keep their connection pool warm across rounds; they alternate (ABBA order) for ``rounds``
rounds and the best round of each counts. Client CPU per call is reported as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks import _baselines
from benchmarks._harness import (
    Endpoints,
    Figure,
    Timed,
    bounded,
    emulator_process,
    log,
    timed,
    write_files,
)
from guru_async import AnalysisStatus, GuruSession

NAME = "overhead"


@dataclass(frozen=True)
class Size:
    """How many calls, how many at once, over how many distinct videos, and rounds."""

    calls: int = 2000
    concurrency: int = 32
    videos: int = 32
    rounds: int = 7


FULL = Size()
QUICK = Size(calls=500, rounds=2)


def _cycle(values: list[str], count: int) -> list[str]:
    return [values[i % len(values)] for i in range(count)]


async def calls_guru(guru: GuruSession, ids: list[str], size: Size) -> None:
    """``size.calls`` get_analysis, ``size.concurrency`` at a time."""
    await bounded(size.concurrency, guru.get_analysis, _cycle(ids, size.calls))


async def calls_raw(
    http: aiohttp.ClientSession, endpoints: Endpoints, token: str, ids: list[str], size: Size
) -> None:
    """The same requests with raw aiohttp and json.loads."""
    urls = [f"{endpoints.base_url}/videos/{v}/analysis" for v in ids]

    async def call(url: str) -> Any:
        return await _baselines.raw_get_json(http, url, token)

    await bounded(size.concurrency, call, _cycle(urls, size.calls))


async def run(size: Size, workdir: Path) -> list[Figure]:
    """Time both clients round by round; return figure 5's row."""
    paths = write_files(workdir / "videos", size.videos, 1024)
    guru_runs: list[Timed] = []
    raw_runs: list[Timed] = []
    async with (
        emulator_process(workdir, analysis_delay=0.0) as endpoints,
        endpoints.session() as guru,
        aiohttp.ClientSession() as http,
    ):
        ids = [await guru.upload_video(p, activity=_baselines.ACTIVITY) for p in paths]
        for video_id in ids:
            analysis = await guru.get_analysis(video_id)
            assert analysis.status == AnalysisStatus.COMPLETE, analysis
        token = await _baselines.raw_token(http, endpoints)
        for round_ in range(size.rounds):
            # Alternate which goes first, so neither always runs on a machine the other warmed.
            if round_ % 2 == 0:
                guru_runs.append(await timed(lambda: calls_guru(guru, ids, size)))
            raw_runs.append(await timed(lambda: calls_raw(http, endpoints, token, ids, size)))
            if round_ % 2 == 1:
                guru_runs.append(await timed(lambda: calls_guru(guru, ids, size)))
            log(
                f"[overhead] round {round_ + 1}: guru_async {guru_runs[-1].wall:.3f} s, "
                f"raw {raw_runs[-1].wall:.3f} s"
            )
    best_guru = min(guru_runs, key=lambda t: t.wall)
    best_raw = min(raw_runs, key=lambda t: t.wall)
    ratio = best_guru.wall / best_raw.wall

    def per_call(t: Timed) -> str:
        return (
            f"{t.wall * 1000:.0f} ms ({t.wall / size.calls * 1e6:.0f} us/call wall, "
            f"{t.cpu / size.calls * 1e6:.0f} us/call client CPU)"
        )

    return [
        Figure(
            "5",
            f"Per-call overhead: {size.calls:,} get_analysis at concurrency {size.concurrency}",
            f"{best_guru.wall * 1000:.0f} ms",
            f"raw aiohttp GET + json.loads: {best_raw.wall * 1000:.0f} ms",
            ratio,
            "raw aiohttp",
            "<= 1.25",
            ratio <= 1.25,
            [
                f"guru_async: best of {size.rounds} {per_call(best_guru)}; rounds "
                + ", ".join(f"{t.wall * 1000:.0f}" for t in guru_runs)
                + " ms.",
                f"raw aiohttp: best of {size.rounds} {per_call(best_raw)}; rounds "
                + ", ".join(f"{t.wall * 1000:.0f}" for t in raw_runs)
                + " ms.",
                f"Extra client time per call: "
                f"{(best_guru.wall - best_raw.wall) / size.calls * 1e6:.0f} us.",
            ],
        )
    ]
