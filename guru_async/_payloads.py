"""What the SDK sends: request bodies as attrs classes, and the one resolution of a video's fields.

The bodies are turned into the wire's JSON by the converter (camelCase keys, fields not given
left out), like the models it reads, so no endpoint builds a dict by hand. ``resolve_fields``
is the one place a video's domain, activity, rep count and source are checked and put in wire
form, for a single upload, a batch item (with the batch's defaults), a fleet item and the CLI.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
from attrs import frozen

from ._types import ActivityArg, DomainArg
from ._validation import (
    check_optional_str,
    check_rep_count,
    resolve_domain_activity,
)


@frozen
class VideoFields:
    """A video's metadata, checked and in wire form (domain filled in from the activity)."""

    domain: str | None = None
    activity: str | None = None
    rep_count: int | None = None
    source: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The fields as plain data: part of an item's identity in a journal or a fleet, and
        what a fleet job carries to its worker."""
        return attrs.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VideoFields:
        """Fields another process resolved (a fleet producer), taken as they are: a newer
        value it let through with Unvalidated must not be refused here."""
        return cls(
            domain=data.get("domain"),
            activity=data.get("activity"),
            rep_count=data.get("rep_count"),
            source=data.get("source"),
        )


def resolve_fields(
    *,
    domain: DomainArg = None,
    activity: ActivityArg = None,
    rep_count: int | None = None,
    source: str | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> VideoFields:
    """Check a video's fields before anything is sent, filling gaps from ``defaults``.

    ``defaults`` holds a batch's own arguments (keys ``domain``, ``activity``, ``rep_count``,
    ``source``, as the caller gave them). An item's own activity picks its domain, never the
    batch's default domain.

    Raises:
        ValueError, TypeError: An unknown domain or activity, an activity outside the domain,
            a bad rep count or source.
    """
    if defaults is not None:
        if activity is None:
            if domain is None:
                domain = defaults.get("domain")
            activity = defaults.get("activity")
        if rep_count is None:
            rep_count = defaults.get("rep_count")
        if source is None:
            source = defaults.get("source")
    wire_domain, wire_activity = resolve_domain_activity(domain, activity)
    return VideoFields(
        domain=wire_domain,
        activity=wire_activity,
        rep_count=check_rep_count(rep_count),
        source=check_optional_str("source", source),
    )


@frozen
class CreateVideoBody:
    """The body of Create Video."""

    filename: str
    size: int
    source: str | None = None
    domain: str | None = None
    activity: str | None = None
    rep_count: int | None = None

    @classmethod
    def of(cls, filename: str, size: int, fields: VideoFields) -> CreateVideoBody:
        """The body for a file's name and size and its resolved fields."""
        return cls(
            filename=filename,
            size=size,
            source=fields.source,
            domain=fields.domain,
            activity=fields.activity,
            rep_count=fields.rep_count,
        )


@frozen
class UpdateVideoBody:
    """The body of Update Video: only the fields given are sent."""

    rep_count: int | None = None
    domain: str | None = None
    activity: str | None = None
