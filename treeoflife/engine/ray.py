"""The cluster engine: each work unit is one Ray task (`--engine ray [--address ...]`).

The unit function is the same one the local pool runs. Tasks carry their inputs as Arrow
tables and write their shard and result Parquet to the staging folder, which every node
must see (a shared filesystem); the coordinator alone writes the catalog.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from treeoflife.engine import UnitOutcome, drain, set_progress_sink
from treeoflife.errors import TolError

log = logging.getLogger(__name__)
POLL_S = 0.25


class RayEngine:
    """Connects to `address` (or starts a local Ray with `workers` CPUs); one CPU per unit."""

    def __init__(self, workers: int, address: str | None = None) -> None:
        try:
            import ray
            from ray.util.queue import Queue
        except ImportError as error:
            raise TolError(
                "--engine ray needs the ray package: pip install 'treeoflife[ray]'"
            ) from error
        self._ray = ray
        self.workers = workers
        self._started_here = not ray.is_initialized()
        if self._started_here:
            # A local instance gets exactly the workers asked for; a cluster brings its own.
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address:
                options["address"] = address
            else:
                options["num_cpus"] = workers
            os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
            try:
                ray.init(**options)
            except ConnectionError as error:
                raise TolError(
                    f"cannot reach the Ray cluster at {address}: {error}; "
                    "check --address (e.g. ray://head:10001 or auto)"
                ) from error
        self.progress_queue = Queue()
        # The cluster's CPUs bound what can run at once; keep a small backlog queued.
        cpus = int(ray.cluster_resources().get("CPU", workers))
        self._max_in_flight = max(workers, cpus) * 2

    def __enter__(self) -> RayEngine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.progress_queue.shutdown()
        except Exception:  # the actor may already be gone
            pass
        if self._started_here:
            self._ray.shutdown()

    def run(
        self,
        function: Callable[[Any], Any],
        tasks: Iterable[Any],
        on_progress: Callable[[list[Any]], None] | None = None,
    ) -> Iterator[UnitOutcome]:
        from ray.util.queue import Empty

        ray = self._ray
        remote = ray.remote(num_cpus=1, max_retries=0)(_call_reporting)
        pending = iter(tasks)
        in_flight: dict[Any, Any] = {}
        exhausted = False
        while True:
            while not exhausted and len(in_flight) < self._max_in_flight:
                task = next(pending, None)
                if task is None:
                    exhausted = True
                    break
                in_flight[remote.remote(function, task, self.progress_queue)] = task
            if not in_flight:
                break
            done, _ = ray.wait(list(in_flight), num_returns=1, timeout=POLL_S)
            if on_progress is not None:
                messages = drain(self.progress_queue, Empty)
                if messages:
                    on_progress(messages)
            for ref in done:
                task = in_flight.pop(ref)
                try:
                    yield UnitOutcome(task, result=ray.get(ref))
                except Exception as error:  # RayTaskError wraps the unit's own exception
                    yield UnitOutcome(task, error=error)
        if on_progress is not None:
            messages = drain(self.progress_queue, Empty)
            if messages:
                on_progress(messages)


def _call_reporting(function: Callable[[Any], Any], task: Any, progress_queue: Any) -> Any:
    """Runs in a Ray worker: route the unit's progress to the coordinator's queue actor."""
    set_progress_sink(progress_queue.put_nowait)
    try:
        return function(task)
    finally:
        set_progress_sink(None)
