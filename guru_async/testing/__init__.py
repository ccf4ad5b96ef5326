"""A faithful local emulator of the Guru API, for testing code that uses it offline.

:class:`GuruEmulator` serves the token endpoint, the video API and an S3-style upload storage on
127.0.0.1 over real sockets, records every request, and can inject faults::

    async with GuruEmulator(analysis_delay=0.2) as emu:
        emu.faults.add(FaultRule(route="GET /videos/{id}/analysis", rate=0.3, status=503))
        ...  # point the code under test at emu.base_url and emu.token_url

``python -m guru_async.testing`` runs it standalone (``--fault "POST /storage:rate=0.5"`` injects
faults there, read by :func:`parse_fault`).
"""

from guru_async.testing._api import FAILURE_REASON
from guru_async.testing._cli import main
from guru_async.testing._emulator import GuruEmulator
from guru_async.testing._faults import (
    ANALYSIS_ROUTE,
    CREATE_ROUTE,
    DOWNLOAD_ROUTE,
    GET_VIDEO_ROUTE,
    J2P_ROUTE,
    ROUTES,
    TOKEN_ROUTE,
    UPDATE_ROUTE,
    UPLOAD_ROUTE,
    FaultKind,
    FaultRule,
    Faults,
    parse_fault,
)
from guru_async.testing._models import EmulatedVideo, RecordedRequest
from guru_async.testing._state import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, SCOPE, AnalysisDelay
from guru_async.testing._storage import BUCKET
from guru_async.testing._storage_server import UNANALYZABLE_MARKER

__all__ = [
    "ANALYSIS_ROUTE",
    "BUCKET",
    "CREATE_ROUTE",
    "DEFAULT_CLIENT_ID",
    "DEFAULT_CLIENT_SECRET",
    "DOWNLOAD_ROUTE",
    "FAILURE_REASON",
    "GET_VIDEO_ROUTE",
    "J2P_ROUTE",
    "ROUTES",
    "SCOPE",
    "TOKEN_ROUTE",
    "UNANALYZABLE_MARKER",
    "UPDATE_ROUTE",
    "UPLOAD_ROUTE",
    "AnalysisDelay",
    "EmulatedVideo",
    "FaultKind",
    "FaultRule",
    "Faults",
    "GuruEmulator",
    "RecordedRequest",
    "main",
    "parse_fault",
]
