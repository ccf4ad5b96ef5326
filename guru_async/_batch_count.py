"""Counting a batch's input ahead of its workers: how many items, and how many bytes to send.

A batch reads its input lazily, one item per free worker, so by itself it knows neither how
many items there are nor how many bytes will go out until the very end. An input that can be
iterated twice (a list; with ``count_ahead=True`` any iterable whose ``iter()`` starts a fresh
reading, such as the CLI's folder listing) is read a second time here, in chunks on a worker
thread (a listing and a ``stat`` per file must not hold the event loop), and each chunk's
counts are handed to the caller as soon as they are known: a huge folder shows a growing lower
bound at once instead of a long wait. The local batch and a fleet's producer share this.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
X = TypeVar("X")

# Items per trip to the worker thread: big enough that a 100,000-file folder takes a few
# hundred trips, small enough that the first counts show within milliseconds.
CHUNK = 256


def reiterable(items: object) -> bool:
    """Whether ``items`` can be read a second time without consuming the first reading: an
    iterable that is not itself an iterator (a generator, a file, ``map`` are iterators)."""
    return isinstance(items, Iterable) and not isinstance(items, Iterator)


def countable(items: Iterable[T], count_ahead: bool | None) -> Iterable[T] | None:
    """``items`` if a batch may read them a second time to count them, else None.

    Args:
        items: The batch's (synchronous) input.
        count_ahead: None counts an in-memory collection only; True any re-iterable input
            (an iterator is a TypeError); False nothing.
    """
    if count_ahead is None:
        # Only what is surely safe to read twice: an iterable of the caller's own could hand
        # out shared state (a queue, an open file), and a second reading would take its items.
        return items if isinstance(items, Collection) else None
    if not isinstance(count_ahead, bool):
        raise TypeError(f"count_ahead must be True, False or None, got {count_ahead!r}")
    if count_ahead and not reiterable(items):
        raise TypeError(
            "count_ahead=True reads the input twice: pass an iterable whose iter() starts a "
            f"fresh reading (a list, a folder listing), not an iterator ({type(items).__name__})"
        )
    return items if count_ahead else None


def _chunk(iterator: Iterator[T], inspect: Callable[[T], X], size: int) -> tuple[list[X], bool]:
    """Up to ``size`` items' facts, and whether the input ran out (runs on a worker thread)."""
    facts = []
    for item in iterator:
        facts.append(inspect(item))
        if len(facts) >= size:
            return facts, False
    return facts, True


async def count_input(
    items: Iterable[T],
    *,
    inspect: Callable[[T], X],
    weigh: Callable[[X], Awaitable[int]],
    on_count: Callable[[int, int, bool], None],
    chunk: int = CHUNK,
) -> None:
    """Read ``items`` once more, counting items and bytes as the reading goes.

    Args:
        items: A re-iterable input (see ``reiterable``).
        inspect: Learns what is needed of one item (its size, its journal key); called on a
            worker thread, so it may block on the disk. It must not raise.
        weigh: The bytes the batch will send for an item, from what ``inspect`` learned
            (0 for one an earlier run already sent); called on the event loop.
        on_count: Called after each chunk with the items and bytes counted so far and whether
            the count is complete.
        chunk: Items per trip to the worker thread.
    """
    iterator = iter(items)
    count = 0
    weight = 0
    done = False
    while not done:
        facts, done = await asyncio.to_thread(_chunk, iterator, inspect, chunk)
        for fact in facts:
            weight += await weigh(fact)
        count += len(facts)
        on_count(count, weight, done)
