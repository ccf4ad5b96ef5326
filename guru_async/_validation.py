"""Checks on user arguments, made before anything is sent.

Each failure is the built-in error a Python user expects (``ValueError``, ``TypeError``) with a
message that names the accepted values, so a typo never costs a round trip.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ._enums import Activity, Domain
from ._types import ActivityArg, DomainArg, Unvalidated

MAX_REP_COUNT = 10_000
INCLUDE_VALUES = ("j2p", "analysis", "objects")
_VIDEO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def check_int(
    name: str,
    value: object,
    *,
    minimum: int | None = 0,
    maximum: int | None = None,
    unit: str = "",
) -> int:
    """Return ``value`` if it is an int (a bool is not) within the bounds, else raise.

    The one check of every integer argument, so each says the same thing the same way:
    TypeError naming the type given, ValueError naming the bound and the value.

    Args:
        name: The argument's name, for the message.
        value: What the caller passed.
        minimum: The smallest value accepted; None for no bound (the caller checks its own).
        maximum: The largest value accepted, or None.
        unit: What the number counts (``"bytes"``, ``"seconds"``), for the message.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        noun = f"an int number of {unit}" if unit else "an int"
        raise TypeError(f"{name} must be {noun}, got {type(value).__name__}")
    if maximum is not None and minimum is not None and not minimum <= value <= maximum:
        raise ValueError(f"{name} must be between {minimum} and {maximum}, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}{' ' + unit if unit else ''}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}{' ' + unit if unit else ''}, got {value}")
    return value


def _choices(values: Iterable[str]) -> str:
    return ", ".join(sorted(values))


def resolve_domain_activity(
    domain: DomainArg, activity: ActivityArg
) -> tuple[str | None, str | None]:
    """Validate domain and activity against the API's table; fill in the domain from the activity.

    Returns the wire strings (None where not given).
    """
    dom: Domain | None = None
    dom_wire: str | None = None
    if isinstance(domain, Unvalidated):
        dom_wire = domain.value
    elif domain is not None:
        if not isinstance(domain, str):
            raise TypeError(f"domain must be a Domain or str, got {type(domain).__name__}")
        try:
            dom = Domain(domain)
        except ValueError:
            raise ValueError(
                f"unknown domain {domain!r}; accepted values: {_choices(d.value for d in Domain)} "
                "(wrap a newer value in guru_async.Unvalidated to send it anyway)"
            ) from None
        dom_wire = dom.value

    if activity is None:
        return dom_wire, None
    if isinstance(activity, Unvalidated):
        return dom_wire, activity.value
    if not isinstance(activity, str):
        raise TypeError(f"activity must be an Activity or str, got {type(activity).__name__}")
    try:
        act = Activity(activity)
    except ValueError:
        allowed = [a.value for a in Activity if dom is None or a.domain is dom]
        scope = f" for domain {dom.value!r}" if dom is not None else ""
        raise ValueError(
            f"unknown activity {activity!r}; accepted values{scope}: {_choices(allowed)} "
            "(wrap a newer value in guru_async.Unvalidated to send it anyway)"
        ) from None
    if dom is not None and act.domain is not dom:
        allowed = [a.value for a in Activity if a.domain is dom]
        raise ValueError(
            f"activity {act.value!r} belongs to domain {act.domain.value!r}, not {dom.value!r}; "
            f"activities of {dom.value!r}: {_choices(allowed)}"
        )
    if dom_wire is None:
        dom_wire = act.domain.value
    return dom_wire, act.value


def check_rep_count(rep_count: int | None) -> int | None:
    """A rep count must be a whole number from 0 to MAX_REP_COUNT."""
    if rep_count is None:
        return None
    return check_int("rep_count", rep_count, maximum=MAX_REP_COUNT)


def check_video_id(video_id: str) -> str:
    """A video id is a short token of letters, digits, dots, colons, dashes and underscores."""
    if not isinstance(video_id, str):
        raise TypeError(f"video_id must be a str, got {type(video_id).__name__}")
    if not _VIDEO_ID.fullmatch(video_id):
        raise ValueError(
            f"invalid video_id {video_id[:80]!r}: expected the id returned by create_video, "
            "e.g. '9f1c2e7a-0b1d-4c5e-8f00-123456789abc'"
        )
    return video_id


def check_include(include: Iterable[str] | str | None) -> str | None:
    """Validate Get Video's ``include`` and join it into one comma-separated query value."""
    if include is None:
        return None
    items = [include] if isinstance(include, str) else list(include)
    unknown = [i for i in items if i not in INCLUDE_VALUES]
    if unknown:
        raise ValueError(
            f"unknown include value(s) {unknown!r}; accepted values: {', '.join(INCLUDE_VALUES)}"
        )
    # Keep the caller's order but drop repeats: the API takes each value once.
    return ",".join(dict.fromkeys(items)) or None


def check_optional_str(name: str, value: str | None) -> str | None:
    """A free-text field is a string or None."""
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    return value


def check_size(size: int) -> int:
    """A file size is a whole number of bytes, not negative."""
    return check_int("size", size, unit="bytes")
