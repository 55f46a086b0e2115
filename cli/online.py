"""`recsys online-report`: click/purchase rate per A/B variant with Wilson intervals."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console(markup=False)  # text, never markup (cli/common.py)


def online_report(
    outcome: Annotated[list[str] | None, typer.Option(help="event types counted as successes (repeatable)")] = None,
    since: Annotated[datetime | None, typer.Option(help="only events at or after this time")] = None,
    no_mlflow: Annotated[
        bool, typer.Option("--no-mlflow", help="print only; don't log to the versions' MLflow runs")
    ] = False,
) -> None:
    """Per A/B variant: exposed users, click/purchase rate with a 95% Wilson interval; logged to MLflow."""
    from cli.common import get_settings
    from experiments.online import OUTCOMES, report

    outcomes = tuple(outcome) if outcome else OUTCOMES
    stats = report(get_settings(), outcomes=outcomes, since=since, log_to_mlflow=not no_mlflow)
    if not stats:
        console.print("no events carry a variant yet")
        raise typer.Exit(code=0)
    table = Table(title="online report (95% Wilson intervals)")
    for col in ("variant", "users", "events", *(f"{o} rate" for o in outcomes)):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for s in stats:
        cells = [f"{s.rates[o]:.4f} [{s.intervals[o][0]:.4f}, {s.intervals[o][1]:.4f}]" for o in outcomes]
        table.add_row(s.variant, f"{s.users:,}", f"{s.events:,}", *cells)
    console.print(table)
