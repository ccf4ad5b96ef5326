"""guru_async.fleet: many worker processes, on many machines, sharing one Guru account.

Needs the ``fleet`` extra (``pip install "guru-async[fleet]"``): redis-py and saq. Every piece
shares one Redis (a real redis-server; valkey works too):

- :class:`RedisTokenStore`: one token for the whole fleet, refreshed once for all of it.
- :class:`RedisRateLimiter`: one ceiling on the fleet's API requests per second.
"""

from __future__ import annotations

try:
    import redis.asyncio  # noqa: F401 - checked here, so the error names the extra
except ImportError as exc:  # pragma: no cover - exercised with the extra uninstalled
    raise ImportError(
        'guru_async.fleet needs the "fleet" extra: pip install "guru-async[fleet]" '
        f"(missing: {exc.name})"
    ) from exc

from ._rate import RedisRateLimiter
from ._redis import RedisUnavailableError
from ._tokens import RedisTokenStore

__all__ = [
    "RedisRateLimiter",
    "RedisTokenStore",
    "RedisUnavailableError",
]
