"""Streaming a video or overlay from its presigned ``uri`` to a file, atomically, and handing a
storage redirect back (``Redirected``) so the client checks each hop before following it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any, TypeVar

import aiohttp
from yarl import URL

from ._errors import BodyAbort, GuruConnectionError, GuruError
from ._progress import ProgressReporter
from ._types import ProgressCallback
from ._urls import REDIRECT_STATUSES

CHUNK_SIZE = 1024 * 1024

T = TypeVar("T")


class Redirected(GuruError):
    """A storage redirect, handed back to the caller so it checks the next hop's URL before
    following it (aiohttp would follow any hop, plain http to another host included)."""

    def __init__(self, location: URL) -> None:
        super().__init__("redirected")
        self.location = location


def redirect_target(current: URL, status: int, location: str | None) -> Redirected | None:
    """The redirect a 3xx response asks for, or None when it is not one."""
    if status not in REDIRECT_STATUSES or not location:
        return None
    return Redirected(current.join(URL(location, encoded=True)))


def _create_temp(dest: Path) -> tuple[IO[bytes], Path]:
    # os.open with 0o666 lets the umask decide the mode, as curl and shells do; mkstemp would
    # force 0600 on a file the user expects to share like any other download.
    for _ in range(100):
        tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(6)}.part")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        return os.fdopen(fd, "wb"), tmp
    raise FileExistsError(f"could not create a temporary file beside {str(dest)!r}")


async def _local(fn: Callable[..., T], *args: Any) -> T:
    """Run a file operation in the executor; its OSError is the caller's local problem (a full
    disk, no permission), so it ends the call as it is instead of being retried as a network
    failure."""
    try:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)
    except OSError as exc:
        raise BodyAbort(exc) from None


def stream_to_file(
    dest: Path, *, progress: ProgressCallback | None, what: str
) -> Callable[[aiohttp.ClientResponse], Awaitable[Path]]:
    """A transport stream handler writing the body to ``dest`` via a temporary file + rename,
    so ``dest`` is either the whole file or untouched. Reports progress monotonically across
    attempts; errors of the local file, and of the progress callback, are raised as they are,
    never retried."""
    report = ProgressReporter(progress)

    async def handle(resp: aiohttp.ClientResponse) -> Path:
        expected = resp.content_length
        received = 0
        try:
            # Not in the executor: a cancellation there would leak the file the thread opens.
            out, tmp = _create_temp(dest)
        except OSError as exc:
            raise BodyAbort(exc) from None
        try:
            try:
                async for chunk in resp.content.iter_chunked(CHUNK_SIZE):
                    await _local(out.write, chunk)
                    received += len(chunk)
                    await report(received, expected or 0)
                await _local(out.close)  # flushes: a full disk may only show here
            finally:
                with contextlib.suppress(OSError):
                    out.close()
            if expected is not None and received != expected:
                raise GuruConnectionError(
                    f"{what}: got {received} of {expected} bytes; the download was cut short"
                )
            await _local(os.replace, tmp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return dest

    return handle
