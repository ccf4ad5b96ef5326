"""A batch's journal: each item's progress in SQLite, so a crashed batch resumes, never repeats.

One row per item, keyed by what identifies the work: the service, the file's absolute path, the
metadata it is sent with, and the content's identity (see :func:`item_key`). States move forward
(back to ``claimed`` only just before a replacement video is created):

    claimed  -> a batch owns the item and is about to create its video (a run that crashed
                here may have created one it never recorded: the rerun logs that)
    created  -> the video exists (id and presigned upload target recorded) but its upload may
                not have finished
    uploaded -> storage accepted the content; only the analysis is awaited
    done     -> the final result (analysis JSON) is recorded
    error    -> the last attempt failed; a rerun tries again

Exactly once across batches and processes: before creating a video a batch *claims* the item in
one ``BEGIN IMMEDIATE`` transaction (the row's ``owner`` and ``lease_until``). Another batch that
reaches the same item while the claim is live waits until the owner records the upload, then
reports the same video. A claim is live while its lease runs (renewed every
``LEASE_SECONDS / 4`` by the owner) and, on the same host, while its process exists: a claim left
by a crashed process is taken over at once on the same machine, after the lease elsewhere.
Recording ``uploaded``, ``done`` or ``error`` releases the claim; a batch that stops releases
every claim it holds. A new journal file is created readable by its user only.

One video per item: the presigned target Create Video answered (url, fields and the policy's
expiry) is recorded with the claim before any byte is sent, so whoever resumes the item (a rerun
after Ctrl-C, SIGTERM or SIGKILL, or a batch taking over a lapsed claim) uploads to that same
target, which storage treats as an overwrite of the same key, instead of creating a second video.

Fencing: taking a claim bumps the row's ``generation`` and hands it to the claimant, and every
:meth:`Journal.record` is a compare-and-set on it (and on the owner), so a process that lost its
claim (frozen past its lease while another took the item over) writes nothing: ``record``
answers False and the caller follows the item's new owner instead.

SQLite runs in WAL mode with ``synchronous=NORMAL``: a commit survives the process being killed
(the OS still has it), and readers never block the writer. All calls run on one worker thread
so the event loop never waits on the disk. Every SQLite failure surfaces as
:class:`~guru_async.JournalError` naming the journal's path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sqlite3
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from attrs import field, frozen

from ._errors import JournalError

# How long a claim stays live without being renewed. Long enough that a busy event loop never
# loses a claim it still works on; a crashed process on the same host is detected sooner (its
# pid is gone), so this bounds only the wait after a crash on another machine.
LEASE_SECONDS = 60.0
# A writer waiting for another connection's transaction gives up after this long.
BUSY_TIMEOUT_MS = 30_000

_COLUMNS = {
    "key": "TEXT PRIMARY KEY",
    "state": "TEXT NOT NULL",
    "video_id": "TEXT",
    "analysis": "TEXT",
    "error_type": "TEXT",
    "error": "TEXT",
    "updated_at": "REAL NOT NULL",
    "owner": "TEXT",
    "lease_until": "REAL",
    "generation": "INTEGER NOT NULL DEFAULT 0",
    "upload_url": "TEXT",
    "upload_fields": "TEXT",
    "upload_expires": "REAL",
}
# Columns added after 0.1 (owner, lease_until) and 0.2 (the rest): older journals gain them on
# open, and keep working (an old "created" row has no target: its item gets a new video).
_ADDED_COLUMNS = (
    "owner",
    "lease_until",
    "generation",
    "upload_url",
    "upload_fields",
    "upload_expires",
)
# An entry's columns (see _entry), then what a claim also reads.
_SELECT_ENTRY = (
    "SELECT state, video_id, analysis, error_type, error, upload_url, upload_fields, "
    "upload_expires FROM items WHERE key = ?"
)
_SELECT_CLAIM = (
    "SELECT state, video_id, analysis, error_type, error, upload_url, upload_fields, "
    "upload_expires, owner, lease_until, generation FROM items WHERE key = ?"
)
_SCHEMA = "CREATE TABLE IF NOT EXISTS items ({})".format(
    ", ".join(f"{name} {kind}" for name, kind in _COLUMNS.items())
)
_META = "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)"
# Finished analyses' durations per service (see analysis_samples): what a rerun learns from.
_SAMPLES_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS analysis_samples (id INTEGER PRIMARY KEY AUTOINCREMENT, "
    "service TEXT NOT NULL, seconds REAL NOT NULL, width REAL NOT NULL, size INTEGER, "
    "video_seconds REAL, recorded_at REAL NOT NULL)"
)


@frozen
class UploadTarget:
    """Where a created video's content goes: the presigned POST Create Video answered.

    Attributes:
        url: The storage URL.
        fields: The signed form fields, in the order issued.
        expires: The presigned policy's expiry (Unix time), or None when it is not readable.
    """

    url: str = field(repr=False)  # presigned: the signature must not reach logs via repr
    fields: dict[str, str] = field(repr=False)
    expires: float | None


@frozen
class JournalEntry:
    """What the journal knows of one item.

    Attributes:
        state: ``claimed``, ``created``, ``uploaded``, ``done`` or ``error``.
        video_id: The item's video once created.
        analysis: The final analysis as JSON (``done`` only).
        error_type: The last failure's exception type (``error`` only).
        error: The last failure's message (``error`` only).
        target: The video's upload target, kept until its upload is recorded (None in
            journals written before targets were recorded).
    """

    state: str
    video_id: str | None
    analysis: str | None
    error_type: str | None
    error: str | None
    target: UploadTarget | None = None


@frozen
class AnalysisSample:
    """One finished analysis as the journal keeps it (see ``_prediction.DurationSample``)."""

    seconds: float
    width: float
    size: int | None = None
    video_seconds: float | None = None


@frozen
class Claim:
    """The outcome of claiming an item.

    Attributes:
        entry: The item's row as it was when claimed, or None for a new item.
        owned: True when this journal now owns the item and may create its video; False when
            there is nothing to create (the item is ``uploaded`` or ``done``).
        generation: The fencing number every later ``record`` of the item must present: the
            new one when owned, else the row's current one.
        abandoned: The claim was taken over from a run that never released it (it crashed, or
            lost its lease); with ``entry.state == "claimed"`` that run may have created a
            video it never recorded.
    """

    entry: JournalEntry | None
    owned: bool
    generation: int = 0
    abandoned: bool = False


class Journal:
    """The SQLite journal of one batch (safe to reuse across runs, and to share between
    batches and processes on one machine)."""

    # How long a claim stays live without renewal; the batch renews every quarter of it.
    lease_seconds: float = LEASE_SECONDS

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._given = os.fspath(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="guru-journal")
        self._db: sqlite3.Connection | None = None
        self._host = socket.gethostname()
        # Unique per journal object: two batches of one process never mistake their claims.
        self.owner = f"{self._host} {os.getpid()} {uuid.uuid4().hex}"

    async def open(self) -> None:
        """Open (or create) the journal file and prove it can be written.

        Raises:
            JournalError: The path is a folder, cannot be created or written, or holds
                something that is not a batch journal.
        """
        try:
            await self._run(self._open, raw=True)
        except BaseException:
            self._executor.shutdown(wait=False)
            raise

    def _fail(self, reason: str, exc: BaseException | None = None) -> JournalError:
        error = JournalError(
            f"cannot use {self._given!r} as a batch journal: {reason}", path=self._given
        )
        error.__cause__ = exc
        return error

    def _open(self) -> None:
        if self.path.is_dir():
            raise self._fail("it is a folder; give a file path such as 'batch.db' inside it")
        _create_private(self.path)
        try:
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise self._fail(_reason(exc), exc) from exc
        try:
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
            if tables and "items" not in tables:
                # Someone else's database: changing it in any way would be a nasty surprise.
                raise self._fail("it is an SQLite database, but not a batch journal")
            _switch_to_wal(db)
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(_SCHEMA)
            db.execute(_META)
            self._migrate(db)
            # Prove the journal can be written now, before any video is created: a read-only
            # file or folder fails here rather than after the first upload.
            db.execute(
                "INSERT INTO meta (name, value) VALUES ('opened_at', ?) "
                "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                (str(time.time()),),
            )
        except sqlite3.Error as exc:
            db.close()
            raise self._fail(_reason(exc), exc) from exc
        except BaseException:
            db.close()
            raise
        self._db = db

    def _migrate(self, db: sqlite3.Connection) -> None:
        """Add the columns an older journal lacks, in one transaction: batches opening one
        old journal together add each column once."""
        db.execute("BEGIN IMMEDIATE")
        try:
            columns = {row[1] for row in db.execute("PRAGMA table_info(items)")}
            missing = set(_COLUMNS) - columns
            if missing - set(_ADDED_COLUMNS):
                raise self._fail("it is an SQLite database, but not a batch journal")
            for name in _ADDED_COLUMNS:
                if name in missing:
                    db.execute(f"ALTER TABLE items ADD COLUMN {name} {_COLUMNS[name]}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        """Close the database and its thread."""
        try:
            if self._db is not None:
                await self._run(self._db.close)
                self._db = None
        finally:
            self._executor.shutdown(wait=True)

    async def _run(self, fn: Any, *args: Any, raw: bool = False) -> Any:
        # Shielded: a caller cancelled (Ctrl-C) while its write waits or runs does not drop
        # the write; it lands before the journal closes (one thread runs them in order).
        work = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            work.add_done_callback(_consume)  # nobody awaits it now: no "never retrieved"
            raise
        except sqlite3.Error as exc:
            if raw:
                raise
            # A full disk, a file deleted or locked too long: the batch stops with this.
            raise JournalError(
                f"batch journal {self._given!r} failed: {exc}", path=self._given
            ) from exc

    async def get(self, key: str) -> JournalEntry | None:
        """The entry for ``key``, or None if the item was never started."""
        row = await self._run(self._get, key)
        return None if row is None else _entry(row)

    def _get(self, key: str) -> tuple[Any, ...] | None:
        assert self._db is not None
        cur = self._db.execute(_SELECT_ENTRY, (key,))
        row: tuple[Any, ...] | None = cur.fetchone()
        return row

    async def claim(self, key: str, *, replacing: str | None = None) -> Claim | None:
        """Claim ``key`` for this journal, or None while another live claimant holds it.

        Args:
            key: The item's key.
            replacing: A video id known to be gone (404): an ``uploaded`` or ``done`` row still
                naming it is claimed, so a new video can replace it.
        """
        result: Claim | None = await self._run(self._claim, key, replacing)
        return result

    def _claim(self, key: str, replacing: str | None) -> Claim | None:
        db = self._db
        assert db is not None
        now = time.time()
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute(_SELECT_CLAIM, (key,)).fetchone()
            entry = None if row is None else _entry(row[:8])
            owner, lease_until, generation = (None, None, 0) if row is None else row[8:]
            if owner is not None and self._alive(owner, lease_until, now):
                db.execute("COMMIT")
                return None
            if (
                entry is not None
                and entry.state in ("uploaded", "done")
                and (replacing is None or entry.video_id != replacing)
            ):
                db.execute("COMMIT")
                return Claim(entry, owned=False, generation=generation)
            db.execute(
                "INSERT INTO items (key, state, updated_at, owner, lease_until, generation) "
                "VALUES (?, 'claimed', ?, ?, ?, 1) ON CONFLICT(key) DO UPDATE SET "
                "owner = excluded.owner, lease_until = excluded.lease_until, "
                "generation = items.generation + 1",
                (key, now, self.owner, now + self.lease_seconds),
            )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return Claim(entry, owned=True, generation=generation + 1, abandoned=owner is not None)

    def _alive(self, owner: str, lease_until: float | None, now: float) -> bool:
        if lease_until is None or lease_until <= now:
            return False
        try:
            host, pid_text, _ = owner.split(" ", 2)
            pid = int(pid_text)
        except ValueError:
            return True
        # A claim whose process is gone (it crashed) is taken over now, not when its lease
        # runs out; a pid is only meaningful on its own host.
        return host != self._host or pid == os.getpid() or _pid_exists(pid)

    async def renew(self) -> None:
        """Extend the lease of every claim this journal holds."""
        await self._run(self._renew)

    def _renew(self) -> None:
        assert self._db is not None
        self._db.execute(
            "UPDATE items SET lease_until = ? WHERE owner = ?",
            (time.time() + self.lease_seconds, self.owner),
        )

    async def release_all(self) -> None:
        """Give up every claim this journal still holds (its batch is ending)."""
        await self._run(self._release_all)

    def _release_all(self) -> None:
        assert self._db is not None
        self._db.execute(
            "UPDATE items SET owner = NULL, lease_until = NULL WHERE owner = ?", (self.owner,)
        )

    async def record(
        self,
        key: str,
        state: str,
        *,
        generation: int,
        video_id: str | None = None,
        analysis: str | None = None,
        error: BaseException | None = None,
        target: UploadTarget | None = None,
    ) -> bool:
        """Move ``key`` to ``state`` if the caller still holds the item; False if it does not.

        A compare-and-set: the row must still carry ``generation`` (from the caller's
        :class:`Claim`) and be owned by this journal or by nobody, so a writer whose claim was
        taken over changes nothing. ``claimed`` (a create is about to be sent) and ``created``
        keep the claim; any later state releases it. The video id is kept once known; the
        upload target until ``uploaded`` or ``done`` (``error`` keeps it: a rerun resumes the
        same upload).
        """
        error_type = None if error is None else type(error).__name__
        message = None if error is None else str(error)
        written: bool = await self._run(
            self._record, key, state, generation, video_id, analysis, error_type, message, target
        )
        return written

    def _record(
        self,
        key: str,
        state: str,
        generation: int,
        video_id: str | None,
        analysis: str | None,
        error_type: str | None,
        error: str | None,
        target: UploadTarget | None,
    ) -> bool:
        assert self._db is not None
        keep = state not in ("uploaded", "done")
        cur = self._db.execute(
            "UPDATE items SET state = :state, video_id = COALESCE(:video_id, video_id), "
            "analysis = :analysis, error_type = :error_type, error = :error, "
            "updated_at = :now, "
            "owner = CASE WHEN :held THEN owner END, "
            "lease_until = CASE WHEN :held THEN lease_until END, "
            "upload_url = CASE WHEN :given THEN :url WHEN :keep THEN upload_url END, "
            "upload_fields = CASE WHEN :given THEN :fields WHEN :keep THEN upload_fields END, "
            "upload_expires = CASE WHEN :given THEN :expires WHEN :keep THEN upload_expires END "
            "WHERE key = :key AND generation = :generation "
            "AND (owner IS NULL OR owner = :owner)",
            {
                "state": state,
                "video_id": video_id,
                "analysis": analysis,
                "error_type": error_type,
                "error": error,
                "now": time.time(),
                "held": state in ("claimed", "created"),
                "given": target is not None,
                "keep": keep,
                "url": None if target is None else target.url,
                "fields": None if target is None else json.dumps(target.fields),
                "expires": None if target is None else target.expires,
                "key": key,
                "generation": generation,
                "owner": self.owner,
            },
        )
        return cur.rowcount == 1

    # -- analysis durations, so a rerun's polls start on what earlier runs learned ------------

    async def analysis_samples(self, service: str, *, limit: int) -> list[AnalysisSample]:
        """The latest ``limit`` analyses recorded for ``service``, oldest first."""
        rows: list[AnalysisSample] = await self._run(self._analysis_samples, service, limit)
        return rows

    def _analysis_samples(self, service: str, limit: int) -> list[AnalysisSample]:
        db = self._samples_db()
        rows = db.execute(
            "SELECT seconds, width, size, video_seconds FROM analysis_samples WHERE service = ? "
            "ORDER BY id DESC LIMIT ?",
            (service, limit),
        ).fetchall()
        return [AnalysisSample(*row) for row in reversed(rows)]

    async def add_analysis_sample(self, service: str, sample: AnalysisSample, *, keep: int) -> None:
        """Record one analysis's duration for ``service``, keeping its latest ``keep``."""
        await self._run(self._add_analysis_sample, service, sample, keep)

    def _add_analysis_sample(self, service: str, sample: AnalysisSample, keep: int) -> None:
        db = self._samples_db()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "INSERT INTO analysis_samples (service, seconds, width, size, video_seconds, "
                "recorded_at) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    service,
                    sample.seconds,
                    sample.width,
                    sample.size,
                    sample.video_seconds,
                    time.time(),
                ),
            )
            # One transaction with the insert: the table never holds more than ``keep`` of it.
            db.execute(
                "DELETE FROM analysis_samples WHERE service = ? AND id <= (SELECT id FROM "
                "analysis_samples WHERE service = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (service, service, keep),
            )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _samples_db(self) -> sqlite3.Connection:
        # Created when first used (a no-op once it exists), so journals of earlier versions
        # gain it on their next run.
        assert self._db is not None
        self._db.execute(_SAMPLES_SCHEMA)
        return self._db


def _entry(row: tuple[Any, ...]) -> JournalEntry:
    """A JournalEntry from the columns of _SELECT_ENTRY."""
    state, video_id, analysis, error_type, error, url, fields, expires = row
    target = None
    if url is not None and fields is not None:
        target = UploadTarget(url, json.loads(fields), expires)
    return JournalEntry(state, video_id, analysis, error_type, error, target)


def _create_private(path: Path) -> None:
    """Create a new journal file readable by its user only: it holds presigned upload targets
    (SQLite gives its -wal and -shm files the same mode). An existing file is left as it is,
    and any other failure is SQLite's to report, as it would without this."""
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _consume(work: asyncio.Future[Any]) -> None:
    if not work.cancelled():
        work.exception()


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, owned by someone else
    return True


def _reason(exc: sqlite3.Error) -> str:
    message = str(exc)
    if message == "unable to open database file":
        return f"{message} (its folder must exist and be writable)"
    if message == "file is not a database":
        return "the file exists but is not an SQLite database"
    return message


def item_key(service: str, path: Path, fields: dict[str, Any]) -> str:
    """The journal key of an item.

    It holds the service and account it goes to (a journal reused against another backend must
    not restore that backend's ids), the file's absolute path, the metadata it is sent with,
    and the content's identity as the file's size and modification time in nanoseconds: a file
    overwritten with new content gets a new key, so it is uploaded again. Not a hash of the
    content: that would read every file twice (once to hash, once to upload), and a rerun over
    a large batch would reread everything just to skip it. Not the inode or ctime either:
    restoring or copying the folder (new inodes, same content) and ``chmod`` (new ctime) must
    not upload everything again.

    Raises:
        OSError: The file cannot be read (it vanished, say).
    """
    absolute = path.resolve()
    st = absolute.stat()
    content = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return json.dumps(
        [service, str(absolute), fields, content], sort_keys=True, separators=(",", ":")
    )


def _switch_to_wal(db: sqlite3.Connection) -> None:
    """Put the journal in WAL mode, waiting for other openers as busy_timeout would.

    Switching the journal mode takes an exclusive lock and SQLite answers "database is locked"
    at once instead of calling its busy handler, so batches opening one new journal together
    would fail; the switch is retried until the same BUSY_TIMEOUT_MS.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    pause = 0.001
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(pause)  # in the journal's own thread, never the event loop's
        pause = min(pause * 2, 0.05)
