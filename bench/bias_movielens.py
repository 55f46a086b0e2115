"""Bias and its mitigation on MovieLens 100K: one fixed model, with popularity calibration, and
with the linear debiasing projection — each measured on the same holdout.

Protocol: per-user random 80/20 split (seed 42), every rating relevant, train items never
recommended, nDCG@10 over every test user (943). The model is the search's first ALS starting
point (confidence weighting, alpha 2, 32 factors, regularization 1, 15 iterations) unless
``--config`` names a training YAML (its ``model:`` is used). Columns: nDCG@10, catalogue
coverage, exposure-Gini amplification (exposure Gini − data Gini), the worst/best nDCG gap over
gender and over age bands (bootstrap 95% interval), and the gender leakage AUC of the user
vectors (5-fold logistic regression).

Targets (exit 0 only when both hold): calibration cuts amplification by ≥ 30% for ≤ 5% nDCG@10
lost; the projection brings gender leakage AUC ≤ 0.55 for ≤ 3% nDCG@10 lost. ``--strength``
sets the calibration strength (default 0.7); ``--sweep`` also prints the trade-off curve.

    python bench/bias_movielens.py [--data ../shared/datasets/ml-100k] [--config YAML] [--strength S] [--sweep]

The data set is read from its folder, never copied (see its SOURCE.md for the terms).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from pipelines.train import fit_model  # noqa: E402
from recsys.datasets import load_dataset  # noqa: E402
from recsys.evaluation.bias import user_attribute_labels  # noqa: E402
from recsys.evaluation.mitigation import BiasSettings, DebiasSettings, assess  # noqa: E402
from recsys.evaluation.splits import random_split  # noqa: E402
from recsys.matrix import InteractionMatrix  # noqa: E402
from recsys.models.config import ModelConfig  # noqa: E402

K = 10
DEFAULT_MODEL = ModelConfig(
    kind="als",
    params={"factors": 32, "regularization": 1.0, "iterations": 15},
    weighting="confidence",
    alpha=2.0,
    name="als (search start)",
)
CAL_CUT, CAL_LOSS = 0.30, 0.05
DEB_AUC, DEB_LOSS = 0.55, 0.03


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "ml-100k"))
    ap.add_argument("--config", help="training YAML whose model: is measured")
    ap.add_argument("--strength", type=float, default=0.7)
    ap.add_argument("--sweep", action="store_true")
    args = ap.parse_args()
    if not Path(args.data).is_dir() and Path("/work/shared/datasets/ml-100k").is_dir():
        args.data = "/work/shared/datasets/ml-100k"
    if not Path(args.data).is_dir():
        print(f"error: MovieLens 100K not found at {args.data}", file=sys.stderr)
        return 2
    config = DEFAULT_MODEL
    if args.config:
        config = ModelConfig.model_validate((yaml.safe_load(Path(args.config).read_text()) or {})["model"])
    ds = load_dataset("movielens-100k", args.data)
    split = random_split(ds.events[["user_id", "item_id", "value"]], test_ratio=0.2, seed=42)
    ids = InteractionMatrix.from_events(ds.events, weighting="none")
    train = config.matrix(split.train, ids.user_ids, ids.item_ids)
    test = InteractionMatrix.from_events(split.test, user_ids=ids.user_ids, item_ids=ids.item_ids, weighting="none")
    t0 = time.perf_counter()
    model = fit_model(config, train, ds, events=split.train)
    fit_s = time.perf_counter() - t0
    users = np.flatnonzero(np.diff(test.matrix.indptr) > 0)
    labels = user_attribute_labels(ds.users, ids.user_ids)
    settings = BiasSettings(seed=42, calibration=args.strength, debias=DebiasSettings(attributes=["gender"]))
    t0 = time.perf_counter()
    result = assess(
        model.user_vectors_,
        model.item_vectors_,
        model.metric,
        train.matrix,
        test.matrix,
        users,
        K,
        labels,
        settings,
        model_kind=config.kind,
        regularization=config.params.get("regularization"),
    )
    assess_s = time.perf_counter() - t0
    base = result.report
    cal = next(m for m in result.mitigations if m.name == "calibration")
    deb = next(m for m in result.mitigations if m.name == "debias")

    def gap(report, attribute):
        g = report.group(attribute)
        return f"{g.gap:.4f} [{g.gap_ci_low:.3f}, {g.gap_ci_high:.3f}]"

    cal_report, deb_report = result.after["calibration"], result.after["debias"]
    rows = [
        ("model", base.ndcg, base.coverage, base.amplification, gap(base, "gender"), gap(base, "age_band"),
         base.leakage_of("gender").auc),
        (f"+ calibration {args.strength:g}", cal.ndcg_after, cal.coverage_after, cal.amplification_after,
         gap(cal_report, "gender"), gap(cal_report, "age_band"), base.leakage_of("gender").auc),
        (f"+ projection ({deb.setting['directions']} dir.)", deb.ndcg_after, deb.coverage_after,
         deb.amplification_after, gap(deb_report, "gender"), gap(deb_report, "age_band"), deb.leakage_after["gender"]),
    ]  # fmt: skip
    load = os.getloadavg()
    print(f"MovieLens 100K, {config.label}: fit {fit_s:.1f} s, report + mitigations {assess_s:.1f} s; "
          f"{len(users)} test users; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")  # fmt: skip
    header = ("", "nDCG@10", "coverage", "amplification", "gender gap [95% CI]", "age gap [95% CI]", "gender AUC")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, ndcg, cov, amp, g_gap, a_gap, auc in rows:
        print(f"| {name} | {ndcg:.4f} | {cov:.4f} | {amp:.4f} | {g_gap} | {a_gap} | {auc:.3f} |")
    print(
        f"data Gini {base.item.data_gini:.4f}, exposure Gini {base.item.exposure_gini:.4f}; "
        f"max group gap {base.max_group_gap:.4f} (calibrated {cal.max_group_gap_after:.4f}, "
        f"projected {deb.max_group_gap_after:.4f})"
    )
    if args.sweep:
        print("\ncalibration strength sweep:")
        print("| strength | nDCG@10 | nDCG change | amplification | amplification change | coverage |")
        print("|---|---|---|---|---|---|")
        for s in (0.1, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9):
            r = assess(
                model.user_vectors_, model.item_vectors_, model.metric, train.matrix, test.matrix, users, K, labels,
                BiasSettings(seed=42, n_boot=50, calibration=s), leakage=False,
            ).mitigations[0]  # fmt: skip
            print(
                f"| {s:g} | {r.ndcg_after:.4f} | {r.ndcg_change:+.1%} | {r.amplification_after:.4f} | "
                f"{r.amplification_change:+.1%} | {r.coverage_after:.4f} |"
            )
    cal_ok = cal.amplification_change <= -CAL_CUT and cal.ndcg_change >= -CAL_LOSS
    deb_ok = deb.leakage_after["gender"] <= DEB_AUC and deb.ndcg_change >= -DEB_LOSS
    print(
        f"\ncalibration: amplification {cal.amplification_change:+.1%} (target ≤ {-CAL_CUT:.0%}), "
        f"nDCG@10 {cal.ndcg_change:+.1%} (target ≥ {-CAL_LOSS:.0%}) — {'PASS' if cal_ok else 'FAIL'}"
    )
    print(
        f"projection: gender AUC {deb.leakage_before['gender']:.3f} -> {deb.leakage_after['gender']:.3f} "
        f"(target ≤ {DEB_AUC}), nDCG@10 {deb.ndcg_change:+.1%} (target ≥ {-DEB_LOSS:.0%}) — "
        f"{'PASS' if deb_ok else 'FAIL'}"
    )
    return 0 if cal_ok and deb_ok else 1


if __name__ == "__main__":
    sys.exit(main())
