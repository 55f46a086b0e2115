"""item2vec (Barkan & Koenigstein 2016): skip-gram word2vec over each user's time-ordered items.

Items that appear near each other in users' histories get nearby vectors, so the item vectors
answer item-to-item similarity and anonymous sessions directly. A user's vector is the mean of
the (unit) vectors of the items they touched — the same formula for known users (``fit``) and
for a session or an unseen user (``fold_in``) — and scores are dot products with the unit item
vectors, i.e. the mean cosine of an item to the user's history.
"""

from __future__ import annotations

import logging
import zlib

import numpy as np

from recsys.models.base import Embedder, TrainData

logger = logging.getLogger(__name__)


def _stable_hash(text: str) -> int:
    # gensim seeds each word's initial vector with hash(word + seed); Python's str hash changes
    # between processes (PYTHONHASHSEED), which would make the same seed give different models.
    return zlib.crc32(text.encode())


class Item2VecEmbedder(Embedder):
    """Parameters follow gensim's ``Word2Vec`` (``sg=1``: skip-gram).

    factors : vector size.
    window : items on each side of an item in a user's sequence that count as its context
        (the default takes about the whole history: "bought X, also bought Y").
    epochs : passes over the sequences (catalog-sized vocabularies are small corpora: with
        word2vec's usual 5–10 the vectors stay close to their random start).
    negative : negative samples per positive pair.
    ns_exponent : exponent of the negative-sampling distribution (Caselles-Dupré et al. 2018
        found values far from word2vec's 0.75 often better for recommendation).
    sample : down-sampling threshold of frequent items (0 disables it).
    workers : gensim threads; 1 makes a seeded fit reproducible.
    """

    kind = "item2vec"
    metric = "dot"
    uses_sequences = True
    supports_fold_in = True
    #: a mean: delta and afresh are the same vector, afresh costs one fold-in
    returning_fold_in = "afresh"

    def __init__(
        self,
        factors: int = 64,
        window: int = 100,
        epochs: int = 20,
        negative: int = 5,
        ns_exponent: float = 0.75,
        sample: float = 0.0,
        learning_rate: float = 0.025,
        random_state: int = 42,
        workers: int = 1,
    ) -> None:
        self.factors = factors
        self.window = window
        self.epochs = epochs
        self.negative = negative
        self.ns_exponent = ns_exponent
        self.sample = sample
        self.learning_rate = learning_rate
        self.random_state = random_state
        self.workers = workers

    def _fit(self, data: TrainData) -> None:
        """Sentences are ``data.sequences`` (each matrix row's item columns in time order).
        Without them each user's items are taken in a seeded random order (the window then
        samples co-occurrence)."""
        from gensim.models import Word2Vec

        matrix, sequences = data.matrix, data.sequences
        n_users, n_items = matrix.shape
        if sequences is None:
            rng = np.random.default_rng(self.random_state)
            sequences = [
                rng.permutation(matrix.indices[matrix.indptr[u] : matrix.indptr[u + 1]]) for u in range(n_users)
            ]
        sentences = [[str(i) for i in seq] for seq in sequences if len(seq) > 1]
        vectors = np.zeros((n_items, self.factors), np.float32)
        if sentences:
            w2v = Word2Vec(
                sentences=sentences,
                vector_size=self.factors,
                window=self.window,
                min_count=1,
                sg=1,
                negative=self.negative,
                ns_exponent=self.ns_exponent,
                sample=self.sample,
                alpha=self.learning_rate,
                epochs=self.epochs,
                seed=self.random_state,
                workers=self.workers,
                hashfxn=_stable_hash,
            )
            cols = np.array([int(key) for key in w2v.wv.index_to_key], dtype=np.int64)
            vectors[cols] = w2v.wv.vectors
        else:
            logger.warning("item2vec: no user has two or more items; every item vector is zero")
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        self.item_vectors_ = np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), np.float32)
        binary = matrix.copy()
        binary.data = np.ones_like(binary.data, dtype=np.float32)
        counts = np.maximum(np.asarray(binary.sum(axis=1)).ravel(), 1.0)
        self.user_vectors_ = np.ascontiguousarray(np.asarray(binary @ self.item_vectors_) / counts[:, None], np.float32)

    def fold_in(self, item_indices: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """The mean of the touched items' vectors, each item once, as ``fit`` gives known users
        (``weights`` are ignored like the matrix values in ``fit``: on MovieLens, weighing by
        the rating ranked worse, bench/foldin_movielens.py)."""
        self._check_fitted()
        item_indices = np.unique(np.asarray(item_indices, dtype=np.int64))
        if len(item_indices) == 0:
            return np.zeros(self.item_vectors_.shape[1], np.float32)
        return self.item_vectors_[item_indices].mean(axis=0).astype(np.float32)
