"""`recsys recommend --all-users`: batch recommendations of the served model into Parquet."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from cli.common import UsageError, cli_errors, console, err_console

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

    A snapshot of the model: each user's trained vector and training-time history. Unlike the
    API, events stored after training are not folded in, and users who had no events at
    training time are not written (the API answers them with a fold-in or popularity)."""
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
    from pipelines import tracking
    from recsys.batch import batch_path, recommend_all, seen_matrix
    from recsys.bundle import ModelBundle
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
    client = tracking.setup(settings)
    name = settings.registered_model_name
    if version is not None:
        mv = tracking.get_version(client, name, version)
        if mv is None:
            raise UsageError(f"no version {version} of model {name!r}")
    else:
        alias = alias or settings.model_alias
        mv = tracking.resolve_alias(client, name, alias)
        if mv is None:
            raise UsageError(f"no model version behind alias {name}@{alias}: train one first (recsys train)")
    store = open_store(settings)
    with console.status(f"loading version {mv.version} and user histories"):
        fetched = tracking.fetch_bundle_checked(settings, mv)
        bundle = ModelBundle.load(fetched.path, verify=True, manifest_sha256=fetched.manifest_sha256)
        recommender = Recommender(bundle, store.items_frame())
        seen = seen_matrix(store.snapshot().events, bundle.user_ids, bundle.item_ids)
    model_version = str(mv.version)
    user_ids = bundle.user_ids.astype(str)
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
            task = progress.add_task("users", total=len(user_ids))
            for batch in recommend_all(
                recommender,
                seen,
                k,
                filters=filters,
                exact=exact,
                batch_size=batch_size,
                on_batch=lambda n: progress.advance(task, n),
            ):
                found = batch.item_rows >= 0
                rows, ranks = np.nonzero(found)
                table = pa.table(
                    {
                        "user_id": pa.array(user_ids[batch.user_rows[rows]]),
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
    console.print(
        f"wrote {n_rows:,} recommendations for {len(user_ids):,} users of version {model_version} to {out} "
        f"in {seconds:.1f}s ({len(user_ids) / max(seconds, 1e-9):,.0f} users/s, {batch_path(recommender, exact)} path)"
    )
