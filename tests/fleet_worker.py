"""One fleet process for tests/test_fleet_*.py: print ``ready``, wait for a go line on stdin,
make API calls through the fleet's Redis pieces, print one JSON line with the outcome.

Usage:
    ``python tests/fleet_worker.py tokens REDIS_URL CALLS LOCK_TIMEOUT``: CALLS concurrent
    calls through a ``RedisTokenStore``.
    ``python tests/fleet_worker.py rate REDIS_URL RATE SECONDS``: 16 tasks calling in a loop
    for SECONDS under a ``RedisRateLimiter(rate=RATE)``.

The endpoints and credentials come from GURU_BASE_URL, GURU_TOKEN_URL, GURU_CLIENT_ID and
GURU_CLIENT_SECRET. Every call is ``get_video`` of a video that does not exist: a 404 proves
the call was authorized and sent, which is all these tests count.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from guru_async import GuruSession, MemoryTokenStore, NotFoundError
from guru_async.fleet import RedisRateLimiter, RedisTokenStore

MISSING = "0b8e4c1e-0000-4000-8000-000000000000"


async def call(guru: GuruSession) -> str | None:
    """One API call; None when it was authorized (a 404), else the error."""
    try:
        await guru.get_video(MISSING)
    except NotFoundError:
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "unexpected success"


async def tokens(url: str, calls: int, lock_timeout: float) -> dict[str, object]:
    """Make ``calls`` concurrent calls with the token kept in Redis."""
    async with (
        RedisTokenStore(url, lock_timeout=lock_timeout) as store,
        GuruSession(token_store=store) as guru,
    ):
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        errors = [e for e in await asyncio.gather(*(call(guru) for _ in range(calls))) if e]
    return {"calls": calls, "errors": errors}


async def rate(url: str, per_second: float, seconds: float) -> dict[str, object]:
    """Call in a loop from 16 tasks for ``seconds`` under the fleet's ceiling."""
    async with (
        RedisRateLimiter(url, rate=per_second) as limiter,
        GuruSession(token_store=MemoryTokenStore(), limiter=limiter) as guru,
    ):
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        stop = time.monotonic() + seconds
        errors: list[str] = []
        sent = 0

        async def loop() -> None:
            nonlocal sent
            while time.monotonic() < stop:
                error = await call(guru)
                sent += 1
                if error:
                    errors.append(error)

        await asyncio.gather(*(loop() for _ in range(16)))
    return {"calls": sent, "errors": errors}


def main(argv: list[str]) -> int:
    """Run the mode named by ``argv[0]`` and print its outcome as one JSON line."""
    mode, url, a, b = argv
    if mode == "tokens":
        outcome = asyncio.run(tokens(url, int(a), float(b)))
    else:
        outcome = asyncio.run(rate(url, float(a), float(b)))
    print(json.dumps(outcome), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
