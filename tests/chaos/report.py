"""What one chaos run did (its history) and which invariants it broke."""

from __future__ import annotations

import collections

import attrs

from tests.chaos.schedule import Config, Fault


@attrs.define
class Report:
    """What one run did and what it broke.

    Attributes:
        seed: The seed.
        config: The config.
        schedule: The faults, in time order.
        history: ``(seconds after run 1 was ready, what happened)``, in order.
        violations: One line per broken invariant, each starting with its name.
        faults_run: Faults carried out, per kind.
        videos: Videos created in account A's emulator.
        item_versions: Items of A times the contents each had (1, or more once replaced).
        orphans: "possible orphan" lines in the workers' logs.
        wall: Seconds the whole run took, set-up included.
        second_account: Whether account B ran.
    """

    seed: int
    config: Config
    schedule: list[Fault]
    history: list[tuple[float, str]] = attrs.Factory(list)
    violations: list[str] = attrs.Factory(list)
    faults_run: collections.Counter[str] = attrs.Factory(collections.Counter)
    videos: int = 0
    item_versions: int = 0
    orphans: int = 0
    wall: float = 0.0
    second_account: bool = False

    @property
    def ok(self) -> bool:
        """No invariant broken."""
        return not self.violations

    def replay(self) -> str:
        """The command that runs this seed's schedule again."""
        flags = " ".join(self.config.flags())
        return f"PYTHONPATH=. python -m tests.chaos --seed {self.seed}{' ' if flags else ''}{flags}"

    def describe(self) -> str:
        """Seed, schedule, violations and history, for a failure message."""
        lines = [
            f"chaos seed {self.seed}: {len(self.violations)} violation(s); replay: {self.replay()}",
            f"config: {self.config}",
            f"second account: {'yes' if self.second_account else 'no'}",
            "schedule:",
            *(f"  {fault.describe()}" for fault in self.schedule),
            "violations:",
            *(f"  {v}" for v in self.violations),
            f"videos {self.videos} for {self.item_versions} item versions, "
            f"orphans logged {self.orphans}, wall {self.wall:.1f} s",
            "history:",
            *(f"  {t:7.2f} {what}" for t, what in self.history),
        ]
        return "\n".join(lines)
