"""The S3-style storage side: presigned POST policies, multipart uploads and signed downloads."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import secrets
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from aiohttp import BodyPartReader, web
from attrs import frozen

from guru_async.testing._models import EmulatedVideo

BUCKET = "guru-videos"
ALGORITHM = "AWS4-HMAC-SHA256"
REGION = "us-west-2"
DOWNLOAD_EXPIRES = 3600
_CHUNK = 256 * 1024
_EXPIRATION_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
# Fields S3 never lists in a policy's conditions but always accepts.
_UNCONDITIONED_FIELDS = frozenset({"policy", "x-amz-signature", "file"})


class StorageError(Exception):
    """A storage rejection, rendered as an S3 XML error document."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def response(self) -> web.Response:
        """The S3-style XML error response."""
        return s3_error(self.status, self.code, self.message)


def s3_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """An S3-style XML error response."""
    request_id = secrets.token_hex(8).upper()
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{_xml_escape(message)}</Message>"
        f"<RequestId>{request_id}</RequestId></Error>"
    )
    return web.Response(status=status, text=body, content_type="application/xml", headers=headers)


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class Signer:
    """HMAC signatures with a secret private to one emulator instance."""

    def __init__(self) -> None:
        self._secret = secrets.token_bytes(32)

    def sign(self, text: str) -> str:
        """The hex HMAC-SHA256 of ``text``."""
        return hmac.new(self._secret, text.encode(), hashlib.sha256).hexdigest()

    def verify(self, text: str, signature: str | None) -> bool:
        """Whether ``signature`` is the signature of ``text``."""
        return signature is not None and hmac.compare_digest(self.sign(text), signature)


def upload_key(video_id: str, filename: str) -> str:
    """The object key a video's content is uploaded to."""
    return f"uploads/{video_id}/{filename}"


def presigned_post(
    signer: Signer, *, video_id: str, filename: str, size: int, lifetime: float
) -> dict[str, str]:
    """The ``fields`` of a Create Video response, in the order S3 issues them."""
    now = dt.datetime.now(dt.timezone.utc)
    expiration = (now + dt.timedelta(seconds=lifetime)).strftime(_EXPIRATION_FORMAT)
    # strftime gives microseconds; S3 policies carry milliseconds.
    expiration = expiration[:-4] + "Z"
    fields = {
        "key": upload_key(video_id, filename),
        "x-amz-algorithm": ALGORITHM,
        "x-amz-credential": f"AKIAGURUEMULATOR/{now:%Y%m%d}/{REGION}/s3/aws4_request",
        "x-amz-date": f"{now:%Y%m%dT%H%M%SZ}",
    }
    policy = {
        "expiration": expiration,
        "conditions": [
            {"bucket": BUCKET},
            {"key": fields["key"]},
            ["content-length-range", size, size],
            {"x-amz-algorithm": fields["x-amz-algorithm"]},
            {"x-amz-credential": fields["x-amz-credential"]},
            {"x-amz-date": fields["x-amz-date"]},
        ],
    }
    encoded = base64.b64encode(json.dumps(policy).encode()).decode()
    return {
        "key": fields["key"],
        "x-amz-algorithm": fields["x-amz-algorithm"],
        "x-amz-credential": fields["x-amz-credential"],
        "x-amz-date": fields["x-amz-date"],
        "policy": encoded,
        "x-amz-signature": signer.sign(encoded),
    }


def download_url(signer: Signer, storage_url: str, key: str) -> str:
    """A presigned GET URL for ``key``."""
    signature = signer.sign(f"GET\n{key}")
    return (
        f"{storage_url}/{BUCKET}/{quote(key)}"
        f"?X-Amz-Expires={DOWNLOAD_EXPIRES}&X-Amz-Signature={signature}"
    )


def check_download(signer: Signer, key: str, signature: str | None) -> None:
    """Raise :class:`StorageError` unless ``signature`` signs a GET of ``key``."""
    if not signer.verify(f"GET\n{key}", signature):
        raise _signature_mismatch()


def _signature_mismatch() -> StorageError:
    return StorageError(
        403,
        "SignatureDoesNotMatch",
        "The request signature we calculated does not match the signature you provided. "
        "Check your key and signing method.",
    )


def _policy_failure(detail: str) -> StorageError:
    return StorageError(403, "AccessDenied", f"Invalid according to Policy: {detail}")


@frozen
class ReceivedUpload:
    """A validated upload, stored under a temporary path until the emulator commits it."""

    video: EmulatedVideo
    temp_path: Path
    size: int
    sha256: str
    head: bytes


async def receive_upload(
    request: web.Request,
    *,
    signer: Signer,
    storage_dir: Path,
    lookup: Callable[[str], EmulatedVideo | None],
    on_part: Callable[[str], None],
    on_key: Callable[[str], None],
    head_size: int,
    bandwidth: float | None = None,
) -> ReceivedUpload:
    """Read a presigned-POST multipart body in order and stream its file part to disk.

    Args:
        request: The storage POST request.
        signer: Signs and verifies policies.
        storage_dir: Where the temporary file is written.
        lookup: Finds a video by id.
        on_part: Called with each part's name, in order.
        on_key: Called with the video id as soon as the ``key`` field names one.
        head_size: How many leading content bytes to return in :attr:`ReceivedUpload.head`.
        bandwidth: Bytes per second one upload may go at, or None for as fast as it comes.

    Returns:
        The validated upload; the caller must move or delete ``temp_path``.

    Raises:
        StorageError: The request breaks a rule S3 enforces.
    """
    reader = await request.multipart()
    form: dict[str, str] = {}
    received: ReceivedUpload | None = None
    try:
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise StorageError(400, "InvalidArgument", "Nested multipart bodies are invalid.")
            name = part.name or ""
            on_part(name)
            if received is not None:
                raise StorageError(
                    400,
                    "InvalidArgument",
                    f"The file must be the last field in the form; found {name!r} after it.",
                )
            if name != "file":
                form[name] = await part.text()
                if name == "key" and (video_id := _video_id(form[name], "uploads")):
                    on_key(video_id)
                continue
            video, size = _authorize(signer, form, lookup)
            temp_path = storage_dir / f"{video.id}.{uuid.uuid4().hex}.part"
            received = await _store(part, video, temp_path, size, head_size, bandwidth)
        if received is None:
            raise StorageError(
                400, "InvalidArgument", "POST requires exactly one file upload per request."
            )
    except BaseException:
        if received is not None:
            _discard(received.temp_path)
        raise
    return received


def _authorize(
    signer: Signer, form: dict[str, str], lookup: Callable[[str], EmulatedVideo | None]
) -> tuple[EmulatedVideo, int]:
    """Check the form against its signed policy; return the video and its exact size."""
    encoded = form.get("policy")
    if encoded is None:
        raise _policy_failure("Bucket POST must contain a field named 'policy'.")
    if not signer.verify(encoded, form.get("x-amz-signature")):
        raise _signature_mismatch()
    policy: dict[str, Any] = json.loads(base64.b64decode(encoded))
    expiration = dt.datetime.strptime(policy["expiration"], _EXPIRATION_FORMAT)
    if expiration.replace(tzinfo=dt.timezone.utc) <= dt.datetime.now(dt.timezone.utc):
        raise _policy_failure("Policy expired.")
    size = 0
    allowed = set(_UNCONDITIONED_FIELDS)
    for condition in policy["conditions"]:
        if isinstance(condition, list):
            size = int(condition[2])
            continue
        ((name, value),) = condition.items()
        allowed.add(name)
        if name != "bucket" and form.get(name) != value:
            raise _policy_failure(f'Policy Condition failed: ["eq", "${name}", "{value}"]')
    if extra := sorted(set(form) - allowed):
        raise _policy_failure(f"Extra input fields: {', '.join(extra)}")
    video_id = _video_id(form["key"], "uploads")
    video = lookup(video_id) if video_id else None
    if video is None:
        raise StorageError(403, "AccessDenied", "Access Denied")
    for name, value in video.fields.items():
        if form.get(name) != value:
            raise _policy_failure(f"Field {name!r} does not match the issued value.")
    return video, size


def _video_id(key: str, prefix: str) -> str | None:
    parts = key.split("/", 2)
    if len(parts) == 3 and parts[0] == prefix:
        return parts[1]
    return None


def parse_key(key: str) -> tuple[str, str] | None:
    """Split a download key into ``(video_id, what)``: ``"raw"`` or an overlay file name."""
    for prefix in ("uploads", "overlays"):
        video_id = _video_id(key, prefix)
        if video_id is not None:
            return video_id, "raw" if prefix == "uploads" else key.rsplit("/", 1)[-1]
    return None


async def _store(
    part: BodyPartReader,
    video: EmulatedVideo,
    path: Path,
    size: int,
    head_size: int,
    bandwidth: float | None,
) -> ReceivedUpload:
    digest = hashlib.sha256()
    head = b""
    total = 0
    started = time.monotonic()
    sink = _open_for_write(path)
    try:
        while chunk := await part.read_chunk(_CHUNK):
            total += len(chunk)
            if bandwidth is not None:
                # Read no faster than one stream of a real network link carries: TCP's
                # backpressure then slows the sender, as a distant S3 endpoint would.
                ahead = total / bandwidth - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            if total > size:
                raise StorageError(
                    400,
                    "EntityTooLarge",
                    f"Your proposed upload exceeds the maximum allowed size of {size} bytes.",
                )
            digest.update(chunk)
            if len(head) < head_size:
                head += chunk[: head_size - len(head)]
            # A local disk write is quick enough that threading it costs more than it saves.
            sink.write(chunk)
    except BaseException:
        sink.close()
        _discard(path)
        raise
    sink.close()
    if total < size:
        _discard(path)
        raise StorageError(
            400,
            "EntityTooSmall",
            f"Your proposed upload is smaller than the minimum allowed size of {size} bytes.",
        )
    return ReceivedUpload(video, path, total, digest.hexdigest(), head)


def _open_for_write(path: Path) -> IO[bytes]:
    return open(path, "wb")


def _discard(path: Path) -> None:
    path.unlink(missing_ok=True)


def commit(upload: ReceivedUpload, final_path: Path) -> None:
    """Atomically replace any earlier content, as an S3 overwrite does."""
    os.replace(upload.temp_path, final_path)
