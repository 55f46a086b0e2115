"""What serving needs to fold a user in through the trained model's own ``fold_in``.

A user with events newer than the model (or a session, or a user the model never saw) gets the
vector the *trained model* would give them: :class:`FoldInSpec` is written into the bundle
manifest at build time (typed, validated on load) and :meth:`FoldInSpec.restore` rebuilds, from
the spec and the bundle's item vectors alone, an instance of the model's own class whose
``fold_in`` serving then calls — ALS's exact user step, BPR's and LightFM's pairwise user step,
EASE's and item-kNN's history row, item2vec's mean, each ensemble member's own fold-in with the
ensemble's weights and per-user standardisation, a content encoder's profile.

Every kind in the registry has a fold-in of its own; the two reference kinds without
information to fold in answer as they do in training: ``popular`` (every user the same vector)
and ``random`` (a random vector).

How events become weights is the training matrix's (``recsys.matrix.weight``): an item touched
``n`` times weighs ``1 + alpha·n`` under ``confidence``, ``n`` under ``none``; ``bm25`` and
``tfidf`` need corpus statistics serving does not have and are given ``alpha·n`` (their
per-item idf is left out).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from recsys.models.base import Embedder

Weighting = Literal["confidence", "bm25", "tfidf", "none"]


class FoldInMember(BaseModel):
    """One ensemble member: its kind, constructor params, blend weight and width of its slice."""

    model_config = ConfigDict(extra="forbid")

    kind: str
    params: dict[str, Any]
    weight: float
    dims: int


class FoldInSpec(BaseModel):
    """The ``fold_in`` entry of a bundle manifest."""

    model_config = ConfigDict(extra="forbid")

    #: registry kind of the trained model
    kind: str
    #: the model's constructor params (for an ensemble: the members are in ``members``)
    params: dict[str, Any]
    #: how the training matrix weighted events (``ModelConfig.weighting`` / ``alpha``)
    weighting: Weighting
    alpha: float
    #: item rows the model was trained on (the bundle's first rows; cold-start items follow)
    trained_items: int
    #: ensemble members in the order of their item-vector columns
    members: list[FoldInMember] = []

    @classmethod
    def of(cls, model: Embedder, weighting: Weighting, alpha: float) -> FoldInSpec:
        """The spec of a fitted model (an ensemble lists its fitted members)."""
        members = []
        if hasattr(model, "models_"):
            members = [
                FoldInMember(kind=m.kind, params=_plain(m.get_params()), weight=float(w), dims=m.item_vectors_.shape[1])
                for m, w in zip(model.models_, model.weights_)
            ]
        params = {} if members else _plain(model.get_params())
        return cls(
            kind=model.kind,
            params=params,
            weighting=weighting,
            alpha=float(alpha),
            trained_items=int(model.item_vectors_.shape[0]),
            members=members,
        )

    def restore(self, item_vectors: np.ndarray) -> Embedder:
        """An instance of the trained model's class that can ``fold_in`` (from bundle vectors)."""
        from recsys.models.registry import model_class

        vectors = np.asarray(item_vectors[: self.trained_items], dtype=np.float32)
        if self.members:
            from recsys.models.ensemble import EnsembleEmbedder

            parts, start = [], 0
            for m in self.members:
                parts.append(model_class(m.kind).for_fold_in(m.params, vectors[:, start : start + m.dims]))
                start += m.dims
            if start != vectors.shape[1]:
                raise ValueError(f"ensemble members span {start} columns, the item vectors have {vectors.shape[1]}")
            return EnsembleEmbedder.from_fitted(parts, [m.weight for m in self.members], with_user_vectors=False)
        return model_class(self.kind).for_fold_in(self.params, vectors)

    def weights(self, counts: np.ndarray) -> np.ndarray:
        """Interaction weights of items touched ``counts`` times, as the training matrix has them."""
        counts = np.asarray(counts, np.float64)
        if self.weighting == "confidence":
            return 1.0 + self.alpha * counts
        if self.weighting == "none":
            return counts
        return self.alpha * counts


def _plain(params: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe constructor params (tuples as lists; numpy scalars as Python numbers)."""
    out = {}
    for k, v in params.items():
        if isinstance(v, np.generic):
            v = v.item()
        elif isinstance(v, tuple):
            v = list(v)
        out[k] = v
    return out
