"""The chaos harness in CI: a few fixed seeds whose schedules together hold every kind of fault.

Each seed runs real ``guru-async worker`` processes, a producer process, a real redis-server
(append-only) and the emulator under its schedule, then checks every invariant (see
``tests.chaos.harness``). A failure prints the seed, the schedule, the violations, the history
and the command that replays it. ``python -m benchmarks --only chaos --seeds 50`` runs many more.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from tests.chaos.harness import DRAWN_KINDS, KINDS, REPLACE_FILE, Config, make_schedule, run_seed

pytestmark = pytest.mark.slow

# Seed 9: a producer killed and rerun with one file rewritten, a Redis restart, a Redis stop.
# Seed 10: a worker killed mid-upload, a Redis stop, storage dropping uploads.
# Seed 3: a worker frozen past its lease, storage dropping uploads, the token endpoint at 429.
CI_SEEDS = (9, 10, 3)


def test_ci_seeds_hold_every_kind_of_fault() -> None:
    """The CI seeds' schedules hold every kind of fault the harness knows, and a seed always
    gives the same schedule (so a printed seed replays exactly)."""
    config = Config()
    kinds = {f.kind for seed in CI_SEEDS for f in make_schedule(seed, config)}
    assert kinds == set(KINDS)
    assert make_schedule(9, config) == make_schedule(9, config)
    assert make_schedule(9, config) != make_schedule(10, config)
    for seed in range(1, 40):
        schedule = make_schedule(seed, config)
        assert [f.at for f in schedule] == sorted(f.at for f in schedule)
        drawn = [f for f in schedule if f.kind in DRAWN_KINDS]
        assert len(drawn) == config.faults
        for before, fault in itertools.pairwise(schedule):
            if fault.kind == REPLACE_FILE:  # only ever between a producer's kill and its rerun
                assert before.kind in ("kill_producer", REPLACE_FILE)


@pytest.mark.parametrize("seed", CI_SEEDS)
async def test_fleet_keeps_every_invariant_under_a_seeded_fault_schedule(
    seed: int, tmp_path: Path
) -> None:
    """Under this seed's faults, every item has exactly one successful result holding the file's
    current bytes, no item has a second video unless a possible orphan was logged, no account
    gets another's items, no process exits by itself, and the batch ends within the bound."""
    report = await run_seed(seed, Config(), tmp_path)
    assert report.ok, report.describe()
    assert report.faults_run.total() == len(report.schedule)
    assert report.item_versions >= Config().items
