"""Streaming a video to the presigned storage URL as ``multipart/form-data``.

aiohttp's ``FormData`` cannot give a streamed file an exact ``Content-Length`` (aio-libs/aiohttp
#7174) and falls back to chunked encoding, which S3-style storage rejects. So the body is
written here: the signed fields first and unchanged, then the ``file`` part streamed in chunks,
then the closing boundary, with its length computed up front.

The content comes from an UploadSource: a local file (a path or a file object), an http(s) URL
(its response body piped through, its size from Content-Length), or a StreamSource (an async
stream with a declared size, sent once). Each yields exactly its announced size or fails:
SourceError for a URL or stream, UploadError("FileChanged") for a file, and a local OSError as
it is.

Also here: the checks of what to upload (``is_url``, ``check_file``, ``check_filename``), the GET
of a source URL (``fetch_source``), and the presign's expiry (``policy_expiration``,
``check_not_expired``, ``presign_expired``).
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
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Union

import aiohttp
from yarl import URL

from ._aio import run_owning
from ._error_mapping import describe_network_error, source_status_error
from ._errors import BodyAbort, GuruError, SourceError, UploadError
from ._progress import ProgressReporter
from ._types import ProgressCallback
from ._urls import MAX_REDIRECTS, REDIRECT_STATUSES
from ._validation import check_size

CHUNK_SIZE = 256 * 1024
# A presign that runs out within this margin is replaced rather than tried: an upload that
# starts seconds before expiry would be refused by storage after the bytes went out.
EXPIRY_MARGIN = 5.0


class StreamSource:
    """A web framework's upload or an async byte stream with a declared size, sent without
    being written to disk again.

    For web apps: a Starlette/FastAPI ``UploadFile``, aiohttp's ``FileField`` (from
    ``await request.post()``), an aiohttp multipart part (``BodyPartReader``) or
    ``request.content``, or any ``AsyncIterable[bytes]``::

        video_id = await guru.upload_video(StreamSource(upload), activity="squat")

    A source that can seek is retried like a file: an ``UploadFile`` or a ``FileField`` (both
    hold the upload in a seekable ``.file``, in memory or spooled to disk) or any seekable
    binary file object is read from its position at this call, again for each attempt. A
    stream that cannot seek (a multipart part, ``request.content``, an async generator) is
    one-shot: it is read with ``read_chunk(n)`` when it has one, else with an async ``read(n)``,
    else by iterating it, and its upload is tried once, never retried (one that fails must be
    started again with a fresh stream).

    Args:
        stream: The bytes to upload.
        size: Their exact number; defaults to the stream's own integer ``size`` attribute
            (``UploadFile.size``), else, for a source that can seek, the bytes from its
            position to its end. Storage refuses a body of another length, so a stream that
            ends early or runs long fails the upload with SourceError.
        filename: The name sent to Create Video and storage; defaults to the stream's own
            ``filename`` attribute, else ``"video"``.

    Raises:
        TypeError: ``stream`` is neither readable asynchronously nor a seekable file.
        ValueError: No size given and none on the stream; a negative size, or 0 (an empty
            video cannot be analysed); a size other than what a seekable source holds.
    """

    def __init__(
        self, stream: object, *, size: int | None = None, filename: str | None = None
    ) -> None:
        file = _seekable_file(stream)
        if file is None and not (
            callable(getattr(stream, "read_chunk", None))
            or callable(getattr(stream, "read", None))
            or hasattr(stream, "__aiter__")
        ):
            raise TypeError(
                "StreamSource takes an async byte stream (with async read(n) or read_chunk(n), "
                "or an AsyncIterable[bytes]) or a seekable file (an UploadFile or FileField "
                f"holds one in .file), got {type(stream).__name__}"
            )
        if filename is None:
            own_name = getattr(stream, "filename", None)
            filename = own_name if isinstance(own_name, str) and own_name else None
        self.stream = stream
        self.filename = filename
        # The seekable file behind the stream and where its content starts: read again from
        # there for each attempt. None for a one-shot stream.
        self.file = file
        self.start = 0
        held: int | None = None
        if file is not None:
            self.start = file.tell()
            held = file.seek(0, os.SEEK_END) - self.start
            file.seek(self.start)
        if size is None:
            own = getattr(stream, "size", None)
            if isinstance(own, int) and not isinstance(own, bool):
                size = own
            elif held is not None:
                size = held
            else:
                raise ValueError(
                    "StreamSource needs size=: the exact number of bytes the stream delivers "
                    "(storage refuses an upload without an exact Content-Length)"
                )
        check_size(size)
        if held is not None and size != held:
            raise ValueError(
                f"StreamSource of {filename or 'video'!r} announces {size} bytes but its file "
                f"holds {held} from its current position (was it read already? seek(0) first)"
            )
        if size == 0:
            raise empty_video(f"the stream {filename or 'video'!r}")
        self.size = size
        self.used = False

    @property
    def rewindable(self) -> bool:
        """Whether the content can be read again from its start (its upload is retried)."""
        return self.file is not None

    def __repr__(self) -> str:
        return (
            f"<StreamSource {type(self.stream).__name__} size={self.size} "
            f"filename={self.filename!r} rewindable={self.rewindable}>"
        )


def _seekable_file(stream: object) -> IO[bytes] | None:
    """The seekable binary file a source holds (UploadFile.file, FileField.file) or is."""
    for candidate in (stream, getattr(stream, "file", None)):
        if candidate is None:
            continue
        read = getattr(candidate, "read", None)
        seek = getattr(candidate, "seek", None)
        tell = getattr(candidate, "tell", None)
        # A coroutine function read is the async face of a file (UploadFile): use its .file.
        if not (callable(read) and callable(seek) and callable(tell)) or (
            inspect.iscoroutinefunction(read) or inspect.iscoroutinefunction(seek)
        ):
            continue
        # Python 3.10's SpooledTemporaryFile (an UploadFile's) has no seekable(): tell() then.
        seekable = getattr(candidate, "seekable", None)
        try:
            if callable(seekable) and seekable() is not True:
                continue
            tell()
            if isinstance(read(0), str):
                continue
        except (OSError, ValueError):  # closed, not readable, or not seekable
            continue
        return candidate  # type: ignore[return-value]
    return None


FileSource = Union[str, "os.PathLike[str]", IO[bytes], URL, StreamSource]
"""What an upload takes: a path, an http(s) URL (a str or yarl.URL), a binary file object
opened for reading, or a StreamSource."""


def is_url(source: object) -> bool:
    """True for an upload source that is an http(s) URL rather than a path."""
    if isinstance(source, URL):
        return True
    return isinstance(source, str) and source[:8].lower().startswith(("http://", "https://"))


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
    if p.stat().st_size == 0:
        raise empty_video(f"the video file {str(p)!r}")
    return p


def empty_video(what: str) -> ValueError:
    """The error for content of 0 bytes, refused before anything is sent: the service would
    create a video, take the empty upload and fail its analysis."""
    return ValueError(f"{what} is empty (0 bytes): there is no video to analyse")


def check_filename(filename: object) -> str:
    """The base name of a caller's ``filename=``, or a clear error."""
    if not isinstance(filename, str):
        raise TypeError(f"filename must be a str, got {type(filename).__name__}")
    name = os.path.basename(filename.replace("\\", "/"))
    if not name.strip():
        raise ValueError(f"filename must name a file, got {filename!r}")
    return name


def _url_name(url: URL) -> str:
    return url.name or "video"


def public_url(url: URL) -> str:
    """A URL for messages: its query (a presigned signature) and credentials dropped."""
    return str(url.with_query(None).with_fragment(None).with_user(None))


class UploadSource:
    """What to upload, measured once, re-readable from its start for each attempt when it can.

    ``resendable`` is False for a one-shot StreamSource (one that cannot seek): its upload is
    tried once. Content of 0 bytes is refused here, before anything is sent.
    """

    def __init__(
        self,
        source: FileSource,
        *,
        filename: str | None = None,
        fetch: Callable[[URL], Awaitable[aiohttp.ClientResponse]] | None = None,
    ) -> None:
        self.path: Path | None = None
        self.file: IO[bytes] | None = None
        self.url: URL | None = None
        self.stream: StreamSource | None = None
        self.start = 0
        self.size = -1  # a URL's is known once measured
        self._fetch = fetch
        self._first: aiohttp.ClientResponse | None = None
        self._open: set[Any] = set()
        if isinstance(source, URL) or (isinstance(source, str) and is_url(source)):
            # As given (encoded=True): re-encoding would break a presigned URL's signature.
            url = source if isinstance(source, URL) else URL(source, encoded=True)
            self.url = url
            self.name = _url_name(url)
        elif isinstance(source, StreamSource):
            self.name = source.filename or "video"
            self.size = source.size
            if source.file is not None:
                # Seekable (an UploadFile's spooled file): read again for each attempt.
                self.file = source.file
                self.start = source.start
            else:
                self.stream = source
        elif isinstance(source, (str, os.PathLike)):
            self.path = check_file(source)
            self.name = self.path.name
            self.size = self.path.stat().st_size
        else:
            if not (hasattr(source, "read") and hasattr(source, "seek")):
                raise TypeError(
                    "expected a path or a binary file object with read() and seek(), an "
                    f"http(s) URL or a StreamSource; got {type(source).__name__}"
                )
            if inspect.iscoroutinefunction(source.read):
                raise TypeError(
                    f"{type(source).__name__} is read asynchronously: wrap it as "
                    "StreamSource(upload), or pass its seekable .file with filename="
                )
            if isinstance(source.read(0), str):
                raise TypeError("the file object is open in text mode; open it with 'rb'")
            self.file = source
            self.name = os.path.basename(str(getattr(source, "name", "") or "")) or "video"
            self.start = source.tell()
            self.size = source.seek(0, os.SEEK_END) - self.start
            source.seek(self.start)
            if self.size == 0:
                raise empty_video(f"the file object {self.name!r} (from its current position)")
        if filename is not None:
            self.name = check_filename(filename)

    @property
    def resendable(self) -> bool:
        """Whether a failed attempt can send the content again from its start."""
        return self.stream is None

    @property
    def restartable(self) -> bool:
        """Whether the content can still be sent from its start (a stream: not yet read)."""
        return self.stream is None or not self.stream.used

    @property
    def described(self) -> str:
        """The source for messages (never a URL's query)."""
        if self.url is not None:
            return public_url(self.url)
        return repr(self.name)

    async def measure(self) -> None:
        """Learn a URL's size from its Content-Length; the response is kept for the first
        attempt, so the content is fetched once when nothing fails."""
        if self.url is None or self.size >= 0:
            return
        response = await self._get()
        self._first = response
        self.size = self._announced(response)
        if self.size == 0:
            self.release()
            raise empty_video(f"the source {self.described}")

    def release(self) -> None:
        """Let go of what measure() kept (the call ended before the upload used it)."""
        if self._first is not None:
            self._first.close()
            self._first = None

    async def _get(self) -> aiohttp.ClientResponse:
        assert self.url is not None
        if self._fetch is None:
            raise TypeError("a URL source needs a session to fetch it")
        return await self._fetch(self.url)

    def _announced(self, response: aiohttp.ClientResponse) -> int:
        length = response.headers.get("Content-Length")
        encoding = response.headers.get("Content-Encoding", "identity").lower()
        problem = None
        if length is None or not length.isdigit():
            problem = "announced no Content-Length"
        elif encoding != "identity":
            problem = f"sent Content-Encoding {encoding!r}, not the bytes themselves"
        if problem is not None:
            response.close()
            raise SourceError(
                f"the source {self.described} {problem}; storage needs the exact size up front",
                url=self.described,
            )
        return int(length)  # type: ignore[arg-type]

    async def chunks(self, chunk_size: int) -> AsyncGenerator[bytes, None]:
        """The content for one attempt, exactly ``size`` bytes, or SourceError/UploadError.

        Local file errors are raised as the OSError they are."""
        if self.url is not None:
            content = self._url_chunks(chunk_size)
        elif self.stream is not None:
            content = self._stream_chunks(chunk_size)
        else:
            content = self._file_chunks(chunk_size)
        async for chunk in content:
            yield chunk

    async def _file_chunks(self, chunk_size: int) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        if self.path is not None:
            handle = await run_owning(self._open_path, _close_file)
        else:
            assert self.file is not None
            handle = self.file
            await loop.run_in_executor(None, handle.seek, self.start)
        self._open.add(handle)
        try:
            sent = 0
            while sent < self.size:
                chunk = await loop.run_in_executor(
                    None, handle.read, min(chunk_size, self.size - sent)
                )
                if not chunk:
                    raise _file_changed(self, sent)
                sent += len(chunk)
                yield chunk
            if await loop.run_in_executor(None, handle.read, 1):
                raise _file_changed(self, None)
        finally:
            self._open.discard(handle)
            self._close(handle)

    def _open_path(self) -> IO[bytes]:
        assert self.path is not None
        return self.path.open("rb")

    async def _url_chunks(self, chunk_size: int) -> AsyncIterator[bytes]:
        response, self._first = self._first, None
        if response is None:
            response = await self._get()
            announced = self._announced(response)
            if announced != self.size:
                response.close()
                raise SourceError(
                    f"the source {self.described} changed: it announced {self.size} bytes, "
                    f"then {announced} when fetched again",
                    url=self.described,
                )
        self._open.add(response)
        try:
            received = 0
            reader = response.content.iter_chunked(chunk_size)
            while True:
                try:
                    chunk = await reader.__anext__()
                except StopAsyncIteration:
                    break
                except aiohttp.ClientPayloadError:
                    # The connection ended before Content-Length bytes came.
                    raise self._wrong_length(str(received)) from None
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    detail = describe_network_error(exc)
                    raise SourceError(
                        f"reading the source {self.described} failed after {received} of "
                        f"{self.size} bytes: {detail}",
                        url=self.described,
                    ) from None
                received += len(chunk)
                if received > self.size:
                    raise self._wrong_length(f"more than {self.size}")
                yield chunk
            if received < self.size:
                raise self._wrong_length(str(received))
        finally:
            self._open.discard(response)
            response.close()

    async def _stream_chunks(self, chunk_size: int) -> AsyncIterator[bytes]:
        assert self.stream is not None
        if self.stream.used:
            raise SourceError(
                f"the stream {self.name!r} was already read by an earlier attempt and cannot "
                "be sent again; upload it again with a fresh stream"
            )
        self.stream.used = True
        received = 0
        async for chunk in _read_stream(self.stream.stream, chunk_size):
            if not chunk:
                continue
            received += len(chunk)
            if received > self.size:
                raise self._wrong_length(f"more than {self.size}")
            yield bytes(chunk)
        if received < self.size:
            raise self._wrong_length(str(received))

    def _wrong_length(self, got: str) -> SourceError:
        what = "the source" if self.url is not None else "the stream"
        return SourceError(
            f"{what} {self.described} delivered {got} bytes but announced {self.size}; "
            "nothing was stored",
            url=None if self.url is None else self.described,
        )

    def _close(self, handle: Any) -> None:
        # Only what this source opened: a caller's own file object stays open.
        if handle is not self.file:
            handle.close()

    def close_attempt(self) -> None:
        """Close what an attempt left open: aiohttp may drop a body half-read (a connection
        reset mid-upload) and leave its generator suspended, holding a file or a response."""
        for handle in list(self._open):
            self._close(handle)
        self._open.clear()


def _close_file(handle: IO[bytes]) -> None:
    handle.close()


async def _read_stream(stream: object, chunk_size: int) -> AsyncIterator[bytes]:
    """Chunks of a web framework's upload or any async byte iterable, until it ends."""
    read = getattr(stream, "read_chunk", None) or getattr(stream, "read", None)
    if callable(read):
        while True:
            chunk = read(chunk_size)
            if inspect.isawaitable(chunk):
                chunk = await chunk
            if not chunk:
                return
            yield chunk
    else:
        async for chunk in stream:  # type: ignore[attr-defined]
            yield chunk


async def fetch_source(
    http: aiohttp.ClientSession,
    url: URL,
    *,
    timeout: aiohttp.ClientTimeout,
    check: Callable[[str, str], None],
) -> aiohttp.ClientResponse:
    """GET a source URL, following redirects only to URLs that ``check`` accepts (the rules of
    ``base_url``). No token goes to the source; its failures are SourceError, never retried as
    Guru errors."""
    described = public_url(url)
    for hop in range(MAX_REDIRECTS + 1):
        if hop:
            try:
                check(str(url), "source redirect")
            except ValueError as exc:
                raise SourceError(
                    f"the source {described} redirected to a refused URL: {exc}", url=described
                ) from None
        try:
            # identity: Content-Length must count the bytes storage will receive.
            resp = await http.get(
                url,
                headers={"Accept-Encoding": "identity"},
                allow_redirects=False,
                timeout=timeout,
            )
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise SourceError(
                f"the source {described} could not be fetched: {describe_network_error(exc)}",
                url=described,
            ) from None
        if resp.status in REDIRECT_STATUSES and resp.headers.get("Location"):
            resp.close()
            url = url.join(URL(resp.headers["Location"], encoded=True))
            continue
        if resp.status != 200:
            resp.close()
            raise source_status_error(resp.status, resp.reason, url=described)
        return resp
    raise SourceError(
        f"the source {described} redirected more than {MAX_REDIRECTS} times", url=described
    )


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
        self._report = ProgressReporter(progress)
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
        # +inf until an attempt's body is first pulled: aiohttp pulls it only once it holds a
        # connection, so time queued for the pool or spent connecting is never a "stall".
        self.last_activity = math.inf
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
        """The body for one attempt: it re-reads the content from its start."""
        self.last_activity = math.inf
        return self._chunks()

    def idle_since(self) -> float:
        """When the body last made progress; +inf before it starts and once it is all sent."""
        return self.last_activity

    async def _chunks(self) -> AsyncIterator[bytes]:
        # The connection is ours: the stall clock starts now.
        self.last_activity = time.monotonic()
        total = self.source.size
        yield self.head
        self.last_activity = time.monotonic()
        await self._report(0, total)
        sent = 0
        content = self.source.chunks(self._chunk_size)
        try:
            while True:
                try:
                    chunk = await content.__anext__()
                except StopAsyncIteration:
                    break
                except OSError as exc:
                    # Reading the source failed on this machine: raised as it is, not retried
                    # as a network failure.
                    raise BodyAbort(exc) from None
                except (GuruError, asyncio.CancelledError):
                    raise
                except Exception as exc:
                    # The caller's own stream failed (e.g. the browser went away).
                    raise BodyAbort(exc) from None
                sent += len(chunk)
                yield chunk
                # Resumed: aiohttp has written the chunk, so the peer is taking bytes.
                self.last_activity = time.monotonic()
                await self._report(sent, total)
        finally:
            await content.aclose()
        yield self.tail
        self.last_activity = math.inf

    def close_files(self) -> None:
        """Close what an attempt left open (see UploadSource.close_attempt)."""
        self.source.close_attempt()


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


def check_not_expired(expires: float | None, *, video_id: str) -> None:
    """Raise UploadError(code="PolicyExpired") when the presign is (nearly) out of date.

    Args:
        expires: The policy's expiry, from ``policy_expiration`` (read once per upload, checked
            before each attempt); None when unknown.
        video_id: The video, for the message.
    """
    if expires is not None and time.time() >= expires - EXPIRY_MARGIN:
        raise UploadError(
            f"the presigned upload for video {video_id} expired; create the video again "
            "(upload_video does this for you)",
            status=None,
            code="PolicyExpired",
        )


def presign_expired(exc: UploadError) -> bool:
    """True when storage (or the pre-send check) refused an upload for an expired presign."""
    return exc.code == "PolicyExpired" or (
        exc.code == "AccessDenied" and "expired" in str(exc).lower()
    )
