"""Wall time of the whole `recsys train` path against implicit's bare ALS fits.

Seeded synthetic set at scale (100,000 users × 20,000 items × 5,000,000 events) loaded into a
fresh SQLite feature store and exported to its offline Parquet log (as `recsys ingest` does);
then `train` (export of new events → Parquet snapshot → matrix → holdout fit + evaluation →
full fit → indexes → bundle → MLflow run → registered version → alias) is timed, and so are
two bare `implicit` ALS fits (the path trains two models: holdout and full) on the same
matrices with the same parameters. Target: path / bare ≤ 1.3.

Run from the repo root: `python bench/train_bench.py` (optional env BENCH_EVENTS to scale down).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from rich.console import Console
from rich.table import Table
from threadpoolctl import threadpool_limits

TARGET = 1.3


def main() -> int:
    from implicit.cpu.als import AlternatingLeastSquares

    from feature_store import FeatureStore
    from pipelines import tracking
    from pipelines.train import TrainConfig, train
    from recsys.datasets.synthetic import generate_synthetic
    from recsys.evaluation.splits import random_split
    from recsys.matrix import InteractionMatrix
    from recsys.settings import Settings

    console = Console()
    n_events = int(os.environ.get("BENCH_EVENTS", "5000000"))
    n_users, n_items = (100_000, 20_000) if n_events >= 5_000_000 else (n_events // 50, n_events // 250)
    rows = []
    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
        settings = Settings(data_dir=Path(tmp))
        t = time.perf_counter()
        data = generate_synthetic(n_users=n_users, n_items=n_items, n_events=n_events, n_clusters=20, seed=1)
        rows.append(("generate (not in ratio)", time.perf_counter() - t))
        t = time.perf_counter()
        store = FeatureStore(settings.database_url, offline_uri="")  # SQL half first, timed alone
        store.ingest(data, progress=False)
        rows.append(("ingest into SQLite (not in ratio)", time.perf_counter() - t))
        store = FeatureStore(settings.database_url, offline_uri=settings.offline_store_uri)
        exported = store.export_offline()
        rows.append((f"export to Parquet, {exported.events_per_second:,.0f} events/s (not in ratio)", exported.seconds))
        t = time.perf_counter()
        sql_snapshot = store.snapshot(source="sql")
        rows.append(("SQL snapshot, for comparison (not in ratio)", time.perf_counter() - t))
        del sql_snapshot
        # The tracking store exists in any deployment that has trained before; create it up front.
        t = time.perf_counter()
        tracking.setup(settings)
        rows.append(("create MLflow store (not in ratio)", time.perf_counter() - t))
        del data

        config = TrainConfig()
        t = time.perf_counter()
        result = train(settings, config)
        path_time = time.perf_counter() - t
        for stage, seconds in result.timings.items():
            rows.append((f"  train stage: {stage}", seconds))
        rows.append(("train path total", path_time))

        # Bare implicit on the same two matrices with the same params.
        dataset = store.snapshot()
        full = InteractionMatrix.from_events(dataset.events, weighting=config.weighting, alpha=config.alpha)
        split = random_split(dataset.events, test_ratio=config.test_ratio, seed=config.seed)
        holdout = InteractionMatrix.from_events(
            split.train, user_ids=full.user_ids, item_ids=full.item_ids, weighting=config.weighting, alpha=config.alpha
        )
        bare = 0.0
        for name, m in (("holdout", holdout), ("full", full)):
            t = time.perf_counter()
            with threadpool_limits(1, "blas"):  # as ALSEmbedder does: implicit's own advice
                model = AlternatingLeastSquares(
                    alpha=1.0, random_state=config.seed, dtype=np.float32, **config.model.params
                )
                model.fit(m.matrix, show_progress=False)
            seconds = time.perf_counter() - t
            bare += seconds
            rows.append((f"bare implicit fit ({name})", seconds))
        rows.append(("bare fits total", bare))

    ratio = path_time / bare
    table = Table(
        title=f"train path vs bare implicit ALS ({n_users:,} users × {n_items:,} items × {n_events:,} events)"
    )
    table.add_column("step")
    table.add_column("seconds", justify="right")
    for name, seconds in rows:
        table.add_row(name, f"{seconds:.2f}")
    console.print(table)
    console.print("metrics: " + ", ".join(f"{k}={v:.4f}" for k, v in result.metrics.items() if k.endswith("_at_10")))
    ok = ratio <= TARGET
    print(
        f"train path {path_time:.1f}s / bare fits {bare:.1f}s = ratio {ratio:.3f} (target <= {TARGET}): {'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
