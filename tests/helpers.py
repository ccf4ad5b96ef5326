"""Small helpers shared by the test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

from guru_async.testing import GuruEmulator, RecordedRequest


def headers_of(record: RecordedRequest) -> dict[str, str]:
    """A recorded request's headers with lower-case names."""
    return {name.lower(): value for name, value in record.headers.items()}


def recorded_on(emu: GuruEmulator, route: str) -> list[RecordedRequest]:
    """The recorded requests of one route, oldest first."""
    return [r for r in emu.recorded if r.route == route]


def total_requests(emu: GuruEmulator) -> int:
    """Every request the emulator received, on every route (token and storage included)."""
    return sum(emu.requests.values())


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for ``condition`` to hold (checked every few ms), failing after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def open_fds() -> list[str]:
    """What every open file descriptor of this process points at."""
    targets = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            targets.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # the fd of the listing itself, closed by now
            continue
    return targets
