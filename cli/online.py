"""`recsys online-report`: click/purchase rate per A/B variant (per exposed user and per
impression) with Wilson intervals."""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console(markup=False, width=None if sys.stdout.isatty() else 120)  # text, never markup (cli/common.py)


def online_report(
    outcome: Annotated[list[str] | None, typer.Option(help="event types counted as successes (repeatable)")] = None,
    since: Annotated[datetime | None, typer.Option(help="only impressions at or after this time")] = None,
    no_mlflow: Annotated[
        bool, typer.Option("--no-mlflow", help="print only; don't log to the versions' MLflow runs")
    ] = False,
) -> None:
    """Per A/B variant: users shown a list (impressions), click/purchase rate per user and per
    impression with 95% Wilson intervals; logged to MLflow."""
    from cli.common import get_settings
    from experiments.online import OUTCOMES, report

    outcomes = tuple(outcome) if outcome else OUTCOMES
    stats = report(get_settings(), outcomes=outcomes, since=since, log_to_mlflow=not no_mlflow)
    if not stats:
        console.print("no impressions logged yet (the API logs every served list)")
        raise typer.Exit(code=0)
    table = Table(title="online report (95% Wilson intervals)")
    table.add_column("variant", no_wrap=True)
    for col in ("users", "impressions", "outcome", "per user", "per impression"):
        table.add_column(col, justify="left" if col == "outcome" else "right", no_wrap=True)
    for s in stats:
        for n, o in enumerate(outcomes):
            lo, hi = s.intervals[o]
            ilo, ihi = s.impression_intervals[o]
            head = (s.variant, f"{s.users:,}", f"{s.impressions:,}") if n == 0 else ("", "", "")
            table.add_row(
                *head,
                o,
                f"{s.rates[o]:.4f} [{lo:.4f}, {hi:.4f}]",
                f"{s.impression_rates[o]:.4f} [{ilo:.4f}, {ihi:.4f}]",
            )
    console.print(table)
