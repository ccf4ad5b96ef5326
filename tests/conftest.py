"""Shared fixtures: a real emulator on 127.0.0.1 and a session pointed at it."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from guru_async import GuruSession, PollPolicy
from guru_async.testing import GuruEmulator

from .redis_server import RedisServer, free_port


def pytest_configure(config: pytest.Config) -> None:
    """Give the children the tests send Ctrl-C to a SIGINT that works.

    A run started as a background job of a non-interactive shell (``cmd &`` in a CI script)
    inherits SIGINT ignored, and Python keeps an ignored SIGINT ignored in every process it
    starts: the Ctrl-C tests' children would never see theirs.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


# Polls every 10-50 ms instead of 1-5 s, so tests wait on the emulator, not on the schedule.
FAST_POLLS = PollPolicy(interval=0.01, max_interval=0.05)


@pytest.fixture
async def emulator(tmp_path: Path) -> AsyncIterator[GuruEmulator]:
    """A running emulator whose analyses finish 0.1 s after upload."""
    async with GuruEmulator(analysis_delay=0.1, storage_dir=tmp_path / "storage") as emu:
        yield emu


@pytest.fixture
def make_session(emulator: GuruEmulator) -> Callable[..., GuruSession]:
    """Build sessions against the emulator, each with its own token store unless given one."""

    def make(**kwargs: object) -> GuruSession:
        return emulator.session(**{"poll_policy": FAST_POLLS, **kwargs})

    return make


@pytest.fixture
async def guru(make_session: Callable[..., GuruSession]) -> AsyncIterator[GuruSession]:
    """An open session against the emulator."""
    async with make_session() as session:
        yield session


@pytest.fixture
def video_file(tmp_path: Path) -> Callable[..., Path]:
    """Write a file of random bytes and return its path."""

    def make(name: str = "clip.mp4", size: int = 64 * 1024, content: bytes | None = None) -> Path:
        path = tmp_path / name
        path.write_bytes(content if content is not None else os.urandom(size))
        return path

    return make


@pytest.fixture
async def start_emulator(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[GuruEmulator]]]:
    """Start extra emulators with custom settings (e.g. analysis_delay=), stopped at teardown."""
    async with contextlib.AsyncExitStack() as stack:
        count = 0

        async def start(**kwargs: Any) -> GuruEmulator:
            nonlocal count
            count += 1
            kwargs.setdefault("storage_dir", tmp_path / f"storage-{count}")
            return await stack.enter_async_context(GuruEmulator(**kwargs))

        yield start


@pytest.fixture
async def session_for() -> AsyncIterator[Callable[..., GuruSession]]:
    """Build a session against any emulator (own token store, fast polls), closed at teardown."""
    sessions: list[GuruSession] = []

    def make(emu: GuruEmulator, **kwargs: Any) -> GuruSession:
        session = emu.session(**{"poll_policy": FAST_POLLS, **kwargs})
        sessions.append(session)
        return session

    yield make
    for session in sessions:
        await session.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server on 127.0.0.1 for the whole run (no persistence), stopped by pid."""
    server = RedisServer(directory=tmp_path_factory.mktemp("redis"), port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The shared server's URL, its data flushed before the test so tests never see each other."""
    import redis as redis_sync

    client = redis_sync.Redis.from_url(redis_server.url)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.url


@pytest.fixture
def start_redis(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start a private redis-server (e.g. ``appendonly=True`` or ``password=``) for one test."""
    servers: list[RedisServer] = []

    def start(**kwargs: Any) -> RedisServer:
        server = RedisServer(
            directory=tmp_path / f"redis-{len(servers)}", port=free_port(), **kwargs
        )
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()
