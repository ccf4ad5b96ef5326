"""Streaming a video or overlay from its presigned ``uri`` to a file, atomically."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from ._errors import GuruConnectionError
from ._upload import ProgressCallback

CHUNK_SIZE = 1024 * 1024


def stream_to_file(
    dest: Path, *, progress: ProgressCallback | None, what: str
) -> Callable[[aiohttp.ClientResponse], Awaitable[Path]]:
    """A transport stream handler writing the body to ``dest`` via a temporary file + rename,
    so ``dest`` is either the whole file or untouched."""

    async def handle(resp: aiohttp.ClientResponse) -> Path:
        expected = resp.content_length
        folder = dest.parent
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=folder)
        tmp = Path(tmp_name)
        loop = asyncio.get_running_loop()
        received = 0
        try:
            with os.fdopen(fd, "wb") as out:
                async for chunk in resp.content.iter_chunked(CHUNK_SIZE):
                    await loop.run_in_executor(None, out.write, chunk)
                    received += len(chunk)
                    if progress is not None:
                        result = progress(received, expected or 0)
                        if inspect.isawaitable(result):
                            await result
            if expected is not None and received != expected:
                raise GuruConnectionError(
                    f"{what}: got {received} of {expected} bytes; the download was cut short"
                )
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return dest

    return handle
