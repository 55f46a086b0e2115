"""EASE: embarrassingly shallow autoencoder (Steck 2019), a linear item-item model, as an Embedder.

EASE learns an item×item weight matrix ``B`` with a zero diagonal in closed form:

    P = (XᵀX + λI + p/(1−p)·diag(XᵀX))⁻¹,   B = I − P · diag(1 / diag(P))

``dropout`` p > 0 adds the emphasized-denoising term of Steck's DLAE (NeurIPS 2020): the
closed form of training on inputs with items dropped at rate p, a per-item penalty that grows
with the item's popularity; p = 0 is plain EASE.

and scores user u's items by ``x_u B`` (``x_u`` the user's row of the interaction matrix). That is
a dot product, so the model is exported as vectors: ``user_vectors_ = X`` (one column per item)
and ``item_vectors_ = Bᵀ``, ``metric = "dot"``; ``user_vectors_ @ item_vectors_.T = X B``.
The vectors are ``n_items`` wide, so EASE is meant for catalogues of up to a few ten thousand
items (``max_items`` guards the O(n_items²) memory and O(n_items³) solve).
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp

from recsys.models.base import Embedder, TrainData

logger = logging.getLogger(__name__)


class EASEEmbedder(Embedder):
    """Closed-form linear item-item autoencoder.

    Parameters
    ----------
    l2 : ridge strength λ on ``B`` (Steck's λ; a few hundred for MovieLens-sized data).
    binarize : fit on 0/1 interactions (the paper's setting) rather than the matrix weights.
    max_items : refuse catalogues wider than this (memory is 8·n_items² bytes).
    dropout : DLAE input-dropout rate p in [0, 1) (0 = EASE).
    """

    kind = "ease"
    metric = "dot"
    supports_fold_in = True
    #: the history row: delta and afresh are the same vector, afresh costs one fold-in
    returning_fold_in = "afresh"

    def __init__(self, l2: float = 500.0, binarize: bool = True, max_items: int = 30_000, dropout: float = 0.0) -> None:
        self.l2 = l2
        self.binarize = binarize
        self.max_items = max_items
        self.dropout = dropout

    def _fit(self, data: TrainData) -> None:
        if self.l2 <= 0:
            raise ValueError(f"l2 must be > 0, got {self.l2}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        X = sp.csr_matrix(data.matrix, dtype=np.float64)
        X.eliminate_zeros()
        n_users, n_items = X.shape
        if n_items > self.max_items:
            raise ValueError(f"EASE needs an n_items² matrix; {n_items} items exceed max_items={self.max_items}")
        if self.binarize:
            X.data = np.ones_like(X.data)
        G = (X.T @ X).toarray()
        G[np.diag_indices(n_items)] += self.l2 + self.dropout / (1.0 - self.dropout) * np.diag(G)
        P = np.linalg.inv(G)
        B = -P / np.diag(P)[None, :]
        B[np.diag_indices(n_items)] = 0.0
        self.B_ = B.astype(np.float32)
        self.user_vectors_ = np.ascontiguousarray(X.toarray(), dtype=np.float32)
        self.item_vectors_ = np.ascontiguousarray(self.B_.T)
        logger.info("EASE fitted: %d users, %d items, l2=%g", n_users, n_items, self.l2)

    def fold_in(self, item_indices: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """A new user's vector is their interaction row (EASE has no user parameters)."""
        self._check_fitted()
        item_indices = np.asarray(item_indices, dtype=np.int64)
        x = np.zeros(self.item_vectors_.shape[1], np.float32)
        if len(item_indices):
            w = (
                np.ones(len(item_indices), np.float32)
                if (weights is None or self.binarize)
                else np.asarray(weights, np.float32)
            )
            np.add.at(x, item_indices, w)
            if self.binarize:
                x = np.minimum(x, 1.0)
        return x
