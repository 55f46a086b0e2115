"""HNSW approximate index (hnswlib): graph search, logarithmic in the catalog size.

Spaces: ``dot`` → hnswlib ``ip``, ``cosine`` → ``cosine`` (hnswlib normalises on add and on
query), ``euclidean`` → ``l2`` (squared distance). Manhattan and hamming have no HNSW space.

``ef`` (the search beam) is tuned at build time: doubled from ``k`` until recall@k on held-out
queries (less two standard errors) reaches ``target_recall``, then bisected between the last miss and the first hit, so
serving runs with about the smallest beam that reaches the target.

Loading reads the file through the same private, sealed, checksum-verified copy as Annoy
(recsys/index/annoy_index.py); hnswlib then reads that copy into its own memory, so nothing
outside the process can change what is served.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import hnswlib
import numpy as np

from recsys.index.base import (
    BuildTooSlow,
    IndexError_,
    ItemIndex,
    check_metric,
    euclidean_scores,
    fd_path,
    file_sha256,
    padded,
    private_copy,
)
from recsys.index.tuning import exact_truth, record_tuning, tune_knob

logger = logging.getLogger(__name__)

HNSW_SPACE = {"dot": "ip", "cosine": "cosine", "euclidean": "l2"}
#: items added per chunk of the build, at least (else a twentieth of the catalog)
BUILD_CHUNK = 10_000

INDEX_FILE = "index.hnsw"


def graph_order(index: hnswlib.Index) -> hnswlib.Index:
    """The same graph with its nodes renumbered in breadth-first order from the entry point, so
    that nodes linked in the graph (visited one after another by a search) sit next to each other
    in memory. hnswlib numbers nodes in insertion order, so a search's every hop lands on another
    memory page; at 300k×64 items (dot, M 16, ef 23) this layout answered 31 % more queries a
    second, one thread, with identical results (the graph, its labels and its entry point do not
    change; bench/ann_bench.py measures it against hnswlib used directly at 1M). Cost: one pass
    over the index's arrays (~6 s at 300k on 2 cores under load), charged to the build.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import breadth_first_order

    (state,) = index.__getstate__()
    n, size = state["cur_element_count"], state["size_data_per_element"]
    if n < 2:
        return index
    level0 = state["data_level0"].reshape(-1, size)
    # level 0: per node a uint16 link count (in a 4-byte header), max_M0 int32 links, vector, label
    links0, counts0 = _links(level0[:n], state["max_M0"])
    valid0 = np.arange(state["max_M0"]) < counts0[:, None]
    graph = csr_matrix(
        (np.ones(int(counts0.sum()), np.int8), links0[valid0], np.concatenate([[0], np.cumsum(counts0)])),
        shape=(n, n),
    )
    order = breadth_first_order(graph, state["enterpoint_node"], directed=True, return_predecessors=False)
    if len(order) < n:  # nodes the entry point does not reach at level 0 keep their order, last
        order = np.concatenate([order, np.setdiff1d(np.arange(n), order, assume_unique=True)])
    new_id = np.empty(n, np.int64)
    new_id[order] = np.arange(n)

    moved = level0.copy()
    moved[:n] = level0[order]
    links, _ = _links(moved[:n], state["max_M0"])
    links[valid0[order]] = new_id[links[valid0[order]]]
    # upper levels: per node with level L > 0, L blocks of (header, max_M links), nodes in id order
    levels = state["element_levels"][:n].astype(np.int64)
    per = state["size_links_per_element"]
    blocks = state["link_lists"].reshape(-1, per)
    upper, counts = _links(blocks, state["max_M"])
    upper_valid = np.arange(state["max_M"]) < counts[:, None]
    upper[upper_valid] = new_id[upper[upper_valid]]
    first = np.concatenate([[0], np.cumsum(levels)])[:-1]
    new_levels = levels[order]
    new_first = np.concatenate([[0], np.cumsum(new_levels)])[:-1]
    rows = np.repeat(first[order] - new_first, new_levels) + np.arange(int(new_levels.sum()))

    state = {
        **state,
        "data_level0": moved.reshape(-1),
        "link_lists": blocks[rows].reshape(-1),
        "element_levels": np.concatenate([new_levels, state["element_levels"][n:]]).astype(np.int32),
        "enterpoint_node": int(new_id[state["enterpoint_node"]]),
        "label_lookup_internal": new_id[state["label_lookup_internal"]].astype(np.uint32),
    }
    del level0, blocks, graph
    ordered = hnswlib.Index.__new__(hnswlib.Index)
    ordered.__setstate__((state,))
    return ordered


def _links(blocks: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A writable int32 view of the ``width`` links of every link block (rows of bytes) and their
    counts (the header's first two bytes)."""
    return blocks[:, 4 : 4 + 4 * width].view(np.int32), blocks[:, :2].copy().view(np.uint16)[:, 0].astype(np.int64)


class HnswItemIndex(ItemIndex):
    kind = "hnsw"

    def __init__(
        self,
        metric: str = "dot",
        M: int = 24,
        ef_construction: int = 100,
        ef: int = -1,
        target_recall: float = 0.95,
        num_threads: int = -1,
        random_state: int = 42,
        tune_seconds: float = 120.0,
        max_build_seconds: float | None = None,
    ) -> None:
        self.metric = check_metric(metric)
        if metric not in HNSW_SPACE:
            raise ValueError(f"hnsw supports metrics {sorted(HNSW_SPACE)}, not {metric!r}")
        self.M = M
        self.ef_construction = ef_construction
        #: search beam; -1 before ``tune`` means hnswlib's default (10, raised to k per query)
        self.ef = ef
        self.target_recall = target_recall
        #: threads for building (-1: all cores); queries always run on the caller's thread
        self.num_threads = num_threads
        self.random_state = random_state
        self.tune_seconds = tune_seconds
        #: give up (``BuildTooSlow``) as soon as the measured insertion rate projects the whole
        #: build past this many seconds; None: no limit
        self.max_build_seconds = max_build_seconds
        self.index_: hnswlib.Index | None = None
        self.dims = 0
        self._n_items = 0
        self.recall_at_10_: float | None = None
        self.build_seconds_: float | None = None

    def build(self, vectors: np.ndarray) -> HnswItemIndex:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        start = time.perf_counter()
        self.dims = int(vectors.shape[1])
        index = hnswlib.Index(space=HNSW_SPACE[self.metric], dim=self.dims)
        index.init_index(
            max_elements=max(1, len(vectors)),
            M=self.M,
            ef_construction=self.ef_construction,
            random_seed=self.random_state,
        )
        # in chunks: the rate of the first ones projects the whole build (insertion cost grows
        # slowly, ~log n, so the projection is a slight underestimate)
        chunk = max(BUILD_CHUNK, len(vectors) // 20)
        for begin in range(0, len(vectors), chunk):
            end = min(len(vectors), begin + chunk)
            index.add_items(vectors[begin:end], np.arange(begin, end), num_threads=self.num_threads)
            elapsed = time.perf_counter() - start
            projected = elapsed * len(vectors) / end
            if self.max_build_seconds is not None and end < len(vectors) and projected > self.max_build_seconds:
                raise BuildTooSlow(
                    f"hnsw M={self.M} ef_construction={self.ef_construction}: {end:,} of {len(vectors):,} items in "
                    f"{elapsed:.1f}s, projected {projected:.0f}s > {self.max_build_seconds:.0f}s allowed"
                )
        index = graph_order(index)
        index.set_num_threads(1)
        if self.ef > 0:
            index.set_ef(self.ef)
        self.index_, self._n_items = index, len(vectors)
        self.build_seconds_ = time.perf_counter() - start
        return self

    @property
    def n_items(self) -> int:
        return self._n_items

    def _to_score(self, distances: np.ndarray) -> np.ndarray:
        # ip: 1 - q·v; cosine: 1 - cos; l2: squared distance
        return euclidean_scores(distances) if self.metric == "euclidean" else 1.0 - distances

    def _knn(
        self, queries: np.ndarray, k: int, allow: Callable[[int], bool] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """hnswlib's answer for k neighbours, or for fewer when the graph cannot reach k (it then
        raises rather than returning a short list)."""
        k = min(k, self._n_items)
        while k > 0:
            try:
                labels, dist = self.index_.knn_query(queries, k=k, num_threads=1, filter=allow)
                return labels.astype(np.int64), self._to_score(dist.astype(np.float32))
            except RuntimeError:
                k //= 2
        return np.empty((len(queries), 0), np.int64), np.empty((len(queries), 0), np.float32)

    def query(self, vector, k, exclude=None):
        """Exclusions through hnswlib's ``filter`` callback, asking for k + |exclude| results so
        the beam is as wide as over-fetching would make it, while excluded items take no result
        slot. Measured on 100k×64 clustered dot vectors, half of the exclusions among the true
        top items (bench/ann_bench.py --filter-check): recall@10 0.93 / 0.78 / 0.47 with 10 /
        50 / 500 excluded against 0.92 / 0.75 / 0.45 for over-fetch (``query_overfetch``), for
        10–35 % more latency (a Python call per visited node). Recall first, as in the index
        choice. A callback asking for only k results was 3× faster but lost recall (0.34 at 500
        excluded)."""
        if self.index_ is None:
            raise IndexError_("index is not built or loaded")
        if (exclude is None or not len(exclude)) and self.metric != "euclidean" and 0 < k <= self._n_items:
            # the common case without _knn's copies, nor any of our own: views of hnswlib's
            # arrays, scores made in place, positional arguments (keywords cost pybind11 ~0.4 µs;
            # the whole wrapper ~0.6 µs of a 0.03 ms query at 1M)
            try:
                labels, dist = self.index_.knn_query(vector, k, 1)
                np.subtract(1.0, dist, out=dist)
                return labels[0].view(np.int64), dist[0]
            except RuntimeError:  # fewer than k reachable: _knn asks for fewer
                pass
        vector = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        if exclude is None or not len(exclude):
            ids, scores = self._knn(vector, k)
            return ids[0], scores[0]
        excluded = set(np.asarray(exclude, dtype=np.int64).tolist())
        ids, scores = self._knn(vector, k + len(excluded), allow=lambda label: label not in excluded)
        return ids[0][:k], scores[0][:k]

    def query_overfetch(self, vector, k, exclude) -> tuple[np.ndarray, np.ndarray]:
        """Exclusions by over-fetching k + |exclude| and dropping them (the alternative measured
        against ``query``)."""
        excluded = np.unique(np.asarray(exclude, dtype=np.int64))
        ids, scores = self._knn(np.asarray(vector, np.float32).reshape(1, -1), k + len(excluded))
        keep = ~np.isin(ids[0], excluded)
        return ids[0][keep][:k], scores[0][keep][:k]

    def query_batch(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return padded(*self._knn(np.atleast_2d(np.asarray(queries, dtype=np.float32)), k), k)

    def set_ef(self, ef: int) -> None:
        self.ef = int(ef)
        self.index_.set_ef(self.ef)

    def tune(
        self,
        vectors: np.ndarray,
        queries: np.ndarray,
        k: int = 10,
        truth: np.ndarray | None = None,
        slower_than_ms: float | None = None,
    ) -> float:
        """Smallest ``ef`` (within ~5 %) at which the recall@k ``queries`` show can be promised
        on queries not seen (:func:`recall_lower_bound` reaches ``target_recall``): doubling
        from k, then bisection (recsys/index/tuning.py); returns the (mean) recall at that ef.
        An explicit ``ef`` (not -1) is kept and only measured. Stops at ``tune_seconds`` with
        the best ef found (logged when the target was not reached), and — given
        ``slower_than_ms`` (a candidate that already reaches the target, e.g. an exact scan) —
        as soon as a query at the current ef, still short of the target, is slower than that."""
        if truth is None:
            truth = exact_truth(self, vectors, queries, k)
        if self.ef != -1:
            return self.measure_recall(queries, truth, k)
        # lo: an ef known to miss (hnswlib searches with max(ef, k), so no ef below k is worth probing)
        outcome = tune_knob(
            self,
            self.set_ef,
            queries,
            truth,
            k,
            lo=k - 1,
            hi=k,
            ceiling=max(k, self._n_items),
            bar=self.target_recall,
            deadline=time.perf_counter() + self.tune_seconds,
            slower_than_ms=slower_than_ms,
        )
        return record_tuning(self, outcome, f"ef={self.ef}", k, self.target_recall, len(queries))

    def save(self, folder: Path) -> dict:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / INDEX_FILE
        self.index_.save_index(str(path))
        return self.write_meta(
            folder, M=self.M, ef_construction=self.ef_construction, ef=self.ef, sha256=file_sha256(path)
        )

    @classmethod
    def _load_private(cls, path: Path, meta: dict, expected_sha256: str | None) -> HnswItemIndex:
        index = cls(meta["metric"], M=meta["M"], ef_construction=meta["ef_construction"], ef=meta["ef"])
        hnsw = hnswlib.Index(space=HNSW_SPACE[meta["metric"]], dim=meta["dims"])
        fd = private_copy(path, expected_sha256)
        try:
            # hnswlib reads the whole file into its own memory; the private copy can then go.
            hnsw.load_index(fd_path(fd, path), max_elements=max(1, meta["n_items"]))
        except RuntimeError as exc:
            raise IndexError_(f"hnswlib could not load {path}: {exc}") from exc
        finally:
            os.close(fd)
        index.adopt(path, hnsw.get_current_count(), meta)
        hnsw.set_num_threads(1)
        if meta["ef"] > 0:
            hnsw.set_ef(meta["ef"])
        index.index_ = hnsw
        return index
