"""A chaos schedule: the run's config, its faults, and the seed that draws them.

``make_schedule(seed, config)`` is a pure function of its arguments, so a printed seed (with
the config's ``--flags``) replays exactly the same faults at the same times.
"""

from __future__ import annotations

import math
import random

import attrs

KILL_WORKER = "kill_worker"
FREEZE_WORKER = "freeze_worker"
KILL_PRODUCER = "kill_producer"
REPLACE_FILE = "replace_file"
RESTART_REDIS = "restart_redis"
STOP_REDIS = "stop_redis"
TOKEN_429 = "token_429"
STORAGE_DROP = "storage_drop"

# replace_file is never drawn on its own: it follows a kill_producer, between the two runs.
DRAWN_KINDS = (
    KILL_WORKER,
    FREEZE_WORKER,
    KILL_PRODUCER,
    RESTART_REDIS,
    STOP_REDIS,
    TOKEN_429,
    STORAGE_DROP,
)
KINDS = (*DRAWN_KINDS, REPLACE_FILE)


@attrs.frozen
class Config:
    """What one chaos run looks like; every field is also a ``--flag`` of ``python -m
    tests.chaos`` (so a report's replay command restores a non-default config).

    Attributes:
        items: Files in account A's batch (distinct sizes and contents).
        workers: Worker slots of account A.
        concurrency: Uploads at once per worker.
        heartbeat: The producer's ``Fleet(heartbeat=)``: seconds until a silent worker's item
            moves on.
        check_interval: The producer's ``Fleet(check_interval=)``.
        faults: Faults drawn per schedule (``replace_file`` ones come on top, after kills).
        window: Faults start between 0.3 s and this many seconds after producer run 1 is ready.
        min_bytes: The smallest file.
        max_bytes: The largest file.
        bandwidth: Storage bytes per second per upload, so uploads last long enough to be hit.
        analysis_delay: Seconds from an upload until its analysis is Complete.
        second_account: Run account B (a worker and a 3-item producer) on the same Redis and
            default queue; None: only when ``Fleet`` takes ``client_id=`` (account keys).
        slack: Seconds added to the bound for process starts and a loaded machine.
        verbose: Workers log at DEBUG (``-v``), for a replay that must show why.
    """

    items: int = 8
    workers: int = 2
    concurrency: int = 2
    heartbeat: int = 2
    check_interval: float = 1.0
    faults: int = 3
    window: float = 4.0
    min_bytes: int = 8_000
    max_bytes: int = 40_000
    bandwidth: float = 20_000.0
    analysis_delay: float = 0.3
    second_account: bool | None = None
    slack: float = 4.0
    verbose: bool = False

    def work(self, items: int | None = None) -> float:
        """Seconds ``items`` (default: all) take with every slot busy, the largest file each:
        the bound's third term."""
        count = self.items if items is None else items
        rounds = math.ceil(count / (self.workers * self.concurrency))
        return rounds * (self.max_bytes / self.bandwidth + self.analysis_delay)

    def bound(self, items: int | None = None) -> float:
        """Seconds a last producer run may take after the last fault, with ``items`` (default:
        all) still to report then (see the module doc)."""
        return self.heartbeat + self.check_interval + self.work(items) + self.slack

    def flags(self) -> list[str]:
        """The ``--flags`` that give this config (only fields that differ from the defaults)."""
        out: list[str] = []
        default = Config()
        for field in attrs.fields(Config):
            value = getattr(self, field.name)
            if value != getattr(default, field.name):
                shown = {None: "auto", True: "yes", False: "no"}.get(value, value)
                out += [f"--{field.name.replace('_', '-')}", str(shown)]
        return out


@attrs.frozen
class Fault:
    """One timed fault of a schedule.

    Attributes:
        at: Seconds after producer run 1 is ready.
        kind: One of ``KINDS``.
        target: The worker slot (``kill_worker``, ``freeze_worker``) or the item's index
            (``replace_file``); 0 otherwise.
        duration: How long the fault lasts: the freeze, the Redis stop, the 429 or drop
            window, or the pause before a killed producer's rerun.
    """

    at: float
    kind: str
    target: int = 0
    duration: float = 0.0

    def describe(self) -> str:
        """One line: ``t=1.23 freeze_worker target=0 duration=4.10``."""
        return f"t={self.at:.2f} {self.kind} target={self.target} duration={self.duration:.2f}"


def make_schedule(seed: int, config: Config) -> list[Fault]:
    """The faults of ``seed``, in time order: the same seed and config always give the same."""
    rng = random.Random(seed)
    faults: list[Fault] = []
    for _ in range(config.faults):
        kind = rng.choice(DRAWN_KINDS)
        at = round(rng.uniform(0.3, config.window), 2)
        if kind == KILL_WORKER:
            faults.append(Fault(at, kind, target=rng.randrange(config.workers)))
        elif kind == FREEZE_WORKER:
            # Well past the lease (the heartbeat), as a paused VM is; often past the bound too,
            # so a fleet that waits for the thaw instead of moving the item on is caught.
            seconds = round(rng.uniform(1.5, 6.0) * config.heartbeat, 2)
            faults.append(Fault(at, kind, target=rng.randrange(config.workers), duration=seconds))
        elif kind == KILL_PRODUCER:
            faults.append(Fault(at, kind, duration=round(rng.uniform(0.2, 1.0), 2)))
            if rng.random() < 0.5:
                faults.append(Fault(at, REPLACE_FILE, target=rng.randrange(config.items)))
        elif kind == RESTART_REDIS:
            faults.append(Fault(at, kind))
        elif kind == STOP_REDIS:
            faults.append(Fault(at, kind, duration=round(rng.uniform(1.0, 4.0), 2)))
        else:  # TOKEN_429, STORAGE_DROP: a window of faults
            faults.append(Fault(at, kind, duration=round(rng.uniform(1.0, 3.0), 2)))
    # Stable: a replace_file stays right after the kill_producer it belongs to.
    return sorted(faults, key=lambda f: f.at)
