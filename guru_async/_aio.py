"""asyncio helpers that behave the same on every supported Python."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
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
