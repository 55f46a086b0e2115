"""Exact (brute-force) search with numpy: the ground truth for Annoy's recall."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recsys.index.base import ItemIndex, binary_codes, check_metric, file_sha256


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


#: score-matrix entries per block of a batch query (2^24 floats = 64 MB at any catalog size)
SCORE_BLOCK = 1 << 24
#: rows converted to float32 at a time when the vectors are stored as float16 (BLAS has no
#: half-precision path): 65,536 × 64 dims = 16 MB of scratch per call
F16_CHUNK = 65_536


class ExactIndex(ItemIndex):
    """Brute-force search. Cosine vectors are normalised once, at build or load (not on every
    query), and dot / cosine / euclidean scores are one matrix product per query or batch.

    ``dtype="float16"`` halves the memory of the vectors (recall stays near 1: scores are
    computed in float32 over chunks converted on the fly, at some cost in speed).
    """

    kind = "exact"

    def __init__(self, metric: str = "dot", dtype: str = "float32") -> None:
        self.metric = check_metric(metric)
        if dtype not in ("float32", "float16"):
            raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
        self.dtype = dtype
        self.vectors: np.ndarray | None = None
        self._sq_norms: np.ndarray | None = None  # euclidean: ||v||², computed once
        self.dims = 0

    def build(self, vectors: np.ndarray) -> ExactIndex:
        vectors = np.asarray(vectors, dtype=np.float32)
        if self.metric == "cosine":
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        self.vectors = np.ascontiguousarray(vectors, dtype=self.dtype)
        if self.metric == "euclidean":
            self._sq_norms = np.einsum("ij,ij->i", vectors, vectors)
        self.dims = int(self.vectors.shape[1])
        return self

    @property
    def n_items(self) -> int:
        return 0 if self.vectors is None else len(self.vectors)

    def scores(self, queries: np.ndarray) -> np.ndarray:
        """(n_queries, n_items) scores, higher is better: one BLAS product for dot, cosine and
        euclidean."""
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if self.metric in ("manhattan", "hamming"):
            return pairwise_scores(q, self.vectors, self.metric)
        if self.metric == "cosine":
            q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        if self.vectors.dtype == np.float32:
            dots = q @ self.vectors.T
        else:
            dots = np.empty((len(q), self.n_items), np.float32)
            for start in range(0, self.n_items, F16_CHUNK):
                chunk = self.vectors[start : start + F16_CHUNK].astype(np.float32)
                np.matmul(q, chunk.T, out=dots[:, start : start + len(chunk)])
        if self.metric == "euclidean":
            sq = (q * q).sum(1)[:, None] + self._sq_norms[None, :] - 2.0 * dots
            return -np.sqrt(np.maximum(sq, 0.0, out=sq), out=sq)
        return dots

    def query(self, vector, k, exclude=None):
        scores = self.scores(vector)[0]
        if exclude is not None and len(exclude):
            scores[np.asarray(exclude, dtype=np.int64)] = -np.inf
        idx, top = top_k_rows(scores, k)
        keep = idx[0] >= 0
        return idx[0][keep], top[0][keep]

    def query_batch(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows and scores for many queries at once: one matrix product per block of
        queries (blocks keep the score matrix near 64 MB at any catalog size)."""
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        block = max(1, SCORE_BLOCK // max(1, self.n_items))
        if len(queries) <= block:
            return top_k_rows(self.scores(queries), k)
        parts = [top_k_rows(self.scores(queries[i : i + block]), k) for i in range(0, len(queries), block)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def save(self, folder: Path) -> dict:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "vectors.npy", self.vectors)
        return self.write_meta(folder, dtype=self.dtype, sha256=file_sha256(folder / "vectors.npy"))
