"""Ranking metrics over top-k recommendation arrays, vectorized over users.

Inputs everywhere: ``recommended`` (n, k) int array of item column indices, best first, ``-1``
for padding; ``test`` a user×item CSR matrix whose stored entries are the relevant items;
``user_rows[i]`` the row of ``test`` that ``recommended[i]`` is for (default ``arange(n)``).
Users with no test items are skipped. Relevance is binary.

Our definitions (per user, ``hits_j`` = 1 if the item at rank j (1-based) is relevant,
``R`` = number of relevant items, ``H`` = sum of hits in the top k):

- ``precision`` = H / k
- ``precision_implicit`` = sum_u H_u / sum_u min(k, R_u) — implicit's ``precision``, a *micro*
  average (per-user column: H / min(k, R))
- ``recall`` = H / R
- ``ndcg`` = sum_j hits_j / log2(j + 1)  /  sum_{j=1..min(k,R)} 1 / log2(j + 1)
- ``map`` = sum_j hits_j * (hits in top j) / j  /  min(k, R)   (= implicit's ``map``)
- ``hit_rate`` = 1 if H > 0
- ``mrr`` = 1 / (rank of the first hit), 0 if none within k
- ``auc`` = implicit's truncated AUC: with P = R positives and N = n_items_total - R negatives,
  walking the k recommendations, each miss adds the number of hits ranked above it; then
  ``(H + P) / 2 * (N - misses)`` is added for the unranked negatives; divided by P * N.

All of ``ndcg``, ``map``, ``auc`` are means over evaluated users, exactly as in
``implicit.evaluation.ranking_metrics_at_k`` (implicit 0.7.3) when fed the same top-k lists
(``model.recommend(users, train[users], N=k)`` with ``filter_already_liked_items=True``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

PER_USER_COLUMNS = [
    "user_row",
    "n_relevant",
    "hits",
    "precision",
    "precision_implicit",
    "recall",
    "ndcg",
    "map",
    "hit_rate",
    "mrr",
    "auc",
]


def _prepare(recommended: np.ndarray, test: sp.csr_matrix, k: int, user_rows: np.ndarray | None):
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    rec = np.asarray(recommended, dtype=np.int64)
    if rec.ndim != 2:
        raise ValueError("recommended must be a 2-d array (n_users, k)")
    if rec.shape[1] >= k:
        rec = rec[:, :k]
    else:
        rec = np.hstack([rec, np.full((rec.shape[0], k - rec.shape[1]), -1, np.int64)])
    rows = np.arange(rec.shape[0]) if user_rows is None else np.asarray(user_rows, dtype=np.int64)
    if len(rows) != rec.shape[0]:
        raise ValueError(f"user_rows has {len(rows)} entries but recommended has {rec.shape[0]} rows")
    test = sp.csr_matrix(test)
    test.sum_duplicates()  # also sorts indices
    return rec, rows, test


def _hits(rec: np.ndarray, rows: np.ndarray, test: sp.csr_matrix, batch_size: int = 65536) -> np.ndarray:
    """Boolean (n, k): is ``rec[i, j]`` a stored entry of ``test[rows[i]]``. Batched over users."""
    n_items = test.shape[1]
    out = np.zeros(rec.shape, dtype=bool)
    for start in range(0, len(rows), batch_size):
        sub = test[rows[start : start + batch_size]]
        n = sub.shape[0]
        # CSR rows have sorted indices, so row * n_items + col is globally sorted
        keys = np.repeat(np.arange(n, dtype=np.int64), np.diff(sub.indptr)) * n_items + sub.indices
        r = rec[start : start + n]
        q = np.arange(n, dtype=np.int64)[:, None] * n_items + r
        pos = np.searchsorted(keys, q)
        pos = np.minimum(pos, max(len(keys) - 1, 0))
        found = keys[pos] == q if len(keys) else np.zeros(q.shape, bool)
        out[start : start + n] = found & (r >= 0)
    return out


def _per_user(recommended, test, k, user_rows, n_items_total):
    rec, rows, test = _prepare(recommended, test, k, user_rows)
    n_rel_all = np.diff(test.indptr)[rows]
    keep = n_rel_all > 0
    rec, rows, n_rel = rec[keep], rows[keep], n_rel_all[keep].astype(np.float64)
    hits = _hits(rec, rows, test)
    h = hits.astype(np.float64)
    H = h.sum(axis=1)
    cum = np.cumsum(h, axis=1)
    ranks = np.arange(1, k + 1, dtype=np.float64)
    disc = 1.0 / np.log2(ranks + 1.0)
    denom = np.minimum(n_rel, k)
    idcg = np.cumsum(disc)[denom.astype(np.int64) - 1] if len(denom) else np.zeros(0)
    first = np.argmax(hits, axis=1)
    n_total = test.shape[1] if n_items_total is None else int(n_items_total)
    n_neg = n_total - n_rel
    misses = k - H
    auc_num = ((1.0 - h) * cum).sum(axis=1) + (H + n_rel) / 2.0 * (n_neg - misses)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = np.where(n_neg > 0, auc_num / (n_rel * n_neg), np.nan)
    return {
        "user_row": rows,
        "n_relevant": n_rel.astype(np.int64),
        "hits": H.astype(np.int64),
        "precision": H / k,
        "precision_implicit": H / denom,
        "recall": H / n_rel,
        "ndcg": (h * disc).sum(axis=1) / idcg,
        "map": (h * cum / ranks).sum(axis=1) / denom,
        "hit_rate": (H > 0).astype(np.float64),
        "mrr": np.where(H > 0, 1.0 / (first + 1.0), 0.0),
        "auc": auc,
        "_denom": denom,
    }


def per_user_metrics(
    recommended: np.ndarray,
    test: sp.csr_matrix,
    k: int,
    *,
    user_rows: np.ndarray | None = None,
    n_items_total: int | None = None,
) -> pd.DataFrame:
    """One row per evaluated user (``user_row`` = row of ``test``), columns as in the module doc."""
    cols = _per_user(recommended, test, k, user_rows, n_items_total)
    cols.pop("_denom")
    return pd.DataFrame(cols, columns=PER_USER_COLUMNS)


def ranking_metrics_at_k(
    recommended: np.ndarray,
    test: sp.csr_matrix,
    k: int,
    *,
    user_rows: np.ndarray | None = None,
    n_items_total: int | None = None,
) -> dict[str, float]:
    """Mean metrics over users with at least one test item, plus ``n_users``.

    Note implicit's ``precision_at_k`` divides hits by ``min(k, |relevant|)`` and averages over
    all users' pooled counts (micro); that is ``precision_implicit``. ``precision`` here is the
    textbook hits / k averaged over users. ``n_items_total`` (default ``test.shape[1]``) is the
    catalogue size used for AUC's negatives, as implicit uses ``test.shape[1]``.
    """
    cols = _per_user(recommended, test, k, user_rows, n_items_total)
    n = len(cols["user_row"])
    out: dict[str, float] = {"n_users": n}
    names = ["precision", "recall", "ndcg", "map", "hit_rate", "mrr", "auc"]
    if n == 0:
        out.update({m: float("nan") for m in names + ["precision_implicit"]})
        return out
    for m in names:
        out[m] = float(np.nanmean(cols[m])) if m == "auc" else float(np.mean(cols[m]))
    out["precision_implicit"] = float(cols["hits"].sum() / cols["_denom"].sum())
    return out


def recommenders_metrics(
    recommended: np.ndarray,
    test: sp.csr_matrix,
    k: int,
    *,
    user_rows: np.ndarray | None = None,
) -> dict[str, float]:
    """Microsoft Recommenders' ``python_evaluation`` definitions on the same arrays.

    From ``recommenders/evaluation/python_evaluation.py`` (``relevancy_method="top_k"``, binary
    relevance). ``n_users`` there is the number of users present in both truth and predictions —
    here, users with test items and at least one (non ``-1``) recommendation. Per user, with
    ``hits`` at 1-based ranks r_1 < r_2 < ... within the top k and ``actual`` = |relevant|:

    - ``precision_at_k`` = sum_u hits_u / k / n_users  (divides by k, as Spark)
    - ``recall_at_k`` = sum_u (hits_u / actual_u) / n_users
    - ``ndcg_at_k`` = mean over *all* test users of DCG/IDCG, DCG = sum_hits 1/ln(1 + r),
      IDCG = sum_{i=1..min(k, actual)} 1/ln(1 + i) (default ``discfun_type="loge"``; the log
      base cancels in the ratio, so this equals ours with log2). Users with test items but no
      recommendations count as 0 (the function outer-joins with the truth frame).
    - ``map`` = sum_u (sum_i i / r_i) / actual_u / n_users  (Spark ``meanAveragePrecision``,
      normalized by the number of relevant items). Before Recommenders 1.2 this function was
      named ``map_at_k``; the README benchmark table ("MAP", MovieLens, k=10) was produced with
      it, and ``benchmark_utils`` kept calling ``map`` under the "MAP" label (issue #2309).
    - ``map_at_k`` = sum_u (sum_i i / r_i) / min(k, actual_u) / n_users (Spark
      ``meanAveragePrecisionAt(k)``, the current ``map_at_k``; equals implicit's ``map``).

    Each returns 0.0 when there is no hit at all, as the reference does.
    """
    rec, rows, test = _prepare(recommended, test, k, user_rows)
    n_rel_all = np.diff(test.indptr)[rows]
    keep = n_rel_all > 0
    rec, rows, actual = rec[keep], rows[keep], n_rel_all[keep].astype(np.float64)
    n_all = len(rows)
    has_pred = (rec >= 0).any(axis=1)
    n_common = int(has_pred.sum())
    out: dict[str, float] = {"n_users": n_common}
    names = ["precision_at_k", "recall_at_k", "ndcg_at_k", "map", "map_at_k"]
    hits = _hits(rec, rows, test)
    if n_common == 0 or not hits.any():
        out.update({m: 0.0 for m in names})
        return out
    h = hits.astype(np.float64)
    H = h.sum(axis=1)
    ranks = np.arange(1, k + 1, dtype=np.float64)
    rr = (h * np.cumsum(h, axis=1) / ranks).sum(axis=1)
    disc = 1.0 / np.log(1.0 + ranks)
    idcg = np.cumsum(disc)[np.minimum(actual, k).astype(np.int64) - 1]
    out["precision_at_k"] = float((H / k).sum() / n_common)
    out["recall_at_k"] = float((H / actual).sum() / n_common)
    out["ndcg_at_k"] = float(((h * disc).sum(axis=1) / idcg).sum() / n_all)
    out["map"] = float((rr / actual).sum() / n_common)
    out["map_at_k"] = float((rr / np.minimum(actual, k)).sum() / n_common)
    return out
