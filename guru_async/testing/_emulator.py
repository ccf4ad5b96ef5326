"""The emulator: two aiohttp servers (API + token, and storage), their routes and state."""

from __future__ import annotations

import asyncio
import base64
import collections
import contextvars
import json
import os
import re
import secrets
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import hdrs, web

from guru_async import _routes as routes
from guru_async._auth import MemoryTokenStore
from guru_async._enums import (
    ACTIVITY_DOMAINS,
    Activity,
    AnalysisStatus,
    Domain,
    OverlayType,
)
from guru_async._session import GuruSession
from guru_async.testing import _storage, _synthetic
from guru_async.testing._models import (
    EmulatedVideo,
    FaultRule,
    Faults,
    RecordedRequest,
)

DEFAULT_CLIENT_ID = "emulator-client"
DEFAULT_CLIENT_SECRET = "emulator-secret"  # noqa: S105 - a fixed, public test credential
SCOPE = "https://api.getguru.fitness/default"
UNANALYZABLE_MARKER = b"GURU-EMULATOR:UNANALYZABLE"
FAILURE_REASON = "LOW_QUALITY_POSE_ESTIMATE"

# The SDK's own route templates: what its hooks and traces report is what the emulator counts.
TOKEN_ROUTE = routes.TOKEN
CREATE_ROUTE = routes.CREATE_VIDEO
GET_VIDEO_ROUTE = routes.GET_VIDEO
UPDATE_ROUTE = routes.UPDATE_VIDEO
ANALYSIS_ROUTE = routes.GET_ANALYSIS
J2P_ROUTE = routes.GET_JOINT_DATA
UPLOAD_ROUTE = routes.UPLOAD
DOWNLOAD_ROUTE = routes.DOWNLOAD

_AUTHENTICATED_ROUTES = frozenset(
    {CREATE_ROUTE, GET_VIDEO_ROUTE, UPDATE_ROUTE, ANALYSIS_ROUTE, J2P_ROUTE}
)
_JSON_BODY_ROUTES = frozenset({CREATE_ROUTE, UPDATE_ROUTE})
_INCLUDES = ("j2p", "analysis", "objects")
_CREATE_FIELDS = ("filename", "size", "source", "domain", "activity", "repCount")
_UPDATE_FIELDS = ("repCount", "domain", "activity")
# Context variables rather than request storage: they are typed and work on every aiohttp 3.x.
_RECORD: contextvars.ContextVar[RecordedRequest] = contextvars.ContextVar("guru_record")
_FAULT: contextvars.ContextVar[FaultRule | None] = contextvars.ContextVar("guru_fault")
_S3_STATUS_CODES = {400: "InvalidRequest", 403: "AccessDenied", 404: "NoSuchKey", 503: "SlowDown"}
# A minute of j2p is ~3 MB; keep only the most recently read bodies.
_J2P_CACHE_SIZE = 32
_VIDEO_ID_IN_BODY = re.compile(rb"uploads/([0-9a-f-]{36})/")

AnalysisDelay = float | Callable[[EmulatedVideo], float]
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _json_response(
    data: object, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(data).encode(),
        content_type="application/json",
        headers=headers,
    )


def _number(value: float) -> float | int:
    """Whole numbers go on the wire as integers, as a real server would send them."""
    return int(value) if float(value).is_integer() else value


STATS_PATH = "/_emulator/stats"


class GuruEmulator:
    """A local emulator of the Guru API and its S3-style upload storage, over real sockets.

    The API (with the token endpoint) and storage listen on two ports, so storage is a different
    origin, as the real S3 host is. Use it as an async context manager::

        async with GuruEmulator(analysis_delay=0.2) as emu:
            ...  # point a client at emu.base_url / emu.token_url

    Attributes:
        client_id: The accepted client id.
        client_secret: The accepted client secret.
        scope: The only accepted OAuth scope.
        videos: Every created video by id.
        recorded: The most recent requests (at most 10,000), oldest first.
        requests: Requests received per route name, including failed and faulted ones.
        token_requests: Requests received by the token endpoint.
        upload_attempts: Storage POSTs received per video id.
        uploads_completed: Successful uploads per video id.
        faults: The fault rules; see :class:`FaultRule`.
    """

    def __init__(
        self,
        *,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str = DEFAULT_CLIENT_SECRET,
        host: str = "127.0.0.1",
        port: int = 0,
        storage_port: int = 0,
        analysis_delay: AnalysisDelay = 1.0,
        token_lifetime: float = 3600.0,
        presign_lifetime: float = 3600.0,
        video_seconds: float = 10.0,
        fps: float = 30.0,
        storage_dir: str | os.PathLike[str] | None = None,
        seed: int = 0,
        storage_bandwidth: float | None = None,
    ) -> None:
        """Configure the emulator; nothing listens until :meth:`start`.

        Args:
            client_id: The client id the token endpoint accepts.
            client_secret: The client secret the token endpoint accepts.
            host: The interface both servers bind to.
            port: The API port; 0 picks a free one.
            storage_port: The storage port; 0 picks a free one.
            analysis_delay: Seconds from a completed upload until analysis finishes, or a
                callable that computes them from the video at upload time.
            token_lifetime: The ``expires_in`` of issued tokens, in seconds.
            presign_lifetime: Seconds a presigned upload policy stays valid.
            video_seconds: Length of the synthetic video behind every result.
            fps: Frame rate of the synthetic video.
            storage_dir: Where uploads are stored; by default a temporary directory removed
                on close.
            seed: Seeds fault injection and synthetic results, for reproducible runs.
            storage_bandwidth: Bytes per second one upload may go at (like one TCP stream to a
                distant S3 endpoint), or None for as fast as loopback allows.
        """
        self.client_id = client_id
        self.client_secret = client_secret
        self.scope = SCOPE
        self._host = host
        self._port = port
        self._storage_port = storage_port
        self._analysis_delay = analysis_delay
        self._token_lifetime = token_lifetime
        self._presign_lifetime = presign_lifetime
        self._video_seconds = video_seconds
        self._fps = fps
        self._seed = seed
        self._storage_dir_arg = storage_dir
        self._storage_bandwidth = storage_bandwidth
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        self._storage_dir: Path | None = None
        self._runners: list[web.AppRunner] = []
        self._urls: dict[str, str] = {}
        self._signer = _storage.Signer()
        self._tokens: dict[str, float] = {}
        self._route_names: dict[web.AbstractRoute, str] = {}
        self._j2p_cache: collections.OrderedDict[_synthetic.Plan, bytes] = collections.OrderedDict()

        self.videos: dict[str, EmulatedVideo] = {}
        self.recorded: collections.deque[RecordedRequest] = collections.deque(maxlen=10_000)
        self.requests: collections.Counter[str] = collections.Counter()
        self.token_requests = 0
        self.upload_attempts: collections.Counter[str] = collections.Counter()
        self.uploads_completed: collections.Counter[str] = collections.Counter()
        self.faults = Faults(seed)

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> GuruEmulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Bind both servers and start serving."""
        if self._storage_dir_arg is None:
            self._tempdir = tempfile.TemporaryDirectory(prefix="guru-emulator-")
            self._storage_dir = Path(self._tempdir.name)
        else:
            self._storage_dir = Path(self._storage_dir_arg)
            self._storage_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._urls["api"] = await self._serve(self._api_app(), self._port)
            self._urls["storage"] = await self._serve(self._storage_app(), self._storage_port)
        except BaseException:
            await self.close()
            raise

    async def _serve(self, app: web.Application, port: int) -> str:
        # A short shutdown timeout: a test's close() must not wait on a hung client.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, self._host, port)
        await site.start()
        bound_port: int = runner.addresses[0][1]
        return f"http://{self._host}:{bound_port}"

    async def close(self) -> None:
        """Stop both servers and remove the default storage directory."""
        while self._runners:
            await self._runners.pop().cleanup()
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None

    # -- public face --------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The API's base URL, e.g. ``http://127.0.0.1:PORT``."""
        return self._url("api")

    @property
    def token_url(self) -> str:
        """The OAuth token endpoint on the API server."""
        return self._url("api") + "/oauth2/token"

    @property
    def storage_url(self) -> str:
        """The storage server's base URL (a different origin from the API)."""
        return self._url("storage")

    def _url(self, which: str) -> str:
        try:
            return self._urls[which]
        except KeyError:
            raise RuntimeError("the emulator is not running; use 'async with'") from None

    def session(self, **options: Any) -> GuruSession:
        """A GuruSession pointed at this emulator, with its own in-memory token store.

        Args:
            **options: Any other GuruSession option, e.g. ``poll_policy`` or ``max_retries``.
        """
        settings: dict[str, Any] = {
            "base_url": self.base_url,
            "token_url": self.token_url,
            "token_store": MemoryTokenStore(),
        }
        settings.update(options)
        return GuruSession(self.client_id, self.client_secret, **settings)

    def issue_token(self) -> str:
        """Return a new valid access token without going through the token endpoint."""
        token = secrets.token_urlsafe(32)
        self._tokens[token] = time.monotonic() + self._token_lifetime
        return token

    def expire_tokens(self) -> None:
        """Make every token issued so far invalid."""
        self._tokens.clear()

    def revoke_token(self, token: str) -> None:
        """Make one token invalid."""
        self._tokens.pop(token, None)

    def reset_counters(self) -> None:
        """Zero the request, token and upload counters."""
        self.requests.clear()
        self.token_requests = 0
        self.upload_attempts.clear()
        self.uploads_completed.clear()

    def stored_path(self, video_id: str) -> Path:
        """Where the content uploaded for ``video_id`` is (or would be) stored."""
        if self._storage_dir is None:
            raise RuntimeError("the emulator is not running; use 'async with'")
        return self._storage_dir / video_id

    # -- applications and the per-request pipeline -------------------------------------------

    def _api_app(self) -> web.Application:
        app = web.Application(middlewares=[self._api_middleware])
        add = app.router.add_route
        self._name(add("POST", "/oauth2/token", self._token), TOKEN_ROUTE)
        self._name(add("POST", "/videos", self._create), CREATE_ROUTE)
        self._name(add("GET", "/videos/{id}", self._get_video), GET_VIDEO_ROUTE)
        self._name(add("PUT", "/videos/{id}", self._update), UPDATE_ROUTE)
        self._name(add("GET", "/videos/{id}/analysis", self._analysis), ANALYSIS_ROUTE)
        self._name(add("GET", "/videos/{id}/j2p", self._j2p), J2P_ROUTE)
        add("GET", STATS_PATH, self._stats)
        return app

    async def _stats(self, request: web.Request) -> web.StreamResponse:
        """The counters as JSON, for tests that drive a standalone emulator from outside;
        ``?arrivals=1`` adds ``arrivals``: ``[route, received_at]`` of each recorded request."""
        stats = self.stats()
        if request.query.get("arrivals"):
            stats["arrivals"] = [[r.route, r.received_at] for r in self.recorded]
        return _json_response(stats, 200, None)

    def stats(self) -> dict[str, Any]:
        """The counters: token requests, requests per route, uploads per video id."""
        return {
            "token_requests": self.token_requests,
            "requests": dict(self.requests),
            "upload_attempts": dict(self.upload_attempts),
            "uploads_completed": dict(self.uploads_completed),
            "videos": len(self.videos),
        }

    def _storage_app(self) -> web.Application:
        app = web.Application(middlewares=[self._storage_middleware])
        add = app.router.add_route
        self._name(add("POST", f"/{_storage.BUCKET}", self._upload), UPLOAD_ROUTE)
        self._name(add("GET", f"/{_storage.BUCKET}/{{key:.+}}", self._download), DOWNLOAD_ROUTE)
        return app

    def _name(self, route: web.AbstractRoute, name: str) -> None:
        self._route_names[route] = name

    def _route_of(self, request: web.Request) -> str:
        return self._route_names.get(request.match_info.route, f"{request.method} {request.path}")

    async def _begin(self, request: web.Request, route: str) -> FaultRule | None:
        """Record and count a request, then draw its fault."""
        body: Any | None = None
        if route in _JSON_BODY_ROUTES:
            try:
                body = json.loads(await request.read())
            except ValueError:
                body = None
        record = RecordedRequest(
            route, request.method, request.path, request.query_string, dict(request.headers), body
        )
        _RECORD.set(record)
        self.recorded.append(record)
        self.requests[route] += 1
        rule = self.faults.draw(route)
        _FAULT.set(rule)
        return rule

    @web.middleware
    async def _api_middleware(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        if request.path == STATS_PATH:
            # Emulator-only introspection: neither counted, recorded, faulted nor authenticated.
            return await handler(request)
        route = self._route_of(request)
        if route == TOKEN_ROUTE:
            self.token_requests += 1
        rule = await self._begin(request, route)

        def error(status: int, message: str, headers: dict[str, str] | None) -> web.Response:
            return _json_response({"message": message}, status, headers)

        if rule is not None and (faulted := await self._fault(request, rule, error)) is not None:
            return faulted
        try:
            if route in _AUTHENTICATED_ROUTES:
                self._authenticate(request)
            response = await handler(request)
        except _ApiError as exc:
            response = error(exc.status, exc.message, None)
        except web.HTTPException as exc:
            response = error(exc.status, exc.reason, None)
        return await self._finish(request, rule, response)

    @web.middleware
    async def _storage_middleware(
        self, request: web.Request, handler: _Handler
    ) -> web.StreamResponse:
        rule = await self._begin(request, self._route_of(request))

        def error(status: int, message: str, headers: dict[str, str] | None) -> web.Response:
            code = _S3_STATUS_CODES.get(status, "InternalError")
            return _storage.s3_error(status, code, message, headers)

        if rule is not None and (faulted := await self._fault(request, rule, error)) is not None:
            return faulted
        try:
            response = await handler(request)
        except _storage.StorageError as exc:
            response = exc.response()
        except web.HTTPException as exc:
            code = "NoSuchKey" if exc.status == 404 else "MethodNotAllowed"
            response = _storage.s3_error(exc.status, code, exc.reason)
        return await self._finish(request, rule, response)

    async def _fault(
        self,
        request: web.Request,
        rule: FaultRule,
        error: Callable[[int, str, dict[str, str] | None], web.Response],
    ) -> web.StreamResponse | None:
        """Apply a fault that acts before normal handling; None lets handling go ahead."""
        if rule.kind == "status":
            headers: dict[str, str] | None = None
            if rule.retry_after is not None:
                headers = {hdrs.RETRY_AFTER: str(_number(rule.retry_after))}
            return error(rule.status, "Injected fault", headers)
        if rule.kind == "delay":
            await asyncio.sleep(rule.delay)
            return None
        if rule.kind == "malformed":
            return web.Response(text="<html>502 Bad Gateway</html>", content_type="text/html")
        if rule.kind == "drop":
            if _RECORD.get().route == UPLOAD_ROUTE:
                await self._read_part_of_upload(request)
            _disconnect(request)
            # Writing this to the closed transport fails quietly inside aiohttp.
            return web.Response()
        return None

    async def _read_part_of_upload(self, request: web.Request) -> None:
        """Consume some of an upload before a drop, so the client is cut off mid-body."""
        wanted = min((request.content_length or 0) // 2, 256 * 1024)
        seen = b""
        while len(seen) < wanted and not request.content.at_eof():
            seen += await request.content.read(wanted - len(seen))
        if match := _VIDEO_ID_IN_BODY.search(seen):
            self.upload_attempts[match.group(1).decode()] += 1

    async def _finish(
        self, request: web.Request, rule: FaultRule | None, response: web.StreamResponse
    ) -> web.StreamResponse:
        """Apply a truncate fault to a complete in-memory response."""
        if rule is None or rule.kind != "truncate" or not isinstance(response, web.Response):
            return response
        body = response.body
        if not isinstance(body, bytes) or not body:
            return response
        headers = {k: v for k, v in response.headers.items() if k != hdrs.CONTENT_LENGTH}
        return await _send_truncated(request, response.status, headers, body)

    def _authenticate(self, request: web.Request) -> None:
        token = request.headers.get(hdrs.AUTHORIZATION, "")
        expires_at = self._tokens.get(token)
        if expires_at is None or expires_at <= time.monotonic():
            raise _ApiError(401, "Unauthorized")

    # -- token endpoint -----------------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.StreamResponse:
        def oauth_error(code: str) -> web.Response:
            return _json_response({"error": code}, 400)

        if request.content_type != "application/x-www-form-urlencoded":
            return oauth_error("invalid_request")
        form = await request.post()
        grant_type = form.get("grant_type")
        if grant_type is None:
            return oauth_error("invalid_request")
        if grant_type != "client_credentials":
            return oauth_error("unsupported_grant_type")
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        authorization = request.headers.get(hdrs.AUTHORIZATION, "")
        if authorization.startswith("Basic "):
            try:
                decoded = base64.b64decode(authorization[6:], validate=True).decode()
            except ValueError:
                return oauth_error("invalid_client")
            client_id, _, client_secret = decoded.partition(":")
        if client_id != self.client_id or client_secret != self.client_secret:
            return oauth_error("invalid_client")
        if "scope" in form and form["scope"] != self.scope:
            return oauth_error("invalid_scope")
        return _json_response(
            {
                "access_token": self.issue_token(),
                "expires_in": _number(self._token_lifetime),
                "token_type": "Bearer",
            }
        )

    # -- API routes ---------------------------------------------------------------------------

    async def _create(self, request: web.Request) -> web.StreamResponse:
        given = _parse_video_fields(await _json_body(request), create=True)
        video_id = str(uuid.uuid4())
        video = EmulatedVideo(
            id=video_id,
            filename=given["filename"],
            size=given["size"],
            domain=given.get("domain"),
            activity=given.get("activity"),
            rep_count=given.get("repCount"),
            source=given.get("source"),
        )
        video.fields = _storage.presigned_post(
            self._signer,
            video_id=video_id,
            filename=video.filename,
            size=video.size,
            lifetime=self._presign_lifetime,
        )
        self.videos[video_id] = video
        url = f"{self.storage_url}/{_storage.BUCKET}"
        return _json_response({"id": video_id, "url": url, "fields": video.fields})

    async def _update(self, request: web.Request) -> web.StreamResponse:
        video = self._video(request)
        given = _parse_video_fields(await _json_body(request), create=False)
        if "domain" in given:
            video.domain = given["domain"]
        if "activity" in given:
            video.activity = given["activity"]
            if "domain" not in given:
                # Every activity belongs to one domain: a new activity brings its own.
                video.domain = ACTIVITY_DOMAINS[given["activity"]]
        if "repCount" in given:
            video.rep_count = given["repCount"]
        return _json_response({"id": video.id})

    async def _get_video(self, request: web.Request) -> web.StreamResponse:
        video = self._video(request)
        include = _parse_include(request)
        now = time.monotonic()
        status = video.analysis_status(now)
        body: dict[str, Any] = {"status": video.status.value}
        if video.uploaded_at is not None:
            body["uri"] = self._download_url(_storage.upload_key(video.id, video.filename))
        overlays: dict[str, dict[str, str]] = {}
        for overlay in OverlayType:
            if status is AnalysisStatus.COMPLETE:
                key = f"overlays/{video.id}/{overlay.value}.mp4"
                overlays[overlay.value] = {"status": "Complete", "uri": self._download_url(key)}
            else:
                overlays[overlay.value] = {"status": status.value}
        body["overlays"] = overlays
        if video.uploaded_at is not None:
            body["fps"] = _number(self._fps)
        if "analysis" in include:
            body["analysis"] = self._analysis_body(video, now)
        if "objects" in include:
            complete = status is AnalysisStatus.COMPLETE
            body["objects"] = _synthetic.objects(self._plan(video)) if complete else []
        encoded = json.dumps(body).encode()
        if "j2p" in include:
            # Splice the cached bytes in rather than decoding and re-encoding a large body.
            encoded = encoded[:-1] + b', "j2p": ' + self._j2p_body(video, now) + b"}"
        return web.Response(body=encoded, content_type="application/json")

    async def _analysis(self, request: web.Request) -> web.StreamResponse:
        return _json_response(self._analysis_body(self._video(request), time.monotonic()))

    async def _j2p(self, request: web.Request) -> web.StreamResponse:
        body = self._j2p_body(self._video(request), time.monotonic())
        return web.Response(body=body, content_type="application/json")

    def _video(self, request: web.Request) -> EmulatedVideo:
        video = self.videos.get(request.match_info["id"])
        if video is None:
            raise _ApiError(404, "Video not found")
        return video

    def _download_url(self, key: str) -> str:
        return _storage.download_url(self._signer, self.storage_url, key)

    def _analysis_body(self, video: EmulatedVideo, now: float) -> dict[str, Any]:
        status = video.analysis_status(now)
        if status is AnalysisStatus.PENDING:
            return {"status": status.value}
        body: dict[str, Any] = {"status": status.value}
        if status is AnalysisStatus.FAILED:
            body["reason"] = FAILURE_REASON
        if (domain := video.effective_domain) is not None:
            body["domain"] = domain.value
        if video.activity is not None:
            body["activity"] = video.activity.value
        if status is AnalysisStatus.COMPLETE:
            plan = self._plan(video)
            body["reps"] = _synthetic.analysis_reps(plan)
            if video.activity is Activity.SPRINT:
                body.update(_synthetic.sprint_details(plan))
        return body

    def _j2p_body(self, video: EmulatedVideo, now: float) -> bytes:
        status = video.analysis_status(now)
        if status is AnalysisStatus.PENDING:
            return b'{"status": "Pending"}'
        if status is AnalysisStatus.FAILED:
            return json.dumps({"status": "Failed", "reason": FAILURE_REASON}).encode()
        # Keyed by the plan, which is a value: a re-upload or an update yields a new key, and
        # the same file uploaded many times (as benchmarks do) shares one body.
        plan = self._plan(video)
        body = self._j2p_cache.pop(plan, None)
        if body is None:
            body = _synthetic.joint_data_body(plan)
        self._j2p_cache[plan] = body
        while len(self._j2p_cache) > _J2P_CACHE_SIZE:
            self._j2p_cache.popitem(last=False)
        return body

    def _plan(self, video: EmulatedVideo) -> _synthetic.Plan:
        """The synthetic layout for the video's current content and metadata (cheap to redo)."""
        digest = video.content_sha256 or ""
        rep_count = video.rep_count
        if rep_count is None:
            rep_count = _synthetic.default_rep_count(digest or "0")
        return _synthetic.make_plan(
            seed=self._seed,
            content_sha256=digest,
            activity=video.activity,
            rep_count=rep_count,
            video_seconds=self._video_seconds,
            fps=self._fps,
        )

    # -- storage routes -----------------------------------------------------------------------

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        if (
            request.headers.get(hdrs.CONTENT_LENGTH) is None
            or "chunked" in request.headers.get(hdrs.TRANSFER_ENCODING, "").lower()
        ):
            raise _storage.StorageError(
                411, "MissingContentLength", "You must provide the Content-Length HTTP header."
            )
        _reject_authorization(request)
        if request.content_type != "multipart/form-data":
            raise _storage.StorageError(
                412,
                "PreconditionFailed",
                "Bucket POST must be of the enclosure-type multipart/form-data",
            )
        record = _RECORD.get()
        attributed: list[str] = []

        def on_key(video_id: str) -> None:
            if not attributed:
                attributed.append(video_id)
                self.upload_attempts[video_id] += 1

        assert self._storage_dir is not None
        try:
            received = await _storage.receive_upload(
                request,
                signer=self._signer,
                storage_dir=self._storage_dir,
                lookup=self.videos.get,
                on_part=record.part_names.append,
                on_key=on_key,
                head_size=len(UNANALYZABLE_MARKER),
                bandwidth=self._storage_bandwidth,
            )
        except ValueError as exc:
            raise _storage.StorageError(
                400,
                "MalformedPOSTRequest",
                f"The body of your POST request is not well-formed multipart/form-data: {exc}",
            ) from None
        video = received.video
        _storage.commit(received, self.stored_path(video.id))
        video.stored_size = received.size
        video.content_sha256 = received.sha256
        video.analyzable = received.size > 0 and not received.head.startswith(UNANALYZABLE_MARKER)
        video.uploaded_at = time.monotonic()
        delay = self._analysis_delay
        seconds = delay(video) if callable(delay) else delay
        video.analysis_ready_at = video.uploaded_at + seconds
        self.uploads_completed[video.id] += 1
        return web.Response(status=204)

    async def _download(self, request: web.Request) -> web.StreamResponse:
        _reject_authorization(request)
        key = request.match_info["key"]
        _storage.check_download(self._signer, key, request.query.get("X-Amz-Signature"))
        parsed = _storage.parse_key(key)
        video = self.videos.get(parsed[0]) if parsed else None
        no_such_key = _storage.StorageError(404, "NoSuchKey", "The specified key does not exist.")
        if parsed is None or video is None or video.uploaded_at is None:
            raise no_such_key
        if parsed[1] != "raw" and (
            parsed[1] not in {f"{overlay.value}.mp4" for overlay in OverlayType}
            or video.analysis_status() is not AnalysisStatus.COMPLETE
        ):
            raise no_such_key
        path = self.stored_path(video.id)
        headers: dict[str, str] = {hdrs.CONTENT_TYPE: "video/mp4"}
        rule = _FAULT.get()
        if rule is not None and rule.kind == "truncate":
            return await _send_truncated(request, 200, headers, _read_file(path))
        return web.FileResponse(path, headers=headers)


def _reject_authorization(request: web.Request) -> None:
    if hdrs.AUTHORIZATION in request.headers:
        raise _storage.StorageError(
            400,
            "InvalidArgument",
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
            "Signature query string parameter or the Authorization header should be specified",
        )


def _disconnect(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.close()


async def _send_truncated(
    request: web.Request, status: int, headers: dict[str, str], body: bytes
) -> web.StreamResponse:
    """Announce the full body's length, send half of it, and hang up."""
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[: len(body) // 2])
    _disconnect(request)
    return response


def _read_file(path: Path) -> bytes:
    return path.read_bytes()


async def _json_body(request: web.Request) -> object:
    if request.content_type != "application/json":
        raise _ApiError(400, "Content-Type must be application/json")
    try:
        return json.loads(await request.read())
    except ValueError:
        raise _ApiError(400, "Request body is not valid JSON") from None


def _parse_include(request: web.Request) -> set[str]:
    values = request.query.getall("include", [])
    if len(values) > 1:
        raise _ApiError(
            400, "Give 'include' once, as a comma-separated list (include=j2p,analysis)"
        )
    items = {item.strip() for item in values[0].split(",")} - {""} if values else set()
    if unknown := sorted(items.difference(_INCLUDES)):
        raise _ApiError(
            400, f"Unknown include value(s) {unknown}; accepted values are {list(_INCLUDES)}"
        )
    return items


def _parse_video_fields(body: object, *, create: bool) -> dict[str, Any]:
    """Validate a Create or Update body strictly, so client bugs surface as 400s."""
    if not isinstance(body, dict):
        raise _ApiError(400, "Request body must be a JSON object")
    accepted = _CREATE_FIELDS if create else _UPDATE_FIELDS
    if unknown := sorted(set(body).difference(accepted)):
        raise _ApiError(400, f"Unknown field(s) {unknown}; accepted fields are {list(accepted)}")
    for name, value in body.items():
        if value is None:
            raise _ApiError(400, f"'{name}' must not be null; omit the field instead")
    if create:
        for name in ("filename", "size"):
            if name not in body:
                raise _ApiError(400, f"'{name}' is required")
    parsed: dict[str, Any] = {}
    for name, value in body.items():
        if name in ("filename", "source"):
            if not isinstance(value, str) or (name == "filename" and not value):
                raise _ApiError(400, f"'{name}' must be a non-empty string")
            parsed[name] = value
        elif name in ("size", "repCount"):
            if type(value) is not int or value < 0:
                raise _ApiError(400, f"'{name}' must be an integer >= 0, got {value!r}")
            parsed[name] = value
        elif name == "domain":
            parsed[name] = _enum_value(Domain, name, value)
        else:
            parsed[name] = _enum_value(Activity, name, value)
    domain, activity = parsed.get("domain"), parsed.get("activity")
    if domain is not None and activity is not None and ACTIVITY_DOMAINS[activity] is not domain:
        raise _ApiError(
            400,
            f"Activity '{activity.value}' does not belong to domain '{domain.value}' "
            f"(it belongs to '{ACTIVITY_DOMAINS[activity].value}')",
        )
    return parsed


def _enum_value(enum: type[Domain] | type[Activity], name: str, value: object) -> Domain | Activity:
    accepted = [member.value for member in enum]
    if not isinstance(value, str) or value not in accepted:
        raise _ApiError(400, f"'{name}' must be one of {accepted}, got {value!r}")
    return enum(value)
