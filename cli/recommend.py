"""`recsys recommend --all-users`: batch recommendations of the served model into Parquet."""

from __future__ import annotations

import os
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli.common import UsageError, cli_errors, console, err_console

if TYPE_CHECKING:
    from feature_store import FeatureStore
    from feature_store.activity import StoredEvent
    from recsys.batch import FreshHistory

COLUMNS = ("user_id", "rank", "item_id", "score", "model_version")


@cli_errors
def recommend(
    out: Annotated[Path, typer.Option(help="Parquet file to write (replaced whole, never half-written)")],
    all_users: Annotated[bool, typer.Option("--all-users", help="every user of the model (the batch mode)")] = False,
    k: Annotated[int, typer.Option("--k", min=1, max=1000, help="items per user")] = 50,
    alias: Annotated[str | None, typer.Option(help="model alias (default: RECSYS_MODEL_ALIAS)")] = None,
    version: Annotated[str | None, typer.Option(help="a registered version instead of the alias")] = None,
    exact: Annotated[
        bool, typer.Option("--exact", help="score every item (BLAS) even where serving asks an approximate index")
    ] = False,
    include_category: Annotated[
        list[str] | None, typer.Option(help="only items in one of these categories (repeatable)")
    ] = None,
    exclude_category: Annotated[
        list[str] | None, typer.Option(help="no items in these categories (repeatable)")
    ] = None,
    exclude_item: Annotated[list[str] | None, typer.Option(help="never these items (repeatable)")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="users per block")] = 2048,
) -> None:
    """Top-k for every user the model was trained on, with the API's rules (seen items left
    out, available items only, filters), written as Parquet: user_id, rank, item_id, score,
    model_version.

    Users with events stored after the model's training snapshot get the API's answer: their
    fresh events folded in through the trained model (users new since training included, after
    the model's users)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TimeRemainingColumn,
    )

    from cli.common import get_settings, open_store
    from feature_store.activity import snapshot_cutoff
    from pipelines.library import load_bundle, registered_version
    from recsys.batch import batch_path, recommend_all, seen_matrix
    from recsys.recommender import Filters, Recommender
    from recsys.validation import check_id, check_label

    if not all_users:
        raise UsageError("pass --all-users (recommendations for every user of the model are the only batch mode)")
    if alias is not None and version is not None:
        raise UsageError("--alias and --version are exclusive")
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory: give a file name")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: folder {out.parent} does not exist")
    filters = Filters(
        exclude_items=[check_id(i, "exclude_item") for i in exclude_item or []],
        include_categories=[check_label(c, "include_category") for c in include_category or []],
        exclude_categories=[check_label(c, "exclude_category") for c in exclude_category or []],
    )
    settings = get_settings()
    try:
        mv = registered_version(settings, alias, version)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    store = open_store(settings)
    with console.status(f"loading version {mv.version} and user histories"):
        bundle = load_bundle(settings, mv)
        recommender = Recommender(bundle, store.items_frame())
        seen = seen_matrix(store.snapshot().events, bundle.user_ids, bundle.item_ids)
        fresh = fresh_histories(store, snapshot_cutoff(bundle.trained_as_of))
    model_version = str(mv.version)
    n_new = sum(f.user_id not in bundle.user_pos for f in fresh)
    item_ids = bundle.item_ids.astype(str)
    schema = pa.schema(
        [
            ("user_id", pa.string()),
            ("rank", pa.int16()),
            ("item_id", pa.string()),
            ("score", pa.float32()),
            ("model_version", pa.string()),
        ]
    )
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    start, n_rows = time.perf_counter(), 0
    try:
        with (
            pq.ParquetWriter(tmp, schema) as writer,
            Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=err_console,
            ) as progress,
        ):
            task = progress.add_task("users", total=len(bundle.user_ids) + n_new)
            for batch in recommend_all(
                recommender,
                seen,
                k,
                filters=filters,
                exact=exact,
                batch_size=batch_size,
                on_batch=lambda n: progress.advance(task, n),
                fresh=fresh,
            ):
                found = batch.item_rows >= 0
                rows, ranks = np.nonzero(found)
                table = pa.table(
                    {
                        "user_id": pa.array(batch.user_ids[rows].astype(str)),
                        "rank": pa.array((ranks + 1).astype(np.int16)),
                        "item_id": pa.array(item_ids[batch.item_rows[found]]),
                        "score": pa.array(batch.scores[found].astype(np.float32)),
                        "model_version": pa.array(np.full(len(rows), model_version, dtype=object), pa.string()),
                    },
                    schema=schema,
                )
                writer.write_table(table)
                n_rows += len(rows)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    seconds = time.perf_counter() - start
    n_users = len(bundle.user_ids) + n_new
    console.print(
        f"wrote {n_rows:,} recommendations for {n_users:,} users of version {model_version} to {out} "
        f"in {seconds:.1f}s ({n_users / max(seconds, 1e-9):,.0f} users/s, {batch_path(recommender, exact)} path; "
        f"{len(fresh):,} users with events since training folded in)"
    )


def fresh_histories(store: FeatureStore, cutoff: datetime | None) -> list[FreshHistory]:
    """Users whose newest event was stored after the model's snapshot ``cutoff`` (decided as
    the API decides it, ``is_fresh``), each with their whole history, oldest first."""
    from feature_store.activity import is_fresh
    from recsys.batch import FreshHistory

    if cutoff is None:
        return []
    by_user: dict[str, list[StoredEvent]] = {}
    for event in store.events_of_users_stored_since(cutoff):
        by_user.setdefault(event.user_id, []).append(event)
    out = []
    for user_id, events in by_user.items():
        newest = max((e.stored_at for e in events if e.stored_at is not None), default=None)
        if is_fresh(newest, cutoff):
            out.append(FreshHistory(user_id, [e.item_id for e in events], [e.value for e in events]))
    return out
