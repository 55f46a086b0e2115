"""User×item interaction matrix with stable id↔index maps and confidence weighting."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

logger = logging.getLogger(__name__)

WEIGHTINGS = ("confidence", "bm25", "tfidf", "none")


@dataclass
class InteractionMatrix:
    """CSR matrix of shape (n_users, n_items) plus the external ids of its rows and columns.

    ``user_ids[i]`` / ``item_ids[j]`` are the external string ids of row i / column j. The
    order is sorted by id, so two matrices built from overlapping data agree on shared ids.
    """

    matrix: sp.csr_matrix
    user_ids: np.ndarray
    item_ids: np.ndarray

    @classmethod
    def from_events(
        cls,
        events: pd.DataFrame,
        *,
        user_ids: np.ndarray | None = None,
        item_ids: np.ndarray | None = None,
        weighting: str = "confidence",
        alpha: float = 1.0,
        value_column: str = "value",
        bm25_k1: float = 100.0,
        bm25_b: float = 0.8,
    ) -> "InteractionMatrix":
        """Aggregate events into a weighted matrix.

        Values of repeated (user, item) pairs are summed. ``confidence`` gives
        ``1 + alpha * value`` (Hu, Koren & Volinsky); ``bm25``/``tfidf`` apply implicit's
        weighting to the summed values. Passing ``user_ids``/``item_ids`` fixes the index
        space (rows/columns of unknown ids are dropped and counted in the log).
        """
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        users = pd.Categorical(events["user_id"].astype(str), categories=_categories(events["user_id"], user_ids))
        items = pd.Categorical(events["item_id"].astype(str), categories=_categories(events["item_id"], item_ids))
        rows, cols = users.codes, items.codes
        keep = (rows >= 0) & (cols >= 0)
        if not keep.all():
            logger.info("dropped %d events with ids outside the fixed index space", int((~keep).sum()))
        values = events[value_column].to_numpy(dtype=np.float32) if value_column in events else np.ones(len(events), np.float32)
        shape = (len(users.categories), len(items.categories))
        raw = sp.coo_matrix((values[keep], (rows[keep], cols[keep])), shape=shape).tocsr()
        raw.sum_duplicates()
        return cls(
            matrix=weight(raw, weighting, alpha=alpha, bm25_k1=bm25_k1, bm25_b=bm25_b),
            user_ids=np.asarray(users.categories, dtype=object),
            item_ids=np.asarray(items.categories, dtype=object),
        )

    @property
    def shape(self) -> tuple[int, int]:
        return self.matrix.shape

    def user_index(self) -> dict[str, int]:
        return {u: i for i, u in enumerate(self.user_ids)}

    def item_index(self) -> dict[str, int]:
        return {it: i for i, it in enumerate(self.item_ids)}


def _categories(column: pd.Series, fixed: np.ndarray | None) -> pd.Index:
    if fixed is not None:
        return pd.Index(np.asarray(fixed, dtype=object).astype(str))
    return pd.Index(np.sort(pd.unique(column.astype(str))))


def weight(raw: sp.csr_matrix, weighting: str, *, alpha: float = 1.0, bm25_k1: float = 100.0, bm25_b: float = 0.8) -> sp.csr_matrix:
    """Confidence weights for implicit-feedback models, from summed raw values."""
    if weighting == "none":
        out = raw.astype(np.float32)
    elif weighting == "confidence":
        out = raw.astype(np.float32, copy=True)
        out.data = 1.0 + alpha * out.data
    else:
        from implicit.nearest_neighbours import bm25_weight, tfidf_weight

        # implicit weights the rows of an item×user matrix: transpose in and out.
        t = raw.T.tocoo()
        w = bm25_weight(t, K1=bm25_k1, B=bm25_b) if weighting == "bm25" else tfidf_weight(t)
        out = sp.csr_matrix(w.T, dtype=np.float32)
        if alpha != 1.0:
            out.data *= alpha
    out.sort_indices()
    return out.tocsr()
