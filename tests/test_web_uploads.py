"""A browser's upload through a real web app into Guru: FastAPI (driven through its ASGI
interface with httpx2) and aiohttp.web (over real sockets), storage answering 503 half the time.
A seekable upload is retried from its start; a raw request body is one-shot."""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator

import aiohttp
import httpx2
import pytest
from aiohttp import web
from fastapi import FastAPI, UploadFile

from guru_async import GuruConnectionError, GuruError, GuruSession, RetryPolicy, StreamSource
from guru_async.testing import CREATE_ROUTE, UPLOAD_ROUTE, FaultRule, GuruEmulator
from tests.conftest import FAST_POLLS

# Starlette keeps an upload in memory up to 1 MiB, then spools it to disk: both kinds here.
SIZES = [100_000, 1_500_000] * 5
FLAKY_STORAGE = FaultRule(route=UPLOAD_ROUTE, rate=0.5, status=503)


@pytest.fixture
async def guru(emulator: GuruEmulator) -> AsyncIterator[GuruSession]:
    """A session whose retries wait milliseconds, so ten flaky uploads take a moment."""
    policy = RetryPolicy(max_retries=8, wait_initial=0.005, wait_max=0.02)
    async with emulator.session(poll_policy=FAST_POLLS, retry_policy=policy) as session:
        yield session


def fastapi_app(guru: GuruSession) -> FastAPI:
    """README's advice for FastAPI: StreamSource(upload), or the upload's seekable file."""
    app = FastAPI()

    @app.post("/stream-source")
    async def stream_source(file: UploadFile) -> dict[str, str]:
        return {"id": await guru.upload_video(StreamSource(file), activity="squat")}

    @app.post("/file")
    async def spooled_file(file: UploadFile) -> dict[str, str]:
        video_id = await guru.upload_video(file.file, filename=file.filename, activity="squat")
        return {"id": video_id}

    return app


@pytest.mark.parametrize("route", ["/stream-source", "/file"])
async def test_fastapi_uploads_are_retried_from_their_start(
    emulator: GuruEmulator, guru: GuruSession, route: str
) -> None:
    """With storage answering 503 half the time, 10 of 10 browser uploads through a FastAPI
    route succeed, each stored byte for byte under its own name, one video each."""
    emulator.faults.add(FLAKY_STORAGE)
    transport = httpx2.ASGITransport(app=fastapi_app(guru))
    stored = {}
    async with httpx2.AsyncClient(transport=transport, base_url="http://app") as browser:
        for number, size in enumerate(SIZES):
            content = os.urandom(size)
            files = {"file": (f"squat-{number}.mp4", content, "video/mp4")}
            response = await browser.post(route, files=files)
            assert response.status_code == 200, response.text
            stored[response.json()["id"]] = content
    assert len(stored) == len(SIZES)
    for video_id, content in stored.items():
        assert emulator.stored_path(video_id).read_bytes() == content
    assert emulator.requests[CREATE_ROUTE] == len(SIZES)
    assert emulator.faults.fired[UPLOAD_ROUTE] >= 5  # the retries were needed
    assert emulator.requests[UPLOAD_ROUTE] == len(SIZES) + emulator.faults.fired[UPLOAD_ROUTE]


@pytest.fixture
async def aiohttp_app(guru: GuruSession) -> AsyncIterator[str]:
    """README's advice for aiohttp.web, served on 127.0.0.1: a form's file field (spooled,
    seekable) and the raw request body streamed straight through (one-shot)."""

    async def form(request: web.Request) -> web.Response:
        field = (await request.post())["file"]
        assert isinstance(field, web.FileField)
        video_id = await guru.upload_video(StreamSource(field), activity="squat")
        return web.json_response({"id": video_id})

    async def raw(request: web.Request) -> web.Response:
        assert request.content_length is not None
        source = StreamSource(
            request.content, size=request.content_length, filename=request.match_info["name"]
        )
        try:
            video_id = await guru.upload_video(source, activity="squat")
        except (GuruConnectionError, GuruError) as exc:
            return web.json_response({"error": type(exc).__name__}, status=502)
        return web.json_response({"id": video_id})

    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_post("/form", form)
    app.router.add_put("/raw/{name}", raw)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def test_aiohttp_form_uploads_are_retried(emulator: GuruEmulator, aiohttp_app: str) -> None:
    """An aiohttp.web form upload (a FileField) passed as StreamSource is retried from its
    start: 10 of 10 succeed against flaky storage."""
    emulator.faults.add(FLAKY_STORAGE)
    async with aiohttp.ClientSession() as browser:
        for number, size in enumerate(SIZES):
            content = os.urandom(size)
            form = aiohttp.FormData()
            form.add_field("file", io.BytesIO(content), filename=f"lunge-{number}.mp4")
            async with browser.post(f"{aiohttp_app}/form", data=form) as response:
                assert response.status == 200, await response.text()
                video_id = (await response.json())["id"]
            assert emulator.stored_path(video_id).read_bytes() == content
    assert emulator.faults.fired[UPLOAD_ROUTE] >= 5


async def test_a_raw_request_body_is_streamed_once(
    emulator: GuruEmulator, aiohttp_app: str
) -> None:
    """A raw request body goes straight through (stored identical); it cannot be rewound, so
    when storage fails its one attempt the route fails and nothing is retried."""
    content = os.urandom(3 * 1024 * 1024)
    async with aiohttp.ClientSession() as browser:
        async with browser.put(f"{aiohttp_app}/raw/big.mp4", data=io.BytesIO(content)) as response:
            assert response.status == 200
            video_id = (await response.json())["id"]
        assert emulator.stored_path(video_id).read_bytes() == content
        emulator.faults.add(FaultRule(route=UPLOAD_ROUTE, rate=1.0, status=503, times=1))
        async with browser.put(
            f"{aiohttp_app}/raw/again.mp4", data=io.BytesIO(content)
        ) as response:
            assert response.status == 502
    assert emulator.requests[UPLOAD_ROUTE] == 2


class _OldSpooledFile:
    """A file as Python 3.10's SpooledTemporaryFile is: read, seek and tell, no seekable()."""

    def __init__(self, content: bytes) -> None:
        self._buffer = io.BytesIO(content)
        self.read = self._buffer.read
        self.seek = self._buffer.seek
        self.tell = self._buffer.tell


class _Upload:
    """An UploadFile's shape: an async face over a seekable ``.file``, with a name and size."""

    def __init__(self, content: bytes, filename: str) -> None:
        self.file = _OldSpooledFile(content)
        self.filename = filename
        self.size = len(content)

    async def read(self, size: int = -1) -> bytes:
        return self.file.read(size)

    async def seek(self, offset: int) -> None:
        self.file.seek(offset)


async def test_an_upload_without_seekable_is_still_retried(
    emulator: GuruEmulator, guru: GuruSession
) -> None:
    """An upload whose file has seek and tell but no seekable() (Python 3.10's spooled file)
    is retried from its start after a dropped connection."""
    emulator.faults.add(FaultRule(route=UPLOAD_ROUTE, rate=1.0, times=1, kind="drop"))
    content = os.urandom(200_000)
    source = StreamSource(_Upload(content, "old.mp4"))
    assert source.rewindable
    video_id = await guru.upload_video(source)
    assert emulator.stored_path(video_id).read_bytes() == content
    assert emulator.requests[UPLOAD_ROUTE] == 2


async def test_upload_mistakes_are_caught_before_sending(
    emulator: GuruEmulator, guru: GuruSession
) -> None:
    """An upload passed unwrapped, or a size the seekable file does not hold, is a clear
    error before anything is sent."""
    upload = _Upload(b"x" * 1000, "clip.mp4")
    with pytest.raises(TypeError, match=r"wrap it as StreamSource\(upload\)"):
        await guru.upload_video(upload)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="announces 999 bytes but its file holds 1000"):
        StreamSource(upload, size=999)
    upload.file.seek(0, io.SEEK_END)  # already read by the app
    with pytest.raises(ValueError, match=r"holds 0 from its current position .* seek\(0\)"):
        StreamSource(upload)
    assert not emulator.requests
