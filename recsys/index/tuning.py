"""Tuning one search knob of a partitioned index (ScaNN's leaves and reorder, IVF's nprobe)
to about the smallest value whose held-out recall lower bound reaches the target: the same
doubling-then-bisection (:func:`recsys.index.base.smallest_reaching`) and the same bar
(:func:`recsys.index.base.recall_lower_bound`) as HNSW's ``ef`` and Annoy's ``search_k``."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from recsys.index.base import recall_at_k, recall_lower_bound, smallest_reaching

#: partitioned kinds (ScaNN leaves, IVF lists): re-rank width while the partition knob is
#: tuned, in multiples of k
TUNE_REORDER_FACTOR = 20
#: below this many items a partitioned kind does not partition (k-means has nothing to split)
PARTITION_MIN_ITEMS = 256


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
    #: batched search time per query at ``value``
    ms_per_query: float
    #: None when the bar was reached; else why tuning stopped short
    why_not: str | None
    probes: int


def tune_knob(
    set_value: Callable[[int], None],
    search: Callable[[np.ndarray], np.ndarray],
    queries: np.ndarray,
    truth: np.ndarray,
    *,
    lo: int,
    hi: int,
    ceiling: int,
    bar: float,
    deadline: float,
    slower_than_ms: float | None = None,
) -> KnobTuning:
    """About the smallest knob value in (``lo``, ``ceiling``] whose recall lower bound on
    ``queries`` reaches ``bar``; ``search(queries)`` answers the top-k rows at the value last
    set. Gives up early, as HNSW's tuning does, once a value still short of the bar searches
    slower than ``slower_than_ms`` (a candidate that already reached it)."""
    tried: dict[int, tuple[float, float, float]] = {}

    def probe(value: int) -> float:
        set_value(value)
        start = time.perf_counter()
        found = search(queries)
        ms = (time.perf_counter() - start) / max(len(queries), 1) * 1000
        tried[value] = (recall_at_k(found, truth), recall_lower_bound(found, truth), ms)
        return tried[value][1]

    def slower(value: int) -> bool:
        return slower_than_ms is not None and tried[value][2] > slower_than_ms

    value, why_not = smallest_reaching(probe, lo=lo, hi=hi, ceiling=ceiling, bar=bar, deadline=deadline, give_up=slower)
    set_value(value)
    recall, bound, ms = tried[value]
    return KnobTuning(value, recall, bound, ms, why_not, len(tried))
