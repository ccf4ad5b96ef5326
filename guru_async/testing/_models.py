"""Records the emulator exposes to tests: its videos and the requests it received."""

from __future__ import annotations

import time
from typing import Any

from attrs import Factory, define

from guru_async._enums import ACTIVITY_DOMAINS, Activity, AnalysisStatus, Domain, VideoStatus


@define
class EmulatedVideo:
    """The emulator's state for one created video.

    Attributes:
        id: The video id returned by Create Video.
        filename: The filename given at creation.
        size: The size in bytes promised at creation (the upload must match it).
        domain: The domain given at creation or by an update, else None.
        activity: The activity given at creation or by an update, else None.
        rep_count: The ``repCount`` given at creation or by an update, else None.
        source: The ``source`` given at creation, else None.
        fields: The presigned POST fields issued for the upload, in issue order.
        uploaded_at: ``time.monotonic()`` of the last successful upload, else None.
        analysis_ready_at: ``time.monotonic()`` at which analysis finishes, else None.
        stored_size: Bytes stored by the last successful upload, else None.
        content_sha256: Hex SHA-256 of the stored content, else None.
        analyzable: False when the stored content is one the emulator refuses to analyse.
    """

    id: str
    filename: str
    size: int
    domain: Domain | None = None
    activity: Activity | None = None
    rep_count: int | None = None
    source: str | None = None
    fields: dict[str, str] = Factory(dict)
    uploaded_at: float | None = None
    analysis_ready_at: float | None = None
    stored_size: int | None = None
    content_sha256: str | None = None
    analyzable: bool = True

    @property
    def status(self) -> VideoStatus:
        """Pending until an upload succeeds, then Success."""
        return VideoStatus.PENDING if self.uploaded_at is None else VideoStatus.SUCCESS

    @property
    def effective_domain(self) -> Domain | None:
        """The domain reported by analysis: the given one, else derived from the activity."""
        if self.domain is not None:
            return self.domain
        return None if self.activity is None else ACTIVITY_DOMAINS[self.activity]

    def analysis_status(self, now: float | None = None) -> AnalysisStatus:
        """Where analysis stands at monotonic time ``now`` (default: the current time)."""
        if self.analysis_ready_at is None:
            return AnalysisStatus.PENDING
        if (time.monotonic() if now is None else now) < self.analysis_ready_at:
            return AnalysisStatus.PENDING
        return AnalysisStatus.COMPLETE if self.analyzable else AnalysisStatus.FAILED


@define
class RecordedRequest:
    """One request as the emulator received it.

    Attributes:
        route: The route name, e.g. ``"POST /videos"`` (``"METHOD /path"`` for unknown paths).
        method: The HTTP method.
        path: The request path.
        query: The raw query string.
        headers: A plain copy of the request headers.
        json: The parsed JSON body for the API's JSON routes, else None.
        part_names: For storage uploads, the multipart part names in the order received.
        received_at: When the request arrived, on the emulator's ``time.monotonic()`` clock
            (one clock for every process of the machine).
    """

    route: str
    method: str
    path: str
    query: str
    headers: dict[str, str]
    json: Any | None = None
    part_names: list[str] = Factory(list)
    received_at: float = Factory(time.monotonic)
