"""The pytest plugin as a user meets it: a throwaway project in a temp folder, run by pytest in a
subprocess that finds the plugin through the installed package's entry point."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# One test module for every variant: the asyncio mark line is swapped for anyio's.
USER_TESTS = """
import threading

import pytest
from guru_async import AnalysisStatus, NotFoundError, PermissionDeniedError
from guru_async.testing import GET_VIDEO_ROUTE, FaultRule


@pytest.mark.asyncio
async def test_analyze(guru, guru_emulator, tmp_path):
    video = tmp_path / "squat.mp4"
    video.write_bytes(b"x" * 2048)
    analysis = await guru.analyze(video, activity="squat", rep_count=5)
    assert analysis.status is AnalysisStatus.COMPLETE
    assert len(analysis.reps) == 5
    assert guru_emulator.token_requests == 1
    assert sum(guru_emulator.uploads_completed.values()) == 1


@pytest.mark.asyncio
@pytest.mark.guru_emulator(
    faults=[FaultRule(route=GET_VIDEO_ROUTE, rate=1.0, status=403)], token_lifetime=5.0
)
async def test_marker(guru, guru_emulator):
    with pytest.raises(PermissionDeniedError):
        await guru.get_video("00000000-0000-0000-0000-000000000000")
    assert guru_emulator.faults.fired[GET_VIDEO_ROUTE] == 1


@pytest.mark.asyncio
@pytest.mark.guru_emulator(analysis_delay=60.0)
async def test_analysis_delay(guru, tmp_path):
    video = tmp_path / "squat.mp4"
    video.write_bytes(b"x" * 2048)
    video_id = await guru.upload_video(video, activity="squat")
    assert (await guru.get_analysis(video_id)).status is AnalysisStatus.PENDING


@pytest.mark.asyncio
async def test_not_found(guru):
    with pytest.raises(NotFoundError):
        await guru.get_analysis("00000000-0000-0000-0000-000000000000")


@pytest.mark.parametrize("guru_emulator", [{"client_id": "by-param"}], indirect=True)
def test_indirect_parameter(guru_emulator):
    assert guru_emulator.client_id == "by-param"


def test_sync(guru_emulator):
    assert guru_emulator.base_url.startswith("http://127.0.0.1:")
    assert threading.active_count() >= 2  # the emulator serves from its own thread
"""

SESSION_SCOPE_TESTS = """
import pytest
from guru_async import NotFoundError
from guru_async.testing import CREATE_ROUTE, GET_VIDEO_ROUTE, FaultRule

MISSING = "00000000-0000-0000-0000-000000000000"
seen = []


@pytest.mark.asyncio
@pytest.mark.guru_emulator(faults=[FaultRule(route=CREATE_ROUTE, status=429, times=1)])
async def test_first(guru, guru_emulator):
    await guru.create_video("clip.mp4", size=10, activity="squat")  # retried once
    assert guru_emulator.faults.fired[CREATE_ROUTE] == 1
    with pytest.raises(NotFoundError):
        await guru.get_video(MISSING)
    seen.append(guru_emulator)
    assert guru_emulator.token_requests == 1


@pytest.mark.asyncio
async def test_second_shares_it(guru, guru_emulator):
    assert guru_emulator is seen[0]
    assert guru_emulator.token_requests == 0  # reset
    assert not guru_emulator.requests and not guru_emulator.recorded
    assert not guru_emulator.faults.rules and not guru_emulator.faults.fired
    with pytest.raises(NotFoundError):
        await guru.get_video(MISSING)
    assert guru_emulator.requests[GET_VIDEO_ROUTE] == 1


@pytest.mark.guru_emulator(analysis_delay=5.0)
def test_options_get_their_own(guru_emulator):
    assert guru_emulator is not seen[0]
"""

WIDER_LOOP_TESTS = """
import pytest
from guru_async import NotFoundError


@pytest.mark.asyncio
async def test_default_loop_scope(guru):
    with pytest.raises(NotFoundError):
        await guru.get_video("not-a-video")


@pytest.mark.asyncio(loop_scope="module")
async def test_marker_loop_scope(guru):
    with pytest.raises(NotFoundError):
        await guru.get_video("not-a-video")
"""

GURU_ENV_TESTS = """
import os

import pytest
from guru_async import AnalysisStatus, GuruSession


@pytest.mark.asyncio
async def test_own_session_reaches_the_emulator(guru_env, guru_emulator, tmp_path):
    assert guru_env["GURU_BASE_URL"] == guru_emulator.base_url == os.environ["GURU_BASE_URL"]
    video = tmp_path / "squat.mp4"
    video.write_bytes(b"x" * 2048)
    async with GuruSession() as session:  # as an app's lifespan opens it
        analysis = await session.analyze(video, activity="squat")
    assert analysis.status is AnalysisStatus.COMPLETE
    assert guru_emulator.token_requests == 1


def test_environment_is_restored_after():
    assert os.environ["GURU_BASE_URL"] == "https://api.example.invalid"
    assert "GURU_CLIENT_SECRET" not in os.environ
"""

PYTEST_ASYNCIO_STRICT = """
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
filterwarnings = error
addopts = --strict-markers -rA
"""


def run_pytest(
    project: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    """Run pytest in ``project`` as its owner would; return the passed test names and the run."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "GURU_"))}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", *args],
        cwd=project,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    passed = set(re.findall(r"^PASSED \S+::(\w+)", result.stdout, re.MULTILINE))
    return passed, result


def make_project(root: Path, config: str, tests: str, mark: str = "asyncio") -> Path:
    """A folder holding only a pytest configuration and one test module."""
    root.mkdir()
    (root / "pytest.ini").write_text(textwrap.dedent(config).lstrip())
    (root / "test_app.py").write_text(tests.replace("pytest.mark.asyncio", f"pytest.mark.{mark}"))
    return root


ALL = {
    "test_analyze",
    "test_marker",
    "test_analysis_delay",
    "test_not_found",
    "test_indirect_parameter",
    "test_sync",
}


def test_pytest_asyncio_strict_mode(tmp_path: Path) -> None:
    """In strict mode the plugin's async ``guru`` fixture is run on the test's loop."""
    project = make_project(tmp_path / "strict", PYTEST_ASYNCIO_STRICT, USER_TESTS)
    passed, result = run_pytest(project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert passed == ALL


def test_pytest_asyncio_auto_mode(tmp_path: Path) -> None:
    """In auto mode unmarked async tests get the fixtures too."""
    config = PYTEST_ASYNCIO_STRICT.replace("mode = strict", "mode = auto")
    tests = USER_TESTS.replace("@pytest.mark.asyncio\n", "")
    project = make_project(tmp_path / "auto", config, tests)
    passed, result = run_pytest(project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert passed == ALL


@pytest.mark.parametrize(
    "plugins",
    [
        ["anyio.pytest_plugin", "pytest_asyncio.plugin"],
        ["pytest_asyncio.plugin", "anyio.pytest_plugin"],
    ],
    ids=["anyio-first", "pytest-asyncio-first"],
)
def test_anyio_beside_pytest_asyncio(tmp_path: Path, plugins: list[str]) -> None:
    """anyio tests get a session opened on anyio's loop with pytest-asyncio (strict) loaded too,
    whichever of the two plugins pytest registers first."""
    project = make_project(tmp_path / "anyio", PYTEST_ASYNCIO_STRICT, USER_TESTS, mark="anyio")
    options = [f"-p{name}" for name in [*plugins, "guru_async.testing.pytest_plugin"]]
    passed, result = run_pytest(project, *options, env={"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert passed == ALL


def test_anyio_alone(tmp_path: Path) -> None:
    """With only anyio's plugin (pytest-asyncio disabled) the fixtures work the same."""
    config = "[pytest]\nfilterwarnings = error\naddopts = --strict-markers\n"
    project = make_project(tmp_path / "anyio-only", config, USER_TESTS, mark="anyio")
    passed, result = run_pytest(project, "-p", "no:asyncio")
    assert result.returncode == 0, result.stdout + result.stderr
    assert passed == ALL


@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_pytest_asyncio_wider_loop_scope(tmp_path: Path, mode: str) -> None:
    """A test on a module or session loop gets its session opened on that loop, not on the
    function loop pytest-asyncio gives fixtures by default."""
    config = PYTEST_ASYNCIO_STRICT.replace("mode = strict", f"mode = {mode}")
    config += "asyncio_default_test_loop_scope = session\n"
    project = make_project(tmp_path / "loops", config, WIDER_LOOP_TESTS)
    passed, result = run_pytest(project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert passed == {"test_default_loop_scope", "test_marker_loop_scope"}


def test_session_scope(tmp_path: Path) -> None:
    """guru_emulator_scope = session shares one emulator, reset per test, unless a test sets
    options."""
    config = PYTEST_ASYNCIO_STRICT + "guru_emulator_scope = session\n"
    project = make_project(tmp_path / "session", config, SESSION_SCOPE_TESTS)
    passed, result = run_pytest(project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert passed == {"test_first", "test_second_shares_it", "test_options_get_their_own"}


def test_bad_scope_is_a_usage_error(tmp_path: Path) -> None:
    """A misspelt guru_emulator_scope stops the run with a message naming the accepted values."""
    config = PYTEST_ASYNCIO_STRICT + "guru_emulator_scope = module\n"
    project = make_project(tmp_path / "bad", config, USER_TESTS)
    _, result = run_pytest(project)
    assert result.returncode == pytest.ExitCode.USAGE_ERROR
    assert "guru_emulator_scope must be 'function' or 'session', got 'module'" in result.stderr


def test_readme_example(tmp_path: Path) -> None:
    """README's "Testing your own app" example passes as a user's test module, autoload off and
    the plugin named with README's one option."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Testing your own app") :]
    example = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert example is not None
    project = make_project(tmp_path / "readme", PYTEST_ASYNCIO_STRICT, example.group(1))
    passed, result = run_pytest(
        project,
        "-p",
        "pytest_asyncio.plugin",
        "-p",
        "guru_async.testing.pytest_plugin",
        env={"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert passed == {"test_counts_reps", "test_a_refused_upload"}


def test_guru_env_points_an_apps_own_session_at_the_emulator(tmp_path: Path) -> None:
    """guru_env sets GURU_* for one test, so a GuruSession() an app opens itself reaches the
    emulator, and puts the environment back afterwards."""
    project = make_project(tmp_path / "env", PYTEST_ASYNCIO_STRICT, GURU_ENV_TESTS)
    passed, result = run_pytest(project, env={"GURU_BASE_URL": "https://api.example.invalid"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert passed == {"test_own_session_reaches_the_emulator", "test_environment_is_restored_after"}
