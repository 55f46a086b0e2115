"""The one model contract every kind in the registry follows (scikit-learn conventions, with
RecTools' template method).

- Hyperparameters are the keyword arguments of ``__init__``, stored under their own names and
  never changed by ``fit`` (``get_params`` / ``set_params``).
- ``fit(data: TrainData) -> self`` is the one way to train: :class:`TrainData` carries the
  interaction matrix with its ids and whatever else a kind can learn from (side features, each
  user's time-ordered items, the catalog). The public ``fit`` checks the input against the
  class's capability flags, calls the kind's ``_fit`` and checks what it learned.
- Learned state lives in attributes ending in ``_``. After ``fit``:
  ``user_vectors_`` (float32, one row per matrix row) and ``item_vectors_`` (float32, one row
  per matrix column), so that ``user_vectors_ @ item_vectors_.T`` ranks as the model does under
  ``metric`` (``dot`` for matrix factorization; content encoders return unit vectors, ``cosine``).
- ``fold_in(item_indices, weights)`` is the user vector *this* model would give a user it has not
  seen; serving rebuilds the model from its bundle (``for_fold_in``) and calls exactly it.

Capability flags are class attributes, so callers ask the model instead of switching on kind
names: ``needs_catalog`` (``fit`` requires ``TrainData.items``), ``uses_side_features`` and
``uses_sequences`` (``fit`` reads them when given; the trainer builds them only then),
``supports_fold_in``, ``reference`` (a baseline every model should beat) and ``metric``.
A composite reads them from its parts: an ensemble uses side features or sequences when one of
its members does (a property of the instance, read as ``model.uses_sequences``).
``tests/test_models.py`` runs the contract over every kind in the registry.
"""

from __future__ import annotations

import inspect
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Self

import numpy as np
import pandas as pd
import scipy.sparse as sp

logger = logging.getLogger(__name__)

ReturningFoldIn = Literal["delta", "afresh"]
RETURNING_FOLD_INS: tuple[ReturningFoldIn, ...] = ("delta", "afresh")


class NotFittedError(RuntimeError):
    pass


@dataclass(frozen=True)
class TrainData:
    """What a model learns from, every part aligned with the interaction matrix.

    ``matrix``: user×item CSR, already weighted (``recsys.matrix.InteractionMatrix``);
    ``user_ids`` / ``item_ids``: the external ids of its rows / columns (needed by kinds that
    align a catalog with the columns); ``item_features`` / ``user_features``: side-feature rows
    per column / row (``recsys.features``); ``sequences``: each row's item columns in time order;
    ``items``: the catalog frame (``item_id``, ``title``, ``description``, ``categories``: the
    Dataset contract) that content encoders read.
    """

    matrix: sp.csr_matrix
    user_ids: np.ndarray | None = None
    item_ids: np.ndarray | None = None
    item_features: sp.csr_matrix | None = None
    user_features: sp.csr_matrix | None = None
    sequences: Sequence[np.ndarray] | None = None
    items: pd.DataFrame | None = None

    def __post_init__(self) -> None:
        if not sp.issparse(self.matrix) or self.matrix.ndim != 2:
            raise TypeError(f"TrainData.matrix must be a 2-d scipy sparse matrix, got {type(self.matrix).__name__}")
        object.__setattr__(self, "matrix", sp.csr_matrix(self.matrix))
        n_users, n_items = self.matrix.shape
        for name, ids, n in (("user_ids", self.user_ids, n_users), ("item_ids", self.item_ids, n_items)):
            if ids is not None and len(ids) != n:
                raise ValueError(f"TrainData.{name} has {len(ids)} ids for {n} matrix {name[:4]}s")
        for name, rows, n in (
            ("item_features", self.item_features, n_items),
            ("user_features", self.user_features, n_users),
        ):
            if rows is not None and rows.shape[0] != n:
                raise ValueError(f"TrainData.{name} has {rows.shape[0]} rows, the matrix has {n} {name[:4]}s")
        if self.sequences is not None and len(self.sequences) != n_users:
            raise ValueError(f"TrainData.sequences has {len(self.sequences)} sequences for {n_users} users")
        if self.items is not None and "item_id" not in self.items:
            raise ValueError("TrainData.items must have an item_id column")

    @classmethod
    def catalog_only(cls, items: pd.DataFrame, item_ids: Sequence[str]) -> TrainData:
        """The catalog with no interactions (a matrix of no users over ``item_ids``): what a
        content encoder fits on when nothing may leak from a split."""
        return cls(sp.csr_matrix((0, len(item_ids)), dtype=np.float32), item_ids=np.asarray(item_ids), items=items)

    @property
    def shape(self) -> tuple[int, int]:
        return self.matrix.shape


class Embedder(ABC):
    #: registry name of the model kind, e.g. "als"
    kind: ClassVar[str] = ""
    #: "dot" | "cosine" | "euclidean" | "manhattan" | "hamming"
    metric: ClassVar[str] = "dot"
    #: ``fit`` requires ``TrainData.items`` (the catalog): content encoders
    needs_catalog: ClassVar[bool] = False
    #: ``fit`` reads ``TrainData.item_features`` / ``user_features`` when given
    uses_side_features: ClassVar[bool] = False
    #: ``fit`` reads ``TrainData.sequences`` when given
    uses_sequences: ClassVar[bool] = False
    #: ``fold_in`` gives the vector of a user the model has not seen
    supports_fold_in: ClassVar[bool] = False
    #: a reference recommender (popularity, random, item-kNN), not a model to search
    reference: ClassVar[bool] = False
    #: how serving gives a trained user with newer events their vector (recsys.recommender):
    #: ``delta`` — the trained vector plus what the new events change in ``fold_in``;
    #: ``afresh`` — ``fold_in`` of the whole history. Chosen per kind by
    #: bench/foldin_movielens.py (docs/foldin.md).
    returning_fold_in: ClassVar[ReturningFoldIn] = "delta"

    def get_params(self) -> dict[str, Any]:
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {n: getattr(self, n) for n in names}

    def set_params(self, **params: Any) -> Self:
        for k, v in params.items():
            if k not in self.get_params():
                raise ValueError(f"{type(self).__name__} has no parameter {k!r}")
            setattr(self, k, v)
        return self

    def fit(self, data: TrainData) -> Self:
        """Learn ``user_vectors_`` / ``item_vectors_`` from ``data``; returns the model."""
        if not isinstance(data, TrainData):
            raise TypeError(f"{type(self).__name__}.fit takes a TrainData, got {type(data).__name__}")
        if self.needs_catalog and data.items is None:
            raise ValueError(f"{self.kind} is a content encoder: fit needs TrainData.items (the catalog)")
        self._fit(data)
        self._check_learned(data)
        return self

    @abstractmethod
    def _fit(self, data: TrainData) -> None:
        """The kind's training: set the learned ``*_`` attributes from ``data``."""

    def _check_learned(self, data: TrainData) -> None:
        items, users = self.item_vectors_, self.user_vectors_
        if items is None:  # item-kNN past its vector-form size answers through recommend() only
            return
        n_users, n_items = data.shape
        if items.dtype != np.float32 or items.shape[0] != n_items:
            raise RuntimeError(
                f"{self.kind}: item_vectors_ {items.dtype} {items.shape}, expected {n_items} float32 rows"
            )
        if users is not None and (users.dtype != np.float32 or users.shape != (n_users, items.shape[1])):
            raise RuntimeError(
                f"{self.kind}: user_vectors_ {users.dtype} {users.shape}, expected float32 ({n_users}, {items.shape[1]})"
            )

    def fold_in(self, item_indices: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """A user vector for a user the model has not seen, from the items they touched."""
        raise NotImplementedError(f"{type(self).__name__} cannot fold in new users")

    @classmethod
    def for_fold_in(cls, params: dict[str, Any], item_vectors: np.ndarray) -> Self:
        """A model of this class, with ``params``, that can ``fold_in`` against trained
        ``item_vectors`` (serving rebuilds it from the bundle: recsys.models.foldin)."""
        model = cls(**params)
        model.item_vectors_ = np.ascontiguousarray(item_vectors, dtype=np.float32)
        return model

    def _check_fitted(self) -> None:
        if getattr(self, "item_vectors_", None) is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit() first")
