"""Streaming a video to the presigned storage URL as ``multipart/form-data``.

aiohttp's ``FormData`` cannot give a streamed file an exact ``Content-Length`` (aio-libs/aiohttp
#7174) and falls back to chunked encoding, which S3-style storage rejects. So the body is
written here: the signed fields first and unchanged, then the ``file`` part streamed from disk
in chunks, then the closing boundary, with its length computed up front.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import inspect
import json
import math
import mimetypes
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import IO, Union

from multidict import CIMultiDictProxy

from ._errors import APIError, UploadError, error_for_status
from ._retry import parse_retry_after
from ._transport import BodyAbort

ProgressCallback = Callable[[int, int], Awaitable[None] | None]
"""Called as ``progress(sent_bytes, total_bytes)`` while a file is sent; may be async."""

FileSource = Union[str, "os.PathLike[str]", IO[bytes]]
"""A path to a video file, or a binary file object opened for reading."""

CHUNK_SIZE = 256 * 1024
# A presign that runs out within this margin is replaced rather than tried: an upload that
# starts seconds before expiry would be refused by storage after the bytes went out.
EXPIRY_MARGIN = 5.0


def check_file(path: str | os.PathLike[str]) -> Path:
    """Return ``path`` as a Path, raising the built-in error a user expects when it is unusable."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"expected a file path (str or os.PathLike), got {type(path).__name__}")
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"video file not found: {str(p)!r}")
    if p.is_dir():
        raise IsADirectoryError(f"expected a video file but {str(p)!r} is a folder")
    if not os.access(p, os.R_OK):
        raise PermissionError(f"video file is not readable: {str(p)!r}")
    return p


class UploadSource:
    """A file to upload, measured once, re-readable from its start for each attempt."""

    def __init__(self, source: FileSource) -> None:
        if isinstance(source, (str, os.PathLike)):
            self.path: Path | None = check_file(source)
            self.file: IO[bytes] | None = None
            self.name = self.path.name
            self.start = 0
            self.size = self.path.stat().st_size
        else:
            if not (hasattr(source, "read") and hasattr(source, "seek")):
                raise TypeError(
                    "expected a path or a binary file object with read() and seek(), "
                    f"got {type(source).__name__}"
                )
            if isinstance(source.read(0), str):
                raise TypeError("the file object is open in text mode; open it with 'rb'")
            self.path = None
            self.file = source
            self.name = os.path.basename(str(getattr(source, "name", "") or "")) or "video"
            self.start = source.tell()
            self.size = source.seek(0, os.SEEK_END) - self.start
            source.seek(self.start)

    def open(self) -> IO[bytes]:
        """A handle positioned at the start of the content."""
        if self.path is not None:
            return self.path.open("rb")
        assert self.file is not None
        self.file.seek(self.start)
        return self.file

    def close(self, handle: IO[bytes]) -> None:
        """Close a handle this source opened (never the caller's own file object)."""
        if self.path is not None:
            handle.close()


def _quote(value: str) -> str:
    # The HTML form encoding of names in Content-Disposition, as browsers and S3 expect.
    return value.replace("\r", "%0D").replace("\n", "%0A").replace('"', "%22")


class MultipartUpload:
    """The exact bytes of one presigned-POST upload, streamed for each attempt."""

    def __init__(
        self,
        fields: dict[str, str],
        source: UploadSource,
        *,
        progress: ProgressCallback | None = None,
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        self.source = source
        self.boundary = "guru-" + secrets.token_hex(16)
        self._progress = progress
        self._chunk_size = chunk_size
        parts = []
        for name, value in fields.items():
            parts.append(
                f'--{self.boundary}\r\nContent-Disposition: form-data; name="{_quote(name)}"'
                f"\r\n\r\n{value}\r\n"
            )
        content_type = mimetypes.guess_type(source.name)[0] or "application/octet-stream"
        parts.append(
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{_quote(source.name)}"\r\nContent-Type: {content_type}\r\n\r\n'
        )
        self._open: set[IO[bytes]] = set()
        self.last_activity = time.monotonic()
        self.head = "".join(parts).encode("utf-8")
        self.tail = f"\r\n--{self.boundary}--\r\n".encode("ascii")
        self.content_length = len(self.head) + source.size + len(self.tail)

    @property
    def headers(self) -> dict[str, str]:
        """The headers that describe the body: an exact length, never chunked."""
        return {
            "Content-Type": f"multipart/form-data; boundary={self.boundary}",
            "Content-Length": str(self.content_length),
        }

    def body(self) -> AsyncIterator[bytes]:
        """The body for one attempt: it re-reads the file from its start."""
        self.last_activity = time.monotonic()
        return self._chunks()

    def idle_since(self) -> float:
        """When the body last made progress; +inf once it is all sent."""
        return self.last_activity

    async def _chunks(self) -> AsyncIterator[bytes]:
        total = self.source.size
        loop = asyncio.get_running_loop()
        handle = await loop.run_in_executor(None, self.source.open)
        self._open.add(handle)
        try:
            yield self.head
            self.last_activity = time.monotonic()
            sent = 0
            await self._report(0, total)
            while sent < total:
                chunk = await loop.run_in_executor(
                    None, handle.read, min(self._chunk_size, total - sent)
                )
                if not chunk:
                    raise _file_changed(self.source, sent)
                sent += len(chunk)
                yield chunk
                # Resumed: aiohttp has written the chunk, so the peer is taking bytes.
                self.last_activity = time.monotonic()
                await self._report(sent, total)
            if await loop.run_in_executor(None, handle.read, 1):
                raise _file_changed(self.source, None)
            yield self.tail
            self.last_activity = math.inf
        finally:
            self._open.discard(handle)
            self.source.close(handle)

    def close_files(self) -> None:
        """Close what an attempt left open: aiohttp may drop a body half-read (a connection
        reset mid-upload) and leave its generator suspended, holding the file."""
        for handle in list(self._open):
            self.source.close(handle)
        self._open.clear()

    async def _report(self, sent: int, total: int) -> None:
        if self._progress is None:
            return
        try:
            result = self._progress(sent, total)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            raise BodyAbort(exc) from None


def _file_changed(source: UploadSource, read: int | None) -> UploadError:
    what = f"{read} bytes" if read is not None else f"more than {source.size} bytes"
    return UploadError(
        f"{source.name!r} changed while uploading: it was {source.size} bytes when the upload "
        f"started, then {what} could be read; upload it again once it is complete",
        status=None,
        code="FileChanged",
    )


def policy_expiration(fields: dict[str, str]) -> float | None:
    """The presigned policy's expiry (Unix time) from its ``policy`` field, if readable."""
    policy = fields.get("policy") or fields.get("Policy")
    if not policy:
        return None
    try:
        doc = json.loads(base64.b64decode(policy, validate=False))
        stamp = doc["expiration"]
        return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
    except (binascii.Error, ValueError, KeyError, TypeError):
        return None


def check_not_expired(fields: dict[str, str], *, video_id: str) -> None:
    """Raise UploadError(code="PolicyExpired") when the presign is (nearly) out of date."""
    expires = policy_expiration(fields)
    if expires is not None and time.time() >= expires - EXPIRY_MARGIN:
        raise UploadError(
            f"the presigned upload for video {video_id} expired; create the video again "
            "(upload_video does this for you)",
            status=None,
            code="PolicyExpired",
        )


_XML_TAG = {name: re.compile(rf"<{name}>([^<]*)</{name}>".encode()) for name in ("Code", "Message")}


def _storage_code(status: int, raw: bytes) -> tuple[str, str]:
    code_match = _XML_TAG["Code"].search(raw)
    message_match = _XML_TAG["Message"].search(raw)
    code = code_match.group(1).decode("utf-8", "replace") if code_match else f"HTTP{status}"
    detail = message_match.group(1).decode("utf-8", "replace")[:300] if message_match else ""
    return code, detail


def download_error(
    status: int, headers: CIMultiDictProxy[str], raw: bytes, *, what: str
) -> APIError:
    """Map a storage error on a download (S3-style XML) to the APIError of its status."""
    code, detail = _storage_code(status, raw)
    return error_for_status(
        status,
        {"message": f"{code}: {detail}" if detail else code, "code": code},
        context=what,
        retry_after=parse_retry_after(headers.get("Retry-After")),
    )


def storage_error(
    status: int, headers: CIMultiDictProxy[str], raw: bytes, *, what: str
) -> UploadError:
    """Map a storage error response to an upload (an S3-style XML body) to UploadError."""
    code, detail = _storage_code(status, raw)
    message = f"{what}: storage refused the upload with HTTP {status} {code}"
    if detail:
        message += f": {detail}"
    return UploadError(
        message,
        status=status,
        code=code,
        retry_after=parse_retry_after(headers.get("Retry-After")),
    )


def presign_expired(exc: UploadError) -> bool:
    """True when storage (or the pre-send check) refused an upload for an expired presign."""
    return exc.code == "PolicyExpired" or (
        exc.code == "AccessDenied" and "expired" in str(exc).lower()
    )
