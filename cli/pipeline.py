"""`recsys pipeline …`: run the training pipeline once (cron, systemd, Kubernetes) or on a schedule.

Exit codes of ``recsys pipeline run``: 0 the run completed (the candidate was promoted or
rejected by the gate; the output says which), 1 a stage crashed (rerun with the same
``--run-id`` to resume), 2 bad command line or config, 3 another run of the same pipeline holds
the lock, 4 data validation stopped the run before training.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from cli.common import cli_errors, err_console

app = typer.Typer(
    help="Scheduled training: snapshot → validate → train → evaluate → index → gate → register → promote → notify.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(markup=False)  # text, never markup (cli/common.py)

EXIT_STOPPED = 4


def _quiet_console_logs() -> None:
    """Without -v the stage log goes to the run's pipeline.log, not the terminal."""
    root = logging.getLogger()
    if root.level > logging.INFO:
        for handler in root.handlers:
            handler.setLevel(max(handler.level, logging.WARNING))


@app.command()
@cli_errors
def run(
    config: Annotated[Path, typer.Argument(help="pipeline YAML (see pipelines/examples/nightly.yaml)")],
    run_id: Annotated[str | None, typer.Option("--run-id", help="resume this run (or start it under this id)")] = None,
) -> None:
    """Run the pipeline once; with --run-id of a crashed run, resume after its last completed stage."""
    from cli.common import get_settings
    from pipelines.config import load_config
    from pipelines.pipeline import STAGES, run_pipeline

    cfg = load_config(config)
    _quiet_console_logs()
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}", style="bold", markup=False),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    ) as progress:
        task = progress.add_task(f"pipeline {cfg.name}", total=len(STAGES))

        def on_stage(stage: str, event: str) -> None:
            if event == "start":
                progress.update(task, description=f"pipeline {cfg.name}: {stage}")
            else:
                progress.advance(task)

        result = run_pipeline(get_settings(), cfg, run_id=run_id, on_stage=on_stage)
    console.print(
        Text.assemble(
            f"run {result.run_id}: ",
            (result.status, "bold"),
            f" — {result.reason}" + (f" (version {result.version})" if result.version else ""),
        ),
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"state and log: {result.run_dir}", highlight=False)
    if result.status == "stopped":
        raise typer.Exit(code=EXIT_STOPPED)


@app.command()
@cli_errors
def schedule(
    config: Annotated[Path, typer.Argument(help="pipeline YAML")],
    cron: Annotated[str | None, typer.Option(help='crontab expression, e.g. "0 3 * * *"')] = None,
    interval_seconds: Annotated[
        float | None, typer.Option(min=0.1, help="fire every N seconds instead of a cron expression")
    ] = None,
    max_runs: Annotated[int | None, typer.Option(min=1, help="exit after this many firings (tests)")] = None,
    timezone: Annotated[str, typer.Option(help="time zone of the cron expression")] = "UTC",
) -> None:
    """Run the pipeline on a schedule (APScheduler); each firing is a `recsys pipeline run` child process."""
    from pipelines.config import load_config
    from pipelines.schedule import run_schedule

    if (cron is None) == (interval_seconds is None):
        raise ValueError("give exactly one of --cron and --interval-seconds")
    load_config(config)  # fail fast on a bad file
    run_schedule(config, cron=cron, interval_seconds=interval_seconds, max_runs=max_runs, timezone=timezone)
