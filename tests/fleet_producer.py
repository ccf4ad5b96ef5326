"""Run one journaled fleet batch and print one JSON line per result, flushed at once.

Usage: ``python tests/fleet_producer.py REDIS_URL JOURNAL FILE...``

tests/test_fleet.py kills this process mid-batch and runs it again with the same journal to
check that the rerun finishes the batch without uploading anything twice.
"""

from __future__ import annotations

import asyncio
import json
import sys

from guru_async.fleet import Fleet


async def run(redis_url: str, journal: str, files: list[str]) -> None:
    """Run the batch, printing each result as soon as it arrives."""
    async with Fleet(redis_url, heartbeat=2, check_interval=1.0) as fleet:
        async for r in fleet.batch_upload(files, journal=journal, activity="squat"):
            line = {
                "item": str(r.item),
                "video_id": r.video_id,
                "ok": r.ok,
                "error": None if r.error is None else f"{type(r.error).__name__}: {r.error}",
            }
            print(json.dumps(line), flush=True)


def main(argv: list[str]) -> int:
    """Parse ``REDIS_URL JOURNAL FILE...`` and run the batch."""
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    asyncio.run(run(argv[0], argv[1], argv[2:]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
