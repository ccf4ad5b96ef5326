"""The internal API client: the transport plus the converter, and the calls callers share.

``GuruSession`` checks its arguments and calls this; a batch (``BatchRun``) and a fleet worker
receive the same object, so none of them reaches into another's private methods, and no module
below the session imports it. Arguments here are already checked (ids, fields, sizes).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Final, TypeVar

import aiohttp
import attrs
from yarl import URL

from . import _routes as routes
from ._converter import decode_model, fresh_setter, to_json
from ._download import Redirected, redirect_target, stream_to_file
from ._error_mapping import api_error, download_error, storage_error
from ._errors import GuruConnectionError, GuruError, UploadError
from ._instrumentation import Hooks, TraceScope
from ._models import Analysis, CreatedVideo, JointData, Video
from ._payloads import CreateVideoBody, VideoFields
from ._retry import parse_retry_after
from ._transport import Request, Response, Transport
from ._types import ProgressCallback
from ._upload import (
    FileSource,
    MultipartUpload,
    UploadSource,
    check_not_expired,
    fetch_source,
    policy_expiration,
    presign_expired,
)
from ._urls import MAX_REDIRECTS, check_server_url, checked_url

T = TypeVar("T")

_set_video_id = fresh_setter(Analysis, "video_id")

# Create video is not idempotent: said in the message of a failure that may have reached the
# service, which is then raised instead of retried (see GuruSession.create_video).
CREATE_REPEAT_RISK: Final = "the video may have been created (a retry could create a second one)"


class Client:
    """One transport and the API calls on top of it: send, then decode with the converter.

    Attributes:
        transport: The one HTTP path (and the connection pool's owner).
        hooks: The instrumentation hooks every request and video scope is told of.
        service: The API and account the calls go to (``"<base_url> <client_id>"``): part of
            an item's identity in a journal or a fleet, so ids never cross backends.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        base_url: URL,
        service: str,
        allow_insecure_http: bool,
        hooks: Hooks,
    ) -> None:
        self.transport = transport
        self.hooks = hooks
        self.service = service
        self._api_root = str(base_url).rstrip("/")
        self._allow_insecure_http = allow_insecure_http

    # -- URLs --------------------------------------------------------------------------------

    def check_url(self, url: str, *, name: str) -> URL:
        """A caller's URL, under the session's rules (plain http only to this machine)."""
        return checked_url(url, name=name, allow_insecure_http=self._allow_insecure_http)

    def check_server_url(self, url: str, *, name: str, what: str) -> None:
        """A URL the API handed us, under the same rules; a bad one is the server's fault."""
        check_server_url(url, name=name, what=what, allow_insecure_http=self._allow_insecure_http)

    # -- the request path --------------------------------------------------------------------

    def call(
        self,
        method: str,
        path: str,
        *,
        what: str,
        decode: Callable[[Response], T],
        body: Any = None,
        params: dict[str, str] | None = None,
        max_retries: int | None = None,
        repeat_risk: str | None = None,
        route: str = "",
        video_id: str | None = None,
    ) -> Coroutine[Any, Any, T]:
        """Send one API request (``body``: a payload the converter turns into JSON) through the
        transport, with auth, retries and decoding: the coroutine to await (a plain function,
        so that every resume of the call passes one frame less)."""
        payload = None if body is None else to_json(body)

        def errors(status: int, headers: Any, raw: bytes) -> GuruError:
            return api_error(status, headers, raw, what=what)

        return self.transport.send(
            Request(
                method=method,
                # The path holds only validated ids: nothing to quote, so skip yarl's quoting.
                url=URL(self._api_root + path, encoded=True),
                what=what,
                errors=errors,
                decode=decode,
                body=None if payload is None else (lambda: payload),
                headers=None if payload is None else {"Content-Type": "application/json"},
                params=params,
                authorized=True,
                repeat_risk=repeat_risk,
                route=route,
                video_id=video_id,
            ),
            max_retries=max_retries,
        )

    # -- the calls several callers share -----------------------------------------------------

    async def create_video(
        self, filename: str, size: int, fields: VideoFields, *, max_retries: int | None = None
    ) -> CreatedVideo:
        """Create Video with checked arguments; never repeated once it may have reached the
        service. The upload URL it returns is checked like any URL from the API."""
        created = await self.call(
            "POST",
            "/videos",
            what=f"Create video {filename!r}",
            decode=model(CreatedVideo, "Create video"),
            body=CreateVideoBody.of(filename, size, fields),
            max_retries=max_retries,
            repeat_risk=CREATE_REPEAT_RISK,
            route=routes.CREATE_VIDEO,
        )
        # The upload goes wherever the API says; it must not downgrade to plain http.
        self.check_server_url(created.url, name="upload url", what="Create video")
        return created

    async def get_video(
        self, video_id: str, *, include: str | None = None, max_retries: int | None = None
    ) -> Video:
        """Get Video (``include``: the joined, checked values, or None)."""
        decode_video = model(Video, f"Get video {video_id}")

        def decode(resp: Response) -> Video:
            video = decode_video(resp)
            if video.analysis is None and video.j2p is None:
                return video
            return attrs.evolve(
                video,
                analysis=of_video(video.analysis, video_id),
                j2p=joints_of_video(video.j2p, video_id),
            )

        return await self.call(
            "GET",
            f"/videos/{video_id}",
            what=f"Get video {video_id}",
            decode=decode,
            params=None if include is None else {"include": include},
            max_retries=max_retries,
            route=routes.GET_VIDEO,
            video_id=video_id,
        )

    def get_analysis(
        self, video_id: str, max_retries: int | None = None
    ) -> Coroutine[Any, Any, tuple[Analysis, float | None]]:
        """Get Analysis, with the service's hint (Retry-After) for when to poll next (the
        coroutine to await)."""
        what = f"Get analysis of video {video_id}"
        decode_analysis = model(Analysis, what)

        def decode(resp: Response) -> tuple[Analysis, float | None]:
            analysis = decode_analysis(resp)
            # Freshly decoded and not yet handed out: set in place rather than evolved (a copy
            # through __init__ was a tenth of the SDK's own work per call).
            _set_video_id(analysis, video_id)
            return analysis, parse_retry_after(resp.headers.get("Retry-After"))

        return self.call(
            "GET",
            f"/videos/{video_id}/analysis",
            what=what,
            decode=decode,
            max_retries=max_retries,
            route=routes.GET_ANALYSIS,
            video_id=video_id,
        )

    def analysis(
        self, video_id: str, max_retries: int | None = None
    ) -> Coroutine[Any, Any, Analysis]:
        """Get Analysis without the polling hint (``GuruSession.get_analysis``): the
        coroutine to await. One closure decodes, and no Retry-After is read."""
        what = f"Get analysis of video {video_id}"

        def decode(resp: Response) -> Analysis:
            analysis = decode_model(resp.body, Analysis, what=what, status=resp.status)
            _set_video_id(analysis, video_id)  # fresh, not yet handed out: see get_analysis
            return analysis

        return self.call(
            "GET",
            f"/videos/{video_id}/analysis",
            what=what,
            decode=decode,
            max_retries=max_retries,
            route=routes.GET_ANALYSIS,
            video_id=video_id,
        )

    async def source(self, file: FileSource, filename: str | None) -> UploadSource:
        """Check and measure what to upload (a URL source is fetched to learn its size)."""

        def check(url: str, name: str) -> None:
            self.check_url(url, name=name)

        timeouts = self.transport.timeouts
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeouts.connect, sock_read=timeouts.read
        )
        src = UploadSource(
            file,
            filename=filename,
            fetch=lambda url: fetch_source(
                self.transport.http(), url, timeout=timeout, check=check
            ),
        )
        if src.url is not None:
            check(str(src.url), "source URL")  # refused before anything is sent
        await src.measure()
        return src

    async def upload(
        self,
        created: CreatedVideo,
        source: UploadSource,
        progress: ProgressCallback | None,
        max_retries: int | None = None,
    ) -> None:
        """Upload the content of a created video to its presigned URL."""
        what = f"Upload of video {created.id}"
        multipart = MultipartUpload(created.fields, source, progress=progress)
        expires = policy_expiration(created.fields)

        def body() -> Any:
            check_not_expired(expires, video_id=created.id)
            return multipart.body()

        def errors(status: int, headers: Any, raw: bytes) -> GuruError:
            return storage_error(status, headers, raw, what=what)

        await self.transport.send(
            Request(
                method="POST",
                url=URL(created.url),
                what=what,
                errors=errors,
                decode=_ignore_body,
                body=body,
                headers=multipart.headers,
                total=None,
                cleanup=multipart.close_files,
                idle_since=multipart.idle_since,
                route=routes.UPLOAD,
                video_id=created.id,
            ),
            # A stream cannot be rewound: its one attempt is all there is.
            max_retries=max_retries if source.resendable else 0,
        )

    async def create_and_upload(
        self,
        src: UploadSource,
        fields: VideoFields,
        *,
        progress: ProgressCallback | None = None,
        max_retries: int | None = None,
        on_created: Callable[[CreatedVideo], Awaitable[None]] | None = None,
    ) -> str:
        """Create a video for ``src`` and upload it; return its id. ``src`` is released.

        An expired presign is replaced by a fresh video once; ``on_created`` lets a batch or a
        fleet record the id before any byte is sent.
        """
        try:
            for attempt in (1, 2):
                created = await self.create_video(
                    os.path.basename(src.name) or "video",
                    src.size,
                    fields,
                    max_retries=max_retries,
                )
                if on_created is not None:
                    await on_created(created)
                try:
                    await self.upload(created, src, progress, max_retries)
                except UploadError as exc:
                    if attempt == 1 and presign_expired(exc) and src.restartable:
                        continue
                    raise
                return created.id
            raise AssertionError("unreachable")  # pragma: no cover
        finally:
            src.release()

    async def download(
        self,
        uri: str,
        dest: Path,
        *,
        what: str,
        video_id: str,
        progress: ProgressCallback | None = None,
        max_retries: int | None = None,
    ) -> Path:
        """Stream a presigned ``uri`` (from Get Video) to ``dest``, atomically."""
        self.check_server_url(uri, name="download uri", what=what)
        url = URL(uri, encoded=True)  # as given: re-encoding would break the signature
        handler = stream_to_file(dest, progress=progress, what=what)
        # Redirects are followed here, one hop at a time, so each hop passes the same URL
        # rules as base_url (aiohttp would follow one to plain http on any host).
        for _ in range(MAX_REDIRECTS + 1):

            def errors(status: int, headers: Any, raw: bytes, current: URL = url) -> GuruError:
                moved = redirect_target(current, status, headers.get("Location"))
                return moved or download_error(status, headers, raw, what=what)

            try:
                return await self.transport.send(
                    Request(
                        method="GET",
                        url=url,
                        what=what,
                        errors=errors,
                        stream=handler,
                        total=None,
                        route=routes.DOWNLOAD,
                        video_id=video_id,
                    ),
                    max_retries=max_retries,
                )
            except Redirected as moved:
                url = moved.location
                self.check_server_url(str(url), name="download redirect", what=what)
        raise GuruConnectionError(f"{what}: storage redirected more than {MAX_REDIRECTS} times")

    def video_scope(self, name: str, filename: str | None) -> AbstractContextManager[None]:
        """One video's whole journey, for tracing hooks (nothing to do without one)."""
        if not self.hooks.tracers:
            return contextlib.nullcontext()
        return self.hooks.scope(TraceScope("video", name, filename=filename))


def model(cls: type[T], what: str) -> Callable[[Response], T]:
    """A decoder of a response body into ``cls`` (an error names ``what``)."""

    def decode(resp: Response) -> T:
        return decode_model(resp.body, cls, what=what, status=resp.status)

    return decode


def of_video(analysis: Analysis | None, video_id: str) -> Analysis | None:
    """``analysis`` marked as the analysis of ``video_id`` (the API's answer does not say)."""
    return None if analysis is None else attrs.evolve(analysis, video_id=video_id)


def joints_of_video(joints: JointData | None, video_id: str) -> JointData | None:
    """``joints`` with its rep analysis marked as that of ``video_id``."""
    if joints is None or joints.analysis is None:
        return joints
    return attrs.evolve(joints, analysis=of_video(joints.analysis, video_id))


def _ignore_body(resp: Response) -> None:
    return None
