"""saq's Worker with a stop that waits only for jobs actually running.

saq's own ``stop`` waits the whole grace period for every task it holds, idle ones included: a
slot blocked in a dequeue, an upkeep loop asleep. It then warns "Some tasks did not finish
within the shutdown grace period" although nothing was running, and with Redis down a dequeue
sits in redis-py's retries, so an idle worker took 18.8 s to exit (Docker's default stop
timeout is 10 s). Here idle slots and upkeep loops are cancelled at once (a job dequeued in
that very instant is left in saq's active list, where any worker's sweep hands it back), and
only slots running a job get the grace.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from saq.utils import cancel_tasks
from saq.worker import Worker

log = logging.getLogger("guru_async.fleet")
saq_log = logging.getLogger("saq")


class QuietWorker(Worker[Any]):
    """A saq Worker whose stop waits ``grace`` seconds for running jobs, not for idle slots.

    Args:
        grace: Seconds jobs still running at stop may take before they are cancelled (saq then
            hands each back to its queue).
        *args: saq's Worker's.
        **kwargs: saq's Worker's.
    """

    def __init__(self, *args: Any, grace: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._grace = grace
        self._busy: set[asyncio.Task[Any]] = set()

    async def _before_process(self, ctx: Any) -> None:
        # Runs in the slot's task once a job is dequeued: from here on the slot is busy.
        task = asyncio.current_task()
        if task is not None:
            self._busy.add(task)
        await super()._before_process(ctx)

    async def _after_process(self, ctx: Any) -> None:
        self._busy.discard(asyncio.current_task())
        await super()._after_process(ctx)

    def _process(self, previous_task: asyncio.Task[Any] | None = None) -> None:
        # A slot whose job hit Redis while it was down ends with that error; saq never reads
        # it, so asyncio would print it as "Task exception was never retrieved". It goes to
        # saq's log instead, where an outage is kept to DEBUG.
        if previous_task is not None and not previous_task.cancelled():
            error = previous_task.exception()
            if error is not None:
                saq_log.error("A job slot ended with an error", exc_info=error)
        super()._process(previous_task)

    async def stop(self) -> None:
        """Stop taking jobs; give running ones ``grace`` seconds, cancel everything else now."""
        self.event.set()
        async with self._stop_lock:
            if self._stopped:
                return
            try:
                tasks = list(self.tasks)
                self.tasks.clear()
                busy = [task for task in tasks if task in self._busy]
                idle = [task for task in tasks if task not in self._busy]
                for task in idle:
                    task.cancel()
                if busy:
                    late = set(busy)
                    if self._grace > 0:
                        _, late = await asyncio.wait(busy, timeout=self._grace)
                    if late and self._grace:
                        log.info(
                            "%d job(s) still running after the %g s grace: handed back",
                            len(late),
                            self._grace,
                        )
                    await cancel_tasks(late, timeout=self._cancellation_hard_deadline_s)
                await cancel_tasks(idle, timeout=self._cancellation_hard_deadline_s)
                self.pool.shutdown(False, cancel_futures=True)
            finally:
                self._stopped = True
