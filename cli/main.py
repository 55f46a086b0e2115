"""The `recsys` command. Names and options here are a contract for scripts and cron jobs.

Every failure the user can fix prints one line `error: …` on stderr and exits with code 2
(see cli/common.py).
"""

from __future__ import annotations

import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli import experiment as experiment_cli
from cli import model as model_cli
from cli import online as online_cli
from cli import pipeline as pipeline_cli
from cli import recommend as recommend_cli
from cli import store as store_cli
from cli.common import (
    OneLineErrorsGroup,
    UsageError,
    apply_cli_errors,
    cli_errors,
    configure_logging,
    console,
    describe_validation_error,
    duration,
    ensure_port_free,
    get_settings,
    open_store,
    progress,
    train_lock,
)

app = typer.Typer(
    cls=OneLineErrorsGroup,
    help="Embedding-based recommendation service: data → embeddings → MLflow → Annoy → HTTP.",
    no_args_is_help=True,
    add_completion=False,
)
FORMATS = ("movielens-100k", "movielens-1m", "goodbooks-10k", "csv", "parquet")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("recsys-service")
        except PackageNotFoundError:  # run from a source tree that was never installed
            number = "unknown (not installed)"
        console.print(f"recsys {number}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="log progress details, MLflow's and other libraries' INFO lines")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    configure_logging(verbose)


def _settings():
    return get_settings()


def _store(settings):
    return open_store(settings)


def _read_train_config(path: Path):
    """A TrainConfig from YAML; every problem is one line naming the file (and line or field)."""
    import yaml
    from pydantic import ValidationError

    from pipelines.train import TrainConfig

    if not path.exists():
        raise UsageError(f"config not found: {path}")
    try:
        with path.open(encoding="utf-8") as f:  # a stream, so YAML errors name the file
            raw = yaml.safe_load(f)
    except UnicodeDecodeError as exc:
        raise UsageError(f"config {path}: not UTF-8 text (byte {exc.start})") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UsageError(
            f"config {path}: expected a mapping of TrainConfig fields at the top level, got {type(raw).__name__}"
        )
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise UsageError(f"{describe_validation_error(exc, 'config', TrainConfig)} (in {path})") from exc


def _print_ingest(result, settings) -> None:
    console.print(
        f"ingested into {settings.database_url}: {result.events_inserted:,} new events "
        f"({result.events_duplicate:,} already stored), {result.items_upserted:,} items, {result.users_upserted:,} users"
    )


@app.command()
@cli_errors
def generate(
    users: Annotated[int, typer.Option(min=1, help="number of users")] = 2000,
    items: Annotated[int, typer.Option(min=1, help="number of items")] = 1000,
    events: Annotated[int, typer.Option(min=1, help="number of events")] = 100_000,
    clusters: Annotated[int, typer.Option(min=1, help="latent taste clusters")] = 8,
    seed: Annotated[int, typer.Option(help="random seed")] = 42,
    out: Annotated[
        Path | None, typer.Option(help="write Parquet files to this folder instead of the feature store")
    ] = None,
) -> None:
    """Generate a seeded synthetic dataset into the feature store (or Parquet files)."""
    from recsys.datasets.synthetic import generate_synthetic

    with console.status("generating synthetic data"):
        dataset = generate_synthetic(n_users=users, n_items=items, n_events=events, n_clusters=clusters, seed=seed)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        dataset.events.to_parquet(out / "events.parquet", index=False)
        dataset.items.to_parquet(out / "items.parquet", index=False)
        dataset.users.to_parquet(out / "users.parquet", index=False)
        console.print(
            f"wrote {len(dataset.events):,} events, {len(dataset.items):,} items, {len(dataset.users):,} users to {out}"
        )
        return
    settings = _settings()
    _print_ingest(_store(settings).ingest(dataset, progress=True), settings)


@app.command()
@cli_errors
def ingest(
    fmt: Annotated[str, typer.Argument(metavar="FORMAT", help=f"one of: {', '.join(FORMATS)}")],
    path: Annotated[Path, typer.Argument(help="dataset folder (MovieLens, goodbooks) or events file (csv, parquet)")],
    map_: Annotated[
        list[str] | None,
        typer.Option("--map", help="column mapping OURS=THEIRS for csv/parquet, e.g. --map user_id=customer"),
    ] = None,
    items_path: Annotated[Path | None, typer.Option("--items", help="items file for csv/parquet")] = None,
) -> None:
    """Load a dataset into the feature store (idempotent: re-ingesting adds nothing)."""
    from recsys.datasets import load_dataset

    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if not path.exists():
        raise UsageError(f"path not found: {path}")
    kwargs = {}
    if map_:
        bad = [m for m in map_ if "=" not in m]
        if bad:
            raise UsageError(f"--map takes OURS=THEIRS, got {bad[0]!r}")
        kwargs["mapping"] = dict(m.split("=", 1) for m in map_)
    if items_path is not None:
        kwargs["items_path"] = items_path
    settings = _settings()
    store = _store(settings)  # a bad database URL is reported before a long read
    with console.status(f"reading {fmt} from {path}"):
        dataset = load_dataset(fmt, path, **kwargs)
    _print_ingest(store.ingest(dataset, progress=True), settings)


@app.command()
@cli_errors
def train(
    config: Annotated[Path | None, typer.Option(help="YAML training config: fit exactly this (no search)")] = None,
    as_of: Annotated[datetime | None, typer.Option(help="snapshot time: only events at or before it")] = None,
    alias: Annotated[str | None, typer.Option(help="alias to promote on success (default from settings)")] = None,
    no_promote: Annotated[bool, typer.Option("--no-promote", help="register but do not move the alias")] = False,
    content: Annotated[
        str | None,
        typer.Option(
            help="content encoder (tags, tfidf, sbert): hybrid modes, /search, cold start; "
            "without --config the search picks one when items have text"
        ),
    ] = None,
    budget: Annotated[
        str, typer.Option(help="without --config: wall-clock cap of the model search (90s, 10m, 1h)")
    ] = "10m",
    trials: Annotated[int, typer.Option(min=1, help="without --config: search trials (the reproducible budget)")] = 30,
    seed: Annotated[int, typer.Option(help="without --config: seed of the search and the models")] = 42,
) -> None:
    """Train on the feature store's snapshot, track in MLflow, register and promote.

    Without --config: search model families and their parameters on a time-based validation
    split of the snapshot (see pipelines/search.py), then train the winner on all of it.
    One run per registered model at a time: a second exits with code 3 and registers nothing."""
    from pipelines import tracking
    from pipelines.train import train as run_train

    settings = _settings()
    if content is not None and content not in ("tags", "tfidf", "sbert"):
        raise UsageError(f"--content must be one of tags, tfidf, sbert; got {content!r}")
    if config is None:
        from pipelines.search import parse_duration

        try:
            max_seconds = parse_duration(budget)
        except ValueError as exc:
            raise UsageError(f"--budget: {exc}") from exc
        promote = None if no_promote else (alias or settings.model_alias)
        if promote is not None:
            tracking.check_alias(promote)
        _store(settings).dispose()
        _autotune(settings, trials, max_seconds, seed, content, as_of, promote)
        return
    cfg = _read_train_config(config)
    if content is not None:
        from pipelines.train import ContentConfig

        cfg.content = ContentConfig(kind=content)
    cfg.promote_alias = None if no_promote else (alias or settings.model_alias)
    if cfg.promote_alias is not None:
        tracking.check_alias(cfg.promote_alias)
    _store(settings).dispose()  # a bad database URL fails here, before the lock and MLflow
    with train_lock(settings), progress() as bar:
        task = bar.add_task("training", total=None)
        result = run_train(
            settings, cfg, as_of=as_of, on_stage=lambda s: bar.update(task, description=f"training: {s}")
        )
    _print_train_result(result, cfg.model.kind, cfg.k, cfg.promote_alias, settings)


def _print_train_result(result, kind: str, k: int, alias: str | None, settings) -> None:
    table = Table(title=f"trained {kind} — run {result.run_id}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in result.metrics.items():
        if f"_at_{k}" in name or name == "eval_users":
            table.add_row(name, f"{value:.4f}")
    for name, value in result.timings.items():
        table.add_row(f"time {name} (s)", f"{value:.2f}")
    console.print(table)
    where = f", alias {alias}" if alias else ""
    console.print(f"registered {settings.registered_model_name} version {result.version}{where}")


def _autotune(settings, trials: int, max_seconds: float, seed: int, content: str | None, as_of, alias: str | None):
    """Search, train the winner, print what won and by how much over popularity."""
    from pipelines.search import SearchConfig, TrialProgress, autotune, describe

    search = SearchConfig(trials=trials, max_seconds=max_seconds, seed=seed)
    with train_lock(settings), progress() as bar:
        task = bar.add_task(f"search: up to {trials} trials, {duration(max_seconds)} budget", total=trials)

        def on_trial(p: TrialProgress) -> None:
            best = f"best ndcg@{search.k} {p.best:.4f} ({p.best_kind})" if p.best is not None else "no score yet"
            bar.update(
                task,
                total=p.total,
                completed=p.done,
                description=f"search trial {p.done}/{p.total}: {p.label} · {best} · ETA {duration(p.eta_seconds)}",
            )

        def on_stage(stage: str) -> None:
            if stage != "search":  # the winner's training: a stage at a time, no count
                bar.update(task, total=None, description=f"training the winner: {stage}")

        result = autotune(
            settings,
            search,
            as_of=as_of,
            promote_alias=alias,
            content=content,
            on_stage=on_stage,
            on_trial=on_trial,
        )
    outcome = result.search
    _print_train_result(result.train, outcome.winner.kind, search.k, alias, settings)
    lift = f"×{outcome.lift:.2f}" if outcome.popularity_score > 0 else "(popularity scores 0)"
    console.print(f"search: {len(outcome.trials)} trials in {outcome.seconds:.0f}s; winner {describe(outcome.winner)}")
    console.print(
        f"validation ndcg@{search.k} {outcome.score:.4f} vs popularity {outcome.popularity_score:.4f} {lift}"
        + (
            f"; content {outcome.content.kind}, blend {outcome.hybrid.default_mode} {tuple(outcome.hybrid.weights)}"
            if outcome.content
            else "; no content space"
        )
    )
    for note in outcome.notes:
        console.print(f"  {note}")
    return result


@app.command()
@cli_errors
def serve(
    host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="port")] = 8000,
    workers: Annotated[
        int, typer.Option(min=1, help="worker processes, each with its own socket on the port (SO_REUSEPORT)")
    ] = 1,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
    access_log: Annotated[bool, typer.Option(help="log every request (costly at high request rates)")] = True,
) -> None:
    """Serve the HTTP API with uvicorn."""
    from api.workers import serve_workers

    ensure_port_free(host, port)  # before loading anything: a busy port is a usage error
    console.print(f"dashboard: http://{host}:{port}/ui", highlight=False)
    serve_workers("api.main:app", host, port, workers, log_level=log_level, access_log=access_log)


#: the demo's search budget: the two ALS starting points, EASE and LightFM with side features
#: (each family's first point), capped in wall time so a busy machine still ends the demo soon
DEMO_TRIALS = 4
DEMO_SEARCH_SECONDS = 20.0


@app.command()
@cli_errors
def demo(
    users: Annotated[int, typer.Option(min=10)] = 2000,
    items: Annotated[int, typer.Option(min=10)] = 1000,
    events: Annotated[int, typer.Option(min=100)] = 100_000,
) -> None:
    """Generate data, ingest, train, and print a few users' recommendations."""
    from concurrent.futures import ThreadPoolExecutor

    from pipelines import tracking
    from pipelines.library import load
    from recsys.datasets.synthetic import generate_synthetic

    settings = _settings()
    started = time.perf_counter()
    console.rule("1. generate + ingest")
    # A fresh folder's MLflow store runs its schema migrations (seconds, mostly waiting on
    # SQLite commits): done beside generating and ingesting, not on the search's clock.
    with ThreadPoolExecutor(1) as pool:
        tracking_ready = pool.submit(tracking.setup, settings)
        dataset = generate_synthetic(n_users=users, n_items=items, n_events=events, seed=42)
        store = _store(settings)
        _print_ingest(store.ingest(dataset, progress=True), settings)
        tracking_ready.result()
    steps = {"generate + ingest": time.perf_counter() - started}
    console.rule(
        f"2. search a model ({DEMO_TRIALS} trials, {DEMO_SEARCH_SECONDS:.0f} s cap) + TF-IDF content → MLflow → index"
    )
    tuned = _autotune(settings, DEMO_TRIALS, DEMO_SEARCH_SECONDS, 42, "tfidf", None, settings.model_alias)
    result = tuned.train
    steps["search"] = tuned.search.seconds
    steps["train the winner"] = time.perf_counter() - started - sum(steps.values())
    console.print(
        f"model version {result.version}: "
        + ", ".join(
            f"{k}={v:.3f}"
            for k, v in result.metrics.items()
            if k.endswith("_at_10") and k.split("_")[0] in ("precision", "ndcg", "hybrid")
        )
    )
    console.rule("3. recommendations")
    recommender = load(version=result.version, catalog=store.items_frame(), settings=settings)
    for user_id in ["u1", "u2", "u3"]:
        recs = recommender.recommend_for_user(user_id, store.user_history(user_id), k=5)
        table = Table(title=f"user {user_id} ({recs.strategy})")
        table.add_column("item")
        table.add_column("title")
        table.add_column("score", justify="right")
        for item in recs.items:
            table.add_row(item.item_id, item.title, f"{item.score:.3f}")
        console.print(table)
    steps["recommendations"] = time.perf_counter() - started - sum(steps.values())
    console.print(
        " · ".join(f"{step} {seconds:.1f} s" for step, seconds in steps.items())
        + f" · total {time.perf_counter() - started:.1f} s",
        highlight=False,
    )
    console.rule("next")
    console.print(f"data and MLflow store live in {settings.data_dir}")
    recsys_cmd = sys.argv[0] if Path(sys.argv[0]).name == "recsys" else "recsys"  # as the user invoked it
    console.print(f"serve the API:   RECSYS_API_KEYS=dev-key {recsys_cmd} serve --port 8000")
    console.print("then try:        curl 'http://127.0.0.1:8000/users/u1/recommendations?k=5'")
    console.print("                 curl 'http://127.0.0.1:8000/search?q=rocket+orbit&k=5'")
    console.print(
        """                 curl -X POST -H 'X-API-Key: dev-key' -H 'content-type: application/json' """
        """-d '{"user_id": "u1", "item_id": "i3", "event_type": "click"}' http://127.0.0.1:8000/events"""
    )
    console.print(f"MLflow UI:       mlflow ui --backend-store-uri {settings.mlflow_tracking_uri}")
    console.print("dashboard:       open http://127.0.0.1:8000/ui once the API is served (users, items, models, A/B)")


app.add_typer(experiment_cli.app, name="experiment")
app.add_typer(pipeline_cli.app, name="pipeline")
app.add_typer(model_cli.app, name="model")
app.add_typer(store_cli.app, name="store")
app.command("recommend")(recommend_cli.recommend)
app.command("online-report")(cli_errors(online_cli.online_report))
# The one error boundary: any command registered without @cli_errors gets it here.
apply_cli_errors(app)


if __name__ == "__main__":
    app()
