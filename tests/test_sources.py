"""Upload sources beyond local files: http(s) URLs streamed straight through, and async streams
with a declared size (a web framework's upload), under the same exact-Content-Length rules."""

from __future__ import annotations

import asyncio
import io
import os
import tracemalloc
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from guru_async import GuruConnectionError, GuruSession, SourceError, StreamSource
from guru_async.testing import CREATE_ROUTE, UPLOAD_ROUTE, FaultRule, GuruEmulator
from tests.helpers import recorded_on, total_requests

MIB = 1024 * 1024
SECRET = "sig-0123456789abcdef"


class SourceServer:
    """A real aiohttp.web server on 127.0.0.1 serving video content the way a test needs."""

    def __init__(self, content: bytes) -> None:
        self.content = content
        self.hits: list[str] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> SourceServer:
        app = web.Application()
        app.router.add_get("/{name}", self._serve)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.hits.append(name)
        if name == "video.mp4":
            # Written piece by piece, so this server holds no copy of the whole content.
            response = web.StreamResponse(headers={"Content-Type": "video/mp4"})
            response.content_length = len(self.content)
            await response.prepare(request)
            view = memoryview(self.content)
            for i in range(0, len(view), 64 * 1024):
                await response.write(view[i : i + 64 * 1024])
            await response.write_eof()
            return response
        if name == "missing.mp4":
            return web.Response(status=404, text="<Error><Code>NoSuchKey</Code></Error>")
        if name == "moved.mp4":
            raise web.HTTPFound("/video.mp4")
        if name == "insecure.mp4":
            raise web.HTTPFound("http://192.0.2.1/video.mp4")
        response = web.StreamResponse()
        if name == "chunked.mp4":
            response.enable_chunked_encoding()
            await response.prepare(request)
            await response.write(self.content)
            await response.write_eof()
            return response
        if name == "short.mp4":  # announces every byte, sends all but the last 1000
            response.content_length = len(self.content)
            await response.prepare(request)
            await response.write(self.content[:-1000])
            assert request.transport is not None
            request.transport.close()
            return response
        raise web.HTTPNotFound()


@pytest.fixture
async def source() -> AsyncIterator[SourceServer]:
    """A source server holding 1 MiB of video content."""
    server = await SourceServer(os.urandom(MIB)).start()
    yield server
    await server.close()


async def _chunks(data: bytes, size: int = 100_000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        await asyncio.sleep(0)
        yield data[i : i + size]


# -- URLs ---------------------------------------------------------------------------------------


async def test_a_url_is_streamed_into_storage(
    emulator: GuruEmulator, guru: GuruSession, source: SourceServer
) -> None:
    """A URL source is fetched once, its Content-Length sent to Create, and its bytes stored
    identical under its own file name."""
    calls: list[int] = []
    video_id = await guru.upload_video(
        f"{source.url}/video.mp4?{SECRET}",
        activity="squat",
        progress=lambda sent, total: calls.append(sent),
    )
    assert emulator.stored_path(video_id).read_bytes() == source.content
    (create,) = recorded_on(emulator, CREATE_ROUTE)
    assert create.json is not None
    assert (create.json["filename"], create.json["size"]) == ("video.mp4", MIB)
    assert source.hits == ["video.mp4"]
    assert calls[0] == 0
    assert calls[-1] == MIB


async def test_a_url_is_never_held_whole_in_memory(
    emulator: GuruEmulator, guru: GuruSession
) -> None:
    """An 8 MiB URL source goes through with a peak of traced memory far below its size."""
    server = await SourceServer(os.urandom(8 * MIB)).start()
    try:
        tracemalloc.start()
        try:
            video_id = await guru.upload_video(URL(f"{server.url}/video.mp4"))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    finally:
        await server.close()
    assert emulator.stored_path(video_id).read_bytes() == server.content
    assert peak < 3 * MIB


async def test_a_url_is_fetched_again_for_a_retried_upload(
    emulator: GuruEmulator, guru: GuruSession, source: SourceServer
) -> None:
    """A storage connection dropped mid-upload is retried by fetching the URL again; one video,
    stored identical."""
    emulator.faults.add(FaultRule(route=UPLOAD_ROUTE, rate=1.0, times=1, kind="drop"))
    video_id = await guru.upload_video(f"{source.url}/video.mp4")
    assert emulator.upload_attempts[video_id] == 2
    assert emulator.stored_path(video_id).read_bytes() == source.content
    assert source.hits == ["video.mp4", "video.mp4"]
    assert emulator.requests[CREATE_ROUTE] == 1


async def test_a_redirected_url_is_followed(
    emulator: GuruEmulator, guru: GuruSession, source: SourceServer
) -> None:
    """A source that redirects on this machine is followed, the name taken from the URL given."""
    video_id = await guru.upload_video(f"{source.url}/moved.mp4")
    assert emulator.stored_path(video_id).read_bytes() == source.content
    assert source.hits == ["moved.mp4", "video.mp4"]


@pytest.mark.parametrize(
    ("name", "status", "message"),
    [
        ("missing.mp4", 404, "answered HTTP 404"),
        ("chunked.mp4", None, "announced no Content-Length"),
        ("insecure.mp4", None, "redirected to a refused URL"),
    ],
)
async def test_an_unusable_url_fails_before_anything_is_created(
    emulator: GuruEmulator,
    guru: GuruSession,
    source: SourceServer,
    name: str,
    status: int | None,
    message: str,
) -> None:
    """A URL that 404s, has no Content-Length or redirects to remote plain http raises
    SourceError once, without its query, before a video is created."""
    with pytest.raises(SourceError, match=message) as caught:
        await guru.upload_video(f"{source.url}/{name}?{SECRET}")
    assert caught.value.status == status
    assert caught.value.url == f"{source.url}/{name}"
    assert SECRET not in str(caught.value)
    assert source.hits[0] == name
    assert len(source.hits) <= 2  # the redirect's second hop is refused before it is sent
    assert emulator.requests[CREATE_ROUTE] == 0
    assert emulator.requests[UPLOAD_ROUTE] == 0


async def test_a_url_that_sends_fewer_bytes_than_announced_fails_once(
    emulator: GuruEmulator, guru: GuruSession, source: SourceServer
) -> None:
    """A source cut short fails the upload with SourceError, is not retried, stores nothing."""
    with pytest.raises(SourceError, match="delivered 1047576 bytes but announced 1048576"):
        await guru.upload_video(f"{source.url}/short.mp4")
    assert source.hits == ["short.mp4"]
    assert emulator.requests[UPLOAD_ROUTE] == 1
    assert not emulator.stored_path(create_id(emulator)).exists()


async def test_a_url_that_sends_more_bytes_than_announced_fails(
    emulator: GuruEmulator, guru: GuruSession
) -> None:
    """A source whose body runs past its Content-Length raises SourceError, nothing uploaded."""

    async def lying(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + os.urandom(1500))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(lying, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(SourceError, match="could not be fetched"):
            await guru.upload_video(f"http://127.0.0.1:{port}/long.mp4")
    finally:
        server.close()
        await server.wait_closed()
    assert emulator.requests[UPLOAD_ROUTE] == 0


async def test_a_plain_http_url_to_a_remote_host_is_refused_before_sending(
    emulator: GuruEmulator, guru: GuruSession
) -> None:
    """A plain-http source on another host is a ValueError, as base_url would be; nothing sent."""
    before = total_requests(emulator)
    with pytest.raises(ValueError, match=r"plain http to 192\.0\.2\.1"):
        await guru.upload_video("http://192.0.2.1/video.mp4")
    assert total_requests(emulator) == before


# -- streams ------------------------------------------------------------------------------------


async def test_an_async_iterable_with_a_size_is_uploaded(
    emulator: GuruEmulator, guru: GuruSession
) -> None:
    """An AsyncIterable[bytes] with size= is stored identical, its size sent to Create."""
    content = os.urandom(MIB + 5)
    video_id = await guru.upload_video(
        StreamSource(_chunks(content), size=len(content), filename="live.mp4"), activity="squat"
    )
    assert emulator.stored_path(video_id).read_bytes() == content
    (create,) = recorded_on(emulator, CREATE_ROUTE)
    assert create.json is not None
    assert (create.json["filename"], create.json["size"]) == ("live.mp4", MIB + 5)


class UploadFileLike:
    """What Starlette's UploadFile offers: async read(n), size and filename."""

    def __init__(self, content: bytes, filename: str) -> None:
        self._content = content
        self._at = 0
        self.size = len(content)
        self.filename = filename

    async def read(self, size: int = -1) -> bytes:
        end = len(self._content) if size < 0 else self._at + size
        chunk, self._at = self._content[self._at : end], min(end, len(self._content))
        return chunk


async def test_an_upload_file_gives_its_own_size_and_name(
    emulator: GuruEmulator, guru: GuruSession
) -> None:
    """A StreamSource over an UploadFile-like object takes its size and filename."""
    content = os.urandom(300_000)
    video_id = await guru.upload_video(StreamSource(UploadFileLike(content, "form.mov")))
    assert emulator.stored_path(video_id).read_bytes() == content
    (create,) = recorded_on(emulator, CREATE_ROUTE)
    assert create.json is not None
    assert (create.json["filename"], create.json["size"]) == ("form.mov", 300_000)


async def test_an_aiohttp_multipart_part_is_streamed_through_a_web_app(
    emulator: GuruEmulator, guru: GuruSession
) -> None:
    """An aiohttp.web handler streams a browser's multipart file part into Guru as it arrives."""

    async def handler(request: web.Request) -> web.Response:
        reader = await request.multipart()
        size_field = await reader.next()
        assert isinstance(size_field, aiohttp.BodyPartReader)
        size = int(await size_field.text())
        part = await reader.next()
        assert isinstance(part, aiohttp.BodyPartReader)
        video_id = await guru.upload_video(StreamSource(part, size=size), activity="squat")
        return web.json_response({"id": video_id})

    app = web.Application()
    app.router.add_post("/upload", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    content = os.urandom(2 * MIB)
    try:
        form = aiohttp.FormData()
        form.add_field("size", str(len(content)))
        form.add_field(
            "file", io.BytesIO(content), filename="browser.mp4", content_type="video/mp4"
        )
        async with (
            aiohttp.ClientSession() as browser,
            browser.post(f"http://127.0.0.1:{runner.addresses[0][1]}/upload", data=form) as r,
        ):
            assert r.status == 200
            video_id = (await r.json())["id"]
    finally:
        await runner.cleanup()
    assert emulator.stored_path(video_id).read_bytes() == content
    (create,) = recorded_on(emulator, CREATE_ROUTE)
    assert create.json is not None
    assert create.json["filename"] == "browser.mp4"


@pytest.mark.parametrize(("delta", "message"), [(-10, "delivered 99990"), (10, "more than")])
async def test_a_stream_of_the_wrong_length_fails_once(
    emulator: GuruEmulator, guru: GuruSession, delta: int, message: str
) -> None:
    """A stream that ends early or runs past its declared size raises SourceError after one
    attempt and stores nothing."""
    content = os.urandom(100_000 + delta)
    with pytest.raises(SourceError, match=message):
        await guru.upload_video(StreamSource(_chunks(content, 7000), size=100_000))
    assert emulator.requests[UPLOAD_ROUTE] == 1
    assert not emulator.stored_path(create_id(emulator)).exists()


async def test_a_stream_upload_is_not_retried(emulator: GuruEmulator, guru: GuruSession) -> None:
    """A stream cannot be rewound: a dropped upload from it fails after its one attempt."""
    emulator.faults.add(FaultRule(route=UPLOAD_ROUTE, rate=1.0, times=1, kind="drop"))
    content = os.urandom(MIB)
    with pytest.raises(GuruConnectionError):
        await guru.upload_video(StreamSource(_chunks(content), size=MIB))
    assert emulator.requests[UPLOAD_ROUTE] == 1
    assert emulator.requests[CREATE_ROUTE] == 1


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: StreamSource(_chunks(b"x")), ValueError, "needs size="),
        (lambda: StreamSource(_chunks(b"x"), size=-1), ValueError, "size must be >= 0 bytes"),
        (lambda: StreamSource(b"bytes", size=5), TypeError, "async byte stream"),
    ],
)
def test_stream_source_bad_arguments(
    make: Callable[[], object], error: type[Exception], message: str
) -> None:
    """A StreamSource without a usable size or stream is refused when it is made."""
    with pytest.raises(error, match=message):
        make()


def create_id(emu: GuruEmulator) -> str:
    """The id of the one video the emulator created."""
    (video_id,) = emu.upload_attempts
    return video_id


async def test_the_step_by_step_calls_take_a_url(
    emulator: GuruEmulator, guru: GuruSession, source: SourceServer
) -> None:
    """create_video names a URL's video by its last segment (size= required), and upload
    streams it; analyze takes a URL too and returns the finished analysis."""
    url = f"{source.url}/video.mp4?{SECRET}"
    with pytest.raises(ValueError, match="needs size= for a URL"):
        await guru.create_video(url)
    created = await guru.create_video(url, size=MIB, activity="squat")
    await guru.upload(created, url)
    assert emulator.stored_path(created.id).read_bytes() == source.content
    create = recorded_on(emulator, CREATE_ROUTE)[0]
    assert create.json is not None
    assert create.json["filename"] == "video.mp4"
    analysis = await guru.analyze(URL(url), activity="squat", timeout=10)
    assert analysis.status == "Complete"
    assert source.hits == ["video.mp4", "video.mp4"]
