"""GuruSession: one async session for the whole Guru API.

Each endpoint checks its arguments, sends through the internal client (``_client.py``: the
transport, the converter and the calls a batch and a fleet worker share) and decodes.
"""

from __future__ import annotations

import os
import platform
from collections.abc import AsyncIterable, Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final

import aiohttp
import attrs
from yarl import URL

from . import _routes as routes
from ._auth import (
    DEFAULT_TOKEN_STORE,
    ClientCredentials,
    StaticTokenProvider,
    TokenProvider,
    TokenStore,
)
from ._batch import (
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_POLL_RATE,
    DEFAULT_UPLOAD_CONCURRENCY,
    BatchItem,
    BatchProgress,
    BatchRun,
    BatchUpload,
)
from ._client import Client, joints_of_video, model
from ._converter import decode_json
from ._enums import OverlayType
from ._errors import ResponseDecodeError
from ._instrumentation import Hooks, InstrumentationHook
from ._limiter import AdaptiveLimiter, RateLimiter
from ._models import Analysis, CreatedVideo, JointData, Video
from ._payloads import UpdateVideoBody, resolve_fields
from ._polling import DEFAULT_TIMEOUT, PollPolicy, poll_analysis
from ._retry import RetryBudget, RetryPolicy
from ._transport import Response, Timeouts, Transport
from ._types import UNSET, ActivityArg, DomainArg, ProgressCallback
from ._types import UnsetType as _Unset
from ._upload import FileSource, UploadSource, empty_video, is_url
from ._urls import checked_url
from ._validation import (
    check_include,
    check_rep_count,
    check_size,
    check_video_id,
    resolve_domain_activity,
)
from ._version import __version__

DEFAULT_BASE_URL: Final = "https://api.getguru.fitness"
# A URL, not a secret.
DEFAULT_TOKEN_URL: Final = (
    "https://customer-console-prod.auth.us-west-2.amazoncognito.com/oauth2/token"  # noqa: S105
)
DEFAULT_SCOPE: Final = "https://api.getguru.fitness/default"
USER_AGENT: Final = (
    f"guru-async/{__version__} python/{platform.python_version()} aiohttp/{aiohttp.__version__}"
)


class GuruSession:
    """An async session for the Guru API: one connection pool, one token, every endpoint.

    Use it as an async context manager, once per process (web apps) or per job (batches)::

        async with GuruSession(client_id, client_secret) as guru:
            analysis = await guru.analyze("squat.mp4", activity="squat")

    Args:
        client_id: OAuth client id; defaults to ``$GURU_CLIENT_ID``.
        client_secret: OAuth client secret; defaults to ``$GURU_CLIENT_SECRET``.
        access_token: A ready access token to use instead of credentials (never refreshed).
        base_url: The API's root; defaults to ``$GURU_BASE_URL`` or the production API.
        token_url: The OAuth token endpoint; defaults to ``$GURU_TOKEN_URL`` or Guru's Cognito.
        scope: The OAuth scope requested.
        token_store: Where tokens are kept; defaults to a process-wide MemoryTokenStore, so
            sessions with the same credentials share one token. Use FileTokenStore to keep
            tokens across restarts and processes.
        http_session: A caller-owned aiohttp.ClientSession to send requests with; the
            GuruSession then never closes it.
        max_retries: Retries of a failed request (connection errors, 408, 429, 5xx); 0 disables.
            Default 4 (or the retry_policy's).
        retry_policy: The whole retry policy (retries, backoff base and cap, the longest
            Retry-After honoured); max_retries, when given, overrides its retry count.
        retry_budget: The retry token bucket; by default each session has its own. Pass one
            RetryBudget to several sessions to share it.
        timeouts: Connect, read and per-call total timeouts.
        poll_policy: The default schedule of await_analysis.
        limiter: Client-side flow control that slows every call down together when the
            service throttles (429); pass one AdaptiveLimiter to several sessions to share it.
            Or a ceiling shared wider (a ``RateLimiter`` such as
            ``guru_async.fleet.RedisRateLimiter``), awaited before every API request attempt;
            the session then keeps its own AdaptiveLimiter below it.
        allow_insecure_http: Allow plain http to hosts other than this machine.
        hooks: Instrumentation hooks, told of every request and retry (see
            InstrumentationHook; a TracingHook such as ``guru_async.otel``'s also wraps each
            call and video). None (the default) means ``[LoggingHook()]``; a sequence replaces
            it, so include a LoggingHook to keep the log lines.
    """

    def __init__(
        self,
        client_id: str | None = None,
        client_secret: str | None = None,
        *,
        access_token: str | None = None,
        base_url: str | None = None,
        token_url: str | None = None,
        scope: str = DEFAULT_SCOPE,
        token_store: TokenStore | None = None,
        http_session: aiohttp.ClientSession | None = None,
        max_retries: int | None = None,
        retry_policy: RetryPolicy | None = None,
        retry_budget: RetryBudget | None = None,
        timeouts: Timeouts | None = None,
        poll_policy: PollPolicy | None = None,
        limiter: AdaptiveLimiter | RateLimiter | None = None,
        allow_insecure_http: bool = False,
        hooks: Sequence[InstrumentationHook] | None = None,
    ) -> None:
        instruments = Hooks(hooks)
        self.base_url = checked_url(
            base_url or os.environ.get("GURU_BASE_URL") or DEFAULT_BASE_URL,
            name="base_url",
            allow_insecure_http=allow_insecure_http,
        )
        self.token_url = checked_url(
            token_url or os.environ.get("GURU_TOKEN_URL") or DEFAULT_TOKEN_URL,
            name="token_url",
            allow_insecure_http=allow_insecure_http,
        )
        self.scope = scope
        self.poll_policy = poll_policy or PollPolicy()
        self.client_id: str | None
        token: TokenProvider | StaticTokenProvider
        if access_token is not None:
            if not isinstance(access_token, str) or not access_token:
                raise ValueError("access_token must be a non-empty string")
            self.client_id = client_id
            token = StaticTokenProvider(access_token)
        else:
            self.client_id = client_id or os.environ.get("GURU_CLIENT_ID")
            # Kept only by the exchange (ClientCredentials), never on the session.
            client_secret = client_secret or os.environ.get("GURU_CLIENT_SECRET")
            if not self.client_id or not client_secret:
                raise ValueError(
                    "no Guru credentials: pass client_id and client_secret, set GURU_CLIENT_ID "
                    "and GURU_CLIENT_SECRET, or pass access_token="
                )
            credentials = ClientCredentials(
                token_url=self.token_url,
                client_id=self.client_id,
                client_secret=client_secret,
                scope=scope,
                send=lambda request: self._transport.send(request),
            )
            token = TokenProvider(
                key=credentials.key,
                store=token_store if token_store is not None else DEFAULT_TOKEN_STORE,
                fetch=credentials,
            )
        if limiter is not None and not isinstance(limiter, (AdaptiveLimiter, RateLimiter)):
            raise TypeError(
                "limiter must be an AdaptiveLimiter or a RateLimiter (an object with "
                f"async acquire()), got {type(limiter).__name__}"
            )
        bind = getattr(limiter, "bind_session", None)
        if callable(bind):
            # A ceiling shared through Redis keys itself by the account it paces.
            bind(client_id=self.client_id, base_url=str(self.base_url))
        self._transport = Transport(
            token=token,
            policy=_retry_policy(retry_policy, max_retries),
            timeouts=timeouts or Timeouts(),
            http_session=http_session,
            user_agent=USER_AGENT,
            budget=retry_budget if retry_budget is not None else RetryBudget(),
            limiter=limiter if isinstance(limiter, AdaptiveLimiter) else None,
            ceiling=None if limiter is None or isinstance(limiter, AdaptiveLimiter) else limiter,
            hooks=instruments,
        )
        self._client = Client(
            self._transport,
            base_url=self.base_url,
            service=f"{self.base_url} {self.client_id or ''}",
            allow_insecure_http=allow_insecure_http,
            hooks=instruments,
        )

    def __repr__(self) -> str:
        state = "closed" if self._transport.closed else "open"
        return f"<GuruSession {state} base_url={str(self.base_url)!r} client_id={self.client_id!r}>"

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> GuruSession:
        self._transport.http()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        """True once close() was called."""
        return self._transport.closed

    async def close(self) -> None:
        """Close the session and its connections (a caller's http_session is left open).

        Calls still in flight end with SessionClosedError. Closing twice is harmless.
        """
        await self._transport.close()

    # -- endpoints ---------------------------------------------------------------------------

    async def create_video(
        self,
        filename: str | os.PathLike[str],
        *,
        size: int | None = None,
        domain: DomainArg = None,
        activity: ActivityArg = None,
        rep_count: int | None = None,
        source: str | None = None,
        max_retries: int | None = None,
    ) -> CreatedVideo:
        """Create a video's record and get where to upload its content (Create Video).

        Create is never repeated when the first request may have reached the service, so one
        call never makes two videos. It is retried only when the request surely was not sent
        (connection refused, name not resolved, connect timeout) or the service asked for a
        retry (408, 429, 503 with ``Retry-After``). After an ambiguous failure (a dropped
        connection, a body cut short, a timeout waiting for the answer, any other 5xx) the
        error is raised at once, and its message says the video may have been created: that
        video, if any, has no content and its id is unknown; call create_video again.

        Args:
            filename: The video's file name, or a path to the file; with a path and no
                ``size``, the size is read from the file. Only the base name is sent.
            size: The content's size in bytes.
            domain: The exercise category; filled in from ``activity`` when omitted.
            activity: The movement, e.g. ``Activity.SQUAT`` or ``"squat"``.
            rep_count: How many reps the video is expected to show.
            source: Your service's name.
            max_retries: Overrides the session's retry count for this call.

        Raises:
            ValueError: An unknown domain or activity (the message lists the accepted values),
                an activity outside the domain, a negative or huge rep count, an empty video
                (size 0, or a file of 0 bytes).
            FileNotFoundError: No ``size`` and no file at ``filename``.
            GuruConnectionError, ServerError, ResponseDecodeError: The request failed; when the
                message says "not retried, as the video may have been created", the service
                may hold an empty video from this call.
        """
        if not isinstance(filename, (str, os.PathLike)) or not str(filename):
            raise TypeError("filename must be a non-empty str or path")
        if is_url(filename):
            if size is None:
                raise ValueError("create_video needs size= for a URL; upload_video measures it")
            name = URL(str(filename), encoded=True).name or "video"
        else:
            if size is None:
                size = UploadSource(filename).size
            name = os.path.basename(os.fspath(filename)) or "video"
        size = check_size(size)
        if size == 0:
            raise empty_video(f"the video {name!r} (size=0)")
        fields = resolve_fields(
            domain=domain, activity=activity, rep_count=rep_count, source=source
        )
        return await self._client.create_video(name, size, fields, max_retries=max_retries)

    async def upload(
        self,
        created: CreatedVideo,
        file: FileSource,
        *,
        filename: str | None = None,
        progress: ProgressCallback | None = None,
        max_retries: int | None = None,
    ) -> None:
        """Upload a video's content to the presigned URL from create_video.

        The content is streamed in chunks (never read whole into memory, never written to
        disk) as ``multipart/form-data`` with an exact Content-Length. No Authorization header
        goes to the storage host. A failed attempt is sent again from the start of the content
        (a URL is fetched again) while the presigned policy is valid; an upload from a
        StreamSource is tried once, since a stream cannot be rewound.

        Args:
            created: What create_video returned.
            file: What to send: a path; an ``http://`` or ``https://`` URL (a str or
                ``yarl.URL``) streamed straight through, its size from its Content-Length; a
                binary file object such as ``open(path, "rb")`` or ``io.BytesIO(data)``
                (read from its current position to its end, and left open); or a
                StreamSource (an async stream with a declared size, such as a web
                framework's upload).
            filename: The file name storage records (its extension sets the part's
                Content-Type); defaults to the path's or file object's ``name``, the URL's
                last segment, or ``"video"``.
            progress: Called as ``progress(sent_bytes, total_bytes)`` as the content goes out;
                it only rises, even across retried attempts. May be async.
            max_retries: Overrides the session's retry count for this call.

        Raises:
            UploadError: Storage refused the upload (``.code`` says why, e.g. ``AccessDenied``,
                ``EntityTooLarge``, ``PolicyExpired``) or the file changed while it was sent
                (``FileChanged``).
            SourceError: A URL source answered an error, announced no Content-Length, or sent
                another number of bytes than it announced; a stream delivered more or fewer
                bytes than its size. Never retried.
            OSError: Reading a local file failed (raised as it is, never retried).
            FileNotFoundError, IsADirectoryError, TypeError, ValueError: An unusable ``file``,
                ``filename`` or URL, or empty content (0 bytes), before anything is sent.
        """
        if not isinstance(created, CreatedVideo):
            raise TypeError(
                f"upload() takes the CreatedVideo from create_video, got {type(created).__name__}"
            )
        src = await self._client.source(file, filename)
        try:
            await self._client.upload(created, src, progress, max_retries)
        finally:
            src.release()

    async def upload_video(
        self,
        file: FileSource,
        *,
        filename: str | None = None,
        domain: DomainArg = None,
        activity: ActivityArg = None,
        rep_count: int | None = None,
        source: str | None = None,
        progress: ProgressCallback | None = None,
        max_retries: int | None = None,
    ) -> str:
        """Create a video and upload its content; return the video's id.

        ``file`` is a path, an http(s) URL, a binary file object (``io.BytesIO(data)`` for
        bytes in memory) or a StreamSource, as for upload. The size sent to Create Video is
        the content's real size (a file's size, a URL's Content-Length, a stream's declared
        size) and ``filename`` (default: the source's own name) is the name sent. If the
        presigned upload expires before it can start, a fresh video is created once and
        uploaded instead. Other arguments are as for create_video and upload.

        Returns:
            The new video's id, to pass to await_analysis or get_analysis.

        Raises:
            ValueError: A bad domain, activity, rep count or ``filename``, or empty content
                (0 bytes), before anything is sent.
            UploadError, SourceError, OSError: As for upload.
        """
        fields = resolve_fields(
            domain=domain, activity=activity, rep_count=rep_count, source=source
        )
        src = await self._client.source(file, filename)
        with self._client.video_scope("upload_video", src.name):
            return await self._client.create_and_upload(
                src, fields, progress=progress, max_retries=max_retries
            )

    async def get_video(
        self,
        video_id: str,
        *,
        include: Iterable[str] | None = None,
        max_retries: int | None = None,
    ) -> Video:
        """Fetch a video's status, download links and overlays (Get Video).

        Args:
            video_id: The id from create_video or upload_video.
            include: Any of ``"j2p"``, ``"analysis"``, ``"objects"`` to embed them too.
        """
        check_video_id(video_id)
        joined = check_include(include)
        return await self._client.get_video(video_id, include=joined, max_retries=max_retries)

    async def update_video(
        self,
        video_id: str,
        *,
        rep_count: int | _Unset = UNSET,
        domain: DomainArg | _Unset = UNSET,
        activity: ActivityArg | _Unset = UNSET,
        max_retries: int | None = None,
    ) -> str:
        """Change a video's rep count, domain or activity; only the fields given are sent.

        Returns:
            The video's id, as the API returns it.
        """
        check_video_id(video_id)
        wire_rep_count = None
        if not isinstance(rep_count, _Unset):
            if rep_count is None:
                raise ValueError("rep_count cannot be cleared; omit it to keep the current value")
            wire_rep_count = check_rep_count(rep_count)
        given_domain = None if isinstance(domain, _Unset) else domain
        given_activity = None if isinstance(activity, _Unset) else activity
        # Checked together (an activity must belong to a given domain), sent as given.
        wire_domain, wire_activity = resolve_domain_activity(given_domain, given_activity)
        body = UpdateVideoBody(
            rep_count=wire_rep_count,
            domain=wire_domain if given_domain is not None else None,
            activity=wire_activity,
        )
        if body == UpdateVideoBody():
            raise ValueError("update_video needs at least one of rep_count, domain, activity")
        return await self._client.call(
            "PUT",
            f"/videos/{video_id}",
            what=f"Update video {video_id}",
            decode=_video_id_from(video_id),
            body=body,
            max_retries=max_retries,
            route=routes.UPDATE_VIDEO,
            video_id=video_id,
        )

    async def get_analysis(self, video_id: str, *, max_retries: int | None = None) -> Analysis:
        """Fetch a video's analysis (Get Analysis), in whatever state it is.

        ``status`` is Pending until analysis finishes; see await_analysis to wait for it.
        """
        return await self._client.analysis(check_video_id(video_id), max_retries)

    async def get_joint_data(self, video_id: str, *, max_retries: int | None = None) -> JointData:
        """Fetch per-frame joint positions and the rep analysis (Get Joint Data)."""
        check_video_id(video_id)
        what = f"Get joint data of video {video_id}"
        decode_joints = model(JointData, what)

        def decode(resp: Response) -> JointData:
            joints = joints_of_video(decode_joints(resp), video_id)
            assert joints is not None
            return joints

        return await self._client.call(
            "GET",
            f"/videos/{video_id}/j2p",
            what=what,
            decode=decode,
            max_retries=max_retries,
            route=routes.GET_JOINT_DATA,
            video_id=video_id,
        )

    async def await_analysis(
        self,
        video_id: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        interval: float | None = None,
        max_interval: float | None = None,
    ) -> Analysis:
        """Poll Get Analysis until it is Complete or Failed, and return it.

        Polls at once, then with growing waits from ``interval`` up to ``max_interval``
        (defaults 1 s and 5 s: a typical 30 s analysis costs 10 requests). A transient failure
        of one poll does not end the wait. A Failed analysis is returned, not raised: check
        ``analysis.status`` and ``analysis.reason``.

        Raises:
            AnalysisTimeoutError: ``timeout`` seconds passed first. The video is not lost:
                ``exc.video_id`` can be awaited again, ``exc.last`` is the last status seen.
        """
        check_video_id(video_id)
        policy = self.poll_policy
        if interval is not None or max_interval is not None:
            interval = policy.interval if interval is None else interval
            if max_interval is None:
                max_interval = max(interval, policy.max_interval)
            policy = attrs.evolve(policy, interval=interval, max_interval=max_interval)
        return await poll_analysis(
            lambda: self._client.get_analysis(video_id),
            video_id=video_id,
            timeout=timeout,
            policy=policy,
        )

    async def analyze(
        self,
        file: FileSource,
        *,
        filename: str | None = None,
        domain: DomainArg = None,
        activity: ActivityArg = None,
        rep_count: int | None = None,
        source: str | None = None,
        progress: ProgressCallback | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Analysis:
        """Upload a video and wait for its analysis: upload_video, then await_analysis.

        Args:
            file: A path, an http(s) URL, a binary file object (``io.BytesIO(data)`` for
                bytes in memory; read from its current position, left open) or a
                StreamSource, as for upload.
            filename: The name sent for the video; defaults to the source's own name.
            timeout: Seconds to wait for the analysis once the upload is done.
            domain: As for upload_video.
            activity: As for upload_video.
            rep_count: As for upload_video.
            source: As for upload_video.
            progress: As for upload_video.

        Returns:
            The Analysis, Complete or Failed (check ``analysis.status``); its ``video_id`` is
            the video this call made.

        Raises:
            AnalysisTimeoutError: The upload succeeded but the analysis did not finish in
                ``timeout`` seconds; ``exc.video_id`` can be awaited again.
            UploadError, SourceError, OSError, ValueError: As for upload_video.
        """
        fields = resolve_fields(
            domain=domain, activity=activity, rep_count=rep_count, source=source
        )
        src = await self._client.source(file, filename)
        with self._client.video_scope("analyze", src.name):
            video_id = await self._client.create_and_upload(src, fields, progress=progress)
            return await self.await_analysis(video_id, timeout=timeout)

    async def download(
        self,
        video_id: str,
        dest: str | os.PathLike[str],
        *,
        overlay: OverlayType | str | None = None,
        progress: ProgressCallback | None = None,
        max_retries: int | None = None,
    ) -> Path:
        """Download a video's raw content, or one of its overlays, to ``dest``.

        The file is streamed to a temporary file beside ``dest`` and renamed into place once
        complete (and its size checked), so ``dest`` is never left half-written. No
        Authorization header goes to the storage host.

        Args:
            video_id: The video.
            dest: The file to write (replaced if it exists).
            overlay: ``"skeleton"`` or ``"all"`` for an overlay video; None for the raw video.
            progress: Called as ``progress(received_bytes, total_bytes)``.

        Redirects from storage are followed only to URLs that pass the rules of ``base_url``
        (https, or plain http to this machine unless ``allow_insecure_http``). The file is
        created with the process's umask, like curl's.

        Raises:
            ValueError: An unknown overlay type, or the video/overlay is not ready to download.
            ResponseDecodeError: Storage redirected to a refused URL.
            GuruConnectionError: Storage redirected more than 10 times (or the network failed).
            OSError: Writing the file failed (a full disk, no permission): raised as it is,
                never retried.
        """
        check_video_id(video_id)
        if overlay is not None:
            try:
                overlay = OverlayType(overlay)
            except ValueError:
                raise ValueError(
                    f"unknown overlay {overlay!r}; accepted values: "
                    f"{', '.join(o.value for o in OverlayType)} (or None for the raw video)"
                ) from None
        target = Path(dest)
        if target.is_dir():
            raise IsADirectoryError(f"dest must be a file path, but {str(target)!r} is a folder")
        if not target.parent.is_dir():
            raise FileNotFoundError(f"folder for dest does not exist: {str(target.parent)!r}")
        video = await self.get_video(video_id, max_retries=max_retries)
        if overlay is None:
            uri, name = video.uri, "video"
        else:
            found = video.overlays.get(overlay.value)
            uri, name = (found.uri if found else None), f"{overlay.value} overlay"
        if not uri:
            raise ValueError(
                f"the {name} of video {video_id} is not available yet (video status "
                f"{video.status}); wait for the analysis to complete"
            )
        what = f"Download of the {name} of video {video_id}"
        return await self._client.download(
            uri,
            target,
            what=what,
            video_id=video_id,
            progress=progress,
            max_retries=max_retries,
        )

    def batch_upload(
        self,
        items: Iterable[BatchItem] | AsyncIterable[BatchItem],
        *,
        upload_concurrency: int = DEFAULT_UPLOAD_CONCURRENCY,
        wait: bool = True,
        journal: str | os.PathLike[str] | None = None,
        progress: Callable[[BatchProgress], None] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        poll_rate: float = DEFAULT_POLL_RATE,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        count_ahead: bool | None = None,
        domain: DomainArg = None,
        activity: ActivityArg = None,
        rep_count: int | None = None,
        source: str | None = None,
    ) -> BatchUpload:
        """Upload many videos and collect their analyses, yielding one result per item.

        ::

            async for r in guru.batch_upload(paths, upload_concurrency=8, journal="batch.db"):
                print(r.item, r.video_id, r.analysis, r.error)

        To stop before the end, iterate inside ``async with guru.batch_upload(...) as
        results:`` (or call ``await results.aclose()``): leaving the block stops every
        upload and poll at once.

        Results come in completion order. Uploads run ``upload_concurrency`` at a time;
        uploaded videos are polled by one shared loop at no more than ``poll_rate`` requests
        per second, so memory, tasks and request rate stay bounded for any number of items
        (``items`` may be a lazy iterable or an async iterable). A failing item (missing file,
        upload refused, analysis Failed or timed out) is reported in its result; it never stops
        the others.

        Args:
            items: Paths, or VideoSpec for per-video metadata.
            upload_concurrency: How many uploads run at once.
            wait: Await each analysis (True) or yield as soon as each upload is done.
            journal: A SQLite file recording progress. Rerunning the same batch with it skips
                finished items, resumes waiting for uploaded ones and uploads only the rest: a
                video is never uploaded twice, even after a crash. Items are claimed in it
                before their video is created, so batches sharing it (or one batch listing a
                file twice) upload each file once and report the same video. An item is the
                file's path, metadata, size and modification time: a changed file is
                uploaded again.
            progress: Called with the BatchProgress counters whenever they change.
            timeout: Seconds to wait for each video's analysis after its upload.
            poll_rate: The most Get Analysis requests per second the batch makes.
            max_in_flight: The most items between being read from ``items`` and being
                reported (uploading or awaiting analysis); bounds memory for any input.
            count_ahead: Read ``items`` a second time, on a worker thread ahead of the
                uploads, so ``BatchProgress.total`` and ``bytes_to_send`` are known early.
                None (the default) counts an in-memory collection (a list, tuple or set) and
                nothing else; True counts any iterable whose every ``iter()`` is a fresh
                reading of the same items, such as a folder listing (not an iterator: that
                is a TypeError); False never counts.
            domain: The default domain of items that do not set one.
            activity: The default activity of items that do not set one.
            rep_count: The default rep count of items that do not set one.
            source: The default source of items that do not set one.

        Returns:
            A BatchUpload: an async iterator of BatchResult, and an async context manager.

        Raises:
            JournalError: The journal cannot be opened (raised before anything is created), or
                cannot be written during the batch (the batch stops; rerun it to resume).
        """
        run = BatchRun(
            self._client,
            items,
            upload_concurrency=upload_concurrency,
            wait=wait,
            journal=journal,
            progress=progress,
            timeout=timeout,
            poll_policy=self.poll_policy,
            poll_rate=poll_rate,
            max_in_flight=max_in_flight,
            count_ahead=count_ahead,
            defaults={
                "domain": domain,
                "activity": activity,
                "rep_count": rep_count,
                "source": source,
            },
        )
        return BatchUpload(run)


def client_of(session: GuruSession) -> Client:
    """The session's internal client, for the SDK's own layers above it (a fleet worker
    uploads through the same transport, hooks and limiter as the session's calls)."""
    return session._client


def _retry_policy(policy: RetryPolicy | None, max_retries: int | None) -> RetryPolicy:
    policy = policy if policy is not None else RetryPolicy()
    if max_retries is None:
        return policy
    return attrs.evolve(policy, max_retries=max_retries)


def _video_id_from(video_id: str) -> Callable[[Response], str]:
    # The API documents "the ID of the video" as the response; accept {"id": ...} or a string.
    def decode(resp: Response) -> str:
        if not resp.body.strip():
            return video_id
        data = decode_json(resp.body, what=f"Update video {video_id}", status=resp.status)
        if isinstance(data, dict) and isinstance(data.get("id"), str):
            return str(data["id"])
        if isinstance(data, str):
            return data
        raise ResponseDecodeError(
            f"Update video {video_id}: expected the video's id, got {str(data)[:80]!r}",
            status=resp.status,
            body=str(data)[:200],
        )

    return decode
