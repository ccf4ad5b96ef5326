"""Hostile input, both ways: bad user arguments fail before anything is sent, and broken or
malicious server bodies fail as typed errors with helpful, bounded messages."""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from attrs import frozen

from guru_async import (
    APIError,
    AuthenticationError,
    BadRequestError,
    GuruSession,
    MemoryTokenStore,
    NotFoundError,
    RateLimitError,
    ResponseDecodeError,
    ServerError,
    Unvalidated,
    UploadError,
)
from guru_async.testing import GuruEmulator
from tests.crafted_server import CraftedServer

VideoFile = Callable[..., Path]


@frozen
class UserCtx:
    """What a user-argument case may call."""

    guru: GuruSession
    tmp: Path
    video_file: VideoFile
    emulator: GuruEmulator


async def _text_mode_file(c: UserCtx) -> object:
    path = c.video_file("text.mp4", size=100)
    with open(path, encoding="latin-1") as handle:  # noqa: ASYNC230 - opening is instant
        return await c.guru.upload_video(handle, activity="squat")  # type: ignore[arg-type]


async def _file_changes(c: UserCtx, grow: bool) -> object:
    path = c.video_file("changing.mp4", size=10_000)

    def on_progress(sent: int, total: int) -> None:
        if sent == 0:
            if grow:
                with path.open("ab") as f:
                    f.write(b"more bytes")
            else:
                os.truncate(path, 5_000)

    return await c.guru.upload_video(path, activity="squat", progress=on_progress)


async def _batch_of_one_string(c: UserCtx) -> object:
    return c.guru.batch_upload(str(c.video_file()))  # type: ignore[arg-type]


async def _batch_zero_concurrency(c: UserCtx) -> object:
    return c.guru.batch_upload([c.video_file()], upload_concurrency=0)


async def _broken_symlink(c: UserCtx) -> object:
    link = c.tmp / "dangling.mp4"
    link.symlink_to(c.tmp / "gone.mp4")
    return await c.guru.upload_video(link, activity="squat")


async def _through_a_file(c: UserCtx) -> object:
    return await c.guru.upload_video(c.video_file("file.mp4") / "child.mp4", activity="squat")


async def _upload_not_created(c: UserCtx) -> object:
    return await c.guru.upload("9f1c2e7a", c.video_file())  # type: ignore[arg-type]


async def _session_kwargs(c: UserCtx, **kwargs: Any) -> object:
    options: dict[str, Any] = {
        "base_url": c.emulator.base_url,
        "token_url": c.emulator.token_url,
    }
    options.update(kwargs)
    return GuruSession(c.emulator.client_id, c.emulator.client_secret, **options)


async def _download_into_folder(c: UserCtx) -> object:
    return await c.guru.download("abc-123", c.tmp)


async def _download_into_missing_folder(c: UserCtx) -> object:
    return await c.guru.download("abc-123", c.tmp / "nope" / "out.mp4")


def u(
    call: Callable[[UserCtx], Awaitable[object]],
    error: type[BaseException],
    message: str,
    *,
    id: str,
    sends: bool = False,
) -> Any:
    """One user-argument case; only ``sends`` cases may reach the network."""
    return pytest.param(call, error, message, sends, id=id)


USER_CASES = [
    u(
        lambda c: c.guru.upload_video(c.tmp / "missing.mp4"),
        FileNotFoundError,
        "video file not found",
        id="missing-path",
    ),
    u(lambda c: c.guru.upload_video(c.tmp), IsADirectoryError, "is a folder", id="folder"),
    u(_broken_symlink, FileNotFoundError, "dangling.mp4", id="broken-symlink"),
    u(_through_a_file, FileNotFoundError, "not found", id="path-through-a-file"),
    u(
        lambda c: c.guru.upload_video(123),
        TypeError,
        "expected a path or a binary file object",
        id="int-as-upload-path",
    ),
    u(
        lambda c: c.guru.create_video(123),
        TypeError,
        "filename must be a non-empty str or path",
        id="int-as-filename",
    ),
    u(
        lambda c: c.guru.create_video("a.mp4", size=1, activity={"name": "squat"}),
        TypeError,
        "activity must be an Activity or str, got dict",
        id="dict-as-activity",
    ),
    u(
        lambda c: c.guru.create_video("a.mp4", size=1, domain=["yoga"]),
        TypeError,
        "domain must be a Domain or str, got list",
        id="list-as-domain",
    ),
    u(
        lambda c: c.guru.create_video("a.mp4", size=1, rep_count="12"),
        TypeError,
        "rep_count must be an int, got str",
        id="str-rep-count",
    ),
    u(
        lambda c: c.guru.create_video("a.mp4", size=1, rep_count=3.0),
        TypeError,
        "rep_count must be an int, got float",
        id="float-rep-count",
    ),
    u(
        lambda c: c.guru.create_video("a.mp4", size=1, rep_count=True),
        TypeError,
        "rep_count must be an int, got bool",
        id="bool-rep-count",
    ),
    u(
        lambda c: c.guru.create_video("a.mp4", size=1, rep_count=10_001),
        ValueError,
        "between 0 and 10000",
        id="huge-rep-count",
    ),
    u(
        lambda c: c.guru.create_video("a.mp4", size=1, rep_count=-1),
        ValueError,
        "between 0 and 10000, got -1",
        id="negative-rep-count",
    ),
    u(
        lambda c: c.guru.create_video("a.mp4", size=1, activity="squats"),
        ValueError,
        "unknown activity 'squats'; accepted values: bench_press",
        id="unknown-activity",
    ),
    u(
        lambda c: c.guru.create_video("a.mp4", size=1, domain="cardio"),
        ValueError,
        "unknown domain 'cardio'; accepted values: calisthenics",
        id="unknown-domain",
    ),
    u(
        lambda c: c.guru.create_video("a.mp4", size=1, domain="running", activity="squat"),
        ValueError,
        "belongs to domain 'weightlifting', not 'running'",
        id="activity-not-in-domain",
    ),
    u(
        lambda c: c.guru.create_video("a.mp4", size=1, domain="yoga", activity="jump"),
        ValueError,
        "accepted values for domain 'yoga': downward_dog",
        id="unknown-activity-names-domain-choices",
    ),
    u(
        lambda c: c.guru.create_video("a.mp4", size=-1),
        ValueError,
        "size must be >= 0 bytes, got -1",
        id="negative-size",
    ),
    u(
        lambda c: c.guru.create_video("a.mp4", size="10"),
        TypeError,
        "size must be an int number of bytes",
        id="str-size",
    ),
    u(
        lambda c: c.guru.create_video("a.mp4", size=1, source=5),
        TypeError,
        "source must be a str",
        id="int-source",
    ),
    u(lambda c: c.guru.get_video(""), ValueError, "invalid video_id ''", id="empty-video-id"),
    u(
        lambda c: c.guru.get_analysis("../etc"),
        ValueError,
        "invalid video_id '../etc'",
        id="dotdot-video-id",
    ),
    u(
        lambda c: c.guru.get_joint_data("a/b"),
        ValueError,
        "invalid video_id 'a/b'",
        id="slash-video-id",
    ),
    u(
        lambda c: c.guru.update_video("x" * 300, rep_count=1),
        ValueError,
        "expected the id returned by create_video",
        id="overlong-video-id",
    ),
    u(
        lambda c: c.guru.get_video("abc?include=j2p"),
        ValueError,
        "invalid video_id",
        id="query-in-video-id",
    ),
    u(lambda c: c.guru.get_video(42), TypeError, "video_id must be a str", id="int-video-id"),
    u(
        lambda c: c.guru.get_video("abc-123", include=["j2p", "bones"]),
        ValueError,
        "unknown include value(s) ['bones']; accepted values: j2p, analysis, objects",
        id="unknown-include",
    ),
    u(
        lambda c: c.guru.get_video("abc-123", include="j2p,analysis"),
        ValueError,
        "unknown include value(s) ['j2p,analysis']",
        id="comma-joined-include",
    ),
    u(
        lambda c: c.guru.download("abc-123", c.tmp / "o.mp4", overlay="wireframe"),
        ValueError,
        "unknown overlay 'wireframe'; accepted values: skeleton, all",
        id="unknown-overlay",
    ),
    u(_download_into_folder, IsADirectoryError, "is a folder", id="download-to-folder"),
    u(
        _download_into_missing_folder,
        FileNotFoundError,
        "folder for dest does not exist",
        id="download-to-missing-folder",
    ),
    u(_text_mode_file, TypeError, "open it with 'rb'", id="text-mode-file"),
    u(
        lambda c: _file_changes(c, grow=True),
        UploadError,
        "changed while uploading: it was 10000 bytes",
        id="file-grows-during-upload",
        sends=True,
    ),
    u(
        lambda c: _file_changes(c, grow=False),
        UploadError,
        "then 5000 bytes could be read",
        id="file-shrinks-during-upload",
        sends=True,
    ),
    u(
        lambda c: c.guru.create_video("a.mp4", size=1, activity=Unvalidated("")),
        ValueError,
        "Unvalidated() takes a non-empty string",
        id="empty-unvalidated",
    ),
    u(
        lambda c: _session_kwargs(c, max_retries=-1),
        ValueError,
        "max_retries must be >= 0, got -1",
        id="negative-session-max-retries",
    ),
    u(
        lambda c: _session_kwargs(c, max_retries="3"),
        TypeError,
        "max_retries must be an int",
        id="str-session-max-retries",
    ),
    u(
        lambda c: c.guru.get_video("abc-123", max_retries=-1),
        ValueError,
        "max_retries must be >= 0, got -1",
        id="negative-call-max-retries",
    ),
    u(
        lambda c: _session_kwargs(c, base_url="ftp://api.example.com"),
        ValueError,
        "base_url must be an http(s) URL",
        id="ftp-base-url",
    ),
    u(
        lambda c: _session_kwargs(c, access_token=""),
        ValueError,
        "access_token must be a non-empty string",
        id="empty-access-token",
    ),
    u(
        _upload_not_created,
        TypeError,
        "upload() takes the CreatedVideo from create_video, got str",
        id="upload-without-created-video",
    ),
    u(
        lambda c: c.guru.update_video("abc-123", rep_count=None),
        ValueError,
        "rep_count cannot be cleared",
        id="clear-rep-count",
    ),
    u(_batch_of_one_string, TypeError, "wrap one path in a list", id="batch-of-a-string"),
    u(
        _batch_zero_concurrency,
        ValueError,
        "upload_concurrency must be >= 1, got 0",
        id="batch-zero-concurrency",
    ),
]


@pytest.mark.parametrize(("call", "error", "message", "sends"), USER_CASES)
async def test_bad_user_argument(
    emulator: GuruEmulator,
    guru: GuruSession,
    tmp_path: Path,
    video_file: VideoFile,
    call: Callable[[UserCtx], Awaitable[object]],
    error: type[BaseException],
    message: str,
    sends: bool,
) -> None:
    """Each bad argument raises the exact built-in (or SDK) error with a helpful message, and,
    unless the file changed mid-upload, before any request is sent."""
    ctx = UserCtx(guru, tmp_path, video_file, emulator)
    with pytest.raises(BaseException) as info:  # noqa: PT011 - the exact class is checked below
        await call(ctx)
    assert type(info.value) is error, repr(info.value)
    assert message in str(info.value)
    if sends:
        assert isinstance(info.value, UploadError)
        assert info.value.code == "FileChanged"
        assert info.value.status is None
        assert sum(emulator.uploads_completed.values()) == 0
    else:
        assert sum(emulator.requests.values()) == 0


# -- server responses --------------------------------------------------------------------------


@pytest.fixture
async def crafted() -> AsyncIterator[CraftedServer]:
    """A server on 127.0.0.1 that answers whatever the test sets."""
    server = await CraftedServer().start()
    yield server
    await server.close()


@frozen
class ServerCtx:
    """Sessions pointed at the crafted server: one with a static token, one with credentials."""

    static: GuruSession
    creds: GuruSession


@pytest.fixture
async def server_ctx(crafted: CraftedServer) -> AsyncIterator[ServerCtx]:
    """Sessions against the crafted server, without retries so one answer is one outcome."""
    async with (
        GuruSession(
            access_token="t", base_url=crafted.url, token_store=MemoryTokenStore(), max_retries=0
        ) as static,
        GuruSession(
            "client",
            "secret",
            base_url=crafted.url,
            token_url=crafted.url + "/oauth2/token",
            token_store=MemoryTokenStore(),
            max_retries=0,
        ) as creds,
    ):
        yield ServerCtx(static, creds)


def _frame(**overrides: Any) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "frame_idx": 0,
        "part": "leftKnee",
        "position": {"x": 0.5, "y": 0.5},
        "score": 0.9,
        "timestamp": 0.0,
    }
    frame.update(overrides)
    return {k: v for k, v in frame.items() if v is not ...}


def _joints(*frames: Any) -> dict[str, Any]:
    return {"status": "Complete", "jointToPoints": {"leftKnee": list(frames)}}


def _created(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"id": "vid-1", "url": "http://127.0.0.1:9/bucket", "fields": {}}
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not ...}


def analysis(c: ServerCtx) -> Awaitable[object]:
    return c.static.get_analysis("vid-1")


def video(c: ServerCtx) -> Awaitable[object]:
    return c.static.get_video("vid-1", include=["objects", "analysis"])


def joints(c: ServerCtx) -> Awaitable[object]:
    return c.static.get_joint_data("vid-1")


def create(c: ServerCtx) -> Awaitable[object]:
    return c.static.create_video("a.mp4", size=10)


def update(c: ServerCtx) -> Awaitable[object]:
    return c.static.update_video("vid-1", rep_count=3)


def token(c: ServerCtx) -> Awaitable[object]:
    return c.creds.get_analysis("vid-1")


HTML = "<html><body><h1>502 Bad Gateway</h1><p>nginx</p></body></html>"
J = "application/json"


def case(
    call: Callable[[ServerCtx], Awaitable[object]],
    reply: Any,
    error: type[BaseException],
    message: str,
    *,
    id: str,
    status: int = 200,
    content_type: str = J,
    headers: dict[str, str] | None = None,
) -> Any:
    body = reply if isinstance(reply, (bytes, str)) else json.dumps(reply)
    return pytest.param(call, status, body, content_type, headers, error, message, id=id)


SERVER_CASES = [
    case(analysis, HTML, ServerError, "failed with HTTP 502: <html>", id="html-502", status=502,
         content_type="text/html"),
    case(analysis, HTML, ResponseDecodeError, "response is not JSON", id="html-200",
         content_type="text/html"),
    case(analysis, b"", ResponseDecodeError, "not JSON (got 0 bytes", id="empty-200"),
    case(analysis, '{"status": "Compl', ResponseDecodeError, "not JSON (got 17 bytes",
         id="truncated-json"),
    case(analysis, [{"status": "Complete"}], ResponseDecodeError,
         "expected a JSON object, got list", id="json-list"),
    case(analysis, "null", ResponseDecodeError, "expected a JSON object, got NoneType",
         id="json-null"),
    case(analysis, "42", ResponseDecodeError, "expected a JSON object, got int", id="json-number"),
    case(analysis, b"\xff\xfe{\x00}", ResponseDecodeError, "not JSON", id="not-utf8"),
    case(analysis, "[" * 100_000, ResponseDecodeError, "not JSON", id="deeply-nested"),
    case(analysis, '{"status": NaN}', ResponseDecodeError, "Get analysis of video vid-1",
         id="nan-literal"),
    case(analysis, {"status": "Complete", "reps": "x"}, ResponseDecodeError,
         "response does not match Analysis", id="analysis-reps-str"),
    case(analysis, {"status": 5}, ResponseDecodeError, "expected a AnalysisStatus string, got int",
         id="analysis-status-int"),
    case(analysis, {"reps": [{"startTimestampMs": "zero"}]}, ResponseDecodeError,
         "expected a number, got str", id="analysis-rep-timestamp-str"),
    case(analysis, {"reps": [{"analyses": [{"analysisScalar": 1.0}]}]}, ResponseDecodeError,
         "missing field 'analysisType'", id="analysis-rep-analysis-type-missing"),
    case(analysis, {"reps": [{"analyses": {"a": 1}}]}, ResponseDecodeError,
         "response does not match Analysis", id="analysis-analyses-dict"),
    case(analysis, {"fieldMarkers": []}, ResponseDecodeError, "response does not match Analysis",
         id="analysis-field-markers-list"),
    case(analysis,
         {"fieldMarkers": {"startLine": {"position": {"x1": "a", "y1": 0, "x2": 0, "y2": 0}}}},
         ResponseDecodeError, "expected a number, got str", id="analysis-marker-position-str"),
    case(analysis, {"domain": ["weightlifting"]}, ResponseDecodeError,
         "expected a Domain string, got list", id="analysis-domain-list"),
    case(video, {"status": "Success", "fps": "thirty"}, ResponseDecodeError,
         "response does not match Video: expected a number, got str 'thirty'", id="video-fps-str"),
    case(video, {"status": 5}, ResponseDecodeError, "expected a VideoStatus string, got int",
         id="video-status-int"),
    case(video, {"overlays": []}, ResponseDecodeError, "response does not match Video",
         id="video-overlays-list"),
    case(video, {"overlays": {"all": {"status": "Complete", "uri": 5}}}, ResponseDecodeError,
         "expected a string, got int", id="video-overlay-uri-int"),
    case(video, {"analysis": "done"}, ResponseDecodeError, "response does not match Video",
         id="video-analysis-str"),
    case(video, {"objects": [{"boundingBoxes": [{"x1": True}]}]}, ResponseDecodeError,
         "expected a number, got bool", id="video-bounding-box-bool"),
    case(joints, {"jointToPoints": []}, ResponseDecodeError,
         "expected an object of joint name to frames, got list", id="joints-list"),
    case(joints, _joints(_frame(frame_idx="0")), ResponseDecodeError,
         "expected an integer, got str", id="joint-frame-idx-str"),
    case(joints, _joints(_frame(position=...)), ResponseDecodeError,
         "missing field 'position'", id="joint-frame-missing-position"),
    case(joints, _joints([0, "leftKnee", 0.5]), ResponseDecodeError,
         "expected a joint frame object, got list", id="joint-frame-list"),
    case(joints, _joints(_frame(position=[0.5, 0.5])), ResponseDecodeError,
         "expected a position {x, y}, got list", id="joint-position-list"),
    case(joints, _joints(_frame(score=None)), ResponseDecodeError,
         "expected a number, got NoneType", id="joint-score-null"),
    case(joints, {"resolutionHeight": 720.5}, ResponseDecodeError,
         "expected an integer, got float", id="joint-resolution-fraction"),
    case(create, _created(id=...), ResponseDecodeError, "missing field 'id'", id="created-no-id"),
    case(create, _created(url=...), ResponseDecodeError, "missing field 'url'",
         id="created-no-url"),
    case(create, _created(fields=...), ResponseDecodeError, "missing field 'fields'",
         id="created-no-fields"),
    case(create, _created(fields="key=a"), ResponseDecodeError,
         "response does not match CreatedVideo", id="created-fields-str"),
    case(create, _created(fields={"key": 5}), ResponseDecodeError, "expected a string, got int",
         id="created-field-value-int"),
    case(create, _created(id=5), ResponseDecodeError, "expected a string, got int",
         id="created-id-int"),
    case(create, _created(url="file:///etc/passwd"), ResponseDecodeError,
         "upload url must be an http(s) URL", id="created-file-url"),
    case(update, {"id": 5}, ResponseDecodeError, "expected the video's id", id="update-id-int"),
    case(analysis, {"message": "database on fire"}, ServerError,
         "Get analysis of video vid-1 failed with HTTP 500: database on fire", id="500-message",
         status=500),
    case(create, {"message": "'repCount' must be an integer >= 0"}, BadRequestError,
         "HTTP 400: 'repCount' must be an integer >= 0", id="400-message", status=400),
    case(analysis, {"message": "Video not found"}, NotFoundError, "HTTP 404: Video not found",
         id="404-message", status=404),
    case(analysis, {"message": "slow down"}, RateLimitError, "HTTP 429: slow down", id="429",
         status=429, headers={"Retry-After": "7"}),
    case(analysis, {"message": "Unauthorized"}, AuthenticationError, "HTTP 401: Unauthorized",
         id="401-static-token", status=401),
    case(analysis, "I'm a teapot", APIError, "HTTP 418: I'm a teapot", id="418-text",
         status=418, content_type="text/plain"),
    case(analysis, "<html>" + "x" * 2_000_000 + "</html>", ServerError, "HTTP 503: <html>xxx",
         id="503-huge-html", status=503, content_type="text/html"),
    case(analysis, "", ServerError, "HTTP 504: no details in the response", id="504-empty",
         status=504),
    case(token, {"token": "abc"}, ResponseDecodeError,
         "Token request: response lacks access_token or a numeric expires_in",
         id="token-without-access-token"),
    case(token, {"access_token": "abc", "expires_in": "3600"}, ResponseDecodeError,
         "lacks access_token or a numeric expires_in", id="token-expiry-str"),
    case(token, {"error": "invalid_client"}, AuthenticationError,
         "rejected the client credentials (HTTP 400: invalid_client)", id="token-invalid-client",
         status=400),
    case(token, HTML, ResponseDecodeError, "Token request: response is not JSON",
         id="token-html-200", content_type="text/html"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("call", "status", "body", "content_type", "headers", "error", "message"), SERVER_CASES
)
async def test_bad_server_response(
    crafted: CraftedServer,
    server_ctx: ServerCtx,
    call: Callable[[ServerCtx], Awaitable[object]],
    status: int,
    body: str | bytes,
    content_type: str,
    headers: dict[str, str] | None,
    error: type[BaseException],
    message: str,
) -> None:
    """Each broken or hostile response raises the exact error class with a helpful message of
    bounded length."""
    crafted.respond(status, body, content_type, headers)
    with pytest.raises(BaseException) as info:  # noqa: PT011 - the exact class is checked below
        await call(server_ctx)
    assert type(info.value) is error, repr(info.value)
    assert message in str(info.value)
    assert len(str(info.value)) < 1000
    if isinstance(info.value, APIError):
        assert info.value.status == status
    if isinstance(info.value, RateLimitError):
        assert info.value.retry_after == 7.0


async def test_unknown_fields_are_ignored(crafted: CraftedServer, server_ctx: ServerCtx) -> None:
    """Fields (and enum values) a newer server adds are ignored or kept, never an error."""
    crafted.respond(
        body=json.dumps(
            {
                "status": "Complete",
                "activity": "handstand",
                "newTopLevel": {"nested": [1, 2, 3]},
                "reps": [
                    {
                        "startTimestampMs": 100,
                        "endTimestampMs": 900.5,
                        "confidence": 0.99,
                        "analyses": [
                            {"anaylsisScalar": 12.5, "analysisType": "STRIDE", "extra": None}
                        ],
                    }
                ],
            }
        )
    )
    result = await server_ctx.static.get_analysis("vid-1")
    assert result.status == "Complete"
    assert result.activity == "handstand"
    assert result.reps[0].start_timestamp_ms == 100
    assert result.reps[0].end_timestamp_ms == 900.5
    assert result.reps[0].analyses[0].analysis_scalar == 12.5
    assert result.reps[0].analyses[0].analysis_type == "STRIDE"


async def test_enormous_analysis_decodes_in_seconds(
    crafted: CraftedServer, server_ctx: ServerCtx
) -> None:
    """A 20 MB analysis of 100,000 reps decodes completely within a few seconds."""
    rep = {
        "startTimestampMs": 1000,
        "midTimestampMs": 1500,
        "endTimestampMs": 2000,
        "analyses": [
            {"analysisType": "HIP_KNEE_ANGLE_DEGREES", "analysisScalar": 87.5,
             "analysisOpinion": "good"},
            {"analysisType": "DEPTH", "analysisScalar": 0.25, "analysisOpinion": "ok"},
        ],
    }  # fmt: skip
    count = 100_000
    body = json.dumps({"status": "Complete", "reps": [rep] * count}).encode()
    assert len(body) > 20_000_000
    crafted.respond(body=body)
    started = time.monotonic()
    result = await server_ctx.static.get_analysis("vid-1")
    elapsed = time.monotonic() - started
    assert len(result.reps) == count
    assert result.reps[-1].analyses[1].analysis_scalar == 0.25
    assert elapsed < 8.0


async def test_enormous_garbage_fails_cleanly(
    crafted: CraftedServer, server_ctx: ServerCtx
) -> None:
    """20 MB of non-JSON fails fast as ResponseDecodeError with a short message and preview."""
    crafted.respond(body=b"{" + b"\x00garbage" * 2_500_000)
    started = time.monotonic()
    with pytest.raises(ResponseDecodeError, match="not JSON") as info:
        await server_ctx.static.get_joint_data("vid-1")
    assert time.monotonic() - started < 5.0
    assert len(str(info.value)) < 300
    assert len(info.value.body) <= 200
    assert info.value.status == 200
