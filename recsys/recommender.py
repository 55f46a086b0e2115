"""Recommender: pure serving logic over a ModelBundle and a catalog (no HTTP, no SQL).

Given what a user has touched and the request's rules — k and offset, exclusions, category and
attribute filters, collaborative/content/hybrid mode, blend weights or rank fusion, MMR
diversity — it returns ranked items with scores and a reason each. The API is a thin shell.

Three parts: ``CatalogState`` (recsys.catalog_state: titles, categories, attributes,
availability, filter masks), ``Ranker`` (recsys.ranking: scoring, blending, rules, MMR,
explanations over the item vectors) and this facade, which turns a user or a session into query
vectors (trained user vector, the trained model's own fold-in, content profile) and one
``RankRequest``.

Fold-in: a session, a user the model never saw, or a known user with events newer than the
model gets a vector from the *trained model's* ``fold_in`` (rebuilt from the bundle's typed
``fold_in`` spec and item vectors, recsys.models.foldin). A known user keeps what training
learned: their vector is the trained one plus the fold-in difference their new items make,
``v_trained + fold_in(history) − fold_in(trained part of the history)`` (docs/foldin.md
measures this against folding the whole history in afresh). A user's folded vector is cached
until their history changes, so a fresh user costs about what a trained user costs.

Spaces: the bundle's own vectors are the collaborative (CF) space, searched with the model's
metric through the ``user`` index and with cosine through the ``item`` index. When the bundle
carries content vectors (``extras["content"]``) there is a content space too (cosine,
``content`` index), which makes content and hybrid modes, text search and cold-start items
possible.

Names: ``item_weights`` are per-item interaction weights of a session (a weight repeats an
item in the fold-in); ``blend_weights`` are the (cf, content) weights of the hybrid blend.
"""

from __future__ import annotations

import logging
import math
import numbers
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from recsys.bundle import BundleError, ModelBundle
from recsys.catalog_state import NO_FILTERS, CatalogState, Filters
from recsys.hybrid import content_profile
from recsys.lexical import LexicalIndex
from recsys.models.base import RETURNING_FOLD_INS, ReturningFoldIn
from recsys.ranking import (
    MODES,
    Ranker,
    RankRequest,
    RankRequestError,
    RecommendationResult,
    ScoredItem,
    SearchUnavailable,
    UnknownItemError,
)

logger = logging.getLogger(__name__)

#: how a text search matches: the query's words, its meaning, or both blended
SEARCH_MATCHES = ("lexical", "semantic", "hybrid")
#: the hybrid search's weight of the words (BM25, max-scaled) against the meaning (cosine):
#: chosen on a validation set of MovieLens 100K queries (bench/search_movielens.py, docs/search.md)
SEARCH_LEXICAL_WEIGHT = 0.95
#: memory for cached folded-in user vectors (float32), whatever the model's width
FOLD_CACHE_BYTES = 64 * 2**20

__all__ = [
    "MODES",
    "NO_FILTERS",
    "CatalogState",
    "Filters",
    "RankRequest",
    "RankRequestError",
    "Ranker",
    "RecommendationResult",
    "Recommender",
    "ScoredItem",
    "SearchUnavailable",
    "UnknownItemError",
]


class Recommender:
    def __init__(
        self,
        bundle: ModelBundle,
        catalog: pd.DataFrame | None = None,
        *,
        search_attributes: Sequence[str] = (),
        returning_fold_in: ReturningFoldIn | None = None,
    ) -> None:
        """``returning_fold_in`` overrides the model kind's ``returning_fold_in`` (``delta`` or
        ``afresh``; bench/foldin_movielens.py measures both)."""
        self.bundle = bundle
        self.catalog = CatalogState(bundle.item_ids, search_attributes)
        #: BM25 over every item's search text, kept in step by ``update_catalog``
        self.lexical = LexicalIndex()
        self.lexical.set_texts([""] * len(self.catalog))
        if bundle.serving is None:
            raise BundleError("this bundle has no serving spec (written by an older version): retrain to serve it")
        content = bundle.extras.get("content")
        serving = bundle.serving
        hybrid = serving.hybrid
        self.ranker = Ranker(
            self.catalog,
            bundle.item_vectors,
            bundle.item_popularity,
            content_vectors=content,
            indexes=bundle.indexes,
            model_metric=bundle.metric,
            default_calibration=serving.calibration,
            **(
                {"default_blend_weights": hybrid.weights, "default_fusion": hybrid.fusion} if hybrid is not None else {}
            ),
        )
        # np.asarray drops the memmap subclass: one user row is a plain view, no memmap wrapper
        self.user_vectors = np.asarray(bundle.user_vectors, dtype=np.float32)
        self.default_mode = serving.default_mode
        if bundle.fold_in is None:
            raise BundleError("this bundle has no fold-in spec (written by an older version): retrain to serve it")
        self.fold_in_spec = bundle.fold_in
        #: the trained model's class, rebuilt from the bundle: serving folds in through its fold_in
        self.fold_in_model = bundle.fold_in.restore(bundle.item_vectors)
        if returning_fold_in is not None and returning_fold_in not in RETURNING_FOLD_INS:
            raise ValueError(f"returning_fold_in must be one of {RETURNING_FOLD_INS}, got {returning_fold_in!r}")
        self.returning_fold_in: ReturningFoldIn = returning_fold_in or self.fold_in_model.returning_fold_in
        self._user_item_counts = bundle.user_item_counts
        #: user id -> (hash of the history it was folded from, vector)
        self._fold_cache: OrderedDict[str, tuple[int, np.ndarray]] = OrderedDict()
        self._fold_cache_size = max(1_000, FOLD_CACHE_BYTES // (4 * max(bundle.dims, 1)))
        self._fold_lock = threading.Lock()
        # linear debiasing at bundle build (recsys.models.debias): fold-in vectors get the
        # same projection as the trained user vectors
        self._debias = bundle.objects.get("debias")
        self._lock = threading.Lock()  # guards in-place catalog growth (add_items)
        if catalog is not None and len(catalog):
            self.update_catalog(catalog)

    @property
    def modes(self) -> tuple[str, ...]:
        return MODES if self.ranker.has_content else ("collaborative",)

    # the catalog's views the API and tests read
    @property
    def item_ids(self) -> list[str]:
        return self.catalog.item_ids

    @property
    def item_pos(self) -> dict[str, int]:
        return self.catalog.item_pos

    @property
    def categories(self) -> list[frozenset[str]]:
        return self.catalog.categories

    @property
    def cf_vectors(self) -> np.ndarray:
        return self.ranker.vectors("cf")

    @property
    def content_vectors(self) -> np.ndarray | None:
        return self.ranker.vectors("content") if self.ranker.has_content else None

    # ---- catalog -----------------------------------------------------------------------
    def update_catalog(self, catalog: pd.DataFrame) -> None:
        """Refresh titles, descriptions, categories, attributes and availability from catalog
        rows. Items whose text changed are found by their new words from the next search on,
        and their content vectors are re-encoded from the new text (with the bundle's content
        encoder; an item added since training also gets its CF vector predicted again)."""
        with self._lock:
            change = self.catalog.update(catalog)
            if change.search_text_changed:
                self.lexical.update(
                    change.search_text_changed, [self.catalog.search_text(j) for j in change.search_text_changed]
                )
                self.lexical.refresh()  # the write pays the rebuild, not the next search
            if change.content_changed:
                self._reencode(catalog, change.content_changed)

    def _reencode(self, catalog: pd.DataFrame, positions: Sequence[int]) -> None:
        encoder, mapper = self.bundle.objects.get("text_encoder"), self.bundle.objects.get("cf_mapper")
        if encoder is None or not self.ranker.has_content:
            return
        ids = [self.catalog.item_ids[j] for j in positions]
        rows = catalog.assign(item_id=catalog["item_id"].astype(str)).drop_duplicates("item_id", keep="last")
        rows = rows.set_index("item_id").loc[ids].reset_index()
        content = encoder.transform(rows).astype(np.float32)
        self.ranker.replace_rows("content", positions, content)
        added = [i for i, j in enumerate(positions) if j >= self.ranker.n_indexed]
        if mapper is not None and added:
            self.ranker.replace_rows(
                "cf", [positions[i] for i in added], mapper.predict(content[added]).astype(np.float32)
            )
        logger.info("re-encoded the content of %d items whose text changed", len(positions))

    def set_available(self, item_id: str, available: bool) -> None:
        self.catalog.set_available(item_id, available)

    def add_items(self, items: pd.DataFrame) -> list[str]:
        """Cold-start items: encode their content, predict their CF vectors, make them servable.

        Needs a bundle trained with a content encoder (and the content→CF mapper). New items
        are scored exactly (they are not in the Annoy files), which stays cheap for the
        handful of items added between two trainings.
        """
        encoder, mapper = self.bundle.objects.get("text_encoder"), self.bundle.objects.get("cf_mapper")
        if encoder is None or mapper is None or not self.ranker.has_content:
            raise SearchUnavailable(
                "this model has no content encoder: new items can't be served before the next training"
            )
        new = items[~items["item_id"].astype(str).isin(self.catalog.item_pos)].drop_duplicates("item_id")
        if new.empty:
            self.update_catalog(items)
            return []
        content = encoder.transform(new).astype(np.float32)
        cf = mapper.predict(content).astype(np.float32)
        with self._lock:
            # vectors first, ids last: requests running meanwhile rank a consistent prefix
            self.ranker.extend(cf, content)
            ids = self.catalog.add(new["item_id"].astype(str).tolist())
            self.lexical.update(range(len(self.lexical), len(self.catalog)), [""] * len(ids))
        self.update_catalog(items)
        logger.info("added %d cold-start items", len(ids))
        return ids

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
        blend_weights: Sequence[float] | None = None,
        fusion: str | None = None,
        diversity: float | None = None,
        refresh: bool = False,
        calibration: float | None = None,
        values: Sequence[float] | None = None,
    ) -> RecommendationResult:
        """Known user: the trained vector (or a fold-in from ``history`` with ``refresh``, so
        fresh events count at once); unseen user with history: fold-in; else popular.

        ``values``: each history event's stored value (1 each by default); the fold-in sums
        them per item and weighs them as the training matrix did."""
        mode = self._mode(mode)
        if values is not None and len(values) != len(history):
            raise ValueError(f"{len(values)} values for {len(history)} history events")
        seen = self.catalog.positions(history)
        request = RankRequest(
            mode, k, offset, seen if exclude_seen else (), filters, blend_weights, fusion, diversity, calibration
        )
        row = self.bundle.user_pos.get(user_id)
        if row is None and len(seen) == 0:
            return self.popular(k, offset=offset, filters=filters)
        if row is not None and (not refresh or len(seen) == 0):
            cf_vector, strategy = self.user_vectors[row], "collaborative"
        else:
            cf_vector, strategy = self.user_vector(user_id, seen, self._known_values(history, values)), "fold_in"
        profile = (
            None if mode == "collaborative" else self.content_profile(np.unique(seen))
        )  # each touched item once, as evaluated
        items = self.ranker.rank(request, cf_vector, seen, profile)
        return RecommendationResult(strategy if mode == "collaborative" else mode, items, mode)

    def recommend_for_items(
        self,
        item_ids: Sequence[str],
        item_weights: Sequence[float] | None = None,
        k: int = 10,
        *,
        offset: int = 0,
        filters: Filters = NO_FILTERS,
        mode: str | None = None,
        blend_weights: Sequence[float] | None = None,
        fusion: str | None = None,
        diversity: float | None = None,
        calibration: float | None = None,
    ) -> RecommendationResult:
        """Anonymous session: fold the given items in on the fly (``item_weights`` weigh each
        item's interaction, like repeating it)."""
        mode = self._mode(mode)
        if item_weights is not None:
            if len(item_weights) != len(item_ids):
                raise RankRequestError("item_weights", f"{len(item_weights)} weights for {len(item_ids)} items")
            if not all(isinstance(w, numbers.Real) and math.isfinite(w) and w >= 0 for w in item_weights):
                raise RankRequestError("item_weights", "must be finite numbers >= 0")
        pos, w = [], []
        item_pos = self.catalog.item_pos
        for i, item_id in enumerate(item_ids):
            j = item_pos.get(item_id)
            if j is not None:
                pos.append(j)
                w.append(1.0 if item_weights is None else float(item_weights[i]))
        seen = np.asarray(pos, np.int64)
        request = RankRequest(mode, k, offset, seen, filters, blend_weights, fusion, diversity, calibration)
        if not pos:
            return self.popular(k, offset=offset, filters=filters)
        counts = np.asarray(w)
        cf_vector = self.fold_in(seen, counts)
        profile = None if mode == "collaborative" else self.content_profile(seen, counts)
        items = self.ranker.rank(request, cf_vector, seen, profile)
        return RecommendationResult("fold_in" if mode == "collaborative" else mode, items, mode)

    def similar_items(
        self, item_id: str, k: int = 10, *, offset: int = 0, filters: Filters = NO_FILTERS, mode: str | None = None
    ) -> RecommendationResult:
        mode = self._mode(mode)
        request = RankRequest(mode, k, offset, (), filters)
        j = self.catalog.item_pos.get(item_id)
        if j is None:
            raise UnknownItemError(item_id)
        return RecommendationResult("similar", self.ranker.similar(j, request), mode)

    def search(
        self,
        query: str,
        k: int = 10,
        *,
        offset: int = 0,
        filters: Filters = NO_FILTERS,
        match: str = "hybrid",
        lexical_weight: float | None = None,
    ) -> RecommendationResult:
        """Items matching the query text: by its words (BM25 over the catalog text,
        ``recsys.lexical``), by its meaning (the content encoder's space) or both, blended
        (``match`` = ``lexical`` / ``semantic`` / ``hybrid``; ``lexical_weight`` the blend's
        weight of the words, default ``SEARCH_LEXICAL_WEIGHT``). Typos in words the catalog
        does not contain are corrected before either half reads the query. No match: an
        empty list. Without a text encoder only ``lexical`` is possible."""
        if match not in SEARCH_MATCHES:
            raise RankRequestError("match", f"must be one of {SEARCH_MATCHES}, got {match!r}")
        if not query.strip():
            raise RankRequestError("q", "must not be blank")
        encoder = self.bundle.objects.get("text_encoder")
        semantic = encoder is not None and self.ranker.has_content and encoder.supports_text
        if match != "lexical" and not semantic:
            raise SearchUnavailable(
                "this model has no text encoder: train with a tfidf or sbert content model for "
                "match=semantic or hybrid (match=lexical works without one)"
            )
        weight = {"lexical": 1.0, "semantic": 0.0}.get(match, SEARCH_LEXICAL_WEIGHT)
        if lexical_weight is not None and match == "hybrid":
            weight = float(lexical_weight)
        parsed = self.lexical.parse(query)
        lexical = self.lexical.scores(parsed) if weight > 0 else None
        vector = None
        if weight < 1:
            text = query if parsed.corrected_text is None else f"{query} {parsed.corrected_text}"
            vector = encoder.transform([text])[0]
        request = RankRequest("content", k, offset, (), filters)
        return RecommendationResult("search", self.ranker.search(request, lexical, vector, weight), match)

    def popular(self, k: int = 10, *, offset: int = 0, filters: Filters = NO_FILTERS) -> RecommendationResult:
        return RecommendationResult(
            "popular", self.ranker.popular(RankRequest("collaborative", k, offset, (), filters))
        )

    # ---- user modelling ------------------------------------------------------------------
    def fold_in(self, item_positions: np.ndarray, values: np.ndarray | None = None) -> np.ndarray:
        """The vector the trained model's own ``fold_in`` gives for these items (``values``:
        each event's value, 1 each by default; repeated positions add up), weighted as the
        training matrix weighted the summed values (recsys.models.foldin). Items added after
        training (cold start) have no trained parameters and are left out."""
        positions = np.asarray(item_positions, np.int64)
        values = np.ones(len(positions)) if values is None else np.asarray(values, np.float64)
        keep = positions < self.fold_in_spec.trained_items
        positions, inverse = np.unique(positions[keep], return_inverse=True)
        summed = np.bincount(inverse, weights=values[keep], minlength=len(positions))
        vector = np.asarray(
            self.fold_in_model.fold_in(positions, self.fold_in_spec.weights(summed)), np.float32
        ).ravel()
        if self._debias is not None:
            vector = self._debias.transform(vector[None, :])[0]
        return vector

    def user_vector(self, user_id: str, seen: np.ndarray, values: np.ndarray | None = None) -> np.ndarray:
        """A user's vector from their history ``seen`` (positions in the order the events came,
        ``values`` each event's value): a user the model never saw is folded in; a trained user
        gets what ``returning_fold_in`` says (the model kind's unless overridden) — ``delta``: their trained vector plus
        what their items after the trained part change in the fold-in; ``afresh``: the fold-in
        of the whole history (docs/foldin.md measures both per kind). Cached until the history
        changes."""
        seen = np.asarray(seen, np.int64)
        values = np.ones(len(seen)) if values is None else np.asarray(values, np.float64)
        key = hash((seen.tobytes(), values.tobytes()))
        with self._fold_lock:
            cached = self._fold_cache.get(user_id)
            if cached is not None and cached[0] == key:
                self._fold_cache.move_to_end(user_id)
                return cached[1]
        row = self.bundle.user_pos.get(user_id)
        if row is not None and self._user_item_counts is not None:
            trained = _trained_prefix(seen, int(self._user_item_counts[row]))
            if trained >= len(seen):
                vector = self.user_vectors[row]
            elif self.returning_fold_in == "afresh":
                vector = self.fold_in(seen, values)
            else:
                vector = (
                    self.user_vectors[row] + self.fold_in(seen, values) - self.fold_in(seen[:trained], values[:trained])
                )
        else:
            vector = self.fold_in(seen, values)
        vector = np.ascontiguousarray(vector, dtype=np.float32)
        with self._fold_lock:
            self._fold_cache[user_id] = (key, vector)
            self._fold_cache.move_to_end(user_id)
            while len(self._fold_cache) > self._fold_cache_size:
                self._fold_cache.popitem(last=False)
        return vector

    def prefold(self, user_id: str, history: Sequence[str], values: Sequence[float] | None = None) -> None:
        """Fold a user in ahead of their next request (called when their events arrive): the
        request's :meth:`user_vector` then finds the vector cached for exactly this history."""
        seen = self.catalog.positions(history)
        if len(seen):
            self.user_vector(user_id, seen, self._known_values(history, values))

    def content_profile(self, item_positions: np.ndarray, counts: np.ndarray | None = None) -> np.ndarray:
        """Interaction-weighted mean of the items' content vectors, L2-normalized: the one
        definition evaluation uses too (:func:`recsys.hybrid.content_profile`)."""
        return content_profile(self.ranker.vectors("content"), item_positions, counts)

    def _mode(self, mode: str | None) -> str:
        mode = mode or self.default_mode
        if mode not in MODES:
            raise RankRequestError("mode", f"must be one of {MODES}, got {mode!r}")
        if mode != "collaborative" and not self.ranker.has_content:
            raise SearchUnavailable(f"mode {mode!r} needs a model trained with a content encoder")
        return mode

    def _positions(self, item_ids: Iterable[str]) -> np.ndarray:
        return self.catalog.positions(item_ids)

    def _known_values(self, history: Sequence[str], values: Sequence[float] | None) -> np.ndarray | None:
        """The values of the history events whose item the catalog knows (aligned with
        ``catalog.positions(history)``)."""
        if values is None:
            return None
        item_pos = self.catalog.item_pos
        return np.asarray([v for item_id, v in zip(history, values) if item_id in item_pos], np.float64)


def _trained_prefix(seen: np.ndarray, n_trained: int) -> int:
    """Length of the shortest prefix of ``seen`` holding ``n_trained`` distinct items: the part
    of a time-ordered history the trained vector was fitted on."""
    if n_trained <= 0:
        return 0
    _, first = np.unique(np.asarray(seen, np.int64), return_index=True)
    if len(first) <= n_trained:
        return len(seen)
    return int(np.sort(first)[n_trained - 1]) + 1
