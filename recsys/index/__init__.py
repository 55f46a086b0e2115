from recsys.index.annoy_index import AnnoyItemIndex, load_index, make_index
from recsys.index.base import METRICS, IndexError_, ItemIndex, binary_codes
from recsys.index.exact import ExactIndex, pairwise_scores

__all__ = ["AnnoyItemIndex", "ExactIndex", "ItemIndex", "IndexError_", "METRICS", "binary_codes", "load_index", "make_index", "pairwise_scores"]
