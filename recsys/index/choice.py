"""Which index serves a space: measured at build time, not assumed.

Every candidate (exact scan, ScaNN, faiss IVF, HNSW, Annoy) that serves the space's metric is
built on its vectors, tuned to the recall target on held-out queries, and timed one query at a
time. The choice is the fastest candidate whose recall@10 lower bound reaches the target (exact
always does in float32); when none does, the one with the best recall. The figures of every
candidate travel with the choice into the bundle manifest and the MLflow run.

Cost follows the work, by measured rules that say so in the log:

- the exact scan is built and timed first. A catalog of at most ``exact_max_items`` items
  goes exact with nothing else built or tuned, at any width (1,000 items of a 1,032-dim
  ensemble as of 64-dim ALS); above that a scan of a ``k``-item slice of the same vectors is
  timed too: its time is the per-query cost of the exact path (the call, the query's
  normalisation, the top-k), so the scan's time less it bounds what any approximate index can
  save per query. When that is at most ``exact_enough_ms``, none is built or tuned;
- candidates go cheapest to build first (ScaNN and IVF train on a sample), and HNSW is
  abandoned as soon as its measured insertion rate projects its build past what is left of
  ``build_budget_seconds`` for the space;
- Annoy is built by ``auto`` only up to ``annoy_auto_max_items`` items.

Every candidate left out by a rule is logged and recorded with its reason
(``IndexChoice.skipped``, in the bundle manifest beside the measured candidates).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from recsys.index.annoy_index import IVF_KINDS, AnnoyItemIndex, make_index
from recsys.index.base import METRICS, BuildTooSlow, ItemIndex, query_latencies_ms, recall_at_k, recall_lower_bound
from recsys.index.exact import ExactIndex
from recsys.index.hnsw_index import HNSW_SPACE, HnswItemIndex
from recsys.index.ivf_index import IVF_METRICS, IvfItemIndex
from recsys.index.scann_index import SCANN_DISTANCE, ScannItemIndex

logger = logging.getLogger(__name__)

#: ``auto``'s candidates, in the order they are built: the ones that won at 1M items first
#: (ScaNN for cosine, HNSW for dot; docs/ann.md), so the build budget is spent on them before
#: the IVF kinds, which lost everywhere on the bench's vectors. ``ivf_pq`` is left
#: out (ask for it by name): with faiss-cpu's generic build its 4-bit codes missed recall 0.95
#: even with every list searched and 200 re-ranked (200k×64: cosine 0.89, dot 0.91; docs/ann.md)
AUTO_KINDS = ("exact", "scann", "hnsw", "ivf_flat", "ivf_sq8", "annoy")
#: the metrics each kind serves; ``auto`` leaves a kind out (with a log line) for the others
KIND_METRICS: dict[str, tuple[str, ...]] = {
    "exact": METRICS,
    "annoy": METRICS,
    "hnsw": tuple(HNSW_SPACE),
    "scann": tuple(SCANN_DISTANCE),
    **dict.fromkeys(IVF_KINDS, IVF_METRICS),
}


@dataclass
class IndexSettings:
    """What the build may use; one value per knob (pipelines.train.IndexConfig maps onto it)."""

    target_recall: float = 0.95
    n_trees: int = 50
    search_k: int = -1
    M: int = 16
    ef_construction: int = 100
    ef: int = -1
    num_threads: int = -1
    vector_dtype: str = "float32"
    #: cap on each candidate's tuning time
    tune_seconds: float = 120.0
    #: queries timed one at a time for the latency comparison
    latency_queries: int = 100
    #: ``auto`` builds Annoy only up to this many items: beyond, it cannot win and its build and
    #: tuning were most of the choice's time (1M×64 cosine: 390 s in all). On clustered ALS-like
    #: vectors Annoy needs a search_k near the catalog size for recall 0.95 (100k items: 8.4 ms
    #: a query against 0.03 ms for HNSW, and slower than a scan). 0: never; ``kind: annoy``
    #: builds it at any size.
    annoy_auto_max_items: int = 200_000
    #: ScaNN tree leaves and IVF lists (-1: about 2·√n); their search knobs are always tuned
    num_leaves: int = -1
    #: ``auto`` builds no approximate index when the most any index can save per query — one
    #: exact query's time less that of a scan of ``k`` items (the per-query cost of the exact
    #: path) — is at most this (ms); 0: off. At 100k items (64 dims) the scan takes 1.1 ms and
    #: HNSW 0.02 ms (docs/ann.md), so the choice runs there
    exact_enough_ms: float = 0.1
    #: ``auto`` builds no approximate index, and times nothing but the scan, for a catalog of at
    #: most this many items: a count, not a timing, so the rule holds on a busy machine where
    #: timings stretch past ``exact_enough_ms`` (the demo's 1,032-dim ensemble, 1,000 items:
    #: 0.055 ms saved quiet, 0.11 ms at load 5–8, for 12 s of tuning). Above it the choice is
    #: cheap and pays in serving (64 dims, quiet, 2026-12-03: at 5,000 items the scan 0.146 ms
    #: and HNSW 0.008 ms for 1.3 s of building and tuning every candidate; at 10,000 items
    #: 0.154 vs 0.009 ms for 1.2 s). 0: off
    exact_max_items: int = 2000
    #: wall time for building, tuning and timing every candidate of one space: HNSW, the slowest
    #: to build, is abandoned once its insertion rate projects past what is left of it
    build_budget_seconds: float = 150.0

    def params(self, kind: str) -> dict[str, Any]:
        if kind == "scann" or kind in IVF_KINDS:
            return {
                ("num_leaves" if kind == "scann" else "nlist"): self.num_leaves,
                "target_recall": self.target_recall,
                "num_threads": self.num_threads,
                "tune_seconds": self.tune_seconds,
            }
        if kind == "annoy":
            return {
                "n_trees": self.n_trees,
                "search_k": self.search_k,
                "target_recall": self.target_recall,
                "tune_seconds": self.tune_seconds,
            }
        if kind == "hnsw":
            return {
                "M": self.M,
                "ef_construction": self.ef_construction,
                "ef": self.ef,
                "target_recall": self.target_recall,
                "num_threads": self.num_threads,
                "tune_seconds": self.tune_seconds,
            }
        return {"dtype": self.vector_dtype}


@dataclass
class CandidateReport:
    kind: str
    recall_at_10: float
    query_ms_p50: float
    #: building and tuning, together
    build_seconds: float
    #: the tuned knob: search_k (annoy), ef (hnsw), leaves searched (scann), nprobe (ivf); None
    #: for exact
    setting: int | None = None
    #: of which tuning
    tune_seconds: float = 0.0
    #: candidates re-ranked exactly (scann, ivf_sq8, ivf_pq)
    reorder: int | None = None
    #: what the tuning queries promise on others (recall less two standard errors); the bar
    recall_lower_bound: float | None = None

    def reaches(self, target: float) -> bool:
        bound = self.recall_at_10 if self.recall_lower_bound is None else self.recall_lower_bound
        return bound >= target


@dataclass
class SkippedCandidate:
    """A candidate ``auto`` did not build, and the measured rule that left it out."""

    kind: str
    reason: str


@dataclass
class IndexChoice:
    metric: str
    kind: str
    target_recall: float
    candidates: list[CandidateReport] = field(default_factory=list)
    skipped: list[SkippedCandidate] = field(default_factory=list)

    @property
    def chosen(self) -> CandidateReport:
        return next(c for c in self.candidates if c.kind == self.kind)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pick(candidates: list[CandidateReport], target: float) -> CandidateReport:
    """Recall ≥ target first, then the lowest latency; else the best recall."""
    reaching = [c for c in candidates if c.reaches(target)]
    if reaching:
        return min(reaching, key=lambda c: c.query_ms_p50)
    return max(candidates, key=lambda c: (c.recall_at_10, -c.query_ms_p50))


def _skip(skipped: list[SkippedCandidate], metric: str, kinds: list[str], reason: str) -> None:
    """Leave ``kinds`` out of the choice: one log line, and the record the manifest keeps."""
    logger.info("index %s: %s not built: %s", metric, ", ".join(kinds), reason)
    skipped.extend(SkippedCandidate(kind, reason) for kind in kinds)


def _candidates(
    kind: str, metric: str, n_items: int, settings: IndexSettings, kinds: tuple[str, ...], skipped: list
) -> list[str]:
    if kind != "auto":
        return [kind]
    order = []
    for candidate in (c for c in AUTO_KINDS if c in kinds):
        if metric not in KIND_METRICS[candidate]:
            _skip(
                skipped,
                metric,
                [candidate],
                f"it has no {metric} metric (serves {', '.join(KIND_METRICS[candidate])})",
            )
        elif candidate == "annoy" and n_items > settings.annoy_auto_max_items:
            _skip(
                skipped,
                metric,
                [candidate],
                f"{n_items} items > annoy_auto_max_items {settings.annoy_auto_max_items} (at this size it cannot "
                f"reach recall {settings.target_recall:.2f} faster than the other candidates; ask for kind annoy "
                "to build it anyway)",
            )
        else:
            order.append(candidate)
    return order


def _floor_ms(metric: str, vectors: np.ndarray, queries: np.ndarray, k: int) -> float:
    """Median time (ms) of one exact query on ``k`` of the items: what every query costs
    whatever the index (the call, the query's normalisation, the top-k selection)."""
    tiny = ExactIndex(metric).build(vectors[: max(k, 1)])
    return float(np.median(query_latencies_ms(tiny, queries, k)))


def build_index(
    kind: str,
    metric: str,
    vectors: np.ndarray,
    queries: np.ndarray,
    settings: IndexSettings | None = None,
    kinds: tuple[str, ...] = AUTO_KINDS,
    k: int = 10,
    on_candidate: Callable[[ItemIndex, CandidateReport], None] | None = None,
) -> tuple[ItemIndex, IndexChoice]:
    """Build the index of ``kind`` (one of ``INDEX_KINDS``) — or with ``auto`` every applicable
    kind of ``kinds`` — tuned on ``queries``; returns the index that serves and the measured
    choice. ``on_candidate`` sees every candidate once measured, before a losing one is dropped
    (bench/ann_bench.py measures each on its own queries there; that time is not charged to the
    build budget)."""
    settings = settings or IndexSettings()
    vectors = np.asarray(vectors, dtype=np.float32)
    queries = np.asarray(queries, dtype=np.float32)
    began = time.perf_counter()
    outside = 0.0  # seconds spent in on_candidate
    truth = ExactIndex(metric).build(vectors).query_batch(queries, k)[0]
    timed = queries[: settings.latency_queries]
    skipped: list[SkippedCandidate] = []
    order = _candidates(kind, metric, len(vectors), settings, kinds, skipped)
    best: tuple[ItemIndex, CandidateReport] | None = None
    reports: list[CandidateReport] = []
    floor_ms: float | None = None  # the per-query cost no index avoids (a scan of k items)
    for position, candidate in enumerate(order):
        left = settings.build_budget_seconds - (time.perf_counter() - began - outside)
        if kind == "auto" and best is not None and best[1].kind == "exact" and floor_ms is None:
            exact_ms = best[1].query_ms_p50
            if len(vectors) <= settings.exact_max_items:
                _skip(
                    skipped,
                    metric,
                    order[position:],
                    f"a catalog of {len(vectors):,} items (exact_max_items {settings.exact_max_items:,}) is scanned "
                    f"(exact scan p50 {exact_ms:.3f} ms)",
                )
                break
            floor_ms = _floor_ms(metric, vectors, timed, k)
            saving = exact_ms - floor_ms
            # 0 turns the rule off (a small catalog's scan can time below the k-item scan)
            if settings.exact_enough_ms > 0 and saving <= settings.exact_enough_ms:
                _skip(
                    skipped,
                    metric,
                    order[position:],
                    f"exact scan p50 {exact_ms:.3f} ms, {floor_ms:.3f} ms of it for any query (a scan of {k} "
                    f"items): no approximate index can save more than {max(saving, 0.0):.3f} ms a query "
                    f"(exact_enough_ms {settings.exact_enough_ms:.3f})",
                )
                break
        if kind == "auto" and best is not None and left <= 0:
            _skip(
                skipped,
                metric,
                order[position:],
                f"the build budget of {settings.build_budget_seconds:.0f}s for the space is spent",
            )
            break
        params = settings.params(candidate)
        if candidate == "hnsw" and kind == "auto" and best is not None:
            params["max_build_seconds"] = max(0.0, left)
        start = time.perf_counter()
        try:
            index = make_index(candidate, metric, **params).build(vectors)
        except BuildTooSlow as exc:
            _skip(
                skipped,
                metric,
                [candidate],
                f"{exc} (build budget {settings.build_budget_seconds:.0f}s per space, {left:.0f}s left)",
            )
            continue
        setting = reorder = None
        built = time.perf_counter()
        bound = best[1].query_ms_p50 if best is not None and best[1].reaches(settings.target_recall) else None
        if isinstance(index, AnnoyItemIndex):
            # Stops doubling once Annoy, short of the target, is slower than a scan or than a
            # candidate that already reached it: it can no longer win.
            index.tune(vectors, queries, k, stop_when_slower=True, slower_than_ms=bound, truth=truth)
            setting = index.search_k
        elif isinstance(index, HnswItemIndex):
            # likewise: short of the target and slower than a candidate that reached it (the
            # exact scan, built first), a wider beam only costs more
            index.tune(vectors, queries, k, truth=truth, slower_than_ms=bound)
            setting = index.ef
        elif isinstance(index, (ScannItemIndex, IvfItemIndex)):
            index.tune(vectors, queries, k, truth=truth, slower_than_ms=bound)
            setting = index.setting
            reorder = None if isinstance(index, IvfItemIndex) and not index.refines else index.reorder
        tuned = time.perf_counter()
        build_seconds, tune_seconds = tuned - start, tuned - built
        # the exact scan is the truth itself: no second pass over the catalog (30 s at 1M×64)
        found = (
            truth if isinstance(index, ExactIndex) and index.dtype == "float32" else index.query_batch(queries, k)[0]
        )
        report = CandidateReport(
            candidate,
            round(recall_at_k(found, truth), 4),
            round(float(np.median(query_latencies_ms(index, timed, k))), 4),
            round(build_seconds, 2),
            setting,
            round(tune_seconds, 2),
            reorder,
            round(recall_lower_bound(found, truth), 4),
        )
        reports.append(report)
        if on_candidate is not None:
            begun = time.perf_counter()
            on_candidate(index, report)
            outside += time.perf_counter() - begun
        logger.info(
            "index %s/%s: recall@%d %.3f (lower bound %.3f), p50 %.3f ms, built in %.1fs%s",
            metric,
            candidate,
            k,
            report.recall_at_10,
            report.recall_lower_bound,
            report.query_ms_p50,
            report.build_seconds,
            f" ({setting=}{f', {reorder=}' if reorder is not None else ''})" if setting is not None else "",
        )
        dropped = best is not None  # past the first candidate, this one or the best so far loses
        if best is None or _pick([best[1], report], settings.target_recall) is report:
            best = (index, report)
        del index
        if dropped:  # a losing index's memory (1M items: GBs) back before the next build; a
            gc.collect()  # full collection costs ~0.5 s in a process holding a large heap
    chosen = best[1]
    if kind == "auto":
        logger.info(
            "index %s: chose %s (recall@%d %.3f, p50 %.3f ms) among %s in %.0fs",
            metric,
            chosen.kind,
            k,
            chosen.recall_at_10,
            chosen.query_ms_p50,
            ", ".join(f"{c.kind} {c.recall_at_10:.3f}/{c.query_ms_p50:.3f}ms" for c in reports),
            time.perf_counter() - began - outside,
        )
    return best[0], IndexChoice(metric, chosen.kind, settings.target_recall, reports, skipped)
