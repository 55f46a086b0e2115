"""Datasets: the in-memory contract, the synthetic generator and file loaders."""

from recsys.datasets.base import Dataset, DatasetError
from recsys.datasets.loaders import (
    LOADERS,
    load_dataset,
    load_goodbooks_10k,
    load_movielens_1m,
    load_movielens_100k,
    load_table,
)
from recsys.datasets.synthetic import generate_synthetic

__all__ = [
    "LOADERS",
    "Dataset",
    "DatasetError",
    "generate_synthetic",
    "load_dataset",
    "load_goodbooks_10k",
    "load_movielens_1m",
    "load_movielens_100k",
    "load_table",
]
