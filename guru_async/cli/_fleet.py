"""The fleet's commands: ``worker`` (one worker process) and ``batch --fleet`` (a producer)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Protocol

from .._batch import BatchProgress, BatchResult
from .._polling import PollPolicy
from .._session import GuruSession
from ._config import UsageError, credentials, open_session, video_fields
from ._constants import EXIT_OK
from ._output import Output

REDIS_ENV = "GURU_REDIS_URL"


class BatchResults(Protocol):
    """A batch's results, local or on the fleet: iterate, then ``aclose()`` to stop it."""

    def __aiter__(self) -> AsyncIterator[BatchResult]:
        """The results, in completion order."""
        ...

    def aclose(self) -> Awaitable[object]:
        """Stop the batch: what is in flight is cancelled (a journal keeps what finished)."""
        ...


REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def fleet_url(value: str | None) -> str:
    """The fleet's Redis URL from ``--redis`` or ``$GURU_REDIS_URL`` (kept out of ``ps``)."""
    url = value or os.environ.get(REDIS_ENV)
    if not url:
        raise UsageError(
            f"the fleet's Redis is not set: export {REDIS_ENV}=redis://host:6379/0 (an "
            "environment variable keeps its password out of 'ps'), or give --redis URL"
        )
    return url


def add_redis_option(sub: argparse.ArgumentParser) -> None:
    """``--redis URL``, shared by ``worker`` and ``batch --fleet``."""
    sub.add_argument(
        "--redis",
        metavar="URL",
        help=(
            f"the fleet's Redis, e.g. redis://host:6379/0 (default: ${REDIS_ENV}, which keeps "
            "a password out of 'ps')"
        ),
    )


def add_worker_command(sub: argparse.ArgumentParser) -> None:
    """The ``worker`` subcommand's options."""
    add_redis_option(sub)
    sub.add_argument("--concurrency", type=int, default=4, metavar="N", help="uploads at once (4)")
    sub.add_argument(
        "--rate",
        type=float,
        default=None,
        metavar="R",
        help="the whole fleet's ceiling on API requests per second (shared in Redis)",
    )
    sub.add_argument(
        "--max-waiting", type=int, default=32, metavar="N", help="analyses awaited at once (32)"
    )
    sub.add_argument("--queue", default=None, metavar="NAME", help="the fleet's queue name")
    sub.add_argument(
        "--grace",
        type=float,
        default=30.0,
        metavar="S",
        help="on SIGTERM, seconds uploads in flight may take before being handed back (30)",
    )
    sub.add_argument("--poll-interval", type=float, default=None, help=argparse.SUPPRESS)
    sub.add_argument("--sweep-interval", type=int, default=5, help=argparse.SUPPRESS)
    sub.set_defaults(handler=cmd_worker)


async def open_batch(
    stack: contextlib.AsyncExitStack,
    args: argparse.Namespace,
    items: Iterable[str],
    progress: Callable[[BatchProgress], None],
) -> BatchResults:
    """The ``batch`` command's results: from this process, or with ``--fleet`` from the
    fleet's workers (this process then only enqueues and reads results)."""
    fields = video_fields(args)
    if not args.fleet:
        if args.redis is not None:
            raise UsageError("--redis is the fleet's Redis: add --fleet to run on its workers")
        guru = await stack.enter_async_context(open_session(args))
        return guru.batch_upload(
            items,
            upload_concurrency=args.upload_concurrency,
            wait=not args.no_wait,
            journal=args.journal,
            progress=progress,
            timeout=args.timeout,
            count_ahead=True,  # BatchInputs lists its folders afresh for each reading
            **fields,
        )
    try:
        from ..fleet import Fleet, RedisUnavailableError
    except ImportError as exc:
        raise UsageError(str(exc)) from None
    try:
        # The workers' account: GURU_CLIENT_ID (no secret needed here) and the base URL.
        producer = Fleet(
            fleet_url(args.redis),
            base_url=getattr(args, "base_url", None),
            no_worker_warning=args.no_worker_warning,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        fleet = await stack.enter_async_context(producer)
    except RedisUnavailableError as exc:
        # Every item would fail alike: one line and exit 2, before anything is enqueued.
        raise UsageError(str(exc)) from None
    return fleet.batch_upload(
        items,
        count_ahead=True,  # BatchInputs lists its folders afresh for each reading
        wait=not args.no_wait,
        journal=args.journal,
        progress=progress,
        timeout=args.timeout,
        **fields,
    )


async def cmd_worker(args: argparse.Namespace, out: Output) -> int:
    """``worker --redis URL``: take the fleet's items and upload them until SIGTERM."""
    try:
        from ..fleet import FleetWorker, RedisRateLimiter, RedisTokenStore, RedisUnavailableError
        from ..fleet._protocol import DEFAULT_QUEUE
    except ImportError as exc:
        raise UsageError(str(exc)) from None
    if args.verbose:
        logging.getLogger("saq").setLevel(logging.INFO)
    else:
        # A worker's own story (waiting for Redis, Redis back, stopping) is told at INFO.
        logging.getLogger("guru_async.fleet").setLevel(logging.INFO)
    url = fleet_url(args.redis)
    client_id, client_secret = credentials()
    store = RedisTokenStore(url)
    limiter = None if args.rate is None else RedisRateLimiter(url, rate=args.rate)
    poll_policy = None
    if args.poll_interval is not None:
        poll_policy = PollPolicy(
            interval=args.poll_interval,
            max_interval=max(args.poll_interval, 5 * args.poll_interval),
        )
    session = GuruSession(
        client_id,
        client_secret,
        base_url=args.base_url,
        token_store=store,
        limiter=limiter,
        poll_policy=poll_policy,
    )
    worker = FleetWorker(
        url,
        session=session,
        queue=args.queue or DEFAULT_QUEUE,
        concurrency=args.concurrency,
        max_waiting=args.max_waiting,
        grace=args.grace,
        sweep_interval=args.sweep_interval,
    )

    async def ready() -> None:
        print(f"worker ready: pid {os.getpid()}, {worker.where}", file=sys.stderr, flush=True)

    try:
        async with session:
            await worker.run(on_ready=ready)
    except RedisUnavailableError as exc:
        # Only a refused password or user ends a worker at start (it waits out an outage):
        # a setting to fix, exit 2.
        raise UsageError(str(exc)) from None
    finally:
        await store.aclose()
        if limiter is not None:
            await limiter.aclose()
    print(f"worker stopped: pid {os.getpid()}", file=sys.stderr, flush=True)
    return EXIT_OK
