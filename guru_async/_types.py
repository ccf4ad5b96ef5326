"""Sentinels and the types of arguments, in one place (anthropic's ``_types.py``).

Everything here is a name for what a caller passes: ``UNSET`` (not given, as distinct from
None), the wrapper ``Unvalidated``, and the aliases ``DomainArg``, ``ActivityArg`` and
``ProgressCallback``. This module sits at the bottom of the package and imports nothing of it
but the enumerations, not even for type checkers: an alias that names a class of a higher layer
lives beside that class (``FileSource`` with ``StreamSource`` in ``_upload``, ``BatchItem`` with
``VideoSpec`` in ``_batch``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

from attrs import frozen

from ._enums import Activity, Domain


class UnsetType:
    """The type of UNSET: "not given", as distinct from None."""

    _instance: UnsetType | None = None

    def __new__(cls) -> UnsetType:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET: Final = UnsetType()
"""Marks an argument the caller did not give, for partial updates where None means something."""


@frozen
class Unvalidated:
    """A domain or activity value sent as given, for values newer than this SDK.

    The service may accept activities this release does not list yet::

        await guru.create_video("x.mp4", activity=Unvalidated("handstand"), domain="calisthenics")
    """

    value: str

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.value, str) or not self.value:
            raise ValueError("Unvalidated() takes a non-empty string")

    def __str__(self) -> str:
        return self.value


DomainArg = Domain | str | Unvalidated | None
"""A domain: a Domain, its wire string, an Unvalidated newer value, or None (not given)."""

ActivityArg = Activity | str | Unvalidated | None
"""An activity: an Activity, its wire string, an Unvalidated newer value, or None."""

ProgressCallback = Callable[[int, int], Awaitable[None] | None]
"""Called as ``progress(sent_bytes, total_bytes)`` while a file is sent; may be async."""
