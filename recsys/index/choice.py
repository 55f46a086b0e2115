"""Which index serves a space: measured at build time, not assumed.

Every candidate (exact scan, HNSW, Annoy) is built on the space's vectors, tuned to the
recall target on held-out queries, and timed one query at a time. The choice is the fastest
candidate whose recall@10 reaches the target (exact always does in float32); when none does,
the one with the best recall. The figures of every candidate travel with the choice into the
bundle manifest and the MLflow run.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from recsys.index.annoy_index import AnnoyItemIndex, make_index
from recsys.index.base import ItemIndex, query_latencies_ms, recall_at_k
from recsys.index.exact import ExactIndex
from recsys.index.hnsw_index import HNSW_SPACE, HnswItemIndex

logger = logging.getLogger(__name__)

AUTO_KINDS = ("exact", "hnsw", "annoy")


@dataclass
class IndexSettings:
    """What the build may use; one value per knob (pipelines.train.IndexConfig maps onto it)."""

    target_recall: float = 0.95
    n_trees: int = 50
    search_k: int = -1
    M: int = 24
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

    def params(self, kind: str) -> dict[str, Any]:
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
    #: the tuned knob: search_k (annoy), ef (hnsw); None for exact
    setting: int | None = None
    #: of which tuning
    tune_seconds: float = 0.0

    def reaches(self, target: float) -> bool:
        return self.recall_at_10 >= target


@dataclass
class IndexChoice:
    metric: str
    kind: str
    target_recall: float
    candidates: list[CandidateReport] = field(default_factory=list)

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
    """Build the index of ``kind`` (annoy, exact, hnsw) — or with ``auto`` every applicable kind
    of ``kinds`` — tuned on ``queries``; returns the index that serves and the measured choice.
    ``on_candidate`` sees every candidate once measured, before a losing one is dropped
    (bench/ann_bench.py measures each on its own queries there)."""
    settings = settings or IndexSettings()
    vectors = np.asarray(vectors, dtype=np.float32)
    queries = np.asarray(queries, dtype=np.float32)
    truth = ExactIndex(metric).build(vectors).query_batch(queries, k)[0]
    timed = queries[: settings.latency_queries]
    if kind == "auto":
        # HNSW has no manhattan/hamming space; exact first: its latency bounds Annoy's tuning
        order = [c for c in ("exact", "hnsw", "annoy") if c in kinds and (c != "hnsw" or metric in HNSW_SPACE)]
        if "annoy" in order and len(vectors) > settings.annoy_auto_max_items:
            order.remove("annoy")
            logger.info(
                "index %s: annoy not built: %d items > annoy_auto_max_items %d (at this size it cannot "
                "reach recall %.2f faster than the other candidates; ask for kind annoy to build it anyway)",
                metric,
                len(vectors),
                settings.annoy_auto_max_items,
                settings.target_recall,
            )
    else:
        order = [kind]
    best: tuple[ItemIndex, CandidateReport] | None = None
    reports: list[CandidateReport] = []
    for candidate in order:
        start = time.perf_counter()
        index = make_index(candidate, metric, **settings.params(candidate)).build(vectors)
        setting = None
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
        tuned = time.perf_counter()
        build_seconds, tune_seconds = tuned - start, tuned - built
        recall = recall_at_k(index.query_batch(queries, k)[0], truth)
        report = CandidateReport(
            candidate,
            round(recall, 4),
            round(float(np.median(query_latencies_ms(index, timed, k))), 4),
            round(build_seconds, 2),
            setting,
            round(tune_seconds, 2),
        )
        reports.append(report)
        if on_candidate is not None:
            on_candidate(index, report)
        logger.info(
            "index %s/%s: recall@%d %.3f, p50 %.3f ms, built in %.1fs%s",
            metric,
            candidate,
            k,
            report.recall_at_10,
            report.query_ms_p50,
            report.build_seconds,
            f" ({setting=})" if setting is not None else "",
        )
        if best is None or _pick([best[1], report], settings.target_recall) is report:
            best = (index, report)
        del index
        gc.collect()
    chosen = best[1]
    if kind == "auto":
        logger.info(
            "index %s: chose %s (recall@%d %.3f, p50 %.3f ms) among %s",
            metric,
            chosen.kind,
            k,
            chosen.recall_at_10,
            chosen.query_ms_p50,
            ", ".join(f"{c.kind} {c.recall_at_10:.3f}/{c.query_ms_p50:.3f}ms" for c in reports),
        )
    return best[0], IndexChoice(metric, chosen.kind, settings.target_recall, reports)
