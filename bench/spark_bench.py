"""Spark ALS (``engine: spark``) against implicit's ALS on the 5M-event set, on one machine.

Seeded synthetic set at scale (100,000 users × 20,000 items × 5,000,000 events, the generator
and sizes of bench/train_bench.py); one per-user random holdout split; the same params (the
default TrainConfig: 64 factors, λ 0.05, 15 iterations, confidence weighting α 2) fitted by
implicit in this process and by Spark on ``local[2]`` (``RECSYS_SPARK_MASTER`` overrides). Prints
wall times, their ratio and nDCG@10 of both on the holdout.

Spark is expected to be slower on one box (JVM start, Parquet hand-off, shuffles between
blocks); the engine is there for data that outgrows one machine, and this reports the price.
Exit 0 unless the Spark fit fails or its nDCG@10 is far below implicit's (< 0.8×).

Run from the repo root: `python bench/spark_bench.py` (optional env BENCH_EVENTS to scale down,
BENCH_SPARK_DRIVER_MEMORY, default 4g).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from rich.console import Console
from rich.table import Table

MIN_NDCG_RATIO = 0.8


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("py4j", "recsys.matrix", "recsys.evaluation"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("RECSYS_SPARK_MASTER", "local[2]")
    os.environ.setdefault("RECSYS_SPARK_DRIVER_MEMORY", os.environ.get("BENCH_SPARK_DRIVER_MEMORY", "4g"))

    from pipelines.train import TrainConfig
    from recsys.datasets.synthetic import generate_synthetic
    from recsys.evaluation.metrics import ranking_metrics_at_k
    from recsys.evaluation.splits import random_split
    from recsys.evaluation.topk import top_k_scores
    from recsys.matrix import InteractionMatrix
    from recsys.models.als import ALSEmbedder
    from recsys.models.base import TrainData
    from recsys.models.spark_als import SparkALSEmbedder

    console = Console(width=120)
    n_events = int(os.environ.get("BENCH_EVENTS", "5000000"))
    n_users, n_items = (100_000, 20_000) if n_events >= 5_000_000 else (n_events // 50, n_events // 250)
    config = TrainConfig()
    params = config.model.params

    t = time.perf_counter()
    data = generate_synthetic(n_users=n_users, n_items=n_items, n_events=n_events, n_clusters=20, seed=1)
    events = data.events.assign(
        user_id=data.events["user_id"].astype("category"), item_id=data.events["item_id"].astype("category")
    )
    full = InteractionMatrix.from_events(events, weighting=config.weighting, alpha=config.alpha)
    split = random_split(events, test_ratio=config.test_ratio, seed=config.seed)
    train = InteractionMatrix.from_events(
        split.train, user_ids=full.user_ids, item_ids=full.item_ids, weighting=config.weighting, alpha=config.alpha
    )
    test = InteractionMatrix.from_events(split.test, user_ids=full.user_ids, item_ids=full.item_ids, weighting="none")
    prepare = time.perf_counter() - t
    del data, events, split
    users = np.flatnonzero(np.diff(test.matrix.indptr) > 0)
    users = np.sort(np.random.default_rng(config.seed).choice(users, min(config.eval_users, len(users)), replace=False))

    def ndcg(model) -> float:
        top = top_k_scores(
            model.user_vectors_,
            model.item_vectors_,
            config.k,
            exclude=train.matrix[users],
            user_rows=users,
            metric="dot",
        )[0]
        return float(ranking_metrics_at_k(top, test.matrix, config.k, user_rows=users)["ndcg"])

    t = time.perf_counter()
    implicit_model = ALSEmbedder(**params).fit(TrainData(train.matrix))
    implicit_seconds = time.perf_counter() - t
    implicit_ndcg = ndcg(implicit_model)
    del implicit_model

    t = time.perf_counter()
    try:
        spark_model = SparkALSEmbedder(**params).fit(TrainData(train.matrix))
    except Exception:
        logging.getLogger("spark_bench").exception("the Spark fit failed")
        print("Spark ALS fit FAILED")
        return 1
    spark_seconds = time.perf_counter() - t
    spark_ndcg = ndcg(spark_model)

    master = os.environ["RECSYS_SPARK_MASTER"]
    table = Table(
        title=f"Spark ALS ({master}) vs implicit ALS: {n_users:,} users × {n_items:,} items × {n_events:,} events, "
        f"{train.matrix.nnz:,} training pairs, params {params}"
    )
    table.add_column("step")
    table.add_column("seconds", justify="right")
    table.add_column(f"nDCG@{config.k}", justify="right")
    table.add_row("generate + matrices (not in ratio)", f"{prepare:.1f}", "")
    table.add_row("implicit ALS fit (this process, 2 threads)", f"{implicit_seconds:.1f}", f"{implicit_ndcg:.4f}")
    table.add_row(f"Spark ALS fit ({master}), total", f"{spark_seconds:.1f}", f"{spark_ndcg:.4f}")
    for step, seconds in spark_model.timings_.items():
        table.add_row(f"  spark: {step}", f"{seconds:.1f}", "")
    console.print(table)
    ratio, quality = spark_seconds / implicit_seconds, spark_ndcg / implicit_ndcg
    ok = quality >= MIN_NDCG_RATIO
    print(
        f"Spark fit {spark_seconds:.1f}s / implicit fit {implicit_seconds:.1f}s = ratio {ratio:.2f} (reported, no target); "
        f"nDCG@{config.k} {spark_ndcg:.4f} vs {implicit_ndcg:.4f} = {quality:.3f} (>= {MIN_NDCG_RATIO}): {'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
