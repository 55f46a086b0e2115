"""The one progress display of long work: rich bars on standard error, whether the work runs
in the library (ingest, export) or in a command (training stages, search trials, experiment
models). Transient: the bar goes once the work is done and the result is printed."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

T = TypeVar("T")


def progress_bar(console: Console | None = None, *, disable: bool = False) -> Progress:
    """A rich Progress in the project's one style (``⠋ search trial 3/30 · … ━━━ 3/30 0:00:41``)."""
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console or Console(stderr=True),
        transient=True,
        disable=disable,
    )


def track(items: Iterable[T], description: str, *, total: int | None = None, enabled: bool = True) -> Iterator[T]:
    """``items`` with a progress bar (none when ``enabled`` is false)."""
    if not enabled:
        yield from items
        return
    with progress_bar() as progress:
        yield from progress.track(items, total=total, description=description)
