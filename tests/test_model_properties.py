"""Property tests of the cattrs converter: any JSON either becomes a well-typed model or raises
ResponseDecodeError, and every model survives a trip through its own wire JSON."""

from __future__ import annotations

import copy
import enum
import functools
import json
import types
import typing
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
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
    from_dict,
    from_json,
    to_dict,
    to_json,
)
from guru_async._converter import _camel, decode_json, structure
from guru_async._converter import to_json as wire_json

MODELS: list[type] = [
    CreatedVideo,
    Video,
    Overlay,
    Analysis,
    Rep,
    RepAnalysis,
    FieldMarkers,
    FieldMarker,
    MarkerPosition,
    RunnerProgress,
    JointData,
    JointFrame,
    Point,
    BoundingBox,
    DetectedObject,
]
MODEL_IDS = [m.__name__ for m in MODELS]
SETTINGS = settings(max_examples=150, deadline=None)

for _model in MODELS:
    attrs.resolve_types(_model)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.text(max_size=12), children, max_size=5),
    ),
    max_leaves=30,
)
small_json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=2) | st.dictionaries(st.text(max_size=4), children, max_size=2)
    ),
    max_leaves=4,
)


def conforms(value: Any, tp: Any) -> bool:
    """Whether ``value`` has exactly the annotated type (a bool is not a number here)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(conforms(value, arg) for arg in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if isinstance(tp, typing.NewType):  # UnknownValue: a plain str at runtime
        return conforms(value, tp.__supertype__)
    if tp is str:
        return type(value) is str
    if tp is int:
        return type(value) is int
    if tp is float:
        return type(value) in (int, float)
    if tp is bool:
        return type(value) is bool
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return isinstance(value, tp)
    if origin is list:
        (item,) = typing.get_args(tp)
        return type(value) is list and all(conforms(v, item) for v in value)
    if origin is dict:
        key, item = typing.get_args(tp)
        return type(value) is dict and all(
            conforms(k, key) and conforms(v, item) for k, v in value.items()
        )
    if attrs.has(tp):
        return type(value) is tp and all(
            conforms(getattr(value, f.name), f.type) for f in attrs.fields(tp)
        )
    raise AssertionError(f"no rule for {tp!r}")


def check_outcome(data: Any, cls: type) -> None:
    """Structuring ends in a model of exactly the annotated types, or in ResponseDecodeError."""
    try:
        result = structure(data, cls, what="Property check", status=200)
    except ResponseDecodeError as exc:
        error: ResponseDecodeError | None = exc
    else:
        error = None
        assert conforms(result, cls), repr(result)
    if error is not None:
        assert str(error).startswith("Property check: ")
        assert error.status == 200


@SETTINGS
@given(data=json_values | st.dictionaries(st.text(max_size=12), json_values, max_size=8))
def test_any_json_is_a_model_or_a_decode_error(data: Any) -> None:
    """Arbitrary JSON values, fed into every model class, give a well-typed instance or
    ResponseDecodeError, nothing else."""
    for cls in MODELS:
        check_outcome(copy.deepcopy(data), cls)


# -- shaped input: the real wire keys, random values -------------------------------------------


def wire_keys(cls: type) -> dict[str, Any]:
    """Wire key to attrs field type (the doc's misspelling of analysisScalar included)."""
    keys = {_camel(f.name): f.type for f in attrs.fields(cls)}
    if cls is JointData:
        keys["jointToPoints"] = keys.pop("jointToPoints")
    if cls is RepAnalysis:
        keys["anaylsisScalar"] = keys["analysisScalar"]
    return keys


def shaped_value(tp: Any) -> st.SearchStrategy[Any]:
    """Mostly well-shaped values for ``tp``, sometimes any JSON at all."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        well = st.one_of(*(shaped_value(arg) for arg in typing.get_args(tp)))
    elif tp is type(None):
        well = st.none()
    elif isinstance(tp, type) and issubclass(tp, enum.Enum):
        well = st.sampled_from([m.value for m in tp])
    elif tp is bool:
        well = st.booleans()
    elif tp is int:
        well = st.integers(min_value=-(2**53), max_value=2**53)
    elif tp is float:
        well = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-1000, 1000)
    elif tp is str or isinstance(tp, typing.NewType):  # UnknownValue is a plain str
        well = st.text(max_size=10)
    elif origin is list:
        (item,) = typing.get_args(tp)
        well = st.lists(shaped_value(item), max_size=2)
    elif origin is dict:
        _, item = typing.get_args(tp)
        well = st.dictionaries(st.text(max_size=8), shaped_value(item), max_size=2)
    elif attrs.has(tp):
        well = st.deferred(lambda: shaped(tp))
    else:
        raise AssertionError(f"no strategy for {tp!r}")
    return st.one_of(well, well, well, scalars, small_json_values)


@functools.cache
def shaped(cls: type) -> st.SearchStrategy[dict[str, Any]]:
    """A dict with (some of) ``cls``'s wire keys and mostly plausible values."""
    keys = wire_keys(cls)
    return st.fixed_dictionaries(
        {}, optional={key: shaped_value(tp) for key, tp in keys.items()}
    ) | st.fixed_dictionaries({key: shaped_value(tp) for key, tp in keys.items()})


@pytest.mark.parametrize("cls", MODELS, ids=MODEL_IDS)
@SETTINGS
@given(data=st.data())
def test_shaped_json_is_a_model_or_a_decode_error(cls: type, data: st.DataObject) -> None:
    """Dicts with the real wire keys and random-typed values give a well-typed instance or
    ResponseDecodeError."""
    check_outcome(data.draw(shaped(cls)), cls)


@SETTINGS
@given(
    frame=st.fixed_dictionaries(
        {
            "frame_idx": st.integers(0, 10_000),
            "part": st.sampled_from(["leftKnee", "rightHip"]),
            "position": st.fixed_dictionaries(
                {
                    "x": st.floats(0, 1) | st.booleans(),
                    "y": st.floats(0, 1) | st.booleans(),
                }
            ),
            "score": st.floats(0, 1) | st.booleans(),
            "timestamp": st.floats(0, 100) | st.booleans(),
        }
    )
)
def test_joint_frames_take_numbers_not_booleans(frame: dict[str, Any]) -> None:
    """A joint frame's numbers must be numbers: true/false where a number belongs is an error,
    on the fast path for full frames as on the checked path."""
    check_outcome({"jointToPoints": {"leftKnee": [frame]}}, JointData)


# -- round trip --------------------------------------------------------------------------------

texts = st.text(max_size=12)
numbers = st.floats(allow_nan=False, allow_infinity=False, width=64) | st.integers(-(10**6), 10**6)
opt_numbers = st.none() | numbers
opt_ints = st.none() | st.integers(-(2**31), 2**31)


def enum_or_text(cls: type[enum.Enum]) -> st.SearchStrategy[Any]:
    return st.none() | st.sampled_from(list(cls)) | texts


points = st.builds(Point, x=numbers, y=numbers)
frames = st.builds(
    JointFrame,
    frame_idx=st.integers(0, 10**6),
    part=texts,
    position=points,
    score=numbers,
    timestamp=numbers,
)
rep_analyses = st.builds(
    RepAnalysis,
    analysis_type=texts,
    analysis_scalar=opt_numbers,
    analysis_opinion=st.none() | texts,
)
reps = st.builds(
    Rep,
    start_timestamp_ms=opt_numbers,
    mid_timestamp_ms=opt_numbers,
    end_timestamp_ms=opt_numbers,
    analyses=st.lists(rep_analyses, max_size=3),
)
marker_positions = st.builds(MarkerPosition, x1=numbers, y1=numbers, x2=numbers, y2=numbers)
field_marker = st.builds(
    FieldMarker,
    type=st.none() | texts,
    position=st.none() | marker_positions,
    frame_idx=opt_ints,
    timestamp=opt_numbers,
)
field_markers = st.builds(
    FieldMarkers,
    start_line=st.none() | field_marker,
    middle_line=st.none() | field_marker,
    finish_line=st.none() | field_marker,
    cones=st.none() | st.lists(field_marker, max_size=3),
)
runner_progress = st.builds(
    RunnerProgress, distance_from_start=opt_numbers, frame_index=opt_ints, timestamp=opt_numbers
)
analyses = st.builds(
    Analysis,
    status=enum_or_text(AnalysisStatus),
    reason=st.none() | texts,
    domain=enum_or_text(Domain),
    activity=enum_or_text(Activity),
    reps=st.lists(reps, max_size=3),
    field_markers=st.none() | field_markers,
    runner_progress=st.none() | st.lists(runner_progress, max_size=3),
    video_id=st.none() | texts,
)
joint_data = st.builds(
    JointData,
    status=enum_or_text(AnalysisStatus),
    reason=st.none() | texts,
    resolution_height=opt_ints,
    resolution_width=opt_ints,
    joint_to_points=st.dictionaries(texts, st.lists(frames, max_size=3), max_size=3),
    analysis=st.none() | analyses,
)
overlays = st.builds(Overlay, status=st.none() | texts, uri=st.none() | texts)
boxes = st.builds(
    BoundingBox,
    frame_index=opt_ints,
    timestamp=opt_numbers,
    x1=opt_numbers,
    y1=opt_numbers,
    x2=opt_numbers,
    y2=opt_numbers,
)
objects = st.builds(
    DetectedObject, object_type=st.none() | texts, bounding_boxes=st.lists(boxes, max_size=3)
)
videos = st.builds(
    Video,
    status=enum_or_text(VideoStatus),
    reason=st.none() | texts,
    uri=st.none() | texts,
    overlays=st.dictionaries(texts, overlays, max_size=3),
    fps=opt_numbers,
    analysis=st.none() | analyses,
    j2p=st.none() | joint_data,
    objects=st.none() | st.lists(objects, max_size=3),
)
created = st.builds(
    CreatedVideo, id=texts, url=texts, fields=st.dictionaries(texts, texts, max_size=4)
)
MODEL_STRATEGIES: dict[type, st.SearchStrategy[Any]] = {
    CreatedVideo: created,
    Video: videos,
    Overlay: overlays,
    Analysis: analyses,
    Rep: reps,
    RepAnalysis: rep_analyses,
    FieldMarkers: field_markers,
    FieldMarker: field_marker,
    MarkerPosition: marker_positions,
    RunnerProgress: runner_progress,
    JointData: joint_data,
    JointFrame: frames,
    Point: points,
    BoundingBox: boxes,
    DetectedObject: objects,
}


def test_every_model_has_a_round_trip_strategy() -> None:
    """The round-trip test covers every model class."""
    assert set(MODEL_STRATEGIES) == set(MODELS)


@pytest.mark.parametrize("cls", MODELS, ids=MODEL_IDS)
@SETTINGS
@given(data=st.data())
def test_wire_json_round_trip(cls: type, data: st.DataObject) -> None:
    """to_json(model) read back through the converter equals the model."""
    model = data.draw(MODEL_STRATEGIES[cls])
    wire = wire_json(model)
    assert isinstance(json.loads(wire), dict)
    back = structure(decode_json(wire, what="round trip"), cls, what="round trip")
    assert back == model
    assert wire_json(back) == wire


def _plain_json(value: Any) -> bool:
    if type(value) is dict:
        return all(type(k) is str and _plain_json(v) for k, v in value.items())
    if type(value) is list:
        return all(_plain_json(v) for v in value)
    return value is None or type(value) in (str, int, float, bool)


@pytest.mark.parametrize("cls", MODELS, ids=MODEL_IDS)
@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_public_json_round_trip(cls: type, data: st.DataObject) -> None:
    """to_dict gives plain JSON data (enums as their strings) that from_dict reads back as an
    equal model; to_json and from_json likewise; both agree with the wire JSON."""
    model = data.draw(MODEL_STRATEGIES[cls])
    plain = to_dict(model)
    assert _plain_json(plain)
    assert plain == json.loads(wire_json(model))
    assert from_dict(cls, plain) == model
    assert from_json(cls, to_json(model)) == model
