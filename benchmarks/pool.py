"""Fine-tuning jobs spread over processes that share one device, in priority order, with a deadline.

A benchmark submits jobs (a picklable callable's arguments) with a priority; at most `jobs` run at
once, lowest priority first, so a run cut short by its deadline has done the most important jobs
(e.g. every method's seed 0 before anyone's seed 1). With ``jobs <= 1`` jobs run inline, in the
calling process, in the same order: results are the same code path, only slower.

Worker processes are started with the ``spawn`` method (CUDA cannot be used in forked children); each
calls ``init(*init_args)`` once (to load the data set, set threads and the device) and then runs
``fn(*job_args)`` per job.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable, Hashable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from typing import Any


class JobPool:
    def __init__(
        self,
        fn: Callable[..., Any],
        init: Callable[..., None],
        init_args: tuple[Any, ...],
        jobs: int,
        deadline: float | None = None,
    ) -> None:
        self.fn, self.jobs = fn, jobs
        self.t0 = time.perf_counter()
        self.deadline = deadline
        self._heap: list[tuple[Any, int, Hashable, tuple[Any, ...]]] = []
        self._count = itertools.count()
        self._running: dict[Future[Any], Hashable] = {}
        self.submitted = self.finished = self.dropped = 0
        if jobs > 1:
            self._ex: ProcessPoolExecutor | None = ProcessPoolExecutor(
                max_workers=jobs, mp_context=get_context("spawn"), initializer=init, initargs=init_args
            )
        else:
            self._ex = None
            init(*init_args)

    def expired(self) -> bool:
        return self.deadline is not None and time.perf_counter() - self.t0 > self.deadline

    def submit(self, tag: Hashable, priority: Any, *args: Any) -> None:
        heapq.heappush(self._heap, (priority, next(self._count), tag, args))
        self.submitted += 1

    def pending(self) -> int:
        return len(self._heap) + len(self._running)

    def _dispatch(self) -> None:
        assert self._ex is not None
        while self._heap and len(self._running) < self.jobs and not self.expired():
            _, _, tag, args = heapq.heappop(self._heap)
            self._running[self._ex.submit(self.fn, *args)] = tag

    def poll(self, timeout: float | None = None) -> list[tuple[Hashable, Any]]:
        """Start what may start; return the jobs that finished within `timeout` seconds (inline:
        run the next job). After the deadline nothing new starts; running jobs still finish."""
        if self._ex is None:
            if not self._heap or self.expired():
                self._drop()
                return []
            _, _, tag, args = heapq.heappop(self._heap)
            self.finished += 1
            return [(tag, self.fn(*args))]
        self._dispatch()
        if not self._running:
            if self.expired():
                self._drop()
            return []
        done, _ = wait(list(self._running), timeout=timeout, return_when=FIRST_COMPLETED)
        out = []
        for fut in done:
            tag = self._running.pop(fut)
            self.finished += 1
            out.append((tag, fut.result()))
        self._dispatch()
        return out

    def _drop(self) -> None:
        self.dropped += len(self._heap)
        self._heap.clear()

    def close(self) -> None:
        if self._ex is not None:
            procs = list((getattr(self._ex, "_processes", None) or {}).values())
            self._ex.shutdown(wait=False, cancel_futures=True)
            self.dropped += len(self._running) + len(self._heap)
            for p in procs:  # a job still running at the deadline is dropped
                p.terminate()
