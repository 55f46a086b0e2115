"""The one estimator interface every embedder follows (scikit-learn conventions).

Hyperparameters are set in ``__init__`` and never changed by ``fit``; learned state lives in
attributes ending in ``_``. After ``fit``:

- ``user_vectors_``: float32 array (n_users, dims), rows aligned with the training matrix;
- ``item_vectors_``: float32 array (n_items, dims), rows aligned with its columns;
- ``metric``: the metric under which nearest neighbours equal the model's own ranking
  (``dot`` for matrix factorization; content encoders return unit vectors, ``cosine``).

``score(user_vector, item_vectors)`` is the model's ranking score for one user, so that
``argsort(-score)`` is the model's ranking; ``fold_in`` gives a vector for an unseen user.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

ReturningFoldIn = Literal["delta", "afresh"]
RETURNING_FOLD_INS: tuple[ReturningFoldIn, ...] = ("delta", "afresh")


class NotFittedError(RuntimeError):
    pass


class Embedder(ABC):
    #: registry name of the model kind, e.g. "als"
    kind: str = ""
    #: "dot" | "cosine" | "euclidean" | "manhattan" | "hamming"
    metric: str = "dot"
    #: how serving gives a trained user with newer events their vector (recsys.recommender):
    #: ``delta`` — the trained vector plus what the new events change in ``fold_in``;
    #: ``afresh`` — ``fold_in`` of the whole history. Chosen per kind by
    #: bench/foldin_movielens.py (docs/foldin.md).
    returning_fold_in: ReturningFoldIn = "delta"

    def get_params(self) -> dict[str, Any]:
        import inspect

        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {n: getattr(self, n) for n in names}

    def set_params(self, **params: Any) -> Embedder:
        for k, v in params.items():
            if k not in self.get_params():
                raise ValueError(f"{type(self).__name__} has no parameter {k!r}")
            setattr(self, k, v)
        return self

    @abstractmethod
    def fit(self, matrix: sp.csr_matrix, item_features: Any = None, user_features: Any = None) -> Embedder:
        """Learn embeddings from a weighted user×item CSR matrix."""

    def fold_in(self, item_indices: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """A user vector for a user the model has not seen, from the items they touched."""
        raise NotImplementedError(f"{type(self).__name__} cannot fold in new users")

    @classmethod
    def for_fold_in(cls, params: dict[str, Any], item_vectors: np.ndarray) -> Embedder:
        """A model of this class, with ``params``, that can ``fold_in`` against trained
        ``item_vectors`` (serving rebuilds it from the bundle: recsys.models.foldin)."""
        model = cls(**params)
        model.item_vectors_ = np.ascontiguousarray(item_vectors, dtype=np.float32)
        return model

    def _check_fitted(self) -> None:
        if getattr(self, "item_vectors_", None) is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit() first")
