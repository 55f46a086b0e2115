"""Hybrid vs single models on MovieLens 100K, plus a cold-start item experiment.

Table 1 — warm users and items: one per-user random 80/20 split (seed 42); precision@10 and
nDCG@10 (binary relevance: every held-out rating; seen items excluded) for ALS, BPR, LightFM
without features, LightFM with features (genres; age/gender/occupation), content only
(TF-IDF of title + genres + year) and hybrid: a collaborative ensemble of ALS and LightFM with
features (per-user standardized scores, served as one dot space: recsys.models.ensemble) blended
with the content score. The hybrid's weights and fusion are chosen on a validation split carved
out of the training part, never on the test part.

Table 2 — cold-start items: 10% of items held out entirely from training; for users who rated
them, their held-out items are ranked among all cold items. recall@10 for random, popularity
(no training signal exists for cold items, so this is an arbitrary fixed order), content
(user profile vs item content), CF-from-content (ridge mapping) and hybrid.

Exit 0 only when the hybrid beats the best single model on nDCG@10 and content and hybrid
beat popularity (and random) on cold-start recall@10. Data: ../shared/datasets/ml-100k.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np
from rich.console import Console
from rich.table import Table

from pipelines.train import FeatureConfig, ModelConfig, TrainConfig, fit_model
from recsys.datasets import load_movielens_100k
from recsys.evaluation.metrics import ranking_metrics_at_k
from recsys.evaluation.splits import random_split
from recsys.evaluation.topk import top_k_scores
from recsys.hybrid import content_profiles, hybrid_top_k
from recsys.matrix import InteractionMatrix
from recsys.models.base import TrainData
from recsys.models.coldstart import ContentToCFMapper
from recsys.models.content import TfidfEncoder
from recsys.models.ensemble import EnsembleEmbedder

DATA = ROOT.parent / "shared" / "datasets" / "ml-100k"
K = 10
SEED = 42
ALPHA = 1.0  # confidence 1 + α·rating

MODELS = {
    "ALS": ModelConfig(kind="als", params={"factors": 32, "regularization": 5.0, "iterations": 20}),
    "BPR": ModelConfig(
        kind="bpr", params={"factors": 64, "learning_rate": 0.05, "regularization": 0.01, "iterations": 200}
    ),
    "LightFM (no features)": ModelConfig(
        kind="lightfm",
        params={
            "no_components": 64,
            "loss": "warp",
            "epochs": 40,
            "use_item_features": False,
            "use_user_features": False,
        },
    ),
    "LightFM (features)": ModelConfig(
        kind="lightfm",
        params={
            "no_components": 64,
            "loss": "warp",
            "epochs": 40,
            "use_item_features": True,
            "use_user_features": True,
        },
    ),
}
# (fusion, ALS weight inside the collaborative ensemble, content weight)
BLEND_GRID = [(f, a, c) for f in ("weighted", "rrf") for a in (0.3, 0.5, 0.7) for c in (0.0, 0.05, 0.1, 0.2)]
ENSEMBLE = ("ALS", "LightFM (features)")


def matrices(train_events, test_events, full):
    train = InteractionMatrix.from_events(train_events, user_ids=full.user_ids, item_ids=full.item_ids, alpha=ALPHA)
    test = InteractionMatrix.from_events(test_events, user_ids=full.user_ids, item_ids=full.item_ids, weighting="none")
    return train, test


def score(recommended, test, users):
    m = ranking_metrics_at_k(recommended, test.matrix, K, user_rows=users)
    return m["precision"], m["ndcg"], m["recall"]


def fit(name, train, dataset):
    config = TrainConfig(model=MODELS[name], alpha=ALPHA, features=FeatureConfig(identity=True))
    return fit_model(config.model, train, dataset)


def warm_experiment(dataset, console):
    full = InteractionMatrix.from_events(dataset.events, alpha=ALPHA)
    split = random_split(dataset.events, test_ratio=0.2, seed=SEED)
    train, test = matrices(split.train, split.test, full)
    # Validation split inside the training part, for choosing the hybrid blend.
    inner = random_split(split.train, test_ratio=0.2, seed=SEED + 1)
    vtrain, vtest = matrices(inner.train, inner.test, full)
    users = np.flatnonzero(np.diff(test.matrix.indptr) > 0)
    vusers = np.flatnonzero(np.diff(vtest.matrix.indptr) > 0)
    encoder = TfidfEncoder(n_components=64).fit(TrainData.catalog_only(dataset.items, full.item_ids))
    C = encoder.item_vectors_

    rows, fitted, val_ndcg = [], {}, {}
    for name in MODELS:
        t = time.perf_counter()
        model = fit(name, train, dataset)
        rec, _ = top_k_scores(
            model.user_vectors_,
            model.item_vectors_,
            K,
            exclude=train.matrix[users],
            user_rows=users,
            metric=model.metric,
        )
        p, n, _ = score(rec, test, users)
        rows.append((name, p, n, time.perf_counter() - t))
        fitted[name] = model
    profiles = content_profiles(train.matrix[users], C)
    rec, _ = top_k_scores(profiles, C, K, exclude=train.matrix[users], metric="cosine")
    p, n, _ = score(rec, test, users)
    rows.append(("Content only (TF-IDF)", p, n, 0.0))

    # The hybrid: a collaborative ensemble (ALS + LightFM with genre/demographic features,
    # served as one dot space) blended with the content encoder. Its weights and fusion are
    # chosen on the validation split only.
    vmodels = [fit(name, vtrain, dataset) for name in ENSEMBLE]
    vprof = content_profiles(vtrain.matrix[vusers], C)
    for fusion, a, c in BLEND_GRID:
        ens = EnsembleEmbedder.from_fitted(vmodels, [a, 1 - a])
        rec = hybrid_top_k(
            ens.user_vectors_[vusers],
            ens.item_vectors_,
            vprof,
            C,
            K,
            exclude=vtrain.matrix[vusers],
            metric="dot",
            weights=(1 - c, c),
            fusion=fusion,
        )
        val_ndcg[(fusion, a, c)] = score(rec, vtest, vusers)[1]
    best_blend = max(val_ndcg, key=val_ndcg.get)
    best_val = val_ndcg[best_blend]
    for fusion in ("weighted", "rrf"):
        _, a, c = max((b for b in BLEND_GRID if b[0] == fusion), key=lambda b: val_ndcg[b])
        ens = EnsembleEmbedder.from_fitted([fitted[name] for name in ENSEMBLE], [a, 1 - a])
        rec = hybrid_top_k(
            ens.user_vectors_[users],
            ens.item_vectors_,
            profiles,
            C,
            K,
            exclude=train.matrix[users],
            metric="dot",
            weights=(1 - c, c),
            fusion=fusion,
        )
        p, n, _ = score(rec, test, users)
        rows.append((f"Hybrid: ALS {a:.1f} + LightFM(features) {1 - a:.1f}, content {c} ({fusion})", p, n, 0.0))

    table = Table(title=f"MovieLens 100K — per-user random 80/20 split, seed {SEED}, {len(users)} test users")
    for col in ("model", "precision@10", "nDCG@10", "fit s"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, p, n, s in rows:
        table.add_row(name, f"{p:.4f}", f"{n:.4f}", f"{s:.1f}" if s else "")
    console.print(table)
    for fusion in ("weighted", "rrf"):
        with_content = {b: v for b, v in val_ndcg.items() if b[0] == fusion and b[2] > 0}
        b = max(with_content, key=with_content.get)
        console.print(
            f"validation, {fusion} with a non-zero content weight: best nDCG@10 {with_content[b]:.4f} "
            f"(ALS {b[1]}, content {b[2]})"
        )
    console.print(
        f"blend chosen on validation: fusion={best_blend[0]}, ALS weight {best_blend[1]}, content weight {best_blend[2]} "
        f"(val nDCG@10 {best_val:.4f})"
    )
    singles = [r for r in rows if not r[0].startswith("Hybrid")]
    best_single = max(singles, key=lambda r: r[2])
    chosen = next(r for r in rows if r[0].startswith("Hybrid") and r[0].endswith(f"({best_blend[0]})"))
    return best_single, chosen


def cold_experiment(dataset, console):
    rng = np.random.default_rng(SEED)
    items = np.sort(dataset.events["item_id"].unique())
    cold_items = set(rng.choice(items, size=len(items) // 10, replace=False).tolist())
    is_cold = dataset.events["item_id"].isin(cold_items)
    train_events, cold_events = dataset.events[~is_cold], dataset.events[is_cold]
    cold_events = cold_events[cold_events["user_id"].isin(set(train_events["user_id"]))]
    train = InteractionMatrix.from_events(train_events, alpha=ALPHA)
    cold_ids = np.sort(np.array(list(cold_items), dtype=object))
    test = InteractionMatrix.from_events(cold_events, user_ids=train.user_ids, item_ids=cold_ids, weighting="none")
    users = np.flatnonzero(np.diff(test.matrix.indptr) > 0)

    encoder = TfidfEncoder(n_components=64).fit(
        TrainData.catalog_only(dataset.items, np.concatenate([train.item_ids, cold_ids]))
    )
    warm_c, cold_c = encoder.item_vectors_[: len(train.item_ids)], encoder.item_vectors_[len(train.item_ids) :]
    model = fit("ALS", train, dataset)
    cold_cf = ContentToCFMapper(alpha=1.0).fit(warm_c, model.item_vectors_).predict(cold_c)
    profiles = content_profiles(train.matrix[users], warm_c)

    def recall(recommended):
        return ranking_metrics_at_k(recommended, test.matrix, K, user_rows=users)["recall"]

    n_cold = len(cold_ids)
    results = {
        "random": recall(np.stack([rng.permutation(n_cold)[:K] for _ in users])),
        "popularity (no signal: fixed order)": recall(np.tile(np.arange(K), (len(users), 1))),
        "content (profile · TF-IDF)": recall(top_k_scores(profiles, cold_c, K, metric="cosine")[0]),
        "CF from content (ridge → ALS space)": recall(
            top_k_scores(model.user_vectors_[users], cold_cf, K, metric="dot")[0]
        ),
        "hybrid (weighted, 0.5/0.5)": recall(
            hybrid_top_k(model.user_vectors_[users], cold_cf, profiles, cold_c, K, metric="dot", weights=(0.5, 0.5))
        ),
    }
    table = Table(
        title=f"Cold-start items: {n_cold} items held out of training, {len(users)} users, ranked among cold items"
    )
    table.add_column("method")
    table.add_column("recall@10", justify="right")
    for name, value in results.items():
        table.add_row(name, f"{value:.4f}")
    console.print(table)
    return results


def main() -> int:
    console = Console()
    if not (DATA / "u.data").exists():
        print(f"MovieLens 100K not found at {DATA}: FAIL")
        return 1
    dataset = load_movielens_100k(DATA)
    best_single, hybrid = warm_experiment(dataset, console)
    cold = cold_experiment(dataset, console)
    baseline = max(cold["random"], cold["popularity (no signal: fixed order)"])
    cold_ok = cold["content (profile · TF-IDF)"] > baseline and cold["hybrid (weighted, 0.5/0.5)"] > baseline
    warm_ok = hybrid[2] > best_single[2]
    ok = warm_ok and cold_ok
    print(
        f"hybrid nDCG@10 {hybrid[2]:.4f} vs best single {best_single[0]} {best_single[2]:.4f} "
        f"(ratio {hybrid[2] / best_single[2]:.3f}); cold-start recall@10 content {cold['content (profile · TF-IDF)']:.4f}, "
        f"hybrid {cold['hybrid (weighted, 0.5/0.5)']:.4f} vs popularity/random {baseline:.4f}: {'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
