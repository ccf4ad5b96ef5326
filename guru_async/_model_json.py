"""Models as JSON and back, for callers: ``to_dict``, ``to_json``, ``from_dict``, ``from_json``.

The shape is the API's own (camelCase keys, enumerations as their wire strings, fields that
were not given left out), which is also what the CLI prints under ``--json``; so a model stored
or sent on by a web app reads back as the same model.
"""

from __future__ import annotations

import copy
import enum
import json
from collections.abc import Mapping
from typing import Any, TypeVar

import attrs

from ._converter import converter, decode_json
from ._errors import ResponseDecodeError
from ._models import MODELS

M = TypeVar("M")


def to_dict(model: object) -> dict[str, Any]:
    """A model as plain JSON data, in the API's shape.

    Keys are the API's camelCase (``repCount``, ``startTimestampMs``, ``frame_idx`` where the
    API itself uses snake_case), enumerations are their wire strings (``"Complete"``), and
    fields left at their default (None, an empty list) are left out, as the API leaves them
    out. An Analysis's ``video_id`` is ``videoId``. ``CreatedVideo`` (its ``url`` and
    ``fields``) and ``Video.uri`` hold presigned signatures: keep their JSON private.

    Args:
        model: Any model of ``guru_async`` (Analysis, Video, JointData, CreatedVideo, ...).

    Returns:
        A new dict of str, int, float, bool, None, lists and dicts, ready for ``json.dumps``
        or a web framework's JSON response.

    Raises:
        TypeError: ``model`` is not a guru_async model.
    """
    if type(model) not in MODELS:
        raise TypeError(
            f"to_dict takes a guru_async model (Analysis, Video, ...), got {type(model).__name__}"
        )
    data = _plain(converter.unstructure(model))
    assert isinstance(data, dict)
    return data


def to_json(model: object, *, indent: int | None = None) -> str:
    """A model as a JSON document: ``to_dict(model)``, compact unless ``indent`` is given.

    Raises:
        TypeError: ``model`` is not a guru_async model.
    """
    separators = (",", ":") if indent is None else None
    return json.dumps(to_dict(model), indent=indent, separators=separators)


def from_dict(cls: type[M], data: Mapping[str, Any]) -> M:
    """Read a model back from ``to_dict``'s shape (or the API's own JSON). ``data`` is left
    unchanged.

    Unknown keys are ignored and an enumeration value this SDK does not know is kept as the
    plain string, as for the API's answers.

    Args:
        cls: The model class, e.g. ``Analysis``.
        data: The model's JSON data.

    Raises:
        TypeError: ``cls`` is not a guru_async model, or ``data`` is not a mapping.
        ValueError: ``data`` does not fit ``cls`` (a missing required field, a string where a
            number belongs, ...).
    """
    _check_model_class(cls, "from_dict")
    if not isinstance(data, Mapping):
        raise TypeError(f"from_dict takes a mapping, got {type(data).__name__}")
    # Structuring adopts joint frames' dicts as the new objects' own: work on a copy.
    return _structure(copy.deepcopy(dict(data)), cls, "from_dict")


def from_json(cls: type[M], document: str | bytes) -> M:
    """Read a model back from ``to_json``'s output (or the API's own JSON).

    Raises:
        TypeError: ``cls`` is not a guru_async model.
        ValueError: ``document`` is not JSON, or does not fit ``cls``.
    """
    _check_model_class(cls, "from_json")
    raw = document.encode() if isinstance(document, str) else document
    try:
        data = decode_json(raw, what=f"from_json({cls.__name__})")
    except ResponseDecodeError as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(data, dict):
        raise ValueError(
            f"from_json({cls.__name__}): expected a JSON object, got {type(data).__name__}"
        )
    return _structure(data, cls, "from_json")


def _check_model_class(cls: object, name: str) -> None:
    if cls not in MODELS:
        shown = cls.__name__ if isinstance(cls, type) else repr(cls)
        raise TypeError(
            f"{name} takes a guru_async model class (Analysis, Video, ...), got {shown}"
        )


def _structure(data: dict[str, Any], cls: type[M], name: str) -> M:
    try:
        model = converter.structure(data, cls)
    except Exception as exc:
        reason = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
    else:
        assert attrs.has(type(model))
        return model
    # Raised outside the handler: no __context__ dragging the data along.
    raise ValueError(f"{name}({cls.__name__}): the data does not fit {cls.__name__}: {reason}")


def _plain(value: Any) -> Any:
    """The unstructured tree with enumeration members as their plain wire strings."""
    if type(value) is dict:
        return {key: _plain(item) for key, item in value.items()}
    if type(value) is list:
        return [_plain(item) for item in value]
    if isinstance(value, enum.Enum):
        return value.value
    return value
