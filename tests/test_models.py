"""The cattrs converter: the API's JSON into models, forward compatible, failing only as
ResponseDecodeError."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guru_async import (
    Activity,
    Analysis,
    AnalysisStatus,
    BoundingBox,
    CreatedVideo,
    DetectedObject,
    Domain,
    FieldMarker,
    FieldMarkers,
    JointData,
    JointFrame,
    MarkerPosition,
    Overlay,
    Point,
    Rep,
    RepAnalysis,
    ResponseDecodeError,
    RunnerProgress,
    Video,
    VideoStatus,
)
from guru_async._converter import structure

# The "Get Analysis" response example of guru-api.md, verbatim.
GET_ANALYSIS_EXAMPLE = """
{
    "status": "Complete",
    "domain": "weightlifting",
    "activity": "squat",
    "reps": [
        {
            "startTimestampMs": 123,
            "midTimestampMs": 456,
            "endTimestampMs": 789,
            "analyses": [
                {
                    "analysisType": "HIP_KNEE_ANGLE_DEGREES",
                    "analysisScalar": 12.34
                }
            ]
        }
    ]
}
"""

# The "Get Joint Data" example of guru-api.md, with its "[...]" placeholders left out.
GET_JOINT_DATA_EXAMPLE = """
{
  "status": "Complete",
  "resolutionHeight": 1280,
  "resolutionWidth": 720,
  "jointToPoints": {
    "leftAnkle": [{
        "frame_idx": 0,
        "part": "leftAnkle",
        "position": {
          "x": 0.4,
          "y": 0.7
        },
        "score": 0.8,
        "timestamp": 0
      },
      {
        "frame_idx": 4,
        "part": "leftAnkle",
        "position": {
          "x": 0.5,
          "y": 0.75
        },
        "score": 0.86,
        "timestamp": 0.1
      }
    ]
  },
  "analysis": {
    "reps": [{
      "startTimestampMs": 123,
      "midTimestampMs": 456,
      "endTimestampMs": 789,
      "analyses": [{
        "analysisType": "HIP_KNEE_ANGLE_DEGREES",
        "analysisScalar": 12.34
      }]
    }]
  }
}
"""

MODELS: list[type[Any]] = [
    CreatedVideo,
    Overlay,
    RepAnalysis,
    Rep,
    MarkerPosition,
    FieldMarker,
    FieldMarkers,
    RunnerProgress,
    Analysis,
    Point,
    JointFrame,
    JointData,
    BoundingBox,
    DetectedObject,
    Video,
]


def _decode(data: Any, cls: type[Any]) -> Any:
    return structure(data, cls, what="test")


def test_get_analysis_example() -> None:
    """The doc's Get Analysis example becomes an Analysis with exactly its values."""
    analysis = _decode(json.loads(GET_ANALYSIS_EXAMPLE), Analysis)
    assert analysis == Analysis(
        status=AnalysisStatus.COMPLETE,
        domain=Domain.WEIGHTLIFTING,
        activity=Activity.SQUAT,
        reps=[
            Rep(
                start_timestamp_ms=123,
                mid_timestamp_ms=456,
                end_timestamp_ms=789,
                analyses=[
                    RepAnalysis(analysis_type="HIP_KNEE_ANGLE_DEGREES", analysis_scalar=12.34)
                ],
            )
        ],
    )
    assert analysis.status is AnalysisStatus.COMPLETE
    assert analysis.is_done
    assert analysis.reason is None
    assert analysis.field_markers is None
    assert analysis.runner_progress is None


def test_get_joint_data_example() -> None:
    """The doc's Get Joint Data example becomes JointData with exactly its values."""
    joints = _decode(json.loads(GET_JOINT_DATA_EXAMPLE), JointData)
    assert joints.status is AnalysisStatus.COMPLETE
    assert (joints.resolution_height, joints.resolution_width) == (1280, 720)
    assert joints.joint_to_points == {
        "leftAnkle": [
            JointFrame(
                frame_idx=0, part="leftAnkle", position=Point(0.4, 0.7), score=0.8, timestamp=0
            ),
            JointFrame(
                frame_idx=4, part="leftAnkle", position=Point(0.5, 0.75), score=0.86, timestamp=0.1
            ),
        ]
    }
    assert joints.analysis is not None
    assert joints.analysis.status is None
    (rep,) = joints.analysis.reps
    assert (rep.start_timestamp_ms, rep.mid_timestamp_ms, rep.end_timestamp_ms) == (123, 456, 789)
    assert rep.analyses == [RepAnalysis("HIP_KNEE_ANGLE_DEGREES", 12.34)]


def test_sprint_fields_and_misspelled_scalar() -> None:
    """Sprint fields map from camelCase and the doc's "anaylsisScalar" fills analysis_scalar."""
    analysis = _decode(
        {
            "status": "Complete",
            "activity": "sprint",
            "fieldMarkers": {
                "startLine": {
                    "type": "YARD_LINE",
                    "position": {"x1": 1, "y1": 2, "x2": 3.5, "y2": 4},
                    "frame_idx": 7,
                    "timestamp": 233.3,
                },
                "cones": [],
            },
            "runnerProgress": [{"distanceFromStart": -1, "frameIndex": 30, "timestamp": 1000}],
            "reps": [
                {
                    "analyses": [
                        {"analysisType": "STRIDE_AIR_TIME_MS", "anaylsisScalar": None},
                        {"analysisType": "IS_LEFT_LEG", "anaylsisScalar": 1},
                    ]
                }
            ],
        },
        Analysis,
    )
    assert analysis.activity is Activity.SPRINT
    assert analysis.field_markers == FieldMarkers(
        start_line=FieldMarker("YARD_LINE", MarkerPosition(1, 2, 3.5, 4), 7, 233.3), cones=[]
    )
    assert analysis.runner_progress == [RunnerProgress(-1, 30, 1000)]
    assert [a.analysis_scalar for a in analysis.reps[0].analyses] == [None, 1]


def test_video_model() -> None:
    """Get Video's body maps overlays, fps, uri and embedded objects."""
    video = _decode(
        {
            "status": "Success",
            "uri": "https://storage/x.mp4?sig=1",
            "fps": 29.97,
            "overlays": {
                "skeleton": {"status": "Pending"},
                "all": {"status": "Complete", "uri": "u"},
            },
            "objects": [{"objectType": "person", "boundingBoxes": [{"frameIndex": 1, "x1": 0.1}]}],
        },
        Video,
    )
    assert video.status is VideoStatus.SUCCESS
    assert video.fps == 29.97
    assert video.uri == "https://storage/x.mp4?sig=1"
    assert video.overlays == {"skeleton": Overlay("Pending"), "all": Overlay("Complete", "u")}
    assert video.objects == [DetectedObject("person", [BoundingBox(frame_index=1, x1=0.1)])]
    assert video.analysis is None
    assert video.j2p is None


def test_unknown_fields_are_ignored() -> None:
    """Fields the SDK does not know, at any depth, are ignored."""
    analysis = _decode(
        {
            "status": "Pending",
            "newTopLevelThing": {"nested": [1, 2]},
            "reps": [{"analyses": [{"analysisType": "X", "confidence": 0.5}], "extra": True}],
        },
        Analysis,
    )
    assert analysis == Analysis(
        status=AnalysisStatus.PENDING, reps=[Rep(analyses=[RepAnalysis("X")])]
    )


def test_unknown_enum_values_are_kept_as_strings() -> None:
    """An enum value newer than the SDK is kept as the plain string."""
    analysis = _decode(
        {"status": "Queued", "domain": "acrobatics", "activity": "handstand"}, Analysis
    )
    assert analysis.activity == "handstand"
    assert type(analysis.activity) is str
    assert analysis.domain == "acrobatics"
    assert analysis.status == "Queued"
    assert not analysis.is_done
    video = _decode({"status": "Archived"}, Video)
    assert video.status == "Archived"
    assert type(video.status) is str


def test_missing_optional_fields_are_none() -> None:
    """An empty object is a valid Analysis, Video or JointData with every optional field unset."""
    assert _decode({}, Analysis) == Analysis(
        status=None, reason=None, domain=None, activity=None, reps=[]
    )
    assert _decode({}, Video) == Video(status=None, uri=None, overlays={}, fps=None)
    joints = _decode({}, JointData)
    assert joints.joint_to_points == {}
    assert joints.resolution_width is None
    assert joints.analysis is None


_FRAME = {
    "frame_idx": 0,
    "part": "nose",
    "position": {"x": 0.1, "y": 0.2},
    "score": 1,
    "timestamp": 0,
}


@pytest.mark.parametrize(
    ("data", "cls"),
    [
        pytest.param({"status": 5}, Analysis, id="number-for-enum"),
        pytest.param({"reason": ["LOW"]}, Analysis, id="list-for-str"),
        pytest.param({"reps": [{"startTimestampMs": "123"}]}, Analysis, id="str-for-number"),
        pytest.param(
            {"reps": [{"analyses": [{"analysisScalar": 1.0}]}]}, Analysis, id="required-missing"
        ),
        pytest.param(
            {"reps": [{"analyses": [{"analysisType": "X", "analysisScalar": "12"}]}]},
            Analysis,
            id="str-for-scalar",
        ),
        pytest.param({"reps": [None]}, Analysis, id="null-rep"),
        pytest.param({"reps": 3}, Analysis, id="number-for-list"),
        pytest.param({"reps": "none"}, Analysis, id="str-for-list"),
        pytest.param({"reps": ["rep"]}, Analysis, id="str-for-rep"),
        pytest.param({"reps": [[]]}, Analysis, id="list-for-rep"),
        pytest.param({"fieldMarkers": "abc"}, Analysis, id="str-for-field-markers"),
        pytest.param({"fps": "30"}, Video, id="str-for-fps"),
        pytest.param({"fps": True}, Video, id="bool-for-fps"),
        pytest.param({"overlays": []}, Video, id="list-for-overlays"),
        pytest.param({"overlays": {"all": "Complete"}}, Video, id="str-for-overlay"),
        pytest.param({"analysis": "Complete"}, Video, id="str-for-analysis"),
        pytest.param({"resolutionWidth": 720.5}, JointData, id="fraction-for-int"),
        pytest.param({"jointToPoints": {"nose": {"frame_idx": 0}}}, JointData, id="dict-frames"),
        pytest.param({"jointToPoints": {"nose": [{"frame_idx": 0}]}}, JointData, id="short-frame"),
        pytest.param({"jointToPoints": {"nose": ["frame"]}}, JointData, id="str-frame"),
        pytest.param(
            {"jointToPoints": {"nose": [{**_FRAME, "position": {"x": "0.1", "y": 0.2}}]}},
            JointData,
            id="str-for-x",
        ),
        pytest.param({"id": "abc", "url": "https://x"}, CreatedVideo, id="fields-missing"),
        pytest.param(
            {"id": "abc", "url": "https://x", "fields": {"key": 1}}, CreatedVideo, id="int-field"
        ),
        pytest.param({"id": 12, "url": "https://x", "fields": {}}, CreatedVideo, id="int-id"),
        pytest.param([], Analysis, id="top-level-list"),
        pytest.param("Complete", Analysis, id="top-level-str"),
        pytest.param(None, Video, id="top-level-null"),
    ],
)
def test_wrong_shapes_raise_response_decode_error(data: Any, cls: type[Any]) -> None:
    """A body of the wrong shape or types raises ResponseDecodeError naming the model."""
    with pytest.raises(ResponseDecodeError) as caught:
        structure(data, cls, what="Get thing", status=200)
    assert str(caught.value).startswith("Get thing: ")
    assert caught.value.status == 200


def test_whole_float_is_accepted_as_an_integer() -> None:
    """JSON has one number type: 720.0 is a valid integer resolution, 30 a valid float fps."""
    joints = _decode({"resolutionWidth": 720.0, "resolutionHeight": 1280}, JointData)
    assert joints.resolution_width == 720
    assert type(joints.resolution_width) is int
    assert _decode({"fps": 30}, Video).fps == 30


# -- property tests -----------------------------------------------------------------------------

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
    | st.sampled_from(["Complete", "Pending", "squat", "weightlifting", "YARD_LINE"])
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def _wire_name(name: str) -> str:
    if name == "frame_idx":
        return name
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _shaped(cls: type[Any], depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    """Dicts with the model's wire keys (some missing, some extra), each value random or shaped."""
    values: dict[str, st.SearchStrategy[Any]] = {}
    for field in attrs.fields(cls):
        value = JSON_VALUES
        if depth < 2:
            nested = [m for m in MODELS if m.__name__ in str(field.type)]
            for model in nested:
                shaped = _shaped(model, depth + 1)
                value = value | shaped | st.lists(shaped, max_size=3)
                value = value | st.dictionaries(st.text(max_size=8), shaped, max_size=2)
        values[_wire_name(field.name)] = value
    if cls is RepAnalysis:
        values["anaylsisScalar"] = JSON_VALUES
    known = st.fixed_dictionaries({}, optional=values)
    unknown = st.dictionaries(st.text(max_size=8), JSON_SCALARS, max_size=2)
    return st.tuples(unknown, known).map(lambda pair: {**pair[0], **pair[1]})


SHAPED = {cls: _shaped(cls) for cls in MODELS}


def _structures_or_decode_error(data: Any, cls: type[Any]) -> None:
    result: object
    try:
        result = structure(data, cls, what="property")
    except ResponseDecodeError as exc:
        result = exc
    if isinstance(result, ResponseDecodeError):
        assert str(result).startswith("property: ")
    else:
        assert isinstance(result, cls)


@settings(max_examples=200, deadline=None, database=None)
@given(cls=st.sampled_from(MODELS), data=JSON_VALUES)
def test_arbitrary_json_gives_a_model_or_decode_error(cls: type[Any], data: Any) -> None:
    """Any JSON value structured into any model gives that model or ResponseDecodeError."""
    _structures_or_decode_error(data, cls)


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data(), cls=st.sampled_from(MODELS))
def test_model_shaped_json_gives_a_model_or_decode_error(
    data: st.DataObject, cls: type[Any]
) -> None:
    """Dicts with a model's wire keys and random values give that model or ResponseDecodeError."""
    _structures_or_decode_error(data.draw(SHAPED[cls]), cls)


def test_null_lists_and_objects_read_as_empty() -> None:
    """A server sending null for an empty list or object (reps, analyses, overlays, joints)
    still gives a model, not a decode error."""
    analysis = structure(
        {"status": "Failed", "reason": "LOW_QUALITY_POSE_ESTIMATE", "reps": None},
        Analysis,
        what="t",
    )
    assert analysis.status is AnalysisStatus.FAILED
    assert analysis.reps == []
    rep = structure({"analyses": None}, Rep, what="t")
    assert rep.analyses == []
    video = structure({"status": "Success", "overlays": None}, Video, what="t")
    assert video.overlays == {}
    joints = structure({"status": "Complete", "jointToPoints": None}, JointData, what="t")
    assert joints.joint_to_points == {}
