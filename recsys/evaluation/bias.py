"""Bias report: what a model does to item exposure, how well it serves each user group, and
which user attributes its user vectors encode. Framework-free (numpy, pandas, scikit-learn).

Three sides, each a typed value:

* **items** (:class:`ItemBias`): items are ranked by their training popularity (users per
  item) and cut into ten equal-count deciles (1 = least popular, 10 = most popular); the
  report gives each decile's share of the recommendation slots and of the interactions. The
  Gini of exposure (how often each catalogue item is recommended, unrecommended ones at 0;
  :func:`recsys.evaluation.beyond.popularity_bias`) against the Gini of the interaction
  counts: ``amplification = exposure_gini − data_gini`` (> 0: the model concentrates
  attention on fewer items than the users themselves do). Also catalogue coverage and the
  long-tail share: slots given to items outside the short head (the 20% most popular items).
* **users** (:class:`GroupGap`): nDCG@k per group of every user attribute (MovieLens:
  gender, age band, occupation) and of the activity bucket
  (:func:`recsys.evaluation.beyond.activity_buckets`); the gap between the best and the
  worst group (groups of at least ``min_group_users`` evaluated users), with seeded bootstrap
  95% intervals (users resampled within each group) for every group and for the gap.
* **embeddings** (:class:`Leakage`): how well a logistic regression recovers each attribute
  from the user vectors — cross-validated ROC AUC, one-vs-rest per class for attributes with
  more than two values (the attribute's AUC is the mean over classes, ``max_auc`` the
  worst class). 0.5 = the vectors say nothing about the attribute.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys.evaluation.beyond import activity_buckets, catalog_coverage, gini, popularity_bias
from recsys.evaluation.metrics import per_user_metrics

logger = logging.getLogger(__name__)

#: age bands (lower bounds, years) user ages are binned into
AGE_BANDS = (0, 18, 25, 35, 45, 56)
#: a categorical attribute with more distinct values than this (zip codes, ids) is not a group
MAX_GROUPS = 30
#: the short head: this share of the items, the most popular ones
HEAD_SHARE = 0.2
#: user vectors wider than this (EASE's are a row of the item–item model) are reduced to their
#: first LEAKAGE_COMPONENTS principal components before the leakage probe
MAX_PROBE_DIMS = 256
LEAKAGE_COMPONENTS = 128
ACTIVITY = "activity"


# ---------------------------------------------------------------------------------------------
# typed values
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemBias:
    #: share of recommendation slots per popularity decile (1 = least popular … 10 = most)
    exposure_by_decile: list[float]
    #: share of training interactions per popularity decile (the data's own concentration)
    data_by_decile: list[float]
    exposure_gini: float
    data_gini: float
    #: exposure_gini − data_gini
    amplification: float
    coverage: float
    #: share of slots given to items outside the short head (the 20% most popular items)
    long_tail_share: float


@dataclass(frozen=True)
class GroupAccuracy:
    group: str
    n_users: int
    ndcg: float
    ci_low: float
    ci_high: float
    #: whether the group is large enough (``min_group_users``) to count in the gap
    in_gap: bool = True


@dataclass(frozen=True)
class GroupGap:
    """nDCG per group of one user attribute; ``gap`` = best − worst (groups ``in_gap``)."""

    attribute: str
    groups: list[GroupAccuracy]
    worst: str | None
    best: str | None
    gap: float
    gap_ci_low: float
    gap_ci_high: float


@dataclass(frozen=True)
class Leakage:
    """Cross-validated ROC AUC of a logistic regression recovering ``attribute`` from user vectors."""

    attribute: str
    auc: float
    max_auc: float
    n_users: int
    #: one-vs-rest AUC per class (one entry, the positive class, for a binary attribute)
    per_class: dict[str, float] = field(default_factory=dict)
    #: users the probed ones were sampled from (``BiasSettings.max_leakage_users`` bounds the
    #: probe's cost); 0: not recorded (cards written before)
    population: int = 0


@dataclass(frozen=True)
class BiasReport:
    k: int
    n_users: int
    ndcg: float
    item: ItemBias
    groups: list[GroupGap]
    leakage: list[Leakage]

    @property
    def amplification(self) -> float:
        return self.item.amplification

    @property
    def coverage(self) -> float:
        return self.item.coverage

    def group(self, attribute: str) -> GroupGap | None:
        return next((g for g in self.groups if g.attribute == attribute), None)

    def leakage_of(self, attribute: str) -> Leakage | None:
        return next((x for x in self.leakage if x.attribute == attribute), None)

    @property
    def max_group_gap(self) -> float:
        """The largest gap over the user attributes (activity buckets excluded: serving light
        users worse is the cold-start problem, not a bias against a group of people)."""
        gaps = [g.gap for g in self.groups if g.attribute != ACTIVITY and math.isfinite(g.gap)]
        return max(gaps) if gaps else float("nan")

    @property
    def max_leakage_auc(self) -> float:
        values = [x.auc for x in self.leakage if math.isfinite(x.auc)]
        return max(values) if values else float("nan")

    def summary(self) -> dict[str, float]:
        """Flat numbers for tables and MLflow metrics (``bias_…``)."""
        out = {
            "bias_ndcg": self.ndcg,
            "bias_amplification": self.item.amplification,
            "bias_exposure_gini": self.item.exposure_gini,
            "bias_data_gini": self.item.data_gini,
            "bias_coverage": self.item.coverage,
            "bias_long_tail_share": self.item.long_tail_share,
            "bias_max_group_gap": self.max_group_gap,
            "bias_max_leakage_auc": self.max_leakage_auc,
        }
        out.update({f"bias_gap_{g.attribute}": g.gap for g in self.groups})
        out.update({f"bias_leakage_{x.attribute}": x.auc for x in self.leakage})
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BiasReport:
        return cls(
            k=int(d["k"]),
            n_users=int(d["n_users"]),
            ndcg=float(d["ndcg"]),
            item=ItemBias(**d["item"]),
            groups=[
                GroupGap(**{**g, "groups": [GroupAccuracy(**a) for a in g["groups"]]}) for g in d.get("groups", [])
            ],
            leakage=[Leakage(**x) for x in d.get("leakage", [])],
        )


# ---------------------------------------------------------------------------------------------
# user attributes as groups
# ---------------------------------------------------------------------------------------------


def age_band(age: float) -> str:
    """``"<18"``, ``"18-24"``, ``"25-34"``, ``"35-44"``, ``"45-55"``, ``"56+"``."""
    bands = AGE_BANDS
    i = int(np.searchsorted(bands, age, side="right")) - 1
    if i <= 0:
        return f"<{bands[1]}"
    if i >= len(bands) - 1:
        return f"{bands[-1]}+"
    return f"{bands[i]}-{bands[i + 1] - 1}"


def user_attribute_labels(users: pd.DataFrame, user_ids: np.ndarray) -> dict[str, np.ndarray]:
    """Group label per user of ``user_ids`` (object array, ``None`` when unknown) for every
    attribute the catalog's users carry that makes groups: ``age`` (any numeric attribute
    named so) binned into bands (:func:`age_band`), other attributes with at most
    ``MAX_GROUPS`` distinct values as they are. Free-form ones (zip codes) are left out."""
    if users is None or users.empty or "attributes" not in users:
        return {}
    catalog = pd.DataFrame(users["attributes"].tolist(), index=users["user_id"].astype(str).to_numpy())
    catalog = catalog[~catalog.index.duplicated(keep="last")]
    attrs = catalog.reindex(pd.Index(np.asarray(user_ids).astype(str)))
    out: dict[str, np.ndarray] = {}
    for key in sorted(attrs.columns, key=str):
        col = attrs[key]
        known = col.notna()
        if known.sum() == 0:
            continue
        numeric = pd.to_numeric(col[known], errors="coerce")
        if "age" in str(key).lower() and numeric.notna().all():
            labels = np.full(len(col), None, dtype=object)
            labels[known.to_numpy()] = [age_band(a) for a in numeric.to_numpy()]
            out[f"{key}_band"] = labels
            continue
        values = col[known].astype(str)
        # whether an attribute makes groups is a property of the catalog, not of the users asked
        distinct = catalog[key].dropna().astype(str).nunique()
        if distinct < 2 or distinct > MAX_GROUPS:
            continue
        labels = np.full(len(col), None, dtype=object)
        labels[known.to_numpy()] = values.to_numpy()
        out[str(key)] = labels
    return out


# ---------------------------------------------------------------------------------------------
# item side
# ---------------------------------------------------------------------------------------------


def popularity_deciles(item_popularity: np.ndarray) -> np.ndarray:
    """Decile 0..9 of every item by popularity (ascending; ties by item index), ten
    equal-count groups (``np.array_split`` sizes)."""
    pop = np.asarray(item_popularity, dtype=np.float64)
    order = np.argsort(pop, kind="stable")
    out = np.empty(len(pop), dtype=np.int64)
    for d, chunk in enumerate(np.array_split(order, 10)):
        out[chunk] = d
    return out


def item_bias(recommended: np.ndarray, item_popularity: np.ndarray) -> ItemBias:
    """Exposure vs data concentration of ``recommended`` ((n, k) item indices, ``-1`` padding)."""
    rec = np.asarray(recommended, dtype=np.int64)
    pop = np.asarray(item_popularity, dtype=np.float64)
    n_items = len(pop)
    valid = rec[rec >= 0]
    exposure = np.bincount(valid, minlength=n_items).astype(np.float64)
    deciles = popularity_deciles(pop)
    slots = exposure.sum()
    by_decile = np.bincount(deciles, weights=exposure, minlength=10) / slots if slots else np.zeros(10)
    data = np.bincount(deciles, weights=pop, minlength=10) / pop.sum() if pop.sum() else np.zeros(10)
    exposure_gini = popularity_bias(rec, pop)["gini_exposure"]
    data_gini = gini(pop)
    n_head = int(math.ceil(HEAD_SHARE * n_items))
    head = np.zeros(n_items, dtype=bool)
    head[np.argsort(-pop, kind="stable")[:n_head]] = True
    tail_share = float(exposure[~head].sum() / slots) if slots else float("nan")
    return ItemBias(
        exposure_by_decile=[float(x) for x in by_decile],
        data_by_decile=[float(x) for x in data],
        exposure_gini=float(exposure_gini),
        data_gini=float(data_gini),
        amplification=float(exposure_gini - data_gini),
        coverage=catalog_coverage(rec, n_items),
        long_tail_share=tail_share,
    )


# ---------------------------------------------------------------------------------------------
# user side
# ---------------------------------------------------------------------------------------------


def group_gap(
    attribute: str,
    values: np.ndarray,
    labels: np.ndarray,
    *,
    seed: int = 0,
    n_boot: int = 1000,
    min_group_users: int = 10,
) -> GroupGap:
    """Mean of ``values`` (per-user nDCG) per label, best − worst gap, bootstrap 95% intervals.

    Users whose label is ``None`` are left out. The bootstrap resamples users within each
    group (``n_boot`` times, ``numpy.random.default_rng(seed)``); the gap's interval is that of
    the difference between the two groups that are best and worst on the full sample.
    """
    values = np.asarray(values, dtype=np.float64)
    labels = np.asarray(labels, dtype=object)
    known = pd.notna(labels)
    frame = pd.DataFrame({"v": values[known], "g": labels[known].astype(str)})
    rng = np.random.default_rng(seed)
    groups: list[GroupAccuracy] = []
    boots: dict[str, np.ndarray] = {}
    for name, part in sorted(frame.groupby("g")["v"], key=lambda kv: kv[0]):
        v = part.to_numpy()
        idx = rng.integers(0, len(v), size=(n_boot, len(v)))
        means = v[idx].mean(axis=1)
        boots[name] = means
        lo, hi = np.percentile(means, [2.5, 97.5])
        groups.append(GroupAccuracy(name, len(v), float(v.mean()), float(lo), float(hi), len(v) >= min_group_users))
    eligible = [g for g in groups if g.in_gap]
    if len(eligible) < 2:
        return GroupGap(attribute, groups, None, None, float("nan"), float("nan"), float("nan"))
    worst = min(eligible, key=lambda g: (g.ndcg, g.group))
    best = max(eligible, key=lambda g: (g.ndcg, g.group))
    diff = boots[best.group] - boots[worst.group]
    lo, hi = np.percentile(diff, [2.5, 97.5])
    return GroupGap(attribute, groups, worst.group, best.group, best.ndcg - worst.ndcg, float(lo), float(hi))


# ---------------------------------------------------------------------------------------------
# embedding side
# ---------------------------------------------------------------------------------------------


def binary_targets(labels: np.ndarray, min_class: int) -> dict[str, np.ndarray]:
    """``class -> bool target`` over the known labels: one (the less frequent class) for a
    binary attribute, one-vs-rest per class otherwise; classes with fewer than ``min_class``
    members (or non-members) are left out."""
    values, counts = np.unique(labels.astype(str), return_counts=True)
    n = len(labels)
    ok = [(v, c) for v, c in zip(values, counts) if c >= min_class and n - c >= min_class]
    if len(values) == 2:
        ok = sorted(ok, key=lambda vc: (vc[1], vc[0]))[:1]
    return {v: labels.astype(str) == v for v, _ in ok}


def attribute_auc(vectors: np.ndarray, target: np.ndarray, *, folds: int = 5, seed: int = 0, C: float = 1.0) -> float:
    """Cross-validated ROC AUC of a (standardized) logistic regression predicting ``target``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    target = np.asarray(target, dtype=bool)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with threadpool_limits(1):  # small products: see attribute_leakage
        scores = cross_val_predict(model, np.asarray(vectors, np.float64), target, cv=cv, method="decision_function")
    return float(roc_auc_score(target, scores))


def attribute_leakage(
    user_vectors: np.ndarray,
    labels: Mapping[str, np.ndarray],
    *,
    folds: int = 5,
    seed: int = 0,
) -> list[Leakage]:
    """:class:`Leakage` of every attribute in ``labels`` (aligned with ``user_vectors`` rows).

    One (multinomial) logistic regression per attribute and fold, its out-of-fold decision
    scores give each class's one-vs-rest AUC; users of classes with fewer than ``folds``
    members are left out. Vectors wider than ``MAX_PROBE_DIMS`` are probed on their leading
    principal components (a lower bound on what the full vectors leak)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    out = []
    X = np.asarray(user_vectors, dtype=np.float64)
    if X.shape[1] > MAX_PROBE_DIMS and len(X) > LEAKAGE_COMPONENTS:
        from sklearn.decomposition import PCA

        with threadpool_limits(1):
            X = PCA(n_components=LEAKAGE_COMPONENTS, random_state=seed, svd_solver="randomized").fit_transform(X)
    for attribute, lab in labels.items():
        lab = np.asarray(lab, dtype=object)
        known = pd.notna(lab)
        targets = binary_targets(lab[known], folds)
        if not targets:
            continue
        y = lab[known].astype(str)
        classes, counts = np.unique(y, return_counts=True)
        keep = np.isin(y, classes[counts >= folds])
        y, Xk = y[keep], X[known][keep]
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        # one BLAS thread: the probe's products are small (≤ max_leakage_users × 128), and on
        # a busy 2-core machine threaded BLAS made it 20× slower (56 s against 2.6 s for
        # 2,000 users × 1,032 dims)
        with threadpool_limits(1):
            scores = cross_val_predict(model, Xk, y, cv=cv, method="decision_function")
        fitted = np.unique(y)
        per_class = {}
        for c in targets:
            if c not in fitted:
                continue
            if len(fitted) == 2:  # one column: the score of fitted[1]
                s = scores if c == fitted[1] else -scores
            else:
                s = scores[:, int(np.searchsorted(fitted, c))]
            per_class[c] = float(roc_auc_score(y == c, s))
        if not per_class:
            continue
        aucs = list(per_class.values())
        out.append(Leakage(attribute, float(np.mean(aucs)), float(np.max(aucs)), int(known.sum()), per_class))
    return out


# ---------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------


def bias_report(
    recommended: np.ndarray,
    test: sp.csr_matrix,
    train: sp.csr_matrix,
    k: int,
    *,
    user_rows: np.ndarray | None = None,
    attributes: Mapping[str, np.ndarray] | None = None,
    user_vectors: np.ndarray | None = None,
    seed: int = 0,
    n_boot: int = 1000,
    min_group_users: int = 10,
    folds: int = 5,
) -> BiasReport:
    """The three sides for one ranking.

    ``recommended`` (n, k): item columns per evaluated user, ``user_rows[i]`` the matrix row of
    its user (default ``arange(n)``); ``test`` / ``train`` user×item matrices in the same row
    and column space (train gives popularity: users per item, and activity). ``attributes``:
    group label per matrix row (:func:`user_attribute_labels`). ``user_vectors``: one row per
    matrix row, the vectors whose leakage is measured (on every user with a known label).
    """
    train = sp.csr_matrix(train)
    rows = np.arange(len(recommended)) if user_rows is None else np.asarray(user_rows, dtype=np.int64)
    binary = train.copy()
    binary.data = np.ones_like(binary.data)
    popularity = np.asarray(binary.sum(axis=0), dtype=np.float64).ravel()
    per_user = per_user_metrics(recommended, test, k, user_rows=rows)
    evaluated = per_user["user_row"].to_numpy()
    ndcg = per_user["ndcg"].to_numpy()
    # the item side is over every evaluated list (users without test items get lists too)
    item = item_bias(recommended, popularity)
    groups = [
        group_gap(
            ACTIVITY,
            ndcg,
            activity_buckets(train, evaluated),
            seed=seed,
            n_boot=n_boot,
            min_group_users=min_group_users,
        )
    ]
    attributes = dict(attributes or {})
    for name, labels in attributes.items():
        labels = np.asarray(labels, dtype=object)
        groups.append(
            group_gap(name, ndcg, labels[evaluated], seed=seed, n_boot=n_boot, min_group_users=min_group_users)
        )
    leakage = attribute_leakage(user_vectors, attributes, folds=folds, seed=seed) if user_vectors is not None else []
    return BiasReport(
        k=k,
        n_users=len(evaluated),
        ndcg=float(ndcg.mean()) if len(ndcg) else float("nan"),
        item=item,
        groups=groups,
        leakage=leakage,
    )


# ---------------------------------------------------------------------------------------------
# mitigations and their cost
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MitigationResult:
    """One mitigation measured on the same holdout as the model without it."""

    #: ``calibration`` or ``debias``
    name: str
    #: its settings (strength; attributes, directions removed, …)
    setting: dict[str, Any]
    ndcg_before: float
    ndcg_after: float
    amplification_before: float
    amplification_after: float
    coverage_before: float
    coverage_after: float
    max_group_gap_before: float
    max_group_gap_after: float
    leakage_before: dict[str, float] = field(default_factory=dict)
    leakage_after: dict[str, float] = field(default_factory=dict)

    @property
    def ndcg_change(self) -> float:
        """Relative nDCG change (−0.03 = 3% lost): the accuracy cost."""
        return self.ndcg_after / self.ndcg_before - 1.0 if self.ndcg_before else float("nan")

    @property
    def amplification_change(self) -> float:
        """Relative change of the amplification (−0.3 = cut by 30%)."""
        b = self.amplification_before
        return self.amplification_after / b - 1.0 if b else float("nan")

    @classmethod
    def compare(cls, name: str, setting: dict[str, Any], before: BiasReport, after: BiasReport) -> MitigationResult:
        return cls(
            name=name,
            setting=dict(setting),
            ndcg_before=before.ndcg,
            ndcg_after=after.ndcg,
            amplification_before=before.amplification,
            amplification_after=after.amplification,
            coverage_before=before.coverage,
            coverage_after=after.coverage,
            max_group_gap_before=before.max_group_gap,
            max_group_gap_after=after.max_group_gap,
            leakage_before={x.attribute: x.auc for x in before.leakage},
            leakage_after={x.attribute: x.auc for x in after.leakage},
        )
