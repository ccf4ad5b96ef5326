"""Empty content (0 bytes) is refused with a clear ValueError before anything is sent, from
every kind of source; in a batch it is that item's error."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from guru_async import GuruSession, StreamSource
from guru_async.testing import CREATE_ROUTE, UPLOAD_ROUTE, GuruEmulator

EMPTY = r"is empty \(0 bytes\): there is no video to analyse"


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator


@pytest.fixture
def empty(tmp_path: Path) -> Path:
    """An empty video file."""
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    return path


@pytest.fixture
async def empty_url() -> AsyncIterator[str]:
    """A real http server on this machine answering 200 with Content-Length: 0."""

    async def serve(_: web.Request) -> web.Response:
        return web.Response(body=b"")

    app = web.Application()
    app.router.add_get("/empty.mp4", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/empty.mp4?X-Amz-Signature=secret"
    await runner.cleanup()


Call = Callable[[GuruSession, Path, str], Awaitable[object]]


async def _at_end(guru: GuruSession, path: Path, url: str) -> object:
    handle = io.BytesIO(b"bytes already read")
    handle.seek(0, io.SEEK_END)
    return await guru.upload_video(handle, filename="clip.mp4")


async def _upload_to_created(guru: GuruSession, path: Path, url: str) -> object:
    return await guru.upload(await guru.create_video("clip.mp4", size=10), path)


CALLS: dict[str, Call] = {
    "upload_video(path)": lambda g, p, u: g.upload_video(p, activity="squat"),
    "analyze(path)": lambda g, p, u: g.analyze(p, activity="squat"),
    "create_video(path)": lambda g, p, u: g.create_video(p, activity="squat"),
    "create_video(size=0)": lambda g, p, u: g.create_video("clip.mp4", size=0),
    "upload(created, path)": _upload_to_created,
    "upload_video(BytesIO(b''))": lambda g, p, u: g.upload_video(io.BytesIO(b"")),
    "upload_video(file at its end)": _at_end,
    "upload_video(url)": lambda g, p, u: g.upload_video(u),
    "analyze(StreamSource(size=0))": lambda g, p, u: g.analyze(StreamSource(_nothing(), size=0)),
}


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
async def test_empty_content_is_refused_before_anything_is_sent(
    emulator: GuruEmulator, guru: GuruSession, empty: Path, empty_url: str, call: Call
) -> None:
    """Each way of sending 0 bytes raises ValueError naming the source; no empty upload, and
    no video made for one (the API would create it, take it and fail its analysis)."""
    with pytest.raises(ValueError, match=EMPTY) as caught:
        await call(guru, empty, empty_url)
    assert "secret" not in str(caught.value)
    assert emulator.requests[UPLOAD_ROUTE] == 0
    # upload(created, ...) is given a video the test made; nothing else creates one.
    assert emulator.requests[CREATE_ROUTE] == (call is _upload_to_created)


async def test_an_empty_file_in_a_batch_is_that_items_error(
    emulator: GuruEmulator, guru: GuruSession, empty: Path, tmp_path: Path
) -> None:
    """A batch reports the empty file as its own ValueError result and uploads the rest."""
    good = tmp_path / "good.mp4"
    good.write_bytes(b"some video content")
    results = {r.item: r async for r in guru.batch_upload([empty, good], activity="squat")}
    assert results[good].ok
    bad = results[empty]
    assert isinstance(bad.error, ValueError)
    assert "empty.mp4" in str(bad.error)
    assert "0 bytes" in str(bad.error)
    assert bad.video_id is None
    assert emulator.requests[CREATE_ROUTE] == 1
    assert emulator.requests[UPLOAD_ROUTE] == 1
