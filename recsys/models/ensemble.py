"""Score-level ensemble of embedders, served as one dot-product space.

The blend ``Σ wᵢ · sᵢ(u, ·) / σᵢ(u)`` — each member's scores standardized per user, then
weighted — ranks exactly like a dot product between

    user vector  [w₁/σ₁(u) · u₁, w₂/σ₂(u) · u₂, …]   and   item vector  [v₁, v₂, …]

(the per-user mean of a member's scores is a constant for that user and drops out of the
ranking). σᵢ(u)² = uᵢᵀ Cov(Vᵢ) uᵢ is the variance of the member's scores over the catalog,
computed in closed form. So an ensemble of, say, ALS and LightFM with content features is served
from a single Annoy ``dot`` index with no extra work per request.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from recsys.models.base import Embedder, TrainData

logger = logging.getLogger(__name__)


def score_std(user_vectors: np.ndarray, item_vectors: np.ndarray) -> np.ndarray:
    """Standard deviation over items of each user's dot-product scores: in closed form for
    many users, from the scores themselves for a few (a fold-in: one product with the items
    instead of a dims×dims covariance, which is catalog-sized for EASE and item-kNN)."""
    if len(user_vectors) * 4 < item_vectors.shape[1]:
        scores = np.asarray(user_vectors, np.float64) @ np.asarray(item_vectors, np.float64).T
        return np.maximum(scores.std(axis=1), 1e-9)
    V = np.asarray(item_vectors, np.float64)
    cov = np.cov(V, rowvar=False, bias=True)
    U = np.asarray(user_vectors, np.float64)
    # (U·cov)·U row by row: one BLAS product (einsum's three-operand form loops in C without
    # it, n·d² multiply-adds: 20+ s at 2,000 users × 1,000 dims)
    return np.sqrt(np.maximum(((U @ np.atleast_2d(cov)) * U).sum(axis=1), 1e-18))


class EnsembleEmbedder(Embedder):
    """``members``: list of ``{"kind": ..., "params": {...}, "weight": w}``; dot-metric kinds only.

    Every member is fitted on the same ``TrainData``; the ensemble reads side features or
    sequences when one of its members does (``uses_side_features`` / ``uses_sequences`` are
    its members' flags, so the trainer builds them only then)."""

    kind = "ensemble"
    metric = "dot"
    supports_fold_in = True

    @property
    def uses_side_features(self) -> bool:
        return any(_member_class(m).uses_side_features for m in self.members)

    @property
    def uses_sequences(self) -> bool:
        return any(_member_class(m).uses_sequences for m in self.members)

    def __init__(self, members: list[dict[str, Any]] | None = None) -> None:
        self.members = members or [
            {"kind": "als", "params": {}, "weight": 0.7},
            {"kind": "lightfm", "params": {}, "weight": 0.3},
        ]

    def _fit(self, data: TrainData) -> None:
        from recsys.models.registry import make_model

        if not self.members:
            raise ValueError("an ensemble needs at least one member")
        self.models_: list[Embedder] = []
        self.weights_ = np.array([float(m.get("weight", 1.0)) for m in self.members])
        for spec in self.members:
            model = make_model(spec["kind"], **spec.get("params", {}))
            if model.metric != "dot":
                raise ValueError(f"ensemble members must rank by dot product; {spec['kind']!r} uses {model.metric}")
            model.fit(data)
            self.models_.append(model)
            logger.info("ensemble member %s fitted (%d dims)", spec["kind"], model.item_vectors_.shape[1])
        self.item_vectors_ = np.ascontiguousarray(np.hstack([m.item_vectors_ for m in self.models_]), np.float32)
        self.user_vectors_ = self._combine([m.user_vectors_ for m in self.models_])

    @classmethod
    def from_fitted(
        cls, models: list[Embedder], weights: list[float], *, with_user_vectors: bool = True
    ) -> EnsembleEmbedder:
        """An ensemble of already-fitted members (e.g. to try several weightings cheaply);
        ``with_user_vectors=False`` for members that have item vectors only (serving's fold-in,
        recsys.models.foldin)."""
        ensemble = cls([{"kind": m.kind, "params": m.get_params(), "weight": w} for m, w in zip(models, weights)])
        ensemble.models_, ensemble.weights_ = list(models), np.asarray(weights, float)
        ensemble.item_vectors_ = np.ascontiguousarray(np.hstack([m.item_vectors_ for m in models]), np.float32)
        ensemble.user_vectors_ = ensemble._combine([m.user_vectors_ for m in models]) if with_user_vectors else None
        return ensemble

    def _combine(self, user_parts: list[np.ndarray]) -> np.ndarray:
        parts = []
        for w, model, u in zip(self.weights_, self.models_, user_parts):
            u = np.atleast_2d(u)
            parts.append(u * (w / score_std(u, model.item_vectors_))[:, None])
        return np.ascontiguousarray(np.hstack(parts), np.float32)

    def fold_in(self, item_indices: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        self._check_fitted()
        return self._combine([m.fold_in(item_indices, weights) for m in self.models_])[0]


def _member_class(member: dict[str, Any]) -> type[Embedder]:
    from recsys.models.registry import model_class

    return model_class(member["kind"])
