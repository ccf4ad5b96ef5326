"""A Jepsen-style chaos harness for the fleet: seed -> schedule -> run with real faults -> history
-> invariants checked at the end.

Black-box: it drives only the public interface (``guru-async worker`` processes with the
``GURU_*`` environment, a producer process running ``Fleet.batch_upload`` with a journal, a real
redis-server with append-only on, the in-process emulator's fault rules and storage), so it runs
unchanged against any version of the fleet.

A run (``run_seed``):

1. ``make_schedule(seed, config)``: a list of timed faults drawn from ``random.Random(seed)``
   (times in seconds after the first producer run is ready; see ``Fault``).
2. Redis (append-only), one emulator per account, ``config.workers`` worker slots of account A
   (and, with ``second_account``, one worker and a small producer of account B on the same
   Redis and default queue), then producer run 1 of A's batch of ``config.items`` files.
3. Each fault runs at its time; every process start, exit, fault and result goes into the
   history. A worker killed is replaced in its slot at once; a producer killed is rerun with the
   same journal after the fault's ``duration`` (files listed in ``replace_file`` faults at the
   same time are rewritten in between: new content, new size, new mtime).
4. When every fault has ended and the last producer run of each account has finished (or the
   hard deadline passed), the invariants are checked (``Report.violations``):

   - ``one-result``: the last producer run reported exactly one result per item, none unknown;
   - ``item-ok``: every such result is a success (every fault here is transient);
   - ``content``: every result's video holds, byte for byte, the file on disk now;
   - ``videos-per-item``: an item has at most one video per content it had, plus the
     "possible orphan" lines the workers logged for it (at WARNING, naming the file);
   - ``accounts``: no video in one account's emulator is named after, or holds the content of,
     another account's item;
   - ``bound``: each account's last producer run finished within
     ``heartbeat + check_interval + work + slack`` (work: the items it still had to report
     then, in rounds of every upload slot, each the largest file) after the later of the
     last fault's end and
     its own start (a freeze counts from its start: the fleet must route around a frozen
     worker); ``hang``: not finished at twice that: killed, never waited on forever;
   - ``worker-exit`` / ``producer-exit``: no process the harness did not kill exited by itself
     (a producer that found Redis down at start, with its clear RedisUnavailableError and
     nothing enqueued, is rerun after 1 s, as an operator would; that is no violation).

On failure ``Report.describe()`` prints the seed, the schedule, the violations and the history,
and ``Report.replay()`` the command that runs the same schedule again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from guru_async.testing import TOKEN_ROUTE, UPLOAD_ROUTE, FaultRule, GuruEmulator
from tests.fleet_helpers import WorkerProcess, worker_env
from tests.redis_server import RedisServer, free_port

REPO = Path(__file__).resolve().parents[2]
PRODUCER = Path(__file__).with_name("producer.py")

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

ORPHAN = re.compile(r"possible orphan", re.IGNORECASE)


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


# -- the processes -----------------------------------------------------------------------------


def _child_env(emu: GuruEmulator) -> dict[str, str]:
    """A worker's or producer's environment: ``emu``'s account, this checkout's code."""
    env = worker_env(emu)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO) if not path else f"{REPO}{os.pathsep}{path}"
    return env


@attrs.define
class _Account:
    """One account's emulator, files, workers and producer runs."""

    name: str
    emu: GuruEmulator
    files: list[Path]
    journal: str
    workdir: Path
    contents: dict[str, set[bytes]] = attrs.Factory(dict)  # file name -> every content it had
    workers: list[WorkerProcess] = attrs.Factory(list)
    killed: set[int] = attrs.Factory(set)  # pids the harness killed
    exited: set[int] = attrs.Factory(set)  # pids whose exit is in the history
    runs: list[subprocess.Popen[bytes]] = attrs.Factory(list)
    run_started: list[float] = attrs.Factory(list)
    generation: int = 0
    retry_at: float | None = None  # when to rerun a producer that found Redis down at start

    def output(self, run: int) -> Path:
        return self.workdir / f"{self.name}-producer-{run + 1}.jsonl"

    def events(self, run: int) -> list[dict[str, Any]]:
        """The JSON lines producer run ``run`` printed (a killed run's last line may be cut)."""
        path = self.output(run)
        if not path.exists():
            return []
        found = []
        for line in path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                found.append(json.loads(line))
        return found

    def done(self, run: int) -> float | None:
        """When run ``run`` printed its done line, on the monotonic clock."""
        for event in self.events(run):
            if event.get("done"):
                return float(event["t"])
        return None

    def all_pids(self) -> Iterator[subprocess.Popen[bytes]]:
        yield from (w.process for w in self.workers)
        yield from self.runs


def write_files(
    directory: Path, prefix: str, count: int, rng: random.Random, config: Config
) -> list[Path]:
    """``count`` files of distinct random sizes and contents, named ``{prefix}-NNN.mp4``."""
    directory.mkdir(parents=True, exist_ok=True)
    sizes = rng.sample(range(config.min_bytes, config.max_bytes + 1), count)
    files = []
    for number, size in enumerate(sizes):
        path = directory / f"{prefix}-{number:03d}.mp4"
        path.write_bytes(rng.randbytes(size))
        files.append(path)
    return files


def second_account_supported() -> bool:
    """Whether ``Fleet`` takes ``client_id=``: only then do two accounts on one Redis have
    keys of their own (before that, account B's worker takes A's items by design)."""
    import inspect

    from guru_async.fleet import Fleet

    return "client_id" in inspect.signature(Fleet).parameters


class _Run:
    """One seed's run: owns every process and the history."""

    def __init__(self, seed: int, config: Config, workdir: Path) -> None:
        self.seed = seed
        self.config = config
        self.workdir = workdir
        self.schedule = make_schedule(seed, config)
        self.report = Report(seed, config, self.schedule)
        self.redis = RedisServer(workdir / "redis", free_port(), appendonly=True)
        self.redis_lock = asyncio.Lock()
        self.accounts: list[_Account] = []
        self.t0 = time.monotonic()
        self.fault_end = 0.0  # monotonic end of the latest fault
        self.rng = random.Random(seed + 1_000_003)  # file contents: apart from the schedule's

    # -- history -------------------------------------------------------------------------------

    def note(self, what: str, at: float | None = None) -> None:
        when = (time.monotonic() if at is None else at) - self.t0
        self.report.history.append((round(when, 2), what))

    def violate(self, what: str) -> None:
        self.report.violations.append(what)
        self.note(f"VIOLATION {what}")

    # -- processes -----------------------------------------------------------------------------

    def start_worker(self, account: _Account, slot: int) -> WorkerProcess:
        account.generation += 1
        log = self.workdir / f"{account.name}-worker{slot}-{account.generation}.log"
        args = [
            sys.executable, "-m", "guru_async", "worker",
            "--redis", self.redis.url,
            "--concurrency", str(self.config.concurrency),
            "--poll-interval", "0.05",
            "--sweep-interval", "1",
            "--grace", "1",
            *(["-v"] if self.config.verbose else []),
        ]  # fmt: skip
        with log.open("wb") as sink:
            process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=_child_env(account.emu),
                cwd=self.workdir,
            )
        worker = WorkerProcess(process, log)
        if slot < len(account.workers):
            account.workers[slot] = worker
        else:
            account.workers.append(worker)
        self.note(f"{account.name}: worker slot {slot} started, pid {process.pid}")
        return worker

    def start_producer(self, account: _Account) -> None:
        run = len(account.runs)
        listing = self.workdir / f"{account.name}-items.txt"
        listing.write_text("".join(f"{p}\n" for p in account.files))
        args = [
            sys.executable, str(PRODUCER),
            self.redis.url, account.journal,
            str(self.config.heartbeat), str(self.config.check_interval), str(listing),
        ]  # fmt: skip
        with (
            account.output(run).open("wb") as out,
            (self.workdir / f"{account.name}-producer-{run + 1}.log").open("wb") as err,
        ):
            process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=_child_env(account.emu),
                cwd=self.workdir,
            )
        account.runs.append(process)
        account.run_started.append(time.monotonic())
        account.retry_at = None
        self.note(f"{account.name}: producer run {run + 1} started, pid {process.pid}")

    def kill(self, account: _Account, process: subprocess.Popen[bytes]) -> None:
        account.killed.add(process.pid)
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
        process.wait()

    def watch(self) -> None:
        """Note processes that exited by themselves (a violation unless a producer finished)."""
        for account in self.accounts:
            if account.retry_at is not None and time.monotonic() >= account.retry_at:
                self.start_producer(account)
            for process in account.all_pids():
                code = process.poll()
                if code is None or process.pid in account.exited or process.pid in account.killed:
                    continue
                account.exited.add(process.pid)
                if process in account.runs:
                    run = account.runs.index(process)
                    if code == 0:
                        self.note(f"{account.name}: producer run {run + 1} finished")
                        continue
                    tail = _tail(self.workdir / f"{account.name}-producer-{run + 1}.log")
                    ready = any(e.get("ready") for e in account.events(run))
                    if not ready and "RedisUnavailableError" in tail:
                        # A clear error before anything was enqueued, as an operator would see
                        # it: they run the batch again, and so does the harness.
                        self.note(
                            f"{account.name}: producer run {run + 1} found Redis down at start; "
                            "rerun in 1 s"
                        )
                        account.retry_at = time.monotonic() + 1.0
                        continue
                    self.violate(
                        f"producer-exit: {account.name} producer run {run + 1} exited with "
                        f"{code}: {tail}"
                    )
                else:
                    worker = next(w for w in account.workers if w.process is process)
                    self.violate(
                        f"worker-exit: {account.name} worker pid {process.pid} exited by itself "
                        f"with {code}: {_tail(worker.log)}"
                    )

    # -- faults --------------------------------------------------------------------------------

    async def carry_out(self, fault: Fault) -> None:
        a = self.accounts[0]
        self.report.faults_run[fault.kind] += 1
        self.note(f"fault: {fault.describe()}")
        if fault.kind == KILL_WORKER:
            self.kill(a, a.workers[fault.target].process)
            self.note(f"A: worker slot {fault.target} killed")
            self.start_worker(a, fault.target)
        elif fault.kind == FREEZE_WORKER:
            process = a.workers[fault.target].process
            if process.poll() is None:
                os.kill(process.pid, signal.SIGSTOP)
                # A frozen worker is a dead one to the fleet, which must route around it: the
                # bound runs from the freeze, not from the thaw.
                self.fault_end = max(self.fault_end, time.monotonic())
                await asyncio.sleep(fault.duration)
                if process.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(process.pid, signal.SIGCONT)
                self.note(f"A: worker pid {process.pid} continued")
            return
        elif fault.kind == KILL_PRODUCER:
            current = a.runs[-1]
            was = "killed" if current.poll() is None else "already finished; rerun anyway"
            self.kill(a, current)
            self.note(f"A: producer run {len(a.runs)} {was}")
            await asyncio.sleep(fault.duration)
            self.start_producer(a)
        elif fault.kind == REPLACE_FILE:
            path = a.files[fault.target]
            size = len(path.read_bytes())
            content = self.rng.randbytes(size + 1 + self.rng.randrange(1000))
            path.write_bytes(content)
            # A new mtime even on a coarse clock: the content's identity is size + mtime_ns.
            stamp = time.time_ns() + 1_000_000_000
            os.utime(path, ns=(stamp, stamp))
            a.contents[path.name].add(content)
            self.note(f"A: {path.name} replaced ({len(content)} bytes)")
        elif fault.kind in (RESTART_REDIS, STOP_REDIS):
            async with self.redis_lock:
                await asyncio.to_thread(self.redis.stop)
                self.note("redis stopped")
                if fault.kind == STOP_REDIS:
                    await asyncio.sleep(fault.duration)
                await asyncio.to_thread(self.redis.start)
                self.note(f"redis started, pid {self.redis.pid}")
        elif fault.kind == TOKEN_429:
            rule = FaultRule(route=TOKEN_ROUTE, status=429, retry_after=1)
            a.emu.faults.add(rule)
            a.emu.expire_tokens()  # every process must ask the token endpoint now
            await asyncio.sleep(fault.duration)
            a.emu.faults.remove(rule)
            self.note("token endpoint answers again")
        elif fault.kind == STORAGE_DROP:
            rule = FaultRule(route=UPLOAD_ROUTE, kind="drop", rate=0.5, delay=0.05)
            a.emu.faults.add(rule)
            await asyncio.sleep(fault.duration)
            a.emu.faults.remove(rule)
            self.note("storage keeps connections again")
        self.fault_end = max(self.fault_end, time.monotonic())

    async def run_schedule(self) -> None:
        tasks = []
        for fault in self.schedule:
            await asyncio.sleep(max(0.0, self.t0 + fault.at - time.monotonic()))
            if fault.kind == REPLACE_FILE:
                # Between the two producer runs: right after its kill, before the rerun.
                await self.carry_out(fault)
            else:
                tasks.append(asyncio.create_task(self.carry_out(fault)))
        await asyncio.gather(*tasks)

    # -- the run -------------------------------------------------------------------------------

    async def wait_ready(self, account: _Account, deadline: float) -> bool:
        while time.monotonic() < deadline:
            self.watch()
            if any(e.get("ready") for e in account.events(len(account.runs) - 1)):
                return True
            if account.runs[-1].poll() is not None:
                return False
            await asyncio.sleep(0.02)
        return False

    async def main(self) -> None:
        config = self.config
        await asyncio.to_thread(self.redis.start)
        second = config.second_account
        if second is None:
            second = second_account_supported()
        self.report.second_account = second
        names = ["A", "B"] if second else ["A"]
        async with contextlib.AsyncExitStack() as stack:
            for name in names:
                emu = await stack.enter_async_context(
                    GuruEmulator(
                        client_id=f"chaos-{name.lower()}",
                        client_secret=f"chaos-{name.lower()}-secret",
                        storage_bandwidth=config.bandwidth,
                        analysis_delay=config.analysis_delay,
                        storage_dir=self.workdir / f"storage-{name}",
                        seed=self.seed,
                    )
                )
                count = config.items if name == "A" else 3
                files = write_files(
                    self.workdir / f"files-{name}", name.lower(), count, self.rng, config
                )
                account = _Account(name, emu, files, f"chaos-{name}-{self.seed}", self.workdir)
                account.contents = {p.name: {p.read_bytes()} for p in files}
                self.accounts.append(account)
            try:
                await self.drive()
            finally:
                for account in self.accounts:
                    for process in account.all_pids():
                        self.kill(account, process)
                await asyncio.to_thread(self.redis.stop)
            self.check()

    async def drive(self) -> None:
        config = self.config
        for account in self.accounts:
            slots = config.workers if account.name == "A" else 1
            for slot in range(slots):
                self.start_worker(account, slot)
        ready = [asyncio.to_thread(w.wait_ready, 60.0) for a in self.accounts for w in a.workers]
        for outcome in await asyncio.gather(*ready, return_exceptions=True):
            if isinstance(outcome, Exception):
                self.violate(f"worker-exit: a worker never became ready: {outcome}"[:800])
                return
        for account in self.accounts:
            self.start_producer(account)
        if not await self.wait_ready(self.accounts[0], time.monotonic() + 60):
            self.violate("producer-exit: A's producer run 1 never became ready")
            return
        before, self.t0 = self.t0, time.monotonic()
        shifted = [(round(t + before - self.t0, 2), what) for t, what in self.report.history]
        self.report.history = [*shifted, (0.0, "A: producer run 1 ready (t=0)")]
        self.fault_end = self.t0
        faults = asyncio.create_task(self.run_schedule())
        try:
            await self.await_end(faults)
        finally:
            if not faults.done():
                faults.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await faults

    async def await_end(self, faults: asyncio.Task[None]) -> None:
        """Until every fault ended and every account's last run finished, or the hard limit."""
        bound = self.config.bound()
        while True:
            self.watch()
            if faults.done():
                faults.result()
                pending = [
                    a for a in self.accounts if a.runs[-1].poll() is None or a.retry_at is not None
                ]
                if not pending:
                    return
                for account in pending:
                    start = max(self.fault_end, account.run_started[-1])
                    if time.monotonic() > start + 2 * bound:
                        got = sum(1 for e in account.events(len(account.runs) - 1) if "item" in e)
                        self.violate(
                            f"hang: {account.name}'s producer run {len(account.runs)} had "
                            f"{got} of {len(account.files)} results {2 * bound:.0f} s after "
                            "the last fault; killed"
                        )
                        self.kill(account, account.runs[-1])
                        return
            await asyncio.sleep(0.05)

    # -- invariants ----------------------------------------------------------------------------

    def check(self) -> None:
        orphans = self.orphan_lines()
        self.report.orphans = len(orphans)
        for account in self.accounts:
            self.check_results(account)
            self.check_bound(account)
        self.check_videos(self.accounts[0], orphans)
        self.check_accounts()

    def orphan_lines(self) -> list[str]:
        lines = []
        for log in sorted(self.workdir.glob("*-worker*.log")):
            lines += [
                line for line in log.read_text(errors="replace").splitlines() if ORPHAN.search(line)
            ]
        return lines

    def check_results(self, account: _Account) -> None:
        run = len(account.runs) - 1
        results = [e for e in account.events(run) if "item" in e]
        for event in results:
            self.note(
                f"{account.name}: result {Path(event['item']).name} video "
                f"{(event['video_id'] or '-')[:8]} {'ok' if event['ok'] else event['error']}",
                at=float(event["t"]),
            )
        self.report.history.sort(key=lambda entry: entry[0])
        by_item = collections.Counter(e["item"] for e in results)
        known = {str(p) for p in account.files}
        for item in sorted(known):
            if by_item[item] != 1:
                self.violate(
                    f"one-result: {account.name} {Path(item).name} has {by_item[item]} results "
                    f"in the last producer run ({run + 1})"
                )
        for item in sorted(set(by_item) - known):
            self.violate(f"one-result: {account.name} result for an unknown item {item}")
        for event in results:
            name = Path(event["item"]).name
            if not event["ok"]:
                self.violate(f"item-ok: {account.name} {name} failed: {event['error']}")
                continue
            video_id = event["video_id"]
            stored = account.emu.read_stored(video_id) if video_id else None
            on_disk = Path(event["item"]).read_bytes()
            if video_id not in account.emu.videos:
                self.violate(f"content: {account.name} {name}: video {video_id} not in its account")
            elif stored != on_disk:
                what = (
                    "nothing stored"
                    if stored is None
                    else (
                        "an older content of the file"
                        if stored in account.contents.get(name, set())
                        else "other bytes"
                    )
                )
                self.violate(f"content: {account.name} {name}: video {video_id[:8]} holds {what}")

    def check_bound(self, account: _Account) -> None:
        run = len(account.runs) - 1
        done = account.done(run)
        if done is None:
            return  # a hang or an exit, already reported
        start = max(self.fault_end, account.run_started[run])
        left = sum(1 for e in account.events(run) if "item" in e and float(e["t"]) > start)
        bound = self.config.bound(left)
        took = done - start
        if took > bound:
            self.violate(
                f"bound: {account.name}'s last producer run finished {took:.1f} s after the "
                f"last fault, with {left} results to come then (bound {bound:.1f} s)"
            )

    def check_videos(self, account: _Account, orphans: list[str]) -> None:
        per_name = collections.Counter(v.filename for v in account.emu.videos.values())
        self.report.videos = sum(per_name[p.name] for p in account.files)
        self.report.item_versions = sum(len(account.contents[p.name]) for p in account.files)
        unattributed = [line for line in orphans if not any(p.name in line for p in account.files)]
        spare = len(unattributed)
        for path in account.files:
            allowed = len(account.contents[path.name])
            allowed += sum(1 for line in orphans if path.name in line)
            extra = per_name[path.name] - allowed
            if extra > 0 and spare >= extra:
                spare -= extra  # orphans logged without the file's name cover it
                continue
            if extra > 0:
                ids = [v.id[:8] for v in account.emu.videos.values() if v.filename == path.name]
                uploads = [
                    account.emu.uploads_completed[v]
                    for v in account.emu.videos
                    if account.emu.videos[v].filename == path.name
                ]
                self.violate(
                    f"videos-per-item: {account.name} {path.name} has {per_name[path.name]} "
                    f"videos {ids} (uploads completed {uploads}), allowed {allowed} "
                    "(contents it had + orphans logged)"
                )

    def check_accounts(self) -> None:
        for account in self.accounts:
            own = {p.name for p in account.files}
            contents = set().union(*account.contents.values())
            for video in account.emu.videos.values():
                stored = account.emu.read_stored(video.id)
                if video.filename not in own or (stored is not None and stored not in contents):
                    self.violate(
                        f"accounts: video {video.id[:8]} of {video.filename} was created in "
                        f"account {account.name}, which has no such item"
                    )


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return "(no log)"
    return " | ".join(line.strip() for line in text[-lines:])[-600:]


async def run_seed(seed: int, config: Config, workdir: Path) -> Report:
    """Run ``seed``'s schedule under ``config`` in ``workdir`` (empty); the report says what
    happened and which invariants broke. Never hangs: a batch past its hard limit is killed and
    reported."""
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    run = _Run(seed, config, workdir)
    # Uploads cut off by a kill or a drop are this harness's doing: the emulator's tracebacks
    # about them would bury the report.
    server_log = logging.getLogger("aiohttp.server")
    level = server_log.level
    server_log.setLevel(logging.CRITICAL)
    try:
        await run.main()
    finally:
        server_log.setLevel(level)
    run.report.wall = time.monotonic() - started
    return run.report
