"""One cattrs converter, configured once, for both directions of the wire: the API's JSON into
the models (``decode_model``, ``structure``), and request bodies (``_payloads``) into JSON
(``to_json``), so no endpoint parses or builds a body by hand.

Wire rules it keeps:
- attrs field ``snake_case`` reads wire key ``camelCase``, except where the API itself uses
  snake_case (``frame_idx``); unknown keys are ignored.
- An enumeration field takes its enum member, or keeps an unknown value as the plain string.
- Primitives are strict: a string where a number belongs is a decode error, not a silent cast.
- The doc's misspelled ``anaylsisScalar`` is read as ``analysis_scalar``.
Anything that does not fit raises ``ResponseDecodeError``, never ``KeyError``/``TypeError``.
Going out, keys are camelCase too and fields left at their default (not given) are left out.
"""

from __future__ import annotations

import contextlib
import enum
import gc
import json
import linecache
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import attrs
from cattrs import Converter
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from ._enums import UnknownValue, _WireEnum
from ._errors import ResponseDecodeError, preview
from ._models import JointData, JointFrame, Point, RepAnalysis

try:  # orjson is an optional extra ("guru-async[fast]"); it parses large bodies ~3x faster.
    import orjson

    _loads: Callable[[bytes], Any] = orjson.loads
    _JSON_ERRORS: tuple[type[Exception], ...] = (orjson.JSONDecodeError, UnicodeDecodeError)
except ImportError:  # pragma: no cover - exercised only where orjson is absent
    _loads = json.loads
    _JSON_ERRORS = (json.JSONDecodeError, UnicodeDecodeError)

T = TypeVar("T")

# The API itself uses snake_case for these keys (JointFrame and FieldMarker ``frame_idx``).
_SNAKE_ON_THE_WIRE = frozenset({"frame_idx"})


def _camel(name: str) -> str:
    if name in _SNAKE_ON_THE_WIRE:
        return name
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _bad(value: Any, expected: str) -> ValueError:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:60] + "…"
    return ValueError(f"expected {expected}, got {type(value).__name__} {shown}")


def _structure_str(value: Any, _: Any) -> str:
    if type(value) is not str:
        raise _bad(value, "a string")
    return value


def _structure_int(value: Any, _: Any) -> int:
    if type(value) is int:
        return value
    # JSON has one number type; a whole float such as 3.0 is still an integer on the wire.
    if type(value) is float and value.is_integer():
        return int(value)
    raise _bad(value, "an integer")


def _structure_float(value: Any, _: Any) -> float:
    if type(value) is float or type(value) is int:
        return value
    raise _bad(value, "a number")


def _structure_bool(value: Any, _: Any) -> bool:
    if type(value) is not bool:
        raise _bad(value, "true or false")
    return value


_PRIMITIVE_HOOKS: dict[Any, Callable[[Any, Any], Any]] = {
    str: _structure_str,
    int: _structure_int,
    float: _structure_float,
    bool: _structure_bool,
}


def _is_optional_primitive(tp: Any) -> bool:
    if typing.get_origin(tp) not in (typing.Union, types.UnionType):
        return False
    args = typing.get_args(tp)
    return len(args) == 2 and type(None) in args and any(a in _PRIMITIVE_HOOKS for a in args)


def _optional_primitive_hook(tp: Any) -> Callable[[Any, Any], Any]:
    # Most fields are "number or null": checked inline, one call per field instead of three
    # (cattrs' optional dispatch, then the primitive's hook).
    (inner,) = (a for a in typing.get_args(tp) if a is not type(None))
    if inner is float:

        def optional_float(value: Any, _: Any) -> Any:
            if value is None or type(value) is float or type(value) is int:
                return value
            raise _bad(value, "a number")

        return optional_float
    if inner is str:

        def optional_str(value: Any, _: Any) -> Any:
            if value is None or type(value) is str:
                return value
            raise _bad(value, "a string")

        return optional_str
    hook = _PRIMITIVE_HOOKS[inner]

    def optional(value: Any, _: Any) -> Any:
        return None if value is None else hook(value, inner)

    return optional


def _is_enum_or_str(tp: Any) -> bool:
    if typing.get_origin(tp) not in (typing.Union, types.UnionType):
        return False
    args = set(typing.get_args(tp)) - {type(None)}
    plain = str in args or UnknownValue in args
    return plain and any(isinstance(a, type) and issubclass(a, _WireEnum) for a in args)


def _enum_or_str_hook(tp: Any) -> Callable[[Any, Any], Any]:
    args = typing.get_args(tp)
    enum_cls: type[enum.Enum] = next(
        a for a in args if isinstance(a, type) and issubclass(a, _WireEnum)
    )
    members = {m.value: m for m in enum_cls}
    optional = type(None) in args

    def structure(value: Any, _: Any) -> Any:
        if value is None and optional:
            return None
        if type(value) is not str:
            raise _bad(value, f"a {enum_cls.__name__} string")
        return members.get(value, value)

    return structure


_new = object.__new__
_set = object.__setattr__


def _structure_joint_frames(value: Any, _: Any) -> dict[str, list[JointFrame]]:
    """The hot path of Get Joint Data: tens of thousands of frames.

    Each parsed frame dict that has exactly the documented keys with the documented types
    becomes the new object's ``__dict__`` as is; anything else goes through the checked
    constructor. The cyclic GC is paused meanwhile: these objects hold no cycles, and its
    collections would otherwise rescan them all as they are created.
    """
    if value is None:
        return {}
    if type(value) is not dict:
        raise _bad(value, "an object of joint name to frames")
    with gc_paused():
        return {joint: _frames(joint, frames) for joint, frames in value.items()}


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while building many acyclic objects (JSON parsing, structuring):
    its collections would rescan them all as they are created, for nothing."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _frames(joint: str, frames: Any) -> list[JointFrame]:
    if type(frames) is not list:
        raise _bad(frames, f"a list of frames for {joint!r}")
    out: list[JointFrame] = []
    append = out.append
    new, set_ = _new, _set
    for f in frames:
        try:
            pos = f["position"]
            fast = (
                len(f) == 5
                and len(pos) == 2
                and type(pos) is dict
                and type(f["part"]) is str
                and type(f["frame_idx"]) is int
                # float first: it is what the wire almost always has (bool is not a number).
                and (type(f["score"]) is float or type(f["score"]) is int)
                and (type(f["timestamp"]) is float or type(f["timestamp"]) is int)
                and (type(pos["x"]) is float or type(pos["x"]) is int)
                and (type(pos["y"]) is float or type(pos["y"]) is int)
            )
        except (KeyError, TypeError):
            fast = False
        if fast:
            point = new(Point)
            set_(point, "__dict__", pos)
            f["position"] = point
            frame = new(JointFrame)
            set_(frame, "__dict__", f)
            append(frame)
        else:
            append(_checked_frame(f))
    return out


def _checked_frame(f: Any) -> JointFrame:
    # Extra keys from a newer server, or a missing/mistyped field: the slow, strict way.
    if type(f) is not dict:
        raise _bad(f, "a joint frame object")
    pos = f["position"]
    if type(pos) is not dict:
        raise _bad(pos, "a position {x, y}")
    return JointFrame(
        frame_idx=_structure_int(f["frame_idx"], int),
        part=_structure_str(f["part"], str),
        position=Point(_structure_float(pos["x"], float), _structure_float(pos["y"], float)),
        score=_structure_float(f["score"], float),
        timestamp=_structure_float(f["timestamp"], float),
    )


def _make_converter() -> Converter:
    conv = Converter(detailed_validation=False, forbid_extra_keys=False)
    conv.register_structure_hook(str, _structure_str)
    conv.register_structure_hook(int, _structure_int)
    conv.register_structure_hook(float, _structure_float)
    conv.register_structure_hook(bool, _structure_bool)
    conv.register_structure_hook_factory(_is_enum_or_str, _enum_or_str_hook)
    conv.register_structure_hook_factory(_is_optional_primitive, _optional_primitive_hook)

    def attrs_hook(cls: type) -> Callable[[Any, Any], Any]:
        overrides = {a.name: override(rename=_camel(a.name)) for a in attrs.fields(cls)}
        if cls is JointData:
            overrides["joint_to_points"] = override(
                rename="jointToPoints", struct_hook=_structure_joint_frames
            )
        generated = _generated_structure_fn(cls, conv, overrides)
        if generated is None:  # a class the fast generator does not handle: cattrs' own
            generated = make_dict_structure_fn(
                cls,
                conv,
                **overrides,  # type: ignore[arg-type]
            )
            if cls is RepAnalysis:
                generated = _reading_misspelled_scalar(generated)
        object_hooks[cls] = generated
        expected = f"an object for {cls.__name__}"

        def structure_object(value: Any, target: Any) -> Any:
            # cattrs' generated code only tests keys with `in`, which a string or list passes.
            if type(value) is not dict:
                raise _bad(value, expected)
            return generated(value, target)

        return structure_object

    # Each attrs class's generated function, for lists of them (and structure(), which has
    # checked the top level is an object already) to call without the wrapper.
    object_hooks = _OBJECT_HOOKS
    conv.register_structure_hook_factory(attrs.has, attrs_hook)

    def list_hook(tp: Any) -> Callable[[Any, Any], Any]:
        (item_type,) = typing.get_args(tp) or (Any,)
        item = conv.get_structure_hook(item_type)

        def structure_list(value: Any, _: Any) -> list[Any]:
            if value is None:
                return []  # a newer server sending null for "none" must not break anyone
            if type(value) is not list:
                raise _bad(value, "a list")
            return [item(v, item_type) for v in value]

        generated = object_hooks.get(item_type) if attrs.has(item_type) else None
        if generated is None:
            return structure_list
        expected = f"a list of objects for {item_type.__name__}"

        def structure_objects(value: Any, _: Any) -> list[Any]:
            # Reps and their analyses: check all are objects at once, then build each with
            # its generated function directly (one call per item instead of two).
            if value is None:
                return []
            if type(value) is not list:
                raise _bad(value, expected)
            for v in value:  # a loop: all() over a generator costs more than the items
                if type(v) is not dict:
                    raise _bad(value, expected)
            return [generated(v, item_type) for v in value]

        return structure_objects

    def dict_hook(tp: Any) -> Callable[[Any, Any], Any]:
        _, value_type = typing.get_args(tp) or (str, Any)
        item = conv.get_structure_hook(value_type)

        def structure_dict(value: Any, _: Any) -> dict[str, Any]:
            if value is None:
                return {}
            if type(value) is not dict:
                raise _bad(value, "an object")
            return {_structure_str(k, str): item(v, value_type) for k, v in value.items()}

        return structure_dict

    conv.register_structure_hook_factory(_origin_is(list), list_hook)
    conv.register_structure_hook_factory(_origin_is(dict), dict_hook)

    def attrs_unstructure_hook(cls: type) -> Callable[[Any], Any]:
        # The wire's camelCase going out too, so a stored model reads back through structure().
        overrides = {a.name: override(rename=_camel(a.name)) for a in attrs.fields(cls)}
        fn: Callable[[Any], Any] = make_dict_unstructure_fn(
            cls,
            conv,
            _cattrs_omit_if_default=True,
            **overrides,  # type: ignore[arg-type]
        )
        return fn

    conv.register_unstructure_hook_factory(attrs.has, attrs_unstructure_hook)
    return conv


# The structuring functions of attrs classes, without the wrapper that checks for an object.
_OBJECT_HOOKS: dict[type, Callable[[Any, Any], Any]] = {}
# Wire keys read in place of a field's own when it is absent: the API reference spells sprint
# analyses' key "anaylsisScalar"; accept both spellings.
_ALTERNATE_KEYS: dict[tuple[type, str], str] = {(RepAnalysis, "analysis_scalar"): "anaylsisScalar"}
# "number or null" and "string or null" fields are checked inline, without a call: the checks
# and messages of _optional_primitive_hook's, for its types.
_INLINE_CHECKS = {
    float | None: ("type({v}) is not float and type({v}) is not int", "a number"),
    str | None: ("type({v}) is not str", "a string"),
}
# Required strings and numbers, checked inline the same way (the checks and messages of
# _structure_str's and _structure_float's).
_REQUIRED_CHECKS = {
    float: ("type({v}) is not float and type({v}) is not int", "a number"),
    str: ("type({v}) is not str", "a string"),
}
_MISSING = object()


def _generated_structure_fn(
    cls: type, conv: Converter, overrides: dict[str, Any]
) -> Callable[[Any, Any], Any] | None:
    """A structuring function for attrs class ``cls``, generated for speed, or None when
    ``cls`` has a feature it does not handle (then cattrs' own is used).

    It does what cattrs' generated function does (each present key through its type's hook,
    an absent one left to the attribute's default, a missing required one a KeyError) with
    less work per field: one dict lookup, a null skipping its hook where that hook maps null to
    null, "number or null" and "string or null" checked inline, and the class built by
    positional arguments instead of a dict of keyword arguments (or, where its __init__ would
    only set the slots, by setting them directly).
    """
    if getattr(cls, "__attrs_pre_init__", None) or getattr(cls, "__attrs_post_init__", None):
        return None
    attrs.resolve_types(cls)
    names: dict[str, Any] = {"_bad": _bad, "_MISSING": _MISSING, "__cl": cls}
    # The class argument is optional: lists of objects map the function over their items.
    lines = [f"def structure_{cls.__name__}(o, _=None):"]
    args = []
    for i, a in enumerate(attrs.fields(cls)):
        if not a.init or a.converter is not None or a.validator is not None:
            return None
        over = overrides[a.name]
        key, hook = over.rename, over.struct_hook or conv.get_structure_hook(a.type)
        names[f"__h{i}"], names[f"__t{i}"] = hook, a.type
        v, default = f"f{i}", a.default
        args.append(f"{a.alias}={v}" if a.kw_only else v)
        alternate = _ALTERNATE_KEYS.get((cls, a.name))
        if default is None and _maps_null_to_null(hook, a.type):
            if alternate is None:
                lines.append(f"  {v} = o.get({key!r})")
            else:
                lines.append(f"  {v} = o.get({key!r}, _MISSING)")
                lines.append(f"  if {v} is _MISSING: {v} = o.get({alternate!r})")
            inline = _INLINE_CHECKS.get(a.type) if over.struct_hook is None else None
            if inline is not None:
                test, expected = inline
                lines.append(f"  if {v} is not None and {test.format(v=v)}:")
                lines.append(f"    raise _bad({v}, {expected!r})")
            elif over.struct_hook is None and _is_enum_or_str(a.type):
                # _enum_or_str_hook's work, inline: a string, its member if it names one.
                enum_cls = _wire_enum(a.type)
                names[f"__m{i}"] = {m.value: m for m in enum_cls}
                lines.append(f"  if {v} is not None:")
                lines.append(f"    if type({v}) is not str:")
                lines.append(f"      raise _bad({v}, {f'a {enum_cls.__name__} string'!r})")
                lines.append(f"    {v} = __m{i}.get({v}, {v})")
            else:
                lines.append(f"  if {v} is not None: {v} = __h{i}({v}, __t{i})")
            continue
        if alternate is not None:
            return None
        item = _attrs_list_item(a.type) if over.struct_hook is None else None
        if item is not None and getattr(a.default, "factory", None) is list:
            # structure_objects' work, inline: null or absent is empty, else a list of objects
            # checked whole before any is built, each by its class's function.
            conv.get_structure_hook(item)
            names[f"__g{i}"], names[f"__i{i}"] = _OBJECT_HOOKS[item], item
            expected = f"a list of objects for {item.__name__}"
            lines.append(f"  {v} = o.get({key!r})")
            lines.append(f"  if {v} is None:")
            lines.append(f"    {v} = []")
            lines.append("  else:")
            lines.append(f"    if type({v}) is not list:")
            lines.append(f"      raise _bad({v}, {expected!r})")
            lines.append(f"    for v in {v}:")
            lines.append("      if type(v) is not dict:")
            lines.append(f"        raise _bad({v}, {expected!r})")
            lines.append(f"    {v} = list(map(__g{i}, {v}))")  # no comprehension's frame
            continue
        if default is attrs.NOTHING:
            required = _REQUIRED_CHECKS.get(a.type) if over.struct_hook is None else None
            if required is None:
                lines.append(f"  {v} = __h{i}(o[{key!r}], __t{i})")
            else:  # the primitive's hook, inline
                test, expected = required
                lines.append(f"  {v} = o[{key!r}]")
                lines.append(f"  if {test.format(v=v)}:")
                lines.append(f"    raise _bad({v}, {expected!r})")
            continue
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            if default.takes_self:
                return None
            names[f"__d{i}"] = default.factory
            made = f"__d{i}()"
        else:
            names[f"__d{i}"] = default
            made = f"__d{i}"
        lines.append(f"  {v} = o.get({key!r}, _MISSING)")
        lines.append(f"  {v} = {made} if {v} is _MISSING else __h{i}({v}, __t{i})")
    setters = _slot_setters(cls)
    if setters is None:
        lines.append(f"  return __cl({', '.join(args)})")
    else:
        # What attrs' __init__ of a frozen class does, without its object.__setattr__ calls.
        names["__new"] = _new
        lines.append("  self = __new(__cl)")
        for i, setter in enumerate(setters):
            names[f"__s{i}"] = setter
            lines.append(f"  __s{i}(self, f{i})")
        lines.append("  return self")
    source = "\n".join(lines)
    namespace: dict[str, Any] = {}
    filename = f"<guru_async structure {cls.__module__}.{cls.__qualname__}>"
    exec(compile(source, filename, "exec"), names, namespace)  # noqa: S102 - our own code
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    fn: Callable[[Any, Any], Any] = namespace[f"structure_{cls.__name__}"]
    return fn


def fresh_setter(cls: type, name: str) -> Callable[[Any, Any], None]:
    """The setter of slotted attrs class ``cls``'s field ``name``, for an object just decoded
    that nobody else holds yet: setting it in place gives what ``attrs.evolve`` gives, without
    building a second object (the frozen class's promise holds for everyone the object is
    then handed to)."""
    slot = cls.__dict__.get(name)
    if type(slot) is not types.MemberDescriptorType or name not in attrs.fields_dict(cls):
        raise TypeError(f"{cls.__name__}.{name} is not a slotted attrs field")
    setter: Callable[[Any, Any], None] = slot.__set__
    return setter


def _slot_setters(cls: type) -> list[Callable[[Any, Any], None]] | None:
    """The slots' own setters of ``cls``'s attributes, in order, when its __init__ only sets
    them (no validators, converters or post-init, checked by the caller; no cached hash);
    None otherwise."""
    slots = getattr(cls, "__slots__", None)
    if slots is None or not set(slots) <= {a.name for a in attrs.fields(cls)} | {"__weakref__"}:
        return None
    setters = []
    for a in attrs.fields(cls):
        slot = cls.__dict__.get(a.name)
        if type(slot) is not types.MemberDescriptorType:
            return None
        setters.append(slot.__set__)
    return setters


def _wire_enum(tp: Any) -> type[enum.Enum]:
    enum_cls: type[enum.Enum] = next(
        a for a in typing.get_args(tp) if isinstance(a, type) and issubclass(a, _WireEnum)
    )
    return enum_cls


def _attrs_list_item(tp: Any) -> type | None:
    """The attrs class of a ``list[C]`` field whose factory makes an empty list, else None."""
    if typing.get_origin(tp) is not list:
        return None
    (item,) = typing.get_args(tp) or (None,)
    return item if isinstance(item, type) and attrs.has(item) else None


def _maps_null_to_null(hook: Callable[[Any, Any], Any], tp: Any) -> bool:
    # The hooks are pure: asking one what it makes of null tells whether skipping it for a
    # null is the same.
    try:
        return hook(None, tp) is None
    except Exception:
        return False


def _origin_is(origin: type) -> Callable[[Any], bool]:
    def predicate(tp: Any) -> bool:
        return bool(typing.get_origin(tp) is origin)

    return predicate


def _reading_misspelled_scalar(fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    # The API reference spells sprint analyses' key "anaylsisScalar"; accept both spellings.
    def structure(value: Any, cls: Any) -> Any:
        if type(value) is dict and "analysisScalar" not in value and "anaylsisScalar" in value:
            value = {**value, "analysisScalar": value["anaylsisScalar"]}
        return fn(value, cls)

    return structure


converter = _make_converter()


def structure(data: Any, cls: type[T], *, what: str, status: int | None = None) -> T:
    """Structure decoded JSON into ``cls``, turning any mismatch into ResponseDecodeError.

    ``data`` is consumed: joint frames adopt its dicts as their own (the fast path of Get
    Joint Data), so parse a body afresh for each call.
    """
    if type(data) is not dict:
        raise ResponseDecodeError(
            f"{what}: expected a JSON object, got {type(data).__name__}",
            status=status,
            body=preview(data, 200),
        )
    hook = _OBJECT_HOOKS.get(cls)
    if hook is None:
        converter.get_structure_hook(cls)  # generates it (and those of the classes it holds)
        hook = _OBJECT_HOOKS.get(cls) or converter.get_structure_hook(cls)
    try:
        return hook(data, cls)  # type: ignore[no-any-return]
    except Exception as exc:
        # KeyError's message is just the key; say what was missing where.
        reason = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
    # Raised outside the handler: no __context__ dragging the whole body along.
    raise ResponseDecodeError(
        f"{what}: response does not match {cls.__name__}: {reason}",
        status=status,
        body=preview(data, 200),
    )


def decode_model(raw: bytes, cls: type[T], *, what: str, status: int | None = None) -> T:
    """Parse a response body and structure it into ``cls``: what every API call does.

    The GC is paused for both steps: parsing and structuring create many acyclic objects.
    (By hand rather than with gc_paused(): this runs once per request.)
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return structure(decode_json(raw, what=what, status=status), cls, what=what, status=status)
    finally:
        if was_enabled:
            gc.enable()


def to_json(model: Any) -> bytes:
    """A model as the wire's JSON (camelCase keys, defaults left out)."""
    return json.dumps(converter.unstructure(model), separators=(",", ":")).encode()


def decode_json(raw: bytes, *, what: str, status: int | None = None, echo: bool = True) -> Any:
    """Parse a JSON body, raising ResponseDecodeError when it is not JSON.

    The error shows the start of the body, unless ``echo`` is False (a token response: even a
    broken one may hold a secret).
    """
    try:
        return _loads(raw)
    except _JSON_ERRORS:
        pass
    # Raised outside the handler: a JSONDecodeError's context holds the whole document.
    text = raw[:200].decode("utf-8", "replace") if echo else ""
    shown = f" starting {text[:80]!r}" if echo else ""
    raise ResponseDecodeError(
        f"{what}: response is not JSON (got {len(raw)} bytes{shown})",
        status=status,
        body=text,
        not_json=True,
    )
