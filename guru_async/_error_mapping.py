"""Every mapping from a response or a failure to the exception the SDK raises.

The classes are in ``_errors.py``, at the bottom of the package (every module raises them);
the mappings are here, a layer up, because reading an error body needs the JSON decoder and a
``Retry-After`` header the retry policy's parser:

- an API error status and body → ``APIError`` subclass (``api_error``, ``error_for_status``),
  and the token endpoint's → ``AuthenticationError`` (``token_error``);
- a storage error (S3-style XML) → ``UploadError`` on an upload (``storage_error``), the
  ``APIError`` of its status on a download (``download_error``);
- a source URL's error status → ``SourceError`` (``source_status_error``);
- what aiohttp raises during an attempt (connection errors, timeouts, a failure of our own
  body) → ``GuruConnectionError``, ``SessionClosedError`` or the body's own error
  (``attempt_failure``), and a stalled upload (``stalled_error``);
- an analysis that did not finish in time → ``AnalysisTimeoutError`` (``analysis_timeout``).

Every message here is free of secrets: URL queries (presigned signatures) are redacted, and the
token endpoint's body is cut down to OAuth's error fields.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from multidict import CIMultiDictProxy

from ._converter import decode_json
from ._errors import (
    AnalysisTimeoutError,
    APIError,
    AuthenticationError,
    BadRequestError,
    BodyAbort,
    GuruConnectionError,
    GuruError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ResponseDecodeError,
    ServerError,
    SessionClosedError,
    SourceError,
    UploadError,
    preview,
    redact,
)
from ._models import Analysis
from ._retry import parse_retry_after

# -- error responses -------------------------------------------------------------------------


def json_error_body(raw: bytes) -> Any:
    """An error body as JSON when it is JSON, else as (short) text."""
    if not raw:
        return ""
    try:
        return decode_json(raw, what="error body")
    except ResponseDecodeError:
        return preview(raw.decode("utf-8", "replace"), 1000)


def error_for_status(
    status: int, body: Any, *, context: str, retry_after: float | None
) -> APIError:
    """Map an HTTP error status to its APIError subclass, with a message that helps."""
    detail = body.get("message") if isinstance(body, dict) else None
    if not isinstance(detail, str):
        detail = preview(body) if body not in (None, "") else "no details in the response"
    message = f"{context} failed with HTTP {status}: {detail}"
    cls: type[APIError]
    if status == 429:
        cls = RateLimitError
    elif status in (400, 422):
        cls = BadRequestError
    elif status == 401:
        cls = AuthenticationError
    elif status == 403:
        cls = PermissionDeniedError
    elif status == 404:
        cls = NotFoundError
    elif status >= 500:
        cls = ServerError
    else:
        cls = APIError
    return cls(message, status=status, body=body, retry_after=retry_after)


def api_error(status: int, headers: CIMultiDictProxy[str], raw: bytes, *, what: str) -> APIError:
    """Map the API's answer to a request (``what``) with an error status to its APIError."""
    return error_for_status(
        status,
        json_error_body(raw),
        context=what,
        retry_after=parse_retry_after(headers.get("Retry-After")),
    )


def token_error(status: int, headers: CIMultiDictProxy[str], raw: bytes) -> GuruError:
    """Map the token endpoint's error: rejected credentials are an AuthenticationError that
    says which settings to check; anything else is the APIError of its status."""
    body = json_error_body(raw)
    if isinstance(body, dict):
        # Keep only OAuth's error fields: never echo anything else a token endpoint sent.
        body = {k: v for k, v in body.items() if k in ("error", "error_description", "message")}
    if status in (400, 401, 403):
        code = body.get("error") if isinstance(body, dict) else None
        return AuthenticationError(
            f"the token endpoint rejected the client credentials (HTTP {status}"
            f"{': ' + str(code) if code else ''}); check GURU_CLIENT_ID and GURU_CLIENT_SECRET",
            status=status,
            body=body,
        )
    return error_for_status(
        status,
        body,
        context="Token request",
        retry_after=parse_retry_after(headers.get("Retry-After")),
    )


_XML_TAG = {name: re.compile(rf"<{name}>([^<]*)</{name}>".encode()) for name in ("Code", "Message")}


def _storage_code(status: int, raw: bytes) -> tuple[str, str]:
    code_match = _XML_TAG["Code"].search(raw)
    message_match = _XML_TAG["Message"].search(raw)
    code = code_match.group(1).decode("utf-8", "replace") if code_match else f"HTTP{status}"
    detail = message_match.group(1).decode("utf-8", "replace")[:300] if message_match else ""
    return code, detail


def download_error(
    status: int, headers: CIMultiDictProxy[str], raw: bytes, *, what: str
) -> APIError:
    """Map a storage error on a download (S3-style XML) to the APIError of its status."""
    code, detail = _storage_code(status, raw)
    return error_for_status(
        status,
        {"message": f"{code}: {detail}" if detail else code, "code": code},
        context=what,
        retry_after=parse_retry_after(headers.get("Retry-After")),
    )


def storage_error(
    status: int, headers: CIMultiDictProxy[str], raw: bytes, *, what: str
) -> UploadError:
    """Map a storage error response to an upload (an S3-style XML body) to UploadError."""
    code, detail = _storage_code(status, raw)
    message = f"{what}: storage refused the upload with HTTP {status} {code}"
    if detail:
        message += f": {detail}"
    return UploadError(
        message,
        status=status,
        code=code,
        retry_after=parse_retry_after(headers.get("Retry-After")),
    )


def source_status_error(status: int, reason: str | None, *, url: str) -> SourceError:
    """Map a source URL's error status to SourceError (``url`` already without its query)."""
    return SourceError(
        f"the source {url} answered HTTP {status}" + (f" {reason}" if reason else ""),
        status=status,
        url=url,
    )


# -- failures without a response -------------------------------------------------------------


def describe_network_error(exc: BaseException) -> str:
    """A one-line, secret-free description of a network failure."""
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    detail = redact(str(exc))
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def attempt_failure(exc: BaseException, *, what: str, closed: bool) -> BaseException:
    """What an attempt ended by aiohttp with ``exc`` (a ClientError, a timeout, an OSError)
    raises: our own body's error as it is (a file that changed size), the caller's code's
    error unwrapped (a progress callback that failed), SessionClosedError when the session was
    closed meanwhile, else GuruConnectionError."""
    cause = exc.__cause__
    if isinstance(cause, GuruError):
        # Raised by our own body (a file that changed size) and wrapped by aiohttp.
        return cause
    if isinstance(cause, BodyAbort):
        # The caller's code failed while aiohttp pulled the body: the caller's error, raised
        # as it was, never retried.
        return cause.error
    if closed:
        return SessionClosedError(f"{what}: the GuruSession was closed")
    return GuruConnectionError(f"{what}: {describe_network_error(exc)}")


def stalled_error(what: str, limit: float) -> GuruConnectionError:
    """An upload whose peer took no bytes for ``limit`` seconds."""
    return GuruConnectionError(
        f"{what}: stalled: the storage host accepted no bytes for {limit:g} s"
    )


def analysis_timeout(
    video_id: str,
    *,
    timeout: float,
    last: Analysis | None,
    failing: str = "",
    resume: str = "",
) -> AnalysisTimeoutError:
    """The one message of an analysis that did not finish within ``timeout`` seconds.

    Args:
        video_id: The video awaited.
        timeout: The seconds waited.
        last: The last Analysis seen, or None if no poll succeeded.
        failing: What the latest polls' failures were, when they failed (e.g. ``"; the
            latest poll failed: ..."``).
        resume: How to keep waiting; defaults to awaiting the video again.
    """
    status = last.status if last is not None else "unknown (no poll succeeded)"
    how = resume or f"await_analysis({video_id!r}) again to keep waiting"
    return AnalysisTimeoutError(
        f"analysis of video {video_id} not finished after {timeout:g} s (last status: "
        f"{status}{failing}); the video is safe: {how}",
        video_id=video_id,
        last=last,
    )
