"""Figure 3: how many token requests a burst of calls, and a series of CLI runs, cost.

Both parts count requests at the emulator's token endpoint, so the emulator runs in this
process (``GuruEmulator``), where its ``token_requests`` counter can be read:

- 1,000 concurrent ``get_analysis`` calls on a fresh GuruSession (empty token store). The
  baseline is the obvious hand-written cache with raw aiohttp: "use the cached token, else fetch
  one and cache it", without a lock, so every call that starts before the first token arrives
  fetches its own.
- 10 consecutive ``python -m guru_async video ID`` processes sharing one
  ``GURU_ASYNC_CACHE_DIR``, so the token saved by the first is reused by the others. The
  emulator keeps serving from this process's event loop while each CLI process runs. The
  baseline is the same 10 runs, each with an empty cache folder of its own: a CLI without a
  persistent token store.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from benchmarks import _baselines
from benchmarks._harness import Endpoints, Figure, child_env, communicate, log, skipped
from guru_async import GuruSession, MemoryTokenStore
from guru_async.testing import GuruEmulator

NAME = "tokens"


@dataclass(frozen=True)
class Size:
    """How many calls and CLI runs."""

    calls: int = 1000
    cli_runs: int = 10


FULL = Size()
QUICK = Size(calls=200, cli_runs=3)


def _endpoints(emu: GuruEmulator) -> Endpoints:
    return Endpoints(emu.base_url, emu.token_url, emu.storage_url, emu.client_id, emu.client_secret)


async def _create_video(emu: GuruEmulator) -> str:
    # An issued token does not go through the token endpoint, so setup costs no token request.
    async with GuruSession(access_token=emu.issue_token(), base_url=emu.base_url) as setup:
        return (await setup.create_video("clip.mp4", size=1024)).id


async def burst_guru(emu: GuruEmulator, video_id: str, calls: int) -> int:
    """Token requests made by ``calls`` concurrent get_analysis on a fresh session."""
    emu.reset_counters()
    async with _endpoints(emu).session(token_store=MemoryTokenStore()) as guru:
        await asyncio.gather(*(guru.get_analysis(video_id) for _ in range(calls)))
    return emu.token_requests


async def burst_naive(emu: GuruEmulator, video_id: str, calls: int) -> int:
    """Token requests made by ``calls`` concurrent calls through a lock-free token cache."""
    emu.reset_counters()
    endpoints = _endpoints(emu)
    url = f"{emu.base_url}/videos/{video_id}/analysis"
    cache: dict[str, str] = {}
    async with aiohttp.ClientSession() as http:

        async def call() -> None:
            token = cache.get("token")
            if token is None:
                token = cache["token"] = await _baselines.raw_token(http, endpoints)
            await _baselines.raw_get_json(http, url, token)

        await asyncio.gather(*(call() for _ in range(calls)))
    return emu.token_requests


def cli_available() -> bool:
    """Whether ``python -m guru_async`` exists in this checkout."""
    return importlib.util.find_spec("guru_async.__main__") is not None


async def cli_runs(emu: GuruEmulator, video_id: str, cache_dirs: list[Path]) -> int:
    """Token requests made by one ``python -m guru_async video ID`` per cache folder, in turn."""
    emu.reset_counters()
    for cache in cache_dirs:
        env = child_env(
            GURU_CLIENT_ID=emu.client_id,
            GURU_CLIENT_SECRET=emu.client_secret,
            GURU_BASE_URL=emu.base_url,
            GURU_TOKEN_URL=emu.token_url,
            GURU_ASYNC_CACHE_DIR=str(cache),
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "guru_async",
            "video",
            video_id,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        out, err = await communicate(proc, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(
                f"`python -m guru_async video {video_id}` exited with {proc.returncode}: "
                f"{(err or out).decode(errors='replace').strip()[-500:]}"
            )
    return emu.token_requests


async def run(size: Size, workdir: Path) -> list[Figure]:
    """Count token requests for the burst and the CLI runs; return figure 3's rows."""
    async with GuruEmulator(analysis_delay=0.0, storage_dir=workdir / "storage") as emu:
        video_id = await _create_video(emu)
        guru = await burst_guru(emu, video_id, size.calls)
        naive = await burst_naive(emu, video_id, size.calls)
        log(f"[tokens] {size.calls} concurrent calls: guru_async {guru}, naive cache {naive}")
        figures = [
            Figure(
                "3a",
                f"Token requests for {size.calls:,} concurrent get_analysis, fresh session",
                f"{guru}",
                f"lock-free token cache (raw aiohttp): {naive}",
                guru / naive,
                "naive cache",
                "exactly 1",
                guru == 1,
                [
                    f"guru_async: {guru} token request(s) for {size.calls:,} concurrent calls.",
                    f"Naive cache: {naive} token requests (one per call that started before "
                    "the first token arrived).",
                ],
            )
        ]
        name = f"Token requests for {size.cli_runs} consecutive CLI runs"
        if not cli_available():
            figures.append(
                skipped(
                    "3b",
                    name,
                    "1 in total",
                    "guru_async/__main__.py (the CLI) is not in this checkout yet; "
                    "rerun with `python -m benchmarks --only tokens` once it is.",
                )
            )
            return figures
        try:
            shared = await cli_runs(emu, video_id, [workdir / "cache"] * size.cli_runs)
            fresh = await cli_runs(
                emu, video_id, [workdir / f"cache-{i}" for i in range(size.cli_runs)]
            )
        except RuntimeError as exc:
            figures.append(
                Figure("3b", name, "failed", "-", None, "", "1 in total", None, [str(exc)])
            )
            return figures
        log(f"[tokens] {size.cli_runs} CLI runs: shared cache {shared}, fresh caches {fresh}")
        figures.append(
            Figure(
                "3b",
                name,
                f"{shared}",
                f"a fresh cache folder per run: {fresh}",
                shared / fresh,
                "no persistent cache",
                "1 in total",
                shared == 1,
                [
                    f"{size.cli_runs} runs of `python -m guru_async video ID` sharing "
                    f"GURU_ASYNC_CACHE_DIR: {shared} token request(s); with a fresh folder "
                    f"each: {fresh}."
                ],
            )
        )
    return figures
