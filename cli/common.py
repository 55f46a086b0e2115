"""What every `recsys` sub-command shares: consoles and the one error convention.

A failure the user can fix prints one line ``error: …`` on stderr and exits with code 2; a
pipeline lock held by another run exits with code 3 (cron wrappers tell the two apart).
"""

from __future__ import annotations

import functools
from typing import Callable

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)

EXIT_USAGE = 2
EXIT_LOCKED = 3


class UsageError(Exception):
    """A problem the user can fix from the command line."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from mlflow.exceptions import MlflowException

    from pipelines.config import ConfigError
    from recsys.bundle import BundleError
    from recsys.datasets.base import DatasetError

    return (UsageError, ConfigError, DatasetError, BundleError, FileNotFoundError, ValueError, MlflowException)


def cli_errors(fn: Callable) -> Callable:
    """Turn expected failures into one clear line and their exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from pipelines.lock import LockHeld

        try:
            return fn(*args, **kwargs)
        except LockHeld as exc:
            err_console.print(f"[bold yellow]locked:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=EXIT_LOCKED)
        except _user_errors() as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=EXIT_USAGE)

    return wrapper
