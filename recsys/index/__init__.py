from recsys.index.annoy_index import INDEX_KINDS, AnnoyItemIndex, load_index, make_index
from recsys.index.base import (
    METRICS,
    IndexError_,
    ItemIndex,
    binary_codes,
    query_latencies_ms,
    recall_at_k,
)
from recsys.index.choice import CandidateReport, IndexChoice, IndexSettings, build_index
from recsys.index.exact import ExactIndex, pairwise_scores
from recsys.index.hnsw_index import HnswItemIndex
from recsys.index.ivf_index import IvfItemIndex
from recsys.index.scann_index import ScannItemIndex

__all__ = [
    "INDEX_KINDS",
    "METRICS",
    "AnnoyItemIndex",
    "CandidateReport",
    "ExactIndex",
    "HnswItemIndex",
    "IndexChoice",
    "IndexError_",
    "IndexSettings",
    "IvfItemIndex",
    "ScannItemIndex",
    "ItemIndex",
    "binary_codes",
    "build_index",
    "load_index",
    "make_index",
    "pairwise_scores",
    "query_latencies_ms",
    "recall_at_k",
]
