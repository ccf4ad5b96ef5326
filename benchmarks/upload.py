"""Figure 1: upload throughput of many files at a fixed concurrency.

Each method uploads the same files (Create Video, then the presigned multipart POST) to a fresh
emulator subprocess, so every run starts from the same server state:

- guru_async: ``upload_video`` for each file, ``concurrency`` at a time.
- raw aiohttp: the same two requests by hand, the body built with ``aiohttp.FormData``.
- curl: one ``curl`` process for the create and one ``curl -F`` for the upload, per file,
  ``concurrency`` at a time.
- requests: the reference example of guru-api.md, one file after another.

guru_async and raw aiohttp are the close call, so they alternate (ABBA order) for ``rounds``
rounds and the best round of each counts. Client CPU is reported too: on loopback the server's
CPU, not the client, tends to set the pace, and CPU per GiB shows what each client costs.
"""

from __future__ import annotations

import asyncio
import json
import resource
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from benchmarks import _baselines
from benchmarks._harness import (
    MB,
    MIB,
    Endpoints,
    Figure,
    bounded,
    communicate,
    emulator_process,
    log,
    size_text,
    timed,
    write_files,
)

NAME = "upload"


@dataclass(frozen=True)
class Run:
    """One upload run: wall seconds, and CPU seconds of the client and of the emulator."""

    wall: float
    cpu: float
    server_cpu: float


@dataclass(frozen=True)
class Size:
    """How much to upload and how."""

    files: int = 64
    file_bytes: int = 16 * MIB
    concurrency: int = 8
    rounds: int = 4
    # 1b: a link where one stream cannot fill the pipe, as to a distant S3 endpoint.
    link_files: int = 16
    link_file_bytes: int = 8 * MIB
    link_bytes_per_s: float = 25e6


FULL = Size()
QUICK = Size(files=8, file_bytes=2 * MIB, rounds=1, link_files=4, link_file_bytes=1 * MIB)

Uploader = Callable[[Endpoints, list[Path], int], Awaitable[None]]


async def upload_guru(endpoints: Endpoints, paths: list[Path], concurrency: int) -> None:
    """guru_async: one session, ``upload_video`` per file."""
    async with endpoints.session() as guru:

        async def one(path: Path) -> str:
            return await guru.upload_video(
                path, activity=_baselines.ACTIVITY, rep_count=_baselines.REP_COUNT
            )

        await bounded(concurrency, one, paths)


async def upload_raw_aiohttp(endpoints: Endpoints, paths: list[Path], concurrency: int) -> None:
    """Raw aiohttp: one ClientSession, create then FormData upload per file."""
    async with aiohttp.ClientSession() as http:
        token = await _baselines.raw_token(http, endpoints)

        async def one(path: Path) -> None:
            created = await _baselines.raw_create(http, endpoints, token, path)
            await _baselines.raw_upload(http, created, path)

        await bounded(concurrency, one, paths)


async def _curl(*args: str) -> bytes:
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "--silent",
        "--show-error",
        "--fail",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await communicate(proc, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"curl failed ({proc.returncode}): {err.decode(errors='replace')}")
    return out


async def upload_curl(endpoints: Endpoints, paths: list[Path], concurrency: int) -> None:
    """curl: a create request and a ``curl -F`` upload per file, each its own process."""
    async with aiohttp.ClientSession() as http:
        token = await _baselines.raw_token(http, endpoints)

    async def one(path: Path) -> None:
        created = json.loads(
            await _curl(
                "--header",
                f"Authorization: {token}",
                "--header",
                "Content-Type: application/json",
                "--data-binary",
                json.dumps(_baselines.create_body(path)),
                f"{endpoints.base_url}/videos",
            )
        )
        fields = [
            arg for k, v in created["fields"].items() for arg in ("--form-string", f"{k}={v}")
        ]
        file = ("--form", f"file=@{path};type=video/mp4")
        await _curl("--output", "/dev/null", *fields, *file, created["url"])

    await bounded(concurrency, one, paths)


async def upload_requests(endpoints: Endpoints, paths: list[Path], concurrency: int) -> None:
    """The reference example, sequentially (``concurrency`` is ignored), off the event loop."""

    def run() -> None:
        token = _baselines.reference_token(endpoints)
        for path in paths:
            _baselines.reference_upload_video(endpoints, str(path), token)

    await asyncio.to_thread(run)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def measure(
    uploader: Uploader,
    paths: list[Path],
    concurrency: int,
    workdir: Path,
    emulator_args: tuple[str, ...] = (),
) -> Run:
    """One run of ``uploader`` against a fresh emulator; CPU includes finished children."""
    async with emulator_process(workdir, extra_args=emulator_args) as endpoints:
        children, server = _children_cpu(), endpoints.server_cpu()
        timing = await timed(lambda: uploader(endpoints, paths, concurrency))
        # curl's processes are waited for inside the run, so their CPU lands in RUSAGE_CHILDREN.
        client = timing.cpu + _children_cpu() - children
        return Run(timing.wall, client, endpoints.server_cpu() - server)


async def run(size: Size, workdir: Path) -> list[Figure]:
    """Measure every method and return figure 1's rows."""
    paths = write_files(workdir / "videos", size.files, size.file_bytes)
    total = size.files * size.file_bytes
    methods: dict[str, Uploader] = {
        "guru_async": upload_guru,
        "raw aiohttp": upload_raw_aiohttp,
    }
    runs: dict[str, list[Run]] = {name: [] for name in methods}
    notes: list[str] = []
    for round_ in range(size.rounds):
        # Alternate which goes first, so neither always runs on a machine the other warmed.
        order = list(methods.items())
        for name, uploader in order if round_ % 2 == 0 else reversed(order):
            result = await measure(uploader, paths, size.concurrency, workdir)
            runs[name].append(result)
            log(f"[upload] round {round_ + 1} {name}: {total / result.wall / MB:.0f} MB/s")
    if shutil.which("curl"):
        runs["curl -F"] = [await measure(upload_curl, paths, size.concurrency, workdir)]
    else:
        notes.append("curl is not installed: its baseline was skipped.")
    if _baselines.requests is not None:
        runs["requests (sequential)"] = [await measure(upload_requests, paths, 1, workdir)]
    else:
        notes.append("requests is not installed: its baseline and figure 1b were skipped.")

    best = {name: min(r, key=lambda t: t.wall) for name, r in runs.items()}
    rate = {name: total / t.wall / MB for name, t in best.items()}
    for name in runs:
        log(f"[upload] {name}: {rate[name]:.0f} MB/s")
    gib = total / (1024 * MIB)
    details = [
        f"{name}: best {rate[name]:.0f} MB/s ({best[name].wall:.2f} s for "
        f"{size_text(total)}; rounds: "
        + ", ".join(f"{t.wall:.2f} s" for t in runs[name])
        + f"); CPU per GiB: client {best[name].cpu / gib:.2f} s, "
        f"emulator {best[name].server_cpu / gib:.2f} s"
        for name in runs
    ]
    details += notes
    baselines = "; ".join(f"{name} {rate[name]:.0f} MB/s" for name in rate if name != "guru_async")
    guru = f"{rate['guru_async']:.0f} MB/s"
    label = f"Upload throughput, {size.files} x {size_text(size.file_bytes)}"
    ratio = rate["guru_async"] / rate["raw aiohttp"]
    figures = [
        Figure(
            "1a",
            f"{label}, concurrency {size.concurrency}",
            guru,
            baselines,
            ratio,
            "raw aiohttp",
            ">= 0.95",
            ratio >= 0.95,
            details,
        )
    ]
    if _baselines.requests is not None:
        figures.append(await _per_stream_link(size, workdir))
    return figures


async def _per_stream_link(size: Size, workdir: Path) -> Figure:
    """1b: guru_async's concurrency against the reference's sequential example, where each
    upload stream is capped (the emulator's --storage-bandwidth) as over a real network.

    On bare loopback both are held to the emulator's one core, so the multiple that concurrency
    buys only shows when a single stream cannot use the whole link.
    """
    paths = write_files(workdir / "link", size.link_files, size.link_file_bytes, prefix="link")
    total = size.link_files * size.link_file_bytes
    capped = ("--storage-bandwidth", str(size.link_bytes_per_s))
    guru = await measure(upload_guru, paths, size.concurrency, workdir, capped)
    sequential = await measure(upload_requests, paths, 1, workdir, capped)
    guru_rate, seq_rate = total / guru.wall / MB, total / sequential.wall / MB
    log(f"[upload] per-stream link: guru_async {guru_rate:.0f} MB/s, requests {seq_rate:.0f}")
    multiple = guru_rate / seq_rate
    return Figure(
        "1b",
        f"Upload throughput, {size.link_files} x {size_text(size.link_file_bytes)} over a link "
        f"of {size.link_bytes_per_s / MB:.0f} MB/s per stream: guru_async (concurrency "
        f"{size.concurrency}) vs the reference's sequential requests",
        f"{guru_rate:.0f} MB/s",
        f"requests (sequential) {seq_rate:.0f} MB/s",
        multiple,
        "requests",
        f">= {size.concurrency * 0.75:.0f} (most of the concurrency)",
        multiple >= size.concurrency * 0.75,
        [
            f"guru_async {guru.wall:.2f} s, requests {sequential.wall:.2f} s for "
            f"{size_text(total)}. On bare loopback (1a) every client is held to the emulator's "
            "single core, so the multiple concurrency buys only shows when one stream cannot "
            "fill the link, as to a distant storage endpoint.",
        ],
    )
