"""The ``guru-async`` command line: upload and analyse videos, inspect results, run a demo.

Credentials come only from the environment (``GURU_CLIENT_ID``, ``GURU_CLIENT_SECRET``, and
optionally ``GURU_BASE_URL`` / ``GURU_TOKEN_URL``), so they never land in shell history or in
``ps`` output. The access token is cached in ``$XDG_CACHE_HOME/guru-async/tokens.json`` (or
``$GURU_ASYNC_CACHE_DIR/tokens.json``), so repeated invocations reuse one token.

Exit status: 0 when everything succeeded, 1 when some video failed (analysis Failed, upload
refused, timeout, an API error), 2 for usage errors, bad input (missing file, unknown
activity, missing credentials, an id the API does not know) and setup errors that would fail
every video alike (credentials refused, the API unreachable before anything succeeded, the
fleet's Redis unreachable), 130 after Ctrl-C and 143 after SIGTERM; an interrupted command
names what it leaves behind and how to resume.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys

from .._errors import (
    AnalysisTimeoutError,
    AuthenticationError,
    GuruError,
    JournalError,
    NotFoundError,
)
from .._polling import DEFAULT_TIMEOUT
from .._version import __version__
from ..plot import JOINT_ANGLES
from ._commands import (
    cmd_analysis,
    cmd_batch,
    cmd_download,
    cmd_j2p,
    cmd_plot,
    cmd_update,
    cmd_upload,
    cmd_video,
    parse_include,
    resume_command,
    timeout_message,
)
from ._config import UsageError
from ._constants import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_USAGE, PROG, log
from ._fleet import add_redis_option, add_worker_command
from ._fleet_demo import cmd_demo_any
from ._fleet_status import add_fleet_command
from ._output import Output, missing_extra

# -- the parser and main ---------------------------------------------------------------------


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {value!r}") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value!r}")
    return number


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    # Added to the main parser and to every subcommand, so they work before or after it; the
    # subcommands' copies default to SUPPRESS so they never undo a value given before.
    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="machine output: one JSON document (JSON lines for batch)",
    )
    parser.add_argument(
        "--emulator",
        action="store_true",
        default=default(False),
        help="run against an in-process Guru emulator started for this command",
    )
    parser.add_argument(
        "--base-url",
        default=default(None),
        metavar="URL",
        help="the API's root (default: $GURU_BASE_URL or the production API)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default(False),
        help="log guru_async's requests (DEBUG) to stderr",
    )


def _timeout_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"{help_text} ({DEFAULT_TIMEOUT:g})",
    )


def _video_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--activity", metavar="A", help="e.g. squat, push_up, sprint")
    parser.add_argument("--domain", metavar="D", help="filled in from --activity when omitted")
    parser.add_argument("--rep-count", type=int, metavar="N", help="reps the video shows")
    parser.add_argument("--source", metavar="S", help="your service's name")


def build_parser() -> argparse.ArgumentParser:
    """The ``guru-async`` argument parser."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Upload workout videos to the Guru API and read their analyses. Credentials come "
            "from GURU_CLIENT_ID and GURU_CLIENT_SECRET (GURU_BASE_URL, GURU_TOKEN_URL "
            f"optional). Try '{PROG} demo' to see it work offline."
        ),
        epilog=(
            "exit status: 0 all good, 1 some video failed, 2 usage error, bad input (an "
            "unknown id included) or a setup error (credentials refused, the API or Redis "
            "unreachable), 130 Ctrl-C, 143 SIGTERM"
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _global_options(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, suppress=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text, parents=[common])

    p = command("upload", "upload video files (and wait for their analyses with --wait)")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--wait", action="store_true", help="wait for each analysis")
    _timeout_option(p, "seconds to wait for each analysis")
    _video_options(p)
    p.set_defaults(handler=cmd_upload)

    p = command("batch", "upload many videos concurrently and collect their analyses")
    p.add_argument("paths", nargs="+", metavar="PATH", help="video files, or folders of them")
    p.add_argument(
        "--upload-concurrency", type=int, default=4, metavar="N", help="uploads at once (4)"
    )
    p.add_argument(
        "-r", "--recursive", action="store_true", help="also take videos in folders' sub-folders"
    )
    p.add_argument("--journal", metavar="F", help="SQLite journal: rerun to resume, never redo")
    p.add_argument("--out", metavar="F", help="write one JSON line per video to F")
    p.add_argument("--no-wait", action="store_true", help="do not wait for analyses")
    p.add_argument(
        "--fleet",
        action="store_true",
        help="run on a fleet's workers: enqueue the videos in the fleet's Redis (see --redis)",
    )
    add_redis_option(p)
    # Seconds a fleet batch waits with no live worker before it says so (tests shorten it).
    p.add_argument("--no-worker-warning", type=float, default=30.0, help=argparse.SUPPRESS)
    _timeout_option(p, "seconds to wait for each analysis")
    _video_options(p)
    p.set_defaults(handler=cmd_batch)

    p = command("video", "show a video's status, download links and overlays")
    p.add_argument("id", metavar="ID")
    p.add_argument(
        "--include", type=parse_include, metavar="LIST", help="any of j2p,analysis,objects"
    )
    p.set_defaults(handler=cmd_video)

    p = command("analysis", "show a video's analysis")
    p.add_argument("id", metavar="ID")
    p.add_argument("--wait", action="store_true", help="wait until it is Complete or Failed")
    _timeout_option(p, "seconds to wait with --wait")
    p.set_defaults(handler=cmd_analysis)

    p = command("j2p", "export per-frame joint positions")
    p.add_argument("id", metavar="ID")
    p.add_argument("--format", choices=("json", "csv"), default="json")
    p.add_argument("--out", metavar="F", help="write to F instead of stdout")
    p.set_defaults(handler=cmd_j2p)

    p = command("update", "change a video's rep count, activity or domain")
    p.add_argument("id", metavar="ID")
    p.add_argument("--rep-count", type=int, metavar="N")
    p.add_argument("--activity", metavar="A")
    p.add_argument("--domain", metavar="D")
    p.set_defaults(handler=cmd_update)

    p = command("download", "download a video, or an overlay of it")
    p.add_argument("id", metavar="ID")
    p.add_argument("--overlay", choices=("skeleton", "all"))
    p.add_argument("--out", metavar="F", help="default: ID.mp4 (ID-OVERLAY.mp4)")
    p.set_defaults(handler=cmd_download)

    p = command("plot", "plot a joint angle over time with the reps marked")
    p.add_argument("id", metavar="ID")
    p.add_argument("--out", required=True, metavar="F", help="image file, e.g. rep.png")
    p.add_argument(
        "--joint-angle",
        choices=tuple(JOINT_ANGLES),
        default="hip-knee",
        help="the angle at the second joint (default: hip-knee, the knee angle)",
    )
    p.add_argument("--side", choices=("left", "right"), default="left")
    p.set_defaults(handler=cmd_plot)

    p = command("demo", "run a batch against a local emulator: table, journal, plot")
    p.add_argument("--out", default="guru-demo", metavar="DIR", help="default: ./guru-demo")
    p.add_argument(
        "--fleet",
        action="store_true",
        help="run it on a local fleet: redis-server, 2 workers, one killed mid-run",
    )
    p.set_defaults(handler=cmd_demo_any)

    add_worker_command(
        command("worker", "run a fleet worker: upload the videos a Redis queue holds")
    )
    add_fleet_command(command("fleet", "see what a fleet is doing: 'fleet status'"), common)

    # add_help=False: --help and every option belong to the emulator's own parser.
    p = sub.add_parser(
        "emulator", help="serve a local Guru emulator (see 'emulator --help')", add_help=False
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``guru-async`` command line.

    Args:
        argv: The arguments, without the program name; default ``sys.argv[1:]``.

    Returns:
        The exit status: 0 all good, 1 some video failed, 2 usage error or bad input.
    """
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if args.command == "emulator":
            from ..testing import main as emulator_main

            return emulator_main((["--json"] if args.json else []) + extra, prog=f"{PROG} emulator")
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if args.emulator and args.base_url:
            parser.error("--emulator and --base-url cannot be combined")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE

    # A worker machine installs only the fleet extra: the worker logs plain lines, it needs
    # no rich; every other command draws with it.
    missing = None if args.command == "worker" else missing_extra()
    if missing is not None:
        return _fail(missing, EXIT_USAGE)
    logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.verbose:
        logging.getLogger("guru_async").setLevel(logging.DEBUG)
    out = Output(args.json)
    args.created = {}
    try:
        status: int = asyncio.run(_run(args, out))
        return status
    except (KeyboardInterrupt, _Terminated) as exc:
        print(f"\n{PROG}: interrupted{_resume_hint(args)}", file=sys.stderr)
        return EXIT_TERMINATED if isinstance(exc, _Terminated) else EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (``guru-async ... | head``): not an error worth a message.
        # Point stdout at devnull so the interpreter's final flush does not fail again.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except (AuthenticationError, JournalError) as exc:
        return _fail(exc, EXIT_USAGE)
    except NotFoundError as exc:
        # Only commands given an id let a 404 reach here (upload and batch report it per
        # file): the id is bad input, like a missing file.
        return _fail(_unknown_id(args, exc), EXIT_USAGE)
    except AnalysisTimeoutError as exc:
        return _fail(timeout_message(exc), EXIT_FAILED)
    except GuruError as exc:
        return _fail(exc, EXIT_FAILED)
    except (UsageError, ValueError, ImportError, OSError) as exc:
        # Bad input the SDK or the CLI caught before (or instead of) a request: its message
        # names the accepted values, a traceback would only bury it.
        return _fail(exc, EXIT_USAGE)


class _Terminated(Exception):
    """SIGTERM arrived: the command was cancelled like Ctrl-C cancels it."""


async def _run(args: argparse.Namespace, out: Output) -> int:
    # Ctrl-C already cancels the main task (asyncio.run's own SIGINT handler); SIGTERM, by
    # default an instant silent death, is made to do the same, so what was created is reported
    # and a journal is left consistent.
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    terminated = False

    def on_sigterm() -> None:
        nonlocal terminated
        terminated = True
        if task is not None:
            task.cancel()

    # Not on Windows, nor outside the main thread: there SIGTERM keeps its default.
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        status: int = await args.handler(args, out)
        return status
    except asyncio.CancelledError:
        if terminated:
            raise _Terminated from None
        raise
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGTERM)


def _resume_hint(args: argparse.Namespace) -> str:
    """What an interrupted command leaves behind and how to pick it up."""
    journal = getattr(args, "journal", None)
    if journal:
        return f"; rerun with --journal {journal} to resume"
    created: dict[str, str] = args.created
    if not created:
        return "; add --journal FILE to make a batch resumable" if args.command == "batch" else ""
    lines = [
        f"; {len(created)} video{'s' * (len(created) != 1)} already uploaded, their analyses "
        "go on without this command:"
    ]
    lines += [f"  {name}  {video_id}" for name, video_id in created.items()]
    lines.append("resume waiting with:")
    lines += [f"  {resume_command(video_id)}" for video_id in created.values()]
    return "\n".join(lines)


def _unknown_id(args: argparse.Namespace, exc: NotFoundError) -> str:
    video_id = getattr(args, "id", None)
    message = f"no video with id {video_id!r} ({exc})" if video_id else str(exc)
    if args.emulator:
        message += (
            f"; --emulator starts an empty emulator for this one command, so no id from another "
            f"run exists there: try '{PROG} --emulator upload FILE --wait', or serve one with "
            f"'{PROG} emulator' and export what it prints"
        )
    return message


def _fail(exc: BaseException | str, status: int) -> int:
    if isinstance(exc, BaseException):
        log.debug("%s failed", PROG, exc_info=exc)
    print(f"{PROG}: error: {exc}", file=sys.stderr)
    return status
