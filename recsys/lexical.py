"""Lexical (exact-term) retrieval over the catalog text: BM25 with Snowball stemming, and typo
correction on the catalog's own vocabulary.

- Scoring is ``bm25s`` (BM25, Lucene variant: k1 = 1.5, b = 0.75) over one document per item:
  its title, description, categories and the attribute values marked searchable
  (:meth:`recsys.catalog_state.CatalogState.search_text`).
- Tokens: lower-cased runs of word characters (Unicode; single letters and digits count, so
  "Die Hard 2" differs from "Die Hard"), the Lucene English stop words removed
  (``bm25s.stopwords.STOPWORDS_EN``). Each word is indexed twice — stemmed by PyStemmer's
  Snowball English stemmer, and as typed (``=word``) — the same for documents and queries: "wars"
  finds "War" through the stem, while "Alien" ranks "Alien" above "Aliens" and "Terminator"
  above "Terminal" (same stem) through the exact form.
- Typo tolerance: a query word that, stemmed, is not in the index's vocabulary is replaced by the
  closest word of the catalog's own (unstemmed) vocabulary within an optimal-string-alignment
  distance of 1 (words of 4–7 letters) or 2 (8 letters and more), ties to the word in more
  items (rapidfuzz). Words of 3 letters or fewer, and misspellings that happen to be another
  catalog word, are not corrected (the semantic half of a hybrid search may still find them).
- Writes (``update``) mark the index stale and ``refresh`` rebuilds it: the serving catalog
  sync calls it right after applying a change, so the write pays the rebuild, before it is
  answered, and a new or edited item is found by its new words and no longer by its old ones
  from the next request on (a query on a stale index rebuilds it first). bm25s has no
  incremental update: a rebuild is ~40 ms on MovieLens 100K's 1,682 items, ~0.3 s at 10k and
  ~1.8 s at 50k (docs/search.md).
"""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import bm25s
import numpy as np
import Stemmer
from bm25s.stopwords import STOPWORDS_EN
from rapidfuzz import process
from rapidfuzz.distance import OSA

logger = logging.getLogger(__name__)

_WORD = re.compile(r"(?u)\w+")
_STOP = frozenset(STOPWORDS_EN)
#: marks the as-typed form of a word among the index's terms (stems never contain it)
EXACT = "="
#: words shorter than this are never typo-corrected
MIN_CORRECTED_LENGTH = 4
#: words at least this long may be corrected at distance 2 (shorter ones at distance 1)
TWO_EDITS_LENGTH = 8


@dataclass(frozen=True, slots=True)
class ParsedQuery:
    """A query as the index reads it: the terms it scores (stems and ``=``-marked exact words)
    and the corrections it made."""

    terms: tuple[str, ...]
    #: (typed word, catalog word it was read as)
    corrections: tuple[tuple[str, str], ...] = ()

    @property
    def corrected_text(self) -> str | None:
        """The query's words with the corrections applied (None when nothing was corrected)."""
        return None if not self.corrections else " ".join(w for _, w in self.corrections)


class LexicalIndex:
    """BM25 over one text per item position; ``scores(query)`` → one score per position
    (0 where no query term occurs). Thread-safe: writes mark it stale, a query rebuilds it."""

    def __init__(self, k1: float = 1.5, b: float = 0.75, language: str = "english") -> None:
        self.k1 = k1
        self.b = b
        self.language = language
        self._stemmer = Stemmer.Stemmer(language)
        self._texts: list[str] = []
        self._lock = threading.Lock()
        self._stale = True
        self._retriever: bm25s.BM25 | None = None
        self._terms: frozenset[str] = frozenset()
        self._words: dict[str, int] = {}  # surface word → number of items it occurs in
        self._stem_of: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._texts)

    # ---- writes ------------------------------------------------------------------------
    def set_texts(self, texts: Sequence[str]) -> None:
        with self._lock:
            self._texts = list(texts)
            self._stale = True

    def update(self, positions: Sequence[int], texts: Sequence[str]) -> None:
        """Replace the texts at ``positions``, appending when a position is the next one."""
        with self._lock:
            for j, text in zip(positions, texts):
                if j == len(self._texts):
                    self._texts.append(text)
                else:
                    self._texts[j] = text
            self._stale = True

    # ---- reads -------------------------------------------------------------------------
    def words(self, text: str) -> list[str]:
        """Lower-cased, stop-word-free words of ``text`` (before stemming)."""
        return [w for w in _WORD.findall(text.lower()) if w not in _STOP]

    def parse(self, query: str) -> ParsedQuery:
        """The terms ``query`` is scored with, after typo correction against the vocabulary."""
        self._fresh()
        terms, corrections = [], []
        for word in self.words(query):
            stem = self._stem(word)
            if stem not in self._terms:
                fixed = self._correct(word)
                if fixed is None:
                    continue
                corrections.append((word, fixed))
                word, stem = fixed, self._stem_of[fixed]
            terms.append(stem)
            if EXACT + word in self._terms:
                terms.append(EXACT + word)
        return ParsedQuery(tuple(terms), tuple(corrections))

    def scores(self, parsed: ParsedQuery) -> np.ndarray:
        """BM25 score of every position for the query's terms (float32, 0 = no term matched)."""
        retriever = self._fresh()
        if retriever is None or not parsed.terms:
            return np.zeros(len(self._texts), np.float32)
        return np.asarray(retriever.get_scores(list(parsed.terms)), np.float32)

    def refresh(self) -> None:
        """Rebuild now if a write made the index stale (otherwise the next query would)."""
        self._fresh()

    # ---- internals ---------------------------------------------------------------------
    def _stem(self, word: str) -> str:
        stem = self._stem_of.get(word)
        return stem if stem is not None else self._stemmer.stemWord(word)

    def _correct(self, word: str) -> str | None:
        if len(word) < MIN_CORRECTED_LENGTH or not self._words:
            return None
        cutoff = 2 if len(word) >= TWO_EDITS_LENGTH else 1
        found = process.extract(word, self._words.keys(), scorer=OSA.distance, score_cutoff=cutoff, limit=None)
        if not found:
            return None
        best = min(d for _, d, _ in found)
        return max((w for w, d, _ in found if d == best), key=lambda w: (self._words[w], w))

    def _fresh(self) -> bm25s.BM25 | None:
        """The retriever for the current texts, rebuilt first if a write made it stale."""
        if not self._stale:
            return self._retriever
        with self._lock:
            if self._stale:
                self._rebuild()
            return self._retriever

    def _rebuild(self) -> None:
        docs = [self.words(text) for text in self._texts]
        df: Counter[str] = Counter()
        for doc in docs:
            df.update(set(doc))
        stem_of = dict(zip(df, self._stemmer.stemWords(list(df))))
        corpus = [[t for w in doc for t in (stem_of[w], EXACT + w)] for doc in docs]
        retriever = None
        if df:
            retriever = bm25s.BM25(k1=self.k1, b=self.b)
            retriever.index(corpus, show_progress=False)
        self._retriever, self._words, self._stem_of = retriever, dict(df), stem_of
        self._terms = frozenset(stem_of.values()) | {EXACT + w for w in df}
        self._stale = False
        logger.debug("lexical index rebuilt: %d items, %d words", len(docs), len(df))
