"""Reference recommenders every model should beat.

All three follow ``recsys.models.base.Embedder`` (``fit(TrainData)``; they read its matrix) and all
three expose the same ``recommend(user_rows, matrix, k) -> (indices, scores)``: ``matrix`` is
the user×item matrix whose rows are indexed by ``user_rows`` (the train matrix), and its stored
entries are never recommended. Output as ``top_k_scores``: (n, k) int64 indices padded with
``-1``, float32 scores padded with ``-inf``.

- ``RandomRecommender`` and ``PopularityRecommender`` are expressed as vectors, so they go
  through the same index/serving path as learned models (``metric = "dot"``).
- ``ItemKNNRecommender`` wraps implicit's item-item ``CosineRecommender``. Its scores are sums
  of item-item similarities over the user's history: a dot product of the user's row with the
  similarity matrix, exported as (n_items-wide) vectors for catalogues up to ``max_items``.

All three are registered in ``recsys.models.registry`` like every model.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp

from recsys.evaluation.topk import top_k_scores
from recsys.models.base import Embedder, NotFittedError, TrainData

logger = logging.getLogger(__name__)


class _VectorRecommendMixin:
    def recommend(self, user_rows: np.ndarray, matrix: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` items for ``user_rows`` by dot score, excluding ``matrix[user_rows]``'s items."""
        self._check_fitted()
        return top_k_scores(
            self.user_vectors_,
            self.item_vectors_,
            k,
            exclude=matrix,
            user_rows=np.asarray(user_rows, dtype=np.int64),
            metric="dot",
        )


class RandomRecommender(_VectorRecommendMixin, Embedder):
    """Random ranking: i.i.d. Gaussian user and item vectors of ``factors`` dims, so each user
    gets a different, seeded, random order of items."""

    kind = "random"
    metric = "dot"
    supports_fold_in = True
    reference = True

    def __init__(self, random_state: int | None = 42, factors: int = 32) -> None:
        self.random_state = random_state
        self.factors = factors

    def _fit(self, data: TrainData) -> None:
        rng = np.random.default_rng(self.random_state)
        n_users, n_items = data.shape
        self.user_vectors_ = rng.standard_normal((n_users, self.factors)).astype(np.float32)
        self.item_vectors_ = rng.standard_normal((n_items, self.factors)).astype(np.float32)
        self.rng_ = rng

    @classmethod
    def for_fold_in(cls, params, item_vectors: np.ndarray) -> RandomRecommender:
        model = super().for_fold_in(params, item_vectors)
        model.rng_ = np.random.default_rng(model.random_state)
        return model

    def fold_in(self, item_indices: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """A random vector: this reference model has nothing to learn from a history."""
        self._check_fitted()
        return self.rng_.standard_normal(self.factors).astype(np.float32)


class PopularityRecommender(_VectorRecommendMixin, Embedder):
    """Most popular first: ``item_vectors_`` is the popularity column (n_items, 1), every user
    vector is ``[1.0]``, so the dot score of item i is its popularity.

    ``by="users"`` counts distinct users per item (stored entries per column); ``by="weight"``
    sums the matrix values (confidence weights).
    """

    kind = "popular"
    metric = "dot"
    supports_fold_in = True
    reference = True

    def __init__(self, by: str = "users") -> None:
        self.by = by

    def _fit(self, data: TrainData) -> None:
        matrix = data.matrix
        if self.by not in ("users", "weight"):
            raise ValueError(f"by must be 'users' or 'weight', got {self.by!r}")
        m = sp.csc_matrix(matrix)
        pop = np.diff(m.indptr).astype(np.float32) if self.by == "users" else np.asarray(m.sum(axis=0)).ravel()
        self.popularity_ = pop.astype(np.float32)
        self.item_vectors_ = self.popularity_[:, None].copy()
        self.user_vectors_ = np.ones((matrix.shape[0], 1), dtype=np.float32)

    def fold_in(self, item_indices: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        self._check_fitted()
        return np.ones(1, dtype=np.float32)


class ItemKNNRecommender(Embedder):
    """Item-item cosine nearest neighbours (implicit's ``CosineRecommender``, ``K`` neighbours
    per item). Its score ``x_u S`` (the user's row times the K-pruned similarity matrix) is a
    dot product, so for catalogues up to ``max_items`` it is also exported as vectors, like
    EASE: ``user_vectors_ = X`` and ``item_vectors_ = Sᵀ`` (n_items wide), and is served and
    ensembled like any model. Wider catalogues keep ``recommend`` only (vectors ``None``)."""

    kind = "itemknn"
    metric = "dot"
    supports_fold_in = True
    reference = True
    #: the history row: delta and afresh are the same vector, afresh costs one fold-in
    returning_fold_in = "afresh"

    def __init__(self, K: int = 100, num_threads: int = 0, max_items: int = 20_000) -> None:
        self.K = K
        self.num_threads = num_threads
        self.max_items = max_items

    def _fit(self, data: TrainData) -> None:
        from implicit.nearest_neighbours import CosineRecommender

        matrix = data.matrix
        X = sp.csr_matrix(matrix, dtype=np.float32)
        model = CosineRecommender(K=self.K, num_threads=self.num_threads)
        model.fit(X, show_progress=False)
        self.model_ = model
        self.user_vectors_ = None
        self.item_vectors_ = None
        self.n_items_ = matrix.shape[1]
        if self.n_items_ <= self.max_items:
            self.item_vectors_ = np.ascontiguousarray(sp.csr_matrix(model.similarity).T.toarray(), np.float32)
            self.user_vectors_ = np.ascontiguousarray(X.toarray(), np.float32)
        else:
            logger.info(
                "item-kNN: %d items exceed max_items=%d; no vector form (recommend only)", self.n_items_, self.max_items
            )

    @classmethod
    def for_fold_in(cls, params, item_vectors: np.ndarray) -> ItemKNNRecommender:
        """The vector form only (``recommend`` needs the fitted implicit model)."""
        model = super().for_fold_in(params, item_vectors)
        model.model_, model.n_items_ = None, item_vectors.shape[1]
        return model

    def fold_in(self, item_indices: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """The user's row: the touched items' weights (1 each by default), as in training."""
        if getattr(self, "item_vectors_", None) is None:
            self._check_fitted()
            raise NotImplementedError("item-kNN without its vector form cannot fold in users")
        row = np.zeros(self.n_items_, np.float32)
        np.add.at(row, np.asarray(item_indices, np.int64), 1.0 if weights is None else np.asarray(weights, np.float32))
        return row

    def _check_fitted(self) -> None:
        if getattr(self, "model_", None) is None and getattr(self, "item_vectors_", None) is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit() first")

    def recommend(self, user_rows: np.ndarray, matrix: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` items for ``user_rows`` from their rows of ``matrix`` (already-liked items
        filtered out). Padded to ``k`` with ``-1`` / ``-inf``."""
        if getattr(self, "model_", None) is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit() first")
        rows = np.asarray(user_rows, dtype=np.int64)
        out_idx = np.full((len(rows), k), -1, dtype=np.int64)
        out_scores = np.full((len(rows), k), -np.inf, dtype=np.float32)
        if len(rows) == 0:
            return out_idx, out_scores
        user_items = sp.csr_matrix(matrix, dtype=np.float32)[rows]
        ids, scores = self.model_.recommend(rows, user_items, N=min(k, self.n_items_), filter_already_liked_items=True)
        ids = np.atleast_2d(np.asarray(ids, dtype=np.int64))
        scores = np.atleast_2d(np.asarray(scores, dtype=np.float32))
        invalid = (ids < 0) | ~np.isfinite(scores)
        # implicit may fill missing slots with already-liked items; never return those
        liked = _stored(user_items, ids)
        invalid |= liked
        ids = np.where(invalid, -1, ids)
        scores = np.where(invalid, -np.inf, scores)
        w = ids.shape[1]
        out_idx[:, :w], out_scores[:, :w] = ids, scores
        return out_idx, out_scores


def _stored(m: sp.csr_matrix, ids: np.ndarray) -> np.ndarray:
    """Boolean (n, w): is ``ids[i, j]`` a stored entry of row i of ``m``."""
    m = sp.csr_matrix(m)
    m.sort_indices()
    n_items = m.shape[1]
    keys = np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr)) * n_items + m.indices
    q = np.arange(len(ids), dtype=np.int64)[:, None] * n_items + np.maximum(ids, 0)
    if len(keys) == 0:
        return np.zeros(ids.shape, dtype=bool)
    pos = np.minimum(np.searchsorted(keys, q), len(keys) - 1)
    return (keys[pos] == q) & (ids >= 0)
