"""What a fleet looks like from its Redis: the live workers (what each publishes about itself in
saq's worker info), the queues' depths, the items per state, the request rate against the
ceiling and the shared token's age. Read by ``Fleet.status()`` (``guru-async fleet status``)
and, for the count of live workers, by a producer's batch.

Keys read (``A`` the account, ``Q`` the queue name; see ``_protocol``), never written:

    saq:Q.A:stats, saq:Q.A:worker_info:<id>  saq's worker registry: a sorted set of the workers
                                  whose info is still valid (scored by its expiry, ms on the
                                  worker's clock) and each one's info (JSON: stats, queue,
                                  metadata; expires ``worker_info`` + 1 s after it was written,
                                  3 s for a fleet worker, which writes it every 2 s). A
                                  fleet worker's metadata has ``kind`` =
                                  ``guru-async-worker``: anything else registered there (a
                                  monitor, another program) is not counted.
    saq:Q.A:queued / active / incomplete, and the same of saq:Q-poll.A  saq's lists
    guru:fleet:A:Q:item:*         the items' records (their ``state`` field)
    {rate key}:counts             the rate limiter's requests per second (see ``_rate``)
    {token prefix}{credentials hash}  the shared token (its lifetime, margin and TTL)
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterable
from typing import Any

import redis.asyncio as redis_async
from attrs import asdict, frozen
from yarl import URL

from .._upload import is_url

WORKER_KIND = "guru-async-worker"
# The items an item record can be in (see ``_claims``), in their order.
ITEM_STATES = ("created", "uploaded", "done")


@frozen
class WorkerItem:
    """One item a worker is busy with.

    Attributes:
        file: The file's name (a URL's last path segment, never its query).
        state: ``uploading`` or ``awaiting analysis``.
        video_id: Its video, once known.
        seconds: How long the worker has been at it (on the worker's clock).
    """

    file: str
    state: str
    video_id: str | None
    seconds: float


@frozen
class WorkerStatus:
    """One live fleet worker, as it last described itself (every 2 s).

    Attributes:
        host: The machine's host name.
        pid: Its process id.
        concurrency: Uploads it runs at once.
        max_waiting: Analyses it awaits at once.
        uptime: Seconds since it started.
        items: What it is working on now.
        version: The guru-async version it runs.
    """

    host: str
    pid: int
    concurrency: int
    max_waiting: int
    uptime: float
    items: tuple[WorkerItem, ...]
    version: str


@frozen
class QueueDepth:
    """One saq queue's jobs by where they are.

    Attributes:
        queued: Waiting for a worker.
        active: Taken by a worker.
        scheduled: Waiting for a retry's delay (or a scheduled start).
    """

    queued: int
    active: int
    scheduled: int


@frozen
class FleetStatus:
    """A snapshot of one account's fleet on one Redis (see ``Fleet.status``).

    Attributes:
        where: The Redis, without its password.
        queue: The fleet's queue name (``--queue``).
        account: The account its keys are namespaced by.
        workers: The live workers (a worker that stopped or died drops out within 3 s).
        uploads: The upload queue's depth.
        analyses: The depth of the queue of videos whose analysis is awaited.
        items: Item records per state (``created``, ``uploaded``, ``done``; ``creating``
            too while a Create Video is in flight), within their retention.
        request_rate: The fleet's API requests per second over the last 10 s, as counted by
            its ``RedisRateLimiter``; None without one.
        rate_ceiling: That limiter's ceiling (requests per second); None without one.
        token_age: Seconds since the fleet's shared token was issued; None when no worker
            shares its token through ``RedisTokenStore`` or none is stored now.
        token_expires_in: Seconds until that token expires.
    """

    where: str
    queue: str
    account: str
    workers: tuple[WorkerStatus, ...]
    uploads: QueueDepth
    analyses: QueueDepth
    items: dict[str, int]
    request_rate: float | None
    rate_ceiling: float | None
    token_age: float | None
    token_expires_in: float | None

    def to_dict(self) -> dict[str, Any]:
        """The snapshot as plain JSON-ready data (what ``fleet status --json`` prints)."""
        data: dict[str, Any] = asdict(self, recurse=True)
        return data


def display_name(path: str) -> str:
    """What logs and the status show of an item: a file's name, a URL's last path segment
    (a query may hold a presigned signature: never shown)."""
    if is_url(path):
        url = URL(path)
        return url.name or url.host or "url"
    return os.path.basename(path) or path


class WorkerActivity:
    """What one worker process publishes about itself in saq's worker info (both of its saq
    workers share this metadata): who it is, and the items it is busy with.

    Args:
        concurrency: Uploads at once.
        max_waiting: Analyses awaited at once.
        account: The account it serves.
        queue: The fleet's queue name.
        extra: More facts to publish (the rate key and ceiling, the token key).
    """

    def __init__(
        self,
        *,
        concurrency: int,
        max_waiting: int,
        account: str,
        queue: str,
        extra: dict[str, Any],
    ) -> None:
        from .._version import __version__

        self.metadata: dict[str, Any] = {
            "kind": WORKER_KIND,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "concurrency": concurrency,
            "max_waiting": max_waiting,
            "account": account,
            "queue": queue,
            "started": time.time(),
            "version": __version__,
            **extra,
            "items": [],
        }
        self._items: dict[str, dict[str, Any]] = {}

    def begin(self, job: str, file: str, state: str, video_id: str | None = None) -> None:
        """Note that job ``job`` works on ``file`` (published with the next worker info)."""
        self._items[job] = {
            "file": file,
            "state": state,
            "video_id": video_id,
            "since": time.time(),
        }
        self._publish()

    def video(self, job: str, video_id: str) -> None:
        """Note the video of a job's item."""
        entry = self._items.get(job)
        if entry is not None:
            entry["video_id"] = video_id
            self._publish()

    def end(self, job: str) -> None:
        """Forget a job's item: it is done here (or handed back)."""
        if self._items.pop(job, None) is not None:
            self._publish()

    def _publish(self) -> None:
        # A new list each time: saq serializes the metadata every few seconds.
        self.metadata["items"] = [dict(entry) for entry in self._items.values()]


def _number(value: object, default: float = 0.0) -> float:
    return (
        float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default
    )


def _worker(info: dict[str, Any], now: float) -> WorkerStatus | None:
    """A fleet worker's status from its saq worker info, or None for anything else."""
    meta = info.get("metadata")
    if not isinstance(meta, dict) or meta.get("kind") != WORKER_KIND:
        return None
    stats = info.get("stats") if isinstance(info.get("stats"), dict) else {}
    assert isinstance(stats, dict)
    # From its start on its own clock (saq's uptime is as old as the info, up to 2 s).
    uptime = max(now - _number(meta.get("started"), now), _number(stats.get("uptime")) / 1000)
    items = []
    for entry in meta.get("items") or ():
        if not isinstance(entry, dict):
            continue
        video = entry.get("video_id")
        items.append(
            WorkerItem(
                file=str(entry.get("file", "?")),
                state=str(entry.get("state", "?")),
                video_id=video if isinstance(video, str) else None,
                seconds=max(now - _number(entry.get("since"), now), 0.0),
            )
        )
    return WorkerStatus(
        host=str(meta.get("host", "?")),
        pid=int(_number(meta.get("pid"))),
        concurrency=int(_number(meta.get("concurrency"))),
        max_waiting=int(_number(meta.get("max_waiting"))),
        uptime=uptime,
        items=tuple(items),
        version=str(meta.get("version", "?")),
    )


async def worker_infos(client: redis_async.Redis, queue_name: str) -> list[dict[str, Any]]:
    """The saq worker infos still valid on queue ``queue_name`` (any kind of worker)."""
    now_ms = int(time.time() * 1000)
    keys = await client.zrangebyscore(f"saq:{queue_name}:stats", now_ms, "+inf")
    if not keys:
        return []
    raw = await client.mget(keys)
    infos = []
    for value in raw:
        if value is None:
            continue
        try:
            info = json.loads(value)
        except ValueError:
            continue
        if isinstance(info, dict):
            infos.append(info)
    return infos


async def live_workers(client: redis_async.Redis, queue_name: str) -> list[WorkerStatus]:
    """The fleet workers serving saq queue ``queue_name`` now (monitors are not counted)."""
    now = time.time()
    found = (_worker(info, now) for info in await worker_infos(client, queue_name))
    return sorted((w for w in found if w is not None), key=lambda w: (w.host, w.pid))


async def queue_depth(client: redis_async.Redis, queue_name: str) -> QueueDepth:
    """A saq queue's jobs by where they are."""
    async with client.pipeline(transaction=False) as pipe:
        pipe.llen(f"saq:{queue_name}:queued")
        pipe.llen(f"saq:{queue_name}:active")
        pipe.zcard(f"saq:{queue_name}:incomplete")
        queued, active, incomplete = await pipe.execute()
    return QueueDepth(
        queued=int(queued), active=int(active), scheduled=max(int(incomplete) - queued - active, 0)
    )


async def item_states(client: redis_async.Redis, pattern: str) -> dict[str, int]:
    """Item records per state (one SCAN of the account's records: linear in their number)."""
    counts = dict.fromkeys(ITEM_STATES, 0)
    batch: list[Any] = []

    async def tally(keys: Iterable[Any]) -> None:
        async with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hget(key, "state")
            for state in await pipe.execute():
                if state is not None:
                    name = state.decode() if isinstance(state, bytes) else str(state)
                    counts[name] = counts.get(name, 0) + 1

    async for key in client.scan_iter(match=pattern, count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            await tally(batch)
            batch = []
    if batch:
        await tally(batch)
    return counts


async def token_times(client: redis_async.Redis, key: str) -> tuple[float, float] | None:
    """The shared token's age and time to expiry, from its key (no secret needed), or None."""
    async with client.pipeline(transaction=True) as pipe:
        pipe.hmget(key, ["lifetime", "margin"])
        pipe.pttl(key)
        (lifetime, margin), pttl = await pipe.execute()
    if pttl is None or pttl <= 0 or not lifetime or margin is None:
        return None
    try:
        expires_in = pttl / 1000 + float(margin)
        return max(float(lifetime) - expires_in, 0.0), expires_in
    except ValueError:
        return None


async def request_rate(client: redis_async.Redis, key: str) -> tuple[float, float] | None:
    """The requests per second booked over the last 10 whole seconds of Redis's clock, and
    the ceiling, from a RedisRateLimiter's counts (see ``_rate``); None without them."""
    async with client.pipeline(transaction=False) as pipe:
        pipe.time()
        pipe.hgetall(key)
        (seconds, _), counts = await pipe.execute()
    if not counts:
        return None
    fields = {
        (k.decode() if isinstance(k, bytes) else str(k)): (
            v.decode() if isinstance(v, bytes) else str(v)
        )
        for k, v in counts.items()
    }
    now = int(seconds)
    booked = 0
    for bucket in range(64):
        second = fields.get(f"s{bucket}")
        if second is not None and now - 10 <= int(second) < now:
            booked += int(fields.get(f"n{bucket}", "0"))
    try:
        ceiling = float(fields["rate"])
    except (KeyError, ValueError):
        return None
    return booked / 10, ceiling
