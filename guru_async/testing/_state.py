"""What one emulator knows: its credentials and settings, the videos, the valid tokens, and the
requests it received with the counters tests read. Both servers' handlers share one state."""

from __future__ import annotations

import collections
import contextvars
import json
import random
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from attrs import frozen

from guru_async import _routes as routes
from guru_async.testing import _storage
from guru_async.testing._faults import FaultRule, Faults
from guru_async.testing._models import EmulatedVideo, RecordedRequest

DEFAULT_CLIENT_ID = "emulator-client"
DEFAULT_CLIENT_SECRET = "emulator-secret"  # noqa: S105 - a fixed, public test credential
SCOPE = "https://api.getguru.fitness/default"

AnalysisDelay = float | Callable[[EmulatedVideo], float]

_JSON_BODY_ROUTES = frozenset({routes.CREATE_VIDEO, routes.UPDATE_VIDEO})
# Context variables rather than request storage: they are typed and work on every aiohttp 3.x.
_RECORD: contextvars.ContextVar[RecordedRequest] = contextvars.ContextVar("guru_record")
_FAULT: contextvars.ContextVar[FaultRule | None] = contextvars.ContextVar("guru_fault")


def current_record() -> RecordedRequest:
    """The record of the request being handled."""
    return _RECORD.get()


def current_fault() -> FaultRule | None:
    """The fault drawn for the request being handled, if any."""
    return _FAULT.get()


@frozen
class Settings:
    """The emulator's tuning, fixed when it is constructed (see ``GuruEmulator``)."""

    analysis_delay: AnalysisDelay
    token_lifetime: float
    presign_lifetime: float
    video_seconds: float
    fps: float
    seed: int
    storage_bandwidth: float | None
    analysis_seconds_per_mb: float = 0.0
    analysis_spread: float = 0.0


class EmulatorState:
    """Everything the handlers read and change; ``GuruEmulator`` shows its public part."""

    def __init__(self, client_id: str, client_secret: str, settings: Settings) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.scope = SCOPE
        self.settings = settings
        self.signer = _storage.Signer()
        self.tokens: dict[str, float] = {}
        self.urls: dict[str, str] = {}
        self.storage_dir: Path | None = None

        self.videos: dict[str, EmulatedVideo] = {}
        self.recorded: collections.deque[RecordedRequest] = collections.deque(maxlen=10_000)
        self.requests: collections.Counter[str] = collections.Counter()
        self.token_requests = 0
        self.upload_attempts: collections.Counter[str] = collections.Counter()
        self.uploads_completed: collections.Counter[str] = collections.Counter()
        self.faults = Faults(settings.seed)
        # Its own stream, so the analyses' noise does not shift the faults drawn.
        self.analysis_noise = random.Random(f"analysis:{settings.seed}")

    def analysis_seconds(self, video: EmulatedVideo) -> float:
        """How long the analysis of ``video`` (just uploaded) takes: the analysis delay, plus
        the per-MB time of its stored bytes, scaled by a seeded draw from the spread."""
        settings = self.settings
        delay = settings.analysis_delay
        seconds = delay(video) if callable(delay) else delay
        seconds += settings.analysis_seconds_per_mb * (video.stored_size or 0) / 1_000_000
        if settings.analysis_spread:
            spread = settings.analysis_spread
            seconds *= self.analysis_noise.uniform(1 - spread, 1 + spread)
        return seconds

    def url(self, which: str) -> str:
        """The base URL of the ``"api"`` or the ``"storage"`` server."""
        try:
            return self.urls[which]
        except KeyError:
            raise RuntimeError("the emulator is not running; use 'async with'") from None

    # -- tokens ---------------------------------------------------------------------------------

    def issue_token(self) -> str:
        """A new access token, valid for the token lifetime."""
        token = secrets.token_urlsafe(32)
        self.tokens[token] = time.monotonic() + self.settings.token_lifetime
        return token

    def token_is_valid(self, token: str) -> bool:
        """Whether ``token`` was issued, not revoked, and has not expired."""
        expires_at = self.tokens.get(token)
        return expires_at is not None and expires_at > time.monotonic()

    # -- requests and counters ------------------------------------------------------------------

    async def receive(self, request: web.Request, route: str) -> FaultRule | None:
        """Record and count a request, then draw its fault; both stay current while it is
        handled (see :func:`current_record` and :func:`current_fault`)."""
        body: Any | None = None
        if route in _JSON_BODY_ROUTES:
            # The one parse of a JSON body: the route's handler reads it from the record.
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

    def reset_counters(self) -> None:
        """Zero the request, token and upload counters."""
        self.requests.clear()
        self.token_requests = 0
        self.upload_attempts.clear()
        self.uploads_completed.clear()

    def stats(self) -> dict[str, Any]:
        """The counters: token requests, requests and faults fired per route, uploads per
        video id."""
        return {
            "token_requests": self.token_requests,
            "requests": dict(self.requests),
            "faults_fired": dict(self.faults.fired),
            "upload_attempts": dict(self.upload_attempts),
            "uploads_completed": dict(self.uploads_completed),
            "videos": len(self.videos),
        }

    def stored_path(self, video_id: str) -> Path:
        """Where the content uploaded for ``video_id`` is (or would be) stored."""
        if self.storage_dir is None:
            raise RuntimeError("the emulator is not running; use 'async with'")
        return self.storage_dir / video_id
