"""Blending collaborative and content scores — one definition shared by serving and evaluation.

``weighted`` (the default): per user, each score vector is standardized over the catalog
(z-score), then ``w_cf·z(cf) + w_content·z(content)``. Standardizing makes the two spaces
comparable whatever their scale (ALS dot products, LightFM logits, cosines).
``rrf``: reciprocal-rank fusion, ``Σ w / (60 + rank)``, which ignores score scale altogether.
bench/hybrid_movielens.py measures both; see the README for which wins and by how much.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recsys.index.exact import pairwise_scores, top_k_rows

FUSIONS = ("weighted", "rrf")
RRF_K = 60  # Cormack, Clarke & Büttcher's constant


def _zscore(scores: np.ndarray) -> np.ndarray:
    mean = scores.mean(axis=1, keepdims=True)
    std = scores.std(axis=1, keepdims=True)
    return (scores - mean) / np.maximum(std, 1e-9)


def _ranks(scores: np.ndarray) -> np.ndarray:
    """0-based rank of every entry within its row (0 = best)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    rows = np.arange(scores.shape[0])[:, None]
    ranks[rows, order] = np.arange(scores.shape[1])[None, :]
    return ranks


def blend(
    cf_scores: np.ndarray, content_scores: np.ndarray, weights=(0.5, 0.5), fusion: str = "weighted"
) -> np.ndarray:
    """Fused scores (higher is better) for rows of users × the same item columns."""
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    cf = np.atleast_2d(np.asarray(cf_scores, np.float32))
    ct = np.atleast_2d(np.asarray(content_scores, np.float32))
    w_cf, w_ct = (float(w) for w in weights)
    if fusion == "rrf":
        return (w_cf / (RRF_K + 1 + _ranks(cf)) + w_ct / (RRF_K + 1 + _ranks(ct))).astype(np.float32)
    return (w_cf * _zscore(cf) + w_ct * _zscore(ct)).astype(np.float32)


def content_profiles(matrix: sp.csr_matrix, content_vectors: np.ndarray) -> np.ndarray:
    """Each row's content profile: the weighted mean of its items' content vectors,
    L2-normalized (rows of ``matrix`` are users, values the weights).

    The one definition of a user's content profile: serving (:func:`content_profile`, weight 1
    per item of the user's history, the session's weights for a session) and evaluation
    (:func:`history_profiles`) both go through it, so what is measured is what is served."""
    profiles = np.asarray(sp.csr_matrix(matrix) @ content_vectors, dtype=np.float32)
    norms = np.linalg.norm(profiles, axis=1, keepdims=True)
    return profiles / np.maximum(norms, 1e-12)


def content_profile(
    content_vectors: np.ndarray, item_positions: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray:
    """One user's content profile from the positions of the items they touched (weight 1 each
    unless ``weights`` are given; a repeated position adds up)."""
    positions = np.asarray(item_positions, np.int64)
    w = np.ones(len(positions), np.float32) if weights is None else np.asarray(weights, np.float32)
    row = sp.csr_matrix((w, (np.zeros(len(positions), np.int64), positions)), shape=(1, len(content_vectors)))
    return content_profiles(row, content_vectors)[0]


def history_profiles(train_rows: sp.csr_matrix, content_vectors: np.ndarray) -> np.ndarray:
    """Profiles of users whose train interactions are ``train_rows`` (any weighting), as serving
    builds them: each touched item once, weight 1."""
    binary = sp.csr_matrix(train_rows, copy=True)
    binary.data = np.ones_like(binary.data, dtype=np.float32)
    return content_profiles(binary, content_vectors)


def hybrid_top_k(
    user_vectors: np.ndarray,
    item_vectors: np.ndarray,
    profiles: np.ndarray,
    content_vectors: np.ndarray,
    k: int,
    *,
    exclude: sp.csr_matrix | None = None,
    metric: str = "dot",
    weights=(0.5, 0.5),
    fusion: str = "weighted",
    batch_size: int = 1024,
) -> np.ndarray:
    """Top-k item columns per user row by the blended score (rows of ``exclude`` are masked)."""
    n = len(user_vectors)
    out = np.full((n, k), -1, dtype=np.int64)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        cf = pairwise_scores(user_vectors[start:stop], item_vectors, metric)
        ct = pairwise_scores(profiles[start:stop], content_vectors, "cosine")
        fused = blend(cf, ct, weights, fusion)
        if exclude is not None:
            block = exclude[start:stop].tocoo()
            fused[block.row, block.col] = -np.inf
        out[start:stop] = top_k_rows(fused, k)[0]
    return out
