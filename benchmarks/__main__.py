"""``python -m benchmarks``: run every figure and rewrite benchmarks/RESULTS.md.

Options:
    --quick       small sizes, for a smoke run in well under a minute
    --only NAME   run only this figure group (repeatable): upload, memory, tokens, polling,
                  overhead, decode, scale, soak, fleet_limits, fleet, chaos,
                  prediction, makespan
    --seeds N     how many seeded fault schedules the chaos group runs (default 50; 2 quick)
    --merge       with --only: put the measured figures into RESULTS.md (or --output), in place
                  of the same figures, keeping every other one, e.g.
                  ``python -m benchmarks --only chaos --seeds 50 --merge``
    --output PATH where to write the results; a full run of every figure writes
                  benchmarks/RESULTS.md by default, a --quick or --only run prints the table and
                  writes a file only when given --output (so it never replaces the full results)
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import inspect
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import ModuleType

import benchmarks
from benchmarks import (
    chaos,
    decode,
    fleet,
    fleet_limits,
    makespan,
    memory,
    overhead,
    polling,
    prediction,
    scale,
    soak,
    tokens,
    upload,
)
from benchmarks._harness import Figure, log, render, scratch_root
from benchmarks._merge import merge

GROUPS: dict[str, ModuleType] = {
    module.NAME: module
    for module in (
        upload,
        memory,
        tokens,
        polling,
        overhead,
        decode,
        scale,
        soak,
        fleet_limits,
        fleet,
        chaos,
        prediction,
        makespan,
    )
}
RESULTS = Path(__file__).with_name("RESULTS.md")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Measure guru_async against hand-written baselines and write RESULTS.md.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(GROUPS),
        metavar="NAME",
        help=f"run only this group (repeatable): {', '.join(GROUPS)}",
    )
    parser.add_argument("--output", type=Path, help="write the results here")
    parser.add_argument(
        "--seeds",
        type=int,
        default=None,
        metavar="N",
        help="how many seeded fault schedules the chaos group runs",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="with --only: update these figures in RESULTS.md (or --output), keep the others",
    )
    return parser


async def run_groups(names: list[str], *, quick: bool, seeds: int | None = None) -> list[Figure]:
    """Run the named groups in order, each in its own temporary folder.

    A group that fails gets a row saying so, and the others still run. ``seeds`` sets the
    number of schedules of the chaos group (only).
    """
    figures: list[Figure] = []
    for name in names:
        module = GROUPS[name]
        size = module.QUICK if quick else module.FULL
        if module is chaos and seeds is not None:
            size = chaos.with_seeds(size, seeds)
        started = time.perf_counter()
        log(f"== {name}")
        with tempfile.TemporaryDirectory(prefix=f"guru-bench-{name}-", dir=scratch_root()) as tmp:
            try:
                figures += await module.run(size, Path(tmp))
            except Exception as exc:
                traceback.print_exc()
                figures.append(Figure(name, name, "failed", "-", None, "", "-", None, [repr(exc)]))
        log(f"== {name} took {time.perf_counter() - started:.1f} s")
    return figures


def main(argv: list[str] | None = None) -> int:
    """Run the selected figures and write or print the results."""
    args = _parser().parse_args(argv)
    names = args.only or list(GROUPS)
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    if args.seeds is not None and args.seeds < 1:
        raise SystemExit("--seeds must be at least 1")
    if args.merge and (not args.only or args.quick):
        raise SystemExit("--merge takes --only NAME (and full sizes, not --quick)")
    figures = asyncio.run(run_groups(names, quick=args.quick, seeds=args.seeds))
    seconds, load_after = time.perf_counter() - started, os.getloadavg()[0]
    mode = (" --quick" if args.quick else "") + "".join(f" --only {n}" for n in args.only or [])
    mode += "" if args.seeds is None else f" --seeds {args.seeds}"
    methods = "\n\n".join(
        [inspect.cleandoc(benchmarks.__doc__ or "")]
        + [f"### {name}\n\n{inspect.cleandoc(GROUPS[name].__doc__ or '')}" for name in names]
    )
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if args.merge:
        target = args.output or RESULTS
        groups = {name: inspect.cleandoc(GROUPS[name].__doc__ or "") for name in names}
        target.write_text(
            merge(
                target.read_text(encoding="utf-8"),
                figures,
                groups=groups,
                mode=mode,
                seconds=seconds,
                date=date,
                load=(load_before, load_after),
            ),
            encoding="utf-8",
        )
        log(f"merged {', '.join(f.number for f in figures)} into {target}")
        return 1 if any(f.value == "failed" for f in figures) else 0
    text = render(
        figures,
        mode=mode,
        seconds=seconds,
        date=date,
        load=(load_before, load_after),
        methods=methods,
    )
    output = args.output or (None if mode else RESULTS)
    if output is not None:
        output.write_text(text, encoding="utf-8")
        log(f"wrote {output}")
    else:
        print(text)
    log(f"total {seconds:.0f} s")
    # Missed targets are results, not errors; only a group that crashed fails the command.
    return 1 if any(f.value == "failed" for f in figures) else 0


if __name__ == "__main__":
    sys.exit(main())
