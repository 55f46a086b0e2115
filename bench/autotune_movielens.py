"""Out-of-the-box quality: MovieLens 100K ingested, ``recsys train`` with **no arguments**, then
asked over HTTP (uvicorn) for every test user, on two splits the search never sees:

(a) ``time``: a global time cutoff, the last 10% of ratings by time are test;
(b) ``random``: per-user random 80/20 (seed 42).

Only the train part is ingested: the search carves its own (time) validation split out of it.
Beside the served answers, in-process on the same train part: popularity, ALS with the
project's default parameters, and the best of a 27-point ALS grid (factors {16,32,64} ×
regularization {0.01,0.1,1} × alpha {1,2,5}) chosen **on the test set itself** — an
optimistic reference. Every rating is relevant; train items are never recommended.

Passes (exit 0) when the out-of-box service reaches ≥ 1.03× that optimistic ALS nDCG@10 on
both splits and ``/search?q=star wars`` has a Star Wars title in its top 5.

    python bench/autotune_movielens.py [--data ../shared/datasets/ml-100k] [--budget 10m] [--trials 40]

The data set is read from its folder, never copied (see its SOURCE.md for the terms).
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from recsys.datasets import Dataset, load_dataset  # noqa: E402
from recsys.evaluation.metrics import ranking_metrics_at_k  # noqa: E402
from recsys.evaluation.splits import random_split, time_split  # noqa: E402
from recsys.evaluation.topk import top_k_scores  # noqa: E402
from recsys.matrix import InteractionMatrix  # noqa: E402
from recsys.models.base import TrainData  # noqa: E402
from recsys.models.config import ModelConfig  # noqa: E402
from recsys.models.registry import make_model  # noqa: E402
from tests.harness import live_server  # noqa: E402

K = 10
TARGET = 1.03
GRID = list(itertools.product((16, 32, 64), (0.01, 0.1, 1.0), (1.0, 2.0, 5.0)))


def splits(events: pd.DataFrame) -> dict[str, object]:
    cutoff = events["timestamp"].quantile(0.9, interpolation="higher")
    return {"time": time_split(events, cutoff), "random": random_split(events, test_ratio=0.2, seed=42)}


class Scorer:
    def __init__(self, split) -> None:
        base = InteractionMatrix.from_events(split.train, weighting="none")
        self.train_events, self.user_ids, self.item_ids = split.train, base.user_ids, base.item_ids
        self.seen = base.matrix
        test = InteractionMatrix.from_events(
            split.test, user_ids=base.user_ids, item_ids=base.item_ids, weighting="none"
        ).matrix
        test.data = np.ones_like(test.data)
        self.test = test
        self.users = np.flatnonzero(np.diff(test.indptr) > 0)
        self.column = {item: j for j, item in enumerate(self.item_ids)}

    def metrics(self, top: np.ndarray) -> dict[str, float]:
        m = ranking_metrics_at_k(top, self.test, K, user_rows=self.users)
        return {"ndcg": float(m["ndcg"]), "precision": float(m["precision"])}

    def model(self, config: ModelConfig) -> dict[str, float]:
        matrix = config.matrix(self.train_events, self.user_ids, self.item_ids)
        model = make_model(config.kind, **config.params).fit(TrainData(matrix.matrix))
        top = top_k_scores(
            model.user_vectors_, model.item_vectors_, K, exclude=self.seen, user_rows=self.users, metric=model.metric
        )[0]
        return self.metrics(top)

    def served(self, base: str) -> dict[str, float]:
        top = np.full((len(self.users), K), -1, dtype=np.int64)
        with httpx.Client(base_url=base, timeout=30) as client:
            for row, u in enumerate(self.users):
                r = client.get(f"/users/{self.user_ids[u]}/recommendations", params={"k": K})
                r.raise_for_status()
                cols = [self.column.get(item["item_id"], -1) for item in r.json()["items"]][:K]
                top[row, : len(cols)] = cols
        return self.metrics(top)


def run_split(name: str, split, dataset: Dataset, args, work: Path) -> dict:
    scorer = Scorer(split)
    out: dict = {"users": len(scorer.users)}
    data_dir = work / name
    env = {**os.environ, "RECSYS_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1"}
    env.pop("RECSYS_DATABASE_URL", None)
    env.pop("RECSYS_MLFLOW_TRACKING_URI", None)
    from feature_store import FeatureStore
    from recsys.settings import Settings

    settings = Settings(data_dir=data_dir, database_url="")
    FeatureStore(settings.database_url).ingest(Dataset(events=split.train, items=dataset.items, users=dataset.users))
    cmd = [sys.executable, "-m", "cli.main", "train"]
    if args.budget:
        cmd += ["--budget", args.budget]
    if args.trials:
        cmd += ["--trials", str(args.trials)]
    print(f"[{name}] {' '.join(cmd[2:])} (load {os.getloadavg()[0]:.1f})", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    out["train_s"] = time.perf_counter() - start
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:])
        raise SystemExit(f"[{name}] recsys train failed ({proc.returncode})")
    lines = [line for line in proc.stdout.splitlines() if line.startswith(("search:", "validation", "  "))]
    out["cli"] = lines
    print("\n".join(f"[{name}]   {line}" for line in lines), flush=True)
    with live_server(env, log_path=work / f"{name}-server.log") as base:
        out["served"] = scorer.served(base)
        hits = httpx.get(f"{base}/search", params={"q": "star wars", "k": 5}, timeout=30).json()["items"]
        out["search"] = [h["title"] for h in hits]
    out["popular"] = scorer.model(ModelConfig(kind="popular", params={}, weighting="none"))
    out["als_default"] = scorer.model(ModelConfig())
    best = None
    for factors, reg, alpha in GRID:
        m = scorer.model(
            ModelConfig(
                kind="als",
                params={"factors": factors, "regularization": reg, "iterations": 15},
                weighting="confidence",
                alpha=alpha,
            )
        )
        if best is None or m["ndcg"] > best[0]["ndcg"]:
            best = (m, f"factors={factors} reg={reg:g} alpha={alpha:g}")
    out["als_grid"], out["als_grid_params"] = best
    print(
        f"[{name}] served {out['served']}, popular {out['popular']}, ALS defaults {out['als_default']}, "
        f"ALS grid best on test {out['als_grid']} ({out['als_grid_params']}); search 'star wars': {out['search']}",
        flush=True,
    )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "ml-100k")
    parser.add_argument("--budget", default=None, help="passed to recsys train --budget (default: its own)")
    parser.add_argument("--trials", type=int, default=None, help="passed to recsys train --trials (default: its own)")
    parser.add_argument("--only", choices=["time", "random"], default=None)
    args = parser.parse_args()
    if not args.data.exists():
        args.data = Path("/work/shared/datasets/ml-100k")
    dataset = load_dataset("movielens-100k", args.data)
    print(
        f"MovieLens 100K: {len(dataset.events):,} ratings, {os.cpu_count()} cores, load {os.getloadavg()}", flush=True
    )
    results = {}
    with tempfile.TemporaryDirectory(prefix="autotune-ml100k-") as tmp:
        for name, split in splits(dataset.events).items():
            if args.only and name != args.only:
                continue
            results[name] = run_split(name, split, dataset, args, Path(tmp))
    ok = True
    print(f"\n{'split':8} {'model':36} {'nDCG@10':>8} {'P@10':>8}")
    for name, r in results.items():
        rows = [
            ("out-of-box (recsys train, HTTP)", r["served"]),
            ("popularity", r["popular"]),
            ("ALS defaults", r["als_default"]),
            (f"ALS grid best on test ({r['als_grid_params']})", r["als_grid"]),
        ]
        for label, m in rows:
            print(f"{name:8} {label:36} {m['ndcg']:8.4f} {m['precision']:8.4f}")
        ratio = r["served"]["ndcg"] / r["als_grid"]["ndcg"]
        star = any("star wars" in t.lower() for t in r["search"])
        print(
            f"{name:8} ratio out-of-box / ALS-grid-on-test: {ratio:.3f} (target ≥ {TARGET}); train wall time {r['train_s']:.0f}s "
            f"for {r['users']} test users; /search 'star wars' top 5: {r['search']}"
        )
        ok &= ratio >= TARGET and star
    print(f"load average at the end: {os.getloadavg()}")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
