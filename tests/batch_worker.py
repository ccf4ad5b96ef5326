"""Run one journaled batch and print one JSON line per result, flushed at once.

Usage: ``python tests/batch_worker.py JOURNAL CONCURRENCY FILE...``

The endpoints and credentials come from GURU_BASE_URL, GURU_TOKEN_URL, GURU_CLIENT_ID and
GURU_CLIENT_SECRET. tests/test_batch.py kills this process mid-batch and runs it again with the
same journal to check that the batch resumes without uploading anything twice. With
BATCH_WORKER_FSIZE_LIMIT=BYTES the process may not write files larger than that (RLIMIT_FSIZE):
the journal's writes fail as on a full disk. With BATCH_WORKER_LEASE_SECONDS=S its journal claims
lapse S seconds after their last renewal (60 by default), so a test that freezes it (SIGSTOP)
sees them lapse quickly.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import sys

from guru_async import GuruSession, MemoryTokenStore, PollPolicy
from guru_async._journal import Journal


async def run(journal: str, concurrency: int, files: list[str]) -> None:
    """Run the batch, printing each result as soon as it arrives."""
    polls = PollPolicy(interval=0.02, max_interval=0.1)
    async with GuruSession(token_store=MemoryTokenStore(), poll_policy=polls) as guru:
        results = guru.batch_upload(
            files, upload_concurrency=concurrency, journal=journal, poll_rate=500, activity="squat"
        )
        async for r in results:
            line = {
                "item": str(r.item),
                "video_id": r.video_id,
                "ok": r.ok,
                "status": None if r.analysis is None else str(r.analysis.status),
                "error": None if r.error is None else f"{type(r.error).__name__}: {r.error}",
            }
            print(json.dumps(line), flush=True)


def main(argv: list[str]) -> int:
    """Parse ``JOURNAL CONCURRENCY FILE...`` and run the batch."""
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    limit = os.environ.get("BATCH_WORKER_FSIZE_LIMIT")
    if limit is not None:
        # Without this the kernel kills the process (SIGXFSZ) instead of failing the write.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), resource.RLIM_INFINITY))
    lease = os.environ.get("BATCH_WORKER_LEASE_SECONDS")
    if lease is not None:
        Journal.lease_seconds = float(lease)
    asyncio.run(run(argv[0], int(argv[1]), argv[2:]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
