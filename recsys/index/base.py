"""Item index interface: nearest item vectors under one of five metrics.

Scores are always "higher is better": the dot product for ``dot``, cosine similarity for
``cosine``, and the negated distance for ``euclidean``, ``manhattan`` and ``hamming``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

import numpy as np

METRICS = ("cosine", "dot", "euclidean", "manhattan", "hamming")
#: every index folder's metadata file
META_FILE = "index.json"


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


def euclidean_scores(squared: np.ndarray) -> np.ndarray:
    """Scores (higher is better) of squared L2 distances, as the libraries report them."""
    return -np.sqrt(np.maximum(squared, 0.0))


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


def padded(found: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A batch answer as ``query_batch`` returns it: (ids int64 (n, k), scores float32 (n, k)),
    the library's (n, <= k) answer padded with -1 / -inf, and its own -1 padding scored -inf."""
    n = len(found)
    ids = np.full((n, k), -1, np.int64)
    out = np.full((n, k), -np.inf, np.float32)
    width = min(k, found.shape[1]) if found.ndim == 2 else 0
    ids[:, :width] = found[:, :width]
    out[:, :width] = np.where(found[:, :width] >= 0, scores[:, :width], -np.inf)
    return ids, out


class ItemIndex(ABC):
    kind: str
    metric: str
    dims: int
    #: recall@10 measured at build (None before tuning or for exact search)
    recall_at_10_: float | None = None

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

    def measure_recall(self, queries: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
        """Recall@k of ``queries`` against their true top rows ``truth``; kept as
        ``recall_at_10_`` for k = 10."""
        recall = recall_at_k(self.query_batch(queries, k)[0], truth)
        if k == 10:
            self.recall_at_10_ = recall
        return recall

    def write_meta(self, folder: Path, **fields) -> dict:
        """Write ``index.json``: what every kind records (kind, metric, dims, items, recall) and
        its own ``fields`` (knobs, file checksums); returns it."""
        meta = {
            "kind": self.kind,
            "metric": self.metric,
            "dims": self.dims,
            "n_items": self.n_items,
            "recall_at_10": self.recall_at_10_,
            **fields,
        }
        (Path(folder) / META_FILE).write_text(json.dumps(meta, indent=2))
        return meta

    def adopt(self, where: Path, holds: int, meta: dict) -> None:
        """Take the loaded native index's size and the metadata's figures; ``IndexError_`` when
        the index holds another number of items than its metadata says."""
        if holds != meta["n_items"]:
            raise IndexError_(f"index {where} holds {holds} items, metadata says {meta['n_items']}")
        self.dims, self._n_items = meta["dims"], meta["n_items"]
        self.recall_at_10_ = meta.get("recall_at_10")

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


# ---- index files: checksums and private copies ---------------------------------------------
def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _require(path: Path) -> None:
    if not Path(path).is_file():
        raise IndexError_(f"index file missing: {path}")


def read_verified(path: Path, expected_sha256: str | None = None) -> bytes:
    """The file's bytes, read once; ``IndexError_`` when they do not hash to ``expected_sha256``."""
    _require(path)
    data = Path(path).read_bytes()
    if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise IndexError_(f"{path} does not match its checksum")
    return data


def _private_fd() -> tuple[int, bool]:
    """A writable fd no other process can reach by path; True when it can be sealed (memfd)."""
    if hasattr(os, "memfd_create"):
        try:
            return os.memfd_create("recsys-index", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING), True
        except OSError:  # e.g. a seccomp profile without memfd
            pass
    fd, name = tempfile.mkstemp(prefix=".recsys-index-")
    os.unlink(name)  # unlinked now; the open fd (then the library's) keeps it alive
    return fd, False


def _seal(fd: int) -> None:
    import fcntl

    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)


def private_copy(path: Path, expected_sha256: str | None = None) -> int:
    """Copy ``path`` into a private (sealed, unlinked) file, hashing what was copied.

    Returns the open fd (caller closes it once the copy is mapped or read). The checksum is
    taken over the bytes written to the copy, so what is served is exactly what was verified.
    """
    _require(path)
    fd, sealable = _private_fd()
    try:
        h = hashlib.sha256()
        with open(path, "rb") as src:
            for block in iter(lambda: src.read(1 << 20), b""):
                h.update(block)
                view = memoryview(block)
                while view:
                    view = view[os.write(fd, view) :]
        if expected_sha256 is not None and h.hexdigest() != expected_sha256:
            raise IndexError_(f"index file {path} does not match its checksum")
        if sealable:
            _seal(fd)
        return fd
    except BaseException:
        os.close(fd)
        raise


def fd_path(fd: int, fallback: Path) -> str:
    """A name the library can open for ``fd`` (``/proc/self/fd/N``; ``fallback`` without /proc)."""
    proc = f"/proc/self/fd/{fd}"
    return proc if os.path.exists(proc) else str(fallback)
