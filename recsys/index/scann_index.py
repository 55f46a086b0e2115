"""ScaNN index (Google's ``scann``, no TensorFlow): a k-means tree over the items, anisotropic
vector quantization (4-bit codes, 2 dims per block) scored with SIMD lookup tables, then an
exact re-rank of the best ``reorder`` candidates against the float vectors.

Metrics: ``dot`` (ScaNN ``dot_product``), ``cosine`` (unit rows, then ``dot_product``),
``euclidean`` (``squared_l2``, plain quantization). Manhattan and hamming have no ScaNN
distance: asking for them is a ``ValueError``, and the build's ``auto`` choice leaves ScaNN out
for them (recsys/index/choice.py).

``leaves_to_search`` then ``reorder`` are tuned at build time, each to about the smallest value
whose recall lower bound on held-out queries reaches ``target_recall`` (recsys/index/tuning.py,
the code HNSW's ``ef`` uses). Catalogs under ``PARTITION_MIN_ITEMS`` items are scored by brute force
(ScaNN's own), where a tree has nothing to prune.

Loading copies every file, hashed on the way, into private sealed memory files (the same
``private_copy`` as Annoy and HNSW) and ScaNN reads them from there: what is served is what was
verified.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from recsys.index.base import (
    META_FILE,
    IndexError_,
    drop_excluded,
    euclidean_scores,
    file_sha256,
    padded,
    private_copy,
    unit_rows,
)
from recsys.index.tuning import PARTITION_MIN_ITEMS, TUNE_REORDER_FACTOR, PartitionedIndex, default_partitions
from recsys.native_logs import native_stderr_as_debug

logger = logging.getLogger(__name__)

SCANN_DISTANCE = {"dot": "dot_product", "cosine": "dot_product", "euclidean": "squared_l2"}
ASSETS_FILE = "scann_assets.pbtxt"


def _scann():
    from scann.scann_ops.py import scann_ops_pybind

    return scann_ops_pybind


class ScannItemIndex(PartitionedIndex):
    kind = "scann"

    def __init__(
        self,
        metric: str = "dot",
        num_leaves: int = -1,
        leaves_to_search: int = -1,
        reorder: int = -1,
        dims_per_block: int = 2,
        anisotropic_threshold: float = 0.2,
        training_sample: int = 250_000,
        target_recall: float = 0.95,
        num_threads: int = -1,
        tune_seconds: float = 120.0,
    ) -> None:
        super().__init__(
            metric,
            tuple(SCANN_DISTANCE),
            leaves_to_search,
            reorder,
            training_sample,
            target_recall,
            num_threads,
            tune_seconds,
        )
        #: k-means tree leaves; -1: :func:`default_partitions`
        self.num_leaves = num_leaves
        #: leaves searched per query; -1 before ``tune``: all of them
        self.leaves_to_search = leaves_to_search
        self.dims_per_block = dims_per_block
        #: anisotropic quantization threshold (dot and cosine only: for L2 plain quantization)
        self.anisotropic_threshold = anisotropic_threshold
        self.searcher_ = None
        self.brute_force_ = False

    # ---- build --------------------------------------------------------------------------
    def build(self, vectors: np.ndarray) -> ScannItemIndex:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.metric == "cosine":
            vectors = unit_rows(vectors)
        self.dims, self._n_items = int(vectors.shape[1]), len(vectors)
        if not len(vectors):
            raise ValueError("scann needs at least one item")
        builder = _scann().builder(vectors, 10, SCANN_DISTANCE[self.metric])
        self.brute_force_ = len(vectors) < PARTITION_MIN_ITEMS
        if self.brute_force_:
            builder = builder.score_brute_force()
            self.num_leaves = self.leaves_to_search = 0
        else:
            if self.num_leaves == -1:
                self.num_leaves = default_partitions(len(vectors))
            self.num_leaves = min(self.num_leaves, len(vectors))
            if self.leaves_to_search == -1:
                self.leaves_to_search = self.num_leaves
            builder = builder.tree(
                num_leaves=self.num_leaves,
                num_leaves_to_search=self.leaves_to_search,
                training_sample_size=min(len(vectors), self.training_sample),
            )
            threshold = self.anisotropic_threshold if self.metric != "euclidean" else float("nan")
            builder = builder.score_ah(self.dims_per_block, anisotropic_quantization_threshold=threshold)
            if self.reorder == -1:
                self.reorder = TUNE_REORDER_FACTOR * 10
            builder = builder.reorder(self.reorder)
        threads = (os.cpu_count() or 1) if self.num_threads == -1 else self.num_threads
        builder = builder.set_n_training_threads(threads)
        with native_stderr_as_debug(logger):  # absl's I0000 lines: DEBUG log records, not stderr
            self.searcher_ = builder.build()
        self.searcher_.set_num_threads(1)
        return self

    # ---- search -------------------------------------------------------------------------
    def _widths(self, k: int) -> tuple[int, int, int]:
        """(final neighbours, pre-reorder neighbours, leaves) for a top-``k`` search: the
        re-rank width was tuned for k = 10 and grows with k."""
        k = max(1, min(k, self._n_items))
        if self.brute_force_:
            return k, k, -1
        return k, max(k, self.reorder * max(1, math.ceil(k / 10))), self.leaves_to_search

    def _to_score(self, distances: np.ndarray) -> np.ndarray:
        # dot_product: ScaNN reports the product itself
        return euclidean_scores(distances) if self.metric == "euclidean" else distances

    def _prepare(self, q: np.ndarray) -> np.ndarray:
        q = np.asarray(q, dtype=np.float32)
        return unit_rows(q) if self.metric == "cosine" else q

    def query(self, vector, k, exclude=None):
        """Over-fetches ``k + |exclude|`` (each re-ranked exactly) and drops the excluded."""
        if self.searcher_ is None:
            raise IndexError_("index is not built or loaded")
        n_excluded = 0 if exclude is None else len(exclude)
        final, pre, leaves = self._widths(k + n_excluded)
        ids, dist = self.searcher_.search(self._prepare(np.ravel(vector)), final, pre, leaves)
        ids = np.asarray(ids, dtype=np.int64)
        return drop_excluded(ids, self._to_score(np.asarray(dist, np.float32)), k, exclude)

    def query_batch(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = self._prepare(np.atleast_2d(queries))
        final, pre, leaves = self._widths(k)
        found, dist = self.searcher_.search_batched(queries, final, pre, None if leaves == -1 else leaves)
        return padded(np.asarray(found, np.int64), self._to_score(np.asarray(dist, np.float32)), k)

    # ---- tuning (PartitionedIndex.tune) -----------------------------------------------------
    @property
    def setting(self) -> int:
        """The tuned knob reported by the choice: leaves searched (reorder in the metadata)."""
        return self.leaves_to_search

    def set_setting(self, value: int) -> None:
        self.leaves_to_search = int(value)

    @property
    def n_partitions(self) -> int:
        return 0 if self.brute_force_ else self.num_leaves

    @property
    def refines(self) -> bool:
        return not self.brute_force_

    # ---- files --------------------------------------------------------------------------
    def save(self, folder: Path) -> dict:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.searcher_.serialize(str(folder), relative_path=True)
        return self.write_meta(
            folder,
            num_leaves=self.num_leaves,
            leaves_to_search=self.leaves_to_search,
            reorder=self.reorder,
            brute_force=self.brute_force_,
            files={p.name: file_sha256(p) for p in sorted(folder.iterdir()) if p.name != META_FILE},
        )

    @classmethod
    def _load_private(cls, folder: Path, meta: dict, digests: dict[str, str] | None) -> ScannItemIndex:
        """``digests``: file name → sha256 to check (None: unverified)."""
        index = cls(
            meta["metric"],
            num_leaves=meta["num_leaves"],
            leaves_to_search=meta["leaves_to_search"],
            reorder=meta["reorder"],
        )
        names = list(meta["files"])
        if ASSETS_FILE not in names:
            raise IndexError_(f"scann index in {folder} lists no {ASSETS_FILE}")
        scratch = Path(tempfile.mkdtemp(prefix=".recsys-scann-"))
        fds: list[int] = []
        try:
            for name in names:
                if "/" in name:
                    raise IndexError_(f"index file name {name!r} in {folder} is not a plain name")
                fd = private_copy(folder / name, None if digests is None else digests.get(name, meta["files"][name]))
                fds.append(fd)
                # ScaNN opens files by name inside one folder: the names point at the sealed copies
                os.symlink(f"/proc/self/fd/{fd}", scratch / name)
            assets = os.pread(fds[names.index(ASSETS_FILE)], 1 << 20, 0).decode()
            try:
                native = _scann().scann_pybind.ScannNumpy(str(scratch), assets)
            except (RuntimeError, ValueError) as exc:
                raise IndexError_(f"scann could not load {folder}: {exc}") from exc
        finally:
            for fd in fds:
                os.close(fd)
            shutil.rmtree(scratch, ignore_errors=True)
        index.searcher_ = _scann().ScannSearcher(native)
        index.searcher_.set_num_threads(1)
        index.adopt(folder, index.searcher_.size(), meta)
        index.brute_force_ = meta["brute_force"]
        return index
