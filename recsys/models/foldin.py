"""What serving needs to fold a user in through the trained model's own ``fold_in``.

A bundle records a :class:`FoldInSpec` in its manifest (``info["fold_in"]``): the model's kind
and hyperparameters, how training weighted interactions, how many of the bundle's item rows the
model was trained on (cold-start rows come after them) and, for an ensemble, each member's
width. :func:`serving_model` rebuilds the model from it and the bundle's item vectors — all that
every kind's ``fold_in`` reads — so a fresh user is folded in exactly as that model does it
(ALS's user solve, BPR's and LightFM's pairwise solve, EASE's and item-kNN's history row,
item2vec's mean, an ensemble member by member with its score scales).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from recsys.models.base import Embedder
from recsys.models.registry import model_class, param_names

logger = logging.getLogger(__name__)

WEIGHTINGS = ("confidence", "none", "bm25", "tfidf")


@dataclass(frozen=True)
class FoldInSpec:
    kind: str
    #: the model's constructor parameters (defaults included)
    params: dict[str, Any]
    #: the training matrix's weighting and alpha (recsys.matrix.weight)
    weighting: str
    alpha: float
    #: the model was trained on the bundle's first ``n_items`` item rows
    n_items: int
    #: an ensemble's member widths, in member order (their item vectors side by side)
    member_dims: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"fold-in weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")

    @classmethod
    def for_model(cls, kind: str, params: dict[str, Any], weighting: str, alpha: float, model: Any) -> FoldInSpec:
        """The spec of a fitted model (``model`` gives item rows and, for ensembles, member widths)."""
        accepted = set(param_names(kind))
        full = {k: v for k, v in _constructor_params(kind, params).items() if k in accepted}
        members = getattr(model, "models_", None) or ()
        return cls(
            kind=kind,
            params=full,
            weighting=weighting,
            alpha=float(alpha),
            n_items=int(model.item_vectors_.shape[0]),
            member_dims=tuple(int(m.item_vectors_.shape[1]) for m in members),
        )

    def to_manifest(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_manifest(cls, data: dict[str, Any]) -> FoldInSpec:
        return cls(**{**data, "member_dims": tuple(data.get("member_dims", ()))})

    def weights(self, counts: np.ndarray) -> np.ndarray:
        """Interaction weights of a folded-in user's items from how often each was touched, as
        training weighted its matrix (bm25/tfidf need corpus statistics: scaled counts)."""
        counts = np.asarray(counts, np.float64)
        if self.weighting == "confidence":
            return 1.0 + self.alpha * counts
        if self.weighting == "none":
            return counts
        return self.alpha * counts


def _constructor_params(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` completed with the constructor's defaults (JSON-able values only)."""
    model = model_class(kind)(**{k: v for k, v in params.items() if k in set(param_names(kind))})
    return {
        k: v for k, v in model.get_params().items() if isinstance(v, (str, int, float, bool, list, dict, type(None)))
    }


def serving_model(spec: FoldInSpec, item_vectors: np.ndarray) -> Embedder:
    """The model ``spec`` describes, holding the trained rows of ``item_vectors``: ready to ``fold_in``."""
    trained = np.asarray(item_vectors[: spec.n_items], np.float32)
    return model_class(spec.kind).for_fold_in(spec.params, trained, spec.member_dims)
