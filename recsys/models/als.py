"""Alternating least squares (implicit) as an Embedder."""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp

from recsys.models.base import Embedder, TrainData

logger = logging.getLogger(__name__)


class ALSEmbedder(Embedder):
    """Implicit-feedback matrix factorization by ALS (Hu, Koren & Volinsky 2008).

    Parameters mirror ``implicit.als.AlternatingLeastSquares``. The input matrix should already
    carry confidence weights (see ``recsys.matrix.weight``); ``alpha`` is applied there, so it is
    passed to implicit as 1.0 to avoid scaling twice.
    """

    kind = "als"
    metric = "dot"
    supports_fold_in = True
    #: the exact user step over the whole history (one solve; measured ≥ delta, docs/foldin.md)
    returning_fold_in = "afresh"

    def __init__(
        self,
        factors: int = 64,
        regularization: float = 0.05,
        iterations: int = 15,
        alpha: float = 1.0,
        random_state: int | None = 42,
        num_threads: int = 0,
        show_progress: bool = False,
    ) -> None:
        self.factors = factors
        self.regularization = regularization
        self.iterations = iterations
        self.alpha = alpha
        self.random_state = random_state
        self.num_threads = num_threads
        self.show_progress = show_progress

    def _fit(self, data: TrainData) -> None:
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        # implicit parallelizes itself; a multi-threaded BLAS underneath only contends with it
        # (implicit checks this when the model is constructed).
        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(
                factors=self.factors,
                regularization=self.regularization,
                iterations=self.iterations,
                alpha=1.0,
                random_state=self.random_state,
                num_threads=self.num_threads,
                dtype=np.float32,
            )
            model.fit(sp.csr_matrix(data.matrix, dtype=np.float32), show_progress=self.show_progress)
        self.model_ = model
        self.user_vectors_ = np.ascontiguousarray(model.user_factors, dtype=np.float32)
        self.item_vectors_ = np.ascontiguousarray(model.item_factors, dtype=np.float32)
        self.gram_ = None

    @classmethod
    def for_fold_in(cls, params: dict, item_vectors: np.ndarray) -> ALSEmbedder:
        model = super().for_fold_in(params, item_vectors)
        model.gram_ = _gram(model.item_vectors_)  # once per served model, not per fold-in
        return model

    def fold_in(self, item_indices: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Solve the ALS user step for one new user against the fixed item factors (``weights``:
        the confidences, as in the training matrix). YᵀY is computed once per model."""
        self._check_fitted()
        if self.gram_ is None:
            self.gram_ = _gram(self.item_vectors_)
        item_indices = np.asarray(item_indices, dtype=np.int64)
        w = np.ones(len(item_indices), np.float32) if weights is None else np.asarray(weights, np.float32)
        return als_user_solve(self.item_vectors_, item_indices, w, self.regularization, self.gram_)

    #: YᵀY of the item factors (float64), set by ``fit`` / ``for_fold_in`` or the first fold-in
    gram_: np.ndarray | None = None


def _gram(item_vectors: np.ndarray) -> np.ndarray:
    Y = np.asarray(item_vectors, dtype=np.float64)
    return Y.T @ Y


def als_user_solve(
    item_vectors: np.ndarray,
    item_indices: np.ndarray,
    confidence: np.ndarray,
    regularization: float,
    gram: np.ndarray | None = None,
) -> np.ndarray:
    """Exact ALS user update: (YᵀY + Yᵤᵀ(Cᵤ−I)Yᵤ + λI) x = Yᵤᵀ Cᵤ p.

    Same solve as implicit's ``recalculate_user``, but over our float32 arrays, so it works for
    any bundle without the implicit model object (e.g. in the API, from memory-mapped vectors).
    Repeated items are summed into one confidence. ``gram`` (YᵀY) may be passed in by callers
    that solve for many users against the same items.
    """
    factors = item_vectors.shape[1]
    if len(item_indices) == 0:
        return np.zeros(factors, np.float32)
    pos, inverse = np.unique(np.asarray(item_indices, np.int64), return_inverse=True)
    # confidence of a repeated item: 1 + Σ (cᵢ − 1)
    c = 1.0 + np.bincount(inverse, weights=np.asarray(confidence, np.float64) - 1.0)
    Yu = np.asarray(item_vectors[pos], dtype=np.float64)
    if gram is None:
        gram = _gram(item_vectors)
    A = gram + (Yu.T * (c - 1.0)) @ Yu + regularization * np.eye(factors)
    return np.linalg.solve(A, Yu.T @ c).astype(np.float32)
