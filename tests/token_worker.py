"""Wait for a go line on stdin, make one API call through a shared token store, print the
outcome as one JSON line.

Usage: ``python tests/token_worker.py STORE [--retries N] [--lock-timeout S]``

STORE is a token file (``FileTokenStore``) or a ``redis://`` URL (``RedisTokenStore``, with
``--lock-timeout``). ``--retries`` is the session's ``max_retries`` (its default if not given).
The endpoints and credentials come from GURU_BASE_URL, GURU_TOKEN_URL, GURU_CLIENT_ID and
GURU_CLIENT_SECRET. The call is ``get_video`` of a video that does not exist: a 404 proves it
was authorized, which prints ``{"error": null}``; any other error prints its type, status and
``retry_after``. tests/token_procs.py starts several of these, waits until each has printed
``ready`` (imports done), then releases them, to check what processes sharing one store ask of
the token endpoint.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from contextlib import AsyncExitStack
from typing import Any

from guru_async import FileTokenStore, GuruError, GuruSession, NotFoundError, TokenStore

MISSING = "0b8e4c1e-0000-4000-8000-000000000000"


async def run(store_arg: str, retries: int | None, lock_timeout: float) -> dict[str, Any]:
    """Call the API once after the go line, through the store ``store_arg`` names."""
    async with AsyncExitStack() as stack:
        store: TokenStore
        if store_arg.startswith("redis://"):
            from guru_async.fleet import RedisTokenStore

            store = await stack.enter_async_context(
                RedisTokenStore(store_arg, lock_timeout=lock_timeout)
            )
        else:
            store = FileTokenStore(store_arg)
        guru = await stack.enter_async_context(GuruSession(token_store=store, max_retries=retries))
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        try:
            await guru.get_video(MISSING)
        except NotFoundError:
            return {"error": None}
        except GuruError as exc:
            return {
                "error": type(exc).__name__,
                "status": getattr(exc, "status", None),
                "retry_after": getattr(exc, "retry_after", None),
            }
        return {"error": "unexpected success"}


def main(argv: list[str]) -> int:
    """Parse ``argv``, run, print the outcome."""
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("--retries", type=int, default=None)
    parser.add_argument("--lock-timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    outcome = asyncio.run(run(args.store, args.retries, args.lock_timeout))
    print(json.dumps(outcome), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
