"""The Guru emulator, exercised over real sockets with a raw aiohttp client."""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
import math
import os
import re
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from guru_async import GuruSession, MemoryTokenStore, RetryPolicy
from guru_async._enums import Activity, Domain
from guru_async.testing import (
    CREATE_ROUTE,
    DOWNLOAD_ROUTE,
    GET_VIDEO_ROUTE,
    SCOPE,
    TOKEN_ROUTE,
    UNANALYZABLE_MARKER,
    UPDATE_ROUTE,
    UPLOAD_ROUTE,
    EmulatedVideo,
    FaultRule,
    GuruEmulator,
    main,
)
from guru_async.testing import main as emulator_main

REPO = Path(__file__).resolve().parents[1]
BOUNDARY = "emulator-test-boundary-7f3a"
Parts = list[tuple[str, bytes, str | None]]


@pytest.fixture
async def emu() -> AsyncIterator[GuruEmulator]:
    async with GuruEmulator(analysis_delay=0.05) as emulator:
        yield emulator


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def auth(emu: GuruEmulator) -> dict[str, str]:
    return {"Authorization": emu.issue_token()}


async def create(
    http: aiohttp.ClientSession, emu: GuruEmulator, **body: Any
) -> tuple[int, dict[str, Any]]:
    async with http.post(f"{emu.base_url}/videos", json=body, headers=auth(emu)) as response:
        return response.status, await response.json()


async def created_video(
    http: aiohttp.ClientSession, emu: GuruEmulator, content: bytes, **body: Any
) -> dict[str, Any]:
    status, created = await create(http, emu, filename="clip.mp4", size=len(content), **body)
    assert status == 200, created
    return created


def form(parts: Parts) -> tuple[bytes, str]:
    """Hand-build a multipart/form-data body, parts in the given order."""
    chunks: list[bytes] = []
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"\r\nContent-Type: video/mp4'
        chunks += [f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode(), value]
        chunks.append(b"\r\n")
    chunks.append(f"--{BOUNDARY}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={BOUNDARY}"


def issued_parts(created: dict[str, Any], content: bytes) -> Parts:
    fields: Parts = [(k, v.encode(), None) for k, v in created["fields"].items()]
    return [*fields, ("file", content, "clip.mp4")]


async def post_form(
    http: aiohttp.ClientSession,
    created: dict[str, Any],
    parts: Parts,
    headers: dict[str, str] | None = None,
) -> tuple[int, str]:
    body, content_type = form(parts)
    all_headers = {"Content-Type": content_type, **(headers or {})}
    # A BytesIO payload still gets a Content-Length, without aiohttp's large-bytes warning.
    data = io.BytesIO(body)
    async with http.post(created["url"], data=data, headers=all_headers) as response:
        return response.status, await response.text()


async def upload(
    http: aiohttp.ClientSession, emu: GuruEmulator, content: bytes, **body: Any
) -> str:
    created = await created_video(http, emu, content, **body)
    status, text = await post_form(http, created, issued_parts(created, content))
    assert status == 204, text
    return str(created["id"])


async def get_json(
    http: aiohttp.ClientSession, emu: GuruEmulator, path: str, **params: str
) -> tuple[int, Any]:
    url = f"{emu.base_url}{path}"
    async with http.get(url, headers=auth(emu), params=params) as response:
        return response.status, await response.json()


async def finished_analysis(
    http: aiohttp.ClientSession, emu: GuruEmulator, video_id: str
) -> dict[str, Any]:
    for _ in range(300):
        _, body = await get_json(http, emu, f"/videos/{video_id}/analysis")
        if body["status"] != "Pending":
            return dict(body)
        await asyncio.sleep(0.01)
    raise AssertionError("analysis never left Pending")


def s3_code(text: str) -> str:
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>'), text
    match = re.search(r"<Code>(\w+)</Code>", text)
    assert match is not None
    return match.group(1)


async def test_token_endpoint_issues_and_rejects(
    emu: GuruEmulator, http: aiohttp.ClientSession
) -> None:
    """The token endpoint issues Bearer tokens for good credentials and OAuth errors otherwise."""
    good = {
        "grant_type": "client_credentials",
        "client_id": emu.client_id,
        "client_secret": emu.client_secret,
        "scope": SCOPE,
    }
    async with http.post(emu.token_url, data=good) as response:
        assert response.status == 200
        issued = await response.json()
    assert issued["token_type"] == "Bearer"
    assert issued["expires_in"] == 3600
    assert isinstance(issued["expires_in"], int)
    assert len(issued["access_token"]) >= 20

    basic = base64.b64encode(f"{emu.client_id}:{emu.client_secret}".encode()).decode()
    form_only = {"grant_type": "client_credentials"}
    headers = {"Authorization": f"Basic {basic}"}
    async with http.post(emu.token_url, data=form_only, headers=headers) as response:
        assert response.status == 200

    cases = [
        ({**good, "client_secret": "wrong"}, "invalid_client"),
        ({**good, "grant_type": "password"}, "unsupported_grant_type"),
        ({**good, "scope": "https://example.com/other"}, "invalid_scope"),
    ]
    for data, error in cases:
        async with http.post(emu.token_url, data=data) as response:
            assert (response.status, await response.json()) == (400, {"error": error})
    async with http.post(emu.token_url, json=good) as response:
        assert (response.status, await response.json()) == (400, {"error": "invalid_request"})
    assert emu.token_requests == 6
    assert emu.requests[TOKEN_ROUTE] == 6


async def test_fractional_token_lifetime_is_emitted_as_a_float(
    http: aiohttp.ClientSession,
) -> None:
    """A fractional token_lifetime is issued as a float expires_in, and the token then lapses."""
    async with GuruEmulator(token_lifetime=0.2) as emu:
        data = {
            "grant_type": "client_credentials",
            "client_id": emu.client_id,
            "client_secret": emu.client_secret,
        }
        async with http.post(emu.token_url, data=data) as response:
            issued = await response.json()
        assert issued["expires_in"] == 0.2
        headers = {"Authorization": issued["access_token"]}
        deadline = time.monotonic() + 2.0
        status = 200
        while status != 401 and time.monotonic() < deadline:
            async with http.get(f"{emu.base_url}/videos/x", headers=headers) as response:
                status = response.status
            await asyncio.sleep(0.02)
        assert status == 401


async def test_api_requires_the_raw_token(emu: GuruEmulator, http: aiohttp.ClientSession) -> None:
    """Only the raw token authenticates; Bearer, missing, expired and revoked tokens get 401."""
    url = f"{emu.base_url}/videos/00000000-0000-4000-8000-000000000000"
    token = emu.issue_token()
    async with http.get(url, headers={"Authorization": token}) as response:
        assert (response.status, await response.json()) == (404, {"message": "Video not found"})
    unauthorized = [{"Authorization": f"Bearer {token}"}, {}, {"Authorization": "nope"}]
    for headers in unauthorized:
        async with http.get(url, headers=headers) as response:
            assert (response.status, await response.json()) == (401, {"message": "Unauthorized"})
    emu.revoke_token(token)
    async with http.get(url, headers={"Authorization": token}) as response:
        assert response.status == 401
    other = emu.issue_token()
    emu.expire_tokens()
    async with http.get(url, headers={"Authorization": other}) as response:
        assert response.status == 401
    assert emu.token_requests == 0


async def test_create_returns_an_s3_presigned_post(
    emu: GuruEmulator, http: aiohttp.ClientSession
) -> None:
    """Create answers with an id, the storage URL and S3 presigned-POST fields in S3's order."""
    status, created = await create(
        http, emu, filename="squat.mp4", size=1234, activity="squat", repCount=3
    )
    assert status == 200
    video_id = created["id"]
    assert created["url"] == f"{emu.storage_url}/guru-videos"
    assert not created["url"].startswith(emu.base_url)
    fields = created["fields"]
    assert list(fields) == [
        "key",
        "x-amz-algorithm",
        "x-amz-credential",
        "x-amz-date",
        "policy",
        "x-amz-signature",
    ]
    assert fields["key"] == f"uploads/{video_id}/squat.mp4"
    assert fields["x-amz-algorithm"] == "AWS4-HMAC-SHA256"
    assert re.fullmatch(r"[0-9a-f]{64}", fields["x-amz-signature"])
    policy = json.loads(base64.b64decode(fields["policy"]))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", policy["expiration"])
    assert policy["conditions"] == [
        {"bucket": "guru-videos"},
        {"key": fields["key"]},
        ["content-length-range", 1234, 1234],
        {"x-amz-algorithm": fields["x-amz-algorithm"]},
        {"x-amz-credential": fields["x-amz-credential"]},
        {"x-amz-date": fields["x-amz-date"]},
    ]
    video = emu.videos[video_id]
    assert (video.activity, video.rep_count, video.domain) == (Activity.SQUAT, 3, None)
    recorded = emu.recorded[-1]
    assert recorded.route == CREATE_ROUTE
    assert recorded.json == {
        "filename": "squat.mp4",
        "size": 1234,
        "activity": "squat",
        "repCount": 3,
    }


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"filename": "a.mp4", "size": 1, "repCount": None}, "repCount"),
        ({"filename": "a.mp4", "size": 1, "rep_count": 3}, "rep_count"),
        ({"filename": "a.mp4", "size": 1, "activity": "jumping"}, "activity"),
        ({"filename": "a.mp4", "size": 1, "domain": "yoga", "activity": "squat"}, "squat"),
        ({"filename": "a.mp4"}, "size"),
        ({"filename": "a.mp4", "size": True}, "size"),
        ({"filename": "a.mp4", "size": -1}, "size"),
        ({"filename": "", "size": 1}, "filename"),
    ],
)
async def test_create_rejects_bad_bodies(
    emu: GuruEmulator, http: aiohttp.ClientSession, body: dict[str, Any], named: str
) -> None:
    """Create answers 400 naming the offending field for nulls, unknown keys and bad values."""
    status, error = await create(http, emu, **body)
    assert status == 400
    assert named in error["message"]
    assert not emu.videos


async def test_create_requires_json_content_type(
    emu: GuruEmulator, http: aiohttp.ClientSession
) -> None:
    """A create body that is not declared as JSON is a 400."""
    headers = {**auth(emu), "Content-Type": "text/plain"}
    body = json.dumps({"filename": "a.mp4", "size": 1})
    async with http.post(f"{emu.base_url}/videos", data=body, headers=headers) as response:
        assert response.status == 400
        assert "application/json" in (await response.json())["message"]


async def test_large_upload_is_stored_byte_identical(
    emu: GuruEmulator, http: aiohttp.ClientSession
) -> None:
    """A 3 MiB multipart upload with Content-Length lands on disk unchanged and is recorded."""
    content = os.urandom(3 * 1024 * 1024 + 123)
    video_id = await upload(http, emu, content, activity="squat")
    assert emu.stored_path(video_id).read_bytes() == content
    assert emu.upload_attempts[video_id] == 1
    assert emu.uploads_completed[video_id] == 1
    video = emu.videos[video_id]
    assert video.stored_size == len(content)
    assert video.uploaded_at is not None
    recorded = emu.recorded[-1]
    assert recorded.route == UPLOAD_ROUTE
    assert int(recorded.headers["Content-Length"]) > len(content)
    assert "Authorization" not in recorded.headers
    assert recorded.part_names == [
        "key",
        "x-amz-algorithm",
        "x-amz-credential",
        "x-amz-date",
        "policy",
        "x-amz-signature",
        "file",
    ]
    _, got = await get_json(http, emu, f"/videos/{video_id}")
    assert got["status"] == "Success"
    assert got["fps"] == 30


def _changed(parts: Parts, name: str, value: bytes) -> Parts:
    return [(n, value if n == name else v, f) for n, v, f in parts]


@pytest.mark.parametrize(
    ("mutate", "status", "code"),
    [
        (lambda p: _changed(p, "key", b"uploads/other/clip.mp4"), 403, "AccessDenied"),
        (lambda p: [x for x in p if x[0] != "x-amz-date"], 403, "AccessDenied"),
        (lambda p: _changed(p, "x-amz-signature", b"0" * 64), 403, "SignatureDoesNotMatch"),
        (lambda p: [*p, ("extra", b"1", None)], 400, "InvalidArgument"),
        (lambda p: p[:-1], 400, "InvalidArgument"),
        (lambda p: _changed(p, "file", b"x" * 1001), 400, "EntityTooLarge"),
        (lambda p: _changed(p, "file", b"x" * 999), 400, "EntityTooSmall"),
    ],
    ids=[
        "changed-key",
        "missing-field",
        "bad-signature",
        "file-not-last",
        "no-file",
        "big",
        "small",
    ],
)
async def test_storage_rejects_policy_violations(
    emu: GuruEmulator, http: aiohttp.ClientSession, mutate: Any, status: int, code: str
) -> None:
    """Storage enforces the presigned policy, part order and exact size with S3 XML errors."""
    content = b"x" * 1000
    created = await created_video(http, emu, content)
    got_status, text = await post_form(http, created, mutate(issued_parts(created, content)))
    assert (got_status, s3_code(text)) == (status, code)
    assert emu.uploads_completed[created["id"]] == 0
    assert not emu.stored_path(created["id"]).exists()
    assert list(emu.stored_path(created["id"]).parent.iterdir()) == []


async def test_storage_rejects_chunked_and_authorized_uploads(
    emu: GuruEmulator, http: aiohttp.ClientSession
) -> None:
    """Storage refuses a chunked upload (411) and one carrying an Authorization header (400)."""
    content = b"y" * 100
    created = await created_video(http, emu, content)
    body, content_type = form(issued_parts(created, content))

    async def chunks() -> AsyncIterator[bytes]:
        yield body

    headers = {"Content-Type": content_type}
    async with http.post(created["url"], data=chunks(), headers=headers) as response:
        assert response.status == 411
        assert response.content_type == "application/xml"
        assert s3_code(await response.text()) == "MissingContentLength"
    status, text = await post_form(
        http, created, issued_parts(created, content), {"Authorization": emu.issue_token()}
    )
    assert (status, s3_code(text)) == (400, "InvalidArgument")
    assert "Only one auth mechanism allowed" in text


async def test_expired_policy_is_rejected(http: aiohttp.ClientSession) -> None:
    """An upload after the presigned policy's expiration gets 403 'Policy expired.'."""
    async with GuruEmulator(presign_lifetime=0.0) as emu:
        content = b"z" * 10
        created = await created_video(http, emu, content)
        status, text = await post_form(http, created, issued_parts(created, content))
    assert (status, s3_code(text)) == (403, "AccessDenied")
    assert "Invalid according to Policy: Policy expired." in text


async def test_analysis_goes_from_pending_to_complete(
    emu: GuruEmulator, http: aiohttp.ClientSession
) -> None:
    """Analysis is Pending before upload and until the delay passes, then Complete with reps."""
    content = b"squat video" * 100
    created = await created_video(http, emu, content, activity="squat", repCount=4)
    _, pending = await get_json(http, emu, f"/videos/{created['id']}/analysis")
    assert pending == {"status": "Pending"}
    _, video = await get_json(http, emu, f"/videos/{created['id']}")
    assert video == {
        "status": "Pending",
        "overlays": {"skeleton": {"status": "Pending"}, "all": {"status": "Pending"}},
    }
    status, text = await post_form(http, created, issued_parts(created, content))
    assert status == 204, text
    analysis = await finished_analysis(http, emu, created["id"])
    assert analysis["status"] == "Complete"
    assert (analysis["domain"], analysis["activity"]) == ("weightlifting", "squat")
    assert len(analysis["reps"]) == 4
    previous_end = 0
    for rep in analysis["reps"]:
        assert previous_end <= rep["startTimestampMs"] < rep["midTimestampMs"]
        assert rep["midTimestampMs"] < rep["endTimestampMs"] <= 10_000
        previous_end = rep["endTimestampMs"]
        (metric,) = rep["analyses"]
        assert metric["analysisType"] == "HIP_KNEE_ANGLE_DEGREES"
        assert metric["analysisOpinion"] == ("good" if metric["analysisScalar"] < 90 else "bad")


async def test_analysis_is_deterministic_and_reps_come_from_content(
    http: aiohttp.ClientSession,
) -> None:
    """Without repCount, the same content yields the same 3-8 reps on every seeded emulator."""
    results = []
    for _ in range(2):
        async with GuruEmulator(analysis_delay=0.0, seed=7) as emu:
            video_id = await upload(http, emu, b"same bytes" * 50, domain="calisthenics")
            results.append(await finished_analysis(http, emu, video_id))
    assert results[0] == results[1]
    assert 3 <= len(results[0]["reps"]) <= 8
    assert results[0]["domain"] == "calisthenics"
    assert "activity" not in results[0]


async def test_sprint_analysis_has_strides_markers_and_progress(
    emu: GuruEmulator, http: aiohttp.ClientSession
) -> None:
    """Sprints report strides with the doc's 'anaylsisScalar' key, field markers and progress."""
    video_id = await upload(http, emu, b"sprint" * 100, activity="sprint", repCount=6)
    analysis = await finished_analysis(http, emu, video_id)
    assert (analysis["domain"], analysis["activity"]) == ("running", "sprint")
    strides = analysis["reps"]
    assert len(strides) == 6
    for index, stride in enumerate(strides):
        values = {a["analysisType"]: a["anaylsisScalar"] for a in stride["analyses"]}
        assert all("analysisScalar" not in a for a in stride["analyses"])
        assert set(values) == {
            "IS_LEFT_LEG",
            "STRIDE_AIR_TIME_MS",
            "STRIDE_GROUND_TIME_MS",
            "STRIDE_PEAK_FLEXION_ANGLE",
            "STRIDE_PEAK_FLEXION_ANGLE_TIMESTAMP",
            "STRIDE_PEAK_EXTENSION_ANGLE",
            "STRIDE_PEAK_EXTENSION_ANGLE_TIMESTAMP",
        }
        if index == 0:
            assert values["STRIDE_AIR_TIME_MS"] is None
            assert values["STRIDE_GROUND_TIME_MS"] is None
        else:
            assert values["STRIDE_AIR_TIME_MS"] > 0
            assert values["STRIDE_GROUND_TIME_MS"] > 0
            previous = {
                a["analysisType"]: a["anaylsisScalar"] for a in strides[index - 1]["analyses"]
            }
            assert values["IS_LEFT_LEG"] == 1 - previous["IS_LEFT_LEG"]
    markers = analysis["fieldMarkers"]
    assert set(markers) == {"startLine", "middleLine", "finishLine", "cones"}
    for marker in [markers["startLine"], markers["middleLine"], markers["finishLine"]]:
        assert marker["type"] == "YARD_LINE"
        assert set(marker["position"]) == {"x1", "y1", "x2", "y2"}
        assert isinstance(marker["frame_idx"], int)
    assert all(cone["type"] == "CONE" for cone in markers["cones"])
    progress = analysis["runnerProgress"]
    distances = [p["distanceFromStart"] for p in progress]
    assert distances[0] < 0 < distances[-1]
    assert all(a < b for a, b in itertools.pairwise(distances))
    assert [p["frameIndex"] for p in progress[:3]] == [0, 3, 6]
    assert progress[1]["timestamp"] == pytest.approx(100.0)


def _knee_angle(frames: dict[str, list[dict[str, Any]]], index: int) -> float:
    def point(joint: str) -> tuple[float, float]:
        position = frames[joint][index]["position"]
        return position["x"] * 720, position["y"] * 1280

    (hx, hy), (kx, ky), (ax, ay) = point("leftHip"), point("leftKnee"), point("leftAnkle")
    thigh, shin = (hx - kx, hy - ky), (ax - kx, ay - ky)
    cosine = (thigh[0] * shin[0] + thigh[1] * shin[1]) / (math.hypot(*thigh) * math.hypot(*shin))
    return math.degrees(math.acos(cosine))


async def test_joint_data_has_every_frame_and_dips_at_each_rep(
    http: aiohttp.ClientSession,
) -> None:
    """j2p has video_seconds*fps frames per COCO joint, and the knee angle dips mid-rep."""
    async with GuruEmulator(analysis_delay=0.0, video_seconds=4.0, fps=25.0) as emu:
        video_id = await upload(http, emu, b"j2p" * 10, activity="bodyweight_squat", repCount=3)
        await finished_analysis(http, emu, video_id)
        url = f"{emu.base_url}/videos/{video_id}/j2p"
        async with http.get(url, headers=auth(emu)) as response:
            first = await response.read()
        async with http.get(url, headers=auth(emu)) as response:
            assert await response.read() == first
    body = json.loads(first)
    assert body["status"] == "Complete"
    assert (body["resolutionWidth"], body["resolutionHeight"]) == (720, 1280)
    joints = body["jointToPoints"]
    assert len(joints) == 17
    assert {"nose", "leftHip", "rightAnkle"} <= set(joints)
    for name, frames in joints.items():
        assert len(frames) == 100
        assert [f["frame_idx"] for f in frames] == list(range(100))
        assert all(f["part"] == name for f in frames)
        assert all(0 <= f["position"]["x"] <= 1 and 0 <= f["position"]["y"] <= 1 for f in frames)
        assert all(0 <= f["score"] <= 1 for f in frames)
    assert joints["nose"][25]["timestamp"] == pytest.approx(1.0)
    reps = body["analysis"]["reps"]
    assert len(reps) == 3
    for rep in reps:
        mid = round(rep["midTimestampMs"] / 1000 * 25)
        start = round(rep["startTimestampMs"] / 1000 * 25)
        assert _knee_angle(joints, mid) < _knee_angle(joints, start) - 40
        assert _knee_angle(joints, mid) == pytest.approx(
            rep["analyses"][0]["analysisScalar"], abs=4
        )


@pytest.mark.parametrize("content", [b"", UNANALYZABLE_MARKER + b" rest of file"])
async def test_unanalyzable_uploads_fail(
    emu: GuruEmulator, http: aiohttp.ClientSession, content: bytes
) -> None:
    """Empty content or content starting with the marker ends Failed/LOW_QUALITY_POSE_ESTIMATE."""
    video_id = await upload(http, emu, content, activity="push_up")
    analysis = await finished_analysis(http, emu, video_id)
    assert analysis == {
        "status": "Failed",
        "reason": "LOW_QUALITY_POSE_ESTIMATE",
        "domain": "calisthenics",
        "activity": "push_up",
    }
    _, j2p = await get_json(http, emu, f"/videos/{video_id}/j2p")
    assert j2p == {"status": "Failed", "reason": "LOW_QUALITY_POSE_ESTIMATE"}
    _, video = await get_json(http, emu, f"/videos/{video_id}")
    assert video["status"] == "Success"
    assert video["overlays"] == {"skeleton": {"status": "Failed"}, "all": {"status": "Failed"}}


async def test_get_video_include_handling(emu: GuruEmulator, http: aiohttp.ClientSession) -> None:
    """include takes one comma-separated value; unknown items or repeats are 400s."""
    video_id = await upload(http, emu, b"include" * 10, activity="deadlift", repCount=2)
    await finished_analysis(http, emu, video_id)
    status, video = await get_json(http, emu, f"/videos/{video_id}", include="j2p,analysis,objects")
    assert status == 200
    assert video["analysis"]["reps"][0]["analyses"][0]["analysisType"] == "HIP_ANGLE_DEGREES"
    assert video["j2p"]["status"] == "Complete"
    assert video["j2p"]["analysis"]["reps"] == video["analysis"]["reps"]
    (person,) = video["objects"]
    assert person["objectType"] == "person"
    assert 1 <= len(person["boundingBoxes"]) <= 5
    box = person["boundingBoxes"][0]
    assert box["x1"] < box["x2"]
    assert box["y1"] < box["y2"]
    for overlay in ("skeleton", "all"):
        assert video["overlays"][overlay]["status"] == "Complete"
        assert video["overlays"][overlay]["uri"].startswith(emu.storage_url)
    _, plain = await get_json(http, emu, f"/videos/{video_id}")
    assert not {"analysis", "j2p", "objects", "reason"} & set(plain)

    url = f"{emu.base_url}/videos/{video_id}?include=j2p&include=analysis"
    async with http.get(url, headers=auth(emu)) as response:
        assert response.status == 400
        assert "comma-separated" in (await response.json())["message"]
    status, error = await get_json(http, emu, f"/videos/{video_id}", include="analysis,reps")
    assert status == 400
    assert "reps" in error["message"]


async def test_update_video_changes_only_given_fields(
    emu: GuruEmulator, http: aiohttp.ClientSession
) -> None:
    """PUT changes only the given fields, accepts {}, and rejects nulls, unknown keys and ids."""
    video_id = await upload(http, emu, b"update" * 10, activity="squat", repCount=5)
    url = f"{emu.base_url}/videos/{video_id}"
    for accepted in [{"repCount": 2}, {}]:
        async with http.put(url, json=accepted, headers=auth(emu)) as response:
            assert (response.status, await response.json()) == (200, {"id": video_id})
    video = emu.videos[video_id]
    assert (video.rep_count, video.activity) == (2, Activity.SQUAT)
    assert len((await finished_analysis(http, emu, video_id))["reps"]) == 2
    for body in [
        {"repCount": None},
        {"filename": "b.mp4"},
        {"domain": "yoga", "activity": "lunge"},
    ]:
        async with http.put(url, json=body, headers=auth(emu)) as response:
            assert response.status == 400
    missing = f"{emu.base_url}/videos/00000000-0000-4000-8000-000000000000"
    async with http.put(missing, json={"repCount": 1}, headers=auth(emu)) as response:
        assert (response.status, await response.json()) == (404, {"message": "Video not found"})
    async with http.put(url, json={"domain": "mobility"}, headers=auth(emu)) as response:
        assert response.status == 200
    assert video.domain is Domain.MOBILITY
    assert emu.requests[UPDATE_ROUTE] == 7


async def test_download_serves_signed_content_only(
    emu: GuruEmulator, http: aiohttp.ClientSession
) -> None:
    """The video and overlay URIs serve the stored bytes; bad signatures or auth are refused."""
    content = os.urandom(50_000)
    video_id = await upload(http, emu, content)
    await finished_analysis(http, emu, video_id)
    _, video = await get_json(http, emu, f"/videos/{video_id}")
    assert re.search(r"\?X-Amz-Expires=3600&X-Amz-Signature=[0-9a-f]{64}$", video["uri"])
    for uri in [video["uri"], video["overlays"]["all"]["uri"]]:
        async with http.get(uri) as response:
            assert response.status == 200
            assert response.content_length == len(content)
            assert await response.read() == content
    tampered = video["uri"][:-4] + "0000"
    async with http.get(tampered) as response:
        assert (response.status, s3_code(await response.text())) == (403, "SignatureDoesNotMatch")
    async with http.get(video["uri"], headers={"Authorization": "token"}) as response:
        assert (response.status, s3_code(await response.text())) == (400, "InvalidArgument")
    assert emu.requests[DOWNLOAD_ROUTE] == 4


async def test_reupload_overwrites_and_restarts_the_clock(http: aiohttp.ClientSession) -> None:
    """A second upload to the same key replaces the content and the delay callable sees it."""
    seen: list[EmulatedVideo] = []

    def delay(video: EmulatedVideo) -> float:
        seen.append(video)
        return 0.0 if len(seen) == 1 else 60.0

    async with GuruEmulator(analysis_delay=delay) as emu:
        content = b"a" * 64
        created = await created_video(http, emu, content)
        for payload in [content, b"b" * 64]:
            status, _ = await post_form(http, created, issued_parts(created, payload))
            assert status == 204
        assert emu.stored_path(created["id"]).read_bytes() == b"b" * 64
        assert emu.uploads_completed[created["id"]] == 2
        assert emu.upload_attempts[created["id"]] == 2
        assert seen[1].stored_size == 64
        _, analysis = await get_json(http, emu, f"/videos/{created['id']}/analysis")
        assert analysis == {"status": "Pending"}


async def test_analysis_time_follows_the_video_size(http: aiohttp.ClientSession) -> None:
    """With ``analysis_seconds_per_mb`` an analysis takes the delay plus that time per MB
    uploaded, and ``analysis_spread`` scales it by a seeded draw within the spread."""

    async def durations(**options: Any) -> list[float]:
        async with GuruEmulator(analysis_delay=1.0, analysis_seconds_per_mb=10.0, **options) as emu:
            ids = [await upload(http, emu, b"v" * size) for size in (100_000, 500_000)]
            return [
                (emu.videos[v].analysis_ready_at or 0.0) - (emu.videos[v].uploaded_at or 0.0)
                for v in ids
            ]

    exact = await durations()
    assert exact == [pytest.approx(2.0), pytest.approx(6.0)]
    noisy = await durations(analysis_spread=0.2, seed=7)
    assert noisy == await durations(analysis_spread=0.2, seed=7)
    assert noisy != await durations(analysis_spread=0.2, seed=8)
    for value, base in zip(noisy, exact, strict=True):
        assert 0.8 * base <= value <= 1.2 * base
        assert value != pytest.approx(base)


async def test_analysis_time_options_are_checked() -> None:
    """A negative time per MB or a spread outside [0, 1) is refused, by the class and by the
    command line, before anything listens."""
    with pytest.raises(ValueError, match="analysis_seconds_per_mb"):
        GuruEmulator(analysis_seconds_per_mb=-1.0)
    with pytest.raises(ValueError, match="analysis_spread"):
        GuruEmulator(analysis_spread=1.0)
    for flag, value in (("--analysis-seconds-per-mb", "-1"), ("--analysis-spread", "1.5")):
        with pytest.raises(SystemExit) as exited:
            main([flag, value])
        assert exited.value.code == 2


async def test_status_fault_fires_a_limited_number_of_times(
    emu: GuruEmulator, http: aiohttp.ClientSession
) -> None:
    """A status fault with times=2 answers 503 and Retry-After twice, then lets requests by."""
    emu.faults.add(FaultRule(route=GET_VIDEO_ROUTE, rate=1.0, status=503, retry_after=2, times=2))
    statuses = []
    for _ in range(3):
        async with http.get(f"{emu.base_url}/videos/nope", headers=auth(emu)) as response:
            statuses.append((response.status, response.headers.get("Retry-After")))
            assert "message" in await response.json()
    assert statuses == [(503, "2"), (503, "2"), (404, None)]
    assert emu.faults.fired[GET_VIDEO_ROUTE] == 2
    assert emu.requests[GET_VIDEO_ROUTE] == 3


async def test_storage_status_fault_uses_s3_errors(
    emu: GuruEmulator, http: aiohttp.ClientSession
) -> None:
    """An injected storage 503 is an S3 SlowDown XML error."""
    content = b"c" * 10
    created = await created_video(http, emu, content)
    emu.faults.add(FaultRule(route="*", kind="status", status=503, times=1))
    status, text = await post_form(http, created, issued_parts(created, content))
    assert (status, s3_code(text)) == (503, "SlowDown")
    status, _ = await post_form(http, created, issued_parts(created, content))
    assert status == 204


async def test_delay_and_malformed_faults(emu: GuruEmulator, http: aiohttp.ClientSession) -> None:
    """A delay fault postpones a normal answer; a malformed fault answers 200 with HTML."""
    url = f"{emu.base_url}/videos/nope"
    emu.faults.add(FaultRule(route=GET_VIDEO_ROUTE, kind="delay", delay=0.2, times=1))
    started = time.monotonic()
    async with http.get(url, headers=auth(emu)) as response:
        assert response.status == 404
    assert time.monotonic() - started >= 0.2
    emu.faults.clear()
    emu.faults.add(FaultRule(route=TOKEN_ROUTE, kind="malformed"))
    async with http.post(emu.token_url, data={"grant_type": "client_credentials"}) as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        assert await response.text() == "<html>502 Bad Gateway</html>"


async def test_drop_faults_disconnect(emu: GuruEmulator, http: aiohttp.ClientSession) -> None:
    """A drop fault closes the connection, for uploads part-way through the body."""
    content = os.urandom(2 * 1024 * 1024)
    created = await created_video(http, emu, content)
    emu.faults.add(FaultRule(route="*", kind="drop"))
    with pytest.raises(aiohttp.ClientError):
        await get_json(http, emu, f"/videos/{created['id']}")
    with pytest.raises(aiohttp.ClientError):
        await post_form(http, created, issued_parts(created, content))
    assert emu.upload_attempts[created["id"]] == 1
    assert emu.uploads_completed[created["id"]] == 0
    assert not emu.stored_path(created["id"]).exists()


async def test_truncate_fault_cuts_the_body(emu: GuruEmulator, http: aiohttp.ClientSession) -> None:
    """A truncate fault announces the full length but sends only part of the body."""
    video_id = await upload(http, emu, b"t" * 1000)
    emu.faults.add(FaultRule(route=GET_VIDEO_ROUTE, kind="truncate", times=1))
    with pytest.raises(aiohttp.ClientPayloadError):
        await get_json(http, emu, f"/videos/{video_id}")
    _, video = await get_json(http, emu, f"/videos/{video_id}")
    emu.faults.add(FaultRule(route=DOWNLOAD_ROUTE, kind="truncate", times=1))
    async with http.get(video["uri"]) as response:
        assert response.content_length == 1000
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()


async def test_faults_are_reproducible_for_a_seed(http: aiohttp.ClientSession) -> None:
    """Two emulators with the same seed inject the same faults into the same request sequence."""
    patterns = []
    for _ in range(2):
        async with GuruEmulator(seed=42) as emu:
            emu.faults.add(FaultRule(route=GET_VIDEO_ROUTE, rate=0.5, status=500))
            statuses = []
            for _ in range(12):
                async with http.get(f"{emu.base_url}/videos/x", headers=auth(emu)) as response:
                    statuses.append(response.status)
            patterns.append(statuses)
    assert patterns[0] == patterns[1]
    assert {500, 404} == set(patterns[0])


async def test_reset_counters(emu: GuruEmulator, http: aiohttp.ClientSession) -> None:
    """reset_counters zeroes request, token and upload counters but keeps the videos."""
    video_id = await upload(http, emu, b"r" * 10)
    assert emu.requests[CREATE_ROUTE] == 1
    assert emu.requests[UPLOAD_ROUTE] == 1
    emu.reset_counters()
    assert not emu.requests
    assert emu.token_requests == 0
    assert not emu.upload_attempts
    assert not emu.uploads_completed
    assert video_id in emu.videos


async def test_standalone_cli_prints_json_and_serves() -> None:
    """`python -m guru_async.testing --json` prints its endpoints as JSON, serves, and stops."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "guru_async.testing",
        "--json",
        "--analysis-delay",
        "0",
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), timeout=10)
        endpoints = json.loads(line)
        assert set(endpoints) == {
            "base_url",
            "token_url",
            "storage_url",
            "stats_url",
            "client_id",
            "client_secret",
        }
        data = {
            "grant_type": "client_credentials",
            "client_id": endpoints["client_id"],
            "client_secret": endpoints["client_secret"],
        }
        async with (
            aiohttp.ClientSession() as http,
            http.post(endpoints["token_url"], data=data) as response,
        ):
            assert response.status == 200
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), timeout=10) == 0


async def _standalone(*args: str) -> tuple[asyncio.subprocess.Process, dict[str, str]]:
    """Start ``python -m guru_async.testing --json ARGS``; return it and its endpoints."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "guru_async.testing", "--json", "--analysis-delay", "0", *args),
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), timeout=10)
    return process, json.loads(line)


async def test_standalone_emulator_injects_faults_from_flags(tmp_path: Path) -> None:
    """--fault rules act in a standalone emulator: a session rides out storage 503s and a
    create 429, and the stats count each fault that fired."""
    process, endpoints = await _standalone(
        *("--fault", "POST /storage:rate=1:status=503:times=2"),
        *("--fault", "POST /videos:status=429:retry-after=0:times=1"),
    )
    try:
        clip = tmp_path / "squat.mp4"
        clip.write_bytes(os.urandom(10_000))
        async with GuruSession(
            endpoints["client_id"],
            endpoints["client_secret"],
            base_url=endpoints["base_url"],
            token_url=endpoints["token_url"],
            token_store=MemoryTokenStore(),
            retry_policy=RetryPolicy(wait_initial=0.01, wait_max=0.02),
        ) as guru:
            video_id = await guru.upload_video(clip, activity="squat")
        async with aiohttp.ClientSession() as http, http.get(endpoints["stats_url"]) as response:
            stats = await response.json()
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), timeout=10) == 0
    assert stats["faults_fired"] == {UPLOAD_ROUTE: 2, CREATE_ROUTE: 1}
    assert stats["requests"][UPLOAD_ROUTE] == 3
    assert stats["uploads_completed"] == {video_id: 1}


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("POST /nope:rate=0.5", "unknown route 'POST /nope'"),
        ("POST /storage:rate=half", "bad value 'half' for rate"),
        ("POST /storage:rate=1.5", "rate must be between 0 and 1"),
        ("POST /storage:kind=explode", "kind must be one of status, delay, drop"),
        ("POST /storage:speed=2", "KEY one of rate, kind, status, retry_after, delay, times"),
        ("POST /storage:503", "expected KEY=VALUE"),
    ],
)
def test_a_bad_fault_flag_is_a_usage_error(
    fault: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A --fault the emulator cannot read stops it at once with exit 2 and a message that
    says what is wrong and what is accepted."""
    with pytest.raises(SystemExit) as stopped:
        emulator_main(["--fault", fault])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "python -m guru_async.testing: error: argument --fault: " in err
    assert message in err
