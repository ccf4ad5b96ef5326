"""One journaled fleet batch for the chaos harness, run as its own process (so it can be killed).

Usage: ``python tests/chaos/producer.py REDIS_URL JOURNAL HEARTBEAT CHECK_INTERVAL LIST_FILE``

LIST_FILE holds one path per line. Prints one JSON line per event, flushed at once, each with
``t`` (``time.monotonic()``, one clock for every process of the machine): ``{"ready": true}``
once the Fleet is open, one ``{"item", "video_id", "ok", "error"}`` per result, and
``{"done": true}`` when the batch has ended.

The account comes from ``GURU_CLIENT_ID`` / ``GURU_BASE_URL`` (the workers' environment); when
``Fleet`` takes ``client_id=`` / ``base_url=`` they are passed as well, so the same script runs
against a Fleet with or without account namespacing.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import sys
import time
from typing import Any

from guru_async.fleet import Fleet


def emit(**fields: Any) -> None:
    """Print one event line with the time it happened."""
    print(json.dumps({"t": time.monotonic(), **fields}), flush=True)


def account_options() -> dict[str, Any]:
    """``client_id=`` / ``base_url=`` from the environment, for a Fleet that takes them."""
    accepted = inspect.signature(Fleet).parameters
    options: dict[str, Any] = {}
    for name, variable in (("client_id", "GURU_CLIENT_ID"), ("base_url", "GURU_BASE_URL")):
        if name in accepted and os.environ.get(variable):
            options[name] = os.environ[variable]
    return options


async def run(redis_url: str, journal: str, heartbeat: int, check: float, files: list[str]) -> None:
    """Run the batch, printing each result as soon as it arrives."""
    fleet = Fleet(redis_url, heartbeat=heartbeat, check_interval=check, **account_options())
    async with fleet:
        emit(ready=True)
        async for r in fleet.batch_upload(files, journal=journal, activity="squat"):
            error = None if r.error is None else f"{type(r.error).__name__}: {r.error}"
            emit(item=str(r.item), video_id=r.video_id, ok=r.ok, error=error)
    emit(done=True)


def main(argv: list[str]) -> int:
    """Parse the arguments and run the batch."""
    if len(argv) != 5:
        print(__doc__, file=sys.stderr)
        return 2
    url, journal, heartbeat, check, listing = argv
    with open(listing, encoding="utf-8") as f:
        files = [line.strip() for line in f if line.strip()]
    asyncio.run(run(url, journal, int(heartbeat), float(check), files))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
