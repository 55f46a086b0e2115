"""`recsys store …`: the offline half of the feature store (the Parquet event log).

``export`` appends the events committed in SQL since the last export (by the watermark on the
event sequence; safe to run at any time, from cron or beside the API); ``compact`` merges the
small files of each date partition; ``status`` shows the log's watermark and size; ``rebind``
points MLflow's artifact locations at a copied or moved data folder.
"""

from __future__ import annotations

from typing import Annotated

import typer

from cli.common import UsageError, cli_errors, console

app = typer.Typer(
    help="Offline event log (Parquet): export from SQL, compact, status.", no_args_is_help=True, add_completion=False
)


def _store():
    from feature_store import FeatureStore
    from recsys.settings import get_settings

    settings = get_settings()
    store = FeatureStore(settings.database_url, offline_uri=settings.offline_store_uri)
    if store.offline is None:
        raise UsageError("no offline store configured: set RECSYS_OFFLINE_STORE_URI")
    return store


@app.command()
@cli_errors
def export(
    batch_events: Annotated[int, typer.Option(min=1, help="sequence numbers per committed batch")] = 1_000_000,
    lock_timeout_ms: Annotated[int, typer.Option(min=1, help="PostgreSQL: longest wait for in-flight writers")] = 5_000,
    rebuild: Annotated[
        bool,
        typer.Option(
            "--rebuild", help="empty the log and export every event of this store again (a log of another store)"
        ),
    ] = False,
) -> None:
    """Append the events and impressions committed since the last export to the offline logs."""
    store = _store()
    result = store.export_offline(
        progress=True, rebuild=rebuild, batch_events=batch_events, lock_timeout_ms=lock_timeout_ms
    )
    console.print(
        f"exported {result.events:,} events in {result.batches} batch(es) to {store.offline.uri} "
        f"in {result.seconds:.2f}s ({result.events_per_second:,.0f} events/s); watermark {result.watermark}; "
        f"{result.impressions:,} impressions to {store.offline_impressions.uri}"
    )


@app.command()
@cli_errors
def compact(
    small_rows: Annotated[
        int, typer.Option(min=2, help="files with fewer rows than this are merged per date")
    ] = 1_000_000,
) -> None:
    """Merge small files per date partition (readers see every row once throughout)."""
    store = _store()
    result = store.offline.compact(small_rows=small_rows)
    console.print(
        f"compacted {store.offline.uri}: {result.files_before:,} files -> {result.files_after:,} "
        f"({result.rows:,} rows, {len(result.removed):,} files removed) in {result.seconds:.2f}s"
    )


@app.command()
@cli_errors
def status() -> None:
    """Watermark, committed rows and files of the offline log."""
    store = _store()
    state = store.offline.state()
    console.print(
        f"{store.offline.uri}: watermark {state.watermark}, {state.rows:,} events in {len(state.files):,} files "
        f"(checkpoint at {state.checkpoint}, {len(state.batch_markers)} batch(es) since)"
    )


@app.command()
@cli_errors
def rebind() -> None:
    """After `cp -r`/`mv` of a data folder: point MLflow's artifact locations at this folder."""
    from cli.common import get_settings
    from pipelines import tracking

    settings = get_settings()
    moved = tracking.rebind_artifacts(settings)
    if moved is None:
        console.print(f"artifact locations already in {settings.mlflow_artifact_root}")
        return
    old, new, rows = moved
    console.print(f"artifact locations moved from {old} to {new} ({rows} rows)")
