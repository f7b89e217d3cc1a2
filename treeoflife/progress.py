"""Rich progress bars for long loops; the stages take a callback and never import rich."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


@contextlib.contextmanager
def download_bars(
    console: Console,
) -> Iterator[Callable[[str, int | None], Callable[[int, int | None], None]]]:
    """Yields a factory: `factory(label, size)` gives a `(done, total)` callback for one file."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:

        def factory(label: str, size: int | None) -> Callable[[int, int | None], None]:
            task = progress.add_task(label, total=size)

            def update(done: int, total: int | None) -> None:
                progress.update(task, completed=done, total=total or size)

            return update

        yield factory
