"""The pytest plugin: a running emulator and a session against it, in any project's tests.

Installed with the package (a ``pytest11`` entry point), so a test only names a fixture::

    async def test_counts_reps(guru):
        analysis = await guru.analyze("squat.mp4", activity="squat")
        assert analysis.reps

Fixtures:

- ``guru_emulator``: a running :class:`~guru_async.testing.GuruEmulator` (analyses finish at
  once). It serves from a background thread with its own event loop, so one emulator works for
  sync tests, for any test event loop, and for every test of a run (``guru_emulator_scope =
  session`` in the pytest configuration; counters and faults are reset before each test).
- ``guru``: an open :class:`~guru_async.GuruSession` pointed at ``guru_emulator``, opened and
  closed on the test's own event loop: pytest-asyncio (auto or strict mode) or anyio's plugin.
- ``guru_env``: the ``GURU_*`` environment (base URL, token URL, client id and secret) pointed
  at ``guru_emulator`` for one test, for code that opens its own session, such as a web app's
  lifespan: ``GuruSession()`` then talks to the emulator. Restored after the test.

The ``guru_emulator`` marker configures the emulator of one test: ``faults=`` takes
:class:`~guru_async.testing.FaultRule` objects, any other keyword is a ``GuruEmulator`` option::

    @pytest.mark.guru_emulator(analysis_delay=0.5, faults=[FaultRule(route="*", rate=0.1)])

The same keywords can come from indirect parametrization, one emulator per parameter set::

    @pytest.mark.parametrize("guru_emulator", [{"token_lifetime": 1.0}], indirect=True)
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Generator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from guru_async import GuruSession
    from guru_async.testing import FaultRule, GuruEmulator

_SCOPE_INI = "guru_emulator_scope"
_SCOPES = ("function", "session")
# Analyses finish at once unless a test asks otherwise: a user's suite waits on its own code.
_DEFAULT_OPTIONS: dict[str, Any] = {"analysis_delay": 0.0}


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the ``guru_emulator_scope`` configuration option."""
    parser.addini(
        _SCOPE_INI,
        "How long one guru_emulator lives: 'function' (default, a fresh one per test) or "
        "'session' (one for the whole run; a test whose guru_emulator marker sets emulator "
        "options still gets its own).",
        default="function",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``guru_emulator`` marker and check ``guru_emulator_scope``."""
    config.addinivalue_line(
        "markers",
        "guru_emulator(faults=[FaultRule(...)], analysis_delay=0.0, **options): configure the "
        "guru_emulator fixture of this test (options are GuruEmulator keywords).",
    )
    scope = config.getini(_SCOPE_INI)
    if scope not in _SCOPES:
        raise pytest.UsageError(f"{_SCOPE_INI} must be 'function' or 'session', got {scope!r}")
    # Marking the fixture as pytest-asyncio's makes it work in strict mode too (the mark is
    # inert without that plugin). Imported here, not at the top: an import before pytest loads
    # pytest-asyncio would stop pytest rewriting its asserts, and warn.
    try:
        import pytest_asyncio
    except ImportError:
        pass
    else:
        pytest_asyncio.fixture(_guru_session)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_fixture_setup(
    fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
) -> Generator[None, object, object]:
    """Open ``guru`` on the loop of the plugin that runs the test (anyio or pytest-asyncio)."""
    if fixturedef.func is not _guru_session:
        return (yield)
    with pytest.MonkeyPatch.context() as patch:
        if "anyio_backend" in request.fixturenames:
            # pytest-asyncio must not take the fixture for its own loop: anyio's plugin is
            # shown an unmarked twin for the duration.
            patch.setattr(fixturedef, "func", _guru_session_for_anyio)
        elif (scope := _asyncio_test_loop_scope(request)) is not None:
            # The attribute pytest_asyncio.fixture(loop_scope=...) sets, read when the fixture
            # is set up: the session opens on the test's own loop, whatever that loop's scope.
            patch.setattr(_guru_session, "_loop_scope", scope, raising=False)
        return (yield)


def _asyncio_test_loop_scope(request: pytest.FixtureRequest) -> str | None:
    """The scope of the loop pytest-asyncio runs the requesting test on, if it runs it."""
    marker = request.node.get_closest_marker("asyncio")
    if marker is None:
        return None
    scope = marker.kwargs.get("loop_scope") or marker.kwargs.get("scope")
    if scope:
        return str(scope)
    try:
        return str(request.config.getini("asyncio_default_test_loop_scope") or "function")
    except ValueError:  # a pytest-asyncio from before the option: tests run per function
        return "function"


class _EmulatorThread:
    """Runs an emulator on an event loop of its own, in a daemon thread."""

    def __init__(self, emulator: GuruEmulator) -> None:
        self.emulator = emulator
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="guru-emulator", daemon=True)

    def start(self) -> None:
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.emulator.start(), self._loop).result()
        except BaseException:
            self._stop_loop()
            raise

    def close(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.emulator.close(), self._loop).result()
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()

    def _run(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            # What a fault left sleeping is cancelled, as asyncio.run would do.
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


@contextlib.contextmanager
def _running(options: dict[str, Any]) -> Iterator[GuruEmulator]:
    from guru_async.testing import GuruEmulator

    runner = _EmulatorThread(GuruEmulator(**{**_DEFAULT_OPTIONS, **options}))
    runner.start()
    try:
        yield runner.emulator
    finally:
        runner.close()


def _test_options(request: pytest.FixtureRequest) -> tuple[dict[str, Any], list[FaultRule]]:
    options: dict[str, Any] = {}
    for marker in reversed(list(request.node.iter_markers("guru_emulator"))):
        if marker.args:
            raise TypeError("the guru_emulator marker takes keyword arguments only")
        options.update(marker.kwargs)
    # Indirect parametrization: @pytest.mark.parametrize("guru_emulator", [{...}], indirect=True)
    options.update(getattr(request, "param", None) or {})
    faults = list(options.pop("faults", ()))
    return options, faults


@pytest.fixture(scope="session")
def _guru_emulator_shared() -> Iterator[GuruEmulator]:
    """The emulator shared by every test when guru_emulator_scope is 'session'."""
    with _running({}) as emulator:
        yield emulator


@pytest.fixture
def guru_emulator(request: pytest.FixtureRequest) -> Iterator[GuruEmulator]:
    """A running GuruEmulator on 127.0.0.1 (analyses finish at once).

    Configure it per test with ``@pytest.mark.guru_emulator(faults=[...], **options)``; set
    ``guru_emulator_scope = session`` in the pytest configuration to share one for the run.
    """
    options, faults = _test_options(request)
    if request.config.getini(_SCOPE_INI) == "session" and not options:
        emulator: GuruEmulator = request.getfixturevalue("_guru_emulator_shared")
        emulator.reset_counters()
        emulator.recorded.clear()
        emulator.faults.clear()
        emulator.faults.fired.clear()
        for rule in faults:
            emulator.faults.add(rule)
        try:
            yield emulator
        finally:
            emulator.faults.clear()
        return
    with _running(options) as emulator:
        for rule in faults:
            emulator.faults.add(rule)
        yield emulator


@pytest.fixture
def guru_env(guru_emulator: GuruEmulator, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point the ``GURU_*`` environment at ``guru_emulator`` for this test.

    For code that opens its own session (a web app's lifespan, a CLI, a worker): a
    ``GuruSession()`` made during the test talks to the emulator. The variables are restored
    after the test.

    Returns:
        The variables set: ``GURU_BASE_URL``, ``GURU_TOKEN_URL``, ``GURU_CLIENT_ID`` and
        ``GURU_CLIENT_SECRET``.
    """
    env = {
        "GURU_BASE_URL": guru_emulator.base_url,
        "GURU_TOKEN_URL": guru_emulator.token_url,
        "GURU_CLIENT_ID": guru_emulator.client_id,
        "GURU_CLIENT_SECRET": guru_emulator.client_secret,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@contextlib.asynccontextmanager
async def _open_session(emulator: GuruEmulator) -> AsyncIterator[GuruSession]:
    from guru_async import PollPolicy

    # Polls every 10-50 ms, so a test waits on the emulator's analysis_delay, not a schedule
    # made for a real service.
    async with emulator.session(poll_policy=PollPolicy(interval=0.01, max_interval=0.05)) as s:
        yield s


async def _guru_session(guru_emulator: GuruEmulator) -> AsyncIterator[GuruSession]:
    """An open GuruSession against ``guru_emulator``, on the test's event loop."""
    async with _open_session(guru_emulator) as session:
        yield session


async def _guru_session_for_anyio(guru_emulator: GuruEmulator) -> AsyncIterator[GuruSession]:
    async with _open_session(guru_emulator) as session:
        yield session


guru = pytest.fixture(_guru_session, name="guru")
