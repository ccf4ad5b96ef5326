"""``python -m tests.chaos --seed N [--seed M ...] [--CONFIG-FIELD VALUE ...]``: run seeds of the
chaos harness and print each report (the replay command of a failed CI seed, or a hunt).

Exits 1 when any seed broke an invariant. Work folders go under ``--workdir`` (default: a
temporary folder, removed unless ``--keep``).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import attrs

from tests.chaos.harness import Config, run_seed


def _value(kind: Any, text: str) -> Any:
    if "bool" in str(kind):
        return {"yes": True, "no": False, "auto": None}[text]
    return float(text) if "float" in str(kind) else int(text)


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command's options: the seeds, the folder, and one flag per Config field."""
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--seed", type=int, action="append", required=True, help="repeatable")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work folders (logs)")
    for field in attrs.fields(Config):
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            dest=field.name,
            default=field.default,
            type=functools.partial(_value, field.type),
        )
    return parser.parse_args(argv)


async def main(argv: list[str] | None = None) -> int:
    """Run each seed in turn; print its report; 1 if any failed."""
    args = parse(argv)
    config = Config(**{f.name: getattr(args, f.name) for f in attrs.fields(Config)})
    root = args.workdir or Path(tempfile.mkdtemp(prefix="guru-chaos-"))
    failed = 0
    for seed in args.seed:
        report = await run_seed(seed, config, root / f"seed-{seed}")
        print(report.describe(), flush=True)
        failed += not report.ok
    if args.keep or args.workdir:
        print(f"work folders in {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
