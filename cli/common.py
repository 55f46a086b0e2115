"""What every `recsys` sub-command shares: consoles and the one error convention.

A failure the user can fix prints one line ``error: …`` on stderr and exits with code 2; a
lock held by another run exits with code 3 (cron wrappers tell the two apart). Every command
is wrapped by :func:`cli_errors` (tests/test_cli_errors.py checks that none is missed), which
maps the exceptions of bad input — bad files, bad YAML, configs that do not validate, a
database URL that is malformed or unreachable — to that line. Anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import re
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from recsys.problems import describe_validation_error

if TYPE_CHECKING:
    from recsys.settings import Settings

#: standard output is text, never markup: a variant, item id or reason printed here is shown
#: as written (``[/x]`` or ``[bold red]`` in user data must neither crash nor style the output);
#: styling goes through rich ``Text`` objects. ``err_console`` formats its own fixed prefixes
#: and escapes every message (:func:`cli_errors`).
console = Console(markup=False)
err_console = Console(stderr=True)
logger = logging.getLogger(__name__)

EXIT_USAGE = 2
EXIT_LOCKED = 3


class UsageError(Exception):
    """A problem the user can fix from the command line."""


# Exception classes whose message is meant for the user, by module: looked up only in modules
# already imported (an exception cannot come from a module never loaded), so reporting an error
# does not import MLflow.
_USER_ERROR_CLASSES = {
    "mlflow.exceptions": "MlflowException",
    "pipelines.config": "ConfigError",
    "recsys.bundle": "BundleError",
    "recsys.datasets.base": "DatasetError",
}
# (MovedDataFolder and StoreMismatch are ValueErrors: one line as well.)


def _user_errors() -> tuple[type[BaseException], ...]:
    loaded = tuple(
        getattr(sys.modules[module], name) for module, name in _USER_ERROR_CLASSES.items() if module in sys.modules
    )
    return (UsageError, FileNotFoundError, ValueError, *loaded)


def cli_errors(fn: Callable) -> Callable:
    """Turn expected failures into one clear line and their exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if _is_lock_held(exc):
                err_console.print(
                    f"[bold yellow]locked:[/] {escape(_first_line(exc))}", highlight=False, soft_wrap=True
                )
                raise typer.Exit(code=EXIT_LOCKED) from None
            message = error_message(exc)
            if message is None:
                raise
            err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=EXIT_USAGE) from None

    wrapper.__cli_errors__ = True  # type: ignore[attr-defined]
    return wrapper


def _is_lock_held(exc: BaseException) -> bool:
    """A lock held by another run: only a command that imported the locks can raise it, so a
    command that never touches the feature store does not import it (nor SQLAlchemy) here."""
    backends = sys.modules.get("feature_store.backends")
    return backends is not None and isinstance(exc, backends.LockHeld)


def error_message(exc: BaseException) -> str | None:
    """The one line for a failure the user can fix, or None for an unexpected one (a bug)."""
    import yaml
    from pydantic import ValidationError

    from feature_store.db import CONNECTION_ERRORS, describe_database_error

    if isinstance(exc, ValidationError):
        return describe_validation_error(exc)
    if isinstance(exc, yaml.YAMLError):
        return describe_yaml_error(exc)
    if isinstance(exc, CONNECTION_ERRORS):
        return describe_database_error(exc, _database_url())
    if isinstance(exc, OSError) and exc.filename is not None:
        # IsADirectoryError, NotADirectoryError, PermissionError, FileNotFoundError, ...
        return f"{exc.filename}: {exc.strerror or exc}"
    if isinstance(exc, _user_errors()):
        return _first_line(exc)
    return None


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0].strip() if lines else type(exc).__name__


#: our own packages: their INFO lines (progress details) show with ``-v``
OWN_LOGGERS = ("recsys", "pipelines", "experiments", "feature_store", "api", "cli")


def configure_logging(verbose: bool) -> None:
    """Warnings and errors only by default, from us and every library (MLflow, alembic,
    optuna, uvicorn's startup aside); ``-v`` shows INFO lines from all of them. MLflow sets its
    own logger's level when first imported, so its level goes through its environment
    variable (one the user set is kept)."""
    from rich.logging import RichHandler

    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(
        level=level, format="%(message)s", handlers=[RichHandler(console=err_console, show_path=False)], force=True
    )
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", logging.getLevelName(level))
    if not verbose:
        # transformers' and the Hub's own tqdm bars ("Loading weights") beside ours: read from
        # the environment when they are first imported, which is after this
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # libraries' Python warnings (implicit's "expects CSR input", deprecations) are log lines too
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(level if verbose else logging.ERROR)
    for name in ("mlflow", "alembic", "optuna", *OWN_LOGGERS):
        logging.getLogger(name).setLevel(level)


def progress():
    """The one progress display of every command (recsys/progress.py), on standard error."""
    from recsys.progress import progress_bar

    return progress_bar(err_console)


def duration(seconds: float) -> str:
    """``41s``, ``3m05s``, ``1h02m``: an elapsed time or an ETA as a person reads it."""
    seconds = max(int(round(seconds)), 0)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def describe_yaml_error(exc: Exception) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or _first_line(exc)
    if mark is None:
        return f"invalid YAML: {problem}"
    name = "" if mark.name.startswith("<") else f"{mark.name} "
    return f"{name}line {mark.line + 1} column {mark.column + 1}: invalid YAML: {problem}"


def _database_url() -> str | None:
    try:
        from recsys.settings import get_settings

        return get_settings().database_url
    except ValueError:  # the settings themselves do not validate: the raw variable is all we have
        return os.environ.get("RECSYS_DATABASE_URL")


def get_settings(database: bool = True) -> Settings:
    """The settings, with the database URL's syntax checked (a typo is one line naming it).
    ``database=False`` for a command that reads only the MLflow registry (``recsys model
    list``): it neither checks nor imports the feature store (SQLAlchemy, pandas: seconds)."""
    from recsys.settings import get_settings as settings_from_env

    settings = settings_from_env()
    if not database:
        return settings
    from feature_store.db import DatabaseUrlError, check_database_url

    try:
        check_database_url(settings.database_url)
    except DatabaseUrlError as exc:
        raise UsageError(str(exc)) from exc
    return settings


def open_store(settings: Settings):
    """The feature store of ``settings``, connected once (a bad URL fails here, naming it)."""
    from feature_store import FeatureStore
    from feature_store.db import CONNECTION_ERRORS, describe_database_error

    try:
        return FeatureStore(settings.database_url)
    except CONNECTION_ERRORS as exc:
        raise UsageError(describe_database_error(exc, settings.database_url)) from exc


def ensure_port_free(host: str, port: int) -> None:
    """Bind ``host:port`` once and let go, so a busy port is refused before anything loads."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise UsageError(f"cannot bind {host}:{port}: {exc.strerror}") from exc
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(f"port {port} on {host} is in use") from exc
            raise UsageError(f"cannot bind {host}:{port}: {exc.strerror}") from exc


def train_lock_name(settings: Settings) -> str:
    return "train:" + re.sub(r"[^A-Za-z0-9_.-]", "_", settings.registered_model_name)


@contextmanager
def train_lock(settings: Settings) -> Iterator[str]:
    """One ``recsys train`` per registered model at a time, held for the whole run: two at once
    would both register and race for the alias. A second run raises LockHeld (exit code 3)."""
    from pipelines.lock import LockHeld, pipeline_lock

    with ExitStack() as stack:
        try:
            where = stack.enter_context(
                pipeline_lock(train_lock_name(settings), settings.database_url, settings.data_dir / "locks")
            )
        except LockHeld as exc:
            raise LockHeld(
                f"another `recsys train` of model {settings.registered_model_name!r} is running ({exc})"
            ) from None
        logger.info("holding the train lock %s", where)
        yield where


class OneLineErrorsGroup(TyperGroup):
    """The root command: command-line syntax errors (unknown option, bad --as-of, missing
    argument) are one ``error:`` line with exit code 2 too, instead of click's usage panel."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        hide_flag_types(self)
        if not standalone_mode:
            return super().main(
                args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False, **extra
            )
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False, **extra)
        except typer.TyperException as exc:  # click's exceptions (typer vendors click)
            if type(exc).__name__ == "NoArgsIsHelpError":
                sys.exit(exc.exit_code)  # typer has printed the help already
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            text = exc.format_message() if hasattr(exc, "format_message") else str(exc)
            message = (text.strip().splitlines() or [type(exc).__name__])[0]
            err_console.print(f"[bold red]error:[/] {escape(message)}{escape(hint)}", highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            err_console.print("aborted", highlight=False)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


def hide_flag_types(command) -> None:
    """An on/off flag takes no value: its help row shows no ``<bool>`` type (typer prints one
    for every flag, ``--help`` included). Value options keep theirs (``<int range>``)."""
    from typer.core import TyperOption

    help_option = command.get_help_option(typer.Context(command))
    for param in [*command.params, help_option]:
        if isinstance(param, TyperOption) and param.is_flag or param is help_option:
            param.metavar = ""
    for sub in getattr(command, "commands", {}).values():
        hide_flag_types(sub)


def apply_cli_errors(app: typer.Typer) -> None:
    """Wrap every command registered on ``app`` (and its sub-apps) that is not wrapped yet."""
    for info in app.registered_commands:
        if info.callback is not None and not getattr(info.callback, "__cli_errors__", False):
            info.callback = cli_errors(info.callback)
    for group in app.registered_groups:
        if group.typer_instance is not None:
            apply_cli_errors(group.typer_instance)
