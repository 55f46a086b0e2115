"""Ranking over a served model's item vector spaces: scoring, blending, business rules, MMR
diversity and explanations. No user modelling (recsys.recommender turns a user or a session
into query vectors) and no catalog bookkeeping (recsys.catalog_state).

Spaces: the collaborative (CF) item vectors, searched with the model's metric for users
(``user`` index role) and with cosine for item-to-item similarity (``item``); optionally the
content vectors (``content``). Each role uses its Annoy index where that was measured faster at
build (``prefer_exact`` false), otherwise an exact scan of all rows.

Per-request cost is kept to the scan itself: unit-norm copies of the vectors are cached (cosine
never re-normalizes the catalog), the popularity order is cached, an unfiltered request uses
the catalog's shared availability mask, and reasons are built only for the items returned.
"""

from __future__ import annotations

import logging
import math
import numbers
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from recsys.catalog_state import NO_FILTERS, CatalogState, Filters
from recsys.evaluation.bias import popularity_deciles
from recsys.hybrid import FUSIONS, blend
from recsys.index.annoy_index import AnnoyItemIndex
from recsys.index.base import ItemIndex
from recsys.index.exact import ExactIndex, pairwise_scores

logger = logging.getLogger(__name__)

MODES = ("collaborative", "content", "hybrid")
#: index role → vector space it searches
SPACE_OF_ROLE = {"user": "cf", "item": "cf", "content": "content"}
#: how many of the user's most recent items an explanation may point to
REASON_ANCHORS = 50

#: calibration re-ranks the best max(factor × n, n + min) candidates
CALIBRATION_POOL_FACTOR = 10
CALIBRATION_POOL_MIN = 100
#: re-rankers (calibration, MMR diversity) build a list this many items at a time, each block
#: chosen given the blocks before it, so any page (k, offset) is a slice of one list: pages
#: never repeat an item and concatenate to the longer list (:meth:`Ranker.rank`)
PAGE_BLOCK = 10

_NO_POSITIONS = np.empty(0, np.int64)
_NO_POSITIONS.flags.writeable = False

#: a text search counts an item as matching the query's meaning from this cosine on
MEANING_MIN_SIMILARITY = 0.3
#: the reason of an item no training user interacted with (added since training, or never
#: touched) when there is no content space to explain it by: its CF vector says nothing about users
NEW_ITEM_REASON = "new item: no interactions yet"

#: exact dot scores read columns instead of rows when at most 1/this of the query's entries are
#: nonzero (the ensemble of LightFM and item-kNN on MovieLens: ~90 of 1,746)
SPARSE_QUERY_FACTOR = 4

#: item-to-item reasons by mode; an item without interactions is explained by its text instead
_SIMILAR_REASONS = {"collaborative": "liked by the same users", "content": "similar text", "hybrid": "similar item"}

#: (matched words, matched meaning) → a search result's reason
_SEARCH_REASONS = {
    (True, True): "matches the words and the meaning",
    (True, False): "matches the words",
    (False, True): "matches the meaning",
}


class UnknownItemError(KeyError):
    def __init__(self, item_id: str) -> None:
        super().__init__(item_id)
        self.item_id = item_id


class SearchUnavailable(RuntimeError):
    """The served bundle has no content encoder (text search, content mode, new items)."""


class RankRequestError(ValueError):
    """A ranking option out of its domain; ``field`` names the option."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(slots=True)
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


@dataclass(frozen=True, eq=False)
class RankRequest:
    """What one ranked list must satisfy. Validated on construction (``RankRequestError``)."""

    mode: str = "collaborative"
    k: int = 10
    offset: int = 0
    #: item positions never returned (e.g. what the user has already seen); repeats allowed.
    #: Any sequence of ints; stored as an int64 array.
    exclude: np.ndarray | Sequence[int] = ()
    filters: Filters = NO_FILTERS
    #: (cf, content) weights of the hybrid blend; None: the model's default
    blend_weights: tuple[float, float] | None = None
    #: "weighted" or "rrf"; None: the model's default
    fusion: str | None = None
    #: MMR λ in [0, 1] (1 = pure relevance); None: no re-ranking
    diversity: float | None = None
    #: popularity calibration strength in [0, 1] (0 = the list as ranked; :func:`calibrate`);
    #: None: the model's default
    calibration: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise RankRequestError("mode", f"must be one of {MODES}, got {self.mode!r}")
        for name, low in (("k", 1), ("offset", 0)):
            value = getattr(self, name)
            if not (type(value) is int or isinstance(value, np.integer)) or value < low:
                raise RankRequestError(name, f"must be an integer >= {low}, got {value!r}")
        exclude = np.asarray(() if self.exclude is None else self.exclude)
        if exclude.size == 0:
            exclude = _NO_POSITIONS
        elif exclude.ndim != 1 or exclude.dtype.kind not in "iu":
            raise RankRequestError("exclude", "must be a 1-D array of item positions (integers >= 0)")
        else:
            # Sorted and unique: a history with repeats is the same exclusion (and asks an
            # approximate index for the same number of candidates, so its answer does not
            # depend on repeats); sorted for the binary searches of ``_among``.
            exclude = _sorted_unique(exclude.astype(np.int64))
            if exclude[0] < 0:
                raise RankRequestError("exclude", "must be a 1-D array of item positions (integers >= 0)")
        object.__setattr__(self, "exclude", exclude)
        if self.blend_weights is not None:
            weights = tuple(self.blend_weights)
            if len(weights) != 2 or not all(_finite_number(w) and w >= 0 for w in weights):
                raise RankRequestError("blend_weights", f"must be two finite numbers >= 0, got {self.blend_weights!r}")
            if sum(weights) <= 0:
                raise RankRequestError("blend_weights", "must not both be 0")
            object.__setattr__(self, "blend_weights", tuple(float(w) for w in weights))
        if self.fusion is not None and self.fusion not in FUSIONS:
            raise RankRequestError("fusion", f"must be one of {FUSIONS}, got {self.fusion!r}")
        if self.diversity is not None and not (_finite_number(self.diversity) and 0 <= self.diversity <= 1):
            raise RankRequestError("diversity", f"must be a number in [0, 1], got {self.diversity!r}")
        if self.calibration is not None and not (_finite_number(self.calibration) and 0 <= self.calibration <= 1):
            raise RankRequestError("calibration", f"must be a number in [0, 1], got {self.calibration!r}")

    @property
    def n(self) -> int:
        """Rows needed before the offset is cut: ``k + offset``."""
        return self.k + self.offset

    @property
    def reranked(self) -> bool:
        return bool(self.calibration) or (self.diversity is not None and self.diversity < 1.0)

    @property
    def block_window(self) -> int:
        """Candidates a re-ranker chooses each :data:`PAGE_BLOCK` from (not yet picked)."""
        b = PAGE_BLOCK
        window = max(3 * b, b + 30) if self.diversity is not None and self.diversity < 1.0 else b
        if self.calibration:
            window = max(window, CALIBRATION_POOL_FACTOR * b, b + CALIBRATION_POOL_MIN)
        return window

    @property
    def pool(self) -> int:
        """Candidates to fetch: with MMR or calibration a wider pool is re-ranked than returned
        (the first block's window, then :data:`PAGE_BLOCK` more per further block)."""
        if not self.reranked:
            return self.n
        blocks = -(-self.n // PAGE_BLOCK)
        return self.block_window + (blocks - 1) * PAGE_BLOCK


def _finite_number(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


class Ranker:
    """Ranked item lists over the CF (and optional content) item vectors of one model."""

    def __init__(
        self,
        catalog: CatalogState,
        cf_vectors: np.ndarray,
        popularity: np.ndarray,
        *,
        content_vectors: np.ndarray | None = None,
        indexes: Mapping[str, ItemIndex] | None = None,
        model_metric: str = "dot",
        default_blend_weights: Sequence[float] = (0.5, 0.5),
        default_fusion: str = "weighted",
        default_calibration: float = 0.0,
    ) -> None:
        self.catalog = catalog
        # np.asarray drops the memmap subclass: row reads stay plain ndarray views
        self._vectors: dict[str, np.ndarray] = {"cf": np.asarray(cf_vectors, dtype=np.float32)}
        if content_vectors is not None:
            self._vectors["content"] = np.asarray(content_vectors, dtype=np.float32)
        self.popularity = np.asarray(popularity, dtype=np.float64)
        self.indexes = dict(indexes or {})
        #: rows the indexes hold; rows after these were added since training (scored exactly)
        self.n_indexed = len(self._vectors["cf"])
        #: space → sorted indexed rows whose vectors were replaced since training (re-encoded
        #: text): the index's copy is stale, so they are dropped from its answers and scored exactly
        self._replaced: dict[str, np.ndarray] = {}
        self.model_metric = model_metric
        self.default_blend_weights = tuple(float(w) for w in default_blend_weights)
        self.default_fusion = default_fusion
        self.default_calibration = float(default_calibration)
        self._caches_dropped()
        #: roles answered through their Annoy index (the rest by an exact scan)
        self.indexed_roles = frozenset(role for role in self.indexes if self._index_beats_scan(role))

    # ---- spaces ------------------------------------------------------------------------
    @property
    def has_content(self) -> bool:
        return "content" in self._vectors

    def vectors(self, space: str) -> np.ndarray:
        return self._vectors[space]

    def extend(self, cf_vectors: np.ndarray, content_vectors: np.ndarray | None = None) -> None:
        """Append rows for items added to the catalog after training (zero popularity)."""
        cf_vectors = np.asarray(cf_vectors, np.float32)
        grown = {"cf": np.vstack([self._vectors["cf"], cf_vectors])}
        if self.has_content:
            if content_vectors is None or len(content_vectors) != len(cf_vectors):
                raise ValueError("content vectors are needed for every added item")
            grown["content"] = np.vstack([self._vectors["content"], np.asarray(content_vectors, np.float32)])
        self._vectors = grown
        self.popularity = np.concatenate([self.popularity, np.zeros(len(cf_vectors))])
        self._caches_dropped()

    def replace_rows(self, space: str, positions: Sequence[int], vectors: np.ndarray) -> None:
        """New vectors for existing rows of a space (an item's text was edited): a copy with
        the rows replaced is swapped in, so a request running meanwhile reads one or the other."""
        positions = np.asarray(positions, np.int64)
        if len(positions) == 0:
            return
        grown = dict(self._vectors)
        grown[space] = grown[space].copy()
        grown[space][positions] = np.asarray(vectors, np.float32)
        indexed = positions[positions < self.n_indexed]
        self._replaced[space] = np.union1d(self._replaced.get(space, _NO_POSITIONS), indexed)
        self._vectors = grown
        self._caches_dropped()

    def _caches_dropped(self) -> None:
        self._unit: dict[str, np.ndarray] = {}
        self._transposed: dict[str, np.ndarray] = {}
        self._popular_order: np.ndarray | None = None
        self._bins: np.ndarray | None = None

    def popularity_bins(self) -> np.ndarray:
        """Head/mid/tail bin of every item (:func:`popularity_bins`), cached until the catalog grows."""
        bins = self._bins
        if bins is None or len(bins) != len(self.popularity):
            bins = popularity_bins(self.popularity)
            self._bins = bins
        return bins

    def _columns(self, space: str) -> np.ndarray:
        """The space's vectors transposed, contiguous (cached until the space changes): made only
        when a sparse query arrives (see ``exact_scores``), so dense models never pay its memory."""
        vectors = self._vectors[space]
        columns = self._transposed.get(space)
        if columns is None or columns.shape[1] != len(vectors):
            columns = np.ascontiguousarray(vectors.T)
            self._transposed[space] = columns
        return columns

    def unit_vectors(self, space: str) -> np.ndarray:
        """L2-normalized rows of a space (cached until the space grows)."""
        vectors = self._vectors[space]
        unit = self._unit.get(space)
        if unit is None or len(unit) != len(vectors):  # (a request racing ``extend`` may cache the old rows)
            unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
            self._unit[space] = unit
        return unit

    def _index_beats_scan(self, role: str) -> bool:
        """Whether the role's approximate index answers faster than an exact scan here.

        An exact index, or an Annoy index the build found slower than a scan (``prefer_exact``),
        never does. An HNSW index was chosen at build over an exact scan that normalises once,
        as this one does, so it is used. For Annoy the scan is timed on a few item rows and
        compared with the index's build-time latency (indexes built before the exact scan
        normalised once were measured against a slower scan)."""
        index = self.indexes[role]
        if isinstance(index, ExactIndex) or index.prefer_exact:
            return False
        if not isinstance(index, AnnoyItemIndex):
            return True
        if index.query_ms_ is None or role not in SPACE_OF_ROLE:
            return True
        vectors = self._vectors[SPACE_OF_ROLE[role]]
        self.exact_scores(role, vectors[0])  # fills the unit-vector cache outside the timing
        timings = []
        for query in vectors[:: max(1, len(vectors) // 5)][:5]:
            start = time.perf_counter()
            _select(self.exact_scores(role, query), 10, _NO_POSITIONS, _NO_POSITIONS)
            timings.append(time.perf_counter() - start)
        scan_ms = min(timings) * 1000  # the best of a few: robust to a busy machine
        logger.debug("%s role: annoy %.3f ms/query at build, exact scan %.3f ms now", role, index.query_ms_, scan_ms)
        return index.query_ms_ < scan_ms

    def metric(self, role: str) -> str:
        """The metric each role is searched with: its index's (chosen per index at training);
        without an index, the model's own for users and cosine for item/content similarity."""
        index = self.indexes.get(role)
        if index is not None:
            return index.metric
        return self.model_metric if role == "user" else "cosine"

    def rows(self) -> int:
        """Rows a request may rank: the items the catalog lists. ``add_items`` grows the vectors
        first and publishes the ids last, so a request that runs meanwhile sees a consistent
        prefix (read once per request)."""
        return len(self.catalog.item_ids)

    def exact_scores(self, role: str, query: np.ndarray, rows: int | None = None) -> np.ndarray:
        """Scores of the first ``rows`` rows (default: all listed) of the role's space against
        one query (a fresh float32 array)."""
        metric, space = self.metric(role), SPACE_OF_ROLE[role]
        rows = self.rows() if rows is None else rows
        q = np.asarray(query, np.float32).ravel()
        if metric == "dot":
            vectors = self._vectors[space]
            nonzero = np.flatnonzero(q)
            if len(nonzero) * SPARSE_QUERY_FACTOR <= len(q):
                # a mostly-zero query (an ensemble's item-kNN part: the user's history row over a
                # catalog-wide block) reads only its nonzero dimensions' columns, not every row
                return q[nonzero] @ self._columns(space)[nonzero, :rows]
            return vectors[:rows] @ q
        if metric == "cosine":
            return self.unit_vectors(space)[:rows] @ (q / max(float(np.linalg.norm(q)), 1e-12))
        return pairwise_scores(q, self._vectors[space][:rows], metric)[0]

    # ---- lists -------------------------------------------------------------------------
    def rank(
        self, request: RankRequest, cf_vector: np.ndarray, seen: np.ndarray, content_profile: np.ndarray | None = None
    ) -> list[ScoredItem]:
        """A user's (or session's) list: ``cf_vector`` in the CF space, ``content_profile``
        in the content space (content and hybrid modes), ``seen`` explains each item and is
        the history popularity calibration aims at."""
        strength = self.default_calibration if request.calibration is None else request.calibration
        if strength != (request.calibration or 0.0):
            request = replace(request, calibration=strength)
        pool, mode, filters = request.pool, request.mode, request.filters
        if mode == "collaborative":
            ids, scores = self.top("user", cf_vector, pool, request.exclude, filters)
        elif mode == "content":
            ids, scores = self.top("content", content_profile, pool, request.exclude, filters)
        else:
            rows = self.rows()
            ids, scores = self._blend_top(
                self.exact_scores("user", cf_vector, rows),
                self.exact_scores("content", content_profile, rows),
                request,
                pool,
                request.exclude,
            )
        ids, scores = self._page(ids, scores, seen, request)
        return self._scored(ids, scores, self._reasons(ids, seen, mode))

    def _page(
        self, ids: np.ndarray, scores: np.ndarray, seen: np.ndarray, request: RankRequest
    ) -> tuple[np.ndarray, np.ndarray]:
        """The one pager: rows ``offset:offset+k`` of the request's list. Re-rankers build the
        list block by block (:data:`PAGE_BLOCK`), each block from the best ``block_window``
        candidates not yet picked and given what was picked before, so the list does not
        depend on ``k`` or ``offset`` and pages never repeat an item."""
        if not request.reranked:
            return ids[request.offset : request.n], scores[request.offset : request.n]
        window, block = request.block_window, PAGE_BLOCK
        taken = np.zeros(len(ids), bool)
        out_ids: list[np.ndarray] = []
        out_scores: list[np.ndarray] = []
        picked = _NO_POSITIONS
        for b in range(-(-request.n // block)):
            cand = np.flatnonzero(~taken[: window + b * block])
            if len(cand) == 0:
                break
            c_ids, c_scores = ids[cand], scores[cand]
            if request.calibration:
                c_ids, c_scores = calibrate(
                    c_ids, c_scores, seen, self.popularity_bins(), request.calibration, block, context=picked
                )
            if request.diversity is not None and request.diversity < 1.0:
                c_ids, c_scores = self._mmr(c_ids, c_scores, request.diversity, block, context=picked)
            c_ids, c_scores = c_ids[:block], c_scores[:block]
            taken[: window + b * block] |= np.isin(ids[: window + b * block], c_ids)
            out_ids.append(c_ids)
            out_scores.append(c_scores)
            picked = np.concatenate([picked, c_ids])
        if not out_ids:
            return ids[:0], scores[:0]
        all_ids, all_scores = np.concatenate(out_ids), np.concatenate(out_scores)
        return all_ids[request.offset : request.n], all_scores[request.offset : request.n]

    def similar(self, position: int, request: RankRequest) -> list[ScoredItem]:
        """Items nearest to the item at ``position`` (which is never returned)."""
        exclude = np.union1d(request.exclude, [position])  # sorted and unique, as top() needs
        if request.mode == "collaborative":
            ids, scores = self.top("item", self._vectors["cf"][position], request.n, exclude, request.filters)
        elif request.mode == "content":
            ids, scores = self.top("content", self._vectors["content"][position], request.n, exclude, request.filters)
        else:
            rows = self.rows()
            ids, scores = self._blend_top(
                self.exact_scores("item", self._vectors["cf"][position], rows),
                self.exact_scores("content", self._vectors["content"][position], rows),
                request,
                request.n,
                exclude,
            )
        ids, scores = ids[request.offset : request.n], scores[request.offset : request.n]
        reasons = [_SIMILAR_REASONS[request.mode]] * len(ids)
        if request.mode == "collaborative":
            # "liked by the same users" only where both items have users: a new item's CF vector
            # was predicted from its text (or is untrained), so its text is the honest reason
            content = _SIMILAR_REASONS["content"] if self.has_content else NEW_ITEM_REASON
            unused = self.without_interactions(ids) | bool(self.without_interactions(np.array([position]))[0])
            reasons = [content if u else r for r, u in zip(reasons, unused.tolist())]
        return self._scored(ids, scores, reasons)

    def search(
        self,
        request: RankRequest,
        lexical_scores: np.ndarray | None,
        query_vector: np.ndarray | None,
        lexical_weight: float = 0.5,
    ) -> list[ScoredItem]:
        """A text search's list: items that match the query's words (``lexical_scores`` > 0,
        BM25 per position) or its meaning (cosine of ``query_vector`` with the content vectors
        ≥ ``MEANING_MIN_SIMILARITY``), ranked by the blend ``w·lexical/max lexical + (1 − w)·
        cosine`` (``w = lexical_weight``). Either input may be None (that half matches
        nothing). Nothing that matches neither is returned, so a query that matches nothing
        gives an empty list. Exact over the listed rows; filters, exclusions and the page as on
        every list."""
        rows = self.rows()
        fused = np.zeros(rows, np.float32)
        words = np.zeros(rows, bool)
        meaning = np.zeros(rows, bool)
        if lexical_scores is not None and lexical_weight > 0:
            lexical = np.asarray(lexical_scores, np.float32)[:rows]
            words[: len(lexical)] = lexical > 0
            top = float(lexical.max()) if len(lexical) else 0.0
            if top > 0:
                fused[: len(lexical)] += lexical_weight * lexical / top
        if query_vector is not None and lexical_weight < 1 and float(np.linalg.norm(query_vector)) > 0:
            cosine = self.exact_scores("content", query_vector, rows)
            meaning = cosine >= MEANING_MIN_SIMILARITY
            fused += (1 - lexical_weight) * np.where(meaning, cosine, 0).astype(np.float32)
        fused[~(words | meaning)] = -np.inf
        ids, scores = _select(fused, request.n, request.exclude, self.catalog.blocked(request.filters))
        ids, scores = ids[request.offset : request.n], scores[request.offset : request.n]
        reasons = [_SEARCH_REASONS[(bool(words[j]), bool(meaning[j]))] for j in ids.tolist()]
        return self._scored(ids, scores, reasons)

    def popular(self, request: RankRequest) -> list[ScoredItem]:
        rows = self.rows()
        if self._popular_order is None or len(self._popular_order) != rows:
            self._popular_order = np.argsort(-self.popularity[:rows], kind="stable")
        order = self._popular_order
        allowed = self.catalog.mask(request.filters)
        if len(request.exclude):
            allowed = allowed.copy()
            allowed[request.exclude] = False
        ids = order[allowed[order]][request.offset : request.n]
        reasons = [NEW_ITEM_REASON if u else "popular" for u in self.without_interactions(ids).tolist()]
        return self._scored(ids, self.popularity[ids], reasons)

    def without_interactions(self, ids: np.ndarray) -> np.ndarray:
        """Per position: no training user interacted with the item (added since training, or
        in the catalog but never touched); its CF vector then carries no collaborative signal."""
        return self.popularity[np.asarray(ids, np.int64)] <= 0

    # ---- scoring -----------------------------------------------------------------------
    def top(
        self, role: str, query: np.ndarray, n: int, exclude: np.ndarray, filters: Filters = NO_FILTERS
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-n allowed, non-excluded rows of the role's space, best first. ``exclude``: sorted,
        unique positions (a RankRequest's).

        Through the role's index with over-fetching when it is faster than a scan, falling back
        to the exact scan when filters leave too few; rows added after training are not in the
        index and are scored exactly and merged in."""
        if role not in self.indexed_roles:
            return _select(self.exact_scores(role, query), n, exclude, self.catalog.blocked(filters))
        index = self.indexes[role]
        vectors = self._vectors[SPACE_OF_ROLE[role]]
        allowed = self.catalog.mask(filters)
        n_indexed = self.n_indexed
        replaced = self._replaced.get(SPACE_OF_ROLE[role], _NO_POSITIONS)
        result = None
        fetch = n + len(exclude) + len(replaced) + 16
        while True:
            ids, scores = index.query(query, min(fetch, n_indexed))
            keep = allowed[ids] & ~_among(ids, exclude) & ~_among(ids, replaced)
            if keep.sum() >= n:
                result = (ids[keep][:n], scores[keep][:n])
                break
            if fetch >= n_indexed:
                break
            fetch *= 4
        if result is None:
            return _select(self.exact_scores(role, query), n, exclude, self.catalog.blocked(filters))
        rows = self.rows()
        if rows > n_indexed or len(replaced):  # cold-start items added since training, re-encoded rows
            extra = np.concatenate([replaced, np.arange(n_indexed, rows)])
            extra = extra[allowed[extra] & ~_among(extra, exclude)]
            if len(extra):
                extra_scores = pairwise_scores(query, vectors[extra], self.metric(role))[0]
                ids = np.concatenate([result[0], extra])
                scores = np.concatenate([result[1], extra_scores])
                order = np.argsort(-scores, kind="stable")[:n]
                result = (ids[order], scores[order])
        return result[0].astype(np.int64), result[1].astype(np.float32)

    def _blend_top(
        self, cf_scores: np.ndarray, content_scores: np.ndarray, request: RankRequest, n: int, exclude: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Blend over the whole catalog (exact: see recsys.hybrid), then the top-n allowed."""
        weights = request.blend_weights or self.default_blend_weights
        fused = blend(cf_scores, content_scores, weights, request.fusion or self.default_fusion)[0]
        return _select(fused, n, exclude, self.catalog.blocked(request.filters))

    def _mmr(
        self, ids: np.ndarray, scores: np.ndarray, lam: float, n: int, *, context: np.ndarray = _NO_POSITIONS
    ) -> tuple[np.ndarray, np.ndarray]:
        """Maximal marginal relevance (Carbonell & Goldstein): λ·relevance − (1−λ)·max similarity
        to what is already picked (``context``: positions picked before these), on cosine of
        the CF item vectors."""
        if len(ids) == 0:
            return ids, scores
        unit = self.unit_vectors("cf")
        vecs = unit[ids]
        relevance = lam * _minmax(scores)
        sim = (1 - lam) * (vecs @ vecs.T)
        before = ((1 - lam) * (vecs @ unit[context].T)).max(axis=1) if len(context) else np.zeros(len(ids), np.float32)
        picked = [int(np.argmax(relevance - before))]
        penalty = np.maximum(before, sim[picked[0]])
        remaining = np.ones(len(ids), bool)
        remaining[picked[0]] = False
        while len(picked) < min(n, len(ids)):
            nxt = int(np.argmax(np.where(remaining, relevance - penalty, -np.inf)))
            picked.append(nxt)
            remaining[nxt] = False
            np.maximum(penalty, sim[nxt], out=penalty)
        picked = np.asarray(picked)
        return ids[picked], scores[picked]

    def _reasons(self, ids: np.ndarray, seen: np.ndarray, mode: str) -> list[str | None]:
        """For each returned item, which of the user's recent items it is closest to, in the
        mode's space (one small matrix product for the returned list only)."""
        if len(seen) == 0 or len(ids) == 0:
            return [None] * len(ids)
        recent = np.asarray(seen[-REASON_ANCHORS:], np.int64)
        titles, item_ids = self.catalog.titles, self.catalog.item_ids

        def anchored(space: str, template: str, rows: np.ndarray) -> list[str]:
            unit = self.unit_vectors(space)
            anchors = recent[np.argmax(unit[rows] @ unit[recent].T, axis=1)]
            return [template.format(titles[a] or item_ids[a]) for a in anchors.tolist()]

        ids = np.asarray(ids, np.int64)
        if mode == "content":
            return anchored("content", "similar text to {}", ids)
        reasons: list[str | None] = anchored("cf", "because you interacted with {}", ids)
        # An item without interactions is near the user's items by its text (its CF vector was
        # predicted from it) or by chance (untrained): never by what other users did.
        new = np.flatnonzero(self.without_interactions(ids))
        if len(new):
            by_text = anchored("content", "similar text to {}", ids[new]) if self.has_content else None
            for n, j in enumerate(new.tolist()):
                reasons[j] = by_text[n] if by_text is not None else NEW_ITEM_REASON
        return reasons

    def _scored(self, ids: np.ndarray, scores: np.ndarray, reasons: Sequence[str | None]) -> list[ScoredItem]:
        titles, item_ids = self.catalog.titles, self.catalog.item_ids
        return [
            ScoredItem(item_id=item_ids[j], score=s, title=titles[j], reason=r)
            for j, s, r in zip(np.asarray(ids).tolist(), np.asarray(scores, np.float64).tolist(), reasons)
        ]


def _select(scores: np.ndarray, n: int, exclude: np.ndarray, blocked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-n of one fresh score vector (overwritten in place), skipping ``exclude`` and
    ``blocked`` positions; best first, ties by lower position, only real entries. The order of
    index.exact.top_k_from_scores, without its 2-D machinery and copies (this runs per request)."""
    scores = np.asarray(scores, np.float32)
    if len(blocked) and blocked[-1] >= len(scores):  # items being added (see Ranker.rows)
        blocked = blocked[blocked < len(scores)]
    scores[blocked] = -np.inf
    scores[exclude] = -np.inf
    if len(blocked) * 2 > len(scores):
        # Mostly blocked (a narrow filter): argpartition crawls over many equal -inf entries
        # (220 µs instead of 16 on 10k items), so pick among the allowed entries only.
        candidates = np.flatnonzero(scores > -np.inf)
        ids = candidates[_top_unordered(scores[candidates], n)]
    else:
        ids = _top_unordered(scores, n)
    if 0 < len(ids) < len(scores):
        # argpartition cuts among equal scores arbitrarily: take every entry tied with the
        # cut so that the order is always (score, position) and a page of k + offset rows
        # is the prefix of any longer one (BM25 scores tie often)
        cut = scores[ids].min()
        if cut > -np.inf and np.count_nonzero(scores >= cut) > len(ids):
            ids = np.flatnonzero(scores >= cut)
    top = scores[ids]
    order = np.lexsort((ids, -top))
    ids, top = ids[order][:n], top[order][:n]
    keep = top > -np.inf
    return ids[keep], top[keep]


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique`` of a fresh 1-D array (sorted in place), without its generic machinery
    (a request's history: 5 µs → 2 µs)."""
    values.sort()
    if len(values) < 2:
        return values
    keep = np.empty(len(values), bool)
    keep[0] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values[keep]


def _among(ids: np.ndarray, sorted_unique: np.ndarray) -> np.ndarray:
    """``np.isin(ids, sorted_unique)`` for a sorted, unique second array (a RankRequest's
    ``exclude``): one binary search per id instead of isin's sort of both (35 µs → 3 µs for
    a page of candidates against a history)."""
    if len(sorted_unique) == 0:
        return np.zeros(len(ids), bool)
    at = np.searchsorted(sorted_unique, ids)
    np.minimum(at, len(sorted_unique) - 1, out=at)
    return sorted_unique[at] == ids


def _top_unordered(scores: np.ndarray, n: int) -> np.ndarray:
    """Positions of the n highest scores, in no particular order."""
    size = len(scores)
    if n >= size:
        return np.arange(size)
    if n <= 0:
        return _NO_POSITIONS
    return np.argpartition(scores, size - n)[size - n :]


def _minmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    span = x.max() - x.min() if len(x) else 0.0
    return np.zeros_like(x) if span <= 0 else (x - x.min()) / span


# ---- popularity calibration (Steck 2018, over popularity bins) ---------------------------------

#: calibration works over the popularity deciles (recsys.evaluation.bias.popularity_deciles):
#: ten equal-count bins of items by training popularity. Measured on MovieLens 100K
#: (bench/bias_movielens.py) against head/mid/tail bins by interaction mass (Abdollahpouri et
#: al. 2021) and ten equal-mass bins: deciles cut exposure amplification most per nDCG lost.
N_POPULARITY_BINS = 10


def popularity_bins(popularity: np.ndarray) -> np.ndarray:
    """Popularity decile 0..9 of every item (0 = least popular)."""
    return popularity_deciles(popularity)


def calibrate(
    ids: np.ndarray,
    scores: np.ndarray,
    history: np.ndarray,
    bins: np.ndarray,
    strength: float,
    n: int,
    *,
    smoothing: float = 0.01,
    context: np.ndarray = _NO_POSITIONS,
) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated re-ranking (Steck, "Calibrated recommendations", RecSys 2018) over
    popularity bins: greedily pick ``n`` of the candidates ``ids`` (best first) maximizing

        (1 − λ) · Σ relevance  −  λ · KL(p ‖ q̃)

    where ``p`` is the user's own distribution over the bins (of ``history`` positions), ``q``
    that of the list so far and ``q̃ = (1 − a)·q + a·p`` (``a = smoothing``). Relevance is the
    candidates' scores min–max scaled to [0, 1]. ``λ = strength`` (0: the list as ranked,
    1: the calibration term alone). A user without history is returned unchanged.

    The chosen set is returned in the model's order (by score), not in the greedy order:
    calibration is a property of the list as a set, and the greedy order puts calibrating
    items above better ones. ``context``: positions already in the list above these (the
    pager's earlier blocks), counted in ``q``. On MovieLens 100K (bench/bias_movielens.py, strength 0.7) this
    halves the accuracy cost for the same amplification cut (nDCG@10 −5.7% instead of
    −10.5%, amplification −30% either way)."""
    ids, scores = np.asarray(ids), np.asarray(scores)
    history = np.asarray(history, dtype=np.int64)
    if strength <= 0 or len(ids) == 0 or len(history) == 0:
        return ids[:n], scores[:n]
    n_bins = N_POPULARITY_BINS
    p = np.bincount(bins[history], minlength=n_bins).astype(np.float64)
    p /= p.sum()
    relevance = _minmax(scores)
    cand_bins = bins[ids].astype(np.int64)
    context = np.asarray(context, dtype=np.int64)
    counts = np.bincount(bins[context], minlength=n_bins).astype(np.float64) if len(context) else np.zeros(n_bins)
    total_rel = 0.0
    remaining = np.ones(len(ids), dtype=bool)
    picked: list[int] = []
    eye = np.eye(n_bins)
    p_safe = np.where(p > 0, p, 1.0)
    for step in range(min(n, len(ids))):
        # KL of the list with one more item of each bin (only n_bins distinct values)
        q = (counts[None, :] + eye) / (len(context) + step + 1)
        q = (1 - smoothing) * q + smoothing * p[None, :]
        # q > 0 wherever p > 0 (smoothing); bins with p = 0 add nothing
        kl = (p[None, :] * np.log(p_safe[None, :] / np.where(q > 0, q, 1.0))).sum(axis=1)
        objective = (1 - strength) * (total_rel + relevance) - strength * kl[cand_bins]
        j = int(np.argmax(np.where(remaining, objective, -np.inf)))
        picked.append(j)
        remaining[j] = False
        counts[cand_bins[j]] += 1
        total_rel += relevance[j]
    order = np.sort(np.asarray(picked, dtype=np.int64))  # candidates come best first
    return ids[order], scores[order]


def calibrate_batch(
    candidates: np.ndarray,
    scores: np.ndarray,
    histories: Sequence[np.ndarray],
    bins: np.ndarray,
    strength: float,
    n: int,
) -> np.ndarray:
    """:func:`calibrate` for every row of ``candidates`` ((users, m) item positions best first,
    ``-1`` padding) — offline evaluation of the same re-ranking the Ranker serves. Returns
    (users, n) positions, ``-1`` padded."""
    out = np.full((len(candidates), n), -1, dtype=np.int64)
    for i, (ids, sc) in enumerate(zip(candidates, scores)):
        keep = ids >= 0
        chosen, _ = calibrate(ids[keep], sc[keep], histories[i], bins, strength, n)
        out[i, : len(chosen)] = chosen
    return out
