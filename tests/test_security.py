"""Secrets stay secret: the client secret, access tokens and presigned signatures never reach a
repr, an error (or its chain) or a log line; tokens never leave for storage or other hosts;
plain http is refused; token files are private."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import stat
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp import web
from attrs import define, field

from guru_async import (
    APIError,
    AuthenticationError,
    CreatedVideo,
    FileTokenStore,
    GuruConnectionError,
    GuruSession,
    MemoryTokenStore,
    ResponseDecodeError,
    RetryPolicy,
    ServerError,
    SessionClosedError,
    Token,
    UploadError,
)
from guru_async._auth import credentials_key
from guru_async._journal import UploadTarget
from guru_async.testing import (
    ANALYSIS_ROUTE,
    CREATE_ROUTE,
    DOWNLOAD_ROUTE,
    GET_VIDEO_ROUTE,
    J2P_ROUTE,
    TOKEN_ROUTE,
    UPDATE_ROUTE,
    UPLOAD_ROUTE,
    FaultRule,
    GuruEmulator,
)
from tests.conftest import FAST_POLLS
from tests.crafted_server import CraftedServer
from tests.helpers import headers_of

CLIENT_ID = "security-client"
CLIENT_SECRET = "cs-" + secrets.token_hex(16)
STORAGE_ROUTES = (UPLOAD_ROUTE, DOWNLOAD_ROUTE)
API_ROUTES = (
    CREATE_ROUTE,
    GET_VIDEO_ROUTE,
    UPDATE_ROUTE,
    ANALYSIS_ROUTE,
    J2P_ROUTE,
)


def signature_of(uri: str) -> str:
    """The X-Amz-Signature of a presigned download URI."""
    return parse_qs(urlsplit(uri).query)["X-Amz-Signature"][0]


@define
class Flow:
    """A session that went through a whole flow, and every secret it handled."""

    emu: GuruEmulator
    guru: GuruSession
    store: MemoryTokenStore
    video_id: str
    models: list[Any] = field(factory=list)
    secrets: set[str] = field(factory=set)
    tmp: Path = Path()

    async def collect(self) -> None:
        """Add the current token and every presign the emulator issued to the secrets."""
        key = credentials_key(str(self.guru.token_url), CLIENT_ID, CLIENT_SECRET, self.guru.scope)
        token = await self.store.load(key)
        assert token is not None
        self.secrets.add(token.access_token)
        self.models.append(token)
        for video in self.emu.videos.values():
            self.secrets.add(video.fields["x-amz-signature"])
            self.secrets.add(video.fields["policy"])
        # Every token the session ever sent, not only the one stored now.
        sent = (headers_of(r).get("authorization") for r in self.emu.recorded)
        self.secrets.update(token for token in sent if token is not None)

    def assert_clean(self, text: str, where: str) -> None:
        for secret in self.secrets:
            assert secret not in text, f"a secret appears in {where}: {text[:300]!r}"


def chain(exc: BaseException) -> list[BaseException]:
    """The exception and everything reachable through __cause__ and __context__."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo:
        current = todo.pop()
        if any(current is s for s in seen):
            continue
        seen.append(current)
        todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return seen


def error_texts(exc: BaseException) -> list[tuple[str, str]]:
    """Every text an error shows: str and repr of it and its whole chain, its attributes, and
    its formatted traceback."""
    texts = [("traceback", "".join(traceback.format_exception(exc)))]
    for i, e in enumerate(chain(exc)):
        texts += [(f"str(chain[{i}])", str(e)), (f"repr(chain[{i}])", repr(e))]
        texts += [(f"chain[{i}].{k}", repr(v)) for k, v in vars(e).items()]
    return texts


@contextlib.asynccontextmanager
async def full_flow(tmp_path: Path) -> AsyncIterator[Flow]:
    """A full flow (token, create, upload, analysis, video, joints, download) through faults
    that force retries on every route, logged at DEBUG."""
    async with GuruEmulator(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        analysis_delay=0.1,
        storage_dir=tmp_path / "storage",
    ) as emu:
        store = MemoryTokenStore()
        async with GuruSession(
            CLIENT_ID,
            CLIENT_SECRET,
            base_url=emu.base_url,
            token_url=emu.token_url,
            token_store=store,
            poll_policy=FAST_POLLS,
            retry_policy=RetryPolicy(max_retries=4, wait_initial=0.01, wait_max=0.05),
        ) as guru:
            for route, kind in [
                (TOKEN_ROUTE, "status"),
                (CREATE_ROUTE, "status"),
                (UPLOAD_ROUTE, "status"),
                (ANALYSIS_ROUTE, "status"),
                (GET_VIDEO_ROUTE, "truncate"),
                (J2P_ROUTE, "malformed"),
                (DOWNLOAD_ROUTE, "truncate"),
            ]:
                # 500 on storage, not 503 (SlowDown), which would engage the limiter.
                status = 500 if route == UPLOAD_ROUTE else 503
                # Create is retried only when the service asks (a 503 with Retry-After).
                hint = 0.01 if route == CREATE_ROUTE else None
                emu.faults.add(
                    FaultRule(route=route, kind=kind, status=status, retry_after=hint, times=1)  # type: ignore[arg-type]
                )
            source = tmp_path / "squat.mp4"
            source.write_bytes(os.urandom(50_000))
            video_id = await guru.upload_video(source, activity="squat", rep_count=5)
            state = Flow(emu, guru, store, video_id, tmp=tmp_path)
            analysis = await guru.await_analysis(video_id, timeout=10)
            video = await guru.get_video(video_id, include=["analysis", "objects", "j2p"])
            joints = await guru.get_joint_data(video_id)
            await guru.download(video_id, tmp_path / "raw.mp4")
            await guru.download(video_id, tmp_path / "all.mp4", overlay="all")
            created = await guru.create_video("other.mp4", size=10, activity="push_up")
            assert sum(emu.faults.fired.values()) == 7
            emu.faults.clear()
            assert video.uri is not None
            state.secrets.add(signature_of(video.uri))
            for overlay in video.overlays.values():
                assert overlay.uri is not None
                state.secrets.add(signature_of(overlay.uri))
            state.secrets.add(CLIENT_SECRET)
            state.models += [analysis, video, video.overlays, joints, created, store, guru]
            await state.collect()
            yield state


@pytest.fixture
async def flow(tmp_path: Path) -> AsyncIterator[Flow]:
    """The state after a full flow through faults."""
    async with full_flow(tmp_path) as state:
        yield state


async def test_reprs_hide_secrets(flow: Flow, tmp_path: Path) -> None:
    """repr() and str() of the sessions (client credentials or a static token), models, token,
    token stores and the recorded upload targets (journal and fleet) show no secret."""
    file_store = FileTokenStore(tmp_path / "tokens.json")
    token = Token(access_token="tok-" + secrets.token_hex(8), expires_at=1e10)
    flow.secrets.add(token.access_token)
    await file_store.save("k", token)
    static_token = flow.emu.issue_token()
    flow.secrets.add(static_token)
    objects = [*flow.models, file_store, token, flow.guru._transport, flow.guru._transport.token]
    # The presigned target the journal and the fleet record for resuming an upload.
    created = next(m for m in flow.models if isinstance(m, CreatedVideo))
    objects.append(UploadTarget(created.url, created.fields, None))
    async with GuruSession(
        access_token=static_token, base_url=flow.emu.base_url, token_url=flow.emu.token_url
    ) as static:
        await static.get_video(flow.video_id)
        objects += [static, static._transport]
        for obj in objects:
            flow.assert_clean(repr(obj), f"repr({type(obj).__name__})")
            flow.assert_clean(str(obj), f"str({type(obj).__name__})")
    assert len(flow.secrets) >= 7  # secret, 2 tokens, 2 signatures + 2 policies, download sigs


async def _server_error(f: Flow) -> object:
    f.emu.faults.add(FaultRule(route=GET_VIDEO_ROUTE, status=503))
    return await f.guru.get_video(f.video_id, max_retries=1)


async def _storage_refusal(f: Flow) -> object:
    f.emu.faults.add(FaultRule(route=UPLOAD_ROUTE, status=403))
    try:
        return await f.guru.upload_video(f.tmp / "squat.mp4", activity="squat")
    finally:
        await f.collect()


async def _storage_unreachable(f: Flow) -> object:
    created = await f.guru.create_video(f.tmp / "squat.mp4", activity="squat")
    await f.collect()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    moved = CreatedVideo(created.id, f"http://127.0.0.1:{port}/bucket", created.fields)
    return await f.guru.upload(moved, f.tmp / "squat.mp4", max_retries=0)


async def _download_dropped(f: Flow) -> object:
    f.emu.faults.add(FaultRule(route=DOWNLOAD_ROUTE, kind="drop"))
    return await f.guru.download(f.video_id, f.tmp / "x.mp4", max_retries=0)


async def _download_refused(f: Flow) -> object:
    f.emu.faults.add(FaultRule(route=DOWNLOAD_ROUTE, status=403))
    return await f.guru.download(f.video_id, f.tmp / "x.mp4", max_retries=0)


async def _decode_error(f: Flow) -> object:
    f.emu.faults.add(FaultRule(route=ANALYSIS_ROUTE, kind="malformed"))
    return await f.guru.get_analysis(f.video_id, max_retries=0)


async def _revoked_static_token(f: Flow) -> object:
    token = f.emu.issue_token()
    f.secrets.add(token)
    f.emu.revoke_token(token)
    async with GuruSession(access_token=token, base_url=f.emu.base_url) as guru:
        return await guru.get_video(f.video_id)


async def _wrong_secret(f: Flow) -> object:
    wrong = CLIENT_SECRET[::-1]
    f.secrets.add(wrong)
    async with GuruSession(
        CLIENT_ID,
        wrong,
        base_url=f.emu.base_url,
        token_url=f.emu.token_url,
        token_store=MemoryTokenStore(),
    ) as guru:
        return await guru.get_video(f.video_id)


async def _closed(f: Flow) -> object:
    await f.guru.close()
    return await f.guru.get_video(f.video_id)


async def _redirect_loop_download(f: Flow) -> object:
    """Storage that redirects a signed download to itself until the client gives up."""
    api, storage = CraftedServer(), CraftedServer()
    await api.start()
    await storage.start()
    signature = "sig-" + secrets.token_hex(16)
    f.secrets.add(signature)

    async def loop(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(f"{storage.url}/again?X-Amz-Signature={signature}")

    storage.handle(loop)
    api.respond(body=f'{{"uri": "{storage.url}/raw.mp4?X-Amz-Signature={signature}"}}')
    try:
        async with GuruSession(access_token="t", base_url=api.url, max_retries=0) as guru:
            return await guru.download("vid-1", f.tmp / "loop.mp4")
    finally:
        await api.close()
        await storage.close()


ERROR_FLOWS = [
    pytest.param(_server_error, ServerError, id="server-error"),
    pytest.param(_storage_refusal, UploadError, id="storage-refusal"),
    pytest.param(_storage_unreachable, GuruConnectionError, id="storage-unreachable"),
    pytest.param(_download_dropped, GuruConnectionError, id="download-dropped"),
    pytest.param(_download_refused, APIError, id="download-refused"),
    pytest.param(_decode_error, ResponseDecodeError, id="decode-error"),
    pytest.param(_revoked_static_token, AuthenticationError, id="revoked-token"),
    pytest.param(_wrong_secret, AuthenticationError, id="wrong-secret"),
    pytest.param(_closed, SessionClosedError, id="closed-session"),
    pytest.param(_redirect_loop_download, GuruConnectionError, id="download-redirect-loop"),
]


@pytest.mark.parametrize(("make_error", "error"), ERROR_FLOWS)
async def test_errors_hide_secrets(
    flow: Flow, make_error: Callable[[Flow], Awaitable[object]], error: type[Exception]
) -> None:
    """Errors of every kind show no secret in str, repr, attributes, traceback or their chain
    of causes and contexts."""
    with pytest.raises(error) as info:
        await make_error(flow)
    for where, text in error_texts(info.value):
        flow.assert_clean(text, where)


async def test_logs_hide_secrets_and_record_retries(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """DEBUG and INFO logs of a full flow with retries name the retries and show no secret."""
    caplog.set_level(logging.DEBUG, logger="guru_async")
    async with full_flow(tmp_path) as state:
        records = [r for r in caplog.records if r.name.startswith("guru_async")]
        retries = [r for r in records if "retrying" in r.getMessage()]
        assert len(retries) >= 7
        assert {r.levelno for r in records} >= {logging.DEBUG, logging.INFO}
        for record in records:
            state.assert_clean(record.getMessage(), f"log record {record.getMessage()!r}")
            state.assert_clean(repr(record.args), "log record args")
            if record.exc_info:
                state.assert_clean(logging.Formatter().formatException(record.exc_info), "exc")
        state.assert_clean(caplog.text, "captured log text")


async def test_no_authorization_reaches_storage(flow: Flow) -> None:
    """Uploads and downloads carry no Authorization header and no token; API calls carry it."""
    storage = [r for r in flow.emu.recorded if r.route in STORAGE_ROUTES]
    api = [r for r in flow.emu.recorded if r.route in API_ROUTES]
    assert {r.route for r in storage} == set(STORAGE_ROUTES)
    for record in storage:
        assert "authorization" not in {k.lower() for k in record.headers}
        flow.assert_clean(repr(record.headers), f"{record.route} headers")
    assert api
    assert all("authorization" in {k.lower() for k in r.headers} for r in api)


@pytest.mark.parametrize(
    "url",
    [
        "http://api.getguru.fitness",
        "http://10.0.0.5:8080",
        "http://127.0.0.1.nip.io",
        "http://localhost.example.com",
        "http://[2001:db8::1]",
    ],
)
@pytest.mark.parametrize("which", ["base_url", "token_url"])
def test_plain_http_to_remote_hosts_is_refused(url: str, which: str) -> None:
    """Plain http to anything but this machine is refused with a ValueError that says why."""
    with pytest.raises(ValueError, match="plain http") as info:
        GuruSession("id", "secret", **{which: url})  # type: ignore[arg-type]
    assert which in str(info.value)
    assert "allow_insecure_http=True" in str(info.value)


@pytest.mark.parametrize(
    ("url", "allow"),
    [
        ("http://api.getguru.fitness", True),
        ("http://127.0.0.1:1", False),
        ("http://localhost:1", False),
        ("http://[::1]:1", False),
        ("https://api.getguru.fitness", False),
    ],
)
async def test_http_allowed_when_local_or_opted_in(url: str, allow: bool) -> None:
    """Loopback, https, and plain http with allow_insecure_http=True are accepted."""
    guru = GuruSession("id", "secret", base_url=url, token_url=url, allow_insecure_http=allow)
    assert str(guru.base_url).rstrip("/") == url
    await guru.close()


@pytest.fixture
async def servers() -> AsyncIterator[tuple[CraftedServer, CraftedServer]]:
    """An API server and a second, foreign server that records what reaches it."""
    api, foreign = CraftedServer(), CraftedServer()
    await api.start()
    await foreign.start()
    foreign.respond(body='{"status": "Complete"}')
    yield api, foreign
    await api.close()
    await foreign.close()


async def test_api_redirect_is_not_followed(servers: tuple[CraftedServer, CraftedServer]) -> None:
    """A 302 from the API to another host raises APIError; the token never goes there."""
    api, foreign = servers
    api.respond(302, b"", headers={"Location": f"{foreign.url}/steal"})
    token = "tok-" + secrets.token_hex(12)
    async with GuruSession(access_token=token, base_url=api.url, max_retries=0) as guru:
        with pytest.raises(APIError, match="HTTP 302") as info:
            await guru.get_analysis("vid-1")
    assert type(info.value) is APIError
    assert info.value.status == 302
    assert [h.headers.get("authorization") for h in api.hits] == [token]
    assert foreign.hits == []


async def test_token_endpoint_redirect_is_not_followed(
    servers: tuple[CraftedServer, CraftedServer],
) -> None:
    """A 307 from the token endpoint does not re-post the client secret to another host."""
    api, foreign = servers
    api.respond(307, b"", headers={"Location": f"{foreign.url}/oauth2/token"})
    async with GuruSession(
        CLIENT_ID,
        CLIENT_SECRET,
        base_url=api.url,
        token_url=api.url + "/oauth2/token",
        token_store=MemoryTokenStore(),
        max_retries=0,
    ) as guru:
        with pytest.raises(APIError, match="HTTP 307") as info:
            await guru.get_analysis("vid-1")
    assert info.value.status == 307
    assert CLIENT_SECRET not in str(info.value)
    assert len(api.hits) == 1
    assert CLIENT_SECRET.encode() in api.hits[0].body
    assert foreign.hits == []


async def test_download_redirect_carries_no_token(
    servers: tuple[CraftedServer, CraftedServer], tmp_path: Path
) -> None:
    """A storage redirect may be followed for a download, but no Authorization goes with it."""
    api, foreign = servers
    token = "tok-" + secrets.token_hex(12)
    content = os.urandom(1000)

    async def storage(request: web.Request) -> web.StreamResponse:
        if request.path == "/raw.mp4":
            raise web.HTTPFound(f"{foreign.url}/moved.mp4")
        return web.Response(body=content, content_type="video/mp4")

    api.handle(storage)
    foreign.handle(storage)

    async def get_video(request: web.Request) -> web.StreamResponse:
        if request.path.startswith("/videos/"):
            return web.json_response({"status": "Success", "uri": f"{api.url}/raw.mp4?sig=1"})
        return await storage(request)

    api.handle(get_video)
    async with GuruSession(access_token=token, base_url=api.url, max_retries=0) as guru:
        out = await guru.download("vid-1", tmp_path / "moved.mp4")
    assert out.read_bytes() == content
    assert [h.path for h in foreign.hits] == ["/moved.mp4"]
    assert all("authorization" not in h.headers for h in foreign.hits)
    assert [h.headers.get("authorization") for h in api.hits] == [token, None]


@pytest.mark.parametrize(
    ("field_name", "reply"),
    [
        ("upload url", {"id": "vid-1", "url": "http://storage.example.com/bucket", "fields": {}}),
        ("download uri", {"status": "Success", "uri": "http://storage.example.com/raw.mp4?s=1"}),
    ],
    ids=["upload-url", "download-uri"],
)
async def test_plain_http_storage_from_the_server_is_refused(
    servers: tuple[CraftedServer, CraftedServer],
    tmp_path: Path,
    field_name: str,
    reply: dict[str, Any],
) -> None:
    """A server cannot downgrade uploads or downloads to plain http on a remote host: its
    answer is treated as a bad response."""
    api, _ = servers
    api.handle(lambda request: _json(reply))
    async with GuruSession(access_token="t", base_url=api.url, max_retries=0) as guru:
        call = (
            guru.create_video("a.mp4", size=1)
            if field_name == "upload url"
            else guru.download("vid-1", tmp_path / "out.mp4")
        )
        with pytest.raises(ResponseDecodeError, match=f"{field_name} uses plain http"):
            await call
    assert not (tmp_path / "out.mp4").exists()


async def _json(data: Any) -> web.StreamResponse:
    return web.json_response(data)


# -- token files -------------------------------------------------------------------------------


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """Run with umask 000, so privacy cannot come from the environment's umask."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_file_token_store_is_private(tmp_path: Path, permissive_umask: None) -> None:
    """The token file is 0600 and the missing folder it creates is 0700, even with umask 000."""
    path = tmp_path / "cache" / "tokens.json"
    store = FileTokenStore(path)
    await store.save("key", Token(access_token="tok", expires_at=1e10))
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    assert (await store.load("key")) == Token(access_token="tok", expires_at=1e10)


async def test_file_token_store_creates_every_missing_folder_private(
    tmp_path: Path, permissive_umask: None
) -> None:
    """Every folder the store creates on the way to its file is 0700, not world-writable."""
    path = tmp_path / "home" / "cache" / "guru" / "tokens.json"
    await FileTokenStore(path).save("key", Token(access_token="tok", expires_at=1e10))
    assert _mode(path) == 0o600
    modes = {p.name: oct(_mode(p)) for p in (path.parent, path.parent.parent, tmp_path / "home")}
    assert modes == {"guru": "0o700", "cache": "0o700", "home": "0o700"}


async def test_file_token_store_replaces_a_readable_file_with_a_private_one(
    tmp_path: Path,
) -> None:
    """A token file someone left world-readable becomes 0600 at the next save."""
    path = tmp_path / "tokens.json"
    path.write_text("{}")
    path.chmod(0o644)
    await FileTokenStore(path).save("key", Token(access_token="tok", expires_at=1e10))
    assert _mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokens.json", "tokens.json.lock"]


async def test_concurrent_saves_leave_a_whole_private_file(tmp_path: Path) -> None:
    """Many concurrent saves leave one valid 0600 file (and its lock file) and no temporary
    files behind."""
    path = tmp_path / "tokens.json"
    store = FileTokenStore(path)
    tokens = [Token(access_token=f"tok-{i}", expires_at=1e10) for i in range(20)]
    await asyncio.gather(*(store.save(f"key-{i}", t) for i, t in enumerate(tokens)))
    assert _mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokens.json", "tokens.json.lock"]
    loaded = [await store.load(f"key-{i}") for i in range(20)]
    assert sum(t is not None for t in loaded) >= 1
    assert all(t is None or t in tokens for t in loaded)
