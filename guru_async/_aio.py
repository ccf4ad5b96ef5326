"""asyncio helpers: a ``wait_for`` that behaves the same on every supported Python, and
running a thread that acquires something (a file, a lock) without leaking it on cancel."""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def wait_for(awaitable: Awaitable[T], timeout: float) -> T:
    """``asyncio.wait_for`` that never loses a cancellation.

    Python 3.11's ``wait_for`` returns the inner result when a cancel arrives in the same loop
    turn as that result, and the cancel is gone (CPython gh-86296): a cancelled
    ``await_analysis`` then polled on until its timeout. ``asyncio.timeout`` (3.11+) keeps it.
    """
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(timeout):
            return await awaitable
    return await asyncio.wait_for(awaitable, timeout)


async def run_owning(fn: Callable[[], T], release: Callable[[T], object]) -> T:
    """Run ``fn``, which acquires something (opens a file, takes a file lock), in the executor.

    A thread cannot be interrupted: if the caller is cancelled while it runs, what it acquires
    is handed to ``release`` when it arrives instead of being leaked.
    """
    future = asyncio.get_running_loop().run_in_executor(None, fn)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        future.add_done_callback(functools.partial(_release_result, release))
        raise


def _release_result(release: Callable[[T], object], future: asyncio.Future[T]) -> None:
    if not future.cancelled() and future.exception() is None:
        release(future.result())
