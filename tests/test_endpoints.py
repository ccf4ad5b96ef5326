"""Every endpoint against the emulator: what goes on the wire and what comes back."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from guru_async import (
    Activity,
    Analysis,
    AnalysisStatus,
    AnalysisTimeoutError,
    Domain,
    GuruSession,
    JointData,
    NotFoundError,
    PollPolicy,
    VideoStatus,
)
from guru_async.testing import (
    ANALYSIS_ROUTE,
    CREATE_ROUTE,
    GET_VIDEO_ROUTE,
    UNANALYZABLE_MARKER,
    UPDATE_ROUTE,
    FaultRule,
    GuruEmulator,
)
from tests.helpers import recorded_on, wait_until

UNKNOWN_ID = "0b8e4c1e-0000-4000-8000-000000000000"

VideoFile = Callable[..., Path]
StartEmulator = Callable[..., Awaitable[GuruEmulator]]
SessionFor = Callable[..., GuruSession]


async def test_create_video_body_on_the_wire(emulator: GuruEmulator, guru: GuruSession) -> None:
    """Create sends camelCase repCount, the activity's domain and the file's base name."""
    created = await guru.create_video(
        "some/folder/squat.mp4", size=1234, activity=Activity.SQUAT, rep_count=12, source="my-app"
    )
    (sent,) = recorded_on(emulator, CREATE_ROUTE)
    assert sent.json == {
        "filename": "squat.mp4",
        "size": 1234,
        "domain": "weightlifting",
        "activity": "squat",
        "repCount": 12,
        "source": "my-app",
    }
    assert created.id in emulator.videos
    assert created.url.startswith(emulator.storage_url)
    assert created.fields["key"] == f"uploads/{created.id}/squat.mp4"


async def test_create_video_omits_fields_not_given(
    emulator: GuruEmulator, guru: GuruSession
) -> None:
    """Fields the caller did not give are left out of the body, not sent as null."""
    await guru.create_video("clip.mp4", size=10)
    (sent,) = recorded_on(emulator, CREATE_ROUTE)
    assert sent.json == {"filename": "clip.mp4", "size": 10}


async def test_create_video_reads_the_size_from_a_path(
    emulator: GuruEmulator, guru: GuruSession, video_file: VideoFile
) -> None:
    """With a path and no size, the file's real size is sent."""
    path = video_file("lunge.mp4", size=12_345)
    await guru.create_video(path, activity="lunge")
    (sent,) = recorded_on(emulator, CREATE_ROUTE)
    assert sent.json == {
        "filename": "lunge.mp4",
        "size": 12_345,
        "domain": "calisthenics",
        "activity": "lunge",
    }


async def test_get_video_before_and_after_upload(
    emulator: GuruEmulator, guru: GuruSession, video_file: VideoFile
) -> None:
    """A video is Pending without a uri until uploaded, then Success with uri, fps and overlays."""
    path = video_file()
    created = await guru.create_video(path, activity="squat")
    before = await guru.get_video(created.id)
    assert before.status is VideoStatus.PENDING
    assert before.uri is None
    assert before.fps is None
    assert {name: o.status for name, o in before.overlays.items()} == {
        "skeleton": "Pending",
        "all": "Pending",
    }
    await guru.upload(created, path)
    await guru.await_analysis(created.id, timeout=10)
    after = await guru.get_video(created.id)
    assert after.status is VideoStatus.SUCCESS
    assert after.uri is not None
    assert after.uri.startswith(emulator.storage_url)
    assert after.fps == 30
    assert set(after.overlays) == {"skeleton", "all"}
    for overlay in after.overlays.values():
        assert overlay.status == "Complete"
        assert overlay.uri is not None
        assert overlay.uri.startswith(emulator.storage_url)
    assert after.analysis is None
    assert after.j2p is None


async def test_get_video_include_sends_one_query_value(
    emulator: GuruEmulator, guru: GuruSession, video_file: VideoFile
) -> None:
    """include= goes as one comma-separated value and the embedded models come back."""
    video_id = await guru.upload_video(video_file(), activity="squat", rep_count=4)
    await guru.await_analysis(video_id, timeout=10)
    video = await guru.get_video(video_id, include=["j2p", "analysis", "objects"])
    sent = recorded_on(emulator, GET_VIDEO_ROUTE)[-1]
    assert parse_qs(sent.query) == {"include": ["j2p,analysis,objects"]}
    assert video.analysis is not None
    assert video.analysis.status is AnalysisStatus.COMPLETE
    assert len(video.analysis.reps) == 4
    assert isinstance(video.j2p, JointData)
    assert len(video.j2p.joint_to_points) == 17
    assert video.objects is not None
    (person,) = video.objects
    assert person.object_type == "person"
    assert len(person.bounding_boxes) == 5
    for box in person.bounding_boxes:
        assert box.x1 is not None
        assert box.x2 is not None
        assert 0 <= box.x1 < box.x2 <= 1


async def test_update_video_sends_only_given_fields(
    emulator: GuruEmulator, guru: GuruSession, video_file: VideoFile
) -> None:
    """Update sends just the fields given, returns the id, and the new rep count takes effect."""
    video_id = await guru.upload_video(video_file(), activity="squat", rep_count=3)
    assert await guru.update_video(video_id, rep_count=6) == video_id
    assert await guru.update_video(video_id, activity="bodyweight_squat") == video_id
    first, second = recorded_on(emulator, UPDATE_ROUTE)
    assert first.json == {"repCount": 6}
    assert second.json == {"activity": "bodyweight_squat"}
    analysis = await guru.await_analysis(video_id, timeout=10)
    assert len(analysis.reps) == 6
    assert analysis.activity is Activity.BODYWEIGHT_SQUAT
    assert analysis.domain is Domain.CALISTHENICS


async def test_get_analysis_pending_then_complete(guru: GuruSession, video_file: VideoFile) -> None:
    """Analysis is Pending before upload and Complete after, with the expected reps."""
    path = video_file()
    created = await guru.create_video(path, activity="squat", rep_count=5)
    pending = await guru.get_analysis(created.id)
    assert pending.status is AnalysisStatus.PENDING
    assert pending.reps == []
    await guru.upload(created, path)
    await guru.await_analysis(created.id, timeout=10)
    analysis = await guru.get_analysis(created.id)
    assert analysis.status is AnalysisStatus.COMPLETE
    assert analysis.reason is None
    assert analysis.activity is Activity.SQUAT
    assert analysis.domain is Domain.WEIGHTLIFTING
    assert len(analysis.reps) == 5
    previous_end = -1.0
    for rep in analysis.reps:
        assert rep.start_timestamp_ms is not None
        assert rep.mid_timestamp_ms is not None
        assert rep.end_timestamp_ms is not None
        assert previous_end <= rep.start_timestamp_ms < rep.mid_timestamp_ms
        assert rep.mid_timestamp_ms < rep.end_timestamp_ms
        previous_end = rep.end_timestamp_ms
        (metric,) = rep.analyses
        assert metric.analysis_type == "HIP_KNEE_ANGLE_DEGREES"
        assert metric.analysis_scalar is not None
        assert 60 <= metric.analysis_scalar <= 120
        assert metric.analysis_opinion == ("good" if metric.analysis_scalar < 90 else "bad")


async def test_sprint_analysis_details(guru: GuruSession, video_file: VideoFile) -> None:
    """A sprint has field markers, monotonic runner progress and per-stride analyses."""
    analysis = await guru.analyze(video_file(), activity="sprint", rep_count=6, timeout=10)
    assert analysis.status is AnalysisStatus.COMPLETE
    assert analysis.domain is Domain.RUNNING
    markers = analysis.field_markers
    assert markers is not None
    lines = [markers.start_line, markers.middle_line, markers.finish_line]
    xs = []
    for line in lines:
        assert line is not None
        assert line.type == "YARD_LINE"
        assert line.position is not None
        assert line.frame_idx is not None
        xs.append(line.position.x1)
    assert xs == sorted(xs)
    assert markers.cones is not None
    assert len(markers.cones) == 2
    assert {cone.type for cone in markers.cones} == {"CONE"}

    progress = analysis.runner_progress
    assert progress is not None
    distances = [p.distance_from_start for p in progress if p.distance_from_start is not None]
    assert len(distances) == len(progress) > 10
    assert distances == sorted(distances)
    assert distances[0] < 0  # behind the start line at first
    frames = [p.frame_index for p in progress if p.frame_index is not None]
    assert frames == sorted(frames)
    assert len(frames) == len(progress)

    assert len(analysis.reps) == 6
    first, *later = (
        {a.analysis_type: a.analysis_scalar for a in rep.analyses} for rep in analysis.reps
    )
    assert first["STRIDE_AIR_TIME_MS"] is None
    assert first["STRIDE_GROUND_TIME_MS"] is None
    assert first["STRIDE_PEAK_FLEXION_ANGLE"] is not None
    for stride in later:
        # Read from the doc's misspelled "anaylsisScalar" key.
        assert stride["STRIDE_AIR_TIME_MS"] is not None
        assert stride["STRIDE_GROUND_TIME_MS"] is not None
        assert stride["IS_LEFT_LEG"] in (0.0, 1.0)
    legs = [
        {a.analysis_type: a.analysis_scalar for a in rep.analyses}["IS_LEFT_LEG"]
        for rep in analysis.reps
    ]
    assert all(a != b for a, b in itertools.pairwise(legs))  # legs alternate


async def test_get_joint_data(guru: GuruSession, video_file: VideoFile) -> None:
    """Joint data has 17 joints, one frame per 1/fps of the 10 s video, positions within 0..1."""
    video_id = await guru.upload_video(video_file(), activity="squat", rep_count=3)
    await guru.await_analysis(video_id, timeout=10)
    joints = await guru.get_joint_data(video_id)
    assert joints.status is AnalysisStatus.COMPLETE
    assert (joints.resolution_width, joints.resolution_height) == (720, 1280)
    assert len(joints.joint_to_points) == 17
    assert {"leftKnee", "rightAnkle", "nose"} <= set(joints.joint_to_points)
    for name, frames in joints.joint_to_points.items():
        assert len(frames) == 10 * 30
        assert [f.frame_idx for f in frames] == list(range(300))
        assert frames[30].timestamp == pytest.approx(1.0)
        for frame in frames:
            assert frame.part == name
            assert 0 <= frame.position.x <= 1
            assert 0 <= frame.position.y <= 1
            assert 0 <= frame.score <= 1
    assert joints.analysis is not None
    assert len(joints.analysis.reps) == 3


async def test_unknown_video_is_not_found(emulator: GuruEmulator, guru: GuruSession) -> None:
    """An unknown id raises NotFoundError with the status and body, without retrying."""
    with pytest.raises(NotFoundError) as caught:
        await guru.get_analysis(UNKNOWN_ID)
    assert caught.value.status == 404
    assert caught.value.body == {"message": "Video not found"}
    assert UNKNOWN_ID in str(caught.value)
    assert emulator.requests[ANALYSIS_ROUTE] == 1
    with pytest.raises(NotFoundError):
        await guru.get_video(UNKNOWN_ID)
    with pytest.raises(NotFoundError):
        await guru.get_joint_data(UNKNOWN_ID)
    with pytest.raises(NotFoundError):
        await guru.update_video(UNKNOWN_ID, rep_count=1)


async def test_await_analysis_returns_complete(guru: GuruSession, video_file: VideoFile) -> None:
    """await_analysis returns the Complete analysis once it is ready."""
    video_id = await guru.upload_video(video_file(), activity="push_up", rep_count=8)
    analysis = await guru.await_analysis(video_id, timeout=10)
    assert isinstance(analysis, Analysis)
    assert analysis.status is AnalysisStatus.COMPLETE
    assert analysis.activity is Activity.PUSH_UP
    assert len(analysis.reps) == 8
    assert analysis.reps[0].analyses[0].analysis_type == "ELBOW_ANGLE_DEGREES"


async def test_await_analysis_returns_failed(guru: GuruSession, video_file: VideoFile) -> None:
    """A video Guru cannot analyse comes back Failed with its reason, not as an exception (an
    empty one is refused before sending: tests/test_empty_videos.py)."""
    content = UNANALYZABLE_MARKER + b"\x00" * 4096
    video_id = await guru.upload_video(video_file(content=content), activity="squat")
    analysis = await guru.await_analysis(video_id, timeout=10)
    assert analysis.status is AnalysisStatus.FAILED
    assert analysis.reason == "LOW_QUALITY_POSE_ESTIMATE"
    assert analysis.reps == []


async def test_await_analysis_timeout(
    start_emulator: StartEmulator, session_for: SessionFor, video_file: VideoFile
) -> None:
    """Past the timeout, AnalysisTimeoutError names the video and the last Pending analysis."""
    emu = await start_emulator(analysis_delay=60.0)
    async with session_for(emu) as guru:
        video_id = await guru.upload_video(video_file(), activity="squat")
        started = time.monotonic()
        with pytest.raises(AnalysisTimeoutError) as caught:
            await guru.await_analysis(video_id, timeout=0.3)
        elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 1.5
    assert isinstance(caught.value, TimeoutError)
    assert caught.value.video_id == video_id
    assert caught.value.last is not None
    assert caught.value.last.status is AnalysisStatus.PENDING
    assert video_id in str(caught.value)
    assert emu.requests[ANALYSIS_ROUTE] >= 3


async def test_await_again_after_a_timeout(
    start_emulator: StartEmulator, session_for: SessionFor, video_file: VideoFile
) -> None:
    """A timed-out wait loses nothing: awaiting the same id again returns the analysis."""
    emu = await start_emulator(analysis_delay=0.8)
    async with session_for(emu) as guru:
        video_id = await guru.upload_video(video_file(), activity="squat", rep_count=2)
        with pytest.raises(AnalysisTimeoutError) as caught:
            await guru.await_analysis(video_id, timeout=0.1)
        analysis = await guru.await_analysis(caught.value.video_id, timeout=10)
    assert analysis.status is AnalysisStatus.COMPLETE
    assert len(analysis.reps) == 2
    assert emu.uploads_completed[video_id] == 1


async def test_transient_errors_do_not_end_the_wait(
    emulator: GuruEmulator, make_session: SessionFor, video_file: VideoFile
) -> None:
    """Three 503s on analysis polls (not retried: max_retries=0) do not stop await_analysis."""
    async with make_session(max_retries=0) as guru:
        video_id = await guru.upload_video(video_file(), activity="squat", rep_count=3)
        emulator.faults.add(FaultRule(route=ANALYSIS_ROUTE, rate=1.0, times=3, status=503))
        analysis = await guru.await_analysis(video_id, timeout=10)
    assert analysis.status is AnalysisStatus.COMPLETE
    assert len(analysis.reps) == 3
    assert emulator.faults.fired[ANALYSIS_ROUTE] == 3
    assert emulator.requests[ANALYSIS_ROUTE] >= 4


async def test_cancelling_await_analysis(
    start_emulator: StartEmulator, session_for: SessionFor, video_file: VideoFile
) -> None:
    """Cancelling await_analysis ends it promptly and leaves the session usable."""
    emu = await start_emulator(analysis_delay=60.0)
    async with session_for(emu) as guru:
        video_id = await guru.upload_video(video_file(), activity="squat")
        task = asyncio.create_task(guru.await_analysis(video_id, timeout=30))
        await wait_until(lambda: emu.requests[ANALYSIS_ROUTE] >= 2)
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - started < 0.5
        assert task.cancelled()
        analysis = await guru.get_analysis(video_id)
        assert analysis.status is AnalysisStatus.PENDING


async def test_analyze_end_to_end(
    emulator: GuruEmulator, guru: GuruSession, video_file: VideoFile
) -> None:
    """analyze() creates, uploads and waits: one create, one upload, a Complete analysis."""
    path = video_file("deadlift.mp4", size=200_000)
    sizes: list[tuple[int, int]] = []
    analysis = await guru.analyze(
        path,
        activity=Activity.DEADLIFT,
        rep_count=4,
        source="tests",
        progress=lambda *a: sizes.append(a),
    )
    assert analysis.status is AnalysisStatus.COMPLETE
    assert analysis.activity is Activity.DEADLIFT
    assert analysis.domain is Domain.WEIGHTLIFTING
    assert len(analysis.reps) == 4
    assert emulator.requests[CREATE_ROUTE] == 1
    (video_id,) = emulator.uploads_completed
    assert emulator.videos[video_id].source == "tests"
    assert emulator.stored_path(video_id).read_bytes() == path.read_bytes()
    assert sizes[-1] == (200_000, 200_000)


async def test_poll_count_follows_the_policy(
    start_emulator: StartEmulator, session_for: SessionFor, video_file: VideoFile
) -> None:
    """A 0.3 s analysis polled from 50 ms growing to 100 ms takes about 5 polls, not dozens."""
    emu = await start_emulator(analysis_delay=0.3)
    policy = PollPolicy(interval=0.05, max_interval=0.1)
    async with session_for(emu, poll_policy=policy) as guru:
        video_id = await guru.upload_video(video_file(), activity="squat")
        analysis = await guru.await_analysis(video_id, timeout=10)
    assert analysis.status is AnalysisStatus.COMPLETE
    # Waits of 0.05, 0.075, 0.1, 0.1 ... (±10%): polls near 0, .05, .125, .225, .325 s.
    assert 4 <= emu.requests[ANALYSIS_ROUTE] <= 7


async def test_await_analysis_timeout_bounds_a_slow_poll(
    emulator: GuruEmulator, make_session: SessionFor, video_file: VideoFile
) -> None:
    """A poll stuck in retries (the server keeps asking for Retry-After: 3) cannot stretch
    await_analysis past its timeout by more than the last poll's grace."""
    async with make_session() as guru:
        video_id = await guru.upload_video(video_file(), activity="squat")
        emulator.faults.add(FaultRule(route=ANALYSIS_ROUTE, rate=1.0, status=503, retry_after=3.0))
        started = time.monotonic()
        with pytest.raises(AnalysisTimeoutError):
            await guru.await_analysis(video_id, timeout=0.5)
        elapsed = time.monotonic() - started
    assert elapsed < 2.5  # timeout 0.5 s + 1 s grace, far below 4 retries x 3 s


async def test_update_video_with_nothing_to_change_is_refused(
    emulator: GuruEmulator, guru: GuruSession
) -> None:
    """update_video without any field raises ValueError and sends nothing."""
    with pytest.raises(ValueError, match="at least one of rep_count, domain, activity"):
        await guru.update_video("abc-123")
    assert emulator.requests[UPDATE_ROUTE] == 0
