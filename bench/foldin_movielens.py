"""Fresh events on MovieLens 100K: does serving's fold-in make a user's answer better?

Two protocols (``--protocol``):

- ``per-user`` (default; the protocol of issue 19): per user by time, the last 20% of their
  ratings are the test; of the rest, their newest ``--fresh-per-user`` (5) ratings are the
  *fresh* events (they reach serving after training), the older ones train. Every user is a
  returning user (MovieLens users have 20+ ratings), so all of them are scored.
- ``global``: time cutoffs ``--cutoffs 0.7 0.85``: events before the 70% time quantile train,
  those up to the 85% quantile are fresh, later ones are the test. Users scored: those with
  trained history, fresh events and test items (returning users), plus users whose first
  events are fresh (new users). MovieLens users are active in bursts: few users span the
  cutoffs (51 returning users at 0.7 / 0.85), and the retrain also learns how the catalog's
  items moved in the fresh period, which no fold-in of one user can know.

Each user is asked through ``Recommender.recommend_for_user`` exactly as the API asks it:

- **before**: their history up to the first cutoff, trained vector;
- **after**: their history including the fresh events with each event's value (the rating, as
  the API's history carries it), ``refresh=True`` (the API's fresh-user path: the trained
  model's own fold-in, recsys.models.foldin), measured both ways a returning user can be
  folded in — ``delta`` (trained vector + what the fresh events change) and ``afresh`` (the
  fold-in of the whole history); *after* is the kind's ``returning_fold_in``;
- **retrained**: the same model fitted in process on the train and fresh events (same events,
  same weighting and alpha as the first fit).

nDCG@10 on the test items not already in the history (``--users N`` scores a seeded sample).
Exit 0 only when, for every kind, after ≥ before and after ≥ 0.95 × retrained (returning
users). Data: ../shared/datasets/ml-100k.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from pipelines.train import TrainConfig, build_bundle, fit_content, fit_model  # noqa: E402
from recsys.bundle import ModelBundle  # noqa: E402
from recsys.datasets import load_movielens_100k  # noqa: E402
from recsys.datasets.base import Dataset  # noqa: E402
from recsys.matrix import InteractionMatrix  # noqa: E402
from recsys.models.base import RETURNING_FOLD_INS  # noqa: E402
from recsys.recommender import Recommender  # noqa: E402

DATA = ROOT.parent / "shared" / "datasets" / "ml-100k"
K = 10
LIGHTFM = {"no_components": 64, "loss": "warp", "epochs": 30}
KINDS: dict[str, dict] = {
    "als": {"model": {"kind": "als", "params": {"factors": 64, "regularization": 5.0, "iterations": 15}}},
    "bpr": {"model": {"kind": "bpr", "params": {"factors": 64, "learning_rate": 0.05, "iterations": 200}}},
    "lightfm (features)": {"model": {"kind": "lightfm", "params": LIGHTFM}},
    "ease": {"model": {"kind": "ease", "params": {"l2": 500.0}}},
    "itemknn": {"model": {"kind": "itemknn", "params": {"K": 100}}},
    "item2vec": {"model": {"kind": "item2vec", "params": {}}},
    "ensemble(lightfm + itemknn)": {
        "model": {
            "kind": "ensemble",
            "params": {
                "members": [
                    {"kind": "lightfm", "params": LIGHTFM, "weight": 1.0},
                    {"kind": "itemknn", "params": {"K": 100}, "weight": 0.25},
                ]
            },
        }
    },
    "hybrid (als + tfidf)": {
        "model": {"kind": "als", "params": {"factors": 64, "regularization": 5.0, "iterations": 15}},
        "content": {"kind": "tfidf"},
    },
}


def ndcg(ranked: list[str], relevant: set[str]) -> float:
    gains = [1.0 / np.log2(i + 2) for i, it in enumerate(ranked[:K]) if it in relevant]
    ideal = sum(1.0 / np.log2(i + 2) for i in range(min(len(relevant), K)))
    return float(sum(gains) / ideal) if ideal else 0.0


def fit_bundle(config: TrainConfig, dataset: Dataset, events: pd.DataFrame) -> ModelBundle:
    """Fit and bundle like ``recsys train`` does (served in process by the caller)."""
    matrix = InteractionMatrix.from_events(events, weighting=config.weighting, alpha=config.alpha)
    data = Dataset(events=events, items=dataset.items, users=dataset.users)
    model = fit_model(config.model, matrix, data, events)
    encoder = fit_content(config, data, matrix.item_ids) if config.content is not None else None
    return build_bundle(config, model, matrix, {}, data, encoder)


def split(
    events: pd.DataFrame, protocol: str, cutoffs: tuple[float, float], fresh_per_user: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(train, fresh, test) events of ``events`` (sorted by time) under the protocol."""
    if protocol == "global":
        t1, t2 = events["timestamp"].quantile(list(cutoffs))
        before, after = events["timestamp"] < t1, events["timestamp"] >= t2
        return events[before], events[~before & ~after], events[after]
    rank = events.groupby("user_id").cumcount()  # 0 = the user's oldest rating
    n = events.groupby("user_id")["item_id"].transform("size")
    n_test = np.ceil(0.2 * n).astype(int)
    is_test = rank >= n - n_test
    is_fresh = ~is_test & (rank >= n - n_test - fresh_per_user)
    return events[~is_test & ~is_fresh], events[is_fresh], events[is_test]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="*", default=list(KINDS), help="subset of: " + ", ".join(KINDS))
    parser.add_argument("--protocol", choices=("per-user", "global"), default="per-user")
    parser.add_argument(
        "--cutoffs", nargs=2, type=float, default=(0.7, 0.85), help="global: time quantiles train | fresh | test"
    )
    parser.add_argument("--fresh-per-user", type=int, default=5, help="per-user: fresh ratings per user")
    parser.add_argument("--users", type=int, default=0, help="score a seeded sample of this many users (0: all)")
    args = parser.parse_args()
    console = Console(width=200)
    if not DATA.exists():
        console.print(f"skipped: {DATA} is absent")
        return 0
    dataset = load_movielens_100k(DATA)
    events = dataset.events.sort_values("timestamp", kind="stable")
    train, fresh, test = split(events, args.protocol, args.cutoffs, args.fresh_per_user)
    # each user's history in time order: trained events, then fresh ones
    upto2 = pd.concat([train, fresh]).sort_values("timestamp", kind="stable")
    hist_before = train.groupby("user_id")["item_id"].agg(list).to_dict()
    hist_after = upto2.groupby("user_id")["item_id"].agg(list).to_dict()
    values_after = upto2.groupby("user_id")["value"].agg(list).to_dict()
    fresh_users = set(fresh["user_id"])
    test_items = test.groupby("user_id")["item_id"].agg(set).to_dict()
    users = sorted(u for u in fresh_users if u in test_items and test_items[u] - set(hist_after[u]))
    if args.users and len(users) > args.users:
        users = sorted(np.random.default_rng(0).choice(users, args.users, replace=False).tolist())
    returning = [u for u in users if u in hist_before]
    console.print(
        f"protocol {args.protocol}: {len(train)} train / {len(fresh)} fresh / {len(test)} test events; "
        f"{len(returning)} returning and {len(users) - len(returning)} new users scored"
    )
    table = Table(title=f"fold-in on MovieLens 100K, nDCG@{K} (returning users | all scored users)")
    columns = ("kind", "before", "after delta", "after afresh", "retrained", "served", "after/before")
    for col in (*columns, "after/retrained", "fold-in ms", "result"):
        table.add_column(col, justify="left" if col == "kind" else "right")
    failed = []
    for name in args.kinds:
        config = TrainConfig.model_validate({**KINDS[name], "index": {"kind": "exact"}})
        t0 = time.perf_counter()
        bundle = fit_bundle(config, dataset, train)
        served = {how: Recommender(bundle, dataset.items, returning_fold_in=how) for how in RETURNING_FOLD_INS}
        retrained = Recommender(fit_bundle(config, dataset, upto2), dataset.items)
        chosen = served["delta"].fold_in_model.returning_fold_in
        scores: dict[str, list[tuple[bool, float]]] = {k: [] for k in ("before", *RETURNING_FOLD_INS, "retrained")}
        fold_ms = []
        for u in users:
            relevant = test_items[u] - set(hist_after[u])
            answers = {"before": served["delta"].recommend_for_user(u, hist_before.get(u, []), K)}
            for how, rec in served.items():
                t = time.perf_counter()
                answers[how] = rec.recommend_for_user(u, hist_after[u], K, refresh=True, values=values_after[u])
                fold_ms.append((time.perf_counter() - t) * 1e3)
            answers["retrained"] = retrained.recommend_for_user(u, hist_after[u], K, values=values_after[u])
            for key, res in answers.items():
                scores[key].append((u in hist_before, ndcg([s.item_id for s in res.items], relevant)))
        means = {k: (np.mean([s for ret, s in v if ret]), np.mean([s for _, s in v])) for k, v in scores.items()}
        before, after, re = means["before"][0], means[chosen][0], means["retrained"][0]
        ok = after >= before and after >= 0.95 * re
        if not ok:
            failed.append(name)
        table.add_row(
            name,
            *(f"{means[k][0]:.4f} | {means[k][1]:.4f}" for k in ("before", *RETURNING_FOLD_INS, "retrained")),
            chosen,
            f"{after / max(before, 1e-12):.3f}",
            f"{after / max(re, 1e-12):.3f}",
            f"{np.median(fold_ms):.2f}",
            "PASS" if ok else "FAIL",
        )
        console.print(f"{name}: {time.perf_counter() - t0:.0f}s")
    console.print(table)
    console.print("targets (returning users): after ≥ before and after ≥ 0.95 × retrained, every kind")
    if failed:
        console.print(f"FAIL: {', '.join(failed)}")
        return 1
    console.print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
