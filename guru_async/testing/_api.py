"""The API server: the token endpoint and the video routes (create, get, update, analysis, joint
data), strict about what they accept and answering in the API's JSON formats."""

from __future__ import annotations

import base64
import collections
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import hdrs, web

from guru_async import _routes as routes
from guru_async._enums import ACTIVITY_DOMAINS, Activity, AnalysisStatus, Domain, OverlayType
from guru_async.testing import _faults, _storage, _synthetic
from guru_async.testing._models import EmulatedVideo
from guru_async.testing._state import EmulatorState, current_record

FAILURE_REASON = "LOW_QUALITY_POSE_ESTIMATE"
STATS_PATH = "/_emulator/stats"

_AUTHENTICATED_ROUTES = frozenset(
    {
        routes.CREATE_VIDEO,
        routes.GET_VIDEO,
        routes.UPDATE_VIDEO,
        routes.GET_ANALYSIS,
        routes.GET_JOINT_DATA,
    }
)
_INCLUDES = ("j2p", "analysis", "objects")
_CREATE_FIELDS = ("filename", "size", "source", "domain", "activity", "repCount")
_UPDATE_FIELDS = ("repCount", "domain", "activity")
# A minute of j2p is ~3 MB; keep only the most recently read bodies.
_J2P_CACHE_SIZE = 32

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An API rejection, answered as ``{"message": ...}`` with its status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def json_response(
    data: object, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON response."""
    return web.Response(
        status=status,
        body=json.dumps(data).encode(),
        content_type="application/json",
        headers=headers,
    )


def _error(status: int, message: str, headers: dict[str, str] | None) -> web.Response:
    return json_response({"message": message}, status, headers)


def _number(value: float) -> float | int:
    """Whole numbers go on the wire as integers, as a real server would send them."""
    return int(value) if float(value).is_integer() else value


class ApiServer:
    """The API's routes over one :class:`EmulatorState`."""

    def __init__(self, state: EmulatorState) -> None:
        self._state = state
        self._route_names: dict[web.AbstractRoute, str] = {}
        self._j2p_cache: collections.OrderedDict[_synthetic.Plan, bytes] = collections.OrderedDict()

    def app(self) -> web.Application:
        """A new application serving the API."""
        app = web.Application(middlewares=[self._middleware])
        add = app.router.add_route
        self._name(add("POST", "/oauth2/token", self._token), routes.TOKEN)
        self._name(add("POST", "/videos", self._create), routes.CREATE_VIDEO)
        self._name(add("GET", "/videos/{id}", self._get_video), routes.GET_VIDEO)
        self._name(add("PUT", "/videos/{id}", self._update), routes.UPDATE_VIDEO)
        self._name(add("GET", "/videos/{id}/analysis", self._analysis), routes.GET_ANALYSIS)
        self._name(add("GET", "/videos/{id}/j2p", self._j2p), routes.GET_JOINT_DATA)
        add("GET", STATS_PATH, self._stats)
        return app

    def _name(self, route: web.AbstractRoute, name: str) -> None:
        self._route_names[route] = name

    @web.middleware
    async def _middleware(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        if request.path == STATS_PATH:
            # Emulator-only introspection: neither counted, recorded, faulted nor authenticated.
            return await handler(request)
        route = self._route_names.get(request.match_info.route, f"{request.method} {request.path}")
        if route == routes.TOKEN:
            self._state.token_requests += 1
        rule = await self._state.receive(request, route)
        if rule is not None:
            faulted = await _faults.inject(request, rule, _error)
            if faulted is not None:
                return faulted
        try:
            if route in _AUTHENTICATED_ROUTES:
                self._authenticate(request)
            response = await handler(request)
        except ApiError as exc:
            response = _error(exc.status, exc.message, None)
        except web.HTTPException as exc:
            response = _error(exc.status, exc.reason, None)
        return await _faults.truncate(request, rule, response)

    def _authenticate(self, request: web.Request) -> None:
        if not self._state.token_is_valid(request.headers.get(hdrs.AUTHORIZATION, "")):
            raise ApiError(401, "Unauthorized")

    async def _stats(self, request: web.Request) -> web.StreamResponse:
        """The counters as JSON, for tests that drive a standalone emulator from outside;
        ``?arrivals=1`` adds ``arrivals``: ``[route, received_at]`` of each recorded request."""
        stats = self._state.stats()
        if request.query.get("arrivals"):
            stats["arrivals"] = [[r.route, r.received_at] for r in self._state.recorded]
        return json_response(stats, 200, None)

    # -- token endpoint -------------------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.StreamResponse:
        def oauth_error(code: str) -> web.Response:
            return json_response({"error": code}, 400)

        state = self._state
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
        if client_id != state.client_id or client_secret != state.client_secret:
            return oauth_error("invalid_client")
        if "scope" in form and form["scope"] != state.scope:
            return oauth_error("invalid_scope")
        return json_response(
            {
                "access_token": state.issue_token(),
                "expires_in": _number(state.settings.token_lifetime),
                "token_type": "Bearer",
            }
        )

    # -- videos ---------------------------------------------------------------------------------

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
            self._state.signer,
            video_id=video_id,
            filename=video.filename,
            size=video.size,
            lifetime=self._state.settings.presign_lifetime,
        )
        self._state.videos[video_id] = video
        url = f"{self._state.url('storage')}/{_storage.BUCKET}"
        return json_response({"id": video_id, "url": url, "fields": video.fields})

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
        return json_response({"id": video.id})

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
            body["fps"] = _number(self._state.settings.fps)
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

    def _video(self, request: web.Request) -> EmulatedVideo:
        video = self._state.videos.get(request.match_info["id"])
        if video is None:
            raise ApiError(404, "Video not found")
        return video

    def _download_url(self, key: str) -> str:
        return _storage.download_url(self._state.signer, self._state.url("storage"), key)

    # -- analysis and joint data ----------------------------------------------------------------

    async def _analysis(self, request: web.Request) -> web.StreamResponse:
        return json_response(self._analysis_body(self._video(request), time.monotonic()))

    async def _j2p(self, request: web.Request) -> web.StreamResponse:
        body = self._j2p_body(self._video(request), time.monotonic())
        return web.Response(body=body, content_type="application/json")

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
        settings = self._state.settings
        digest = video.content_sha256 or ""
        rep_count = video.rep_count
        if rep_count is None:
            rep_count = _synthetic.default_rep_count(digest or "0")
        return _synthetic.make_plan(
            seed=settings.seed,
            content_sha256=digest,
            activity=video.activity,
            rep_count=rep_count,
            video_seconds=settings.video_seconds,
            fps=settings.fps,
        )


# -- what requests may carry -------------------------------------------------------------------


async def _json_body(request: web.Request) -> object:
    if request.content_type != "application/json":
        raise ApiError(400, "Content-Type must be application/json")
    # Parsed once, when the request was recorded; None there is a body that is not JSON (or
    # JSON null), read again here to tell which.
    parsed = current_record().json
    if parsed is not None:
        return parsed
    try:
        return json.loads(await request.read())
    except ValueError:
        raise ApiError(400, "Request body is not valid JSON") from None


def _parse_include(request: web.Request) -> set[str]:
    values = request.query.getall("include", [])
    if len(values) > 1:
        raise ApiError(400, "Give 'include' once, as a comma-separated list (include=j2p,analysis)")
    items = {item.strip() for item in values[0].split(",")} - {""} if values else set()
    if unknown := sorted(items.difference(_INCLUDES)):
        raise ApiError(
            400, f"Unknown include value(s) {unknown}; accepted values are {list(_INCLUDES)}"
        )
    return items


def _parse_video_fields(body: object, *, create: bool) -> dict[str, Any]:
    """Validate a Create or Update body strictly, so client bugs surface as 400s."""
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object")
    accepted = _CREATE_FIELDS if create else _UPDATE_FIELDS
    if unknown := sorted(set(body).difference(accepted)):
        raise ApiError(400, f"Unknown field(s) {unknown}; accepted fields are {list(accepted)}")
    for name, value in body.items():
        if value is None:
            raise ApiError(400, f"'{name}' must not be null; omit the field instead")
    if create:
        for name in ("filename", "size"):
            if name not in body:
                raise ApiError(400, f"'{name}' is required")
    parsed: dict[str, Any] = {}
    for name, value in body.items():
        if name in ("filename", "source"):
            if not isinstance(value, str) or (name == "filename" and not value):
                raise ApiError(400, f"'{name}' must be a non-empty string")
            parsed[name] = value
        elif name in ("size", "repCount"):
            if type(value) is not int or value < 0:
                raise ApiError(400, f"'{name}' must be an integer >= 0, got {value!r}")
            parsed[name] = value
        elif name == "domain":
            parsed[name] = _enum_value(Domain, name, value)
        else:
            parsed[name] = _enum_value(Activity, name, value)
    domain, activity = parsed.get("domain"), parsed.get("activity")
    if domain is not None and activity is not None and ACTIVITY_DOMAINS[activity] is not domain:
        raise ApiError(
            400,
            f"Activity '{activity.value}' does not belong to domain '{domain.value}' "
            f"(it belongs to '{ACTIVITY_DOMAINS[activity].value}')",
        )
    return parsed


def _enum_value(enum: type[Domain] | type[Activity], name: str, value: object) -> Domain | Activity:
    accepted = [member.value for member in enum]
    if not isinstance(value, str) or value not in accepted:
        raise ApiError(400, f"'{name}' must be one of {accepted}, got {value!r}")
    return enum(value)
