"""Uploads to presigned storage: the exact multipart wire format, streaming, progress, failures."""

from __future__ import annotations

import asyncio
import errno
import gc
import io
import os
import random
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest

from guru_async import GuruSession, MemoryTokenStore, Timeouts, UploadError
from guru_async.testing import CREATE_ROUTE, UPLOAD_ROUTE, FaultRule, GuruEmulator
from tests.helpers import headers_of, open_fds, recorded_on

MIB = 1024 * 1024

VideoFile = Callable[..., Path]
MakeSession = Callable[..., GuruSession]


class SentBytes:
    """Counts the body bytes aiohttp writes per URL, through its public tracing hooks."""

    def __init__(self) -> None:
        self.by_url: dict[str, int] = {}
        self.first_chunk: dict[str, bytes] = {}
        self.config = aiohttp.TraceConfig()
        self.config.on_request_chunk_sent.append(self._on_chunk)

    async def _on_chunk(
        self,
        session: aiohttp.ClientSession,
        context: SimpleNamespace,
        params: aiohttp.TraceRequestChunkSentParams,
    ) -> None:
        url = str(params.url)
        self.first_chunk.setdefault(url, bytes(params.chunk))
        self.by_url[url] = self.by_url.get(url, 0) + len(params.chunk)


@pytest.fixture
async def traced_http() -> AsyncIterator[tuple[aiohttp.ClientSession, SentBytes]]:
    """A caller-owned aiohttp session that counts the body bytes it sends."""
    sent = SentBytes()
    async with aiohttp.ClientSession(trace_configs=[sent.config]) as http:
        yield http, sent


async def test_upload_wire_format(
    emulator: GuruEmulator,
    make_session: MakeSession,
    video_file: VideoFile,
    traced_http: tuple[aiohttp.ClientSession, SentBytes],
) -> None:
    """The upload has an exact Content-Length, no chunking, no token, and the fields before file."""
    http, sent = traced_http
    path = video_file("squat.mp4", size=300_000)
    async with make_session(http_session=http) as guru:
        created = await guru.create_video(path, activity="squat")
        await guru.upload(created, path)
    assert not http.closed  # a caller's http_session is left open
    (upload,) = recorded_on(emulator, UPLOAD_ROUTE)
    headers = headers_of(upload)
    assert int(headers["content-length"]) == sent.by_url[created.url]
    assert int(headers["content-length"]) > 300_000
    assert "transfer-encoding" not in headers
    assert "authorization" not in headers
    assert headers["content-type"].startswith("multipart/form-data; boundary=")
    assert upload.part_names == [*created.fields, "file"]
    assert emulator.stored_path(created.id).read_bytes() == path.read_bytes()


async def test_large_file_is_stored_byte_identical(
    emulator: GuruEmulator, guru: GuruSession, video_file: VideoFile
) -> None:
    """A 5 MiB file arrives byte for byte, in one attempt, with its real size sent to Create."""
    path = video_file("big.mp4", size=5 * MIB)
    video_id = await guru.upload_video(path, activity="squat")
    assert emulator.stored_path(video_id).read_bytes() == path.read_bytes()
    (create,) = recorded_on(emulator, CREATE_ROUTE)
    assert create.json is not None
    assert create.json["size"] == 5 * MIB
    assert emulator.upload_attempts[video_id] == 1
    assert emulator.uploads_completed[video_id] == 1


async def test_upload_from_an_open_file(
    emulator: GuruEmulator, guru: GuruSession, video_file: VideoFile
) -> None:
    """A binary file object is uploaded from its current position and left open for the caller."""
    content = os.urandom(200_000)
    path = video_file("from-object.mp4", content=content)
    with path.open("rb") as f:
        whole_id = await guru.upload_video(f, activity="squat")
        f.seek(1000)
        tail_id = await guru.upload_video(f, activity="squat")
        assert not f.closed
    assert emulator.stored_path(whole_id).read_bytes() == content
    assert emulator.stored_path(tail_id).read_bytes() == content[1000:]
    first, second = recorded_on(emulator, CREATE_ROUTE)
    assert first.json == {
        "filename": "from-object.mp4",
        "size": 200_000,
        "domain": "weightlifting",
        "activity": "squat",
    }
    assert second.json is not None
    assert second.json["size"] == 199_000


async def test_progress_reports_every_chunk(guru: GuruSession, video_file: VideoFile) -> None:
    """progress(sent, total) rises monotonically from 0 to (size, size), one call per chunk."""
    size = 3 * MIB + 12_345
    path = video_file(size=size)
    calls: list[tuple[int, int]] = []
    await guru.upload_video(path, progress=lambda sent, total: calls.append((sent, total)))
    assert calls[0] == (0, size)
    assert calls[-1] == (size, size)
    assert {total for _, total in calls} == {size}
    sent_values = [sent for sent, _ in calls]
    assert sent_values == sorted(sent_values)
    assert len(calls) >= 5  # 0, then each of the 4 chunks


async def test_async_progress_callback_is_awaited(guru: GuruSession, video_file: VideoFile) -> None:
    """An async progress callback is awaited for each report, ending at (size, size)."""
    size = 2 * MIB + 1
    path = video_file(size=size)
    calls: list[tuple[int, int]] = []

    async def progress(sent: int, total: int) -> None:
        await asyncio.sleep(0)
        calls.append((sent, total))

    await guru.upload_video(path, progress=progress)
    assert calls[0] == (0, size)
    assert calls[-1] == (size, size)
    assert [s for s, _ in calls] == sorted(s for s, _ in calls)


@pytest.mark.parametrize(("size_delta", "code"), [(1, "EntityTooSmall"), (-1, "EntityTooLarge")])
async def test_size_mismatch_is_refused_by_storage(
    emulator: GuruEmulator,
    guru: GuruSession,
    video_file: VideoFile,
    size_delta: int,
    code: str,
) -> None:
    """A file whose size differs from the one given to Create fails with that storage code."""
    path = video_file(size=100_000)
    created = await guru.create_video(path, size=100_000 + size_delta)
    with pytest.raises(UploadError) as caught:
        await guru.upload(created, path)
    assert caught.value.code == code
    assert caught.value.status == 400
    assert emulator.uploads_completed[created.id] == 0
    assert not emulator.stored_path(created.id).exists()


async def test_expired_presign_is_refused_before_sending(
    start_emulator: Callable[..., Awaitable[GuruEmulator]],
    session_for: Callable[..., GuruSession],
    video_file: VideoFile,
) -> None:
    """An upload whose presigned policy (nearly) ran out raises PolicyExpired and sends nothing."""
    emu = await start_emulator(presign_lifetime=1.0)
    path = video_file()
    async with session_for(emu) as guru:
        created = await guru.create_video(path)
        with pytest.raises(UploadError) as caught:
            await guru.upload(created, path)
    assert caught.value.code == "PolicyExpired"
    assert caught.value.status is None
    assert created.id in str(caught.value)
    assert emu.upload_attempts[created.id] == 0
    assert emu.requests[UPLOAD_ROUTE] == 0


async def test_upload_video_creates_once_more_after_an_expired_presign(
    start_emulator: Callable[..., Awaitable[GuruEmulator]],
    session_for: Callable[..., GuruSession],
    video_file: VideoFile,
) -> None:
    """upload_video replaces an expired presign by creating the video once more, then gives up."""
    emu = await start_emulator(presign_lifetime=1.0)
    async with session_for(emu) as guru:
        with pytest.raises(UploadError) as caught:
            await guru.upload_video(video_file(), activity="squat")
    assert caught.value.code == "PolicyExpired"
    assert emu.requests[CREATE_ROUTE] == 2
    assert emu.requests[UPLOAD_ROUTE] == 0


async def test_file_that_shrinks_during_upload(
    emulator: GuruEmulator, guru: GuruSession, video_file: VideoFile
) -> None:
    """A file truncated mid-upload fails with code FileChanged, is not retried nor stored."""
    path = video_file(size=3 * MIB)
    created = await guru.create_video(path)
    with path.open("r+b") as f:

        def truncate_after_first_chunk(sent: int, total: int) -> None:
            if sent >= MIB and os.fstat(f.fileno()).st_size == total:
                f.truncate(sent + 1000)  # the position is untouched; 1000 bytes remain

        with pytest.raises(UploadError) as caught:
            await guru.upload(created, f, progress=truncate_after_first_chunk)
    assert caught.value.code == "FileChanged"
    assert caught.value.status is None
    assert "changed while uploading" in str(caught.value)
    assert emulator.requests[UPLOAD_ROUTE] <= 1
    assert emulator.uploads_completed[created.id] == 0
    assert not emulator.stored_path(created.id).exists()


async def test_file_that_grows_during_upload(
    emulator: GuruEmulator, guru: GuruSession, video_file: VideoFile
) -> None:
    """A file appended to mid-upload fails with code FileChanged instead of sending a wrong size."""
    path = video_file(size=2 * MIB)
    created = await guru.create_video(path)

    def grow_once(sent: int, total: int) -> None:
        if sent == MIB:
            with path.open("ab") as f:
                f.write(b"more")

    with pytest.raises(UploadError) as caught:
        await guru.upload(created, path, progress=grow_once)
    assert caught.value.code == "FileChanged"
    assert emulator.uploads_completed[created.id] == 0


async def test_storage_slowdown_is_retried(
    emulator: GuruEmulator, guru: GuruSession, video_file: VideoFile
) -> None:
    """A 503 SlowDown from storage is retried and the file is still stored byte-identical."""
    emulator.faults.add(FaultRule(route=UPLOAD_ROUTE, rate=1.0, times=1, kind="status", status=503))
    path = video_file(size=512 * 1024)
    video_id = await guru.upload_video(path, activity="squat")
    assert emulator.faults.fired[UPLOAD_ROUTE] == 1
    assert emulator.requests[UPLOAD_ROUTE] == 2
    assert emulator.uploads_completed[video_id] == 1
    assert emulator.stored_path(video_id).read_bytes() == path.read_bytes()


async def test_dropped_upload_is_restreamed_from_the_start(
    emulator: GuruEmulator, guru: GuruSession, video_file: VideoFile
) -> None:
    """A connection dropped mid-upload is retried from the file's first byte."""
    emulator.faults.add(FaultRule(route=UPLOAD_ROUTE, rate=1.0, times=1, kind="drop"))
    path = video_file(size=MIB)
    video_id = await guru.upload_video(path, activity="squat")
    assert emulator.upload_attempts[video_id] == 2
    assert emulator.uploads_completed[video_id] == 1
    assert emulator.stored_path(video_id).read_bytes() == path.read_bytes()


async def test_storage_error_without_retries_keeps_its_code(
    emulator: GuruEmulator, make_session: MakeSession, video_file: VideoFile
) -> None:
    """With retries off, a storage 503 surfaces as UploadError(status=503, code="SlowDown")."""
    emulator.faults.add(FaultRule(route=UPLOAD_ROUTE, rate=1.0, kind="status", status=503))
    async with make_session(max_retries=0) as guru:
        with pytest.raises(UploadError) as caught:
            await guru.upload_video(video_file(), activity="squat")
    assert caught.value.status == 503
    assert caught.value.code == "SlowDown"
    assert emulator.requests[UPLOAD_ROUTE] == 1


async def test_a_raising_progress_callback_fails_the_upload_once(
    emulator: GuruEmulator, guru: GuruSession, video_file: VideoFile
) -> None:
    """An exception from the caller's progress callback ends the upload as it was raised, and
    is not retried as if the network had failed."""
    created = await guru.create_video(video_file("cb.mp4", size=3 * 1024 * 1024), activity="squat")

    def progress(sent: int, total: int) -> None:
        if sent:
            raise ValueError("bug in my progress bar")

    with pytest.raises(ValueError, match="bug in my progress bar"):
        await guru.upload(created, video_file("cb.mp4", size=3 * 1024 * 1024), progress=progress)
    assert emulator.requests[UPLOAD_ROUTE] == 1


class FailingFile(io.BytesIO):
    """A file object on storage that fails mid-read, as a flaky network mount does."""

    def __init__(self, content: bytes, fail_after: int) -> None:
        super().__init__(content)
        self.name = "flaky.mp4"
        self._fail_after = fail_after

    def read(self, size: int | None = -1) -> bytes:
        if size and self.tell() >= self._fail_after:
            raise OSError(errno.EIO, "Input/output error")
        return super().read(size)


async def test_a_local_read_error_is_raised_as_it_is_once(
    emulator: GuruEmulator, guru: GuruSession
) -> None:
    """An OSError reading the source is raised as that OSError after one attempt, not mapped
    to GuruConnectionError and retried."""
    created = await guru.create_video("flaky.mp4", size=MIB)
    with pytest.raises(OSError) as caught:  # noqa: PT011 - the exact class is checked below
        await guru.upload(created, FailingFile(os.urandom(MIB), fail_after=300_000))
    assert type(caught.value) is OSError
    assert caught.value.errno == errno.EIO
    assert emulator.requests[UPLOAD_ROUTE] == 1
    assert emulator.uploads_completed[created.id] == 0


async def test_a_queued_upload_is_not_a_stall(
    emulator: GuruEmulator, make_session: MakeSession, video_file: VideoFile
) -> None:
    """An upload that waits for a pooled connection longer than Timeouts.read is not failed as
    stalled: its stall clock starts once it holds a connection."""
    first, second = video_file("a.mp4", size=4 * MIB), video_file("b.mp4", size=MIB)
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
    async with http, make_session(http_session=http, timeouts=Timeouts(read=0.3)) as guru:
        held_id = await guru.upload_video(first)
        created = await guru.create_video(second)
        video = await guru.get_video(held_id)
        assert video.uri is not None
        # A download left unread holds the pool's only connection for 1 s.
        held = await http.get(video.uri)
        asyncio.get_running_loop().call_later(1.0, held.close)
        await guru.upload(created, second, max_retries=0)
    assert emulator.stored_path(created.id).read_bytes() == second.read_bytes()
    assert emulator.upload_attempts[created.id] == 1


async def test_progress_never_goes_back_across_a_retried_attempt(
    emulator: GuruEmulator, guru: GuruSession, video_file: VideoFile
) -> None:
    """A dropped attempt re-sends the file, but progress rises once from 0 to the size:
    re-sent bytes are not counted twice."""
    emulator.faults.add(FaultRule(route=UPLOAD_ROUTE, rate=1.0, times=1, kind="drop"))
    size = 2 * MIB + 7
    path = video_file(size=size)
    calls: list[tuple[int, int]] = []
    video_id = await guru.upload_video(path, progress=lambda s, t: calls.append((s, t)))
    assert emulator.upload_attempts[video_id] == 2
    sent = [s for s, _ in calls]
    assert sent[0] == 0
    assert sent == sorted(set(sent))  # strictly rising: never back, never a repeat
    assert calls[-1] == (size, size)


async def test_cancelling_analyze_at_random_moments_leaks_nothing(
    start_emulator: Callable[..., Awaitable[GuruEmulator]],
    session_for: Callable[..., GuruSession],
    video_file: VideoFile,
) -> None:
    """20 concurrent analyze calls cancelled at seeded random moments (tokens, creates, opens,
    uploads, polls in flight), 8 times over, leave no file open and raise no ResourceWarning."""
    emu = await start_emulator(analysis_delay=0.05, storage_bandwidth=8 * MIB)
    paths = [video_file(f"c{i}.mp4", size=256 * 1024 + i) for i in range(20)]
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(max_workers=4)
    loop.set_default_executor(executor)
    rng = random.Random(17)
    outcomes: Counter[str] = Counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(8):
            # A fresh session each round, so cancellations also land on the token fetch.
            async with session_for(emu, token_store=MemoryTokenStore()) as guru:
                tasks = [asyncio.ensure_future(guru.analyze(p, activity="squat")) for p in paths]
                for task in tasks:
                    loop.call_later(rng.uniform(0.0, 0.25), task.cancel)
                for result in await asyncio.gather(*tasks, return_exceptions=True):
                    outcomes[type(result).__name__] += 1
        # Every open or read a cancelled call started in a thread has ended.
        executor.shutdown(wait=True)
        loop.set_default_executor(ThreadPoolExecutor(max_workers=2))
        gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == []
    opened = [t for t in open_fds() if any(t == str(p) for p in paths)]
    assert opened == []
    assert outcomes["CancelledError"] > 0  # the moments did land mid-call
    assert sum(outcomes.values()) == 160


async def test_upload_from_memory_with_a_filename(
    emulator: GuruEmulator,
    make_session: MakeSession,
    traced_http: tuple[aiohttp.ClientSession, SentBytes],
) -> None:
    """Bytes in a BytesIO upload with filename= as the name sent to Create and the multipart
    file part, with its content type."""
    http, sent = traced_http
    content = os.urandom(100_000)
    async with make_session(http_session=http) as guru:
        video_id = await guru.upload_video(
            io.BytesIO(content), filename="uploads/squat.mp4", activity="squat"
        )
        with pytest.raises(ValueError, match="filename must name a file"):
            await guru.upload_video(io.BytesIO(content), filename="")
    assert emulator.stored_path(video_id).read_bytes() == content
    (create,) = recorded_on(emulator, CREATE_ROUTE)
    assert create.json is not None
    assert create.json["filename"] == "squat.mp4"
    assert create.json["size"] == 100_000
    (head,) = [c for c in sent.first_chunk.values() if b'name="file"' in c]
    assert b'name="file"; filename="squat.mp4"\r\nContent-Type: video/mp4\r\n' in head
