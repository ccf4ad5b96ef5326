"""guru_async: the asyncio SDK for the Guru workout-video analysis API.

Start with :class:`GuruSession`; everything else here is what its calls take and return.
"""

from ._auth import FileTokenStore, MemoryTokenStore, Token, TokenStore
from ._batch import BatchProgress, BatchResult, BatchUpload, UploadProgress, VideoSpec
from ._enums import Activity, AnalysisStatus, Domain, OverlayType, UnknownValue, VideoStatus
from ._errors import (
    AnalysisTimeoutError,
    APIError,
    AuthenticationError,
    BadRequestError,
    GuruConnectionError,
    GuruError,
    JournalError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ResponseDecodeError,
    ServerError,
    SessionClosedError,
    SourceError,
    UploadError,
)
from ._instrumentation import (
    InstrumentationHook,
    LoggingHook,
    RequestDetails,
    RetryDetails,
    TraceScope,
    TracingHook,
)
from ._limiter import AdaptiveLimiter
from ._model_json import from_dict, from_json, to_dict, to_json
from ._models import (
    Analysis,
    BoundingBox,
    CreatedVideo,
    DetectedObject,
    FieldMarker,
    FieldMarkers,
    JointData,
    JointFrame,
    MarkerPosition,
    Overlay,
    Point,
    Rep,
    RepAnalysis,
    RunnerProgress,
    Video,
)
from ._polling import PollPolicy
from ._retry import RetryBudget, RetryPolicy
from ._session import GuruSession
from ._transport import Timeouts
from ._types import UNSET, Unvalidated
from ._upload import StreamSource
from ._version import __version__

__all__ = [
    "UNSET",
    "APIError",
    "Activity",
    "AdaptiveLimiter",
    "Analysis",
    "AnalysisStatus",
    "AnalysisTimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BatchProgress",
    "BatchResult",
    "BatchUpload",
    "BoundingBox",
    "CreatedVideo",
    "DetectedObject",
    "Domain",
    "FieldMarker",
    "FieldMarkers",
    "FileTokenStore",
    "GuruConnectionError",
    "GuruError",
    "GuruSession",
    "InstrumentationHook",
    "JointData",
    "JointFrame",
    "JournalError",
    "LoggingHook",
    "MarkerPosition",
    "MemoryTokenStore",
    "NotFoundError",
    "Overlay",
    "OverlayType",
    "PermissionDeniedError",
    "Point",
    "PollPolicy",
    "RateLimitError",
    "Rep",
    "RepAnalysis",
    "RequestDetails",
    "ResponseDecodeError",
    "RetryBudget",
    "RetryDetails",
    "RetryPolicy",
    "RunnerProgress",
    "ServerError",
    "SessionClosedError",
    "SourceError",
    "StreamSource",
    "Timeouts",
    "Token",
    "TokenStore",
    "TraceScope",
    "TracingHook",
    "UnknownValue",
    "Unvalidated",
    "UploadError",
    "UploadProgress",
    "Video",
    "VideoSpec",
    "VideoStatus",
    "__version__",
    "from_dict",
    "from_json",
    "to_dict",
    "to_json",
]
