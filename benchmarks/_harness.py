"""What every figure shares: the emulator subprocess, child-process memory measurement, test
files, timing helpers, and the Figure rows that RESULTS.md is written from."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

import guru_async
from guru_async import GuruSession, MemoryTokenStore

T = TypeVar("T")
R = TypeVar("R")

REPO = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
MB = 1_000_000


def log(message: str) -> None:
    """Progress goes to stderr, so stdout stays clean for the table."""
    print(message, file=sys.stderr, flush=True)


# -- figures -----------------------------------------------------------------------------------


@dataclass
class Figure:
    """One row of the results table, plus the absolute numbers behind it.

    Attributes:
        number: The figure's label, e.g. ``"1"`` or ``"2b"``.
        name: What is measured, e.g. ``"Upload throughput, 64 x 16 MiB, concurrency 8"``.
        value: The guru_async result, formatted with its unit.
        baselines: The baseline results, formatted with their units.
        ratio: guru_async / the baseline named in ``ratio_of``; None when not measured.
        ratio_of: Which baseline the ratio divides by.
        target: The target as text, e.g. ``"ratio >= 0.95"``.
        met: Whether the target is met; None when the figure was skipped or failed.
        details: Absolute values and notes for the details section.
    """

    number: str
    name: str
    value: str
    baselines: str
    ratio: float | None
    ratio_of: str
    target: str
    met: bool | None
    details: list[str] = field(default_factory=list)


def skipped(number: str, name: str, target: str, reason: str) -> Figure:
    """A figure that could not be measured in this run, and why."""
    return Figure(number, name, "skipped", "-", None, "", target, None, [reason])


# -- the emulator in its own process -----------------------------------------------------------


@dataclass(frozen=True)
class Endpoints:
    """Where an emulator listens and the credentials it accepts."""

    base_url: str
    token_url: str
    storage_url: str
    client_id: str
    client_secret: str
    pid: int | None = None  # the emulator's process, when it runs in one

    def server_cpu(self) -> float:
        """CPU seconds the emulator's process has used so far (0.0 if not a process)."""
        if self.pid is None:
            return 0.0
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        # utime and stime are fields 14 and 15 of stat(5), in clock ticks.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def session(self, **options: Any) -> GuruSession:
        """A GuruSession against this emulator with its own token store (so no token is
        shared between measurements)."""
        options.setdefault("token_store", MemoryTokenStore())
        return GuruSession(
            self.client_id,
            self.client_secret,
            base_url=self.base_url,
            token_url=self.token_url,
            **options,
        )

    @classmethod
    def from_dict(cls, announced: dict[str, Any], pid: int | None = None) -> Endpoints:
        """Read the emulator's ``--json`` line (or ``as_dict()``), ignoring fields not used here."""
        return cls(
            announced["base_url"],
            announced["token_url"],
            announced["storage_url"],
            announced["client_id"],
            announced["client_secret"],
            pid,
        )

    def as_dict(self) -> dict[str, str]:
        """The endpoints and credentials as a JSON-able dict (to hand to a child process)."""
        return {
            "base_url": self.base_url,
            "token_url": self.token_url,
            "storage_url": self.storage_url,
            "client_id": self.client_id,
            "client_secret": self.client_secret,
        }


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment, with the repo importable (it may not be installed)."""
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO) if not path else f"{REPO}{os.pathsep}{path}"
    env.update(extra)
    return env


@contextlib.asynccontextmanager
async def emulator_process(
    workdir: Path,
    *,
    analysis_delay: float = 0.0,
    video_seconds: float = 10.0,
    extra_args: Sequence[str] = (),
) -> AsyncIterator[Endpoints]:
    """Run ``python -m guru_async.testing`` in a subprocess for the duration of the block.

    Its stored uploads go under ``workdir`` (via TMPDIR) and are removed when it stops.
    """
    args = ["--json", "--port", "0", "--analysis-delay", str(analysis_delay)]
    args += ["--video-seconds", str(video_seconds), *extra_args]
    async with server_process(
        "guru_async.testing", args, what="the emulator", env=child_env(TMPDIR=str(workdir))
    ) as endpoints:
        yield endpoints


@contextlib.asynccontextmanager
async def server_process(
    module: str, args: Sequence[str], *, what: str, env: dict[str, str]
) -> AsyncIterator[Endpoints]:
    """Run ``python -m module *args``, a server that prints its endpoints as one JSON line on
    stdout, for the duration of the block; stopped with SIGTERM (SIGKILL after 15 s)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, *args, stdout=asyncio.subprocess.PIPE, env=env
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
        if not line:
            raise RuntimeError(f"{what} exited with {await proc.wait()} before starting")
        yield Endpoints.from_dict(json.loads(line), pid=proc.pid)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), timeout=15)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()


# -- memory: one child process per measurement -------------------------------------------------


@dataclass(frozen=True)
class ChildRun:
    """What a child measurement reports.

    Attributes:
        baseline: RSS in bytes after the child's imports, before the workload.
        peak: The peak RSS in bytes while the workload ran.
        seconds: The workload's wall time.
        result: The workload function's own JSON result.
    """

    baseline: int
    peak: int
    seconds: float
    result: Any

    @property
    def above_baseline(self) -> int:
        """Peak RSS minus the interpreter's RSS after imports, in bytes."""
        return self.peak - self.baseline


async def communicate(proc: asyncio.subprocess.Process, *, timeout: float) -> tuple[bytes, bytes]:
    """``proc.communicate()``, killing the process if it takes longer than ``timeout``."""
    try:
        return await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"process {proc.pid} took longer than {timeout:g} s") from None


async def run_child(target: str, **kwargs: Any) -> ChildRun:
    """Run ``module:function(**kwargs)`` in a fresh interpreter and measure its peak RSS.

    See ``benchmarks/_child.py`` for how the peak is read.
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks._child",
        target,
        json.dumps(kwargs),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=child_env(),
    )
    out, err = await communicate(proc, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(
            f"child {target} exited with {proc.returncode}: {err.decode(errors='replace')[-2000:]}"
        )
    report = json.loads(out.decode().strip().splitlines()[-1])
    return ChildRun(report["baseline"], report["peak"], report["seconds"], report["result"])


def calibrate(size: int) -> int:
    """A child workload that holds ``size`` bytes, to check that measurements see them."""
    held = bytearray(size)
    held[::4096] = b"x" * len(held[::4096])  # touch every page, so it is resident
    return len(held)


# -- files and timing --------------------------------------------------------------------------


def scratch_root(needed: int = 8 * 1024 * MIB) -> str | None:
    """Where temporary files go: tmpfs (/dev/shm) when it has room, so that disk writeback
    of gigabytes of test files and stored uploads does not add noise; else the default."""
    shm = Path("/dev/shm")  # noqa: S108 - only read here; each run gets a private mkdtemp
    if not shm.is_dir():
        return None
    stats = os.statvfs(shm)
    return str(shm) if stats.f_bavail * stats.f_frsize >= needed else None


def size_text(size: int) -> str:
    """A file size for labels: ``1 GiB``, ``256 MiB``, ``4 KiB``."""
    for unit, scale in (("GiB", 1024 * MIB), ("MiB", MIB), ("KiB", 1024)):
        if size >= scale:
            return f"{size / scale:g} {unit}"
    return f"{size} B"


def write_file(path: Path, size: int, *, block: bytes | None = None) -> Path:
    """Write ``size`` bytes quickly: a unique random head, then a repeated random block."""
    block = block or os.urandom(MIB)
    with path.open("wb") as f:
        head = os.urandom(min(size, 64 * 1024))
        f.write(head)
        left = size - len(head)
        while left > 0:
            chunk = block[: min(left, len(block))]
            f.write(chunk)
            left -= len(chunk)
    return path


def write_files(folder: Path, count: int, size: int, *, prefix: str = "clip") -> list[Path]:
    """Write ``count`` files of ``size`` bytes named ``{prefix}-00000.mp4`` and on."""
    folder.mkdir(parents=True, exist_ok=True)
    block = os.urandom(min(size, MIB)) if size > 0 else b""
    return [write_file(folder / f"{prefix}-{i:05d}.mp4", size, block=block) for i in range(count)]


@dataclass(frozen=True)
class Timed:
    """Wall and CPU seconds of one run (CPU of this process, threads included)."""

    wall: float
    cpu: float


async def timed(work: Callable[[], Any]) -> Timed:
    """Await ``work()`` and measure it."""
    wall, cpu = time.perf_counter(), time.process_time()
    await work()
    return Timed(time.perf_counter() - wall, time.process_time() - cpu)


async def bounded(limit: int, work: Callable[[T], Awaitable[R]], items: Iterable[T]) -> list[R]:
    """``work(item)`` for every item, at most ``limit`` at once; the results in input order."""
    gate = asyncio.Semaphore(limit)

    async def run(item: T) -> R:
        async with gate:
            return await work(item)

    return list(await asyncio.gather(*(run(item) for item in items)))


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by nearest rank."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


# -- RESULTS.md --------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    """What the numbers were measured on."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        orjson_version = importlib.metadata.version("orjson")
    except importlib.metadata.PackageNotFoundError:
        orjson_version = "not installed"
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "guru_async": guru_async.__version__,
        "orjson": orjson_version,
    }


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _ratio(ratio: float) -> str:
    return f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.2g}x"


def _met(figure: Figure) -> str:
    if figure.met is None:
        return "n/a"
    return "yes" if figure.met else "**no**"


def render(
    figures: list[Figure],
    *,
    mode: str,
    seconds: float,
    date: str,
    load: tuple[float, float],
    methods: str,
) -> str:
    """RESULTS.md: the table, the machine, the details per figure, then how it was measured.

    ``load`` is the 1-minute load average before and after the run: other work on the machine
    shows up in every timing.
    """
    info = machine()
    lines = [
        "# guru_async benchmarks",
        "",
        f"Generated by `python -m benchmarks{mode}` on {date}; the run took {seconds:.0f} s.",
        "",
        f"Machine: {info['nproc']} CPUs ({info['cpu']}), {info['os']}, Python {info['python']}, "
        f"aiohttp {info['aiohttp']}, guru_async {info['guru_async']}, orjson {info['orjson']}.",
        "",
        f"Load average (1 min) {load[0]:.2f} before the run and {load[1]:.2f} after it, on "
        f"{info['nproc']} CPUs: timings include whatever else the machine was doing.",
        "",
        "Every ratio is guru_async divided by the named baseline, measured in the same run.",
        "",
        "| # | Figure | guru_async | Baseline(s) | Ratio | Target | Met |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in figures:
        ratio = "-" if f.ratio is None else f"{_ratio(f.ratio)} vs {f.ratio_of}"
        lines.append(
            "| "
            + " | ".join(
                _cell(c) for c in (f.number, f.name, f.value, f.baselines, ratio, f.target, _met(f))
            )
            + " |"
        )
    lines += ["", "## Details", ""]
    for f in figures:
        if f.details:
            lines.append(f"**{f.number}. {f.name}**")
            lines.append("")
            lines += [f"- {d}" for d in f.details]
            lines.append("")
    lines += ["## How it is measured", "", methods.strip(), ""]
    return "\n".join(lines)
