"""Results as JSON (``to_dict``/``to_json`` and back) in the API's and the CLI's shape, and the
video id every Analysis the session returns carries (``analyze`` included)."""

from __future__ import annotations

import asyncio
import enum
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from guru_async import (
    Analysis,
    AnalysisStatus,
    GuruSession,
    JointData,
    Video,
    from_dict,
    from_json,
    to_dict,
    to_json,
)
from guru_async.testing import CREATE_ROUTE, GuruEmulator

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    """A small video file."""
    path = tmp_path / "squat.mp4"
    path.write_bytes(os.urandom(32 * 1024))
    return path


def _plain_json(value: Any) -> bool:
    """Whether ``value`` is made of exactly JSON's types (no enum member posing as a str)."""
    if type(value) is dict:
        return all(type(k) is str and _plain_json(v) for k, v in value.items())
    if type(value) is list:
        return all(_plain_json(v) for v in value)
    return value is None or type(value) in (str, int, float, bool)


async def _cli_json(emulator: GuruEmulator, tmp_path: Path, *args: str) -> Any:
    """Run ``guru-async --json ARGS`` against the emulator and parse what it prints."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GURU_")}
    env.update(
        GURU_BASE_URL=emulator.base_url,
        GURU_TOKEN_URL=emulator.token_url,
        GURU_CLIENT_ID=emulator.client_id,
        GURU_CLIENT_SECRET=emulator.client_secret,
        GURU_ASYNC_CACHE_DIR=str(tmp_path / "cache"),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "guru_async", "--json", *args),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, stderr.decode()
    return json.loads(stdout)


async def test_to_dict_is_the_api_and_cli_shape(
    emulator: GuruEmulator, guru: GuruSession, clip: Path, tmp_path: Path
) -> None:
    """to_dict gives what the CLI's --json prints: camelCase keys, enums as plain strings."""
    analysis = await guru.analyze(clip, activity="squat")
    assert analysis.video_id is not None
    data = to_dict(analysis)
    assert _plain_json(data)
    assert data["status"] == "Complete"
    assert type(data["status"]) is str
    assert (data["domain"], data["activity"], data["videoId"]) == (
        "weightlifting",
        "squat",
        analysis.video_id,
    )
    assert {"startTimestampMs", "midTimestampMs", "endTimestampMs", "analyses"} <= set(
        data["reps"][0]
    )
    assert "analysisType" in data["reps"][0]["analyses"][0]
    assert data == await _cli_json(emulator, tmp_path, "analysis", analysis.video_id)
    assert json.loads(to_json(analysis)) == data
    video = await guru.get_video(analysis.video_id, include=["analysis"])
    assert to_dict(video) == await _cli_json(
        emulator, tmp_path, "video", analysis.video_id, "--include", "analysis"
    )


async def test_models_read_back_from_their_json(guru: GuruSession, clip: Path) -> None:
    """from_dict and from_json give back an equal model, joint frames included, and leave
    the caller's data unchanged."""
    analysis = await guru.analyze(clip, activity="squat")
    assert analysis.video_id is not None
    joints = await guru.get_joint_data(analysis.video_id)
    video = await guru.get_video(analysis.video_id, include=["analysis", "j2p", "objects"])
    for model in (analysis, joints, video):
        data = to_dict(model)
        kept = json.dumps(data)
        assert from_dict(type(model), data) == model
        assert json.dumps(data) == kept
        assert from_json(type(model), to_json(model, indent=2)) == model


def test_bad_input_to_the_json_functions() -> None:
    """A non-model, a non-model class or data that does not fit raise clear typed errors."""
    with pytest.raises(
        TypeError, match=r"to_dict takes a guru_async model \(Analysis, Video, ...\), got dict"
    ):
        to_dict({"status": "Complete"})
    with pytest.raises(TypeError, match="model class"):
        from_dict(dict, {})
    with pytest.raises(ValueError, match=r"from_dict\(JointData\): .*expected an integer"):
        from_dict(JointData, {"resolutionHeight": "tall"})
    with pytest.raises(ValueError, match="not JSON"):
        from_json(Analysis, "{not json")
    with pytest.raises(ValueError, match="expected a JSON object"):
        from_json(Analysis, "[]")


async def test_every_analysis_knows_its_video(
    emulator: GuruEmulator, guru: GuruSession, clip: Path
) -> None:
    """analyze's Analysis carries the id of the video it made, as do get_analysis,
    await_analysis, a Video's and a JointData's analysis, and a batch's results."""
    analysis = await guru.analyze(clip, activity="squat")
    (video_id,) = emulator.upload_attempts
    assert analysis.video_id == video_id
    assert emulator.requests[CREATE_ROUTE] == 1
    assert await guru.get_analysis(video_id) == analysis
    assert await guru.await_analysis(video_id) == analysis
    video = await guru.get_video(video_id, include=["analysis", "j2p"])
    assert isinstance(video, Video)
    assert video.analysis is not None
    assert video.analysis.video_id == video_id
    assert video.j2p is not None
    assert video.j2p.analysis is not None
    assert video.j2p.analysis.video_id == video_id
    joints = await guru.get_joint_data(video_id)
    assert joints.analysis is not None
    assert joints.analysis.video_id == video_id
    (result,) = [r async for r in guru.batch_upload([clip], activity="squat")]
    assert result.analysis is not None
    assert result.analysis.video_id == result.video_id
    assert result.video_id != video_id


def test_video_id_is_optional_and_part_of_equality() -> None:
    """An Analysis made by hand has no video id; analyses of two videos are not equal."""
    done = Analysis(status=AnalysisStatus.COMPLETE)
    assert done.video_id is None
    assert "videoId" not in to_dict(done)
    assert Analysis(status=AnalysisStatus.COMPLETE, video_id="a") != Analysis(
        status=AnalysisStatus.COMPLETE, video_id="b"
    )
    assert isinstance(AnalysisStatus.COMPLETE, enum.Enum)
