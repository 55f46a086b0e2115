"""Cold-start items: map content vectors into a collaborative model's vector space."""

from __future__ import annotations

import logging

import numpy as np
from sklearn.linear_model import Ridge

logger = logging.getLogger(__name__)


class ContentToCFMapper:
    """Ridge regression from content space to CF space, learned on warm items.

    ``fit(content_vectors_warm, cf_vectors_warm)`` pairs each warm item's content vector (e.g.
    ``TfidfEncoder.item_vectors_``) with its vector in a collaborative model (e.g.
    ``ALSEmbedder.item_vectors_``); ``predict(content_vectors_new)`` gives float32 CF-space
    vectors for items no user has touched yet, so they can be scored against CF user vectors
    and enter collaborative recommendations at once.
    """

    def __init__(self, alpha: float = 1.0, fit_intercept: bool = True) -> None:
        self.alpha = alpha
        self.fit_intercept = fit_intercept

    def get_params(self) -> dict:
        return {"alpha": self.alpha, "fit_intercept": self.fit_intercept}

    def fit(self, content_vectors_warm: np.ndarray, cf_vectors_warm: np.ndarray) -> ContentToCFMapper:
        X = np.asarray(content_vectors_warm, dtype=np.float64)
        Y = np.asarray(cf_vectors_warm, dtype=np.float64)
        if X.ndim != 2 or Y.ndim != 2 or len(X) != len(Y):
            raise ValueError(f"need two 2-d arrays with one row per warm item, got {X.shape} and {Y.shape}")
        self.ridge_ = Ridge(alpha=self.alpha, fit_intercept=self.fit_intercept).fit(X, Y)
        self.n_features_in_ = X.shape[1]
        self.n_outputs_ = Y.shape[1]
        self.score_ = float(self.ridge_.score(X, Y))
        logger.info("content→CF mapper fitted on %d warm items: R²=%.3f", len(X), self.score_)
        return self

    def predict(self, content_vectors_new: np.ndarray) -> np.ndarray:
        if getattr(self, "ridge_", None) is None:
            from recsys.models.base import NotFittedError

            raise NotFittedError("ContentToCFMapper is not fitted; call fit() first")
        X = np.atleast_2d(np.asarray(content_vectors_new, dtype=np.float64))
        return np.ascontiguousarray(self.ridge_.predict(X), dtype=np.float32)
