"""Run the emulator standalone until interrupted, printing where it listens."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shlex
import signal
import sys

from guru_async.testing._emulator import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    STATS_PATH,
    GuruEmulator,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m guru_async.testing",
        description="Serve a local emulator of the Guru API until interrupted.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="API port (default: any free port)")
    parser.add_argument("--storage-port", type=int, default=0, help="storage port (default: any)")
    parser.add_argument("--analysis-delay", type=float, default=1.0, metavar="SECONDS")
    parser.add_argument("--token-lifetime", type=float, default=3600.0, metavar="SECONDS")
    parser.add_argument("--presign-lifetime", type=float, default=3600.0, metavar="SECONDS")
    parser.add_argument(
        "--storage-bandwidth",
        type=float,
        default=None,
        metavar="BYTES_PER_S",
        help="cap each upload's speed, like one stream over a real network",
    )
    parser.add_argument(
        "--storage-dir", default=None, help="keep uploads here (default: a temporary folder)"
    )
    parser.add_argument("--video-seconds", type=float, default=10.0, metavar="SECONDS")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--client-id", default=DEFAULT_CLIENT_ID)
    parser.add_argument("--client-secret", default=DEFAULT_CLIENT_SECRET)
    parser.add_argument(
        "--json", action="store_true", help="print the endpoints as one JSON object line"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the emulator from command-line arguments until Ctrl-C or SIGTERM.

    Args:
        argv: The arguments, without the program name; default ``sys.argv[1:]``.

    Returns:
        The process exit status.
    """
    args = _parser().parse_args(argv)
    # The signal handlers stop the server cleanly; KeyboardInterrupt covers platforms without them.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


async def _serve(args: argparse.Namespace) -> None:
    emulator = GuruEmulator(
        client_id=args.client_id,
        client_secret=args.client_secret,
        host=args.host,
        port=args.port,
        storage_port=args.storage_port,
        analysis_delay=args.analysis_delay,
        token_lifetime=args.token_lifetime,
        presign_lifetime=args.presign_lifetime,
        storage_dir=args.storage_dir,
        storage_bandwidth=args.storage_bandwidth,
        video_seconds=args.video_seconds,
        fps=args.fps,
        seed=args.seed,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, AttributeError):
            loop.add_signal_handler(signum, stop.set)
    async with emulator:
        endpoints = {
            "base_url": emulator.base_url,
            "token_url": emulator.token_url,
            "storage_url": emulator.storage_url,
            "client_id": emulator.client_id,
            "client_secret": emulator.client_secret,
            "stats_url": emulator.base_url + STATS_PATH,
        }
        if args.json:
            print(json.dumps(endpoints), flush=True)
        else:
            for name, value in endpoints.items():
                print(f"export GURU_{name.upper()}={shlex.quote(value)}", flush=True)
            print("# serving; press Ctrl-C to stop", file=sys.stderr, flush=True)
        await stop.wait()
