"""The API's data, as frozen attrs classes with snake_case attributes.

The cattrs converter in ``_converter`` maps them from the wire's camelCase. Every field but the
few that identify a response is optional, so a field the server leaves out is ``None`` and a
field the server adds is ignored: a new server field never breaks a user.
"""

from __future__ import annotations

from attrs import field, frozen

from ._enums import Activity, AnalysisStatus, Domain, UnknownValue, VideoStatus


@frozen
class CreatedVideo:
    """A video created with Create Video, waiting for its content.

    Attributes:
        id: The video's id, used by every later call.
        url: The presigned storage URL the content is uploaded to.
        fields: The signed form fields that must go first, unchanged, in the upload.
    """

    id: str
    url: str = field(repr=False)  # presigned: the signature must not reach logs via repr
    fields: dict[str, str] = field(repr=False)


@frozen
class Overlay:
    """An overlay video (wireframe or full analytics) rendered for a video.

    Attributes:
        status: The overlay's build status as the server reports it.
        uri: Where to download it, once built.
    """

    status: str | None = None
    uri: str | None = field(default=None, repr=False)


@frozen
class RepAnalysis:
    """One insight about one rep, e.g. ``HIP_KNEE_ANGLE_DEGREES`` = 87.5, opinion ``good``.

    ``analysis_scalar`` is None where the API sends null (the first stride of a sprint has no
    air or ground time).
    """

    analysis_type: str
    analysis_scalar: float | None = None
    analysis_opinion: str | None = None


@frozen
class Rep:
    """One rep (or, for sprints, one stride) found in the video, with timestamps in ms."""

    start_timestamp_ms: float | None = None
    mid_timestamp_ms: float | None = None
    end_timestamp_ms: float | None = None
    analyses: list[RepAnalysis] = field(factory=list)


@frozen
class MarkerPosition:
    """A line segment (yard line) or a bounding box (cone), in unnormalised pixels."""

    x1: float
    y1: float
    x2: float
    y2: float


@frozen
class FieldMarker:
    """A yard line or cone detected on a sprint's field."""

    type: str | None = None
    position: MarkerPosition | None = None
    frame_idx: int | None = None
    timestamp: float | None = None


@frozen
class FieldMarkers:
    """Sprint field markers: the 0, 5 and 10 yard lines and any cones."""

    start_line: FieldMarker | None = None
    middle_line: FieldMarker | None = None
    finish_line: FieldMarker | None = None
    cones: list[FieldMarker] | None = None


@frozen
class RunnerProgress:
    """How far a sprinter has come (metres, negative before the start line) at a frame."""

    distance_from_start: float | None = None
    frame_index: int | None = None
    timestamp: float | None = None


@frozen
class Analysis:
    """The result of Get Analysis.

    Attributes:
        status: Pending, Complete or Failed (an unknown future status is kept as a string).
        reason: Why analysis failed, e.g. ``LOW_QUALITY_POSE_ESTIMATE``; None unless Failed.
        domain: The video's domain.
        activity: The video's activity.
        reps: The reps (or sprint strides) found, each with its analyses.
        field_markers: Sprint only: the yard lines and cones detected.
        runner_progress: Sprint only: distance over time.
        video_id: The video this is the analysis of. The API's answer does not carry it: the
            session sets it on every Analysis it returns (``get_analysis``,
            ``await_analysis``, ``analyze``, a batch's results, the analysis inside a Video or
            JointData), so ``analyze`` gives the id too. It is part of the model's JSON
            (``videoId``, see ``to_dict``) and of equality: analyses of two videos are not
            equal. None on an Analysis made by hand, or read from JSON without it.
    """

    status: AnalysisStatus | UnknownValue | None = None
    reason: str | None = None
    domain: Domain | UnknownValue | None = None
    activity: Activity | UnknownValue | None = None
    reps: list[Rep] = field(factory=list)
    field_markers: FieldMarkers | None = None
    runner_progress: list[RunnerProgress] | None = None
    video_id: str | None = field(default=None, kw_only=True)

    @property
    def is_done(self) -> bool:
        """True once the analysis is Complete or Failed (nothing more will change)."""
        return self.status in (AnalysisStatus.COMPLETE, AnalysisStatus.FAILED)


# Point and JointFrame keep a __dict__ (no slots): a 60 s video has ~30,000 frames, and the
# converter builds them by adopting the parsed JSON dicts as their __dict__, which is several
# times faster than calling __init__ per frame.
@frozen(slots=False)
class Point:
    """A joint position, each coordinate normalised to 0..1 of the frame."""

    x: float
    y: float


@frozen(slots=False)
class JointFrame:
    """One joint in one frame: where it is and how confident the model is."""

    frame_idx: int
    part: str
    position: Point
    score: float
    timestamp: float


@frozen
class JointData:
    """The result of Get Joint Data: per-joint trajectories plus the rep analysis.

    Attributes:
        joint_to_points: Joint name (e.g. ``leftKnee``) to its frames in order.
    """

    status: AnalysisStatus | UnknownValue | None = None
    reason: str | None = None
    resolution_height: int | None = None
    resolution_width: int | None = None
    joint_to_points: dict[str, list[JointFrame]] = field(factory=dict, repr=False)
    analysis: Analysis | None = None


@frozen
class BoundingBox:
    """Where a detected object is at one frame."""

    frame_index: int | None = None
    timestamp: float | None = None
    x1: float | None = None
    y1: float | None = None
    x2: float | None = None
    y2: float | None = None


@frozen
class DetectedObject:
    """An object detected in the video (Get Video with ``include=["objects"]``)."""

    object_type: str | None = None
    bounding_boxes: list[BoundingBox] = field(factory=list)


@frozen
class Video:
    """The result of Get Video.

    Attributes:
        status: Pending until the content is uploaded, then Success (or Failed).
        reason: Why the video failed; None unless Failed.
        uri: Where the raw video can be downloaded (presigned; hidden from repr).
        overlays: Overlay type (``skeleton``, ``all``) to its status and uri.
        fps: The uploaded video's frame rate.
        analysis: Present when ``include`` had ``analysis``.
        j2p: Present when ``include`` had ``j2p``.
        objects: Present when ``include`` had ``objects``.
    """

    status: VideoStatus | UnknownValue | None = None
    reason: str | None = None
    uri: str | None = field(default=None, repr=False)
    overlays: dict[str, Overlay] = field(factory=dict)
    fps: float | None = None
    analysis: Analysis | None = None
    j2p: JointData | None = field(default=None, repr=False)
    objects: list[DetectedObject] | None = field(default=None, repr=False)


MODELS: frozenset[type] = frozenset(
    {
        Analysis,
        BoundingBox,
        CreatedVideo,
        DetectedObject,
        FieldMarker,
        FieldMarkers,
        JointData,
        JointFrame,
        MarkerPosition,
        Overlay,
        Point,
        Rep,
        RepAnalysis,
        RunnerProgress,
        Video,
    }
)
"""The public models: what ``to_dict``/``from_dict`` and friends take."""
