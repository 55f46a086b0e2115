"""Model kinds by name. Importing this module never imports torch: ``SentenceEncoder``
imports its optional dependencies only when constructed."""

from __future__ import annotations

from typing import Any

from recsys.models.als import ALSEmbedder
from recsys.models.base import Embedder
from recsys.models.bpr import BPREmbedder
from recsys.models.content import SentenceEncoder, TagEncoder, TfidfEncoder
from recsys.models.ease import EASEEmbedder
from recsys.models.ensemble import EnsembleEmbedder
from recsys.models.lightfm import LightFMEmbedder

MODEL_KINDS: dict[str, type[Embedder]] = {
    "als": ALSEmbedder,
    "bpr": BPREmbedder,
    "lightfm": LightFMEmbedder,
    "tags": TagEncoder,
    "tfidf": TfidfEncoder,
    "sbert": SentenceEncoder,
    "ease": EASEEmbedder,
    "ensemble": EnsembleEmbedder,
}

#: kinds whose ``fit`` takes the items frame rather than the interaction matrix
CONTENT_KINDS = frozenset({"tags", "tfidf", "sbert"})


def make_model(kind: str, **params: Any) -> Embedder:
    """A new, unfitted model of ``kind`` with ``params`` (ValueError for an unknown kind)."""
    try:
        cls = MODEL_KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown model kind {kind!r}; known kinds: {', '.join(sorted(MODEL_KINDS))}") from None
    return cls(**params)
