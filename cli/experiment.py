"""`recsys experiment run | compare | search`: comparison runs over one split, tracked in MLflow."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress

from cli.common import UsageError, cli_errors, err_console, progress

# tables are wide: when piped (not a terminal), do not squeeze them into 80 columns
console = Console(width=None if sys.stdout.isatty() else 180, markup=False)  # text, never markup (cli/common.py)


app = typer.Typer(
    help="Offline experiments: compare models on one split, read past runs back, search parameters.",
    no_args_is_help=True,
    add_completion=False,
)


def _settings():
    from cli.common import get_settings

    return get_settings()


def _spec(path: Path):
    from experiments.spec import load_spec

    if not path.exists():
        raise UsageError(f"spec not found: {path}")
    return load_spec(path)


def _with_progress(bar: Progress, what: str):
    """A task counting ``what`` (models, trials): ``on_step(name, i, n)`` before step ``i``."""
    task = bar.add_task(what, total=None)

    def on_step(name: str, i: int, n: int) -> None:
        shown = f"{what} {min(i + 1, n)}/{n}: {name}" if i < n else name
        bar.update(task, total=n, completed=i, description=shown)

    return task, on_step


@app.command()
@cli_errors
def run(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC", help="experiment spec (YAML)")],
    report_dir: Annotated[
        Path | None, typer.Option("--report-dir", help="report folder (default reports/<experiment>-<timestamp>/)")
    ] = None,
) -> None:
    """Train and evaluate every model configuration of SPEC on one split; one MLflow parent run
    with a child run per configuration; comparison table and report."""
    from experiments.report import rich_table
    from experiments.runner import run_experiment

    spec = _spec(spec_path)
    settings = _settings()
    with progress() as bar:
        task, on_model = _with_progress(bar, "model")
        bar.update(task, description="loading data and splitting")
        result = run_experiment(
            spec, settings, base_dir=spec_path.parent, spec_path=spec_path, report_dir=report_dir, on_model=on_model
        )
    console.print(rich_table(result.comparison, spec.main_k, title=f"{spec.name} — metrics @ {spec.main_k}"))
    for r in result.results:
        if r.error:
            err_console.print(f"[yellow]warning:[/] {r.config.name} failed: {r.error}", highlight=False)
    console.print(f"parent run {result.parent_run_id} (experiment {spec.name}, split {result.split_hash})")
    console.print(f"report: {result.report_dir}/report.md")


@app.command()
@cli_errors
def compare(
    run_ids: Annotated[
        list[str] | None,
        typer.Argument(metavar="RUN_ID...", help="parent runs (their child runs are compared) or child runs"),
    ] = None,
    experiment: Annotated[
        str | None, typer.Option("--experiment", help="compare the latest experiment run of this MLflow experiment")
    ] = None,
    report_dir: Annotated[Path | None, typer.Option("--report-dir", help="also write a report folder here")] = None,
    k: Annotated[int | None, typer.Option(help="cut-off shown in the table (default 10, or the middle one)")] = None,
) -> None:
    """Read past experiment runs from MLflow into the comparison table (and report)."""
    from experiments.report import (
        breakdowns_from_runs,
        comparison_from_runs,
        ks_of,
        rich_table,
        write_report,
    )
    from pipelines import tracking

    if bool(run_ids) == bool(experiment):
        raise UsageError("give RUN_ID... or --experiment NAME (one of them)")
    settings = _settings()
    client = tracking.client_for(settings)
    if experiment:
        parents = [tracking.latest_parent_run(client, experiment)]
    else:
        parents = [tracking.get_run(client, rid) for rid in run_ids]
    runs = []
    for run in parents:
        children = tracking.child_runs(client, run.info.run_id)
        runs.extend(children if children else [run])
    df = comparison_from_runs(runs)
    ks = ks_of(df.columns)
    if not ks:
        raise UsageError("these runs carry no <metric>_at_<k> metrics: are they experiment runs?")
    main_k = k or (10 if 10 in ks else ks[len(ks) // 2])
    if main_k not in ks:
        raise UsageError(f"--k {main_k}: the runs have k in {ks}")
    console.print(rich_table(df, main_k, title=f"{len(runs)} runs — metrics @ {main_k}"))
    if report_dir is not None:
        with tempfile.TemporaryDirectory() as tmp:
            breakdowns = breakdowns_from_runs(client, runs, Path(tmp))
            write_report(
                df,
                report_dir,
                title="Comparison of " + ", ".join(r.info.run_id[:8] for r in parents),
                ks=ks,
                main_k=main_k,
                breakdowns=breakdowns,
                context={"runs": ", ".join(r.info.run_id for r in parents)},
            )
        console.print(f"report: {report_dir}/report.md")


@app.command()
@cli_errors
def search(
    spec_path: Annotated[
        Path, typer.Argument(metavar="SPEC", help="experiment spec whose parameter lists/ranges are searched")
    ],
    trials: Annotated[
        int | None, typer.Option(min=1, help="number of trials (default: the spec's search.trials)")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="write the best configuration here (TrainConfig YAML for recsys train --config)"),
    ] = None,
    report_dir: Annotated[Path | None, typer.Option("--report-dir", help="folder for trials.csv and best.yaml")] = None,
) -> None:
    """Search SPEC's parameter spaces (random, grid or TPE: the spec's search.method) with the
    search `recsys train` runs; each trial an MLflow child run."""
    from rich.table import Table

    from experiments.runner import search_experiment
    from pipelines.search import TrialProgress

    spec = _spec(spec_path)
    settings = _settings()
    with progress() as bar:
        task = bar.add_task("loading data and splitting", total=None)

        def on_trial(p: TrialProgress) -> None:
            best = f" · best {p.best:.4f} ({p.best_kind})" if p.best is not None else ""
            bar.update(task, total=p.total, completed=p.done, description=f"trial {p.done}/{p.total}: {p.label}{best}")

        result = search_experiment(
            spec,
            settings,
            trials=trials,
            out=out,
            base_dir=spec_path.parent,
            report_dir=report_dir,
            on_trial=on_trial,
        )
    key = result.metric
    table = Table(title=f"{spec.name} search — top trials by {key} ({spec.search.holdout} holdout)")
    for col in ("trial", "family", key, "weighting", "alpha", "params", "seconds"):
        table.add_column(col, overflow="fold")
    for _, row in result.trials.dropna(subset=[key]).head(10).iterrows():
        table.add_row(
            str(row["trial"]),
            str(row["family"]),
            f"{row[key]:.4f}",
            str(row["weighting"]),
            f"{row['alpha']:g}",
            str(row["params"]),
            f"{row['seconds']:.2f}",
        )
    console.print(table)
    outcome = result.outcome
    best = outcome.winner
    console.print(
        f"best: {best.kind} {key}={outcome.score:.4f} (popularity {outcome.popularity_score:.4f}) "
        f"params={best.params} weighting={best.weighting} alpha={best.alpha:g}"
    )
    for note in outcome.notes:
        console.print(f"  {note}")
    console.print(
        f"search run {outcome.parent_run_id}; trials: {result.report_dir}/trials.csv"
        + (f"; best config written to {result.out_path}" if result.out_path else "")
    )
