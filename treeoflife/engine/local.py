"""The default engine: a pool of worker processes on this machine.

Tasks are submitted lazily (at most `workers` in flight) so a plan of thousands of units
never sits in memory at once; a worker that dies (OOM killer, segfault in a decoder) fails
only the units it held, and the pool is rebuilt for the rest.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue as queue_module
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from treeoflife.engine import UnitOutcome, drain, set_progress_sink

log = logging.getLogger(__name__)
POLL_S = 0.25
WATCH_S = 0.5


# Worker processes start from a fork server that imported these once (no inherited
# threads or locks, unlike fork; ~0.1 s per pool instead of ~3 s of imports per spawn).
# scipy.fftpack is imported lazily by the hashes (~0.5 s); prewarm registers Pillow's
# plugins and checks the resampler: done here once, not in every worker.
PRELOAD = ["treeoflife.images.fetch", "scipy.fftpack", "treeoflife.images.prewarm"]


def _context() -> multiprocessing.context.BaseContext:
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        return context
    return multiprocessing.get_context("spawn")


def _watch_coordinator(pid: int) -> None:
    """Exit this worker as soon as the coordinator is gone (killed, crashed), so no orphan
    keeps writing a unit that the next run redoes. Forkserver workers are not children of
    the coordinator and hold its pipes open themselves, so neither a parent-death signal
    nor EOF would tell them."""

    def watch() -> None:
        while True:
            time.sleep(WATCH_S)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(70)
            except PermissionError:  # alive, owned by someone else (pid reused): stop
                os._exit(70)

    threading.Thread(target=watch, name="watch-coordinator", daemon=True).start()


def _init_worker(coordinator_pid: int, progress_queue: Any) -> None:
    _watch_coordinator(coordinator_pid)
    set_progress_sink(progress_queue.put_nowait)


class LocalEngine:
    """`workers` processes and the queue their units report progress on."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._context = _context()
        self.progress_queue = self._context.Queue()
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> LocalEngine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self.progress_queue.close()
        self.progress_queue.join_thread()

    def _new_pool(self) -> ProcessPoolExecutor:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=self._context,
            initializer=_init_worker,
            initargs=(os.getpid(), self.progress_queue),
        )
        return self._pool

    def run(
        self,
        function: Callable[[Any], Any],
        tasks: Iterable[Any],
        on_progress: Callable[[list[Any]], None] | None = None,
    ) -> Iterator[UnitOutcome]:
        pool = self._pool or self._new_pool()
        pending = iter(tasks)
        in_flight: dict[Future, Any] = {}
        exhausted = False
        while True:
            while not exhausted and len(in_flight) < self.workers:
                task = next(pending, None)
                if task is None:
                    exhausted = True
                    break
                in_flight[pool.submit(function, task)] = task
            if not in_flight:
                break
            done, _ = wait(in_flight, timeout=POLL_S, return_when=FIRST_COMPLETED)
            if on_progress is not None:
                messages = drain(self.progress_queue, queue_module.Empty)
                if messages:
                    on_progress(messages)
            broken = False
            for future in done:
                task = in_flight.pop(future)
                try:
                    yield UnitOutcome(task, result=future.result())
                except BrokenProcessPool as error:
                    broken = True
                    yield UnitOutcome(task, error=error)
                except Exception as error:  # the unit failed; the coordinator records it
                    yield UnitOutcome(task, error=error)
            if broken:
                log.warning("a worker process died; restarting the pool for the other units")
                for future, task in list(in_flight.items()):
                    in_flight.pop(future)
                    yield UnitOutcome(task, error=BrokenProcessPool("worker process died"))
                pool = self._new_pool()
        if on_progress is not None:
            messages = drain(self.progress_queue, queue_module.Empty)
            if messages:
                on_progress(messages)
