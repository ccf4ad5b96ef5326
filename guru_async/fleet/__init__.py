"""guru_async.fleet: many worker processes, on many machines, sharing one Guru account.

Needs the ``fleet`` extra (``pip install "guru-async[fleet]"``): redis-py and saq. Every piece
shares one Redis (a real redis-server; valkey works too):

- :class:`RedisTokenStore`: one token for the whole fleet, refreshed once for all of it.
- :class:`RedisRateLimiter`: one ceiling on the fleet's API requests per second.
- :class:`Fleet`: a producer's batch as saq jobs, one BatchResult per item streamed back.
- :class:`FleetWorker`: a worker process (``guru-async worker --redis URL``).
- :class:`FleetStatus` (``Fleet.status()``, ``guru-async fleet status``): what the fleet is
  doing, with :class:`WorkerStatus`, :class:`WorkerItem` and :class:`QueueDepth`.
"""

from __future__ import annotations

try:
    import redis.asyncio  # noqa: F401 - checked here, so the error names the extra
except ImportError as exc:  # pragma: no cover - exercised with the extra uninstalled
    raise ImportError(
        'guru_async.fleet needs the "fleet" extra: pip install "guru-async[fleet]" '
        f"(missing: {exc.name})"
    ) from exc

from ._fleet import Fleet
from ._protocol import FleetError, FleetItemError, FleetJobError
from ._rate import RedisRateLimiter
from ._redis import RedisUnavailableError
from ._status import FleetStatus, QueueDepth, WorkerItem, WorkerStatus
from ._tokens import RedisTokenStore
from ._worker import FleetWorker

__all__ = [
    "Fleet",
    "FleetError",
    "FleetItemError",
    "FleetJobError",
    "FleetStatus",
    "FleetWorker",
    "QueueDepth",
    "RedisRateLimiter",
    "RedisTokenStore",
    "RedisUnavailableError",
    "WorkerItem",
    "WorkerStatus",
]
