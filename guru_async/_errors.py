"""Every error the SDK raises on purpose.

The tree::

    GuruError
    ├── APIError                  the API answered with an error status (.status, .body)
    │   ├── BadRequestError       400, 422: the request was malformed or invalid
    │   ├── AuthenticationError   401, and credentials the token endpoint rejects
    │   ├── PermissionDeniedError 403
    │   ├── NotFoundError         404: no video with that id
    │   ├── RateLimitError        429 (.retry_after)
    │   └── ServerError           5xx
    ├── UploadError               the storage host refused an upload (.status, .code)
    ├── SourceError               an upload's source (a URL or a stream) failed (.status, .url)
    ├── AnalysisTimeoutError      await_analysis gave up waiting (also a TimeoutError)
    ├── ResponseDecodeError       a body that is not the JSON the API documents
    ├── GuruConnectionError       the network failed, after retries
    ├── SessionClosedError        the session was used after it was closed
    └── JournalError              a batch's journal cannot be opened, read or written (.path)

Bad arguments raise the built-in ``ValueError``, ``TypeError``, ``FileNotFoundError`` or
``IsADirectoryError`` before anything is sent.

This module holds the classes only; how a response or a failure becomes one of them is in
``_error_mapping.py``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._models import Analysis

# URLs inside library messages can carry presigned signatures in their query: drop queries.
_URL_QUERY = re.compile(r"(https?://[^\s?#'\"]+)\?[^\s'\"]*")

# A server body goes into messages for context; a huge HTML page must not flood a log line.
_BODY_PREVIEW = 300


def preview(body: Any, limit: int = _BODY_PREVIEW) -> str:
    """The start of a body (text as is, anything else as its repr), for messages."""
    text = body if isinstance(body, str) else repr(body)
    return text if len(text) <= limit else text[:limit] + "…"


def redact(text: str) -> str:
    """Remove query strings (presigned signatures) from any URL in ``text``."""
    return _URL_QUERY.sub(r"\1?…", text)


class GuruError(Exception):
    """Base class of every error raised by guru_async."""

    def __reduce__(self) -> tuple[Any, ...]:
        # The default pickling calls cls(*args), which a keyword-only __init__ refuses: errors
        # must cross process boundaries (multiprocessing pools, fleet workers) intact.
        return (_rebuild, (type(self), str(self), self.__dict__))


class APIError(GuruError):
    """The Guru API answered with an error status.

    Attributes:
        status: The HTTP status code.
        body: The decoded JSON body when it was JSON, else the text (possibly empty).
        retry_after: Seconds the server asked to wait before retrying (``Retry-After``), or
            None when it did not say.
    """

    def __init__(
        self, message: str, *, status: int, body: Any = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = body
        self.retry_after = retry_after


class BadRequestError(APIError):
    """400 or 422: the API rejected the request's content."""


class AuthenticationError(APIError):
    """401, or the token endpoint rejected the client credentials."""


class PermissionDeniedError(APIError):
    """403: the credentials are valid but not allowed to do this."""


class NotFoundError(APIError):
    """404: there is no such video (or it belongs to another account)."""


class RateLimitError(APIError):
    """429: too many requests; ``retry_after`` says how long the server asked to wait."""


class ServerError(APIError):
    """5xx: the service failed; retried automatically before this is raised."""


class UploadError(GuruError):
    """The storage host refused an upload.

    Attributes:
        status: The HTTP status from storage, or None when the upload failed on this side
            (for example a file that changed size while it was being sent).
        code: The storage error code, such as ``AccessDenied``, ``EntityTooLarge`` or
            ``PolicyExpired`` (the presigned policy ran out before the upload started).
        retry_after: Seconds storage asked to wait (``SlowDown``), or None.
    """

    def __init__(
        self, message: str, *, status: int | None, code: str, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.retry_after = retry_after


class SourceError(GuruError):
    """An upload's source failed: a source URL answered an error or sent the wrong number of
    bytes, or a stream delivered more or fewer bytes than its declared size.

    Never retried as a Guru error: the source, not the service, is at fault.

    Attributes:
        status: The source URL's HTTP status when it answered with an error, else None.
        url: The source URL without its query (which may hold a signature), or None for a
            stream.
    """

    def __init__(self, message: str, *, status: int | None = None, url: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.url = url


class AnalysisTimeoutError(GuruError, TimeoutError):
    """``await_analysis`` stopped waiting before the analysis finished.

    The video is not lost: await it again later with its id.

    Attributes:
        video_id: The video that was being awaited.
        last: The last Analysis seen (status Pending), or None if no poll succeeded.
    """

    def __init__(self, message: str, *, video_id: str, last: Analysis | None) -> None:
        super().__init__(message)
        self.video_id = video_id
        self.last = last


class ResponseDecodeError(GuruError):
    """A response body was not the JSON the API documents.

    Attributes:
        status: The HTTP status of the response.
        body: The start of the offending body, as text.
        not_json: True when the body was not JSON at all (cut short, or a proxy's error
            page): another attempt may read it, so such responses are retried. JSON of the
            wrong shape is not: the same request would get the same answer.
    """

    def __init__(
        self, message: str, *, status: int | None = None, body: str = "", not_json: bool = False
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = body
        self.not_json = not_json


class GuruConnectionError(GuruError):
    """The network failed (refused, reset, timed out) and retries did not help.

    Attributes:
        video_id: The video ``await_analysis`` was waiting for when it gave up because every
            poll kept failing (``PollPolicy.max_outage``); None for any other failure. The
            video is not lost: await it again once the API is reachable. The last failure is
            the ``__cause__``.
    """

    def __init__(self, message: str, *, video_id: str | None = None) -> None:
        super().__init__(message)
        self.video_id = video_id


class SessionClosedError(GuruError, RuntimeError):
    """A call was made on a GuruSession that is closed (or was closed while it ran)."""


class JournalError(GuruError):
    """A batch's journal cannot be opened, read or written.

    Raised before anything is created when the journal cannot be opened (a folder, a place
    that cannot be written, a file that is not a journal), and stops a running batch when a
    write fails (a full disk, say); rerun the batch with the same journal once it is fixed.

    Attributes:
        path: The journal's path, as given.
    """

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class BodyAbort(Exception):
    """Raised inside a request body or stream handler to end the attempt with ``error`` (an
    exception of the caller's own code, or a local file's OSError), which the transport then
    raises unchanged and never retries."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(repr(error))
        self.error = error


def _rebuild(cls: type[GuruError], message: str, state: dict[str, Any]) -> GuruError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error
