"""A failed token fetch: how long it is remembered, whether other processes share it, and how a
shared store keeps it and hands it back.

One rule serves both places a failure is remembered: a ``TokenProvider`` remembers it for the
callers of its process, and a shared store (``FileTokenStore``, ``RedisTokenStore``) keeps it
for every process, each for ``memory_of(error)`` seconds. Only the token endpoint's own answers
are shared (an ``APIError``: rejected credentials, 429, 5xx, ...): every process with the same
credentials would get the same answer. A failure to reach the endpoint (``GuruConnectionError``:
DNS, a refused or reset connection, a timeout) or to read its answer (``ResponseDecodeError``,
often a proxy's page) may belong to one machine's network: it is remembered in that process
only, and the other processes still ask.
"""

from __future__ import annotations

import time
import weakref
from typing import Any

from ._errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    GuruError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    SessionClosedError,
)

FAILED_FETCH_MEMORY = 1.0
"""Seconds a failed token fetch is remembered and shared: every call that needs a token in
that time gets the same error at once instead of asking the token endpoint again. A failure
that carried ``Retry-After`` is remembered that long instead (at most
``MAX_FAILED_FETCH_MEMORY``)."""

MAX_FAILED_FETCH_MEMORY = 60.0

# The errors a store may hand back, by name: a record naming anything else is ignored.
_SHAREABLE: dict[str, type[APIError]] = {
    cls.__name__: cls
    for cls in (
        APIError,
        AuthenticationError,
        BadRequestError,
        NotFoundError,
        PermissionDeniedError,
        RateLimitError,
        ServerError,
    )
}

# Errors rebuilt from a store, with the time.monotonic() their memory ends: they are remembered
# in the process exactly as long as the store still holds them, not a fresh full period.
_REBUILT: weakref.WeakKeyDictionary[BaseException, float] = weakref.WeakKeyDictionary()


def memory_of(error: BaseException) -> float | None:
    """Seconds to remember ``error`` from a token fetch, or None when it is not remembered at
    all (a closed session, a cancellation, a bug)."""
    if not isinstance(error, GuruError) or isinstance(error, SessionClosedError):
        return None
    until = _REBUILT.get(error)
    if until is not None:
        return max(0.0, until - time.monotonic())
    memory = FAILED_FETCH_MEMORY
    wait = getattr(error, "retry_after", None)
    if isinstance(wait, (int, float)) and not isinstance(wait, bool):
        memory = min(max(float(wait), memory), MAX_FAILED_FETCH_MEMORY)
    return memory


def shared_record(error: BaseException) -> tuple[dict[str, Any], float] | None:
    """What a shared store keeps of ``error`` and for how many seconds, or None when the
    failure must not be shared with other processes (see the module's docstring)."""
    if not isinstance(error, APIError) or _SHAREABLE.get(type(error).__name__) is not type(error):
        return None
    if error in _REBUILT:
        return None  # read from the store: it is there already
    memory = memory_of(error)
    if not memory:
        return None
    body = error.body
    if not isinstance(body, (dict, str)):
        body = None  # the token endpoint's OAuth fields, or a short text: nothing else
    record = {
        "type": type(error).__name__,
        "status": error.status,
        "message": str(error),
        "body": body,
        "retry_after": error.retry_after is not None,
    }
    return record, memory


def rebuilt(record: object, remaining: float) -> APIError | None:
    """The error a store kept (``record``), with ``remaining`` seconds of its memory left; None
    for a record this version cannot read (it is then ignored, as if absent)."""
    if not isinstance(record, dict) or remaining <= 0:
        return None
    cls = _SHAREABLE.get(str(record.get("type")))
    status, message = record.get("status"), record.get("message")
    if cls is None or not isinstance(status, int) or not isinstance(message, str):
        return None
    remaining = min(remaining, MAX_FAILED_FETCH_MEMORY)
    error = cls(
        f"{message} (the token endpoint's answer to an earlier request, kept in the token store; "
        f"it is asked again in {remaining:.1f} s)",
        status=status,
        body=record.get("body"),
        retry_after=remaining if record.get("retry_after") else None,
    )
    _REBUILT[error] = time.monotonic() + remaining
    return error
