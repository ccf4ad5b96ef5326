"""Deterministic synthetic analysis results: reps, sprint details, joint trajectories, objects.

Everything is derived from a :class:`Plan`, which is itself a pure function of the emulator seed,
the uploaded content's digest and the video's metadata, so the same upload always yields the
same results and the joint trajectories agree with the reps.
"""

from __future__ import annotations

import json
import math
import random
from typing import Any

from attrs import frozen

from guru_async._enums import Activity

RESOLUTION_WIDTH = 720
RESOLUTION_HEIGHT = 1280
JOINTS = (
    "nose",
    "leftEye",
    "rightEye",
    "leftEar",
    "rightEar",
    "leftShoulder",
    "rightShoulder",
    "leftElbow",
    "rightElbow",
    "leftWrist",
    "rightWrist",
    "leftHip",
    "rightHip",
    "leftKnee",
    "rightKnee",
    "leftAnkle",
    "rightAnkle",
)
STANDING_KNEE_ANGLE = 176.0
_SHIN, _THIGH, _TORSO = 260.0, 260.0, 300.0
_ANKLE = (330.0, 1150.0)
# The right side sits a little behind the left in this side-on view.
_RIGHT_OFFSET = (12.0, 4.0)

# analysisType, scalar range, and whether Guru gives an opinion (good when below 90 degrees).
_METRICS: dict[Activity, tuple[str, float, float, bool]] = {
    Activity.SQUAT: ("HIP_KNEE_ANGLE_DEGREES", 65.0, 115.0, True),
    Activity.BODYWEIGHT_SQUAT: ("HIP_KNEE_ANGLE_DEGREES", 65.0, 115.0, True),
    Activity.LUNGE: ("HIP_KNEE_ANGLE_DEGREES", 65.0, 115.0, True),
    Activity.BURPEE: ("HIP_KNEE_ANGLE_DEGREES", 65.0, 115.0, True),
    Activity.PUSH_UP: ("ELBOW_ANGLE_DEGREES", 60.0, 120.0, False),
    Activity.BENCH_PRESS: ("ELBOW_ANGLE_DEGREES", 60.0, 120.0, False),
    Activity.CHIN_UP: ("ELBOW_ANGLE_DEGREES", 40.0, 100.0, False),
    Activity.PUNCH: ("ELBOW_ANGLE_DEGREES", 140.0, 180.0, False),
    Activity.DEADLIFT: ("HIP_ANGLE_DEGREES", 50.0, 110.0, False),
    Activity.CLEAN_AND_JERK: ("HIP_ANGLE_DEGREES", 50.0, 110.0, False),
    Activity.SNATCH: ("HIP_ANGLE_DEGREES", 50.0, 110.0, False),
    Activity.SIT_UP: ("HIP_ANGLE_DEGREES", 40.0, 100.0, False),
    Activity.KNEE_TO_CHEST: ("HIP_ANGLE_DEGREES", 30.0, 90.0, False),
    Activity.DOWNWARD_DOG: ("HIP_ANGLE_DEGREES", 60.0, 100.0, False),
    Activity.FRONT_KICK: ("KNEE_EXTENSION_ANGLE_DEGREES", 140.0, 180.0, False),
}
_DEFAULT_METRIC = _METRICS[Activity.SQUAT]


@frozen
class RepPlan:
    """One rep (or sprint stride): timestamps in ms and the knee angle at its deepest point."""

    start_ms: int
    mid_ms: int
    end_ms: int
    knee_angle: float


@frozen
class Plan:
    """Everything needed to render a video's results reproducibly."""

    seed_material: str
    activity: Activity | None
    video_seconds: float
    fps: float
    reps: tuple[RepPlan, ...]

    @property
    def frame_count(self) -> int:
        """The number of frames in the synthetic video."""
        return round(self.video_seconds * self.fps)

    def rng(self, purpose: str) -> random.Random:
        """A generator for one purpose, so adding a purpose never shifts another's values."""
        return random.Random(f"{self.seed_material}:{purpose}")


def default_rep_count(content_sha256: str) -> int:
    """The rep count used when the video has none: 3 to 8, from the content digest."""
    return 3 + int(content_sha256[:8], 16) % 6


def make_plan(
    *,
    seed: int,
    content_sha256: str,
    activity: Activity | None,
    rep_count: int,
    video_seconds: float,
    fps: float,
) -> Plan:
    """Lay out ``rep_count`` reps (strides for sprints) over the video."""
    material = f"{seed}:{content_sha256}"
    rng = random.Random(f"{material}:reps")
    total_ms = video_seconds * 1000.0
    reps: list[RepPlan] = []
    if activity is Activity.SPRINT:
        # Strides overlap (toe-off precedes the other foot's touch-down) like a real gait.
        period = min(260.0, 0.8 * total_ms / (rep_count + 1))
        start0 = 0.15 * total_ms
        for i in range(rep_count):
            start = start0 + i * period + rng.uniform(-0.05, 0.05) * period
            duration = period * rng.uniform(1.4, 1.6)
            reps.append(_rep(start, start + 0.45 * duration, start + duration, rng, 95, 130))
    else:
        segment = total_ms / max(rep_count, 1)
        for i in range(rep_count):
            start = i * segment + segment * rng.uniform(0.05, 0.15)
            end = (i + 1) * segment - segment * rng.uniform(0.05, 0.15)
            mid = start + (end - start) * rng.uniform(0.45, 0.55)
            reps.append(_rep(start, mid, end, rng, 65, 115))
    return Plan(material, activity, video_seconds, fps, tuple(reps))


def _rep(start: float, mid: float, end: float, rng: random.Random, lo: float, hi: float) -> RepPlan:
    return RepPlan(round(start), round(mid), round(end), round(rng.uniform(lo, hi), 2))


def analysis_reps(plan: Plan) -> list[dict[str, Any]]:
    """The ``reps`` list of Get Analysis (and of j2p's ``analysis``)."""
    if plan.activity is Activity.SPRINT:
        return _stride_reps(plan)
    metric, lo, hi, opinion = _METRICS.get(plan.activity or Activity.SQUAT, _DEFAULT_METRIC)
    rng = plan.rng("metric")
    reps = []
    for rep in plan.reps:
        # The knee metric is the one j2p can be checked against, so it is the planned angle.
        scalar = rep.knee_angle if opinion else round(rng.uniform(lo, hi), 2)
        analysis: dict[str, Any] = {"analysisType": metric, "analysisScalar": scalar}
        if opinion:
            analysis["analysisOpinion"] = "good" if scalar < 90 else "bad"
        reps.append(_rep_body(rep, [analysis]))
    return reps


def _rep_body(rep: RepPlan, analyses: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "startTimestampMs": rep.start_ms,
        "midTimestampMs": rep.mid_ms,
        "endTimestampMs": rep.end_ms,
        "analyses": analyses,
    }


def _stride_reps(plan: Plan) -> list[dict[str, Any]]:
    rng = plan.rng("strides")
    left_first = rng.random() < 0.5
    reps = []
    for i, rep in enumerate(plan.reps):
        air: float | None = None
        ground: float | None = None
        if i > 0:
            previous_end = plan.reps[i - 1].end_ms
            next_start = (
                plan.reps[i + 1].start_ms
                if i + 1 < len(plan.reps)
                else 2 * rep.start_ms - plan.reps[i - 1].start_ms
            )
            air = float(previous_end - rep.start_ms)
            ground = float(next_start - previous_end)
        values: list[tuple[str, float | None]] = [
            ("IS_LEFT_LEG", float((i % 2 == 0) == left_first)),
            ("STRIDE_AIR_TIME_MS", air),
            ("STRIDE_GROUND_TIME_MS", ground),
            ("STRIDE_PEAK_FLEXION_ANGLE", rep.knee_angle),
            ("STRIDE_PEAK_FLEXION_ANGLE_TIMESTAMP", float(rep.mid_ms)),
            ("STRIDE_PEAK_EXTENSION_ANGLE", round(rng.uniform(155.0, 178.0), 2)),
            (
                "STRIDE_PEAK_EXTENSION_ANGLE_TIMESTAMP",
                float(rep.start_ms + (rep.mid_ms - rep.start_ms) // 4),
            ),
        ]
        # The API reference spells the sprint scalar key this way; the emulator keeps it.
        analyses = [{"analysisType": kind, "anaylsisScalar": value} for kind, value in values]
        reps.append(_rep_body(rep, analyses))
    return reps


def sprint_details(plan: Plan) -> dict[str, Any]:
    """The sprint-only ``fieldMarkers`` and ``runnerProgress`` of Get Analysis."""
    rng = plan.rng("field")
    start_distance = -rng.uniform(1.0, 2.5)
    end_distance = 9.144 + rng.uniform(1.0, 3.0)
    frames = plan.frame_count

    def distance(frame: int) -> float:
        # A convex curve: the runner accelerates through the whole clip, never standing still.
        progress = frame / max(frames - 1, 1)
        return start_distance + (end_distance - start_distance) * float(progress**1.4)

    progress = [
        {
            "distanceFromStart": round(distance(frame), 4),
            "frameIndex": frame,
            "timestamp": round(frame / plan.fps * 1000.0, 3),
        }
        for frame in range(0, frames, 3)
    ]

    def marker(kind: str, x1: float, y1: float, x2: float, y2: float) -> dict[str, Any]:
        frame = rng.randrange(0, 6)
        return {
            "type": kind,
            "position": {"x1": x1, "y1": y1, "x2": x2, "y2": y2},
            "frame_idx": frame,
            "timestamp": round(frame / plan.fps * 1000.0, 3),
        }

    lines = {
        name: marker("YARD_LINE", x, 700.0, x + 40.0, 1100.0)
        for name, x in (("startLine", 130.0), ("middleLine", 340.0), ("finishLine", 550.0))
    }
    cones = [marker("CONE", x, 1080.0, x + 22.0, 1112.0) for x in (160.0, 580.0)]
    return {"fieldMarkers": {**lines, "cones": cones}, "runnerProgress": progress}


def knee_angle_at(plan: Plan, t_ms: float) -> float:
    """The interior knee angle of the synthetic skeleton at ``t_ms`` (176 when standing)."""
    for rep in plan.reps:
        if rep.start_ms <= t_ms <= rep.end_ms:
            return _rep_angle(rep, t_ms)
    return STANDING_KNEE_ANGLE


def _rep_angle(rep: RepPlan, t_ms: float) -> float:
    # Descend until mid, ascend after, so the deepest point lands exactly on midTimestampMs.
    if t_ms <= rep.mid_ms:
        phase = 0.5 * (t_ms - rep.start_ms) / max(rep.mid_ms - rep.start_ms, 1)
    else:
        phase = 0.5 + 0.5 * (t_ms - rep.mid_ms) / max(rep.end_ms - rep.mid_ms, 1)
    depth = math.sin(math.pi * min(max(phase, 0.0), 1.0))
    return STANDING_KNEE_ANGLE - depth * (STANDING_KNEE_ANGLE - rep.knee_angle)


def pose(knee_angle: float) -> list[tuple[float, float]]:
    """Pixel positions of the 17 joints (in :data:`JOINTS` order) for a squat at ``knee_angle``.

    The figure faces right: the shin leans forward and the thigh back so that the angle at the
    knee between hip and ankle is exactly ``knee_angle``; the torso leans forward to balance.
    """
    flex = math.radians(180.0 - knee_angle)
    shin_lean, thigh_lean, torso_lean = 0.4 * flex, 0.6 * flex, 0.45 * flex
    ax, ay = _ANKLE
    kx, ky = ax + _SHIN * math.sin(shin_lean), ay - _SHIN * math.cos(shin_lean)
    hx, hy = kx - _THIGH * math.sin(thigh_lean), ky - _THIGH * math.cos(thigh_lean)
    sx, sy = hx + _TORSO * math.sin(torso_lean), hy - _TORSO * math.cos(torso_lean)
    reach = flex / (math.pi / 2)
    ex, ey = sx + 40.0 + 60.0 * reach, sy + 120.0 - 60.0 * reach
    wx, wy = ex + 30.0 + 80.0 * reach, ey + 100.0 - 110.0 * reach
    nx, ny = sx + 35.0, sy - 95.0
    rx, ry = _RIGHT_OFFSET

    def pair(x: float, y: float) -> list[tuple[float, float]]:
        return [(x, y), (x + rx, y + ry)]

    return [
        (nx, ny),
        (nx - 10.0, ny - 12.0),
        (nx - 4.0, ny - 14.0),
        (nx - 45.0, ny - 5.0),
        (nx - 38.0, ny - 7.0),
        *pair(sx, sy),
        *pair(ex, ey),
        *pair(wx, wy),
        *pair(hx, hy),
        *pair(kx, ky),
        *pair(ax, ay),
    ]


def joint_data_body(plan: Plan) -> bytes:
    """The encoded Complete body of Get Joint Data: one frame per 1/fps for every joint."""
    rng = plan.rng("j2p")
    gauss, uniform = rng.gauss, rng.uniform
    points: list[list[dict[str, Any]]] = [[] for _ in JOINTS]
    for frame in range(plan.frame_count):
        seconds = frame / plan.fps
        positions = pose(knee_angle_at(plan, seconds * 1000.0))
        timestamp = round(seconds, 4)
        for joint, (x, y), frames in zip(JOINTS, positions, points, strict=True):
            frames.append(
                {
                    "frame_idx": frame,
                    "part": joint,
                    "position": {
                        "x": round(_clamp((x + gauss(0.0, 1.0)) / RESOLUTION_WIDTH), 4),
                        "y": round(_clamp((y + gauss(0.0, 1.0)) / RESOLUTION_HEIGHT), 4),
                    },
                    "score": round(uniform(0.82, 0.99), 3),
                    "timestamp": timestamp,
                }
            )
    body = {
        "status": "Complete",
        "resolutionHeight": RESOLUTION_HEIGHT,
        "resolutionWidth": RESOLUTION_WIDTH,
        "jointToPoints": dict(zip(JOINTS, points, strict=True)),
        "analysis": {"reps": analysis_reps(plan)},
    }
    return json.dumps(body, separators=(",", ":")).encode()


def objects(plan: Plan) -> list[dict[str, Any]]:
    """The ``objects`` of Get Video: one person with a handful of normalised bounding boxes."""
    boxes = []
    frames = plan.frame_count
    step = max(frames // 5, 1)
    # Offset by half a step so the boxes catch the figure at several depths, not only standing.
    for frame in range(step // 2, frames, step)[:5]:
        timestamp = frame / plan.fps * 1000.0
        positions = pose(knee_angle_at(plan, timestamp))
        xs = [x for x, _ in positions]
        ys = [y for _, y in positions]
        boxes.append(
            {
                "frameIndex": frame,
                "timestamp": round(timestamp, 3),
                "x1": round(_clamp((min(xs) - 30.0) / RESOLUTION_WIDTH), 4),
                "y1": round(_clamp((min(ys) - 40.0) / RESOLUTION_HEIGHT), 4),
                "x2": round(_clamp((max(xs) + 30.0) / RESOLUTION_WIDTH), 4),
                "y2": round(_clamp((max(ys) + 20.0) / RESOLUTION_HEIGHT), 4),
            }
        )
    return [{"objectType": "person", "boundingBoxes": boxes}]


def _clamp(value: float) -> float:
    return min(max(value, 0.0), 1.0)
