"""Wait for a go line on stdin, then make one API call with a FileTokenStore; print its token.

Usage: ``python tests/token_worker.py TOKEN_FILE``

The endpoints and credentials come from GURU_BASE_URL, GURU_TOKEN_URL, GURU_CLIENT_ID and
GURU_CLIENT_SECRET. tests/test_auth.py starts several of these, waits until each has printed
``ready`` (imports done), then releases them together to check that processes starting at once
make one token request between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

from guru_async import FileTokenStore, GuruSession, NotFoundError


async def run(token_file: str) -> None:
    """Call the API once after the go line, through a FileTokenStore on ``token_file``."""
    async with GuruSession(token_store=FileTokenStore(token_file)) as guru:
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        # The call was authorized (a 404, not a 401): that is all this worker checks.
        with contextlib.suppress(NotFoundError):
            await guru.get_video("0b8e4c1e-0000-4000-8000-000000000000")
        print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(run(sys.argv[1]))
