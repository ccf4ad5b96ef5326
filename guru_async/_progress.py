"""The one way a caller's progress callback is called, for uploads and downloads alike."""

from __future__ import annotations

import inspect

from ._errors import BodyAbort
from ._types import ProgressCallback


class ProgressReporter:
    """Calls a ProgressCallback with new highs only, and never lets its error look like ours.

    A retried attempt starts again from 0: only a count above the highest one reported goes
    to the callback, so the caller sees one rise from 0 to the total however many attempts it
    took. An exception from the callback is the caller's: it is wrapped in ``BodyAbort``, which
    the transport raises as it was, never as a network failure to retry (a callback's
    ``TimeoutError`` or ``OSError`` would otherwise pass for one).
    """

    __slots__ = ("_callback", "_reported")

    def __init__(self, callback: ProgressCallback | None) -> None:
        self._callback = callback
        self._reported = -1

    async def __call__(self, done: int, total: int) -> None:
        """Report ``done`` of ``total`` bytes if it is a new high."""
        if self._callback is None or done <= self._reported:
            return
        self._reported = done
        try:
            result = self._callback(done, total)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            raise BodyAbort(exc) from None
