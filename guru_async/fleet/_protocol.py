"""What the producer and the workers agree on: accounts, queue and key names, the job arguments,
and the result message a worker pushes back for each item.

Every key is namespaced by the account (``A``: 12 hex digits of the SHA-256 of the client id
and the API's base URL, see :func:`account_of`), so two accounts sharing one Redis never see
each other's items. ``Q`` is the fleet's queue name (default ``guru-fleet``); ``<item>`` is the
SHA-256 of an item's work as a worker sees it (account, path, size, ``mtime_ns``, fields).

    saq:Q.A:*, saq:job:Q.A:*      saq's upload queue (its lists, sets and job records; a
                                  finished job's record expires after min(retention, 1 h))
    saq:Q-poll.A:*, saq:job:Q-poll.A:*  saq's queue of videos waiting for their analysis
    saq:abort:<job key>           string: saq's abort marker, 5 s
    guru:fleet:A:Q:item:<item>    hash: one claimed item (state, video_id, url, fields,
                                  expires, analysis, fence); expires ``retention`` seconds
                                  after its last change
    guru:fleet:A:Q:lease:<item>   string: the random token of the item's lease holder;
                                  expires after the lease (the job's heartbeat) unless renewed
    guru:fleet:A:Q:fence:<item>   string: the item's fencing number (INCR per lease taken);
                                  expires ``retention`` seconds after the last lease taken
    guru:fleet:A:Q:results:<batch>  list: result messages for one producer's batch, and news
                                  of its items' progress (taken by a worker, bytes sent,
                                  uploaded); expires ``retention`` seconds after its last push
    guru:fleet:A:Q:producer:<batch>  string: the random token of the producer running a
                                  journaled batch (one at a time: BLPOP hands each result to
                                  one reader); expires ``heartbeat`` seconds after its last
                                  renewal
    guru:fleet:A:Q:durations      list: the latest 200 analysis durations, each "SECONDS WIDTH"
                                  (the estimate and the width of the interval it lies in),
                                  the learned poll schedule's data; expires ``retention``
                                  seconds after its last push
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from yarl import URL

from .._converter import decode_json, structure, to_json
from .._errors import (
    AnalysisTimeoutError,
    APIError,
    GuruError,
    ResponseDecodeError,
    SourceError,
    UploadError,
    _rebuild,
)
from .._models import Analysis


class FleetError(GuruError):
    """Base class of the fleet's own errors."""


class FleetItemError(FleetError):
    """An item failed on a worker with an error of a type this process does not know.

    Attributes:
        type_name: The name of the error's type on the worker.
    """

    def __init__(self, message: str, *, type_name: str) -> None:
        super().__init__(message)
        self.type_name = type_name


class FleetJobError(FleetError):
    """The fleet gave up on an item without a result: its job failed or was aborted in saq
    (every attempt's worker died, for instance). Rerun the batch with its journal to retry it.

    Attributes:
        status: saq's status of the job (``failed`` or ``aborted``).
    """

    def __init__(self, message: str, *, status: str) -> None:
        super().__init__(message)
        self.status = status


DEFAULT_QUEUE = "guru-fleet"
# Finished claims and undelivered results are kept this long: a rerun of a journaled batch
# within it restores finished items instead of uploading them again.
DEFAULT_RETENTION = 7 * 24 * 3600
UPLOAD_FUNCTION = "guru_fleet_upload"
POLL_FUNCTION = "guru_fleet_await"


def account_of(client_id: str, base_url: str) -> str:
    """The account a fleet's keys are namespaced by: a short hash of the client id and the
    API's base URL (two backends of one client id are two accounts)."""
    # As a session parses it (yarl lower-cases the host), without a trailing slash.
    root = str(URL(base_url)).rstrip("/")
    raw = f"{client_id}\n{root}".encode()
    return hashlib.sha256(raw).hexdigest()[:12]


def upload_queue_name(queue: str, account: str) -> str:
    """The name of the saq queue that holds an account's items to upload."""
    return f"{queue}.{account}"


def poll_queue_name(queue: str, account: str) -> str:
    """The name of the saq queue that holds an account's videos waiting for their analysis."""
    return f"{queue}-poll.{account}"


def item_record_key(account: str, queue: str, item_hash: str) -> str:
    return f"guru:fleet:{account}:{queue}:item:{item_hash}"


def lease_key(account: str, queue: str, item_hash: str) -> str:
    return f"guru:fleet:{account}:{queue}:lease:{item_hash}"


def fence_key(account: str, queue: str, item_hash: str) -> str:
    return f"guru:fleet:{account}:{queue}:fence:{item_hash}"


def results_key(account: str, queue: str, batch: str) -> str:
    return f"guru:fleet:{account}:{queue}:results:{batch}"


def producer_key(account: str, queue: str, batch: str) -> str:
    return f"guru:fleet:{account}:{queue}:producer:{batch}"


def durations_key(account: str, queue: str) -> str:
    return f"guru:fleet:{account}:{queue}:durations"


# -- result messages -------------------------------------------------------------------------


def encode_result(
    key: str,
    *,
    video_id: str | None,
    analysis: Analysis | str | None = None,
    error: BaseException | None = None,
    uploaded: bool = False,
    size: int | None = None,
    restored: bool = False,
) -> str:
    """One message about an item (its job key): its final result, or with ``uploaded`` the
    news that its content is stored (for the producer's progress counters)."""
    message: dict[str, Any] = {"key": key, "video_id": video_id}
    if uploaded:
        message["uploaded"] = True
        message["size"] = size
    if restored:
        # Uploaded by an earlier run (a rerun of the batch, another batch of the same file).
        message["restored"] = True
    if analysis is not None:
        message["analysis"] = analysis if isinstance(analysis, str) else to_json(analysis).decode()
    if error is not None:
        message["error"] = encode_error(error)
    return json.dumps(message, separators=(",", ":"))


def encode_news(key: str, *, size: int | None, sent: int | None = None) -> str:
    """News of an item's progress for the producer's display: without ``sent``, a worker
    took the item (``size``: the bytes it will send, when known); with it, the bytes of its
    upload sent so far. Pushed under the item's fence like results; the producer keeps the
    highest count, so a repeated or late message changes nothing."""
    message: dict[str, Any] = {"key": key, "news": "sent" if sent is not None else "started"}
    message["size"] = size
    if sent is not None:
        message["sent"] = sent
    return json.dumps(message, separators=(",", ":"))


def encode_error(error: BaseException) -> dict[str, Any]:
    """An error as its type name, message and the attributes a caller reads."""
    state: dict[str, Any] = {}
    for name in ("status", "code", "retry_after", "video_id", "not_json", "url"):
        value = getattr(error, name, None)
        if isinstance(value, (str, int, float, bool)):
            state[name] = value
    body = getattr(error, "body", None)
    if isinstance(body, (str, int, float, bool, dict, list)):
        state["body"] = body
    return {"type": type(error).__name__, "message": str(error), "state": state}


# The types a worker's error is rebuilt as on the producer, so ``except FileNotFoundError``
# and ``isinstance(r.error, UploadError)`` work the same as in a one-process batch.
_OS_ERRORS: dict[str, type[OSError]] = {
    cls.__name__: cls
    for cls in (
        OSError,
        FileNotFoundError,
        IsADirectoryError,
        NotADirectoryError,
        PermissionError,
        TimeoutError,
        ConnectionError,
    )
}
_VALUE_ERRORS: dict[str, type[Exception]] = {"ValueError": ValueError, "TypeError": TypeError}


def _guru_error_types() -> dict[str, type[GuruError]]:
    found: dict[str, type[GuruError]] = {}
    pending: list[type[GuruError]] = [GuruError]
    while pending:
        cls = pending.pop()
        found[cls.__name__] = cls
        pending.extend(cls.__subclasses__())
    return found


def decode_error(data: dict[str, Any]) -> BaseException:
    """Rebuild a worker's error as the same type where it is one of ours or a built-in."""
    name = str(data.get("type", "Exception"))
    message = str(data.get("message", ""))
    state = dict(data.get("state") or {})
    if name in _OS_ERRORS:
        # The message alone: it already names the file, and errno/filename set on an OSError
        # would rewrite its str() as "[Errno ...]".
        return _OS_ERRORS[name](message)
    if name in _VALUE_ERRORS:
        return _VALUE_ERRORS[name](message)
    guru_type = _guru_error_types().get(name)
    if guru_type is not None:
        defaults: dict[str, Any] = {}
        if issubclass(guru_type, APIError):
            defaults = {"status": 0, "body": None, "retry_after": None}
        elif issubclass(guru_type, UploadError):
            defaults = {"status": None, "code": "", "retry_after": None}
        elif issubclass(guru_type, AnalysisTimeoutError):
            defaults = {"video_id": "", "last": None}
        elif issubclass(guru_type, ResponseDecodeError):
            defaults = {"status": None, "body": "", "not_json": False}
        elif issubclass(guru_type, SourceError):
            defaults = {"status": None, "url": None}
        return _rebuild(guru_type, message, {**defaults, **state})
    return FleetItemError(f"{name}: {message}", type_name=name)


def decode_analysis(text: str) -> Analysis:
    return structure(decode_json(text.encode(), what="fleet result"), Analysis, what="fleet result")
