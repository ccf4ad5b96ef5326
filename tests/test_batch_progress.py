"""BatchProgress totals that mean something: the input counted ahead of the uploads (items and
bytes to send), restored, uploaded and failed items told apart, and totals that never move once
known, through the Python API against the emulator."""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from guru_async import BatchProgress, GuruSession

from .helpers import wait_until

MakeFile = Callable[..., Path]
GROWING = ("started", "uploaded", "succeeded", "failed", "restored", "upload_failed", "bytes_sent")


class Snapshots:
    """Every progress report of a batch, copied at the moment it was made."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def __call__(self, progress: BatchProgress) -> None:
        self.seen.append(attrs.asdict(progress))

    def counted(self) -> list[dict[str, Any]]:
        """The reports made once the input's count was complete."""
        return [s for s in self.seen if not s["counting"] and s["total"] is not None]


def assert_never_backwards(seen: list[dict[str, Any]]) -> None:
    """Counters only grow; totals only grow while counted and never move after."""
    for before, after in itertools.pairwise(seen):
        for name in GROWING:
            assert after[name] >= before[name], f"{name} went down: {before} -> {after}"
        for name in ("total", "bytes_to_send"):
            if before[name] is None:
                continue
            assert after[name] is not None, f"{name} became unknown: {before} -> {after}"
            if before["counting"]:
                assert after[name] >= before[name], f"{name} went down: {before} -> {after}"
            else:
                assert after[name] == before[name], f"{name} moved: {before} -> {after}"


async def test_a_list_is_counted_before_its_uploads_and_its_totals_never_move(
    guru: GuruSession, video_file: MakeFile, tmp_path: Path
) -> None:
    """A list of paths is counted ahead of the uploads: total and bytes_to_send are final
    (counting False) while items are still in flight and never move after, even with items
    that fail; a file that cannot be uploaded counts in upload_failed, not in uploaded, and
    every byte to send is sent."""
    sizes = [10_000 * (i + 1) for i in range(6)]
    good = [video_file(f"c-{i}.mp4", size=size) for i, size in enumerate(sizes)]
    empty = video_file("empty.mp4", content=b"")
    items = [*good, tmp_path / "missing.mp4", empty]
    snapshots = Snapshots()

    results = [r async for r in guru.batch_upload(items, progress=snapshots, activity="squat")]

    assert len(results) == 8
    seen = snapshots.seen
    assert_never_backwards(seen)
    counted = snapshots.counted()
    assert counted, "the count never completed"
    # Known while the batch still had items to report, and final from the start.
    assert counted[0]["succeeded"] + counted[0]["failed"] < len(items)
    assert {(s["total"], s["bytes_to_send"]) for s in counted} == {(len(items), sum(sizes))}
    # Before the count completed, only lower bounds were shown (or none, before its first
    # chunk was read).
    for s in seen[: seen.index(counted[0])]:
        assert s["counting"] is True
        assert s["total"] is None or s["total"] <= len(items)
        assert s["bytes_to_send"] is None or s["bytes_to_send"] <= sum(sizes)
    last = seen[-1]
    assert last["uploaded"] == 6
    assert last["restored"] == 0
    assert last["upload_failed"] == 2
    assert last["failed"] == 2
    assert last["succeeded"] == 6
    assert last["bytes_sent"] == last["bytes_to_send"] == last["bytes_total"] == sum(sizes)


async def test_a_one_pass_input_gets_its_total_when_it_runs_out(
    guru: GuruSession, video_file: MakeFile
) -> None:
    """A generator cannot be read twice: its total is None (and no bytes to send are claimed)
    until the batch has read it all, then the number of items read."""
    paths = [video_file(f"g-{i}.mp4", size=4096) for i in range(4)]

    def generate() -> Iterator[Path]:
        yield from paths

    snapshots = Snapshots()
    results = [r async for r in guru.batch_upload(generate(), progress=snapshots, wait=False)]

    assert all(r.ok for r in results)
    seen = snapshots.seen
    assert_never_backwards(seen)
    assert {s["bytes_to_send"] for s in seen} == {None}
    assert not any(s["counting"] for s in seen)
    known = [s for s in seen if s["total"] is not None]
    assert {s["total"] for s in known} == {4}
    assert all(s["started"] == 4 for s in known)
    assert seen[-1]["total"] == 4


async def test_a_rerun_counts_restored_items_apart_from_its_uploads(
    guru: GuruSession, video_file: MakeFile, tmp_path: Path
) -> None:
    """Rerun with its journal, a batch reports the items an earlier run uploaded (or finished)
    as restored, apart from the ones it uploads itself, and counts only the new files' bytes
    as bytes to send."""
    journal = tmp_path / "batch.db"
    first = [video_file(f"old-{i}.mp4", size=20_000) for i in range(3)]
    batch = guru.batch_upload(first, journal=journal, wait=False, activity="squat")
    assert [r.ok async for r in batch] == [True] * 3
    new = [video_file(f"new-{i}.mp4", size=30_000) for i in range(2)]

    # The old items are "uploaded" in the journal: resumed and awaited, nothing sent again.
    resumed = Snapshots()
    batch = guru.batch_upload([*first, *new], journal=journal, progress=resumed, activity="squat")
    assert [r.ok async for r in batch] == [True] * 5
    assert_never_backwards(resumed.seen)
    assert {(s["total"], s["bytes_to_send"]) for s in resumed.counted()} == {(5, 60_000)}
    last = resumed.seen[-1]
    assert (last["restored"], last["uploaded"], last["upload_failed"]) == (3, 5, 0)
    assert last["bytes_sent"] == 60_000

    # Now every item is done in the journal: all restored, nothing to send.
    restored = Snapshots()
    batch = guru.batch_upload([*first, *new], journal=journal, progress=restored, activity="squat")
    assert [r.ok async for r in batch] == [True] * 5
    assert_never_backwards(restored.seen)
    last = restored.seen[-1]
    assert (last["total"], last["counting"], last["bytes_to_send"]) == (5, False, 0)
    assert (last["restored"], last["uploaded"], last["succeeded"]) == (5, 5, 5)
    assert last["bytes_sent"] == 0


async def test_a_long_input_shows_growing_lower_bounds_while_it_is_counted(
    guru: GuruSession, video_file: MakeFile, tmp_path: Path
) -> None:
    """A long list is counted in chunks while the batch starts at once: total grows as a lower
    bound (counting True) chunk by chunk, then stays at the exact count."""
    real = video_file("real.mp4", size=5000)
    items = [real, *(tmp_path / f"gone-{i}.mp4" for i in range(600))]
    snapshots = Snapshots()

    async with guru.batch_upload(items, progress=snapshots, wait=False) as batch:
        # Results are not read until the count is done, so the batch cannot run ahead of it.
        await wait_until(lambda: not batch.progress.counting, timeout=10)
        results = [r async for r in batch]

    assert len(results) == 601
    seen = snapshots.seen
    assert_never_backwards(seen)
    bounds = [s["total"] for s in seen if s["counting"] and s["total"] is not None]
    assert list(dict.fromkeys(bounds)) == [256, 512], bounds
    assert {s["total"] for s in snapshots.counted()} == {601}
    assert {s["bytes_to_send"] for s in snapshots.counted()} == {5000}
    last = seen[-1]
    assert (last["uploaded"], last["upload_failed"], last["bytes_sent"]) == (1, 600, 5000)


class Listing:
    """A re-iterable input like a folder listing: each iter() is a fresh reading."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.readings = 0

    def __iter__(self) -> Iterator[Path]:
        self.readings += 1
        return iter(list(self.paths))


class SharedFeed:
    """An iterable whose every iter() takes items from one shared queue."""

    def __init__(self, paths: list[Path]) -> None:
        self.queue = collections.deque(paths)

    def __iter__(self) -> Iterator[Path]:
        while self.queue:
            yield self.queue.popleft()


async def test_count_ahead_reads_an_iterable_twice_only_when_asked(
    guru: GuruSession, video_file: MakeFile
) -> None:
    """An iterable of the caller's own is read once by default, so one that hands out shared
    items loses none to a count; with count_ahead=True a listing is read twice and its totals
    known before the end; an iterator with count_ahead=True is a TypeError before anything
    is sent."""
    paths = [video_file(f"l-{i}.mp4", size=3000) for i in range(5)]

    feed = SharedFeed(paths)
    snapshots = Snapshots()
    results = [r async for r in guru.batch_upload(feed, progress=snapshots, wait=False)]
    assert sorted(str(r.item) for r in results) == sorted(str(p) for p in paths)
    assert snapshots.seen[-1]["total"] == 5
    assert {s["bytes_to_send"] for s in snapshots.seen} == {None}

    listing = Listing(paths)
    snapshots = Snapshots()
    batch = guru.batch_upload(listing, progress=snapshots, wait=False, count_ahead=True)
    assert len([r async for r in batch]) == 5
    assert listing.readings == 2
    assert_never_backwards(snapshots.seen)
    assert {(s["total"], s["bytes_to_send"]) for s in snapshots.counted()} == {(5, 15_000)}

    with pytest.raises(TypeError, match="not an iterator"):
        guru.batch_upload(iter(paths), count_ahead=True)
