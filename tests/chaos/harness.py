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
   hard deadline passed), the invariants of ``tests.chaos.invariants`` are checked (each
   broken one is a line of ``Report.violations``):

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
     last fault's end and its own start (a freeze counts from its start: the fleet must route
     around a frozen worker); ``hang``: not finished at twice the whole batch's bound: killed,
     never waited on forever;
   - ``worker-exit`` / ``producer-exit``: no process the harness did not kill exited by itself
     (a producer that found Redis down at start, with its clear RedisUnavailableError and
     nothing enqueued, is rerun after 1 s, as an operator would; that is no violation).

On failure ``Report.describe()`` prints the seed, the schedule, the violations and the history,
and ``Report.replay()`` the command that runs the same schedule again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from guru_async.testing import TOKEN_ROUTE, UPLOAD_ROUTE, FaultRule, GuruEmulator
from tests.chaos import invariants
from tests.chaos.accounts import Account, child_env, second_account_supported, write_files
from tests.chaos.report import Report
from tests.chaos.schedule import (
    DRAWN_KINDS,
    FREEZE_WORKER,
    KILL_PRODUCER,
    KILL_WORKER,
    KINDS,
    REPLACE_FILE,
    RESTART_REDIS,
    STOP_REDIS,
    STORAGE_DROP,
    TOKEN_429,
    Config,
    Fault,
    make_schedule,
)
from tests.fleet_helpers import WorkerProcess
from tests.redis_server import RedisServer, free_port

__all__ = [
    "DRAWN_KINDS",
    "KINDS",
    "REPLACE_FILE",
    "Config",
    "Fault",
    "Report",
    "make_schedule",
    "run_seed",
]

PRODUCER = Path(__file__).with_name("producer.py")


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
        self.accounts: list[Account] = []
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

    def start_worker(self, account: Account, slot: int) -> WorkerProcess:
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
                env=child_env(account.emu),
                cwd=self.workdir,
            )
        worker = WorkerProcess(process, log)
        if slot < len(account.workers):
            account.workers[slot] = worker
        else:
            account.workers.append(worker)
        self.note(f"{account.name}: worker slot {slot} started, pid {process.pid}")
        return worker

    def start_producer(self, account: Account) -> None:
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
                env=child_env(account.emu),
                cwd=self.workdir,
            )
        account.runs.append(process)
        account.run_started.append(time.monotonic())
        account.retry_at = None
        self.note(f"{account.name}: producer run {run + 1} started, pid {process.pid}")

    def kill(self, account: Account, process: subprocess.Popen[bytes]) -> None:
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
            # Replaced as a recorder saves a new take (a new file renamed over the old one), so
            # an upload of the old take still reading it sees the old bytes, not a torn file.
            fresh = path.with_suffix(".new")
            fresh.write_bytes(content)
            # A new mtime even on a coarse clock: the content's identity is size + mtime_ns.
            stamp = time.time_ns() + 1_000_000_000
            os.utime(fresh, ns=(stamp, stamp))
            os.replace(fresh, path)
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

    async def wait_ready(self, account: Account, deadline: float) -> bool:
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
                account = Account(name, emu, files, f"chaos-{name}-{self.seed}", self.workdir)
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
        for account in self.accounts:
            for event in invariants.last_results(account):
                ok = "ok" if event["ok"] else event["error"]
                self.note(
                    f"{account.name}: result {Path(event['item']).name} video "
                    f"{(event['video_id'] or '-')[:8]} {ok}",
                    at=float(event["t"]),
                )
        self.report.history.sort(key=lambda entry: entry[0])
        orphans = invariants.orphan_lines(self.workdir)
        a = self.accounts[0]
        self.report.orphans = len(orphans)
        self.report.videos, self.report.item_versions = invariants.video_counts(a)
        found: list[str] = []
        for account in self.accounts:
            found += invariants.one_result_each(account)
            found += invariants.results_hold_the_files(account)
            found += invariants.finished_in_bound(account, self.config, self.fault_end)
        found += invariants.one_video_per_content(a, orphans)
        found += invariants.accounts_kept_apart(self.accounts)
        for violation in found:
            self.violate(violation)


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
