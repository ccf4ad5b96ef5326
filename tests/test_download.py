"""Downloads: redirects checked like base_url, umask file modes, local errors as they are."""

from __future__ import annotations

import errno
import os
import resource
import signal
import stat
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from guru_async import GuruSession, ResponseDecodeError
from guru_async.testing import DOWNLOAD_ROUTE, FaultRule, GuruEmulator
from tests.crafted_server import CraftedServer

MIB = 1024 * 1024

VideoFile = Callable[..., Path]


@pytest.fixture
async def uploaded(guru: GuruSession, video_file: VideoFile) -> tuple[str, bytes]:
    """A video whose 1 MiB content is in the emulator's storage."""
    path = video_file("raw.mp4", size=MIB)
    return await guru.upload_video(path, activity="squat"), path.read_bytes()


@pytest.fixture
async def api() -> AsyncIterator[CraftedServer]:
    """A crafted API whose storage redirects as a test says."""
    server = await CraftedServer().start()
    yield server
    await server.close()


def _api_with_redirect(api: CraftedServer, location: str, content: bytes) -> None:
    async def handle(request: web.Request) -> web.StreamResponse:
        if request.path.startswith("/videos/"):
            return web.json_response({"status": "Success", "uri": f"{api.url}/raw.mp4?sig=s3cr3t"})
        if request.path == "/raw.mp4":
            raise web.HTTPFound(location)
        return web.Response(body=content, content_type="video/mp4")

    api.handle(handle)


async def test_a_redirect_to_plain_http_on_another_host_is_refused(
    api: CraftedServer, tmp_path: Path
) -> None:
    """Storage cannot redirect a download to plain http on a remote host (base_url would be
    refused there): ResponseDecodeError, nothing written, the remote host never contacted."""
    # 192.0.2.0/24 is TEST-NET-1: a connection there would hang, so reaching it would show.
    _api_with_redirect(api, "http://192.0.2.1/moved.mp4", b"x")
    dest = tmp_path / "out.mp4"
    async with GuruSession(access_token="tok", base_url=api.url, max_retries=0) as guru:
        with pytest.raises(ResponseDecodeError, match=r"plain http to 192\.0\.2\.1") as caught:
            await guru.download("vid-1", dest)
    assert "s3cr3t" not in str(caught.value)
    assert [h.path for h in api.hits] == ["/videos/vid-1", "/raw.mp4"]
    assert list(tmp_path.iterdir()) == []


async def test_a_redirect_to_this_machine_is_followed_with_a_relative_location(
    api: CraftedServer, tmp_path: Path
) -> None:
    """A relative Location is resolved against the hop that sent it and followed."""
    content = os.urandom(5000)
    _api_with_redirect(api, "/elsewhere/moved.mp4", content)
    async with GuruSession(access_token="tok", base_url=api.url, max_retries=0) as guru:
        out = await guru.download("vid-1", tmp_path / "out.mp4")
    assert out.read_bytes() == content
    assert [h.path for h in api.hits][-1] == "/elsewhere/moved.mp4"


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
async def test_downloaded_file_mode_follows_the_umask(
    guru: GuruSession, uploaded: tuple[str, bytes], tmp_path: Path, umask: int, mode: int
) -> None:
    """A downloaded file gets 0666 minus the umask, as curl's would, not a fixed 0600."""
    video_id, content = uploaded
    old = os.umask(umask)
    try:
        out = await guru.download(video_id, tmp_path / "out.mp4")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == mode
    assert out.read_bytes() == content


@pytest.fixture
def file_size_limit() -> Iterator[Callable[[int], None]]:
    """Limit the size of files this process writes (EFBIG beyond it, as a full disk would
    fail a write), restored after the test."""
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    def limit(size: int) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, old_limit[1]))

    try:
        yield limit
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)


async def test_a_failing_write_is_raised_as_it_is_once(
    emulator: GuruEmulator,
    guru: GuruSession,
    uploaded: tuple[str, bytes],
    tmp_path: Path,
    file_size_limit: Callable[[int], None],
) -> None:
    """A download whose file cannot be written raises that OSError after one request, not a
    retried GuruConnectionError, and leaves no partial file."""
    video_id, _ = uploaded
    file_size_limit(100_000)
    with pytest.raises(OSError) as caught:  # noqa: PT011 - the exact class is checked below
        await guru.download(video_id, tmp_path / "out.mp4")
    assert type(caught.value) is OSError
    assert caught.value.errno == errno.EFBIG
    assert emulator.requests[DOWNLOAD_ROUTE] == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


async def test_truncated_download_is_retried_whole(
    emulator: GuruEmulator, guru: GuruSession, uploaded: tuple[str, bytes], tmp_path: Path
) -> None:
    """A download cut short once is fetched again: the file ends up whole, no partial file is
    left, and progress only rises, to the size."""
    video_id, content = uploaded
    emulator.faults.add(FaultRule(route=DOWNLOAD_ROUTE, kind="truncate", times=1))
    calls: list[int] = []
    out = await guru.download(
        video_id, tmp_path / "out.mp4", progress=lambda got, total: calls.append(got)
    )
    assert out.read_bytes() == content
    assert emulator.requests[DOWNLOAD_ROUTE] == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []
    assert calls == sorted(set(calls))
    assert calls[-1] == len(content)


@pytest.mark.parametrize("error", [TimeoutError("my progress bar timed out"), OSError("my log")])
async def test_a_raising_progress_callback_fails_the_download_once(
    emulator: GuruEmulator,
    guru: GuruSession,
    uploaded: tuple[str, bytes],
    tmp_path: Path,
    error: Exception,
) -> None:
    """An exception from the caller's progress callback ends the download as it was raised
    (as the upload's does), even one that looks like a network failure, never retried."""
    video_id, _ = uploaded

    def progress(got: int, total: int) -> None:
        raise error

    with pytest.raises(type(error)) as caught:
        await guru.download(video_id, tmp_path / "out.mp4", progress=progress)
    assert caught.value is error
    assert emulator.requests[DOWNLOAD_ROUTE] == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []
