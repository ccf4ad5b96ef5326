"""RedisTokenStore: one token for a fleet of real processes, on a real redis-server."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as redis_async

from guru_async import (
    AuthenticationError,
    GuruConnectionError,
    GuruSession,
    NotFoundError,
    ServerError,
    Timeouts,
    Token,
)
from guru_async._auth import credentials_key
from guru_async.fleet import RedisTokenStore, RedisUnavailableError
from guru_async.fleet._redis import Unavailable
from guru_async.testing import GET_VIDEO_ROUTE, TOKEN_ROUTE, FaultRule, GuruEmulator

from .fleet_procs import Workers, emulator_stats, standalone_emulator
from .helpers import headers_of, recorded_on, wait_until
from .redis_server import RedisServer, free_port
from .token_procs import token_workers

MISSING = "0b8e4c1e-0000-4000-8000-000000000000"


@pytest.fixture
async def workers() -> AsyncIterator[Workers]:
    """Start fleet worker processes; any still running at teardown are killed."""
    started = Workers()
    yield started
    await started.close()


def endpoints_of(emu: GuruEmulator) -> dict[str, str]:
    """An in-process emulator's endpoints, as workers take them."""
    return {
        "base_url": emu.base_url,
        "token_url": emu.token_url,
        "client_id": emu.client_id,
        "client_secret": emu.client_secret,
    }


def key_of(emu: GuruEmulator, guru: GuruSession) -> str:
    """The credentials hash a session's token keys in Redis are named by."""
    return credentials_key(str(guru.token_url), emu.client_id, emu.client_secret, guru.scope)


async def authorized_call(guru: GuruSession) -> None:
    """One API call that reaches the API with a valid token (a 404 for a missing video)."""
    with pytest.raises(NotFoundError):
        await guru.get_video(MISSING)


@pytest.mark.slow
async def test_six_processes_of_thirty_calls_make_one_token_request(
    redis_url: str, workers: Workers
) -> None:
    """Six processes released together, 30 concurrent calls each, share one token request."""
    async with standalone_emulator("--analysis-delay", "0") as endpoints:
        started = await workers.start(endpoints, "tokens", redis_url, "30", "10", count=6)
        await asyncio.gather(*(w.go() for w in started))
        outcomes = await asyncio.gather(*(w.outcome() for w in started))
        stats = await emulator_stats(endpoints)
    assert [o["errors"] for o in outcomes] == [[]] * 6
    assert stats["token_requests"] == 1
    assert stats["requests"][GET_VIDEO_ROUTE] == 180


@pytest.mark.slow
async def test_a_lock_holder_killed_mid_fetch_costs_one_more_request(
    redis_url: str, start_emulator: Callable[..., asyncio.Future[GuruEmulator]], workers: Workers
) -> None:
    """SIGKILL the process holding the refresh lock: the others proceed once the lock expires,
    with exactly one more token request between them."""
    emu = await start_emulator(analysis_delay=0)
    # The first token request hangs, so its process is still holding the lock when killed.
    emu.faults.add(FaultRule(TOKEN_ROUTE, kind="delay", delay=3.0, times=1))
    endpoints = endpoints_of(emu)
    (holder,) = await workers.start(endpoints, "tokens", redis_url, "5", "1.0")
    waiters = await workers.start(endpoints, "tokens", redis_url, "10", "1.0", count=3)
    client = redis_async.Redis.from_url(redis_url)
    try:
        await holder.go()
        # Its token request has arrived (killed before that, it would cost no request at all),
        # so it holds the lock.
        await wait_until(lambda: emu.token_requests == 1, timeout=30)
        assert await client.keys("guru_async:token:*:lock") != []
        await asyncio.gather(*(w.go() for w in waiters))
        holder.kill()
        outcomes = await asyncio.gather(*(w.outcome() for w in waiters))
        assert await client.keys("guru_async:token:*:lock") == []
    finally:
        await client.aclose()
    assert [o["errors"] for o in outcomes] == [[]] * 3
    assert emu.token_requests == 2


@pytest.mark.slow
async def test_with_redis_stopped_every_process_still_succeeds(
    start_redis: Callable[..., RedisServer], workers: Workers
) -> None:
    """Redis down: each process fetches its own token once and every call succeeds."""
    server = start_redis()
    server.stop()
    async with standalone_emulator("--analysis-delay", "0") as endpoints:
        started = await workers.start(endpoints, "tokens", server.url, "20", "10", count=2)
        await asyncio.gather(*(w.go() for w in started))
        outcomes = await asyncio.gather(*(w.outcome() for w in started))
        stats = await emulator_stats(endpoints)
    assert [o["errors"] for o in outcomes] == [[]] * 2
    assert stats["token_requests"] == 2  # one per process: single flight within each


async def test_redis_down_warns_once_and_never_shows_the_password(
    emulator: GuruEmulator,
    start_redis: Callable[..., RedisServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With Redis stopped, 30 concurrent calls all succeed on one token request, logging one
    WARNING that, like the store's repr, names the server without its password."""
    server = start_redis(password="hunter2-fleet")
    server.stop()
    caplog.set_level(logging.DEBUG)
    async with (
        RedisTokenStore(server.url) as store,
        emulator.session(token_store=store) as guru,
    ):
        await asyncio.gather(*(authorized_call(guru) for _ in range(30)))
        assert "hunter2" not in repr(store)
        assert repr(store) == (
            f"RedisTokenStore('redis://:***@127.0.0.1:{server.port}/0', prefix='guru_async:token:')"
        )
    assert emulator.token_requests == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"redis://:***@127.0.0.1:{server.port}/0" in warnings[0].getMessage()
    assert all("hunter2" not in r.getMessage() for r in caplog.records)


async def test_a_redis_that_stops_answering_costs_one_timeout_then_falls_back(
    emulator: GuruEmulator,
    start_redis: Callable[..., RedisServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A Redis that accepts connections but never answers (SIGSTOP) is given up on after
    ``timeout``: every call succeeds on one token request, with one WARNING saying why."""
    server = start_redis()
    os.kill(server.pid, signal.SIGSTOP)
    try:
        async with (
            RedisTokenStore(server.url, timeout=0.2) as store,
            emulator.session(token_store=store) as guru,
        ):
            await asyncio.gather(*(authorized_call(guru) for _ in range(10)))
    finally:
        os.kill(server.pid, signal.SIGCONT)
    assert emulator.token_requests == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "no answer within 0.2 s" in warnings[0]


async def test_a_wrong_password_falls_back_and_check_raises_a_typed_error(
    emulator: GuruEmulator,
    start_redis: Callable[..., RedisServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A wrong password never fails a call (the process fetches for itself, one WARNING says
    why), while check() raises RedisUnavailableError naming the server, not the password."""
    server = start_redis(password="right-password")
    url = f"redis://:wrong-password@127.0.0.1:{server.port}/0"
    async with RedisTokenStore(url) as store, emulator.session(token_store=store) as guru:
        await asyncio.gather(*(authorized_call(guru) for _ in range(5)))
        with pytest.raises(RedisUnavailableError) as raised:
            await store.check()
    message = str(raised.value)
    assert "refused the password" in message
    assert f"127.0.0.1:{server.port}" in message
    assert "wrong-password" not in message
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "refused the password" in warnings[0]
    assert "wrong-password" not in warnings[0]


async def test_check_names_an_unreachable_server() -> None:
    """check() on a port nothing listens on raises RedisUnavailableError naming it."""
    port = free_port()
    async with RedisTokenStore(f"redis://:pw-secret@127.0.0.1:{port}/3") as store:
        with pytest.raises(RedisUnavailableError, match=f"127.0.0.1:{port}/3") as raised:
            await store.check()
    assert "pw-secret" not in str(raised.value)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://:pw-secret@cache:6379/0", "must be a redis://, rediss:// or unix:// URL"),
        ("redis://:pw-secret@cache:6379/zero", "the database in"),
        ("redis://:pw-secret@cache:port/0", "the port is not a number"),
        ("redis://:pw-secret@/0", "no host"),
    ],
)
def test_a_bad_url_is_a_value_error_without_the_password(url: str, message: str) -> None:
    """A URL redis-py would reject or misread is refused up front, its password hidden."""
    with pytest.raises(ValueError, match=message) as raised:
        RedisTokenStore(url)
    assert "pw-secret" not in str(raised.value)


def test_a_client_that_is_not_redis_is_a_type_error() -> None:
    """Passing something other than a URL or a redis.asyncio.Redis is a TypeError."""
    with pytest.raises(TypeError, match=r"redis:// URL or a redis\.asyncio\.Redis"):
        RedisTokenStore(6379)  # type: ignore[arg-type]


async def test_a_caller_owned_client_is_used_and_left_open(redis_url: str) -> None:
    """Given a redis.asyncio.Redis, the store uses it and closing the store leaves it open."""
    client = redis_async.Redis.from_url(redis_url)
    try:
        async with RedisTokenStore(client, prefix="app:") as store:
            await store.save("k", Token("tok-1", time.time() + 600, issued_at=time.time()))
        assert await client.hget("app:k", "access_token") == b"tok-1"
    finally:
        await client.aclose()


async def test_the_key_expires_on_redis_clock_before_the_token(redis_url: str) -> None:
    """A saved token's key expires a tenth of its lifetime (30 s at most) before the token,
    and a token read back takes its expiry from that TTL (relative, on Redis's clock), so no
    machine's clock has to agree with another's."""
    client = redis_async.Redis.from_url(redis_url)
    try:
        async with RedisTokenStore(redis_url) as store:
            now = time.time()
            await store.save("k", Token("tok-1", now + 100, issued_at=now))
            pttl = await client.pttl("guru_async:token:k")
            assert 89_000 < pttl <= 90_000
            loaded = await RedisTokenStore(client).load("k")
            assert loaded is not None
            assert loaded.access_token == "tok-1"
            assert loaded.expires_at == pytest.approx(time.time() + 100, abs=1)
            assert loaded.issued_at == pytest.approx(loaded.expires_at - 100)
            # A token too close to its expiry is not shared at all.
            await store.save("late", Token("tok-3", now + 5, issued_at=now - 1000))
            assert await client.exists("guru_async:token:late") == 0
    finally:
        await client.aclose()


async def test_discard_drops_only_the_token_that_failed(redis_url: str) -> None:
    """discard() deletes the stored token only while it is still the rejected one."""
    async with RedisTokenStore(redis_url) as store, RedisTokenStore(redis_url) as other:
        now = time.time()
        await store.save("k", Token("new", now + 600, issued_at=now))
        await other.discard("k", "old")
        kept = await store.load("k")
        assert kept is not None
        assert kept.access_token == "new"
        await other.discard("k", "new")
        assert await store.load("k") is None


async def test_a_401_on_an_old_token_keeps_the_one_another_process_stored(
    emulator: GuruEmulator, redis_url: str
) -> None:
    """Two processes on one Redis: after B replaced a revoked token, A's 401 on the old token
    discards nothing and A picks up B's token: two token requests in all, not three."""
    async with (
        RedisTokenStore(redis_url) as store_a,
        RedisTokenStore(redis_url) as store_b,
        emulator.session(token_store=store_a) as a,
        emulator.session(token_store=store_b) as b,
    ):
        await authorized_call(a)
        emulator.expire_tokens()
        await authorized_call(b)  # 401, refresh: B stores the new token
        await authorized_call(a)  # 401 on the old token: B's token survives and is reused
    assert emulator.token_requests == 2


async def test_fetch_once_runs_one_fetch_for_concurrent_callers(redis_url: str) -> None:
    """Two stores (two processes' worth) and 20 concurrent callers run the fetch once, and a
    caller naming the current token as stale gets a fresh fetch."""
    fetched: list[str] = []

    async def fetch() -> Token:
        fetched.append(f"tok-{len(fetched) + 1}")
        await asyncio.sleep(0.05)
        now = time.time()
        return Token(fetched[-1], now + 600, issued_at=now)

    async with RedisTokenStore(redis_url) as one, RedisTokenStore(redis_url) as two:
        tokens = await asyncio.gather(
            *(store.fetch_once("k", fetch, stale=None) for store in (one, two) * 10)
        )
        assert {t.access_token for t in tokens} == {"tok-1"}
        again = await two.fetch_once("k", fetch, stale="tok-1")
    assert again.access_token == "tok-2"
    assert fetched == ["tok-1", "tok-2"]


async def test_a_failed_fetch_releases_the_lock(redis_url: str) -> None:
    """A fetch that raises propagates its error and leaves no lock behind."""

    async def fail() -> Token:
        raise RuntimeError("token endpoint down")

    client = redis_async.Redis.from_url(redis_url)
    try:
        async with RedisTokenStore(redis_url) as store:
            with pytest.raises(RuntimeError, match="token endpoint down"):
                await store.fetch_once("k", fail, stale=None)
        assert await client.keys("*") == []
    finally:
        await client.aclose()


def test_importing_fleet_without_the_extra_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without redis-py installed, importing guru_async.fleet says which extra to install."""
    import importlib
    import sys

    for name in [
        n for n in sys.modules if n == "redis" or n.startswith(("redis.", "guru_async.fleet"))
    ]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "redis", None)  # what an uninstalled package looks like
    with pytest.raises(
        ImportError, match=r'needs the "fleet" extra: pip install "guru-async\[fleet\]"'
    ):
        importlib.import_module("guru_async.fleet")


async def test_rediss_urls_and_clients_are_described_without_secrets(redis_url: str) -> None:
    """rediss:// (TLS) URLs and clients show in reprs as rediss:// without user password; a TLS
    handshake with a server that does not speak TLS is a typed error, password hidden."""
    store = RedisTokenStore("rediss://app:pw-secret@cache.example:6380/1")
    assert repr(store) == (
        "RedisTokenStore('rediss://app:***@cache.example:6380/1', prefix='guru_async:token:')"
    )
    client = redis_async.Redis.from_url("rediss://:pw-secret@cache.example:6380/1")
    try:
        assert repr(RedisTokenStore(client)).startswith(
            "RedisTokenStore('rediss://cache.example:6380/1'"
        )
    finally:
        await client.aclose()
    plain_port = redis_url.rsplit(":", 1)[1].split("/")[0]
    async with RedisTokenStore(f"rediss://:pw-secret@127.0.0.1:{plain_port}/0") as tls:
        with pytest.raises(RedisUnavailableError) as raised:
            await tls.check()
    assert f"rediss://:***@127.0.0.1:{plain_port}/0" in str(raised.value)
    assert "pw-secret" not in str(raised.value)


async def test_the_store_returns_to_redis_after_the_cooldown(
    start_redis: Callable[..., RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    """After an outage, the first operation past ``cooldown`` uses Redis again, and an INFO
    line says so."""
    caplog.set_level(logging.INFO, logger="guru_async.fleet")
    server = start_redis()
    now = time.time()
    async with RedisTokenStore(server.url, cooldown=0.1) as store:
        server.stop()
        await store.save("k", Token("while-down", now + 600, issued_at=now))
        assert (await store.load("k")) is not None  # this process's copy
        server.start()
        await asyncio.sleep(0.15)  # the documented cool-down, not a race
        await store.save("k", Token("after", now + 600, issued_at=now))
    client = redis_async.Redis.from_url(server.url)
    try:
        assert await client.hget("guru_async:token:k", "access_token") == b"after"
    finally:
        await client.aclose()
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in messages] == [logging.WARNING, logging.INFO]
    assert "answers again" in messages[1][1]


async def test_a_call_waits_on_a_held_lock_no_longer_than_its_own_timeout(
    emulator: GuruEmulator, redis_url: str
) -> None:
    """A lock held by another process is waited on, never fetched around: a call whose
    Timeouts.total runs out first fails without a token request, and once the lock expires the
    next call fetches the one token."""
    client = redis_async.Redis.from_url(redis_url)
    try:
        async with (
            RedisTokenStore(redis_url) as store,
            emulator.session(token_store=store, timeouts=Timeouts(total=0.2)) as hurried,
            emulator.session(token_store=store) as patient,
        ):
            key = key_of(emulator, hurried)
            await client.set(f"guru_async:token:{key}:lock", "someone-else", px=1500)
            with pytest.raises(GuruConnectionError, match="timed out waiting for a token"):
                await hurried.get_video(MISSING)
            assert emulator.token_requests == 0
            await authorized_call(patient)
    finally:
        await client.aclose()
    assert emulator.token_requests == 1


@pytest.mark.slow
async def test_processes_sharing_redis_make_one_token_request_after_a_429(
    emulator: GuruEmulator, redis_url: str
) -> None:
    """Five processes on one RedisTokenStore against a token endpoint answering 429 with
    Retry-After: 30 make one token request: the others, and a process started afterwards,
    raise the RateLimitError stored in Redis (a string key beside the token's, expiring on
    Redis's clock) with the time left."""
    emulator.faults.add(FaultRule(TOKEN_ROUTE, status=429, retry_after=30))
    async with token_workers(emulator) as start:
        *together, late = await start(redis_url, "--retries", "0", count=6)
        for worker in together:
            await worker.go()
        outcomes = [await w.outcome() for w in together]
        await late.go()
        outcomes.append(await late.outcome())
    assert [(o["error"], o["status"]) for o in outcomes] == [("RateLimitError", 429)] * 6
    assert all(20 < o["retry_after"] <= 30 for o in outcomes)
    assert emulator.token_requests == 1
    client = redis_async.Redis.from_url(redis_url)
    try:
        async with emulator.session() as guru:
            failure_key = f"guru_async:token:{key_of(emulator, guru)}:failure"
        assert await client.type(failure_key) == b"string"
        assert 20_000 < await client.pttl(failure_key) <= 30_000
        record = json.loads(await client.get(failure_key))
        assert (record["type"], record["status"], record["retry_after"]) == (
            "RateLimitError",
            429,
            True,
        )
        assert await client.keys("guru_async:token:*:lock") == []
    finally:
        await client.aclose()


@pytest.mark.slow
async def test_a_token_request_slower_than_the_lock_is_made_once(
    emulator: GuruEmulator, redis_url: str
) -> None:
    """A token request 2.5 times slower than lock_timeout keeps its lock (renewed while it
    runs): a second process asking meanwhile waits for that token instead of fetching one."""
    emulator.faults.add(FaultRule(TOKEN_ROUTE, kind="delay", delay=2.5, times=1))
    async with token_workers(emulator) as start:
        holder, waiter = await start(redis_url, "--lock-timeout", "1.0", count=2)
        await holder.go()
        await wait_until(lambda: emulator.token_requests == 1)
        await waiter.go()
        outcomes = [await holder.outcome(), await waiter.outcome()]
    assert outcomes == [{"error": None}] * 2
    assert emulator.token_requests == 1
    tokens = {headers_of(r)["authorization"] for r in recorded_on(emulator, GET_VIDEO_ROUTE)}
    assert len(tokens) == 1


async def test_rejected_credentials_are_shared_for_a_second(
    emulator: GuruEmulator, redis_url: str
) -> None:
    """Credentials the token endpoint rejects are asked about once by two processes' worth of
    stores: the second raises the stored AuthenticationError (no retry_after, as the first),
    kept 1 s in Redis; after that the endpoint is asked again."""
    client = redis_async.Redis.from_url(redis_url)

    def session(store: RedisTokenStore) -> GuruSession:
        return GuruSession(
            emulator.client_id,
            "wrong-secret",
            base_url=emulator.base_url,
            token_url=emulator.token_url,
            token_store=store,
        )

    try:
        async with (
            RedisTokenStore(redis_url) as one,
            RedisTokenStore(redis_url) as two,
            session(one) as first,
            session(two) as second,
        ):
            with pytest.raises(AuthenticationError) as refused:
                await first.get_video(MISSING)
            (failure_key,) = await client.keys("guru_async:token:*:failure")
            assert 0 < await client.pttl(failure_key) <= 1000
            with pytest.raises(AuthenticationError) as shared:
                await second.get_video(MISSING)
            assert emulator.token_requests == 1
            assert shared.value.status == refused.value.status == 400
            assert shared.value.retry_after is refused.value.retry_after is None
            assert "wrong-secret" not in (await client.get(failure_key)).decode()
            # Redis's TTL, not this process: wait on the key, then the endpoint is asked again.
            deadline = time.monotonic() + 5
            while await client.exists(failure_key):
                assert time.monotonic() < deadline, "the failure outlived its 1 s TTL"
                await asyncio.sleep(0.05)
        async with RedisTokenStore(redis_url) as three, session(three) as third:
            with pytest.raises(AuthenticationError):
                await third.get_video(MISSING)
    finally:
        await client.aclose()
    assert emulator.token_requests == 2


async def test_a_network_failure_is_not_stored_in_redis(redis_url: str) -> None:
    """A token endpoint nobody listens on (maybe one machine's network) fails the call with
    GuruConnectionError and leaves no failure in Redis for the other machines."""
    client = redis_async.Redis.from_url(redis_url)
    try:
        async with (
            RedisTokenStore(redis_url) as store,
            GuruSession(
                "id",
                "secret",
                base_url="http://127.0.0.1:9/",
                token_url=f"http://127.0.0.1:{free_port()}/oauth2/token",
                token_store=store,
                max_retries=0,
            ) as guru,
        ):
            with pytest.raises(GuruConnectionError):
                await guru.get_video(MISSING)
        assert await client.keys("*") == []
    finally:
        await client.aclose()


async def test_a_saved_token_clears_a_stored_failure(
    emulator: GuruEmulator, redis_url: str
) -> None:
    """A token saved while a failure is stored (another process got one) deletes the failure:
    the next process uses that token instead of raising the failure."""
    emulator.faults.add(FaultRule(TOKEN_ROUTE, status=503, retry_after=30, times=1))
    client = redis_async.Redis.from_url(redis_url)
    try:
        async with (
            RedisTokenStore(redis_url) as one,
            RedisTokenStore(redis_url) as two,
            emulator.session(token_store=one, max_retries=0) as first,
            emulator.session(token_store=two, max_retries=0) as second,
        ):
            with pytest.raises(ServerError):
                await first.get_video(MISSING)
            key = key_of(emulator, first)
            assert await client.exists(f"guru_async:token:{key}:failure") == 1
            now = time.time()
            await one.save(key, Token(emulator.issue_token(), now + 600, issued_at=now))
            assert await client.exists(f"guru_async:token:{key}:failure") == 0
            await authorized_call(second)
    finally:
        await client.aclose()
    assert emulator.token_requests == 1


async def test_a_renewal_that_swallows_its_cancellation_still_lets_the_fetch_return(
    redis_url: str,
) -> None:
    """When the lock's renewal loses the cancellation sent as the fetch ends (a Redis call that
    turns it into a failure, as a client timeout racing the cancel can), the fetch still
    returns its token instead of waiting on the renewal forever (chaos seed 62's stall)."""
    store = RedisTokenStore(redis_url, lock_timeout=0.3)
    real_run = store._link.run
    fetching = False
    renewing = asyncio.Event()
    swallowed: list[str] = []

    async def run_losing_a_cancel(op: Callable[[redis_async.Redis], object]) -> object:
        if not fetching:
            return await real_run(op)
        renewing.set()  # the only Redis call made while the fetch runs is the renewal
        try:
            await asyncio.sleep(30)  # Redis not answering; the cancel arrives meanwhile
        except asyncio.CancelledError:
            swallowed.append("cancel")
            raise Unavailable from None
        return await real_run(op)

    store._link.run = run_losing_a_cancel  # type: ignore[method-assign]

    async def fetch() -> Token:
        nonlocal fetching
        fetching = True
        await renewing.wait()
        fetching = False
        now = time.time()
        return Token("tok-1", now + 600, issued_at=now)

    async with store:
        async with asyncio.timeout(5):
            token = await store.fetch_once("k", fetch, stale=None)
    assert token.access_token == "tok-1"
    assert swallowed == ["cancel"]
