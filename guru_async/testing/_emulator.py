"""The emulator's public face: two aiohttp servers (API + token, and storage) over one state.

What the emulator knows is in ``_state``, the API's routes in ``_api``, the storage routes in
``_storage_server`` (S3's rules in ``_storage``) and fault rules and injection in ``_faults``.
"""

from __future__ import annotations

import collections
import os
import tempfile
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from aiohttp import web

from guru_async.testing._api import ApiServer
from guru_async.testing._faults import Faults
from guru_async.testing._models import EmulatedVideo, RecordedRequest
from guru_async.testing._state import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    AnalysisDelay,
    EmulatorState,
    Settings,
)
from guru_async.testing._storage_server import StorageServer

if TYPE_CHECKING:
    from guru_async import GuruSession

_T = TypeVar("_T")


class _OnState(Generic[_T]):
    """A public attribute of :class:`GuruEmulator` that lives on the state its handlers share,
    read and assigned through the emulator as a plain attribute would be."""

    def __set_name__(self, owner: type[Any], name: str) -> None:
        self._name = name

    @overload
    def __get__(self, emulator: None, owner: type[Any]) -> _OnState[_T]: ...

    @overload
    def __get__(self, emulator: GuruEmulator, owner: type[Any]) -> _T: ...

    def __get__(self, emulator: GuruEmulator | None, owner: type[Any]) -> _OnState[_T] | _T:
        if emulator is None:
            return self
        value: _T = getattr(emulator._state, self._name)
        return value

    def __set__(self, emulator: GuruEmulator, value: _T) -> None:
        setattr(emulator._state, self._name, value)


class GuruEmulator:
    """A local emulator of the Guru API and its S3-style upload storage, over real sockets.

    The API (with the token endpoint) and storage listen on two ports, so storage is a different
    origin, as the real S3 host is. Use it as an async context manager::

        async with GuruEmulator(analysis_delay=0.2) as emu:
            ...  # point a client at emu.base_url / emu.token_url

    Attributes:
        client_id (str): The accepted client id.
        client_secret (str): The accepted client secret.
        scope (str): The only accepted OAuth scope.
        videos (dict[str, EmulatedVideo]): Every created video by id.
        recorded (collections.deque[RecordedRequest]): The most recent requests (at most
            10,000), oldest first.
        requests (collections.Counter[str]): Requests received per route name, including failed
            and faulted ones.
        token_requests (int): Requests received by the token endpoint.
        upload_attempts (collections.Counter[str]): Storage POSTs received per video id.
        uploads_completed (collections.Counter[str]): Successful uploads per video id.
        faults (Faults): The fault rules; see :class:`FaultRule`.
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
        analysis_seconds_per_mb: float = 0.0,
        analysis_spread: float = 0.0,
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
            analysis_seconds_per_mb: Seconds of analysis per MB (10**6 bytes) uploaded, added
                to ``analysis_delay``: an analysis that follows the video's size, as the real
                service's does (it processes every frame).
            analysis_spread: Each analysis's time is scaled by a factor drawn evenly from
                ``[1 - spread, 1 + spread]`` (seeded by ``seed``): 0.15 for +/- 15 %.

        Raises:
            ValueError: ``analysis_seconds_per_mb`` < 0 or ``analysis_spread`` not in [0, 1).
        """
        if not analysis_seconds_per_mb >= 0:
            raise ValueError(
                f"analysis_seconds_per_mb must be >= 0, got {analysis_seconds_per_mb!r}"
            )
        if not 0 <= analysis_spread < 1:
            raise ValueError(f"analysis_spread must be in [0, 1), got {analysis_spread!r}")
        self._state = EmulatorState(
            client_id,
            client_secret,
            Settings(
                analysis_delay=analysis_delay,
                token_lifetime=token_lifetime,
                presign_lifetime=presign_lifetime,
                video_seconds=video_seconds,
                fps=fps,
                seed=seed,
                storage_bandwidth=storage_bandwidth,
                analysis_seconds_per_mb=analysis_seconds_per_mb,
                analysis_spread=analysis_spread,
            ),
        )
        self._host = host
        self._port = port
        self._storage_port = storage_port
        self._storage_dir_arg = storage_dir
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        self._runners: list[web.AppRunner] = []
        self._api = ApiServer(self._state)
        self._storage = StorageServer(self._state)

    client_id = _OnState[str]()
    client_secret = _OnState[str]()
    scope = _OnState[str]()
    videos = _OnState[dict[str, EmulatedVideo]]()
    recorded = _OnState[collections.deque[RecordedRequest]]()
    requests = _OnState[collections.Counter[str]]()
    token_requests = _OnState[int]()
    upload_attempts = _OnState[collections.Counter[str]]()
    uploads_completed = _OnState[collections.Counter[str]]()
    faults = _OnState[Faults]()

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
            self._state.storage_dir = Path(self._tempdir.name)
        else:
            self._state.storage_dir = Path(self._storage_dir_arg)
            self._state.storage_dir.mkdir(parents=True, exist_ok=True)
        urls = self._state.urls
        try:
            urls["api"] = await self._serve(self._api.app(), self._port)
            urls["storage"] = await self._serve(self._storage.app(), self._storage_port)
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
        return self._state.url("api")

    @property
    def token_url(self) -> str:
        """The OAuth token endpoint on the API server."""
        return self._state.url("api") + "/oauth2/token"

    @property
    def storage_url(self) -> str:
        """The storage server's base URL (a different origin from the API)."""
        return self._state.url("storage")

    def session(self, **options: Any) -> GuruSession:
        """A GuruSession pointed at this emulator, with its own in-memory token store.

        Args:
            **options: Any other GuruSession option, e.g. ``poll_policy`` or ``max_retries``.
        """
        # Imported when called: the emulator's modules otherwise use only the SDK's small
        # _routes and _enums, so none of them depends on the session at import time.
        from guru_async import GuruSession, MemoryTokenStore

        settings: dict[str, Any] = {
            "base_url": self.base_url,
            "token_url": self.token_url,
            "token_store": MemoryTokenStore(),
        }
        settings.update(options)
        return GuruSession(self.client_id, self.client_secret, **settings)

    def issue_token(self) -> str:
        """Return a new valid access token without going through the token endpoint."""
        return self._state.issue_token()

    def expire_tokens(self) -> None:
        """Make every token issued so far invalid."""
        self._state.tokens.clear()

    def revoke_token(self, token: str) -> None:
        """Make one token invalid."""
        self._state.tokens.pop(token, None)

    def reset_counters(self) -> None:
        """Zero the request, token and upload counters."""
        self._state.reset_counters()

    def stats(self) -> dict[str, Any]:
        """The counters: token requests, requests per route, uploads per video id."""
        return self._state.stats()

    def stored_path(self, video_id: str) -> Path:
        """Where the content uploaded for ``video_id`` is (or would be) stored."""
        return self._state.stored_path(video_id)

    def read_stored(self, video_id: str) -> bytes | None:
        """The bytes storage holds for ``video_id`` now (the last complete upload), or None
        when nothing was stored for it, so a test can compare what arrived with its source.

        Args:
            video_id: A video id from Create Video.
        """
        try:
            return self._state.stored_path(video_id).read_bytes()
        except FileNotFoundError:
            return None
