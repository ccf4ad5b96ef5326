"""A batch's journal: each item's progress in SQLite, so a crashed batch resumes, never repeats.

One row per input item, keyed by what identifies the work (the file's absolute path and the
metadata it is sent with). States move forward only:

    created  -> the video exists (id recorded) but its upload may not have finished
    uploaded -> storage accepted the content; only the analysis is awaited
    done     -> the final result (analysis JSON, or the error) is recorded

SQLite runs in WAL mode with ``synchronous=NORMAL``: a commit survives the process being killed
(the OS still has it), and readers never block the writer. All calls run on one worker thread
so the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from attrs import frozen

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    key        TEXT PRIMARY KEY,
    state      TEXT NOT NULL,
    video_id   TEXT,
    analysis   TEXT,
    error_type TEXT,
    error      TEXT,
    updated_at REAL NOT NULL
)
"""


@frozen
class JournalEntry:
    """What the journal knows of one item."""

    state: str
    video_id: str | None
    analysis: str | None
    error_type: str | None
    error: str | None


class Journal:
    """The SQLite journal of one batch (safe to reuse across runs of the same batch)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="guru-journal")
        self._db: sqlite3.Connection | None = None

    async def open(self) -> None:
        """Open (or create) the journal file."""
        await self._run(self._open)

    def _open(self) -> None:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        db.execute(_SCHEMA)
        self._db = db

    async def close(self) -> None:
        """Close the database and its thread."""
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._executor.shutdown(wait=True)

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def get(self, key: str) -> JournalEntry | None:
        """The entry for ``key``, or None if the item was never started."""
        row = await self._run(self._get, key)
        return None if row is None else JournalEntry(*row)

    def _get(self, key: str) -> tuple[Any, ...] | None:
        assert self._db is not None
        cur = self._db.execute(
            "SELECT state, video_id, analysis, error_type, error FROM items WHERE key = ?", (key,)
        )
        row: tuple[Any, ...] | None = cur.fetchone()
        return row

    async def record(
        self,
        key: str,
        state: str,
        *,
        video_id: str | None = None,
        analysis: str | None = None,
        error: BaseException | None = None,
    ) -> None:
        """Move ``key`` to ``state``, keeping its video id once known."""
        error_type = None if error is None else type(error).__name__
        message = None if error is None else str(error)
        await self._run(self._record, key, state, video_id, analysis, error_type, message)

    def _record(
        self,
        key: str,
        state: str,
        video_id: str | None,
        analysis: str | None,
        error_type: str | None,
        error: str | None,
    ) -> None:
        assert self._db is not None
        self._db.execute(
            "INSERT INTO items (key, state, video_id, analysis, error_type, error, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET state = excluded.state, "
            "video_id = COALESCE(excluded.video_id, items.video_id), "
            "analysis = excluded.analysis, error_type = excluded.error_type, "
            "error = excluded.error, updated_at = excluded.updated_at",
            (key, state, video_id, analysis, error_type, error, time.time()),
        )


def item_key(service: str, path: Path, fields: dict[str, Any]) -> str:
    """The journal key of an item: the service and account it goes to (a journal reused
    against another backend must not restore that backend's ids), its absolute path, and the
    metadata it is sent with."""
    return json.dumps([service, str(path.resolve()), fields], sort_keys=True, separators=(",", ":"))
