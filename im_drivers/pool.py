"""The bounded pool of threads the monitor daemon runs probes on.

Why not concurrent.futures.ThreadPoolExecutor:
- a probe can hang for ever (a BMC that stopped answering mid-call), and Python cannot kill a
  thread. The executor joins its workers at interpreter exit, so one hung probe would keep a
  SIGTERMed daemon alive; these workers are daemon threads, and exit never waits for them;
- a hung probe would hold one of the executor's workers for good, and enough of them would
  starve every healthy host. Here the scheduler writes a probe off when it misses its deadline
  (expire()), and the pool may start a replacement worker, up to `spare` of them: hung BMCs
  cost idle threads, not throughput. The bound stays hard: size + spare threads at most;
- a probe that waited in the queue past its deadline is dropped before it starts (its result
  would be dropped anyway), so a backlog never snowballs;
- the executor runs as many jobs at once as it has workers. Probes that compute (render a
  report) gain nothing from more than a few threads, since they share one GIL, and a hundred
  threads handing the GIL around cost more CPU than the probes. Probes that wait (on a BMC,
  ssh, a subprocess) need many threads. So the pool keeps ACTIVE workers on fresh jobs, and
  counts a job that has run longer than STALL_S as waiting: while the queue is not empty,
  rebalance() (the scheduler calls it every STALL_S) wakes another worker for each one
  waiting. Fast probes run on a handful of threads, slow ones on as many as they need.
Workers are started only when no idle one is left, and stay for the next cycle.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger("bmm.monitor")

QUEUED, RUNNING, DONE, CANCELLED = "queued", "running", "done", "cancelled"
ACTIVE = 4
STALL_S = 0.02


class Job:
    """One probe: fn() in a worker. `result` is what fn returned; fn reports its own errors."""

    def __init__(self, fn: Callable[[], Any]):
        self.fn = fn
        self.state = QUEUED
        self.result: Any = None
        self.written_off = False
        self.cpu_s = 0.0


class ProbePool:
    def __init__(self, size: int, spare: int, done: Callable[[Job], None]):
        self.size, self.spare = size, spare
        self._done = done
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._running: dict[Job, float] = {}    # job -> when it started
        self._threads = 0
        self._idle = 0              # workers waiting for a job
        self._waking = 0            # workers woken or started, not yet at the queue
        self._written_off = 0       # running probes past their deadline
        self._closed = False
        self.cpu_s = 0.0            # thread CPU time spent in probes

    @property
    def queued(self) -> int:
        return len(self._queue)

    def _target(self) -> int:
        return self.size + min(self._written_off, self.spare)

    def _wake_or_spawn(self) -> None:
        """Under the lock: get one more worker onto the queue, if one can be had."""
        if self._idle:
            self._idle -= 1
            self._waking += 1
            self._cond.notify()
        elif self._threads < self._target():
            self._threads += 1
            self._waking += 1
            threading.Thread(target=self._work, name="probe", daemon=True).start()

    def submit(self, job: Job) -> None:
        with self._cond:
            self._queue.append(job)
            if len(self._running) + self._waking < ACTIVE:
                self._wake_or_spawn()

    def rebalance(self) -> None:
        """Wake a worker for each running job that has waited longer than STALL_S, so that
        ACTIVE of them work on fresh jobs while any are queued."""
        with self._cond:
            if not self._queue:
                return
            now = time.monotonic()
            fresh = sum(1 for started in self._running.values() if now - started < STALL_S)
            for _ in range(min(len(self._queue), ACTIVE - fresh - self._waking)):
                self._wake_or_spawn()

    def expire(self, job: Job) -> str:
        """The job's deadline has passed: drop it if it has not started, write it off (and let
        a spare worker take its place) if it runs. Returns the state it was found in."""
        with self._cond:
            state = job.state
            if state == QUEUED:
                job.state = CANCELLED
            elif state == RUNNING and not job.written_off:
                job.written_off = True
                self._written_off += 1
            return state

    def stats(self) -> dict:
        with self._cond:
            return {"threads": self._threads, "queued": len(self._queue), "running": len(self._running),
                    "written_off": self._written_off, "probe_cpu_s": round(self.cpu_s, 3)}

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._cond.notify_all()

    def _take(self, woken: bool) -> Job | None:
        """The next job for this worker, or None when this worker should end."""
        with self._cond:
            if woken:
                self._waking -= 1
            while True:
                if self._closed or self._threads > self._target():
                    self._threads -= 1
                    return None
                if self._queue:
                    job = self._queue.popleft()
                    if job.state == CANCELLED:
                        continue
                    job.state = RUNNING
                    self._running[job] = time.monotonic()
                    return job
                self._idle += 1
                self._cond.wait()
                self._waking -= 1       # counted by whoever woke this worker

    def _work(self) -> None:
        woken = True
        while (job := self._take(woken)) is not None:
            woken = False
            start = time.thread_time()
            try:
                job.result = job.fn()
            except Exception:   # noqa: BLE001 - fn reports its own errors; this is a bug
                log.exception("monitor probe failed unexpectedly")
            job.cpu_s = time.thread_time() - start
            with self._cond:
                job.state = DONE
                del self._running[job]
                self.cpu_s += job.cpu_s
                if job.written_off:
                    self._written_off -= 1
            self._done(job)
