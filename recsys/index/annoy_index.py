"""Annoy approximate index.

Loading maps a *private* copy: the file is copied (and hashed on the way) into an anonymous,
sealed memory file (``memfd``; an unlinked temporary file where memfd is unavailable), and Annoy
maps that. Nothing outside the process can write into or truncate what is being served — a
write into the bundle cache changed live answers, and truncating it killed the process with
SIGBUS. The price is one copy of the index per process (workers no longer share page cache).
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from annoy import AnnoyIndex as _Annoy

from recsys.index.base import (
    META_FILE,
    IndexError_,
    ItemIndex,
    binary_codes,
    check_metric,
    fd_path,
    file_sha256,
    private_copy,
    query_latencies_ms,
    read_verified,
)
from recsys.index.exact import ExactIndex
from recsys.index.tuning import exact_truth, record_tuning, tune_knob

logger = logging.getLogger(__name__)

# Our metric name → Annoy's. "cosine" is Annoy's angular distance sqrt(2 - 2·cos).
ANNOY_METRIC = {
    "cosine": "angular",
    "dot": "dot",
    "euclidean": "euclidean",
    "manhattan": "manhattan",
    "hamming": "hamming",
}
INDEX_FILE = "index.ann"


class AnnoyItemIndex(ItemIndex):
    kind = "annoy"

    def __init__(
        self,
        metric: str = "dot",
        n_trees: int = 50,
        search_k: int = -1,
        random_state: int = 42,
        target_recall: float = 0.95,
        tune_seconds: float = 120.0,
    ) -> None:
        self.metric = check_metric(metric)
        self.n_trees = n_trees
        #: nodes inspected per query; -1 before ``tune`` means Annoy's default (n_trees·k)
        self.search_k = search_k
        self.random_state = random_state
        self.target_recall = target_recall
        #: wall-time cap of ``tune``
        self.tune_seconds = tune_seconds
        self.index_: _Annoy | None = None
        self.dims = 0
        self._n_items = 0
        self.recall_at_10_: float | None = None
        #: per-query latency at the tuned search_k, and of exact numpy search, measured at build
        self.query_ms_: float | None = None
        self.exact_query_ms_: float | None = None

    def build(self, vectors: np.ndarray) -> AnnoyItemIndex:
        vectors = np.asarray(vectors, dtype=np.float32)
        if self.metric == "hamming":
            vectors = binary_codes(vectors)
        self.dims = int(vectors.shape[1])
        index = _Annoy(self.dims, ANNOY_METRIC[self.metric])
        index.set_seed(self.random_state)
        for i, row in enumerate(vectors):
            index.add_item(i, row.tolist())
        index.build(self.n_trees, n_jobs=-1)
        self.index_ = index
        self._n_items = len(vectors)
        return self

    @property
    def n_items(self) -> int:
        return self._n_items

    def _to_score(self, distances: np.ndarray) -> np.ndarray:
        if self.metric == "dot":
            return distances  # Annoy reports the dot product itself
        if self.metric == "cosine":
            return 1.0 - distances**2 / 2.0
        return -distances

    def query(self, vector, k, exclude=None):
        if self.index_ is None:
            raise IndexError_("index is not built or loaded")
        vector = np.asarray(vector, dtype=np.float32).ravel()
        if self.metric == "hamming":
            vector = binary_codes(vector)
        excluded = set() if exclude is None else set(np.asarray(exclude).tolist())
        n = min(self._n_items, k + len(excluded))
        ids, dist = self.index_.get_nns_by_vector(vector.tolist(), n, search_k=self.search_k, include_distances=True)
        ids = np.asarray(ids, dtype=np.int64)
        scores = self._to_score(np.asarray(dist, dtype=np.float32))
        if excluded:
            keep = np.fromiter((i not in excluded for i in ids.tolist()), bool, len(ids))
            ids, scores = ids[keep], scores[keep]
        # Annoy orders by its internal distance; re-sort by score so ties/rounding agree.
        order = np.argsort(-scores, kind="stable")[:k]
        return ids[order], scores[order]

    def tune(
        self,
        vectors: np.ndarray,
        queries: np.ndarray,
        k: int = 10,
        *,
        stop_when_slower: bool = False,
        slower_than_ms: float | None = None,
        truth: np.ndarray | None = None,
    ) -> float:
        """Pick about the smallest ``search_k`` at which the recall@k on ``queries`` can be
        promised on other queries (:func:`recall_lower_bound` reaches ``target_recall``): doubling from Annoy's default (n_trees·k) until the target is
        passed, then bisection between the last miss and the first hit (to ~5 %), so the value
        does not overshoot by up to 2×. Returns the recall at the chosen value.

        Annoy's default search_k can be far too small: on clustered ALS vectors with a ``dot``
        metric it gave recall@10 of 0.1–0.3, so the build measures and tunes instead of
        trusting it. An explicit ``search_k`` (not -1) is kept and only measured.

        Doubling stops early (with a log line saying why) when the target is out of reach:
        at the exhaustive ceiling, after ``tune_seconds``, or — with ``stop_when_slower`` —
        as soon as Annoy, still short of the target, is slower per query than an exact scan
        (or than ``slower_than_ms``, e.g. another index that reached the target): a larger
        search_k only costs more, and :attr:`prefer_exact` then tells serving to scan. The
        latencies recorded are those measured in the loop, so that decision is the one made here.
        """
        if truth is None:
            truth = exact_truth(self, vectors, queries, k)
        if self.search_k != -1:
            return self.measure_recall(queries, truth, k)
        exact_ms = self._exact_ms(vectors, queries, k) if stop_when_slower or slower_than_ms is not None else None
        rivals = [x for x in (exact_ms if stop_when_slower else None, slower_than_ms) if x is not None]
        outcome = tune_knob(
            self,
            self._set_search_k,
            queries,
            truth,
            k,
            lo=0,
            hi=self.n_trees * k,
            ceiling=max(self._n_items * self.n_trees, self.n_trees * k),
            bar=self.target_recall,
            deadline=time.perf_counter() + self.tune_seconds,
            # strictly slower: then prefer_exact holds whenever the scan was the rival
            slower_than_ms=min(rivals) if rivals else None,
        )
        if outcome.why_not == "slower":
            self.query_ms_, self.exact_query_ms_ = outcome.ms_per_query, exact_ms
        else:
            self._time_queries(vectors, queries, k)
        setting = f"search_k={self.search_k}" + (" (serving scans: a scan is faster)" if self.prefer_exact else "")
        return record_tuning(self, outcome, setting, k, self.target_recall, len(queries))

    def _set_search_k(self, value: int) -> None:
        self.search_k = int(value)

    def _exact_ms(self, vectors: np.ndarray, queries: np.ndarray, k: int) -> float:
        exact = ExactIndex(self.metric).build(vectors)
        return float(np.median(query_latencies_ms(exact, queries[: min(len(queries), 50)], k)))

    def _time_queries(self, vectors: np.ndarray, queries: np.ndarray, k: int) -> None:
        self.query_ms_ = float(np.median(query_latencies_ms(self, queries[: min(len(queries), 50)], k)))
        self.exact_query_ms_ = self._exact_ms(vectors, queries, k)

    @property
    def prefer_exact(self) -> bool:
        """True when, at the recall target, exact search measured faster than Annoy (small
        catalogs: Annoy pays off only when a scan of all items costs more than its search)."""
        return self.query_ms_ is not None and self.exact_query_ms_ is not None and self.exact_query_ms_ < self.query_ms_

    def save(self, folder: Path) -> dict:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / INDEX_FILE
        self.index_.save(str(path))
        return self.write_meta(
            folder,
            n_trees=self.n_trees,
            search_k=self.search_k,
            query_ms=self.query_ms_,
            exact_query_ms=self.exact_query_ms_,
            sha256=file_sha256(path),
        )

    @classmethod
    def _load_private(cls, path: Path, meta: dict, expected_sha256: str | None) -> AnnoyItemIndex:
        index = cls(meta["metric"], meta["n_trees"], meta["search_k"])
        ann = _Annoy(meta["dims"], ANNOY_METRIC[meta["metric"]])
        fd = private_copy(path, expected_sha256)
        try:
            # Annoy opens the path itself and keeps its own fd and mapping; ours can go.
            if not ann.load(fd_path(fd, path), prefault=False):
                raise IndexError_(f"annoy could not load {path}")
        finally:
            os.close(fd)
        index.adopt(path, ann.get_n_items(), meta)
        index.index_ = ann
        index.query_ms_, index.exact_query_ms_ = meta.get("query_ms"), meta.get("exact_query_ms")
        return index


def load_index(folder: Path, verify: bool = True, digests: Mapping[str, str] | None = None) -> ItemIndex:
    """An index the process owns: Annoy maps a private copy, HNSW and ScaNN read one, faiss (IVF)
    indexes and exact vectors are read into memory from verified bytes.

    ``digests`` (file name in the index folder → sha256, from the bundle manifest) are checked
    on the very bytes that are used, when ``verify``.
    """
    from recsys.index.hnsw_index import INDEX_FILE as HNSW_FILE
    from recsys.index.hnsw_index import HnswItemIndex

    folder = Path(folder)
    digests = (digests or {}) if verify else {}
    try:
        meta = json.loads(read_verified(folder / META_FILE, digests.get(META_FILE)))
    except (OSError, ValueError) as exc:
        raise IndexError_(f"index metadata unreadable in {folder}: {exc}") from exc
    if meta["kind"] == "annoy":
        return AnnoyItemIndex._load_private(
            folder / INDEX_FILE, meta, (digests.get(INDEX_FILE) or meta["sha256"]) if verify else None
        )
    if meta["kind"] == "hnsw":
        return HnswItemIndex._load_private(
            folder / HNSW_FILE, meta, (digests.get(HNSW_FILE) or meta["sha256"]) if verify else None
        )
    if meta["kind"] == "scann":
        from recsys.index.scann_index import ScannItemIndex

        return ScannItemIndex._load_private(folder, meta, digests if verify else None)
    if meta["kind"] in IVF_KINDS:
        from recsys.index.ivf_index import INDEX_FILE as IVF_FILE
        from recsys.index.ivf_index import IvfItemIndex

        return IvfItemIndex._load_private(
            folder / IVF_FILE, meta, (digests.get(IVF_FILE) or meta["sha256"]) if verify else None
        )
    if meta["kind"] != "exact":
        raise IndexError_(f"unknown index kind {meta['kind']!r} in {folder}")
    vectors = np.load(
        io.BytesIO(
            read_verified(
                folder / "vectors.npy", (digests.get("vectors.npy") or meta.get("sha256")) if verify else None
            )
        )
    )
    return ExactIndex(meta["metric"], meta.get("dtype", "float32")).build(vectors)


IVF_KINDS = ("ivf_flat", "ivf_pq", "ivf_sq8")
INDEX_KINDS = ("annoy", "exact", "hnsw", *IVF_KINDS, "scann")


def make_index(kind: str, metric: str, **params) -> ItemIndex:
    """An unbuilt index of ``kind`` (one of ``INDEX_KINDS``); ``params`` go to its constructor."""
    from recsys.index.hnsw_index import HnswItemIndex
    from recsys.index.ivf_index import IvfItemIndex
    from recsys.index.scann_index import ScannItemIndex

    if kind in IVF_KINDS:
        return IvfItemIndex(metric, kind, **params)
    if kind == "scann":
        return ScannItemIndex(metric, **params)
    if kind == "annoy":
        return AnnoyItemIndex(metric, **params)
    if kind == "exact":
        return ExactIndex(metric, **params)
    if kind == "hnsw":
        return HnswItemIndex(metric, **params)
    raise ValueError(f"index kind must be one of {INDEX_KINDS}, got {kind!r}")
