"""One video per item in a journaled batch: interrupted uploads resume to their recorded target.

Real batch processes (tests/batch_worker.py) run against an emulator in this process (real
sockets, its counters read directly) and are interrupted with SIGINT (Ctrl-C), SIGTERM or
SIGKILL mid-upload, or frozen with SIGSTOP past their claims' lease; a rerun with the same
journal must then leave exactly one video per file, none of them empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from guru_async import AnalysisStatus, BatchResult, GuruConnectionError, GuruSession
from guru_async._journal import Journal, UploadTarget, item_key
from guru_async.testing import CREATE_ROUTE, UPLOAD_ROUTE, FaultRule, GuruEmulator
from tests.helpers import wait_until
from tests.test_batch import collect, read_result, start_worker

MakeFile = Callable[..., Path]

# Uploads take about a second (32 KiB at 32 KiB/s): long enough to interrupt them mid-body.
FILE_SIZE = 32 * 1024
SLOW_STORAGE = 32 * 1024.0


def endpoints(emu: GuruEmulator) -> dict[str, str]:
    """What tests.test_batch.start_worker needs to point a worker at ``emu``."""
    return {
        "base_url": emu.base_url,
        "token_url": emu.token_url,
        "client_id": emu.client_id,
        "client_secret": emu.client_secret,
    }


def journal_rows(journal: Path) -> dict[str, tuple[Any, ...]]:
    """Every journal row, whole, by key (read straight from the SQLite file)."""
    with contextlib.closing(sqlite3.connect(journal)) as db:
        return {row[0]: row for row in db.execute("SELECT * FROM items")}


def created_videos(journal: Path) -> dict[str, str]:
    """The video id of every row in state ``created``, by the file path in its key."""
    with contextlib.closing(sqlite3.connect(journal)) as db:
        rows = db.execute("SELECT key, video_id FROM items WHERE state = 'created'")
        return {_path_of(key): video_id for key, video_id in rows}


def _path_of(key: str) -> str:
    return str(json.loads(key)[1])


async def read_all(process: asyncio.subprocess.Process) -> list[dict[str, Any]]:
    """Every result line a worker prints until it ends."""
    lines = []
    while (line := await read_result(process)) is not None:
        lines.append(line)
    return lines


def assert_one_video_per_file(
    emu: GuruEmulator, files: list[Path], results: list[dict[str, Any]]
) -> dict[str, str]:
    """Every file has one Complete result, the emulator holds exactly one video per file and
    each of them received its content; returns the video id by file."""
    names = [str(f) for f in files]
    assert Counter(r["item"] for r in results) == Counter(names)
    assert all(r["ok"] and r["status"] == "Complete" for r in results), results
    video_of = {r["item"]: r["video_id"] for r in results}
    assert len(set(video_of.values())) == len(files)
    assert emu.requests[CREATE_ROUTE] == len(files)
    assert set(emu.videos) == set(video_of.values())
    empty = [v for v in emu.videos if emu.uploads_completed[v] == 0]
    assert empty == []
    return video_of


@pytest.mark.slow
@pytest.mark.parametrize(
    "sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda sig: sig.name
)
async def test_batch_interrupted_mid_upload_resumes_to_the_same_videos(
    start_emulator: Callable[..., Any], video_file: MakeFile, tmp_path: Path, sig: signal.Signals
) -> None:
    """A batch process stopped by Ctrl-C, SIGTERM or SIGKILL while two uploads are in flight,
    then rerun with its journal, ends with one video per file, none empty, every result
    present: the interrupted uploads go to the videos the first run created."""
    emu: GuruEmulator = await start_emulator(analysis_delay=0.0, storage_bandwidth=SLOW_STORAGE)
    files = [video_file(f"cut-{i}.mp4", size=FILE_SIZE) for i in range(4)]
    journal = tmp_path / "batch.db"

    first = await start_worker(endpoints(emu), journal, 2, files, env={})
    await wait_until(
        lambda: len(emu.videos) == 2 and all(emu.upload_attempts[v] for v in emu.videos),
        timeout=30,
    )
    first.send_signal(sig)
    assert first.stdout is not None
    assert first.stderr is not None
    await first.stdout.read()
    await first.stderr.read()
    assert await asyncio.wait_for(first.wait(), timeout=20) != 0
    cut_short = created_videos(journal)
    assert len(cut_short) == 2
    assert not any(emu.uploads_completed.values()), "an upload finished before the signal"
    if sig == signal.SIGINT:
        # A clean stop releases its claims: the rerun needs no takeover.
        with contextlib.closing(sqlite3.connect(journal)) as db:
            assert [row[0] for row in db.execute("SELECT owner FROM items")] == [None, None]

    second = await start_worker(endpoints(emu), journal, 4, files, env={})
    results = await read_all(second)
    assert second.stderr is not None
    stderr = (await second.stderr.read()).decode()
    assert await second.wait() == 0

    video_of = assert_one_video_per_file(emu, files, results)
    for path, video_id in cut_short.items():
        assert video_of[path] == video_id
        assert emu.upload_attempts[video_id] == 2  # cut off, then resumed to the same target
        assert emu.uploads_completed[video_id] == 1
    assert "orphan" not in stderr


@pytest.mark.slow
async def test_ctrl_c_while_creates_are_in_flight_journals_their_videos(
    start_emulator: Callable[..., Any], video_file: MakeFile, tmp_path: Path
) -> None:
    """Ctrl-C while Create Video requests are unanswered: the stopping batch waits for their
    answers and journals those videos with their targets, so the rerun uploads to them and
    creates no second video (only a crash in that window could leave one)."""
    emu: GuruEmulator = await start_emulator(analysis_delay=0.0)
    emu.faults.add(FaultRule(route=CREATE_ROUTE, kind="delay", delay=1.0, times=2))
    files = [video_file(f"creating-{i}.mp4", size=FILE_SIZE) for i in range(3)]
    journal = tmp_path / "batch.db"

    first = await start_worker(endpoints(emu), journal, 2, files, env={})
    await wait_until(lambda: emu.requests[CREATE_ROUTE] == 2, timeout=30)
    assert emu.videos == {}  # both creates are still waiting for their answers
    first.send_signal(signal.SIGINT)
    assert first.stdout is not None
    assert first.stderr is not None
    await first.stdout.read()
    first_stderr = (await first.stderr.read()).decode()
    await asyncio.wait_for(first.wait(), timeout=20)
    assert len(emu.videos) == 2
    assert set(created_videos(journal).values()) == set(emu.videos)
    assert "was created but" not in first_stderr

    second = await start_worker(endpoints(emu), journal, 3, files, env={})
    results = await read_all(second)
    assert await second.wait() == 0

    assert_one_video_per_file(emu, files, results)


@pytest.mark.slow
async def test_frozen_process_that_lost_its_claims_writes_nothing(
    start_emulator: Callable[..., Any], video_file: MakeFile, tmp_path: Path
) -> None:
    """A batch process frozen (SIGSTOP) with two uploads unfinished, past its claims' lease,
    is taken over by a second process, which uploads to the same two videos; woken up, the
    first process's late writes are refused (generation compare-and-set) and it reports the
    second's results."""
    emu: GuruEmulator = await start_emulator(analysis_delay=0.0)
    # The frozen process's two uploads are cut off while it sleeps, so neither completes.
    emu.faults.add(FaultRule(route=UPLOAD_ROUTE, kind="drop", delay=0.5, times=2))
    files = [video_file(f"frozen-{i}.mp4", size=FILE_SIZE) for i in range(4)]
    journal = tmp_path / "batch.db"
    short_lease = {"BATCH_WORKER_LEASE_SECONDS": "1"}

    frozen = await start_worker(endpoints(emu), journal, 2, files, env=short_lease)
    await wait_until(
        lambda: len(emu.videos) == 2 and all(emu.upload_attempts[v] for v in emu.videos),
        timeout=30,
    )
    frozen.send_signal(signal.SIGSTOP)
    try:
        in_flight = created_videos(journal)
        assert len(in_flight) == 2

        def lapsed() -> bool:
            with contextlib.closing(sqlite3.connect(journal)) as db:
                (live,) = db.execute(
                    "SELECT COUNT(*) FROM items WHERE lease_until > ?", (time.time(),)
                ).fetchone()
            return bool(live == 0)

        await wait_until(lambda: emu.faults.fired[UPLOAD_ROUTE] == 2 and lapsed(), timeout=10)
        assert not any(emu.uploads_completed.values())

        taker = await start_worker(endpoints(emu), journal, 4, files, env={})
        taken = await read_all(taker)
        assert await taker.wait() == 0
        video_of = assert_one_video_per_file(emu, files, taken)
        for path, video_id in in_flight.items():
            assert video_of[path] == video_id  # taken over, uploaded to the same target
        before_wakeup = journal_rows(journal)
    finally:
        frozen.send_signal(signal.SIGCONT)
    late = await read_all(frozen)
    assert frozen.stderr is not None
    await frozen.stderr.read()
    assert await frozen.wait() == 0

    # The woken process wrote nothing and reported the taker's outcome for every file.
    assert journal_rows(journal) == before_wakeup
    assert {r["item"]: r["video_id"] for r in late} == video_of
    assert all(r["ok"] for r in late), late
    assert emu.requests[CREATE_ROUTE] == len(files)
    assert len(emu.videos) == len(files)


async def test_a_claim_taken_over_fences_out_the_old_owner(tmp_path: Path) -> None:
    """Taking over a lapsed claim bumps its generation and hands over the recorded upload
    target; the old owner's record() then changes nothing and its renewal revives nothing."""
    path = tmp_path / "fence.db"
    old, new = Journal(path), Journal(path)
    old.lease_seconds = 0.05
    await old.open()
    await new.open()
    try:
        claimed_at = time.time()
        first = await old.claim("item")
        assert first is not None
        assert (first.owned, first.generation, first.abandoned) == (True, 1, False)
        target = UploadTarget(
            "http://127.0.0.1:1/bucket", {"key": "k", "x-amz-signature": "SIGNED"}, 123.0
        )
        assert await old.record("item", "created", generation=1, video_id="v1", target=target)
        assert await new.claim("item") is None  # live: the same process, lease running
        await wait_until(lambda: time.time() > claimed_at + 0.05, timeout=5)

        taken = await new.claim("item")
        assert taken is not None
        assert (taken.owned, taken.generation, taken.abandoned) == (True, 2, True)
        assert taken.entry is not None
        assert (taken.entry.state, taken.entry.video_id) == ("created", "v1")
        assert taken.entry.target == target
        assert repr(taken.entry).count("SIGNED") == 0  # the presign never reaches a repr

        await old.renew()
        assert not await old.record("item", "uploaded", generation=1, video_id="v1")
        assert not await old.record("item", "error", generation=1, error=ValueError("late"))
        entry = await new.get("item")
        assert entry is not None
        assert (entry.state, entry.video_id, entry.target) == ("created", "v1", target)

        assert await new.record("item", "uploaded", generation=2, video_id="v1")
        assert await new.record("item", "done", generation=2, analysis="{}")
        assert not await old.record("item", "done", generation=1, analysis="{}")
        entry = await new.get("item")
        assert entry is not None
        assert (entry.state, entry.analysis, entry.target) == ("done", "{}", None)
    finally:
        await old.close()
        await new.close()


async def test_expired_target_is_recreated_once_and_a_live_one_resumed(
    start_emulator: Callable[..., Any],
    session_for: Callable[..., GuruSession],
    video_file: MakeFile,
    tmp_path: Path,
) -> None:
    """Of two uploads cut short (the batch closed, as on Ctrl-C), the one whose presigned
    target has expired gets one new video on the rerun and the other resumes to its own:
    three videos for two files, the expired one left empty."""
    # Targets count as expired 5 s before their policy says (EXPIRY_MARGIN): 8 s leaves 3 s.
    emu: GuruEmulator = await start_emulator(
        analysis_delay=0.0, storage_bandwidth=SLOW_STORAGE, presign_lifetime=8.0
    )
    expired, live = (video_file(f"{n}.mp4", size=FILE_SIZE) for n in ("expired", "live"))
    journal = tmp_path / "batch.db"
    guru = session_for(emu)

    async def cut_short(path: Path) -> str:
        before = set(emu.videos)
        async with guru.batch_upload([path], journal=journal) as results:
            await wait_until(
                lambda: any(emu.upload_attempts[v] for v in set(emu.videos) - before), timeout=10
            )
            del results
        (video_id,) = set(emu.videos) - before
        return video_id

    old = await cut_short(expired)
    entry = _entry_of(journal, expired)
    assert entry["state"] == "created"
    expires = float(entry["upload_expires"])
    await wait_until(lambda: time.time() > expires - 5.0, timeout=10)
    kept = await cut_short(live)

    results = await collect(guru.batch_upload([expired, live], journal=journal))

    by_path = {r.item: r for r in results}
    assert all(r.ok for r in results), [r.error for r in results]
    assert by_path[live].video_id == kept
    new = str(by_path[expired].video_id)
    assert new not in (old, kept)
    assert emu.requests[CREATE_ROUTE] == 3
    assert set(emu.videos) == {old, kept, new}
    assert emu.uploads_completed == {kept: 1, new: 1}
    assert emu.upload_attempts[old] == 1  # never sent again to the expired target
    assert _entry_of(journal, expired)["video_id"] == new


def _entry_of(journal: Path, path: Path) -> dict[str, Any]:
    with contextlib.closing(sqlite3.connect(journal)) as db:
        db.row_factory = sqlite3.Row
        for row in db.execute("SELECT * FROM items"):
            if _path_of(row["key"]) == str(path.resolve()):
                return dict(row)
    raise AssertionError(f"{path} is not in the journal")


# The columns of the journal's items table before upload targets and generations (0.2).
OLD_COLUMNS = {
    "0.1": "key, state, video_id, analysis, error_type, error, updated_at",
    "0.2": "key, state, video_id, analysis, error_type, error, updated_at, owner, lease_until",
}


@pytest.mark.parametrize("version", sorted(OLD_COLUMNS))
async def test_journal_of_an_older_version_opens_and_resumes(
    guru: GuruSession,
    emulator: GuruEmulator,
    video_file: MakeFile,
    tmp_path: Path,
    version: str,
) -> None:
    """A journal written by an older version (no upload target, no generation) opens, gains
    the new columns, restores its finished item without a request and gives its unfinished
    one (a video without a recorded target) a new video, as before; the restored analysis
    knows its video id although the old journal did not hold it."""
    done, unfinished = (video_file(f"{n}.mp4", size=2048) for n in ("done", "unfinished"))
    current = tmp_path / "current.db"
    finished = await collect(guru.batch_upload([done], journal=current))
    await guru.create_video(str(unfinished))  # stands in for the unfinished item's video
    (left,) = set(emulator.videos) - {finished[0].video_id}
    journal = tmp_path / f"journal-{version}.db"
    columns = OLD_COLUMNS[version]
    with contextlib.closing(sqlite3.connect(journal)) as db:
        declared = ", ".join(
            f"{name} TEXT PRIMARY KEY" if name == "key" else name for name in columns.split(", ")
        )
        db.execute(f"CREATE TABLE items ({declared})")
        db.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT)")
        db.execute(f"ATTACH DATABASE '{current}' AS current")
        db.execute(f"INSERT INTO items SELECT {columns} FROM current.items")  # noqa: S608
        # Older versions wrote analyses without their video id.
        db.execute("UPDATE items SET analysis = json_remove(analysis, '$.videoId')")
        service, _, fields, _ = json.loads(next(iter(journal_rows(current))))
        key = item_key(service, unfinished, fields)
        db.execute(
            "INSERT INTO items (key, state, video_id, updated_at) VALUES (?, 'created', ?, 0)",
            (key, left),
        )
        db.commit()
    creates = emulator.requests[CREATE_ROUTE]

    results = await collect(guru.batch_upload([done, unfinished], journal=journal))

    by_path: dict[Any, BatchResult] = {r.item: r for r in results}
    assert by_path[done].video_id == finished[0].video_id
    assert by_path[done].analysis == finished[0].analysis
    assert by_path[done].analysis is not None
    assert by_path[done].analysis.video_id == finished[0].video_id
    assert by_path[unfinished].ok
    assert by_path[unfinished].analysis is not None
    assert by_path[unfinished].analysis.status == AnalysisStatus.COMPLETE
    assert by_path[unfinished].video_id != left
    assert emulator.requests[CREATE_ROUTE] == creates + 1
    with contextlib.closing(sqlite3.connect(journal)) as db:
        names = {row[1] for row in db.execute("PRAGMA table_info(items)")}
    assert {"generation", "upload_url", "upload_fields", "upload_expires"} <= names


@pytest.mark.slow
async def test_kill_while_creating_names_each_possible_orphan_on_the_rerun(
    start_emulator: Callable[..., Any], video_file: MakeFile, tmp_path: Path
) -> None:
    """SIGKILL while two Create Video requests are unanswered (the one window the journal
    cannot close): the rerun names both files in a WARNING as possible orphans, and those two
    are the only videos beyond one per file."""
    emu: GuruEmulator = await start_emulator(analysis_delay=0.0)
    emu.faults.add(FaultRule(route=CREATE_ROUTE, kind="delay", delay=0.5, times=2))
    files = [video_file(f"killed-{i}.mp4", size=FILE_SIZE) for i in range(3)]
    journal = tmp_path / "batch.db"

    first = await start_worker(endpoints(emu), journal, 2, files, env={})
    await wait_until(lambda: emu.requests[CREATE_ROUTE] == 2, timeout=30)
    first.kill()
    assert first.stdout is not None
    assert first.stderr is not None
    await first.stdout.read()
    await first.stderr.read()
    assert await first.wait() == -signal.SIGKILL
    await wait_until(lambda: len(emu.videos) == 2, timeout=10)  # made after the kill
    orphans = set(emu.videos)

    second = await start_worker(endpoints(emu), journal, 3, files, env={})
    results = await read_all(second)
    assert second.stderr is not None
    stderr = (await second.stderr.read()).decode()
    assert await second.wait() == 0

    warned = {
        path
        for path in map(str, files)
        for line in stderr.splitlines()
        if repr(path) in line and "orphan" in line
    }
    assert len(warned) == 2
    assert all(r["ok"] for r in results)
    final = {r["video_id"] for r in results}
    assert len(final) == len(files)
    assert set(emu.videos) == final | orphans
    assert not final & orphans
    assert all(emu.uploads_completed[v] == 1 for v in final)


async def test_create_whose_answer_is_lost_is_logged_as_a_possible_orphan(
    guru: GuruSession,
    emulator: GuruEmulator,
    video_file: MakeFile,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A Create Video cut off after it reached the service fails its item (it is not
    repeated) and names the file in a WARNING as a possible orphan."""
    emulator.faults.add(FaultRule(route=CREATE_ROUTE, kind="drop", times=1))
    path = video_file("lost-answer.mp4", size=2048)

    with caplog.at_level(logging.WARNING, logger="guru_async"):
        (result,) = await collect(guru.batch_upload([path], journal=tmp_path / "j.db"))

    assert isinstance(result.error, GuruConnectionError)
    assert emulator.requests[CREATE_ROUTE] == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(repr(str(path)) in w and "orphan" in w for w in warnings), warnings


async def test_a_new_journal_is_readable_by_its_user_only(
    guru: GuruSession, video_file: MakeFile, tmp_path: Path
) -> None:
    """A journal the batch creates, and its WAL, are mode 0600: they hold presigned upload
    targets, which let anyone who reads them write to the videos."""
    journal = tmp_path / "private.db"
    async with guru.batch_upload([video_file("a.mp4", size=2048)], journal=journal) as results:
        async for _ in results:
            assert (tmp_path / "private.db-wal").stat().st_mode & 0o777 == 0o600
    assert journal.stat().st_mode & 0o777 == 0o600
