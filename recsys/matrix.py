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
    ) -> InteractionMatrix:
        """Aggregate events into a weighted matrix.

        Values of repeated (user, item) pairs are summed. ``confidence`` gives
        ``1 + alpha * value`` (Hu, Koren & Volinsky); ``bm25``/``tfidf`` apply implicit's
        weighting to the summed values. Passing ``user_ids``/``item_ids`` fixes the index
        space (rows/columns of unknown ids are dropped and counted in the log).
        """
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        user_index, rows = _encode(events["user_id"], user_ids)
        item_index, cols = _encode(events["item_id"], item_ids)
        keep = (rows >= 0) & (cols >= 0)
        if not keep.all():
            logger.info("dropped %d events with ids outside the fixed index space", int((~keep).sum()))
        values = (
            events[value_column].to_numpy(dtype=np.float32)
            if value_column in events
            else np.ones(len(events), np.float32)
        )
        shape = (len(user_index), len(item_index))
        raw = sp.coo_matrix((values[keep], (rows[keep], cols[keep])), shape=shape).tocsr()
        raw.sum_duplicates()
        return cls(
            matrix=weight(raw, weighting, alpha=alpha, bm25_k1=bm25_k1, bm25_b=bm25_b),
            user_ids=np.asarray(user_index, dtype=object),
            item_ids=np.asarray(item_index, dtype=object),
        )

    @property
    def shape(self) -> tuple[int, int]:
        return self.matrix.shape

    def user_index(self) -> dict[str, int]:
        return {u: i for i, u in enumerate(self.user_ids)}

    def item_index(self) -> dict[str, int]:
        return {it: i for i, it in enumerate(self.item_ids)}


def _encode(column: pd.Series, fixed: np.ndarray | None) -> tuple[pd.Index, np.ndarray]:
    """Sorted id index and each row's position in it (−1 for ids outside a fixed index).

    Categorical columns (what the feature store's snapshot returns) are encoded from their
    codes, without touching millions of strings again.
    """
    categorical = isinstance(column.dtype, pd.CategoricalDtype)
    if fixed is not None:
        index = pd.Index(np.asarray(fixed, dtype=object).astype(str))
        if categorical:
            category_pos = index.get_indexer(column.cat.categories.astype(str))
            codes = column.cat.codes.to_numpy()
            return index, np.where(codes >= 0, category_pos[codes], -1)
        return index, index.get_indexer(column.astype(str))
    if categorical:
        categories = np.asarray(column.cat.categories.astype(str), dtype=object)
        codes = column.cat.codes.to_numpy()
        used = np.flatnonzero(np.bincount(codes[codes >= 0], minlength=len(categories)))
        order = np.argsort(categories[used], kind="stable")
        position = np.full(len(categories), -1, dtype=np.int64)
        position[used[order]] = np.arange(len(used))
        return pd.Index(categories[used][order]), np.where(codes >= 0, position[codes], -1)
    codes, uniques = pd.factorize(column.astype(str), sort=True)
    return pd.Index(np.asarray(uniques, dtype=object)), codes


def weight(
    raw: sp.csr_matrix, weighting: str, *, alpha: float = 1.0, bm25_k1: float = 100.0, bm25_b: float = 0.8
) -> sp.csr_matrix:
    """Confidence weights for implicit-feedback models, from summed raw values."""
    if weighting == "none":
        out = raw.astype(np.float32)
    elif weighting == "confidence":
        out = raw.astype(np.float32, copy=True)
        out.data = 1.0 + alpha * out.data
    else:
        from implicit.nearest_neighbours import bm25_weight, tfidf_weight

        # Rows are users (documents), columns items (terms): idf down-weights popular items.
        w = bm25_weight(raw.tocoo(), K1=bm25_k1, B=bm25_b) if weighting == "bm25" else tfidf_weight(raw.tocoo())
        out = sp.csr_matrix(w, dtype=np.float32)
        if alpha != 1.0:
            out.data *= alpha
    out.sort_indices()
    return out.tocsr()
