"""Tuning search knobs to about the smallest value whose recall lower bound on held-out queries
reaches the target — one code for every kind: Annoy's ``search_k``, HNSW's ``ef``, ScaNN's
leaves and re-rank width, IVF's ``nprobe`` and re-rank width. Doubling then bisection
(:func:`recsys.index.base.smallest_reaching`) against the bar of
:func:`recsys.index.base.recall_lower_bound`."""

from __future__ import annotations

import logging
import math
import time
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from recsys.index.base import (
    ItemIndex,
    check_metric,
    query_latencies_ms,
    recall_at_k,
    recall_lower_bound,
    smallest_reaching,
)

logger = logging.getLogger(__name__)

#: partitioned kinds (ScaNN leaves, IVF lists): re-rank width while the partition knob is
#: tuned, in multiples of k
TUNE_REORDER_FACTOR = 20
#: below this many items a partitioned kind does not partition (k-means has nothing to split)
PARTITION_MIN_ITEMS = 256
#: tuning queries timed one at a time (the median) to compare a setting with a faster rival:
#: like for like with the choice's p50. The batch's wall time is no measure of it on a shared
#: machine: at load 25 on 2 cores, HNSW's batch time per query at 20k items exceeded the scan's
#: single-query median, and tuning stopped short of the target at every size up to 100k
TIMED_QUERIES = 50


def default_partitions(n_items: int) -> int:
    """About 2·√n partitions (2,000 at 1M items; ScaNN's guidance is √n to a few √n), at
    least 20 items each."""
    return max(1, min(int(2 * math.sqrt(n_items)), n_items // 20))


@dataclass
class KnobTuning:
    """The outcome of tuning one knob."""

    value: int
    recall: float
    lower_bound: float
    #: median single-query time at ``value`` (ms), when it was compared with a rival; else the
    #: batch's time per query
    ms_per_query: float
    #: None when the bar was reached; else why tuning stopped short
    why_not: str | None
    probes: int


def tune_knob(
    index: ItemIndex,
    set_value: Callable[[int], None],
    queries: np.ndarray,
    truth: np.ndarray,
    k: int,
    *,
    lo: int,
    hi: int,
    ceiling: int,
    bar: float,
    deadline: float,
    slower_than_ms: float | None = None,
) -> KnobTuning:
    """About the smallest knob value in (``lo``, ``ceiling``] at which ``index`` answers
    ``queries`` (top ``k``) with a recall lower bound reaching ``bar``. Gives up early once a
    value still short of the bar answers one query slower (median) than ``slower_than_ms`` (a
    candidate that already reached it): a wider search only costs more."""
    tried: dict[int, tuple[float, float, float]] = {}
    timed = queries[:TIMED_QUERIES]

    def probe(value: int) -> float:
        set_value(value)
        start = time.perf_counter()
        found = index.query_batch(queries, k)[0]
        ms = (time.perf_counter() - start) / max(len(queries), 1) * 1000
        bound = recall_lower_bound(found, truth)
        if slower_than_ms is not None and bound < bar:
            ms = float(np.median(query_latencies_ms(index, timed, k)))
        tried[value] = (recall_at_k(found, truth), bound, ms)
        return bound

    def slower(value: int) -> bool:
        return slower_than_ms is not None and tried[value][2] > slower_than_ms

    value, why_not = smallest_reaching(probe, lo=lo, hi=hi, ceiling=ceiling, bar=bar, deadline=deadline, give_up=slower)
    set_value(value)
    recall, bound, ms = tried[value]
    return KnobTuning(value, recall, bound, ms, why_not, len(tried))


def record_tuning(index: ItemIndex, outcome: KnobTuning, setting: str, k: int, bar: float, n_queries: int) -> float:
    """The end of every tuning: the one log line (reached, stopped as slower than a rival, or
    not reachable), the recall kept as the index's ``recall_at_10_`` (for k = 10); returns it."""
    if k == 10:
        index.recall_at_10_ = outcome.recall
    name = f"{index.kind} {index.metric} index"
    if outcome.why_not == "slower":
        logger.info(
            "%s: at %s recall@%d %.3f and %.3f ms/query, short of %.3f and slower than the alternative: stopped tuning",
            name,
            setting,
            k,
            outcome.recall,
            outcome.ms_per_query,
            bar,
        )
    elif outcome.why_not is not None:
        logger.warning(
            "%s: recall@%d target %.3f not reachable (best %.3f, lower bound %.3f, at %s; %s)",
            name,
            k,
            bar,
            outcome.recall,
            outcome.lower_bound,
            setting,
            outcome.why_not,
        )
    else:
        logger.info(
            "%s: %s gives recall@%d %.3f (lower bound %.3f over %d queries; %d probes)",
            name,
            setting,
            k,
            outcome.recall,
            outcome.lower_bound,
            n_queries,
            outcome.probes,
        )
    return outcome.recall


def exact_truth(index: ItemIndex, vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """The true top-k rows of ``queries`` under the index's metric (an exact scan)."""
    from recsys.index.exact import ExactIndex

    return ExactIndex(index.metric).build(vectors).query_batch(queries, k)[0]


class PartitionedIndex(ItemIndex):
    """ScaNN and faiss IVF: items in k-means partitions of which a tuned number is searched,
    then (where codes are quantized) a tuned number of candidates re-ranked exactly."""

    def __init__(
        self,
        metric: str,
        served: tuple[str, ...],
        setting: int,
        reorder: int,
        training_sample: int,
        target_recall: float,
        num_threads: int,
        tune_seconds: float,
    ) -> None:
        self.metric = check_metric(metric)
        if metric not in served:
            raise ValueError(f"{self.kind} supports metrics {sorted(served)}, not {metric!r}")
        #: candidates re-ranked exactly for k = 10 (scaled with k); -1 before ``tune``: 20·k
        self.reorder = reorder
        #: items the partitions (and codebooks) are trained on
        self.training_sample = training_sample
        self.target_recall = target_recall
        #: threads for building (-1: every core); queries run on the caller's thread
        self.num_threads = num_threads
        self.tune_seconds = tune_seconds
        self.dims = 0
        self._n_items = 0
        self.recall_at_10_: float | None = None
        #: knobs given explicitly are kept by ``tune`` (only measured)
        self.tune_setting, self.tune_reorder = setting == -1, reorder == -1

    @property
    def n_items(self) -> int:
        return self._n_items

    @property
    @abstractmethod
    def setting(self) -> int:
        """The partition knob: leaves searched (ScaNN), lists probed (IVF)."""

    @abstractmethod
    def set_setting(self, value: int) -> None: ...

    @property
    @abstractmethod
    def n_partitions(self) -> int:
        """Partitions built (1 or 0: none, every item scored)."""

    @property
    @abstractmethod
    def refines(self) -> bool:
        """Whether candidates are re-ranked exactly (``reorder`` is a knob)."""

    def set_reorder(self, value: int) -> None:
        self.reorder = int(value)

    def describe(self) -> str:
        return f"setting={self.setting}/{self.n_partitions}" + (f" reorder={self.reorder}" if self.refines else "")

    def tune(
        self,
        vectors: np.ndarray,
        queries: np.ndarray,
        k: int = 10,
        truth: np.ndarray | None = None,
        slower_than_ms: float | None = None,
    ) -> float:
        """The partition knob (with a wide re-rank, 20·k), then the re-rank width at that
        setting, each to about the smallest value whose recall lower bound reaches
        ``target_recall``; returns the (mean) recall at the values kept. Values given
        explicitly are kept (only measured)."""
        if truth is None:
            truth = exact_truth(self, vectors, queries, k)
        deadline = time.perf_counter() + self.tune_seconds
        common = dict(bar=self.target_recall, deadline=deadline)
        outcome = None
        if self.tune_setting and self.n_partitions > 1:
            n = self.n_partitions
            outcome = tune_knob(
                self,
                self.set_setting,
                queries,
                truth,
                k,
                lo=0,
                hi=max(1, n // 100),
                ceiling=n,
                slower_than_ms=slower_than_ms,
                **common,
            )
        if self.refines and self.tune_reorder and (outcome is None or outcome.why_not is None):
            outcome = tune_knob(
                self, self.set_reorder, queries, truth, k, lo=k - 1, hi=k, ceiling=self.reorder, **common
            )
        if outcome is None:
            return self.measure_recall(queries, truth, k)
        return record_tuning(self, outcome, self.describe(), k, self.target_recall, len(queries))
