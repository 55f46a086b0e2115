"""Item index interface: nearest item vectors under one of five metrics.

Scores are always "higher is better": the dot product for ``dot``, cosine similarity for
``cosine``, and the negated distance for ``euclidean``, ``manhattan`` and ``hamming``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

METRICS = ("cosine", "dot", "euclidean", "manhattan", "hamming")


class IndexError_(RuntimeError):
    """An index file that is missing, corrupt or does not match its metadata."""


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return metric


def binary_codes(vectors: np.ndarray) -> np.ndarray:
    """Sign quantization: one bit per dimension, 1 where the component is positive."""
    return (np.asarray(vectors) > 0).astype(np.float32)


class ItemIndex(ABC):
    metric: str
    dims: int

    @abstractmethod
    def build(self, vectors: np.ndarray) -> "ItemIndex":
        """Index the rows of ``vectors`` (row i = item column i)."""

    @abstractmethod
    def query(self, vector: np.ndarray, k: int, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item rows and scores for one query vector, best first, skipping ``exclude``."""

    @abstractmethod
    def save(self, folder: Path) -> dict:
        """Write the index into ``folder``; returns the metadata written."""

    @property
    @abstractmethod
    def n_items(self) -> int: ...
