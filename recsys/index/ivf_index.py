"""Inverted-file indexes (faiss-cpu): a k-means coarse quantizer of ``nlist`` lists, of which
``nprobe`` are scanned per query.

Encodings (one kind each):

- ``ivf_flat`` — the lists hold the float vectors: scores are exact, no re-rank.
- ``ivf_sq8`` — 8-bit scalar quantization (a quarter of the bytes to scan), then an exact
  re-rank of the best ``reorder`` candidates against the float vectors (faiss ``RFlat``).
- ``ivf_pq`` — 4-bit product quantization scored with SIMD lookup tables (faiss "fast scan",
  2 dims per sub-quantizer), then the same exact re-rank.

Metrics: ``dot`` (inner product), ``cosine`` (unit rows, inner product), ``euclidean`` (L2).
Manhattan and hamming have no faiss IVF metric: asking for them is a ``ValueError``, and the
``auto`` choice leaves IVF out for them.

``nprobe`` (with a wide re-rank), then ``reorder``, are tuned at build time to about the smallest
values whose recall lower bound on held-out queries reaches ``target_recall``
(recsys/index/tuning.py, the code HNSW's ``ef`` uses). The index is one file, read once through
the verified read of recsys/index/annoy_index.py and deserialized from those very bytes.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np

from recsys.index.base import (
    IndexError_,
    drop_excluded,
    euclidean_scores,
    file_sha256,
    padded,
    read_verified,
    unit_rows,
)
from recsys.index.tuning import PARTITION_MIN_ITEMS, TUNE_REORDER_FACTOR, PartitionedIndex, default_partitions

logger = logging.getLogger(__name__)

IVF_METRICS = ("cosine", "dot", "euclidean")
#: kind → faiss factory encoding and whether an exact re-rank follows
ENCODINGS = {"ivf_flat": ("Flat", False), "ivf_sq8": ("SQ8", True), "ivf_pq": ("PQ{m}x4fs", True)}
INDEX_FILE = "index.faiss"


def _faiss():
    import faiss

    return faiss


class IvfItemIndex(PartitionedIndex):
    def __init__(
        self,
        metric: str = "dot",
        kind: str = "ivf_flat",
        nlist: int = -1,
        nprobe: int = -1,
        reorder: int = -1,
        training_sample: int = 100_000,
        target_recall: float = 0.95,
        num_threads: int = -1,
        tune_seconds: float = 120.0,
        random_state: int = 42,
    ) -> None:
        if kind not in ENCODINGS:
            raise ValueError(f"ivf kind must be one of {sorted(ENCODINGS)}, got {kind!r}")
        self.kind = kind
        super().__init__(
            metric, IVF_METRICS, nprobe, reorder, training_sample, target_recall, num_threads, tune_seconds
        )
        #: coarse lists; -1: :func:`default_partitions`
        self.nlist = nlist
        #: lists scanned per query; -1 before ``tune``: all
        self.nprobe = nprobe
        self.random_state = random_state
        self.index_ = None

    @property
    def refines(self) -> bool:
        return ENCODINGS[self.kind][1]

    def _factory(self) -> str:
        # below PARTITION_MIN_ITEMS one list of float vectors (codebooks need more training points)
        small = self._n_items < PARTITION_MIN_ITEMS
        encoding = "Flat" if small else ENCODINGS[self.kind][0].format(m=max(1, self.dims // 2))
        return f"IVF{self.nlist},{encoding}" + (",RFlat" if self.refines else "")

    def build(self, vectors: np.ndarray) -> IvfItemIndex:
        faiss = _faiss()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.metric == "cosine":
            vectors = np.ascontiguousarray(unit_rows(vectors))
        self.dims, self._n_items = int(vectors.shape[1]), len(vectors)
        if not len(vectors):
            raise ValueError(f"{self.kind} needs at least one item")
        if self.nlist == -1 or len(vectors) < PARTITION_MIN_ITEMS:
            self.nlist = default_partitions(len(vectors)) if len(vectors) >= PARTITION_MIN_ITEMS else 1
        metric = faiss.METRIC_L2 if self.metric == "euclidean" else faiss.METRIC_INNER_PRODUCT
        threads_before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads((os.cpu_count() or 1) if self.num_threads == -1 else self.num_threads)
        try:
            index = faiss.index_factory(self.dims, self._factory(), metric)
            rng = np.random.default_rng(self.random_state)
            sample = vectors
            if len(vectors) > self.training_sample:
                sample = vectors[np.sort(rng.choice(len(vectors), self.training_sample, replace=False))]
            ivf = faiss.extract_index_ivf(index)
            ivf.cp.seed = self.random_state
            ivf.cp.min_points_per_centroid = 1  # a small sample per list is fine for a coarse split
            index.train(sample)
            index.add(vectors)
        finally:
            faiss.omp_set_num_threads(threads_before)
        self.index_ = index
        if self.nprobe == -1:
            self.nprobe = self.nlist
        if self.reorder == -1:
            self.reorder = TUNE_REORDER_FACTOR * 10
        return self

    @property
    def setting(self) -> int:
        """The tuned knob reported by the choice: ``nprobe`` (reorder in the metadata)."""
        return self.nprobe

    def set_setting(self, value: int) -> None:
        self.nprobe = int(value)

    @property
    def n_partitions(self) -> int:
        return self.nlist

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        faiss = _faiss()
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.metric == "cosine":
            queries = np.ascontiguousarray(unit_rows(queries))
        k = max(1, min(k, self._n_items))
        if self.refines:
            factor = max(1.0, self.reorder * max(1, math.ceil(k / 10)) / k)
            params = faiss.IndexRefineSearchParameters(
                k_factor=factor, base_index_params=faiss.SearchParametersIVF(nprobe=self.nprobe)
            )
        else:
            params = faiss.SearchParametersIVF(nprobe=self.nprobe)
        dist, ids = self.index_.search(queries, k, params=params)
        scores = euclidean_scores(dist) if self.metric == "euclidean" else dist
        return ids.astype(np.int64), scores.astype(np.float32)

    def query(self, vector, k, exclude=None):
        """Over-fetches ``k + |exclude|`` and drops the excluded (and faiss's -1 padding)."""
        if self.index_ is None:
            raise IndexError_("index is not built or loaded")
        n_excluded = 0 if exclude is None else len(exclude)
        ids, scores = self._search(np.asarray(vector, np.float32).reshape(1, -1), k + n_excluded)
        found = ids[0] >= 0
        return drop_excluded(ids[0][found], scores[0][found], k, exclude)

    def query_batch(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.atleast_2d(np.asarray(queries, np.float32))
        return padded(*self._search(queries, k), k)

    def save(self, folder: Path) -> dict:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / INDEX_FILE
        _faiss().write_index(self.index_, str(path))
        return self.write_meta(
            folder, nlist=self.nlist, nprobe=self.nprobe, reorder=self.reorder, sha256=file_sha256(path)
        )

    @classmethod
    def _load_private(cls, path: Path, meta: dict, expected_sha256: str | None) -> IvfItemIndex:
        index = cls(meta["metric"], meta["kind"], nlist=meta["nlist"], nprobe=meta["nprobe"], reorder=meta["reorder"])
        data = read_verified(path, expected_sha256)
        try:
            native = _faiss().deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except RuntimeError as exc:
            raise IndexError_(f"faiss could not load {path}: {exc}") from exc
        del data
        index.adopt(path, native.ntotal, meta)
        index.index_ = native
        return index
