"""Run the emulator standalone until interrupted, printing where it listens."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shlex
import signal
import sys

from guru_async.testing._api import STATS_PATH
from guru_async.testing._emulator import GuruEmulator
from guru_async.testing._faults import ROUTES, FaultRule, parse_fault
from guru_async.testing._state import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    # Shows real defaults only: "(default: None)" or "(default: False)" says nothing.
    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default == []:
            return action.help
        return super()._get_help_string(action)


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Serve a local emulator of the Guru API (and its upload storage) until Ctrl-C or "
            "SIGTERM, printing export lines for GURU_BASE_URL, GURU_CLIENT_ID and the rest."
        ),
        formatter_class=_DefaultsFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="the interface to listen on")
    parser.add_argument("--port", type=int, default=0, help="API port; 0 picks a free one")
    parser.add_argument(
        "--storage-port", type=int, default=0, help="upload storage port; 0 picks a free one"
    )
    parser.add_argument(
        "--analysis-delay",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="seconds from a finished upload until its analysis is Complete",
    )
    parser.add_argument(
        "--analysis-seconds-per-mb",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="seconds of analysis per MB (10**6 bytes) uploaded, added to --analysis-delay",
    )
    parser.add_argument(
        "--analysis-spread",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="scale each analysis's time by a seeded draw from [1 - FRACTION, 1 + FRACTION]",
    )
    parser.add_argument(
        "--token-lifetime",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="how long an issued access token is valid (expires_in)",
    )
    parser.add_argument(
        "--presign-lifetime",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="how long a presigned upload stays valid",
    )
    parser.add_argument(
        "--storage-bandwidth",
        type=float,
        default=None,
        metavar="BYTES_PER_S",
        help="cap each upload's speed, like one stream over a real network; none when omitted",
    )
    parser.add_argument(
        "--storage-dir",
        default=None,
        metavar="DIR",
        help="keep uploads here; a temporary folder removed on exit when omitted",
    )
    parser.add_argument(
        "--video-seconds",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="length of the synthetic video behind every result",
    )
    parser.add_argument("--fps", type=float, default=30.0, help="frame rate of that video")
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds synthetic results and fault injection"
    )
    parser.add_argument(
        "--client-id", default=DEFAULT_CLIENT_ID, help="the client id the token endpoint accepts"
    )
    parser.add_argument(
        "--client-secret",
        default=DEFAULT_CLIENT_SECRET,
        help="the client secret the token endpoint accepts",
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        type=_fault,
        metavar="ROUTE[:KEY=VALUE...]",
        help=(
            "inject a fault, as FaultRule does in tests; repeatable. KEYs: rate (0-1, default "
            "1), kind (status, delay, drop, truncate, malformed; default status), status "
            "(default 503), retry_after, delay, times. ROUTE is * or one of: "
            + ", ".join(ROUTES)
            + '. E.g. --fault "POST /storage:rate=0.5:status=503"'
        ),
    )
    parser.add_argument(
        "--json", action="store_true", help="print the endpoints as one JSON object line"
    )
    return parser


def _fault(text: str) -> FaultRule:
    try:
        return parse_fault(text)
    except ValueError as exc:
        # argparse turns this into "usage: ... error: argument --fault: ..." and exit 2.
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None, *, prog: str = "python -m guru_async.testing") -> int:
    """Run the emulator from command-line arguments until Ctrl-C or SIGTERM.

    Args:
        argv: The arguments, without the program name; default ``sys.argv[1:]``.
        prog: The command's name in ``--help`` and error messages.

    Returns:
        The process exit status: 0 after a clean stop, 2 for bad arguments or a port that
        cannot be bound (taken, or not allowed).
    """
    parser = _parser(prog)
    args = parser.parse_args(argv)
    if not args.analysis_seconds_per_mb >= 0:
        parser.error("--analysis-seconds-per-mb must be >= 0")
    if not 0 <= args.analysis_spread < 1:
        parser.error("--analysis-spread must be in [0, 1)")
    try:
        # The signal handlers stop the server cleanly; KeyboardInterrupt covers platforms
        # without them.
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve(args))
    except OSError as exc:
        # Binding failed: one line that names the address, not a traceback.
        print(
            f"{prog}: error: cannot serve: {exc.strerror or exc}; pick another --port or "
            "--storage-port (0 picks a free one)",
            file=sys.stderr,
        )
        return 2
    return 0


async def _serve(args: argparse.Namespace) -> None:
    emulator = GuruEmulator(
        client_id=args.client_id,
        client_secret=args.client_secret,
        host=args.host,
        port=args.port,
        storage_port=args.storage_port,
        analysis_delay=args.analysis_delay,
        analysis_seconds_per_mb=args.analysis_seconds_per_mb,
        analysis_spread=args.analysis_spread,
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
    for rule in args.fault:
        emulator.faults.add(rule)
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
