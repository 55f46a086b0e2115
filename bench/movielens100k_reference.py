"""Our models on MovieLens 100K under Microsoft Recommenders' top-k protocol, beside their
published benchmark table.

Protocol (recommenders/examples/06_benchmarks/movielens.ipynb): ``python_stratified_split``
75/25 with seed 42 — run with ``filter_by="item"`` (what the notebook calls) and with
``filter_by="user"`` (what the README describes); every rating is relevant; items seen in train
are removed; top 10. Metrics with the Recommenders definitions
(``recsys.evaluation.metrics.recommenders_metrics``): "MAP" is ``map`` (normalized by the number
of relevant items — the function the README table was produced with, named ``map_at_k`` before
Recommenders 1.2), nDCG@10 / Precision@10 / Recall@10 are ``ndcg_at_k`` / ``precision_at_k`` /
``recall_at_k``. Our split uses numpy's Generator, theirs ``np.random.seed``: same method,
different random draw.

The tuned model is read from ``experiments/movielens100k_tuned.yaml``, written by
``recsys experiment search experiments/movielens100k.yaml`` (tuned on a validation split of the
train part, never on the test part). When that file holds an ``ensemble`` (EASE + ALS / LightFM
blended by per-user standardized scores), its member weights come from
:func:`choose_ensemble_weights` — also validation-only — and each member is reported alone too.
Exit 0 only when our best nDCG@10 beats the table's best (0.475077) and its P@10 beats 0.411771,
on both split variants.

    .venv/bin/python bench/movielens100k_reference.py [--data ../shared/datasets/ml-100k]
    .venv/bin/python bench/movielens100k_reference.py --choose-ensemble [--write]   # validation sweep
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from rich.console import Console
from rich.progress import track
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recsys.datasets import load_dataset  # noqa: E402
from recsys.evaluation import recommenders_metrics, stratified_split, top_k_scores  # noqa: E402
from recsys.features import build_item_features  # noqa: E402
from recsys.matrix import InteractionMatrix  # noqa: E402
from recsys.models.base import TrainData  # noqa: E402
from recsys.models.config import FeatureConfig, ModelConfig  # noqa: E402
from recsys.models.registry import make_model  # noqa: E402

#: Recommenders README, MovieLens 100K, top-k: (MAP, nDCG@10, Precision@10, Recall@10)
PUBLISHED = {
    "BiVAE": (0.146126, 0.475077, 0.411771, 0.219145),
    "BPR (Cornac)": (0.132478, 0.441997, 0.388229, 0.212522),
    "LightGCN": (0.088526, 0.419846, 0.379626, 0.144336),
    "NCF": (0.107720, 0.396118, 0.347296, 0.180775),
    "SAR": (0.110591, 0.382461, 0.330753, 0.176385),
    "SVD": (0.012873, 0.095930, 0.091198, 0.032783),
}
BEST_NDCG, BEST_PRECISION = 0.475077, 0.411771
K = 10


def Config(**kwargs) -> ModelConfig:  # noqa: N802
    """A ModelConfig with LightFM side features off unless given (this bench adds item features only)."""
    kwargs.setdefault("features", FeatureConfig(item_categories=False, user_attributes=False))
    return ModelConfig(**kwargs)


#: the other model kinds, with the best parameters of each kind among the search trials
#: (`recsys experiment search experiments/movielens100k.yaml --trials 60`, validation holdout)
OTHERS = [
    Config(
        kind="als",
        name="ALS (bm25, searched)",
        weighting="bm25",
        alpha=0.2950656389892234,
        params={"factors": 16, "regularization": 0.18180064955308312, "iterations": 25},
    ),
    Config(
        kind="bpr",
        name="BPR (implicit, searched)",
        params={
            "factors": 128,
            "learning_rate": 0.0056638441272678225,
            "regularization": 0.0030336987857336336,
            "iterations": 100,
        },
    ),
    # searched without side features; here with the genre (item) features added
    Config(
        kind="lightfm",
        name="LightFM WARP + item features",
        params={
            "no_components": 128,
            "loss": "warp",
            "learning_rate": 0.019423527460967538,
            "epochs": 40,
            "item_alpha": 1.1155435048867036e-05,
        },
        features=FeatureConfig(item_categories=True, user_attributes=False),
    ),
    Config(kind="itemknn", name="item-kNN (cosine, K=100)", params={"K": 100}, weighting="none"),
]


def tuned_configs(path: Path) -> list[ModelConfig]:
    """The tuned model of ``path`` (a ``recsys train`` config); for an ensemble, its members alone too."""
    raw = yaml.safe_load(path.read_text())
    m = raw["model"]
    weighting, alpha = raw.get("weighting", "confidence"), float(raw.get("alpha", 1.0))
    features = raw.get("features", {})
    if m["kind"] != "ensemble":
        return [
            Config(
                kind=m["kind"],
                name=f"{m['kind'].upper()} (tuned: {path.name})",
                params=m.get("params", {}),
                weighting=weighting,
                alpha=alpha,
            )
        ]
    members = m["params"]["members"]
    # LightFM members get the item features `recsys train` builds (identity + genres, no user features)
    items = any(x["kind"] == "lightfm" for x in members) and features.get("item_categories", True)
    if any(x["kind"] == "lightfm" for x in members) and features.get("user_attributes", True):
        raise ValueError(
            f"{path}: set features.user_attributes: false (the bench gives LightFM members item features only)"
        )
    name = " + ".join(f"{x['kind'].upper()}×{x['weight']:g}" for x in members)
    out = [
        Config(
            kind="ensemble",
            name=f"ensemble {name} (tuned: {path.name})",
            params=m["params"],
            weighting=weighting,
            alpha=alpha,
            features=FeatureConfig(item_categories=items, user_attributes=False),
        )
    ]
    for x in members:
        if x["kind"] == "lightfm":
            continue  # alone it is the "LightFM WARP + item features" row of OTHERS (same params, weighting, features)
        out.append(
            Config(
                kind=x["kind"],
                name=f"  member {x['kind'].upper()} alone ({weighting}, α={alpha:g})",
                params=x.get("params", {}),
                weighting=weighting,
                alpha=alpha,
                features=FeatureConfig(item_categories=items and x["kind"] == "lightfm", user_attributes=False),
            )
        )
    return out


#: candidate members for :func:`choose_ensemble_weights`: the tuned EASE and the searched ALS / LightFM
EASE_TUNED = {"l2": 698.006670030889, "dropout": 0.411380806635415}
CANDIDATES = {
    "ease": EASE_TUNED,
    "als": OTHERS[0].params,
    "lightfm": OTHERS[2].params,
}


def choose_ensemble_weights(
    dataset,
    spec_path: Path,
    weightings=(("confidence", 1.0), ("bm25", 0.2950656389892234)),
    grid=(0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0),
) -> dict:
    """Pick ensemble members and weights on the *validation* split only (the test part is never seen).

    Same protocol as ``recsys experiment search``: the spec's stratified split (filter_by="item",
    seed 42), then the same split again of its train part (``experiments.runner.validation_split``);
    members are fitted once on the validation-train part — under each candidate shared weighting,
    since an ensemble's members are fitted on one matrix — then weightings of EASE (weight 1) plus
    ALS and/or LightFM (weights from ``grid``) are scored with ``EnsembleEmbedder.from_fitted`` by
    nDCG@10 on the validation holdout (the search's metric). Returns the best ``recsys train`` config.
    """
    from experiments import runner
    from experiments.spec import load_spec
    from recsys.evaluation.holdout import top_k
    from recsys.models.ensemble import EnsembleEmbedder

    spec = load_spec(spec_path)
    split = runner.validation_split(spec, runner.make_split(dataset.events, spec.split, spec.split_seed))
    data = runner.prepare_data(spec, dataset, split)

    def score(model) -> float:
        rec = top_k(model, data.holdout, K)
        return runner.evaluate(rec, data, [K], ["ndcg", "precision"])[f"ndcg_at_{K}"]

    best = None
    for weighting, alpha in weightings:
        train = data.train_matrix(weighting, alpha)
        fitted = {}
        for kind, params in CANDIDATES.items():
            model = make_model(kind, **params)
            model.fit(TrainData(train, item_features=data.features("items")))
            fitted[kind] = model
            print(f"  {weighting:>10} α={alpha:<6.3g} {kind:>8} alone: nDCG@10 {score(model):.6f}", flush=True)
        for w_als in grid:
            for w_lfm in grid:
                kinds, weights = ["ease"], [1.0]
                for kind, w in (("als", w_als), ("lightfm", w_lfm)):
                    if w > 0:
                        kinds.append(kind)
                        weights.append(w)
                if len(kinds) == 1:
                    continue
                ndcg = score(EnsembleEmbedder.from_fitted([fitted[k] for k in kinds], weights))
                print(
                    f"  {weighting:>10} α={alpha:<6.3g} ease×1 als×{w_als:g} lightfm×{w_lfm:g}: nDCG@10 {ndcg:.6f}",
                    flush=True,
                )
                if best is None or ndcg > best[0]:
                    best = (ndcg, weighting, alpha, list(zip(kinds, weights)))
    ndcg, weighting, alpha, members = best
    config = {
        "model": {
            "kind": "ensemble",
            "params": {"members": [{"kind": k, "params": dict(CANDIDATES[k]), "weight": float(w)} for k, w in members]},
        },
        "weighting": weighting,
        "alpha": float(alpha),
        "features": {"item_categories": True, "item_text": False, "user_attributes": False, "identity": True},
        "seed": 42,
    }
    return {"ndcg": ndcg, "config": config}


def evaluate(config: ModelConfig, dataset, split) -> dict[str, float]:
    base = InteractionMatrix.from_events(split.train, weighting="none")
    train = InteractionMatrix.from_events(
        split.train, user_ids=base.user_ids, item_ids=base.item_ids, weighting=config.weighting, alpha=config.alpha
    ).matrix
    test = InteractionMatrix.from_events(
        split.test, user_ids=base.user_ids, item_ids=base.item_ids, weighting="none"
    ).matrix
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    model = make_model(config.kind, **config.params)
    start = time.perf_counter()
    features = build_item_features(dataset.items, base.item_ids)[0] if config.features.item_categories else None
    model.fit(TrainData(train, item_features=features))
    fit_s = time.perf_counter() - start
    if getattr(model, "user_vectors_", None) is not None:
        rec = top_k_scores(
            model.user_vectors_, model.item_vectors_, K, exclude=base.matrix, user_rows=users, metric=model.metric
        )[0]
    else:
        rec = model.recommend(users, base.matrix, K)[0]
    m = recommenders_metrics(rec, test, K, user_rows=users)
    return {
        "map": m["map"],
        "ndcg": m["ndcg_at_k"],
        "precision": m["precision_at_k"],
        "recall": m["recall_at_k"],
        "map_at_k": m["map_at_k"],
        "users": m["n_users"],
        "fit_s": fit_s,
    }


def write_ensemble(dataset, args) -> int:
    from pipelines.train import TrainConfig

    chosen = choose_ensemble_weights(dataset, args.spec)
    TrainConfig.model_validate(chosen["config"])  # ready for `recsys train --config`
    text = (
        f"# Ensemble chosen by bench/movielens100k_reference.py --choose-ensemble (choose_ensemble_weights):\n"
        f"# ndcg@10 = {chosen['ndcg']:.6f} on the validation holdout of a stratified split (seed 42) of the train part;\n"
        f"# members: EASE from `recsys experiment search` run 58e50a4b6c984a8ea3b1bffacc8c5bdb (validation ndcg@10 0.267918),\n"
        f"# ALS / LightFM from the same search's trials; weights swept with EnsembleEmbedder.from_fitted.\n"
        f"# Train it with: recsys train --config <this file>\n"
    ) + yaml.safe_dump(chosen["config"], sort_keys=False)
    print(text)
    if args.write:
        args.tuned.write_text(text)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "datasets" / "ml-100k")
    parser.add_argument("--tuned", type=Path, default=REPO / "experiments" / "movielens100k_tuned.yaml")
    parser.add_argument("--spec", type=Path, default=REPO / "experiments" / "movielens100k.yaml")
    parser.add_argument(
        "--choose-ensemble",
        action="store_true",
        help="sweep ensemble members/weights on the validation split (never the test split) and print the config",
    )
    parser.add_argument(
        "--write", action="store_true", help="with --choose-ensemble: write the chosen config to --tuned"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    console = Console(width=None if sys.stdout.isatty() else 150)
    if not args.data.exists():
        console.print(f"error: MovieLens 100K not found at {args.data}")
        return 2
    dataset = load_dataset("movielens-100k", args.data)
    if args.choose_ensemble:
        return write_ensemble(dataset, args)
    configs = tuned_configs(args.tuned) + OTHERS
    console.print(
        "Definitions: Microsoft Recommenders python_evaluation (relevancy_method='top_k', binary relevance): "
        "MAP = `map` (sum of precisions at hits / |relevant|; the README table's MAP), nDCG@10 = `ndcg_at_k` "
        "(loge discount, mean over all test users), P@10 = `precision_at_k` (hits / k), R@10 = `recall_at_k`. "
        "Column 'MAP@k' is the current `map_at_k` (normalized by min(k, |relevant|)), for reference."
    )
    ok = True
    ratios = {}
    for filter_by in ("item", "user"):
        split = stratified_split(dataset.events, ratio=0.75, seed=42, filter_by=filter_by)
        table = Table(
            title=f"MovieLens 100K, stratified 75/25 seed 42, filter_by={filter_by!r} "
            f"({split.report['n_train']:,} train / {split.report['n_test']:,} test ratings, "
            f"{split.report['dropped_test_events']} test ratings dropped: user/item unseen in train)"
        )
        for col in ("model", "MAP", "nDCG@10", "P@10", "R@10", "MAP@k", "users", "fit s"):
            table.add_column(col, justify="left" if col == "model" else "right")
        for name, (m, n, p, r) in PUBLISHED.items():
            table.add_row(
                f"[dim]{name} (published)[/]", f"{m:.6f}", f"{n:.6f}", f"{p:.6f}", f"{r:.6f}", "", "", "", style="dim"
            )
        ours = {}
        for config in track(
            configs, description=f"filter_by={filter_by}", console=Console(stderr=True), transient=True
        ):
            res = evaluate(config, dataset, split)
            ours[config.label] = res
        best_label = max(ours, key=lambda k: ours[k]["ndcg"])
        for label, res in ours.items():
            beats = all(
                res[key] > max(row[i] for row in PUBLISHED.values())
                for i, key in enumerate(("map", "ndcg", "precision", "recall"))
            )
            style = "bold green" if label == best_label else None
            table.add_row(
                label + (" ✓ beats every row" if beats else ""),
                f"{res['map']:.6f}",
                f"{res['ndcg']:.6f}",
                f"{res['precision']:.6f}",
                f"{res['recall']:.6f}",
                f"{res['map_at_k']:.6f}",
                f"{res['users']}",
                f"{res['fit_s']:.1f}",
                style=style,
            )
        console.print(table)
        best = ours[best_label]
        ratio = best["ndcg"] / BEST_NDCG
        ratios[filter_by] = ratio
        console.print(
            f"filter_by={filter_by}: our best nDCG@10 {best['ndcg']:.6f} ({best_label}) / table best {BEST_NDCG} "
            f"(BiVAE) = [bold]{ratio:.4f}[/]; P@10 {best['precision']:.6f} vs {BEST_PRECISION}"
        )
        ok &= best["ndcg"] > BEST_NDCG and best["precision"] > BEST_PRECISION
    console.print(
        f"ratio of our best nDCG@10 to 0.475077: item split {ratios['item']:.4f}, user split {ratios['user']:.4f} → "
        + ("[bold green]PASS[/]" if ok else "[bold red]FAIL[/]")
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
