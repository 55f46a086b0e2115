"""Beyond-accuracy metrics (coverage, novelty, diversity, popularity bias) and group breakdowns.

``recommended`` is an (n_users, k) int array of item indices with ``-1`` padding, as returned by
``top_k_scores``. ``item_popularity`` is a per-item count (e.g. number of train users per item).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

BUCKETS = ("cold", "medium", "heavy")


def _valid(recommended: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rec = np.asarray(recommended, dtype=np.int64)
    if rec.ndim != 2:
        raise ValueError("recommended must be a 2-d array (n_users, k)")
    return rec, rec >= 0


def _per_list_mean(values: np.ndarray, mask: np.ndarray) -> float:
    """Mean over lists (rows with at least one valid entry) of the mean over valid entries."""
    counts = mask.sum(axis=1)
    ok = counts > 0
    if not ok.any():
        return float("nan")
    sums = np.where(mask, values, 0.0).sum(axis=1)
    return float(np.mean(sums[ok] / counts[ok]))


def catalog_coverage(recommended: np.ndarray, n_items: int) -> float:
    """Share of the catalogue (``n_items``) recommended to at least one user."""
    rec, mask = _valid(recommended)
    return float(np.unique(rec[mask]).size / n_items) if n_items else float("nan")


def novelty(recommended: np.ndarray, item_popularity: np.ndarray, n_users: int | None = None) -> float:
    """Mean self-information ``-log2 p(i)`` of recommended items (Zhou et al. 2010).

    ``p(i) = item_popularity[i] / n_users`` when ``n_users`` is given (share of users who
    interacted with i), else ``item_popularity[i] / item_popularity.sum()``; popularity is a
    count. Items with zero popularity are treated as seen once (``1 / denominator``), so
    novelty stays finite. Averaged within each list, then over lists.
    """
    rec, mask = _valid(recommended)
    pop = np.asarray(item_popularity, dtype=np.float64)
    denom = float(n_users) if n_users is not None else float(pop.sum())
    if denom <= 0:
        raise ValueError("item_popularity sums to zero")
    p = np.maximum(pop, 1.0) / denom
    info = -np.log2(p)
    return _per_list_mean(info[np.where(mask, rec, 0)], mask)


def intra_list_diversity(recommended: np.ndarray, item_embeddings: np.ndarray, batch_size: int = 4096) -> float:
    """Mean pairwise cosine distance (1 - cos) within each list, averaged over lists of >= 2 items."""
    rec, mask = _valid(recommended)
    E = np.asarray(item_embeddings, dtype=np.float64)
    norms = np.linalg.norm(E, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    E = E / norms
    k = rec.shape[1]
    upper = np.triu(np.ones((k, k), dtype=bool), 1)
    values = []
    for start in range(0, rec.shape[0], batch_size):
        r = rec[start : start + batch_size]
        m = mask[start : start + batch_size]
        X = E[np.where(m, r, 0)] * m[..., None]  # (b, k, d), padding rows zeroed
        sim = np.einsum("bid,bjd->bij", X, X)
        pair = (m[:, :, None] & m[:, None, :]) & upper
        n_pairs = pair.sum(axis=(1, 2))
        dist = np.where(pair, 1.0 - sim, 0.0).sum(axis=(1, 2))
        ok = n_pairs > 0
        values.append(dist[ok] / n_pairs[ok])
    values = np.concatenate(values) if values else np.zeros(0)
    return float(values.mean()) if len(values) else float("nan")


def gini(x: np.ndarray) -> float:
    """Gini coefficient of non-negative values: 0 = equal, (n-1)/n = all mass on one entry."""
    x = np.sort(np.asarray(x, dtype=np.float64))
    n, total = len(x), x.sum()
    if n == 0 or total == 0:
        return 0.0
    i = np.arange(1, n + 1)
    return float(((2 * i - n - 1) * x).sum() / (n * total))


def popularity_bias(recommended: np.ndarray, item_popularity: np.ndarray) -> dict[str, float]:
    """``avg_rec_popularity``: mean over lists of the mean popularity of their items (ARP,
    Abdollahpouri et al.); ``gini_exposure``: Gini of how often each catalogue item
    (``len(item_popularity)`` of them, unrecommended ones at 0) is recommended."""
    rec, mask = _valid(recommended)
    pop = np.asarray(item_popularity, dtype=np.float64)
    arp = _per_list_mean(pop[np.where(mask, rec, 0)], mask)
    exposure = np.bincount(rec[mask], minlength=len(pop))
    return {"avg_rec_popularity": arp, "gini_exposure": gini(exposure)}


def activity_thresholds(train_matrix: sp.csr_matrix, user_rows: np.ndarray) -> tuple[float, float]:
    """The 1/3 and 2/3 quantiles (numpy's linear interpolation) of the train interaction
    counts (stored entries per row) of ``user_rows``."""
    counts = np.diff(sp.csr_matrix(train_matrix).indptr)[np.asarray(user_rows, dtype=np.int64)]
    if len(counts) == 0:
        return (0.0, 0.0)
    q1, q2 = np.quantile(counts, [1 / 3, 2 / 3])
    return float(q1), float(q2)


def activity_buckets(train_matrix: sp.csr_matrix, user_rows: np.ndarray) -> np.ndarray:
    """``"cold"`` / ``"medium"`` / ``"heavy"`` per entry of ``user_rows`` by train activity.

    Thresholds are the terciles of the counts over the given ``user_rows`` (see
    :func:`activity_thresholds`): ``count <= q1`` is cold, ``count > q2`` heavy, the rest
    medium. With many tied counts the buckets are unequal in size.
    """
    rows = np.asarray(user_rows, dtype=np.int64)
    counts = np.diff(sp.csr_matrix(train_matrix).indptr)[rows]
    q1, q2 = activity_thresholds(train_matrix, rows)
    out = np.full(len(rows), "medium", dtype=object)
    out[counts <= q1] = "cold"
    out[counts > q2] = "heavy"
    return out


def breakdown(per_user_df: pd.DataFrame, groups: pd.Series) -> pd.DataFrame:
    """Mean of every numeric metric column per group, plus ``n_users``.

    ``groups`` of the same length as ``per_user_df`` is aligned by position (e.g. the output of
    :func:`activity_buckets` on ``per_user_df["user_row"]``); otherwise it is looked up by
    ``per_user_df["user_row"]`` in its index (e.g. a user attribute indexed by matrix row), and
    users without a group are left out.
    """
    groups = pd.Series(groups)
    if len(groups) == len(per_user_df):
        g = groups.to_numpy()
    else:
        g = groups.reindex(per_user_df["user_row"].to_numpy()).to_numpy()
    cols = [c for c in per_user_df.columns if c != "user_row" and pd.api.types.is_numeric_dtype(per_user_df[c])]
    df = per_user_df[cols].assign(group=g)
    out = df.groupby("group", dropna=True)[cols].mean()
    out.insert(0, "n_users", df.groupby("group", dropna=True).size())
    return out
