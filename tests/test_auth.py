"""Tokens: fetched once, reused, refreshed before expiry and after a 401, kept in token stores."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

import guru_async._auth as guru_auth
import guru_async._token_failure as token_failure
from guru_async import (
    AuthenticationError,
    FileTokenStore,
    GuruConnectionError,
    GuruSession,
    MemoryTokenStore,
    NotFoundError,
    ServerError,
    SessionClosedError,
    Timeouts,
    Token,
    Video,
)
from guru_async.testing import (
    ANALYSIS_ROUTE,
    CREATE_ROUTE,
    GET_VIDEO_ROUTE,
    J2P_ROUTE,
    TOKEN_ROUTE,
    UPDATE_ROUTE,
    FaultRule,
    GuruEmulator,
)
from tests.conftest import FAST_POLLS
from tests.helpers import headers_of, recorded_on, wait_until
from tests.redis_server import free_port
from tests.token_procs import token_workers

API_ROUTES = {CREATE_ROUTE, GET_VIDEO_ROUTE, UPDATE_ROUTE, ANALYSIS_ROUTE, J2P_ROUTE}

MakeSession = Callable[..., GuruSession]


async def _created_video_id(emulator: GuruEmulator) -> str:
    """A video created through a throwaway session, with the counters then reset."""
    async with GuruSession(
        emulator.client_id,
        emulator.client_secret,
        base_url=emulator.base_url,
        token_url=emulator.token_url,
        token_store=MemoryTokenStore(),
    ) as setup:
        created = await setup.create_video("clip.mp4", size=10, activity="squat")
    emulator.reset_counters()
    emulator.recorded.clear()
    return created.id


def _api_authorizations(emulator: GuruEmulator) -> list[str]:
    return [headers_of(r)["authorization"] for r in emulator.recorded if r.route in API_ROUTES]


async def test_concurrent_first_calls_fetch_one_token(
    emulator: GuruEmulator, make_session: MakeSession
) -> None:
    """50 concurrent calls on a fresh session share a single token request."""
    video_id = await _created_video_id(emulator)
    async with make_session() as guru:
        calls: list[Awaitable[object]] = []
        for i in range(50):
            calls.append(guru.get_analysis(video_id) if i % 2 else guru.get_video(video_id))
        results = await asyncio.gather(*calls)
    assert emulator.token_requests == 1
    assert emulator.requests[ANALYSIS_ROUTE] == 25
    assert emulator.requests[GET_VIDEO_ROUTE] == 25
    assert sum(isinstance(r, Video) for r in results) == 25
    assert len(set(_api_authorizations(emulator))) == 1


async def test_token_is_reused_across_calls(emulator: GuruEmulator, guru: GuruSession) -> None:
    """Sequential calls all send the same token, fetched once."""
    created = await guru.create_video("clip.mp4", size=10)
    for _ in range(5):
        await guru.get_video(created.id)
        await guru.get_analysis(created.id)
    assert emulator.token_requests == 1
    tokens = _api_authorizations(emulator)
    assert len(tokens) == 11
    assert len(set(tokens)) == 1


async def test_token_is_refreshed_before_it_expires(
    start_emulator: Callable[..., Awaitable[GuruEmulator]],
    session_for: Callable[..., GuruSession],
) -> None:
    """With 1 s tokens and calls over 1.3 s, tokens are renewed early: no call gets a 401."""
    emu = await start_emulator(token_lifetime=1.0)
    async with session_for(emu) as guru:
        created = await guru.create_video("clip.mp4", size=10)
        calls = 0
        started = time.monotonic()
        while time.monotonic() - started < 1.3:
            await guru.get_video(created.id)
            calls += 1
            await asyncio.sleep(0.04)  # spread the calls over more than one token lifetime
    # A 401 would show as a second request for the same call.
    assert emu.requests[GET_VIDEO_ROUTE] == calls
    assert emu.requests[CREATE_ROUTE] == 1
    assert 2 <= emu.token_requests <= 3
    assert emu.token_requests * 5 < calls


async def test_expired_token_is_refreshed_once_and_the_call_succeeds(
    emulator: GuruEmulator, guru: GuruSession
) -> None:
    """After the API answers 401, the session fetches one new token and retries the call once."""
    created = await guru.create_video("clip.mp4", size=10, activity="squat")
    assert emulator.token_requests == 1
    emulator.expire_tokens()
    video = await guru.get_video(created.id)
    assert video.status == "Pending"
    assert emulator.token_requests == 2
    assert emulator.requests[GET_VIDEO_ROUTE] == 2
    old, rejected, fresh = _api_authorizations(emulator)
    assert old == rejected
    assert fresh != old
    # The new token keeps being used: no further token requests.
    await guru.get_analysis(created.id)
    assert emulator.token_requests == 2


async def test_wrong_client_secret_fails_at_once(emulator: GuruEmulator) -> None:
    """Rejected credentials raise AuthenticationError after one token request, secret not shown."""
    secret = "wrong-secret-d41d8cd98f00"
    async with GuruSession(
        emulator.client_id,
        secret,
        base_url=emulator.base_url,
        token_url=emulator.token_url,
        token_store=MemoryTokenStore(),
    ) as guru:
        with pytest.raises(AuthenticationError) as caught:
            await guru.get_analysis("0b8e4c1e-0000-4000-8000-000000000000")
    assert emulator.token_requests == 1
    assert emulator.requests[ANALYSIS_ROUTE] == 0
    assert secret not in str(caught.value)
    assert secret not in repr(caught.value)
    assert "invalid_client" in str(caught.value)


async def test_token_endpoint_401_raises_authentication_error(
    emulator: GuruEmulator, guru: GuruSession
) -> None:
    """A token endpoint that answers 401 raises AuthenticationError after one token request."""
    emulator.faults.add(FaultRule(route=TOKEN_ROUTE, kind="status", status=401))
    with pytest.raises(AuthenticationError) as caught:
        await guru.get_analysis("0b8e4c1e-0000-4000-8000-000000000000")
    assert caught.value.status == 401
    assert emulator.token_requests == 1
    assert emulator.requests[ANALYSIS_ROUTE] == 0


async def test_file_token_store_survives_a_restart(
    emulator: GuruEmulator, make_session: MakeSession, tmp_path: Path
) -> None:
    """A second session on the same token file reuses the saved token: no token request."""
    path = tmp_path / "tokens.json"
    async with make_session(token_store=FileTokenStore(path)) as first:
        created = await first.create_video("clip.mp4", size=10)
    assert emulator.token_requests == 1
    async with make_session(token_store=FileTokenStore(path)) as second:
        video = await second.get_video(created.id)
    assert video.status == "Pending"
    assert emulator.token_requests == 1
    first_token, second_token = _api_authorizations(emulator)
    assert first_token == second_token


async def test_file_token_store_is_private(
    emulator: GuruEmulator, make_session: MakeSession, tmp_path: Path
) -> None:
    """The token file is mode 0600 in a 0700 folder, and never holds the client secret."""
    path = tmp_path / "cache" / "guru" / "tokens.json"
    async with make_session(token_store=FileTokenStore(path)) as guru:
        await guru.create_video("clip.mp4", size=10)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    text = path.read_text()
    assert emulator.client_secret not in text
    (entry,) = json.loads(text).values()
    assert entry["access_token"] == _api_authorizations(emulator)[0]
    assert entry["expires_at"] > time.time() + 3000


async def test_corrupt_token_file_is_ignored_and_replaced(
    emulator: GuruEmulator, make_session: MakeSession, tmp_path: Path
) -> None:
    """A token file that is not JSON is ignored, a token is fetched, and the file is rewritten."""
    path = tmp_path / "tokens.json"
    path.write_text("{not json at all")
    async with make_session(token_store=FileTokenStore(path)) as guru:
        await guru.create_video("clip.mp4", size=10)
    assert emulator.token_requests == 1
    saved = json.loads(path.read_text())
    assert [entry["access_token"] for entry in saved.values()] == _api_authorizations(emulator)


async def test_sessions_sharing_a_memory_store_share_a_token(
    emulator: GuruEmulator, make_session: MakeSession
) -> None:
    """Two sessions on one MemoryTokenStore use the same token, fetched once."""
    store = MemoryTokenStore()
    async with make_session(token_store=store) as first, make_session(token_store=store) as second:
        created = await first.create_video("clip.mp4", size=10)
        await second.get_video(created.id)
    assert emulator.token_requests == 1
    first_token, second_token = _api_authorizations(emulator)
    assert first_token == second_token


async def test_static_access_token_is_used_as_given(emulator: GuruEmulator) -> None:
    """access_token= makes calls with that token and never asks the token endpoint."""
    token = emulator.issue_token()
    async with GuruSession(
        access_token=token, base_url=emulator.base_url, token_url=emulator.token_url
    ) as guru:
        created = await guru.create_video("clip.mp4", size=10)
        await guru.get_analysis(created.id)
    assert emulator.token_requests == 0
    assert _api_authorizations(emulator) == [token, token]


async def test_static_access_token_rejected_raises(emulator: GuruEmulator) -> None:
    """A revoked static token raises AuthenticationError (401); nothing tries to refresh it."""
    token = emulator.issue_token()
    emulator.revoke_token(token)
    async with GuruSession(
        access_token=token, base_url=emulator.base_url, token_url=emulator.token_url
    ) as guru:
        with pytest.raises(AuthenticationError) as caught:
            await guru.get_analysis("0b8e4c1e-0000-4000-8000-000000000000")
    assert caught.value.status == 401
    assert emulator.token_requests == 0
    assert token not in str(caught.value)


async def test_authorization_header_is_the_raw_token(
    emulator: GuruEmulator, guru: GuruSession
) -> None:
    """API calls send "Authorization: <token>" with no Bearer prefix."""
    created = await guru.create_video("clip.mp4", size=10)
    await guru.get_video(created.id)
    tokens = _api_authorizations(emulator)
    assert len(tokens) == 2
    for token in tokens:
        assert not token.lower().startswith("bearer")
        assert " " not in token
        assert len(token) >= 32


async def test_token_request_is_a_client_credentials_form(
    emulator: GuruEmulator, guru: GuruSession
) -> None:
    """The token request is a form POST with no Authorization header of its own."""
    await guru.create_video("clip.mp4", size=10)
    (token_request,) = recorded_on(emulator, TOKEN_ROUTE)
    headers = headers_of(token_request)
    assert headers["content-type"] == "application/x-www-form-urlencoded"
    assert "authorization" not in headers


async def test_credentials_and_urls_from_the_environment(
    emulator: GuruEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GURU_CLIENT_ID/_SECRET and GURU_BASE_URL/GURU_TOKEN_URL variables fill in arguments."""
    monkeypatch.setenv("GURU_CLIENT_ID", emulator.client_id)
    monkeypatch.setenv("GURU_CLIENT_SECRET", emulator.client_secret)
    monkeypatch.setenv("GURU_BASE_URL", emulator.base_url)
    monkeypatch.setenv("GURU_TOKEN_URL", emulator.token_url)
    async with GuruSession(token_store=MemoryTokenStore(), poll_policy=FAST_POLLS) as guru:
        created = await guru.create_video("clip.mp4", size=10)
    assert created.id in emulator.videos
    assert emulator.token_requests == 1


def test_missing_credentials_raise_value_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no credentials given or in the environment, the session refuses to start."""
    monkeypatch.delenv("GURU_CLIENT_ID", raising=False)
    monkeypatch.delenv("GURU_CLIENT_SECRET", raising=False)
    with pytest.raises(ValueError, match="GURU_CLIENT_ID"):
        GuruSession()
    with pytest.raises(ValueError, match="client_secret"):
        GuruSession("only-an-id")


async def test_sessions_sharing_a_store_share_one_refresh(
    emulator: GuruEmulator, make_session: Callable[..., GuruSession]
) -> None:
    """Two sessions on one token store, starting together, make one token request between
    them."""
    store = MemoryTokenStore()
    async with make_session(token_store=store) as one, make_session(token_store=store) as two:
        await asyncio.gather(
            *(session.get_analysis("missing-video") for session in (one, two) for _ in range(5)),
            return_exceptions=True,
        )
    assert emulator.token_requests == 1


async def test_concurrent_saves_of_different_keys_all_survive(tmp_path: Path) -> None:
    """20 concurrent saves of different keys to one FileTokenStore leave all 20 in the file."""
    store = FileTokenStore(tmp_path / "tokens.json")
    expires = time.time() + 3600
    await asyncio.gather(*(store.save(f"key-{i}", Token(f"token-{i}", expires)) for i in range(20)))
    reader = FileTokenStore(tmp_path / "tokens.json")
    loaded = [await reader.load(f"key-{i}") for i in range(20)]
    assert [t.access_token if t else None for t in loaded] == [f"token-{i}" for i in range(20)]
    assert stat.S_IMODE(os.stat(tmp_path / "tokens.json.lock").st_mode) == 0o600


async def test_file_store_discard_drops_only_the_rejected_token(tmp_path: Path) -> None:
    """discard() deletes a stored token only while it is still the rejected one."""
    store = FileTokenStore(tmp_path / "tokens.json")
    expires = time.time() + 3600
    await store.save("a", Token("replacement", expires))
    await store.save("b", Token("other", expires))
    await store.discard("a", "rejected-earlier")
    assert (await store.load("a")) == Token("replacement", expires)
    await store.discard("a", "replacement")
    assert await store.load("a") is None
    assert (await store.load("b")) == Token("other", expires)


async def test_file_store_fetch_once_reuses_a_fresh_token_unless_stale(tmp_path: Path) -> None:
    """fetch_once() returns the stored fresh token without fetching, and fetches (and saves)
    when the stored token is the stale one."""
    store = FileTokenStore(tmp_path / "tokens.json")
    stored = Token("stored", time.time() + 3600)
    await store.save("k", stored)
    fetched: list[Token] = []

    async def fetch() -> Token:
        fetched.append(Token(f"new-{len(fetched)}", time.time() + 3600))
        return fetched[-1]

    assert await store.fetch_once("k", fetch, stale=None) == stored
    assert fetched == []
    new = await store.fetch_once("k", fetch, stale="stored")
    assert new.access_token == "new-0"
    assert await FileTokenStore(tmp_path / "tokens.json").load("k") == new


@pytest.mark.slow
async def test_processes_starting_together_make_one_token_request(
    emulator: GuruEmulator, tmp_path: Path
) -> None:
    """Four processes sharing a token file, released at once against a slow token endpoint,
    make one token request and all call the API with that token."""
    emulator.faults.add(FaultRule(route=TOKEN_ROUTE, kind="delay", delay=0.3))
    token_file = tmp_path / "cache" / "tokens.json"
    async with token_workers(emulator) as start:
        workers = await start(str(token_file), count=4)
        for worker in workers:
            await worker.go()
        outcomes = [await w.outcome() for w in workers]
    assert outcomes == [{"error": None}] * 4
    assert emulator.token_requests == 1
    tokens = {headers_of(r)["authorization"] for r in recorded_on(emulator, GET_VIDEO_ROUTE)}
    assert len(tokens) == 1
    (entry,) = json.loads(token_file.read_text()).values()
    assert tokens == {entry["access_token"]}


@pytest.mark.slow
async def test_processes_sharing_a_token_file_make_one_request_after_a_429(
    emulator: GuruEmulator, tmp_path: Path
) -> None:
    """Five processes on one token file against a token endpoint answering 429 with
    Retry-After: 30 make one token request: the others, and a process started afterwards,
    raise the stored RateLimitError with the time left, from a 0600 file beside the tokens."""
    emulator.faults.add(FaultRule(route=TOKEN_ROUTE, status=429, retry_after=30))
    token_file = tmp_path / "tokens.json"
    async with token_workers(emulator) as start:
        *together, late = await start(str(token_file), "--retries", "0", count=6)
        for worker in together:
            await worker.go()
        outcomes = [await w.outcome() for w in together]
        await late.go()
        outcomes.append(await late.outcome())
    assert [(o["error"], o["status"]) for o in outcomes] == [("RateLimitError", 429)] * 6
    assert all(20 < o["retry_after"] <= 30 for o in outcomes)
    assert emulator.token_requests == 1
    failures = token_file.with_name("tokens.json.failures")
    assert stat.S_IMODE(os.stat(failures).st_mode) == 0o600
    (entry,) = json.loads(failures.read_text()).values()
    assert entry["type"] == "RateLimitError"
    assert 20 < entry["until"] - time.time() <= 30
    assert emulator.client_secret not in failures.read_text()


MISSING_ID = "0b8e4c1e-0000-4000-8000-000000000000"


async def test_a_failed_token_fetch_is_shared_by_every_waiting_call(
    emulator: GuruEmulator, make_session: MakeSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six concurrent calls against a token endpoint answering 503 make one fetch (its own
    retry included) between them, all raise its error, and a call made just after gets the
    remembered failure without another token request."""
    monkeypatch.setattr(token_failure, "FAILED_FETCH_MEMORY", 60.0)
    emulator.faults.add(FaultRule(route=TOKEN_ROUTE, status=503, retry_after=0.01))
    async with make_session(max_retries=1, timeouts=Timeouts(total=5)) as guru:
        results = await asyncio.gather(
            *(guru.get_video(MISSING_ID) for _ in range(6)), return_exceptions=True
        )
        assert all(isinstance(r, ServerError) and r.status == 503 for r in results)
        assert emulator.token_requests == 2
        with pytest.raises(ServerError) as later:
            await guru.get_video(MISSING_ID)
    assert later.value is results[0]
    assert emulator.token_requests == 2
    assert emulator.requests[GET_VIDEO_ROUTE] == 0


async def test_a_remembered_token_failure_expires(
    emulator: GuruEmulator, make_session: MakeSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the failure's memory has run out, the next call asks the token endpoint again and
    succeeds when it has recovered."""
    monkeypatch.setattr(token_failure, "FAILED_FETCH_MEMORY", 0.0)
    emulator.faults.add(FaultRule(route=TOKEN_ROUTE, status=503, times=1))
    async with make_session(max_retries=0) as guru:
        with pytest.raises(ServerError):
            await guru.get_video(MISSING_ID)
        with pytest.raises(NotFoundError):
            await guru.get_video(MISSING_ID)
    assert emulator.token_requests == 2


async def test_waiting_for_a_token_counts_against_the_calls_own_timeout(
    emulator: GuruEmulator, make_session: MakeSession
) -> None:
    """A call with a short total timeout stops waiting for a slow token request at its own
    deadline, while the call that started the request still gets the token."""
    emulator.faults.add(FaultRule(route=TOKEN_ROUTE, kind="delay", delay=0.5))
    store = MemoryTokenStore()
    async with (
        make_session(token_store=store) as patient,
        make_session(token_store=store, timeouts=Timeouts(total=0.1)) as hurried,
    ):
        first = asyncio.ensure_future(patient.get_video(MISSING_ID))
        await wait_until(lambda: emulator.token_requests == 1)
        with pytest.raises(GuruConnectionError, match="timed out waiting for a token"):
            await hurried.get_video(MISSING_ID)
        with pytest.raises(NotFoundError):
            await first
    assert emulator.token_requests == 1
    assert emulator.requests[GET_VIDEO_ROUTE] == 1


async def test_a_route_that_keeps_answering_401_refreshes_once(
    emulator: GuruEmulator, make_session: MakeSession
) -> None:
    """Ten calls to a route that answers 401 to every token cost one refresh: once the fresh
    token is rejected too, 401s are raised without refreshing, and other routes keep working
    with that token."""
    video_id = await _created_video_id(emulator)
    emulator.faults.add(FaultRule(route=GET_VIDEO_ROUTE, status=401))
    async with make_session() as guru:
        for _ in range(10):
            with pytest.raises(AuthenticationError) as caught:
                await guru.get_video(video_id)
            assert caught.value.status == 401
        analysis = await guru.get_analysis(video_id)
    assert analysis.status == "Pending"
    assert emulator.token_requests == 2
    assert emulator.requests[GET_VIDEO_ROUTE] == 11
    first, refreshed, *rest = _api_authorizations(emulator)
    assert first != refreshed
    assert set(rest) == {refreshed}


async def test_concurrent_401s_on_one_token_cause_one_refresh(
    emulator: GuruEmulator, make_session: MakeSession
) -> None:
    """Two waves of 10 concurrent calls to a route answering 401 make one refresh between
    them."""
    video_id = await _created_video_id(emulator)
    emulator.faults.add(FaultRule(route=GET_VIDEO_ROUTE, status=401))
    async with make_session() as guru:
        for _ in range(2):
            results = await asyncio.gather(
                *(guru.get_video(video_id) for _ in range(10)), return_exceptions=True
            )
            assert all(isinstance(r, AuthenticationError) for r in results)
    assert emulator.token_requests == 2


async def test_after_the_cool_down_a_401_refreshes_again(
    emulator: GuruEmulator, make_session: MakeSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the cool-down over, each 401 refreshes once again (a revoked token still heals)."""
    monkeypatch.setattr(guru_auth, "REJECTED_TOKEN_COOLDOWN", 0.0)
    video_id = await _created_video_id(emulator)
    emulator.faults.add(FaultRule(route=GET_VIDEO_ROUTE, status=401))
    async with make_session() as guru:
        for _ in range(3):
            with pytest.raises(AuthenticationError):
                await guru.get_video(video_id)
    assert emulator.token_requests == 4


async def test_a_401_discards_the_token_from_a_file_store_only_if_unchanged(
    emulator: GuruEmulator, make_session: MakeSession, tmp_path: Path
) -> None:
    """After a 401, a second session on the same token file finds the token the first one
    fetched in its place and uses it: two token requests in all, the file holding the new one."""
    video_id = await _created_video_id(emulator)
    path = tmp_path / "tokens.json"
    async with (
        make_session(token_store=FileTokenStore(path)) as one,
        make_session(token_store=FileTokenStore(path)) as two,
    ):
        await one.get_video(video_id)
        await two.get_video(video_id)
        emulator.expire_tokens()
        await one.get_video(video_id)
        await two.get_video(video_id)
    assert emulator.token_requests == 2
    old, old_again, rejected, fresh, rejected_again, fresh_again = _api_authorizations(emulator)
    assert old == old_again == rejected == rejected_again
    assert fresh == fresh_again != old
    (entry,) = json.loads(path.read_text()).values()
    assert entry["access_token"] == fresh


async def test_a_session_closed_mid_refresh_does_not_fail_another_sessions_call(
    emulator: GuruEmulator, make_session: MakeSession
) -> None:
    """When the session whose token request others wait on is closed, a waiting call of an open
    session sharing the store fetches its own token and succeeds."""
    emulator.faults.add(FaultRule(route=TOKEN_ROUTE, kind="delay", delay=0.3, times=1))
    store = MemoryTokenStore()
    async with make_session(token_store=store) as staying:
        leaving = make_session(token_store=store)
        first = asyncio.ensure_future(leaving.get_video(MISSING_ID))
        await wait_until(lambda: emulator.token_requests == 1)
        waiting = asyncio.ensure_future(staying.get_video(MISSING_ID))
        await asyncio.sleep(0)  # let it join the token request in flight
        await leaving.close()
        with pytest.raises(SessionClosedError):
            await first
        with pytest.raises(NotFoundError):
            await waiting
    assert emulator.token_requests == 2
    assert emulator.requests[GET_VIDEO_ROUTE] == 1


async def test_a_token_that_cured_a_401_is_refreshed_when_it_is_revoked_later(
    emulator: GuruEmulator, guru: GuruSession
) -> None:
    """A token fetched after a 401 that then worked is itself refreshed after a later 401: the
    cool-down is only for fresh tokens that are rejected at once."""
    created = await guru.create_video("clip.mp4", size=10, activity="squat")
    for _ in range(2):
        emulator.expire_tokens()
        video = await guru.get_video(created.id)
        assert video.status == "Pending"
    assert emulator.token_requests == 3
    assert emulator.requests[GET_VIDEO_ROUTE] == 4


async def test_a_caller_arriving_as_a_refresh_is_abandoned_gets_a_token(
    emulator: GuruEmulator, guru: GuruSession
) -> None:
    """When the only caller waiting for a token refresh is cancelled, a call made right after,
    before the abandoned refresh has finished, gets a token of its own, not CancelledError."""
    emulator.faults.add(FaultRule(route=TOKEN_ROUTE, kind="delay", delay=30, times=1))
    leaving = asyncio.ensure_future(guru.get_video(MISSING_ID))
    await wait_until(lambda: emulator.token_requests == 1)  # its refresh is in flight
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    # The refresh is cancelled but has not landed yet (its done-callback runs after this
    # task resumes): the call below starts while it is still being torn down.
    with pytest.raises(NotFoundError):
        await guru.get_video(MISSING_ID)
    assert emulator.token_requests == 2
    assert emulator.requests[GET_VIDEO_ROUTE] == 1


async def test_rejected_credentials_are_shared_through_a_token_file(
    emulator: GuruEmulator, tmp_path: Path
) -> None:
    """A token endpoint rejecting the credentials is asked once by two sessions with their own
    FileTokenStore on one file (two processes' worth): the second raises the stored
    AuthenticationError, which carries no retry_after, as the first did not."""
    path = tmp_path / "tokens.json"
    sessions = [
        GuruSession(
            emulator.client_id,
            "wrong-secret",
            base_url=emulator.base_url,
            token_url=emulator.token_url,
            token_store=FileTokenStore(path),
        )
        for _ in range(2)
    ]
    try:
        with pytest.raises(AuthenticationError) as first:
            await sessions[0].get_video(MISSING_ID)
        with pytest.raises(AuthenticationError) as second:
            await sessions[1].get_video(MISSING_ID)
    finally:
        for session in sessions:
            await session.close()
    assert emulator.token_requests == 1
    assert first.value.status == second.value.status == 400  # the emulator's invalid_client
    assert first.value.retry_after is None
    assert second.value.retry_after is None
    assert "kept in the token store" in str(second.value)
    assert "wrong-secret" not in path.with_name("tokens.json.failures").read_text()


async def test_a_network_failure_is_not_kept_in_a_token_file(tmp_path: Path) -> None:
    """A token endpoint nobody listens on (one machine's network, maybe) fails the call with
    GuruConnectionError and leaves nothing in the token file's failures."""
    path = tmp_path / "tokens.json"
    async with GuruSession(
        "id",
        "secret",
        base_url="http://127.0.0.1:9/",
        token_url=f"http://127.0.0.1:{free_port()}/oauth2/token",
        token_store=FileTokenStore(path),
        max_retries=0,
    ) as guru:
        with pytest.raises(GuruConnectionError):
            await guru.get_video(MISSING_ID)
    assert not path.with_name("tokens.json.failures").exists()
