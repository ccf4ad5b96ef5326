"""The fault pipeline: which requests a :class:`FaultRule` matches, and how each kind of fault
is injected into a request (before it is handled) or into its response (after)."""

from __future__ import annotations

import asyncio
import collections
import random
from collections.abc import Awaitable, Callable
from typing import Literal

from aiohttp import hdrs, web
from attrs import field, frozen, validators

from guru_async import _routes as routes

FaultKind = Literal["status", "delay", "drop", "truncate", "malformed"]
FAULT_KINDS: tuple[FaultKind, ...] = ("status", "delay", "drop", "truncate", "malformed")

# The SDK's own route templates: what its hooks and traces report is what the emulator counts.
TOKEN_ROUTE = routes.TOKEN
CREATE_ROUTE = routes.CREATE_VIDEO
GET_VIDEO_ROUTE = routes.GET_VIDEO
UPDATE_ROUTE = routes.UPDATE_VIDEO
ANALYSIS_ROUTE = routes.GET_ANALYSIS
J2P_ROUTE = routes.GET_JOINT_DATA
UPLOAD_ROUTE = routes.UPLOAD
DOWNLOAD_ROUTE = routes.DOWNLOAD

ErrorFormat = Callable[[int, str, dict[str, str] | None], web.Response]
"""Renders an error in one server's format: ``(status, message, headers) -> response``."""


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
        delay: Seconds to sleep for ``"delay"`` faults, and before a ``"drop"`` hangs up (so a
            client is cut off mid-body after it has been sending for a while).
        times: If set, the rule fires at most this many times.
    """

    route: str
    rate: float = field(default=1.0, validator=_check_rate)
    kind: FaultKind = field(default="status", validator=validators.in_(FAULT_KINDS))
    status: int = 503
    retry_after: float | None = None
    delay: float = 0.0
    times: int | None = None


ROUTES: tuple[str, ...] = (
    TOKEN_ROUTE,
    CREATE_ROUTE,
    GET_VIDEO_ROUTE,
    UPDATE_ROUTE,
    ANALYSIS_ROUTE,
    J2P_ROUTE,
    UPLOAD_ROUTE,
    DOWNLOAD_ROUTE,
)
"""Every route a rule can name (or ``"*"`` for all)."""

# The options a rule's text may give, and how each is read: FaultRule's own keywords.
_FAULT_OPTIONS: dict[str, Callable[[str], object]] = {
    "rate": float,
    "kind": str,
    "status": int,
    "retry_after": float,
    "delay": float,
    "times": int,
}


def parse_fault(text: str) -> FaultRule:
    """Read a FaultRule from ``ROUTE[:KEY=VALUE]...``, as ``--fault`` takes it.

    For example ``"POST /storage:rate=0.5:status=503"`` or
    ``"GET /videos/{id}/analysis:kind=drop:rate=0.1"``; the keys are FaultRule's (``rate``,
    ``kind``, ``status``, ``retry_after`` or ``retry-after``, ``delay``, ``times``) and the
    route is one of ``ROUTES`` or ``*``.

    Raises:
        ValueError: An unknown route or key, a value that is not a number where one belongs,
            or one FaultRule refuses (a rate outside 0..1, an unknown kind); the message
            names what is accepted.
    """
    route, *options = text.split(":")
    route = " ".join(route.split())
    if route != "*" and route not in ROUTES:
        raise ValueError(
            f"unknown route {route!r} in fault {text!r}; routes: * or {', '.join(ROUTES)}"
        )
    given: dict[str, object] = {}
    for option in options:
        key, sep, value = option.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in _FAULT_OPTIONS:
            raise ValueError(
                f"bad option {option!r} in fault {text!r}; expected KEY=VALUE with KEY one of "
                f"{', '.join(_FAULT_OPTIONS)}"
            )
        read = _FAULT_OPTIONS[key]
        try:
            given[key] = read(value.strip())
        except ValueError:
            expected = "a whole number" if read is int else "a number"
            raise ValueError(
                f"bad value {value!r} for {key} in fault {text!r}: expected {expected}"
            ) from None
    kind = given.get("kind", "status")
    if kind not in FAULT_KINDS:
        raise ValueError(
            f"bad fault {text!r}: kind must be one of {', '.join(FAULT_KINDS)}, got {kind!r}"
        )
    try:
        return FaultRule(route=route, **given)  # type: ignore[arg-type]
    except ValueError as exc:
        reason = str(exc)
    raise ValueError(f"bad fault {text!r}: {reason}")


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


async def inject(
    request: web.Request,
    rule: FaultRule,
    error: ErrorFormat,
    before_drop: Callable[[web.Request], Awaitable[None]] | None = None,
) -> web.StreamResponse | None:
    """Apply a fault that acts before normal handling; None lets handling go ahead.

    Args:
        request: The request the fault was drawn for.
        rule: The fault.
        error: Renders a ``"status"`` fault in the server's error format.
        before_drop: Called before a ``"drop"`` hangs up, e.g. to take in part of an upload.
    """
    if rule.kind == "status":
        headers: dict[str, str] | None = None
        if rule.retry_after is not None:
            headers = {hdrs.RETRY_AFTER: _seconds(rule.retry_after)}
        return error(rule.status, "Injected fault", headers)
    if rule.kind == "delay":
        await asyncio.sleep(rule.delay)
        return None
    if rule.kind == "malformed":
        return web.Response(text="<html>502 Bad Gateway</html>", content_type="text/html")
    if rule.kind == "drop":
        if before_drop is not None:
            await before_drop(request)
        if rule.delay:
            await asyncio.sleep(rule.delay)
        disconnect(request)
        # Writing this to the closed transport fails quietly inside aiohttp.
        return web.Response()
    return None


async def truncate(
    request: web.Request, rule: FaultRule | None, response: web.StreamResponse
) -> web.StreamResponse:
    """Apply a truncate fault to a complete in-memory response; others pass unchanged."""
    if rule is None or rule.kind != "truncate" or not isinstance(response, web.Response):
        return response
    body = response.body
    if not isinstance(body, bytes) or not body:
        return response
    headers = {k: v for k, v in response.headers.items() if k != hdrs.CONTENT_LENGTH}
    return await send_truncated(request, response.status, headers, body)


async def send_truncated(
    request: web.Request, status: int, headers: dict[str, str], body: bytes
) -> web.StreamResponse:
    """Announce the full body's length, send half of it, and hang up."""
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[: len(body) // 2])
    disconnect(request)
    return response


def disconnect(request: web.Request) -> None:
    """Close the request's connection without answering."""
    transport = request.transport
    if transport is not None:
        transport.close()


def _seconds(value: float) -> str:
    """Whole seconds without a decimal point, as a real server writes Retry-After."""
    return str(int(value) if float(value).is_integer() else value)
