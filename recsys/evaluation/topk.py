"""Exact batched top-k over user/item vectors, with per-user exclusions (e.g. train items)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recsys.index.exact import top_k_rows

METRICS = ("dot", "cosine")


def _normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return x / norms


def top_k_scores(
    user_vectors: np.ndarray,
    item_vectors: np.ndarray,
    k: int,
    *,
    exclude: sp.csr_matrix | None = None,
    user_rows: np.ndarray | None = None,
    batch_size: int = 2048,
    metric: str = "dot",
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best items per user, best first.

    Parameters
    ----------
    user_vectors : (n_users, d) array; ``item_vectors`` : (n_items, d) array.
    k : number of items per user.
    exclude : sparse user×item matrix whose stored entries (its structure, whatever the values)
        are never returned — typically the train matrix. Its rows are indexed like
        ``user_vectors``: output row ``i`` uses ``exclude[user_rows[i]]``. If ``exclude`` has
        exactly ``len(user_rows)`` rows and fewer than ``user_vectors``, it is taken as already
        aligned with the output rows (``exclude[i]``).
    user_rows : rows of ``user_vectors`` to score (default: all, in order).
    metric : ``"dot"`` (inner product) or ``"cosine"`` (both sides L2-normalized).

    Returns
    -------
    (indices int64 (n, k), scores float32 (n, k)). Where fewer than ``k`` items remain after
    exclusion, the tail is padded with index ``-1`` and score ``-inf``. Among the returned items,
    equal scores are ordered by lower item index (which tied item makes the cut at position k
    is unspecified).
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    U = np.asarray(user_vectors, dtype=np.float32)
    V = np.asarray(item_vectors, dtype=np.float32)
    if metric == "cosine":
        U, V = _normalize(U), _normalize(V)
    rows = np.arange(U.shape[0]) if user_rows is None else np.asarray(user_rows, dtype=np.int64)
    n_items = V.shape[0]
    aligned = False
    if exclude is not None:
        exclude = sp.csr_matrix(exclude)
        if exclude.shape[1] != n_items:
            raise ValueError(f"exclude has {exclude.shape[1]} columns but there are {n_items} items")
        aligned = user_rows is not None and exclude.shape[0] == len(rows) and exclude.shape[0] < U.shape[0]
        if not aligned and exclude.shape[0] != U.shape[0]:
            raise ValueError(
                f"exclude has {exclude.shape[0]} rows: expected {U.shape[0]} (one per user vector)"
                + (f" or {len(rows)} (one per user_rows entry)" if user_rows is not None else "")
            )
    if k < n_items:
        return _top_k_implicit(U, V, k, rows, None if exclude is None else exclude if aligned else exclude[rows])
    out_idx = np.empty((len(rows), k), dtype=np.int64)
    out_scores = np.empty((len(rows), k), dtype=np.float32)
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        scores = U[batch] @ V.T
        if exclude is not None:
            sub = exclude[start : start + len(batch)] if aligned else exclude[batch]
            r = np.repeat(np.arange(len(batch)), np.diff(sub.indptr))
            scores[r, sub.indices] = -np.inf
        out_idx[start : start + len(batch)], out_scores[start : start + len(batch)] = top_k_rows(scores, k)
    return out_idx, out_scores


def _top_k_implicit(
    U: np.ndarray, V: np.ndarray, k: int, rows: np.ndarray, exclude: sp.csr_matrix | None
) -> tuple[np.ndarray, np.ndarray]:
    """The same top-k through implicit's C++ selection (``implicit.cpu.topk``, the one its
    ``recommend`` uses): numpy's introselect degrades on real factor-model scores (2048 × 20k
    ALS scores: 2.6 s vs 0.09 s on random ones), a heap does not. Returned items are then put
    in our order (score desc, lower index first); padding as documented above."""
    from implicit.cpu.topk import topk

    if exclude is not None:
        exclude = sp.csr_matrix(exclude, dtype=np.float32)
        exclude.sort_indices()
    idx, scores = topk(
        np.ascontiguousarray(V), np.ascontiguousarray(U[rows]), k, filter_query_items=exclude, num_threads=0
    )
    idx, scores = idx.astype(np.int64), scores.astype(np.float32)
    empty = (scores <= np.finfo(np.float32).min) | (idx < 0)  # implicit scores filtered items -FLT_MAX
    idx[empty], scores[empty] = -1, -np.inf
    order = np.lexsort((np.where(empty, np.iinfo(np.int64).max, idx), -scores), axis=1)
    return np.take_along_axis(idx, order, axis=1), np.take_along_axis(scores, order, axis=1)
