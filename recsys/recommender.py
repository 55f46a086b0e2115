"""Recommender: pure serving logic over a ModelBundle and a catalog (no HTTP, no SQL).

Given what a user has touched and the request's rules (k, exclusions, category filters), it
returns ranked items with scores. The API is a thin shell around it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from recsys.bundle import ModelBundle
from recsys.index.exact import pairwise_scores, top_k_from_scores

logger = logging.getLogger(__name__)


class UnknownItemError(KeyError):
    def __init__(self, item_id: str) -> None:
        super().__init__(item_id)
        self.item_id = item_id


@dataclass
class ScoredItem:
    item_id: str
    score: float
    title: str = ""
    reason: str | None = None


@dataclass
class RecommendationResult:
    strategy: str
    items: list[ScoredItem] = field(default_factory=list)


@dataclass
class Filters:
    """Business rules applied to every candidate list."""

    exclude_items: Sequence[str] = ()
    include_categories: Sequence[str] = ()
    exclude_categories: Sequence[str] = ()


class Recommender:
    def __init__(self, bundle: ModelBundle, catalog: pd.DataFrame | None = None) -> None:
        self.bundle = bundle
        n = len(bundle.item_ids)
        self.titles = np.full(n, "", dtype=object)
        self.categories: list[list[str]] = [[] for _ in range(n)]
        self.available = np.ones(n, dtype=bool)
        if catalog is not None and len(catalog):
            self.update_catalog(catalog)
        self._popular_order = np.argsort(-np.asarray(bundle.item_popularity), kind="stable")
        alpha = float(bundle.params.get("alpha", 1.0))
        self._alpha = alpha
        self._regularization = float(bundle.params.get("regularization", 0.05))
        self._gram: np.ndarray | None = None

    # ---- catalog -----------------------------------------------------------------------
    def update_catalog(self, catalog: pd.DataFrame) -> None:
        """Refresh titles/categories/availability of the bundle's items from catalog rows."""
        pos = self.bundle.item_pos
        for row in catalog.itertuples(index=False):
            j = pos.get(str(row.item_id))
            if j is None:
                continue
            self.titles[j] = row.title or ""
            self.categories[j] = list(row.categories or [])
            self.available[j] = bool(row.available)

    def set_available(self, item_id: str, available: bool) -> None:
        j = self.bundle.item_pos.get(item_id)
        if j is not None:
            self.available[j] = available

    def _allowed_mask(self, filters: Filters) -> np.ndarray:
        mask = self.available.copy()
        if filters.include_categories:
            inc = set(filters.include_categories)
            mask &= np.fromiter((bool(inc.intersection(c)) for c in self.categories), bool, len(mask))
        if filters.exclude_categories:
            exc = set(filters.exclude_categories)
            mask &= np.fromiter((not exc.intersection(c) for c in self.categories), bool, len(mask))
        for item_id in filters.exclude_items:
            j = self.bundle.item_pos.get(item_id)
            if j is not None:
                mask[j] = False
        return mask

    # ---- requests ----------------------------------------------------------------------
    def recommend_for_user(
        self, user_id: str, history: Sequence[str] = (), k: int = 10, *, exclude_seen: bool = True, filters: Filters = Filters()
    ) -> RecommendationResult:
        """Known user: their trained vector; unseen user with history: fold-in; else popular."""
        seen = self._positions(history)
        row = self.bundle.user_pos.get(user_id)
        if row is not None:
            vector, strategy = np.asarray(self.bundle.user_vectors[row]), "collaborative"
        elif len(seen):
            vector, strategy = self.fold_in(seen), "fold_in"
        else:
            return self.popular(k, filters=filters)
        exclude = seen if exclude_seen else np.empty(0, np.int64)
        return RecommendationResult(strategy, self._search("user", vector, k, exclude, self._allowed_mask(filters)))

    def recommend_for_items(
        self, item_ids: Sequence[str], weights: Sequence[float] | None = None, k: int = 10, *, filters: Filters = Filters()
    ) -> RecommendationResult:
        """Anonymous session: fold the given items in on the fly."""
        pos, w = [], []
        for i, item_id in enumerate(item_ids):
            j = self.bundle.item_pos.get(item_id)
            if j is not None:
                pos.append(j)
                w.append(1.0 if weights is None else float(weights[i]))
        if not pos:
            return self.popular(k, filters=filters)
        seen = np.asarray(pos, np.int64)
        vector = self.fold_in(seen, np.asarray(w))
        return RecommendationResult("fold_in", self._search("user", vector, k, seen, self._allowed_mask(filters)))

    def similar_items(self, item_id: str, k: int = 10, *, filters: Filters = Filters()) -> RecommendationResult:
        j = self.bundle.item_pos.get(item_id)
        if j is None:
            raise UnknownItemError(item_id)
        vector = np.asarray(self.bundle.item_vectors[j])
        role = "item" if "item" in self.bundle.indexes else "user"
        exclude = np.asarray([j], np.int64)
        return RecommendationResult("similar", self._search(role, vector, k, exclude, self._allowed_mask(filters)))

    def popular(self, k: int = 10, *, filters: Filters = Filters()) -> RecommendationResult:
        mask = self._allowed_mask(filters)
        order = self._popular_order[mask[self._popular_order]][:k]
        pop = np.asarray(self.bundle.item_popularity)
        return RecommendationResult("popular", [self._scored(j, float(pop[j])) for j in order])

    # ---- internals ---------------------------------------------------------------------
    def fold_in(self, item_positions: np.ndarray, counts: np.ndarray | None = None) -> np.ndarray:
        """ALS user solve against the fixed item vectors (works from the bundle alone)."""
        Y = np.asarray(self.bundle.item_vectors, dtype=np.float64)
        if self._gram is None:
            self._gram = Y.T @ Y
        pos, inverse = np.unique(np.asarray(item_positions, np.int64), return_inverse=True)
        c = np.ones(len(item_positions)) if counts is None else np.asarray(counts, np.float64)
        confidence = 1.0 + self._alpha * np.bincount(inverse, weights=c)
        Yu = Y[pos]
        A = self._gram + (Yu.T * (confidence - 1.0)) @ Yu + self._regularization * np.eye(Y.shape[1])
        return np.linalg.solve(A, Yu.T @ confidence).astype(np.float32)

    def _positions(self, item_ids: Iterable[str]) -> np.ndarray:
        pos = self.bundle.item_pos
        return np.fromiter((pos[i] for i in item_ids if i in pos), np.int64)

    def _search(self, role: str, vector: np.ndarray, k: int, exclude: np.ndarray, allowed: np.ndarray) -> list[ScoredItem]:
        """Index query with over-fetching until k allowed items are found; exact fallback."""
        index = self.bundle.indexes.get(role)
        n_items = len(self.bundle.item_ids)
        exclude_set = set(exclude.tolist())
        if index is not None:
            n = k + len(exclude_set) + 16
            while True:
                ids, scores = index.query(vector, min(n, n_items))
                keep = [(i, s) for i, s in zip(ids.tolist(), scores.tolist()) if allowed[i] and i not in exclude_set]
                if len(keep) >= k:
                    return [self._scored(i, s) for i, s in keep[:k]]
                if n >= n_items:
                    break
                n *= 4
        # Few allowed items, or no index: score the allowed ones exactly.
        metric = index.metric if index is not None else self.bundle.metric
        scores = pairwise_scores(vector, self.bundle.item_vectors, metric)[0]
        blocked = np.flatnonzero(~allowed)
        if len(exclude):
            blocked = np.concatenate([blocked, exclude])
        ids, top = top_k_from_scores(scores, k, blocked)
        return [self._scored(int(i), float(s)) for i, s in zip(ids, top)]

    def _scored(self, j: int, score: float) -> ScoredItem:
        return ScoredItem(item_id=str(self.bundle.item_ids[j]), score=float(score), title=str(self.titles[j]))
