"""Every ```python block of README.md (and of docs/**/*.md) runs against the emulator and passes
``mypy --strict`` exactly as written.

How a block is run follows from its content, or from a marker comment on the line before its
fence (the last non-blank line above it):

- A complete program (it compiles without top-level ``await``) runs as a script.
- A fragment (top-level ``await``, ``async with`` or ``async for``) runs as the body of
  ``async def example(guru: GuruSession, video_id: str)``: ``guru`` is an open session and
  ``video_id`` an analysed video.
- ``<!-- readme-test: pytest -->``: the block is a test module, run with pytest in strict
  asyncio mode (so it cannot depend on ``asyncio_mode = auto``).
- ``<!-- readme-test: continues -->``: the block continues the previous block of the same file;
  the two are run and type-checked as one.
- ``<!-- readme-test: skip REASON -->``: neither run nor type-checked; only for a block that
  cannot run offline, and the reason says why.

Scripts and fragments run in a temporary folder holding a file of random bytes for each video
file name the block mentions (``"squat.mp4"``), with GURU_* pointing at a standalone emulator
process and HOME pointing into the folder.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from guru_async.cli._constants import VIDEO_SUFFIXES
from tests.fleet_helpers import WorkerProcess

REPO = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"<!--\s*readme-test:\s*(?P<mode>[\w-]+)\s*(?P<reason>.*?)\s*-->")
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w+-]*)\s*$")
MODES = ("script", "fragment", "pytest", "skip")


@attrs.frozen
class Example:
    """One runnable example: a block, with any blocks that continue it."""

    source: str  # e.g. README.md:20
    code: str
    mode: str
    reason: str = ""


def markdown_files() -> list[Path]:
    """README.md and every Markdown file under docs/, if that folder exists."""
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def python_blocks(path: Path) -> Iterator[tuple[int, str, str, str]]:
    """(line, code, marker mode, marker reason) of each ```python block of a Markdown file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        start, indent = i, len(fence["indent"])
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            i += 1
        if fence["lang"] in ("python", "py"):
            above = next((line for line in reversed(lines[:start]) if line.strip()), "")
            marker = MARKER.search(above)
            body = "\n".join(line[indent:] for line in lines[start + 1 : i])
            yield (
                start + 1,
                body + "\n",
                marker["mode"] if marker else "",
                marker["reason"] if marker else "",
            )
        i += 1


def _mode_of(code: str) -> str:
    try:
        compile(code, "<example>", "exec", dont_inherit=True)
    except SyntaxError:
        # Top-level await is valid only in a fragment, which runs inside a coroutine.
        compile(code, "<example>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        return "fragment"
    return "script"


def collect() -> list[Example]:
    """Every example of every Markdown file, continuations merged into their first block."""
    examples: list[Example] = []
    for path in markdown_files():
        name = path.relative_to(REPO).as_posix()
        first_of_file = len(examples)
        for line, code, mode, reason in python_blocks(path):
            if mode == "continues":
                assert len(examples) > first_of_file, f"{name}:{line} continues nothing"
                previous = examples.pop()
                examples.append(attrs.evolve(previous, code=previous.code + "\n\n" + code))
                continue
            if mode and mode not in MODES:
                raise AssertionError(f"{name}:{line}: unknown readme-test marker {mode!r}")
            examples.append(Example(f"{name}:{line}", code, mode or _mode_of(code), reason))
    return examples


EXAMPLES = collect()
RUNNABLE = [e for e in EXAMPLES if e.mode != "skip"]


def program(example: Example) -> str:
    """The example as a module: as written, or a fragment inside ``async def example``."""
    if example.mode != "fragment":
        return example.code
    body = textwrap.indent(example.code, "    ")
    return (
        "import asyncio\n\n"
        "from guru_async import GuruSession\n\n\n"
        "async def example(guru: GuruSession, video_id: str) -> None:\n"
        f"{body}\n\n"
        "async def _run() -> None:\n"
        "    async with GuruSession() as guru:\n"
        '        video_id = await guru.upload_video("sample.mp4", activity="squat")\n'
        "        await guru.await_analysis(video_id)\n"
        "        await example(guru, video_id)\n\n\n"
        "asyncio.run(_run())\n"
    )


def video_names(code: str) -> set[str]:
    """The video file names a block mentions as string literals, e.g. ``"squat.mp4"``."""
    tree = ast.parse(code)  # the parser accepts top-level await; only compiling rejects it
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and os.path.splitext(node.value)[1].lower() in VIDEO_SUFFIXES
        and "/" not in node.value
    }


def module_name(example: Example) -> str:
    """A module name for an example, e.g. ``example_README_md_20``."""
    return "example_" + re.sub(r"\W", "_", example.source)


@pytest.fixture(scope="module")
def endpoints() -> Iterator[dict[str, str]]:
    """A standalone emulator process whose analyses take 0.1 s, terminated at teardown."""
    process = subprocess.Popen(
        [sys.executable, "-m", "guru_async.testing", "--json", "--analysis-delay", "0.1"],
        env={k: v for k, v in os.environ.items() if not k.startswith("GURU_")},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    try:
        yield json.loads(process.stdout.readline())
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()


def test_examples_are_found() -> None:
    """The collector finds README's examples, scripts and fragments alike."""
    modes = {e.mode for e in EXAMPLES}
    assert {"script", "fragment", "pytest"} <= modes
    assert any("asyncio.run(main())" in e.code for e in EXAMPLES)


@contextlib.contextmanager
def fleet_worker(env: dict[str, str], cwd: Path) -> Iterator[None]:
    """A real ``guru-async worker`` process for a fleet example, stopped with SIGTERM after."""
    log = cwd / "worker.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "guru_async", "worker", "--poll-interval", "0.05"],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    worker = WorkerProcess(process, log)
    try:
        worker.wait_ready(timeout=30)
        yield
    finally:
        worker.terminate()


@pytest.mark.parametrize("example", RUNNABLE, ids=[e.source for e in RUNNABLE])
def test_example_runs(
    example: Example, endpoints: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The example runs to completion against the emulator, as a user would run it (a fleet
    example with a real redis-server and a real worker process)."""
    for name in video_names(example.code) | {"sample.mp4"}:
        (tmp_path / name).write_bytes(os.urandom(64 * 1024))
    script = tmp_path / f"{module_name(example)}.py"
    script.write_text(program(example), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GURU_", "PYTEST_"))}
    env.update(
        GURU_BASE_URL=endpoints["base_url"],
        GURU_TOKEN_URL=endpoints["token_url"],
        GURU_CLIENT_ID=endpoints["client_id"],
        GURU_CLIENT_SECRET=endpoints["client_secret"],
        HOME=str(tmp_path / "home"),
        XDG_CACHE_HOME=str(tmp_path / "home" / ".cache"),
    )
    workers = contextlib.nullcontext()
    if "GURU_REDIS_URL" in example.code:
        env["GURU_REDIS_URL"] = request.getfixturevalue("redis_url")
        if "Fleet(" in example.code:
            workers = fleet_worker(env, tmp_path)
    if example.mode == "pytest":
        # Outside this repo's configuration: strict asyncio mode, warnings as errors.
        command = [
            *(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"),
            *("-c", os.devnull, "--rootdir", str(tmp_path), "-o", "asyncio_mode=strict"),
            *("-o", "asyncio_default_fixture_loop_scope=function"),
            *("-W", "error", str(script)),
        ]
    else:
        command = [sys.executable, "-W", "error", str(script)]
    with workers:
        done = subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
        )
    assert done.returncode == 0, f"{example.source}\n{done.stdout}\n{done.stderr}"


def mypy_strict(folder: Path) -> subprocess.CompletedProcess[str]:
    """Run ``mypy --strict`` with the project's settings on the modules in ``folder``."""
    return subprocess.run(
        [
            *(sys.executable, "-m", "mypy", "--config-file", str(REPO / "pyproject.toml")),
            # The repo's own cache: guru_async is then checked once, not on every run.
            *("--cache-dir", str(REPO / ".mypy_cache"), "--strict", "."),
        ],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_examples_type_check(tmp_path: Path) -> None:
    """Every example passes ``mypy --strict`` with the project's settings."""
    for example in RUNNABLE:
        (tmp_path / f"{module_name(example)}.py").write_text(program(example), encoding="utf-8")
    done = mypy_strict(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


ENUM_FIELDS = """
from guru_async import (
    Activity, Analysis, AnalysisStatus, Domain, JointData, UnknownValue, Video, VideoStatus
)


def check(analysis: Analysis, video: Video, joints: JointData) -> None:
    # Each field is its enum or an unknown value: not a plain str, which would hide the enum.
    status: AnalysisStatus | UnknownValue | None = analysis.status
    activity: Activity | UnknownValue | None = analysis.activity
    domain: Domain | UnknownValue | None = analysis.domain
    video_status: VideoStatus | UnknownValue | None = video.status
    joints_status: AnalysisStatus | UnknownValue | None = joints.status
    if isinstance(status, AnalysisStatus):
        member: AnalysisStatus = status
    elif status is not None:
        unknown: UnknownValue = status  # what is left is the unknown value, still a str
        text: str = unknown
"""


def test_enum_fields_keep_their_enum_for_type_checkers(tmp_path: Path) -> None:
    """A type checker sees the enum in status, activity and domain fields, not a plain str (a
    ``str`` enum ``| str`` collapses to ``str``), and narrows an unknown value to UnknownValue."""
    (tmp_path / "enum_fields.py").write_text(ENUM_FIELDS, encoding="utf-8")
    done = mypy_strict(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
