"""Exact (brute-force) search with numpy: the ground truth for Annoy's recall."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from recsys.index.base import ItemIndex, binary_codes, check_metric


def pairwise_scores(queries: np.ndarray, vectors: np.ndarray, metric: str) -> np.ndarray:
    """Scores (higher is better) of every query row against every vector row."""
    q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    v = np.asarray(vectors, dtype=np.float32)
    if metric == "dot":
        return q @ v.T
    if metric == "cosine":
        qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        vn = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        return qn @ vn.T
    if metric == "euclidean":
        sq = (q * q).sum(1)[:, None] + (v * v).sum(1)[None, :] - 2.0 * (q @ v.T)
        return -np.sqrt(np.maximum(sq, 0.0))
    if metric == "manhattan":
        # one query at a time keeps memory at O(n_items·dims)
        return -np.stack([np.abs(v - row).sum(1) for row in q])
    if metric == "hamming":
        qb, vb = binary_codes(q), binary_codes(v)
        # bits differ = |q| + |v| - 2·overlap
        return -(qb.sum(1)[:, None] + vb.sum(1)[None, :] - 2.0 * (qb @ vb.T))
    raise ValueError(check_metric(metric))


def top_k_rows(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best columns of every row of ``scores`` (higher is better), best first.

    Returns (indices int64 (n, k), scores float32 (n, k)); entries scored ``-inf`` (excluded)
    come back as index ``-1``, and rows with fewer than k columns are padded with -1 / -inf.
    Equal scores are ordered by lower column index. The one top-k used by exact search,
    evaluation and the hybrid blend.
    """
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float32))
    n_rows, n_cols = scores.shape
    kk = min(k, n_cols)
    out_idx = np.full((n_rows, k), -1, dtype=np.int64)
    out_scores = np.full((n_rows, k), -np.inf, dtype=np.float32)
    if kk <= 0:
        return out_idx, out_scores
    if kk < n_cols:
        part = np.argpartition(scores, n_cols - kk, axis=1)[:, n_cols - kk :]  # no negated copy
    else:
        part = np.broadcast_to(np.arange(n_cols), (n_rows, n_cols))
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    idx = np.take_along_axis(part, order, axis=1)
    top = np.take_along_axis(part_scores, order, axis=1)
    out_idx[:, :kk] = np.where(np.isneginf(top), -1, idx)
    out_scores[:, :kk] = top
    return out_idx, out_scores


def top_k_from_scores(scores: np.ndarray, k: int, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of one score vector, skipping ``exclude``; only real (non-excluded) entries."""
    scores = np.asarray(scores, dtype=np.float32).copy()
    if exclude is not None and len(exclude):
        scores[np.asarray(exclude, dtype=np.int64)] = -np.inf
    idx, top = top_k_rows(scores, k)
    keep = idx[0] >= 0
    return idx[0][keep], top[0][keep]


class ExactIndex(ItemIndex):
    kind = "exact"

    def __init__(self, metric: str = "dot") -> None:
        self.metric = check_metric(metric)
        self.vectors: np.ndarray | None = None

    def build(self, vectors: np.ndarray) -> "ExactIndex":
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.dims = self.vectors.shape[1]
        return self

    @property
    def n_items(self) -> int:
        return 0 if self.vectors is None else len(self.vectors)

    def query(self, vector, k, exclude=None):
        scores = pairwise_scores(vector, self.vectors, self.metric)[0]
        return top_k_from_scores(scores, k, exclude)

    def query_batch(self, queries: np.ndarray, k: int) -> np.ndarray:
        """Top-k rows for many queries at once (used for recall measurement)."""
        return top_k_rows(pairwise_scores(queries, self.vectors, self.metric), k)[0]

    def save(self, folder: Path) -> dict:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "vectors.npy", self.vectors)
        meta = {"kind": self.kind, "metric": self.metric, "dims": int(self.dims), "n_items": self.n_items}
        (folder / "index.json").write_text(json.dumps(meta, indent=2))
        return meta

    @classmethod
    def load(cls, folder: Path, mmap: bool = True) -> "ExactIndex":
        folder = Path(folder)
        meta = json.loads((folder / "index.json").read_text())
        index = cls(meta["metric"])
        index.vectors = np.load(folder / "vectors.npy", mmap_mode="r" if mmap else None)
        index.dims = index.vectors.shape[1]
        return index
