"""Item index interface: nearest item vectors under one of five metrics.

Scores are always "higher is better": the dot product for ``dot``, cosine similarity for
``cosine``, and the negated distance for ``euclidean``, ``manhattan`` and ``hamming``.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

import numpy as np

METRICS = ("cosine", "dot", "euclidean", "manhattan", "hamming")


class IndexError_(RuntimeError):
    """An index file that is missing, corrupt or does not match its metadata."""


class BuildTooSlow(RuntimeError):
    """A build abandoned because its measured rate projects it past its time allowance."""


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return metric


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero): cosine as a dot product."""
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


def drop_excluded(
    ids: np.ndarray, scores: np.ndarray, k: int, exclude: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` of an over-fetched answer (best first) that are not in ``exclude``."""
    if exclude is not None and len(exclude):
        keep = ~np.isin(ids, np.asarray(exclude, dtype=np.int64))
        ids, scores = ids[keep], scores[keep]
    return ids[:k], scores[:k]


def binary_codes(vectors: np.ndarray) -> np.ndarray:
    """Sign quantization: one bit per dimension, 1 where the component is positive."""
    return (np.asarray(vectors) > 0).astype(np.float32)


class ItemIndex(ABC):
    kind: str
    metric: str
    dims: int

    @abstractmethod
    def build(self, vectors: np.ndarray) -> ItemIndex:
        """Index the rows of ``vectors`` (row i = item column i)."""

    @abstractmethod
    def query(self, vector: np.ndarray, k: int, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item rows and scores for one query vector, best first, skipping ``exclude``."""

    def query_batch(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows and scores of many queries: (ids int64 (n, k), scores float32 (n, k)),
        padded with -1 / -inf where fewer than k were found."""
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        ids = np.full((len(queries), k), -1, np.int64)
        scores = np.full((len(queries), k), -np.inf, np.float32)
        for row, q in enumerate(queries):
            found, s = self.query(q, k)
            ids[row, : len(found)], scores[row, : len(found)] = found, s
        return ids, scores

    @abstractmethod
    def save(self, folder: Path) -> dict:
        """Write the index into ``folder``; returns the metadata written."""

    @property
    @abstractmethod
    def n_items(self) -> int: ...

    @property
    def prefer_exact(self) -> bool:
        """True when serving should scan instead of asking this index (see AnnoyItemIndex)."""
        return False


def per_query_recall(found, truth: np.ndarray) -> np.ndarray:
    """Recall of every query row: the share of its true top-k rows (-1 = padding) found."""
    return np.array(
        [
            len(set(np.asarray(f).tolist()) & set(t[t >= 0].tolist())) / max(1, int((t >= 0).sum()))
            for f, t in zip(found, truth)
        ]
    )


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of the true top-k rows (``truth``, -1 = padding) that ``found`` holds, per row."""
    hits = sum(len(set(f.tolist()) & set(t[t >= 0].tolist())) for f, t in zip(found, truth))
    return float(hits / max(1, int((truth >= 0).sum())))


#: standard errors between the recall a tuning sample shows and the target it must reach
TUNING_Z = 2.0


def recall_lower_bound(found, truth: np.ndarray, z: float = TUNING_Z) -> float:
    """The recall a tuning sample can promise on queries it has not seen: its mean per-query
    recall minus ``z`` standard errors of that mean (the spread between queries, not a
    binomial one: neighbours of one query are found or missed together). Tuning settings
    (HNSW's ef, Annoy's search_k) must bring this, not the sample's mean, to the target. With
    one binomial standard error (+0.004 on 300 queries) the 1M-item cosine bench tuned to 0.954
    on its sample and measured 0.935 on held-out queries."""
    per_query = per_query_recall(found, truth)
    if len(per_query) < 2:
        return float(per_query.mean()) if len(per_query) else 0.0
    return float(per_query.mean() - z * per_query.std(ddof=1) / math.sqrt(len(per_query)))


def query_latencies_ms(index: ItemIndex, queries: np.ndarray, k: int, passes: int = 1) -> np.ndarray:
    """Per-query wall time (ms) of single ``query`` calls, one thread: what one request costs.
    With ``passes`` > 1 every query is timed once per pass over all of them and its fastest
    time kept: on a machine shared with other jobs a preemption lands on one query's time and
    (at 0.05 ms a query) decides the mean; the other passes do not warm that query's cache."""
    out = np.full(len(queries), np.inf)
    for _ in range(passes):
        for i, q in enumerate(queries):
            start = time.perf_counter()
            index.query(q, k)
            out[i] = min(out[i], (time.perf_counter() - start) * 1000)
    return out


def smallest_reaching(
    probe: Callable[[int], float],
    *,
    lo: int,
    hi: int,
    ceiling: int,
    bar: float,
    deadline: float,
    give_up: Callable[[int], bool] | None = None,
) -> tuple[int, str | None]:
    """About the smallest search setting (Annoy's search_k, HNSW's ef) whose ``probe`` (the
    recall it measures) reaches ``bar``: doubling from ``hi`` until it is passed, then bisection
    between the last miss and the first hit to ~5 %, so the setting does not overshoot by up to
    2×. ``lo`` is a setting known to miss.

    Returns ``(setting, None)`` once the bar is reached, or ``(last setting probed, why)`` when
    doubling stopped short: ``give_up(setting)`` said so ("slower"), the setting hit
    ``ceiling`` (the search is exhaustive) or the clock passed ``deadline``."""
    while probe(hi) < bar:
        if give_up is not None and give_up(hi):
            return hi, "slower"
        if hi >= ceiling or time.perf_counter() > deadline:
            return hi, "search is exhaustive" if hi >= ceiling else "tuning time cap hit"
        lo, hi = hi, min(hi * 2, ceiling)
    while hi - lo > max(1, hi // 20) and time.perf_counter() < deadline:
        mid = (lo + hi) // 2
        if probe(mid) >= bar:
            hi = mid
        else:
            lo = mid
    return hi, None
