"""Records the emulator exposes to tests: videos, recorded requests and fault rules."""

from __future__ import annotations

import collections
import random
import time
from typing import Any, Literal

from attrs import Factory, define, field, frozen, validators

from guru_async._enums import ACTIVITY_DOMAINS, Activity, AnalysisStatus, Domain, VideoStatus

FaultKind = Literal["status", "delay", "drop", "truncate", "malformed"]
FAULT_KINDS: tuple[FaultKind, ...] = ("status", "delay", "drop", "truncate", "malformed")


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


def _check_rate(_: object, __: object, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"rate must be between 0 and 1, got {value!r}")


@frozen
class FaultRule:
    """A fault to inject into matching requests.

    Attributes:
        route: A route name such as ``"GET /videos/{id}/analysis"``, or ``"*"`` for every route
            (token and storage included).
        rate: The probability, 0 to 1, that a matching request gets the fault.
        kind: ``"status"`` (answer ``status`` in the route's error format), ``"delay"`` (sleep
            ``delay`` seconds, then answer normally), ``"drop"`` (close the connection without
            answering; uploads are dropped part-way through the body), ``"truncate"`` (announce
            the full Content-Length, send half the body, close) or ``"malformed"`` (200 with an
            HTML gateway page).
        status: The status code for ``"status"`` faults.
        retry_after: If set, the ``Retry-After`` header value for ``"status"`` faults.
        delay: Seconds to sleep for ``"delay"`` faults.
        times: If set, the rule fires at most this many times.
    """

    route: str
    rate: float = field(default=1.0, validator=_check_rate)
    kind: FaultKind = field(default="status", validator=validators.in_(FAULT_KINDS))
    status: int = 503
    retry_after: float | None = None
    delay: float = 0.0
    times: int | None = None


class Faults:
    """The emulator's fault rules, drawn from a seeded random generator.

    Attributes:
        fired: How many faults fired, per route name.
    """

    def __init__(self, seed: int) -> None:
        # A private generator keeps fault draws reproducible whatever else the emulator does.
        self._rng = random.Random(seed)
        self._rules: list[tuple[FaultRule, list[int]]] = []
        self.fired: collections.Counter[str] = collections.Counter()

    @property
    def rules(self) -> list[FaultRule]:
        """The active rules, in the order added."""
        return [rule for rule, _ in self._rules]

    def add(self, rule: FaultRule) -> None:
        """Add a rule; rules are tried in the order added and at most one fires per request."""
        self._rules.append((rule, [0]))

    def clear(self) -> None:
        """Remove every rule (the ``fired`` counts are kept)."""
        self._rules.clear()

    def draw(self, route: str) -> FaultRule | None:
        """Return the rule that fires for a request to ``route``, if any."""
        for rule, used in self._rules:
            if rule.route not in ("*", route):
                continue
            if rule.times is not None and used[0] >= rule.times:
                continue
            if self._rng.random() < rule.rate:
                used[0] += 1
                self.fired[route] += 1
                return rule
        return None
