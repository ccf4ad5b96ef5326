"""The API's enumerations, as ``str`` enums that compare equal to their wire strings."""

from __future__ import annotations

import enum
from typing import NewType

UnknownValue = NewType("UnknownValue", str)
"""A value of an enumeration that this SDK does not know yet, kept as the plain string.

Enum fields are typed ``SomeEnum | UnknownValue | None``: at runtime an unknown value is an
ordinary ``str``; for type checkers ``UnknownValue`` is a distinct kind of string, so the
union keeps the enum (``AnalysisStatus | str`` would collapse to ``str``, since a ``str`` enum
is a ``str``) and ``if analysis.status is AnalysisStatus.COMPLETE`` narrows as expected.
"""


class _WireEnum(str, enum.Enum):
    """A ``str`` enum whose ``str()`` and ``format()`` are the wire value."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, format_spec: str) -> str:
        return format(str(self.value), format_spec)


class Domain(_WireEnum):
    """The category of exercise in a video (``domain`` on the wire)."""

    WEIGHTLIFTING = "weightlifting"
    CALISTHENICS = "calisthenics"
    MARTIAL_ARTS = "martial_arts"
    MOBILITY = "mobility"
    RUNNING = "running"
    YOGA = "yoga"


class Activity(_WireEnum):
    """The movement performed in a video (``activity`` on the wire).

    Every activity belongs to exactly one :class:`Domain`, available as
    :attr:`Activity.domain`.
    """

    BENCH_PRESS = "bench_press"
    CLEAN_AND_JERK = "clean_and_jerk"
    DEADLIFT = "deadlift"
    SNATCH = "snatch"
    SQUAT = "squat"
    BODYWEIGHT_SQUAT = "bodyweight_squat"
    BURPEE = "burpee"
    CHIN_UP = "chin_up"
    LUNGE = "lunge"
    PUSH_UP = "push_up"
    SIT_UP = "sit_up"
    PUNCH = "punch"
    FRONT_KICK = "front_kick"
    KNEE_TO_CHEST = "knee_to_chest"
    SPRINT = "sprint"
    DOWNWARD_DOG = "downward_dog"

    @property
    def domain(self) -> Domain:
        """The domain this activity belongs to."""
        return ACTIVITY_DOMAINS[self]


ACTIVITY_DOMAINS: dict[Activity, Domain] = {
    Activity.BENCH_PRESS: Domain.WEIGHTLIFTING,
    Activity.CLEAN_AND_JERK: Domain.WEIGHTLIFTING,
    Activity.DEADLIFT: Domain.WEIGHTLIFTING,
    Activity.SNATCH: Domain.WEIGHTLIFTING,
    Activity.SQUAT: Domain.WEIGHTLIFTING,
    Activity.BODYWEIGHT_SQUAT: Domain.CALISTHENICS,
    Activity.BURPEE: Domain.CALISTHENICS,
    Activity.CHIN_UP: Domain.CALISTHENICS,
    Activity.LUNGE: Domain.CALISTHENICS,
    Activity.PUSH_UP: Domain.CALISTHENICS,
    Activity.SIT_UP: Domain.CALISTHENICS,
    Activity.PUNCH: Domain.MARTIAL_ARTS,
    Activity.FRONT_KICK: Domain.MARTIAL_ARTS,
    Activity.KNEE_TO_CHEST: Domain.MOBILITY,
    Activity.SPRINT: Domain.RUNNING,
    Activity.DOWNWARD_DOG: Domain.YOGA,
}


class AnalysisStatus(_WireEnum):
    """Where analysis of a video stands (Get Analysis and Get Joint Data ``status``)."""

    PENDING = "Pending"
    COMPLETE = "Complete"
    FAILED = "Failed"


class VideoStatus(_WireEnum):
    """Whether a video's content has reached Guru (Get Video ``status``)."""

    PENDING = "Pending"
    SUCCESS = "Success"
    FAILED = "Failed"


class OverlayType(_WireEnum):
    """The overlay videos Guru renders: a wireframe ``skeleton`` or ``all`` elements."""

    SKELETON = "skeleton"
    ALL = "all"
