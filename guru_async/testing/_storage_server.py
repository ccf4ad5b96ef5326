"""The storage server: presigned uploads and signed downloads, answering in S3's XML error
format (the S3 rules themselves are in ``_storage``)."""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import hdrs, web

from guru_async import _routes as routes
from guru_async._enums import AnalysisStatus, OverlayType
from guru_async.testing import _faults, _storage
from guru_async.testing._state import EmulatorState, current_fault, current_record

UNANALYZABLE_MARKER = b"GURU-EMULATOR:UNANALYZABLE"

_S3_STATUS_CODES = {400: "InvalidRequest", 403: "AccessDenied", 404: "NoSuchKey", 503: "SlowDown"}
_VIDEO_ID_IN_BODY = re.compile(rb"uploads/([0-9a-f-]{36})/")
_OVERLAY_FILES = frozenset(f"{overlay.value}.mp4" for overlay in OverlayType)

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str, headers: dict[str, str] | None) -> web.Response:
    code = _S3_STATUS_CODES.get(status, "InternalError")
    return _storage.s3_error(status, code, message, headers)


class StorageServer:
    """The storage routes over one :class:`EmulatorState`."""

    def __init__(self, state: EmulatorState) -> None:
        self._state = state
        self._route_names: dict[web.AbstractRoute, str] = {}

    def app(self) -> web.Application:
        """A new application serving the storage bucket."""
        app = web.Application(middlewares=[self._middleware])
        add = app.router.add_route
        bucket = f"/{_storage.BUCKET}"
        self._route_names[add("POST", bucket, self._upload)] = routes.UPLOAD
        self._route_names[add("GET", f"{bucket}/{{key:.+}}", self._download)] = routes.DOWNLOAD
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        route = self._route_names.get(request.match_info.route, f"{request.method} {request.path}")
        rule = await self._state.receive(request, route)
        if rule is not None:
            before_drop = self._read_part_of_upload if route == routes.UPLOAD else None
            faulted = await _faults.inject(request, rule, _error, before_drop)
            if faulted is not None:
                return faulted
        try:
            response = await handler(request)
        except _storage.StorageError as exc:
            response = exc.response()
        except web.HTTPException as exc:
            code = "NoSuchKey" if exc.status == 404 else "MethodNotAllowed"
            response = _storage.s3_error(exc.status, code, exc.reason)
        return await _faults.truncate(request, rule, response)

    async def _read_part_of_upload(self, request: web.Request) -> None:
        """Consume some of an upload before a drop, so the client is cut off mid-body."""
        wanted = min((request.content_length or 0) // 2, 256 * 1024)
        seen = b""
        while len(seen) < wanted and not request.content.at_eof():
            seen += await request.content.read(wanted - len(seen))
        if match := _VIDEO_ID_IN_BODY.search(seen):
            self._state.upload_attempts[match.group(1).decode()] += 1

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
        state = self._state
        record = current_record()
        attributed: list[str] = []

        def on_key(video_id: str) -> None:
            if not attributed:
                attributed.append(video_id)
                state.upload_attempts[video_id] += 1

        assert state.storage_dir is not None
        try:
            received = await _storage.receive_upload(
                request,
                signer=state.signer,
                storage_dir=state.storage_dir,
                lookup=state.videos.get,
                on_part=record.part_names.append,
                on_key=on_key,
                head_size=len(UNANALYZABLE_MARKER),
                bandwidth=state.settings.storage_bandwidth,
            )
        except ValueError as exc:
            raise _storage.StorageError(
                400,
                "MalformedPOSTRequest",
                f"The body of your POST request is not well-formed multipart/form-data: {exc}",
            ) from None
        video = received.video
        _storage.commit(received, state.stored_path(video.id))
        video.stored_size = received.size
        video.content_sha256 = received.sha256
        video.analyzable = received.size > 0 and not received.head.startswith(UNANALYZABLE_MARKER)
        video.uploaded_at = time.monotonic()
        video.analysis_ready_at = video.uploaded_at + state.analysis_seconds(video)
        state.uploads_completed[video.id] += 1
        return web.Response(status=204)

    async def _download(self, request: web.Request) -> web.StreamResponse:
        _reject_authorization(request)
        key = request.match_info["key"]
        _storage.check_download(self._state.signer, key, request.query.get("X-Amz-Signature"))
        parsed = _storage.parse_key(key)
        video = self._state.videos.get(parsed[0]) if parsed else None
        no_such_key = _storage.StorageError(404, "NoSuchKey", "The specified key does not exist.")
        if parsed is None or video is None or video.uploaded_at is None:
            raise no_such_key
        if parsed[1] != "raw" and (
            parsed[1] not in _OVERLAY_FILES
            or video.analysis_status() is not AnalysisStatus.COMPLETE
        ):
            raise no_such_key
        path = self._state.stored_path(video.id)
        headers: dict[str, str] = {hdrs.CONTENT_TYPE: "video/mp4"}
        rule = current_fault()
        if rule is not None and rule.kind == "truncate":
            return await _faults.send_truncated(request, 200, headers, _read_file(path))
        return web.FileResponse(path, headers=headers)


def _reject_authorization(request: web.Request) -> None:
    if hdrs.AUTHORIZATION in request.headers:
        raise _storage.StorageError(
            400,
            "InvalidArgument",
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
            "Signature query string parameter or the Authorization header should be specified",
        )


def _read_file(path: Path) -> bytes:
    return path.read_bytes()
