"""The public face of guru_async: what users import, and the promises of its enums and errors."""

from __future__ import annotations

import importlib

import pytest

import guru_async
from guru_async import (
    Activity,
    AnalysisStatus,
    AnalysisTimeoutError,
    APIError,
    AuthenticationError,
    BadRequestError,
    Domain,
    GuruConnectionError,
    GuruError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ResponseDecodeError,
    ServerError,
    SessionClosedError,
    UploadError,
    VideoStatus,
)

# The names DESIGN.md promises under "Public contract".
DESIGN_NAMES = [
    "GuruSession",
    "Activity",
    "Domain",
    "VideoSpec",
    "BatchResult",
    "CreatedVideo",
    "Video",
    "Overlay",
    "Analysis",
    "Rep",
    "RepAnalysis",
    "FieldMarkers",
    "FieldMarker",
    "RunnerProgress",
    "JointData",
    "JointFrame",
    "GuruError",
    "APIError",
    "BadRequestError",
    "AuthenticationError",
    "PermissionDeniedError",
    "NotFoundError",
    "RateLimitError",
    "ServerError",
    "UploadError",
    "AnalysisTimeoutError",
    "ResponseDecodeError",
    "GuruConnectionError",
    "Token",
    "TokenStore",
    "MemoryTokenStore",
    "FileTokenStore",
    "AnalysisStatus",
    "VideoStatus",
]

# The Domain | Activity table of guru-api.md (Create Video).
API_TABLE = {
    "weightlifting": ["bench_press", "clean_and_jerk", "deadlift", "snatch", "squat"],
    "calisthenics": ["bodyweight_squat", "burpee", "chin_up", "lunge", "push_up", "sit_up"],
    "martial_arts": ["punch", "front_kick"],
    "mobility": ["knee_to_chest"],
    "running": ["sprint"],
    "yoga": ["downward_dog"],
}


def _ruff_sort_key(name: str) -> tuple[int, str]:
    # RUF022's isort-style order: CONSTANTS, then Classes, then everything else.
    if name.isupper():
        return (0, name)
    if name[0].isupper():
        return (1, name)
    return (2, name)


def test_all_is_sorted_without_duplicates() -> None:
    """__all__ lists each name once, in isort-style order (constants, classes, the rest)."""
    names = list(guru_async.__all__)
    assert len(names) == len(set(names))
    assert names == sorted(names, key=_ruff_sort_key)


def test_every_name_in_all_imports() -> None:
    """Every name in __all__ resolves on the package and through a star import."""
    for name in guru_async.__all__:
        assert getattr(guru_async, name) is not None, name
    namespace: dict[str, object] = {}
    exec("from guru_async import *", namespace)  # noqa: S102 - the star import users write
    assert set(guru_async.__all__) <= set(namespace)


@pytest.mark.parametrize("name", DESIGN_NAMES)
def test_design_names_are_exported(name: str) -> None:
    """Each name DESIGN.md promises is importable from guru_async and listed in __all__."""
    module = importlib.import_module("guru_async")
    assert name in module.__all__
    assert hasattr(module, name)


def test_activity_knows_its_domain() -> None:
    """Activity.SQUAT belongs to Domain.WEIGHTLIFTING (the same member, not just equal)."""
    assert Activity.SQUAT.domain is Domain.WEIGHTLIFTING
    assert Activity.SPRINT.domain is Domain.RUNNING


def test_activities_and_domains_match_the_api_table() -> None:
    """Every activity of the API table exists, with exactly the domain the table gives it."""
    assert {d.value for d in Domain} == set(API_TABLE)
    expected = {a: d for d, acts in API_TABLE.items() for a in acts}
    assert {a.value: a.domain.value for a in Activity} == expected


def test_enums_equal_their_wire_strings() -> None:
    """Enum members compare equal to, print as and format as their wire strings."""
    assert Activity.SQUAT == "squat"
    assert Domain.MARTIAL_ARTS == "martial_arts"
    assert AnalysisStatus.PENDING == "Pending"
    assert AnalysisStatus.COMPLETE == "Complete"
    assert AnalysisStatus.FAILED == "Failed"
    assert VideoStatus.PENDING == "Pending"
    assert VideoStatus.SUCCESS == "Success"
    assert VideoStatus.FAILED == "Failed"
    assert str(Activity.BENCH_PRESS) == "bench_press"
    assert f"{Domain.RUNNING}" == "running"
    assert Activity("push_up") is Activity.PUSH_UP
    assert isinstance(Activity.SQUAT, str)


def test_error_hierarchy() -> None:
    """Every SDK error is a GuruError; API errors share APIError; a timeout is a TimeoutError."""
    for cls in (
        BadRequestError,
        AuthenticationError,
        PermissionDeniedError,
        NotFoundError,
        RateLimitError,
        ServerError,
    ):
        assert issubclass(cls, APIError)
    for cls in (
        APIError,
        UploadError,
        AnalysisTimeoutError,
        ResponseDecodeError,
        GuruConnectionError,
        SessionClosedError,
    ):
        assert issubclass(cls, GuruError)
    assert issubclass(GuruError, Exception)
    assert issubclass(AnalysisTimeoutError, TimeoutError)
    assert not issubclass(UploadError, APIError)


def test_api_error_carries_status_and_body() -> None:
    """An APIError keeps the HTTP status and decoded body a user inspects."""
    error = NotFoundError("gone", status=404, body={"message": "Video not found"})
    assert error.status == 404
    assert error.body == {"message": "Video not found"}
    assert str(error) == "gone"


def test_journal_error_and_batch_upload_are_exported() -> None:
    """JournalError (a GuruError carrying the journal's path) and BatchUpload, what
    batch_upload returns, are importable from guru_async and listed in __all__."""
    for name in ("JournalError", "BatchUpload"):
        assert name in guru_async.__all__
    error = guru_async.JournalError("cannot use 'x.db' as a batch journal", path="x.db")
    assert isinstance(error, GuruError)
    assert error.path == "x.db"
