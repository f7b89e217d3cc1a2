"""Executors for work units: a local process pool (default) or a Ray cluster.

Both run the same picklable unit function on picklable tasks and hand back, in the
coordinator's thread, each finished unit's result (or the exception that ended it) plus
the live progress messages units send with `report_progress`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from treeoflife.errors import TolError

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class UnitOutcome:
    """What came back for one task: its result, or the error that ended the unit."""

    task: Any
    result: Any = None
    error: BaseException | None = None


# The one piece of process-global state: inside a worker process (or Ray worker) the
# engine installs where `report_progress` sends messages; in any other process it is None.
_progress_sink: Callable[[Any], None] | None = None


def set_progress_sink(sink: Callable[[Any], None] | None) -> None:
    global _progress_sink
    _progress_sink = sink


def report_progress(message: Any) -> None:
    """Send a progress message to the coordinator, if an engine is listening (best effort)."""
    if _progress_sink is not None:
        try:
            _progress_sink(message)
        except Exception:  # a full or closed queue must not fail the unit
            pass


class Engine(Protocol):
    def run(
        self,
        function: Callable[[Any], Any],
        tasks: Iterable[Any],
        on_progress: Callable[[list[Any]], None] | None = None,
    ) -> Iterator[UnitOutcome]:
        """Run `function(task)` for every task; yield each outcome as it finishes."""
        ...


@contextlib.contextmanager
def open_engine(name: str, *, workers: int, address: str | None = None) -> Iterator[Engine]:
    """The engine called `name` ('local' or 'ray'), shut down when the block ends."""
    if workers < 1:
        raise TolError(f"--workers must be at least 1, got {workers}")
    if name == "local":
        from treeoflife.engine.local import LocalEngine

        with LocalEngine(workers) as engine:
            yield engine
    elif name == "ray":
        from treeoflife.engine.ray import RayEngine

        with RayEngine(workers, address) as engine:
            yield engine
    else:
        raise TolError(f"unknown engine {name!r}; use one of {', '.join(ENGINES)}")


def drain(queue: Any, empty: type[BaseException] | tuple[type[BaseException], ...]) -> list:
    """Every message waiting on `queue`, without blocking."""
    messages = []
    while True:
        try:
            messages.append(queue.get_nowait())
        except empty:
            return messages
        except (EOFError, OSError, BrokenPipeError):  # the manager went away at shutdown
            return messages
