"""Evaluation at scale: 10 model configurations on 1,000,000 synthetic events through the
experiment runner (one split, MLflow parent + child runs in a temporary store, full report),
printing the wall time of evaluation alone per model (top-k for every test user + all metrics at
k = 5, 10, 20 + beyond-accuracy metrics) beside training time.

    .venv/bin/python bench/eval_scale_bench.py [--events 1000000] [--keep DIR]

Exit 0 when it completes.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from experiments.runner import run_experiment  # noqa: E402
from experiments.spec import parse_spec  # noqa: E402
from recsys.datasets import generate_synthetic  # noqa: E402
from recsys.settings import Settings  # noqa: E402

MODELS = [
    {"name": "als-confidence", "kind": "als", "weighting": "confidence", "params": {"factors": 64, "iterations": 10}},
    {"name": "als-bm25", "kind": "als", "weighting": "bm25", "params": {"factors": 64, "iterations": 10}},
    {"name": "als-bm25-128", "kind": "als", "weighting": "bm25", "params": {"factors": 128, "iterations": 10}},
    {"name": "bpr", "kind": "bpr", "params": {"factors": 64, "iterations": 50}},
    {"name": "lightfm-warp", "kind": "lightfm", "params": {"no_components": 32, "epochs": 5, "num_threads": 2}},
    {"name": "tags", "kind": "tags"},
    {"name": "tfidf", "kind": "tfidf"},
    {"name": "itemknn", "kind": "itemknn", "weighting": "none"},
    {"name": "popular", "kind": "popular"},
    {"name": "random", "kind": "random"},
]


def main() -> int:
    parser = argparse.ArgumentParser(description="evaluation wall time per model on 1M synthetic events")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--keep", type=Path, default=None, help="keep the MLflow store and report here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    console = Console(width=None if sys.stdout.isatty() else 140)

    start = time.perf_counter()
    with console.status(f"generating {args.events:,} synthetic events"):
        dataset = generate_synthetic(
            n_users=args.users, n_items=args.items, n_events=args.events, n_clusters=16, seed=42
        )
    t_gen = time.perf_counter() - start
    spec = parse_spec(
        {
            "name": "eval-scale",
            "dataset": {"format": "synthetic"},
            "split": {"method": "random", "test_ratio": 0.2},
            "k": [5, 10, 20],
            "seed": 42,
            "models": MODELS,
            "breakdown_attribute": "age_group",
        }
    )
    with tempfile.TemporaryDirectory(prefix="eval-scale-") as tmp:
        root = args.keep or Path(tmp)
        settings = Settings(data_dir=root / "data")
        status = console.status("running")
        status.start()
        start = time.perf_counter()
        try:
            result = run_experiment(
                spec,
                settings,
                dataset=dataset,
                report_dir=root / "report",
                on_model=lambda name, i, n: status.update(f"model {i + 1}/{n}: {name}"),
            )
        finally:
            status.stop()
        total = time.perf_counter() - start
        df = result.comparison
        table = Table(
            title=f"evaluation at scale: {len(dataset.events):,} events, {dataset.events['user_id'].nunique():,} users, "
            f"{dataset.events['item_id'].nunique():,} items; {int(df['eval_users'].iloc[0]):,} test users, k = 5/10/20"
        )
        for col in ("model", "eval s (alone)", "train s", "ndcg@10", "recall@10", "coverage@10", "index R@10", "index"):
            table.add_column(col, justify="left" if col == "model" else "right")
        for name, row in df.iterrows():
            if isinstance(row.get("error"), str):
                table.add_row(name, "failed", row["error"][:60], "", "", "", "", "")
                continue
            recall = row.get("index_recall_at_10")
            table.add_row(
                name,
                f"{row['time_eval_s']:.2f}",
                f"{row['time_train_s']:.2f}",
                f"{row['ndcg_at_10']:.4f}",
                f"{row['recall_at_10']:.4f}",
                f"{row['coverage_at_10']:.4f}",
                "—" if recall != recall else f"{recall:.3f}",
                str(row["index"]) if isinstance(row.get("index"), str) else "—",
            )
        console.print(table)
        console.print(
            f"data generation {t_gen:.1f}s; experiment (split + 10 models + report + MLflow) {total:.1f}s; "
            f"evaluation alone, all models: {df['time_eval_s'].sum():.1f}s"
        )
        console.print(f"report: {result.report_dir}" + ("" if args.keep else " (temporary; --keep DIR to keep it)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
