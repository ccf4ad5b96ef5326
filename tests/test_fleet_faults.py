"""The fleet under real distributed faults (issue 14): a sweeper killed mid-handover, a worker
frozen past its lease, a rerun after the file changed, two accounts on one Redis, a recorded
video that is gone, and the BatchUpload contract. Real worker processes, a real redis-server,
the emulator over real sockets."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import redis.asyncio as redis_async

from guru_async import AnalysisStatus, BatchResult, BatchUpload
from guru_async.fleet import Fleet
from guru_async.testing import (
    CREATE_ROUTE,
    TOKEN_ROUTE,
    UNANALYZABLE_MARKER,
    UPLOAD_ROUTE,
    FaultRule,
    GuruEmulator,
)

from .fleet_helpers import WorkerProcess, start_worker
from .helpers import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[WorkerProcess]]]:
    """Start a worker process against an emulator and wait until it is ready; every worker is
    resumed (if frozen) and killed at teardown."""
    started: list[WorkerProcess] = []

    async def start(emu: GuruEmulator, url: str, *, concurrency: int = 1) -> WorkerProcess:
        worker = start_worker(
            emu, url, tmp_path / f"worker-{len(started)}.log", concurrency=concurrency
        )
        started.append(worker)
        await asyncio.to_thread(worker.wait_ready)
        return worker

    yield start
    for worker in started:
        if worker.process.poll() is None:
            os.kill(worker.pid, signal.SIGCONT)
        worker.kill()


@pytest.fixture
def producer_env(monkeypatch: pytest.MonkeyPatch) -> Callable[[GuruEmulator], None]:
    """Point this process's producer at ``emu``'s account, as the workers' environment is."""

    def point(emu: GuruEmulator) -> None:
        monkeypatch.setenv("GURU_CLIENT_ID", emu.client_id)
        monkeypatch.setenv("GURU_BASE_URL", emu.base_url)

    return point


def clip(folder: Path, name: str, size: int = 8_000) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(os.urandom(size))
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def collect(fleet: Fleet, items: list[Path], **kwargs: object) -> list[BatchResult]:
    return [r async for r in fleet.batch_upload(items, activity="squat", **kwargs)]  # type: ignore[arg-type]


async def test_a_sweeper_killed_mid_handover_does_not_hang_the_batch(
    tmp_path: Path,
    redis_url: str,
    start_emulator: Callable[..., Awaitable[GuruEmulator]],
    spawn: Callable[..., Awaitable[WorkerProcess]],
    producer_env: Callable[[GuruEmulator], None],
) -> None:
    """Jobs left `aborting` in no saq list (their worker SIGKILLed, then the sweeper killed
    between saq's abort and its re-queue) are enqueued again by the producer: every item
    completes on a fresh worker."""
    from saq.queue.redis import RedisQueue

    emu = await start_emulator(analysis_delay=0.1)
    producer_env(emu)
    # The first worker's uploads hang at storage, so it dies with both in flight.
    emu.faults.add(FaultRule(route=UPLOAD_ROUTE, kind="delay", delay=60, times=2))
    files = [clip(tmp_path, f"v{i}.mp4") for i in range(2)]
    x = await spawn(emu, redis_url, concurrency=2)
    async with Fleet(redis_url, heartbeat=2, check_interval=1.0) as fleet:
        producer = asyncio.create_task(collect(fleet, files))
        await wait_until(lambda: emu.requests[UPLOAD_ROUTE] >= 2, timeout=30)
        x.kill()
        # What a sweeper does before it dies mid-sweep: saq's abort of each stuck job (out of
        # the active list and the incomplete set, status `aborting`), and no re-queue.
        client = redis_async.Redis.from_url(redis_url)
        try:
            (active,) = [k for k in await client.keys("saq:*:active") if b"poll" not in k]
            queue = RedisQueue(client, name=active.decode()[len("saq:") : -len(":active")])
            job_ids = await client.lrange(active, 0, -1)
            assert job_ids
            for job_id in job_ids:
                job = await queue.job(queue.job_key_from_id(job_id.decode()))
                assert job is not None
                await queue.abort(job, error="swept")
            assert await client.llen(active) == 0
        finally:
            await client.aclose()
        await spawn(emu, redis_url, concurrency=2)
        # The bound: heartbeat (2 s) + check_interval (1 s) + the items' own work, with room
        # for a loaded machine; without reconciliation the batch never ends.
        results = await asyncio.wait_for(producer, 2 + 1 + 12)
    assert sorted(str(r.item) for r in results) == sorted(map(str, files))
    for r in results:
        assert r.error is None, repr(r.error)
        assert r.analysis is not None
        assert r.analysis.status == AnalysisStatus.COMPLETE


async def test_a_worker_frozen_mid_upload_leaves_one_video(
    tmp_path: Path,
    redis_url: str,
    start_emulator: Callable[..., Awaitable[GuruEmulator]],
    spawn: Callable[..., Awaitable[WorkerProcess]],
    producer_env: Callable[[GuruEmulator], None],
) -> None:
    """A worker SIGSTOPped mid-upload past its lease while storage still receives its bytes,
    the item taken over by another worker, then resumed: the item has one video holding the
    file's content, one result, and a record the woken worker did not touch."""
    emu = await start_emulator(analysis_delay=0.1, storage_bandwidth=25_000)
    producer_env(emu)
    path = clip(tmp_path, "squat.mp4", size=150_000)  # 6 s at storage's 25 kB/s
    a = await spawn(emu, redis_url)
    async with Fleet(redis_url, heartbeat=2, check_interval=1.0) as fleet:
        producer = asyncio.create_task(collect(fleet, [path]))
        await wait_until(lambda: sum(emu.upload_attempts.values()) >= 1, timeout=30)
        os.kill(a.pid, signal.SIGSTOP)
        await spawn(emu, redis_url)
        (result,) = await asyncio.wait_for(producer, 60)
    os.kill(a.pid, signal.SIGCONT)
    # Stopped cleanly, so whatever the woken worker would write has been tried by now.
    assert await asyncio.to_thread(a.terminate) == 0
    assert result.error is None, repr(result.error)
    assert result.analysis is not None
    assert result.analysis.status == AnalysisStatus.COMPLETE
    assert list(emu.videos) == [result.video_id]
    assert emu.videos[result.video_id].content_sha256 == sha256(path)
    client = redis_async.Redis.from_url(redis_url)
    try:
        (record,) = await client.keys("guru:fleet:*:item:*")
        state = await client.hgetall(record)
    finally:
        await client.aclose()
    assert state[b"state"] == b"done"
    assert state[b"video_id"] == result.video_id.encode()


async def test_a_rerun_never_takes_an_old_result_for_a_changed_file(
    tmp_path: Path,
    redis_url: str,
    start_emulator: Callable[..., Awaitable[GuruEmulator]],
    spawn: Callable[..., Awaitable[WorkerProcess]],
    producer_env: Callable[[GuruEmulator], None],
) -> None:
    """A journaled rerun after the producer died, with the file recorded again meanwhile,
    reports the new content's analysis, not the old run's result still waiting in Redis."""
    emu = await start_emulator(analysis_delay=0.1)
    producer_env(emu)
    path = tmp_path / "cam1.mp4"
    path.write_bytes(UNANALYZABLE_MARKER + os.urandom(2000))  # a broken recording
    await spawn(emu, redis_url)
    client = redis_async.Redis.from_url(redis_url)
    try:
        async with Fleet(redis_url, heartbeat=2, check_interval=1.0) as fleet:
            first = fleet.batch_upload([path], activity="squat", journal="nightly")
            step = asyncio.ensure_future(first.__anext__())
            await wait_until(lambda: bool(emu.videos), timeout=30)
            step.cancel()
            await asyncio.gather(step, return_exceptions=True)
            await first.aclose()  # the producer is gone; its worker finishes the item anyway
            (old,) = emu.videos

            async def final_result_waiting() -> bool:
                keys = list(await client.keys("*results*"))
                return len(keys) == 1 and await client.llen(keys[0]) >= 2

            for _ in range(600):
                if await final_result_waiting():
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("the first run's result never reached Redis")
            path.write_bytes(os.urandom(3000))  # recorded again: new content, new size
            (result,) = await asyncio.wait_for(collect(fleet, [path], journal="nightly"), 30)
    finally:
        await client.aclose()
    assert result.error is None, repr(result.error)
    assert result.analysis is not None
    assert result.analysis.status == AnalysisStatus.COMPLETE
    assert result.video_id != old
    assert emu.videos[result.video_id].content_sha256 == sha256(path)


async def test_two_accounts_on_one_redis_never_take_each_others_items(
    tmp_path: Path,
    redis_url: str,
    start_emulator: Callable[..., Awaitable[GuruEmulator]],
    spawn: Callable[..., Awaitable[WorkerProcess]],
) -> None:
    """Prod's and staging's workers share one Redis: every prod item lands in the prod
    account, staging's worker touches none of them, and a worker refuses a job that names
    another account."""
    prod = await start_emulator(client_id="prod-client", client_secret="p", analysis_delay=0.1)
    staging = await start_emulator(
        client_id="staging-client", client_secret="s", analysis_delay=0.1
    )
    await spawn(staging, redis_url)
    await spawn(prod, redis_url)
    files = [clip(tmp_path, f"prod-{i}.mp4", size=2000) for i in range(6)]
    async with Fleet(
        redis_url, client_id=prod.client_id, base_url=prod.base_url, heartbeat=2
    ) as fleet:
        results = await asyncio.wait_for(collect(fleet, files, wait=False), 60)
        # A job naming another account, put on prod's queue by hand (a misconfigured
        # producer): prod's worker refuses it and reports why to that account's batch.
        from saq.queue.redis import RedisQueue

        client = redis_async.Redis.from_url(redis_url)
        try:
            queue = RedisQueue(client, name=fleet.queue_names[0])
            await queue.enqueue(
                "guru_fleet_upload",
                key="stray",
                batch="b:stray",
                path=str(files[0]),
                fields={},
                wait=False,
                account="0123456789ab",
            )
            popped = await client.blpop(["guru:fleet:0123456789ab:guru-fleet:results:b:stray"], 30)
        finally:
            await client.aclose()
    assert all(r.ok for r in results), [repr(r.error) for r in results]
    assert len(prod.videos) == 6
    assert staging.videos == {}
    assert popped is not None
    assert b"refused this item of account 0123456789ab" in popped[1]


def test_a_producer_without_an_account_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Fleet with no client id (neither passed nor in GURU_CLIENT_ID) is a ValueError when
    it is made, before anything can be enqueued."""
    monkeypatch.delenv("GURU_CLIENT_ID", raising=False)
    with pytest.raises(ValueError, match="GURU_CLIENT_ID"):
        Fleet("redis://127.0.0.1:6379/0")


async def test_the_rate_ceiling_is_one_per_account(
    redis_url: str, start_emulator: Callable[..., Awaitable[GuruEmulator]]
) -> None:
    """Sessions of two accounts given RedisRateLimiter with its default key book their
    requests under two different keys; an explicit key is kept as given; one default-keyed
    limiter given to a second account is a ValueError."""
    from guru_async.fleet import RedisRateLimiter

    a = await start_emulator(client_id="account-a", client_secret="a")
    b = await start_emulator(client_id="account-b", client_secret="b")
    limiters = [RedisRateLimiter(redis_url, rate=100) for _ in range(2)]
    explicit = RedisRateLimiter(redis_url, rate=100, key="my-ceiling")
    sessions = [
        a.session(limiter=limiters[0]),
        b.session(limiter=limiters[1]),
        a.session(limiter=explicit),
    ]
    try:
        for limiter in (*limiters, explicit):
            await limiter.acquire()
    finally:
        for session in sessions:
            await session.close()
        for limiter in (*limiters, explicit):
            await limiter.aclose()
    assert limiters[0].key != limiters[1].key
    assert explicit.key == "my-ceiling"
    client = redis_async.Redis.from_url(redis_url)
    try:
        keys = {
            k.decode() for k in await client.keys("*") if not k.endswith((b":members", b":counts"))
        }
    finally:
        await client.aclose()
    assert keys == {limiters[0].key, limiters[1].key, "my-ceiling"}
    with pytest.raises(ValueError, match="already paces another account"):
        b.session(limiter=limiters[0])


async def test_a_recorded_video_that_is_gone_is_created_again(
    tmp_path: Path,
    redis_url: str,
    start_emulator: Callable[..., Awaitable[GuruEmulator]],
    spawn: Callable[..., Awaitable[WorkerProcess]],
    producer_env: Callable[[GuruEmulator], None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A worker killed before its upload finished, whose recorded video then answers 404:
    the next worker creates a new video and the item completes."""
    emu = await start_emulator(analysis_delay=0.1)
    producer_env(emu)
    emu.faults.add(FaultRule(route=UPLOAD_ROUTE, kind="delay", delay=60, times=1))
    path = clip(tmp_path, "squat.mp4", size=5000)
    a = await spawn(emu, redis_url)
    async with Fleet(redis_url, heartbeat=2, check_interval=1.0) as fleet:
        producer = asyncio.create_task(collect(fleet, [path]))
        await wait_until(lambda: emu.requests[UPLOAD_ROUTE] >= 1, timeout=30)
        a.kill()
        (gone,) = emu.videos
        del emu.videos[gone]  # deleted server-side: it answers 404 from now on
        await spawn(emu, redis_url)
        (result,) = await asyncio.wait_for(producer, 30)
    assert result.error is None, repr(result.error)
    assert result.video_id is not None
    assert result.video_id != gone
    assert emu.videos[result.video_id].content_sha256 == sha256(path)


async def test_fleet_batch_upload_is_a_batchupload(
    tmp_path: Path,
    redis_url: str,
    start_emulator: Callable[..., Awaitable[GuruEmulator]],
    spawn: Callable[..., Awaitable[WorkerProcess]],
    producer_env: Callable[[GuruEmulator], None],
) -> None:
    """Fleet.batch_upload returns the local batch's BatchUpload: an async context manager and
    iterator with live .progress and aclose()."""
    emu = await start_emulator(analysis_delay=0.1)
    producer_env(emu)
    files = [clip(tmp_path, f"v{i}.mp4", size=2000) for i in range(2)]
    await spawn(emu, redis_url)
    async with Fleet(redis_url, heartbeat=2) as fleet:
        batch = fleet.batch_upload(files, activity="squat")
        assert isinstance(batch, BatchUpload)
        async with batch as results:
            got = [r async for r in results]
        assert batch.progress.succeeded == 2
        assert batch.progress.uploaded == 2
        assert all(r.ok for r in got)
        stopped = fleet.batch_upload(files, activity="squat")
        await stopped.aclose()


async def test_a_holder_that_lost_its_lease_writes_and_reports_nothing(redis_url: str) -> None:
    """Each lease taken yields a higher fence; once another worker took the item over, the
    old holder's record write and result push are refused and change nothing in Redis."""
    from guru_async.fleet._claims import Claims, LeaseLostError

    client = redis_async.Redis.from_url(redis_url)
    try:
        claims = Claims(client, account="acct", queue="q")
        stale = await claims.take("item", seconds=0.3, retention=60)
        for _ in range(200):  # the lease runs out on Redis's clock (a frozen holder)
            if not await client.exists("guru:fleet:acct:q:lease:item"):
                break
            await asyncio.sleep(0.01)
        fresh = await claims.take("item", seconds=30, retention=60)
        assert (stale.fence, fresh.fence) == (1, 2)
        await claims.record(fresh, "created", video_id="v2", retention=60)
        with pytest.raises(LeaseLostError):
            await claims.record(stale, "uploaded", video_id="v1", retention=60)
        with pytest.raises(LeaseLostError):
            await claims.push(stale, "results", "stale message", retention=60)
        await claims.push(fresh, "results", "fresh message", retention=60)
        record = await claims.read("item")
        assert (record.state, record.video_id) == ("created", "v2")
        assert await client.lrange("results", 0, -1) == [b"fresh message"]
    finally:
        await client.aclose()


async def test_storage_takes_a_second_upload_to_one_target_as_one_object(
    tmp_path: Path, start_emulator: Callable[..., Awaitable[GuruEmulator]]
) -> None:
    """What a takeover relies on: a second upload to the same presigned target replaces the
    first (last write wins, as S3 does), and the video still has one object, its last
    content."""
    emu = await start_emulator(analysis_delay=0.1)
    first = clip(tmp_path, "a.mp4", size=3000)
    second = clip(tmp_path / "again", "a.mp4", size=3000)
    async with emu.session() as guru:
        created = await guru.create_video(first, activity="squat")
        await guru.upload(created, first)
        await guru.upload(created, second)
        video = await guru.get_video(created.id)
    assert list(emu.videos) == [created.id]
    assert video.status == "Success"
    assert emu.videos[created.id].content_sha256 == sha256(second)
    assert emu.stored_path(created.id).read_bytes() == second.read_bytes()


async def test_two_producers_of_one_journal_both_finish_with_every_result(
    tmp_path: Path,
    redis_url: str,
    start_emulator: Callable[..., Awaitable[GuruEmulator]],
    spawn: Callable[..., Awaitable[WorkerProcess]],
    producer_env: Callable[[GuruEmulator], None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A rerun started while the first producer of the same journal still runs (the chaos
    harness's seed 27: a killed producer rerun twice) does not take the first one's results:
    both finish, each with one result per item, no item's result goes missing (none is
    enqueued again for lack of one), and every file is stored once."""
    caplog.set_level(logging.INFO, logger="guru_async.fleet")
    emu = await start_emulator(analysis_delay=0.2)
    producer_env(emu)
    files = [clip(tmp_path, f"p{i}.mp4", size=4000) for i in range(12)]
    for _ in range(2):
        await spawn(emu, redis_url, concurrency=2)

    async def produce() -> list[BatchResult]:
        async with Fleet(redis_url, heartbeat=2, check_interval=0.5) as fleet:
            return await collect(fleet, files, journal="nightly")

    first, second = await asyncio.wait_for(asyncio.gather(produce(), produce()), timeout=30)

    for results in (first, second):
        assert sorted(r.item for r in results) == sorted(files)  # type: ignore[type-var]
        assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    assert {r.item: r.video_id for r in first} == {r.item: r.video_id for r in second}
    assert len(emu.videos) == len(files)
    lost = [r.getMessage() for r in caplog.records if "enqueuing it again" in r.getMessage()]
    assert lost == []


async def test_a_worker_killed_while_creating_is_named_as_a_possible_orphan(
    tmp_path: Path,
    redis_url: str,
    start_emulator: Callable[..., Awaitable[GuruEmulator]],
    spawn: Callable[..., Awaitable[WorkerProcess]],
    producer_env: Callable[[GuruEmulator], None],
) -> None:
    """A worker SIGKILLed while its Create Video is in flight leaves a video nobody recorded:
    the worker that takes the item over logs that possible orphan at WARNING with the file's
    name, and the item still gets one result holding its content."""
    emu = await start_emulator(analysis_delay=0.1)
    # The first create is answered 1.5 s late: the video is made, the asker is gone by then.
    emu.faults.add(FaultRule(CREATE_ROUTE, kind="delay", delay=1.5, times=1))
    producer_env(emu)
    path = clip(tmp_path, "deadlift.mp4")
    a = await spawn(emu, redis_url)
    async with Fleet(redis_url, heartbeat=1, check_interval=0.5) as fleet:
        producer = asyncio.create_task(collect(fleet, [path]))
        await wait_until(lambda: emu.requests.get(CREATE_ROUTE, 0) >= 1, timeout=30)
        a.kill()
        b = await spawn(emu, redis_url)
        (result,) = await asyncio.wait_for(producer, 60)
    await wait_until(lambda: len(emu.videos) == 2, timeout=10)  # the late create lands too
    assert result.error is None, repr(result.error)
    assert emu.videos[result.video_id].content_sha256 == sha256(path)
    (orphan,) = [v for v in emu.videos if v != result.video_id]
    assert emu.uploads_completed[orphan] == 0
    warnings = [line for line in b.log.read_text().splitlines() if "possible orphan" in line]
    (warning,) = warnings
    assert "deadlift.mp4" in warning
    assert "WARNING" in warning


async def test_a_throttled_token_endpoint_outlasting_the_retries_fails_no_item(
    tmp_path: Path,
    redis_url: str,
    start_emulator: Callable[..., Awaitable[GuruEmulator]],
    spawn: Callable[..., Awaitable[WorkerProcess]],
    producer_env: Callable[[GuruEmulator], None],
) -> None:
    """The token endpoint answering 429 for longer than a call's own retries wait (chaos seed
    230) makes the worker deliver the item's job again instead of failing the item: every
    item succeeds, each in one video, with a one-line WARNING per retry and no traceback."""
    emu = await start_emulator(analysis_delay=0.1)
    producer_env(emu)
    paths = [clip(tmp_path, f"row-{i}.mp4") for i in range(2)]
    worker = await spawn(emu, redis_url, concurrency=2)
    # Two fetches' worth of 429s (a fetch tries 5 times): the first two deliveries fail.
    emu.faults.add(FaultRule(TOKEN_ROUTE, status=429, retry_after=0.2, times=10))
    emu.expire_tokens()
    async with Fleet(redis_url, heartbeat=2, check_interval=1.0) as fleet:
        results = await asyncio.wait_for(collect(fleet, paths), 60)
    assert [r.error for r in results] == [None, None]
    assert sorted(v.filename for v in emu.videos.values()) == ["row-0.mp4", "row-1.mp4"]
    assert emu.token_requests == 11  # the 10 refused, then the one that served
    log = worker.log.read_text()
    assert "RateLimitError" in log
    assert "trying again (attempt 1 of" in log
    assert "Traceback" not in log
    assert "possible orphan" not in log
