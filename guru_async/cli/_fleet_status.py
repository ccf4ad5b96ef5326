"""``guru-async fleet status``: what a fleet is doing, read from its Redis (nothing written)."""

from __future__ import annotations

import argparse
import json
import os
from typing import TYPE_CHECKING

from ._config import UsageError
from ._constants import EXIT_OK
from ._output import Output

if TYPE_CHECKING:
    from ..fleet import QueueDepth, WorkerStatus

REDIS_ENV = "GURU_REDIS_URL"
WORKER_HEADER = ["HOST", "PID", "CONCURRENCY", "UPTIME", "CURRENT ITEMS"]


def add_fleet_command(fleet: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    """The ``fleet`` command and its ``status`` subcommand (given the global options)."""
    sub = fleet.add_subparsers(dest="fleet_command", metavar="COMMAND", required=True)
    what = "show the fleet's workers, queues, items, request rate and token age"
    status = sub.add_parser("status", help=what, description=what, parents=[common])
    status.add_argument(
        "--redis",
        metavar="URL",
        help=f"the fleet's Redis, e.g. redis://host:6379/0 (default: ${REDIS_ENV})",
    )
    status.add_argument("--queue", default=None, metavar="NAME", help="the fleet's queue name")
    status.set_defaults(handler=cmd_fleet_status)


async def cmd_fleet_status(args: argparse.Namespace, out: Output) -> int:
    """``fleet status``: a snapshot of the account's fleet (``GURU_CLIENT_ID`` and the base
    URL name the account; no secret is needed)."""
    try:
        from ..fleet import Fleet
        from ..fleet._protocol import DEFAULT_QUEUE
    except ImportError as exc:
        raise UsageError(str(exc)) from None
    url = args.redis or os.environ.get(REDIS_ENV)
    if not url:
        raise UsageError(f"the fleet's Redis is not set: export {REDIS_ENV} or give --redis URL")
    try:
        fleet = Fleet(url, base_url=args.base_url, queue=args.queue or DEFAULT_QUEUE)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    async with fleet:
        status = await fleet.status()
    if out.json:
        out.result(json.dumps(status.to_dict()))
        return EXIT_OK
    out.result(
        f"fleet {status.queue!r} (account {status.account}) on {status.where}: "
        f"{_count(len(status.workers), 'live worker')}"
    )
    if status.workers:
        out.table(WORKER_HEADER, [_worker_row(w) for w in status.workers], right=1, wrap=(4,))
    else:
        out.result(f"no live worker: start one with '{fleet.start_hint()}'")
    out.result(
        f"queues: uploads {_depth(status.uploads)}; analyses {_depth(status.analyses)}\n"
        f"items: {', '.join(f'{n} {state}' for state, n in status.items.items())}\n"
        f"requests: {_rate(status.request_rate, status.rate_ceiling)}\n"
        f"token: {_token(status.token_age, status.token_expires_in)}"
    )
    return EXIT_OK


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def duration(seconds: float) -> str:
    """E.g. ``42 s``, ``3 min 05 s``, ``2 h 03 min``."""
    whole = int(seconds)
    if whole < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def _worker_row(worker: WorkerStatus) -> list[str]:
    items = ", ".join(
        f"{item.file} ({item.state}, {duration(item.seconds)})" for item in worker.items
    )
    return [
        worker.host,
        str(worker.pid),
        f"{worker.concurrency} uploads, {worker.max_waiting} analyses",
        duration(worker.uptime),
        items or "idle",
    ]


def _depth(depth: QueueDepth) -> str:
    return f"{depth.queued} queued, {depth.active} active, {depth.scheduled} scheduled"


def _rate(rate: float | None, ceiling: float | None) -> str:
    if rate is None or ceiling is None:
        return "not counted (no worker runs under a fleet ceiling: start workers with --rate R)"
    share = f" ({rate / ceiling:.0%})" if ceiling else ""
    return f"{rate:.1f}/s over the last 10 s, of a {ceiling:g}/s ceiling{share}"


def _token(age: float | None, expires_in: float | None) -> str:
    if age is None or expires_in is None:
        return "none shared in Redis now (workers keep it in RedisTokenStore once they call)"
    return f"issued {duration(age)} ago, expires in {duration(expires_in)}"
