"""Recommender: pure serving logic over a ModelBundle and a catalog (no HTTP, no SQL).

Given what a user has touched and the request's rules — k and offset, exclusions, category and
attribute filters, collaborative/content/hybrid mode, blend weights or rank fusion, MMR
diversity — it returns ranked items with scores and a reason each. The API is a thin shell.

Spaces: the bundle's own vectors are the collaborative (CF) space, searched with the model's
metric through the ``user`` index and with cosine through the ``item`` index. When the bundle
carries content vectors (``extras["content"]``) there is a content space too (cosine,
``content`` index), which makes content and hybrid modes, text search and cold-start items
possible.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from recsys.bundle import ModelBundle
from recsys.hybrid import blend
from recsys.index.exact import pairwise_scores, top_k_from_scores
from recsys.models.als import als_user_solve

logger = logging.getLogger(__name__)

MODES = ("collaborative", "content", "hybrid")


class UnknownItemError(KeyError):
    def __init__(self, item_id: str) -> None:
        super().__init__(item_id)
        self.item_id = item_id


class SearchUnavailable(RuntimeError):
    """The served bundle has no content encoder (text search, content mode, new items)."""


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
    mode: str | None = None


@dataclass(frozen=True)
class Filters:
    """Business rules applied to every candidate list."""

    exclude_items: Sequence[str] = ()
    include_categories: Sequence[str] = ()
    exclude_categories: Sequence[str] = ()
    #: item attribute key → allowed values (an item must match every key)
    include_attributes: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    #: item attribute key → forbidden values
    exclude_attributes: Mapping[str, Sequence[Any]] = field(default_factory=dict)


NO_FILTERS = Filters()


class Recommender:
    def __init__(self, bundle: ModelBundle, catalog: pd.DataFrame | None = None) -> None:
        self.bundle = bundle
        self.item_ids: list[str] = [str(i) for i in bundle.item_ids]
        self.item_pos: dict[str, int] = dict(bundle.item_pos)
        self.cf_vectors = np.asarray(bundle.item_vectors, dtype=np.float32)
        content = bundle.extras.get("content")
        self.content_vectors = None if content is None else np.asarray(content, dtype=np.float32)
        self.popularity = np.asarray(bundle.item_popularity, dtype=np.float64)
        n = len(self.item_ids)
        self.titles = np.full(n, "", dtype=object)
        self.categories: list[frozenset[str]] = [frozenset() for _ in range(n)]
        self.attributes: list[dict] = [{} for _ in range(n)]
        self.available = np.ones(n, dtype=bool)
        hybrid = bundle.info.get("hybrid", {})
        self.default_mode = hybrid.get("default_mode", "hybrid" if self.content_vectors is not None else "collaborative")
        self.default_weights = tuple(hybrid.get("weights", (0.5, 0.5)))
        self.default_fusion = hybrid.get("fusion", "weighted")
        self._alpha = float(bundle.params.get("alpha", 1.0))
        self._regularization = float(bundle.params.get("regularization", 0.05))
        self._gram: np.ndarray | None = None
        self._cf_unit: np.ndarray | None = None
        self._lock = threading.Lock()  # guards in-place catalog growth (add_items)
        if catalog is not None and len(catalog):
            self.update_catalog(catalog)

    @property
    def modes(self) -> tuple[str, ...]:
        return MODES if self.content_vectors is not None else ("collaborative",)

    # ---- catalog -----------------------------------------------------------------------
    def update_catalog(self, catalog: pd.DataFrame) -> None:
        """Refresh titles, categories, attributes and availability from catalog rows."""
        cols = set(catalog.columns)
        for row in catalog.to_dict("records"):
            j = self.item_pos.get(str(row["item_id"]))
            if j is None:
                continue
            if "title" in cols:
                self.titles[j] = row["title"] or ""
            if "categories" in cols:
                self.categories[j] = frozenset(row["categories"] or ())
            if "attributes" in cols:
                self.attributes[j] = dict(row["attributes"] or {})
            if "available" in cols:
                self.available[j] = bool(row["available"])

    def set_available(self, item_id: str, available: bool) -> None:
        j = self.item_pos.get(item_id)
        if j is not None:
            self.available[j] = available

    def add_items(self, items: pd.DataFrame) -> list[str]:
        """Cold-start items: encode their content, predict their CF vectors, make them servable.

        Needs a bundle trained with a content encoder (and the content→CF mapper). New items
        are scored exactly (they are not in the Annoy files), which stays cheap for the
        handful of items added between two trainings.
        """
        encoder, mapper = self.bundle.objects.get("text_encoder"), self.bundle.objects.get("cf_mapper")
        if encoder is None or mapper is None or self.content_vectors is None:
            raise SearchUnavailable("this model has no content encoder: new items can't be served before the next training")
        new = items[~items["item_id"].astype(str).isin(self.item_pos)]
        if new.empty:
            self.update_catalog(items)
            return []
        content = encoder.transform(new).astype(np.float32)
        cf = mapper.predict(content).astype(np.float32)
        with self._lock:
            start = len(self.item_ids)
            ids = new["item_id"].astype(str).tolist()
            self.item_ids.extend(ids)
            self.item_pos.update({item_id: start + i for i, item_id in enumerate(ids)})
            self.cf_vectors = np.vstack([self.cf_vectors, cf])
            self.content_vectors = np.vstack([self.content_vectors, content])
            self.popularity = np.concatenate([self.popularity, np.zeros(len(ids))])
            self.titles = np.concatenate([self.titles, np.full(len(ids), "", dtype=object)])
            self.categories.extend(frozenset() for _ in ids)
            self.attributes.extend({} for _ in ids)
            self.available = np.concatenate([self.available, np.ones(len(ids), bool)])
            self._gram = self._cf_unit = None
        self.update_catalog(items)
        logger.info("added %d cold-start items", len(ids))
        return ids

    def _n_indexed(self) -> int:
        return len(self.bundle.item_ids)

    def _allowed_mask(self, filters: Filters) -> np.ndarray:
        mask = self.available.copy()
        n = len(mask)
        if filters.include_categories:
            inc = set(filters.include_categories)
            mask &= np.fromiter((not inc.isdisjoint(c) for c in self.categories), bool, n)
        if filters.exclude_categories:
            exc = set(filters.exclude_categories)
            mask &= np.fromiter((exc.isdisjoint(c) for c in self.categories), bool, n)
        for key, values in filters.include_attributes.items():
            allowed = {str(v) for v in values}
            mask &= np.fromiter((str(a.get(key)) in allowed for a in self.attributes), bool, n)
        for key, values in filters.exclude_attributes.items():
            forbidden = {str(v) for v in values}
            mask &= np.fromiter((str(a.get(key)) not in forbidden for a in self.attributes), bool, n)
        for item_id in filters.exclude_items:
            j = self.item_pos.get(item_id)
            if j is not None:
                mask[j] = False
        return mask

    # ---- requests ----------------------------------------------------------------------
    def recommend_for_user(
        self,
        user_id: str,
        history: Sequence[str] = (),
        k: int = 10,
        *,
        offset: int = 0,
        exclude_seen: bool = True,
        filters: Filters = NO_FILTERS,
        mode: str | None = None,
        weights: Sequence[float] | None = None,
        fusion: str | None = None,
        diversity: float | None = None,
        refresh: bool = False,
    ) -> RecommendationResult:
        """Known user: the trained vector (or a fold-in from ``history`` with ``refresh``, so
        fresh events count at once); unseen user with history: fold-in; else popular."""
        mode = self._mode(mode)
        seen = self._positions(history)
        row = self.bundle.user_pos.get(user_id)
        if row is None and len(seen) == 0:
            return self.popular(k, offset=offset, filters=filters)
        if row is not None and not refresh:
            cf_vector, strategy = np.asarray(self.bundle.user_vectors[row], np.float32), "collaborative"
        elif len(seen):
            cf_vector, strategy = self.fold_in(seen), "fold_in"
        else:
            cf_vector, strategy = np.asarray(self.bundle.user_vectors[row], np.float32), "collaborative"
        exclude = seen if exclude_seen else np.empty(0, np.int64)
        items = self._rank(mode, cf_vector, seen, k, offset, exclude, filters, weights, fusion, diversity)
        return RecommendationResult(strategy if mode == "collaborative" else mode, items, mode)

    def recommend_for_items(
        self,
        item_ids: Sequence[str],
        weights: Sequence[float] | None = None,
        k: int = 10,
        *,
        offset: int = 0,
        filters: Filters = NO_FILTERS,
        mode: str | None = None,
        blend: Sequence[float] | None = None,
        fusion: str | None = None,
        diversity: float | None = None,
    ) -> RecommendationResult:
        """Anonymous session: fold the given items in on the fly (weights repeat an item)."""
        mode = self._mode(mode)
        pos, w = [], []
        for i, item_id in enumerate(item_ids):
            j = self.item_pos.get(item_id)
            if j is not None:
                pos.append(j)
                w.append(1.0 if weights is None else float(weights[i]))
        if not pos:
            return self.popular(k, offset=offset, filters=filters)
        seen = np.asarray(pos, np.int64)
        cf_vector = self.fold_in(seen, np.asarray(w))
        items = self._rank(mode, cf_vector, seen, k, offset, seen, filters, blend, fusion, diversity, np.asarray(w))
        return RecommendationResult("fold_in" if mode == "collaborative" else mode, items, mode)

    def similar_items(
        self, item_id: str, k: int = 10, *, offset: int = 0, filters: Filters = NO_FILTERS, mode: str | None = None
    ) -> RecommendationResult:
        mode = self._mode(mode)
        j = self.item_pos.get(item_id)
        if j is None:
            raise UnknownItemError(item_id)
        exclude = np.asarray([j], np.int64)
        allowed = self._allowed_mask(filters)
        n = k + offset
        if mode == "collaborative":
            ranked = self._search("item", self._metric("item"), self.cf_vectors, self.cf_vectors[j], n, exclude, allowed)
        elif mode == "content":
            ranked = self._search("content", self._metric("content"), self.content_vectors, self.content_vectors[j], n, exclude, allowed)
        else:
            cf_s = pairwise_scores(self.cf_vectors[j], self.cf_vectors, self._metric("item"))[0]
            ct_s = pairwise_scores(self.content_vectors[j], self.content_vectors, self._metric("content"))[0]
            ranked = self._top_blended(cf_s, ct_s, None, None, n, exclude, allowed)
        reason = {"collaborative": "liked by the same users", "content": "similar text", "hybrid": "similar item"}[mode]
        items = [self._scored(i, s, reason) for i, s in zip(*ranked)][offset : offset + k]
        return RecommendationResult("similar", items, mode)

    def search(self, query: str, k: int = 10, *, offset: int = 0, filters: Filters = NO_FILTERS) -> RecommendationResult:
        """Items whose content embedding is nearest to the encoded query text."""
        encoder = self.bundle.objects.get("text_encoder")
        if encoder is None or self.content_vectors is None or not getattr(encoder, "supports_text", True):
            raise SearchUnavailable("this model has no text encoder: train with a tfidf or sbert content model for /search")
        vector = encoder.transform([query])[0]
        ids, scores = self._search("content", self._metric("content"), self.content_vectors, vector, k + offset,
                                   np.empty(0, np.int64), self._allowed_mask(filters))
        items = [self._scored(i, s, "matches the query text") for i, s in zip(ids, scores)][offset : offset + k]
        return RecommendationResult("search", items, "content")

    def popular(self, k: int = 10, *, offset: int = 0, filters: Filters = NO_FILTERS) -> RecommendationResult:
        mask = self._allowed_mask(filters)
        order = np.argsort(-self.popularity, kind="stable")
        order = order[mask[order]][offset : offset + k]
        return RecommendationResult("popular", [self._scored(j, float(self.popularity[j]), "popular") for j in order])

    # ---- scoring -----------------------------------------------------------------------
    def fold_in(self, item_positions: np.ndarray, counts: np.ndarray | None = None) -> np.ndarray:
        """ALS user solve against the fixed CF item vectors (works from the bundle alone).

        For ALS this is exactly the user step of training; for BPR/LightFM vectors it is a
        least-squares approximation of the user's position in the same space.
        """
        if self._gram is None:
            Y = self.cf_vectors.astype(np.float64)
            self._gram = Y.T @ Y
        counts = np.ones(len(item_positions)) if counts is None else np.asarray(counts, np.float64)
        return als_user_solve(self.cf_vectors, item_positions, 1.0 + self._alpha * counts, self._regularization, gram=self._gram)

    def content_profile(self, item_positions: np.ndarray, counts: np.ndarray | None = None) -> np.ndarray:
        c = np.ones(len(item_positions)) if counts is None else np.asarray(counts, np.float64)
        profile = (self.content_vectors[item_positions] * c[:, None]).sum(0)
        return (profile / max(np.linalg.norm(profile), 1e-12)).astype(np.float32)

    def _metric(self, role: str) -> str:
        """The metric each space is searched with: its index's (chosen per index at training);
        without an index, the model's own for users and cosine for item/content similarity."""
        index = self.bundle.indexes.get(role)
        if index is not None:
            return index.metric
        return self.bundle.metric if role == "user" else "cosine"

    def _mode(self, mode: str | None) -> str:
        mode = mode or self.default_mode
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode != "collaborative" and self.content_vectors is None:
            raise SearchUnavailable(f"mode {mode!r} needs a model trained with a content encoder")
        return mode

    def _rank(self, mode, cf_vector, seen, k, offset, exclude, filters, weights, fusion, diversity, counts=None) -> list[ScoredItem]:
        allowed = self._allowed_mask(filters)
        # With MMR, re-rank a wider pool than we return.
        n = k + offset
        pool = n if diversity is None or diversity >= 1.0 else max(3 * n, n + 30)
        metric = self._metric("user")
        if mode == "collaborative":
            ids, scores = self._search("user", metric, self.cf_vectors, cf_vector, pool, exclude, allowed)
        else:
            profile = self.content_profile(seen, counts)
            if mode == "content":
                ids, scores = self._search("content", self._metric("content"), self.content_vectors, profile, pool, exclude, allowed)
            else:
                cf_s = pairwise_scores(cf_vector, self.cf_vectors, metric)[0]
                ct_s = pairwise_scores(profile, self.content_vectors, self._metric("content"))[0]
                ids, scores = self._top_blended(cf_s, ct_s, weights, fusion, pool, exclude, allowed)
        if diversity is not None and diversity < 1.0:
            ids, scores = self._mmr(ids, scores, diversity, n)
        ids, scores = ids[offset:n], scores[offset:n]
        reasons = self._reasons(ids, seen, mode)
        return [self._scored(int(i), float(s), r) for i, s, r in zip(ids, scores, reasons)]

    def _top_blended(self, cf_s, ct_s, weights, fusion, n, exclude, allowed) -> tuple[np.ndarray, np.ndarray]:
        """Blend over the whole catalog (exact: see recsys.hybrid), then the top-n allowed."""
        fused = blend(cf_s, ct_s, weights if weights is not None else self.default_weights, fusion or self.default_fusion)[0]
        blocked = np.concatenate([np.flatnonzero(~allowed), np.asarray(exclude, np.int64)])
        return top_k_from_scores(fused, n, blocked)

    def _mmr(self, ids: np.ndarray, scores: np.ndarray, lam: float, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Maximal marginal relevance (Carbonell & Goldstein): λ·relevance − (1−λ)·max similarity
        to what is already picked, on cosine of the CF item vectors."""
        if len(ids) == 0:
            return ids, scores
        vecs = self._unit_cf()[ids]
        rel = _minmax(scores)
        sim = vecs @ vecs.T
        picked = [int(np.argmax(rel))]
        max_sim = sim[picked[0]].copy()
        remaining = np.ones(len(ids), bool)
        remaining[picked[0]] = False
        while len(picked) < min(n, len(ids)):
            value = np.where(remaining, lam * rel - (1 - lam) * max_sim, -np.inf)
            nxt = int(np.argmax(value))
            picked.append(nxt)
            remaining[nxt] = False
            max_sim = np.maximum(max_sim, sim[nxt])
        picked = np.asarray(picked)
        return ids[picked], scores[picked]

    def _unit_cf(self) -> np.ndarray:
        if self._cf_unit is None or len(self._cf_unit) != len(self.cf_vectors):
            norms = np.linalg.norm(self.cf_vectors, axis=1, keepdims=True)
            self._cf_unit = self.cf_vectors / np.maximum(norms, 1e-12)
        return self._cf_unit

    def _reasons(self, ids: np.ndarray, seen: np.ndarray, mode: str) -> list[str | None]:
        """For each recommended item, which of the user's recent items it is closest to, in
        the mode's space (one matrix product for the whole list)."""
        if len(seen) == 0 or len(ids) == 0:
            return [None] * len(ids)
        recent = seen[-50:]
        if mode == "content":
            space, template = self.content_vectors, "similar text to {}"
        else:
            space, template = self._unit_cf(), "because you interacted with {}"
        anchors = recent[np.argmax(pairwise_scores(space[ids], space[recent], "cosine"), axis=1)]
        return [template.format(self.titles[a] or self.item_ids[a]) for a in anchors]

    def _positions(self, item_ids: Iterable[str]) -> np.ndarray:
        pos = self.item_pos
        return np.fromiter((pos[i] for i in item_ids if i in pos), np.int64)

    def _search(self, role: str, metric: str, vectors: np.ndarray, query: np.ndarray, n: int,
                exclude: np.ndarray, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top-n allowed, non-excluded rows: index query with over-fetching, then an exact
        fallback when filters leave too few; items added after training are always scored
        exactly and merged in."""
        index = self.bundle.indexes.get(role)
        n_indexed = self._n_indexed()
        exclude_set = set(np.asarray(exclude).tolist())
        result: tuple[np.ndarray, np.ndarray] | None = None
        # An index is used only where it beats a scan (measured at build: prefer_exact).
        if index is not None and index.metric == metric and not getattr(index, "prefer_exact", False):
            fetch = n + len(exclude_set) + 16
            while True:
                ids, scores = index.query(query, min(fetch, n_indexed))
                keep = np.fromiter((allowed[i] and i not in exclude_set for i in ids.tolist()), bool, len(ids))
                if keep.sum() >= n:
                    result = (ids[keep][:n], scores[keep][:n])
                    break
                if fetch >= n_indexed:
                    break
                fetch *= 4
        if result is None:
            scores = pairwise_scores(query, vectors[:n_indexed], metric)[0]
            blocked = np.concatenate([np.flatnonzero(~allowed[:n_indexed]), np.asarray(exclude, np.int64)])
            result = top_k_from_scores(scores, n, blocked[blocked < n_indexed])
        if len(vectors) > n_indexed:  # cold-start items added since training
            extra = np.arange(n_indexed, len(vectors))
            extra = extra[allowed[extra] & ~np.isin(extra, list(exclude_set))]
            if len(extra):
                ids = np.concatenate([result[0], extra])
                scores = np.concatenate([result[1], pairwise_scores(query, vectors[extra], metric)[0]])
                order = np.argsort(-scores, kind="stable")[:n]
                result = (ids[order], scores[order])
        return result[0].astype(np.int64), result[1].astype(np.float32)

    def _scored(self, j: int, score: float, reason: str | None = None) -> ScoredItem:
        return ScoredItem(item_id=self.item_ids[j], score=float(score), title=str(self.titles[j]), reason=reason)


def _minmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    span = x.max() - x.min() if len(x) else 0.0
    return np.zeros_like(x) if span <= 0 else (x - x.min()) / span
