"""Content encoders on synthetic items whose text and tags come from per-cluster vocabularies."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.preprocessing import normalize

from recsys.datasets.synthetic import generate_synthetic
from recsys.matrix import InteractionMatrix
from recsys.models.base import TrainData
from recsys.models.content import (
    EncoderUnavailable,
    SentenceEncoder,
    TagEncoder,
    TfidfEncoder,
    user_content_profile,
    user_content_profiles,
)

N_CLUSTERS = 6
CHANCE = 1 / N_CLUSTERS
SPACE = 2  # cluster 2 is the "space" theme (galaxy, rocket, orbit, ...)


@pytest.fixture(scope="module")
def data():
    ds = generate_synthetic(n_users=300, n_items=400, n_events=8_000, n_clusters=N_CLUSTERS, seed=11)
    clusters = ds.items["attributes"].map(lambda a: a["cluster"]).to_numpy()
    return ds, clusters


def catalog(items, item_ids=None) -> TrainData:
    """The catalog alone, rows in ``item_ids`` order (default: the frame's)."""
    return TrainData.catalog_only(items, items["item_id"].to_numpy() if item_ids is None else item_ids)


def same_cluster_neighbours(vectors: np.ndarray, clusters: np.ndarray, k: int = 10) -> float:
    sims = vectors @ vectors.T  # unit vectors: cosine
    np.fill_diagonal(sims, -np.inf)
    top = np.argsort(-sims, axis=1)[:, :k]
    return float((clusters[top] == clusters[:, None]).mean())


def check_unit_float32(vectors: np.ndarray) -> None:
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("encoder", [TagEncoder(n_components=8), TfidfEncoder(n_components=32)], ids=["tags", "tfidf"])
def test_same_cluster_items_are_nearest(encoder, data):
    ds, clusters = data
    assert encoder.fit(catalog(ds.items)) is encoder
    assert encoder.metric == "cosine"
    check_unit_float32(encoder.item_vectors_)
    assert list(encoder.item_ids_) == list(ds.items["item_id"])
    assert same_cluster_neighbours(encoder.item_vectors_, clusters) > 3 * CHANCE


@pytest.mark.parametrize("cls", [TagEncoder, TfidfEncoder])
def test_new_items_transform_into_their_cluster(cls, data):
    ds, clusters = data
    train, new = ds.items.iloc[:300], ds.items.iloc[300:]
    encoder = cls(n_components=16).fit(catalog(train))
    vectors = encoder.transform(new)
    check_unit_float32(vectors)
    nearest = np.argsort(-(vectors @ encoder.item_vectors_.T), axis=1)[:, :10]
    assert (clusters[:300][nearest] == clusters[300:, None]).mean() > 3 * CHANCE


def test_item_ids_align_rows_and_missing_ids_get_zeros(data):
    ds, _ = data
    ids = ["i5", "i0", "not-in-catalog"]
    aligned = TfidfEncoder(n_components=16).fit(catalog(ds.items, ids))
    full = TfidfEncoder(n_components=16).fit(catalog(ds.items))
    assert aligned.item_vectors_.shape == (3, 16)
    np.testing.assert_allclose(aligned.item_vectors_[0], full.item_vectors_[5], atol=1e-6)
    np.testing.assert_allclose(aligned.item_vectors_[1], full.item_vectors_[0], atol=1e-6)
    assert not aligned.item_vectors_[2].any()


def test_tag_encoder_keeps_multi_hot_when_few_tags(data):
    ds, _ = data
    encoder = TagEncoder(n_components=10_000).fit(catalog(ds.items))
    n_tags = len(encoder.binarizer_.classes_)
    assert encoder.svd_ is None and encoder.item_vectors_.shape == (len(ds.items), n_tags)
    check_unit_float32(encoder.item_vectors_)
    # unknown tags are ignored; a known top-level tag alone points at its cluster
    query = encoder.transform([["space", "never-seen-tag"]])
    assert (query[0] > 0).sum() == 1


def test_tfidf_text_query_finds_the_topic(data):
    ds, clusters = data
    encoder = TfidfEncoder(n_components=32).fit(catalog(ds.items))
    query = encoder.transform("rocket launch to orbit a distant planet")
    assert query.shape == (1, 32)
    top = np.argsort(-(encoder.item_vectors_ @ query[0]))[:10]
    assert (clusters[top] == SPACE).mean() >= 0.8


def test_user_content_profile_is_normalized_weighted_mean():
    vectors = normalize(np.random.default_rng(0).normal(size=(5, 4))).astype(np.float32)
    profile = user_content_profile(vectors, np.array([1, 3]), np.array([1.0, 3.0]))
    expected = vectors[1] + 3 * vectors[3]
    np.testing.assert_allclose(profile, expected / np.linalg.norm(expected), rtol=1e-5)
    assert profile.dtype == np.float32
    assert not user_content_profile(vectors, np.array([], dtype=int)).any()

    matrix = sp.csr_matrix(np.array([[0, 1, 0, 3, 0], [0, 0, 0, 0, 0], [2, 0, 0, 0, 1]], dtype=np.float32))
    batched = user_content_profiles(matrix, vectors)
    assert batched.dtype == np.float32 and batched.shape == (3, 4)
    for u in range(3):
        row = matrix[u]
        np.testing.assert_allclose(batched[u], user_content_profile(vectors, row.indices, row.data), atol=1e-6)


def test_content_profiles_recommend_the_users_cluster(data):
    ds, clusters = data
    im = InteractionMatrix.from_events(ds.events, item_ids=ds.items["item_id"].to_numpy())
    user_cluster = ds.users.set_index("user_id").loc[im.user_ids, "attributes"].map(lambda a: a["cluster"]).to_numpy()
    encoder = TagEncoder(n_components=8).fit(TrainData(im.matrix, item_ids=im.item_ids, items=ds.items))
    assert encoder.user_vectors_.shape == (im.shape[0], 8)
    top = np.argsort(-(encoder.user_vectors_ @ encoder.item_vectors_.T), axis=1)[:, :10]
    assert (clusters[top] == user_cluster[:, None]).mean() > 0.7
    touched = np.flatnonzero(clusters == SPACE)[:4]
    folded = encoder.fold_in(touched)
    assert (clusters[np.argsort(-(encoder.item_vectors_ @ folded))[:10]] == SPACE).all()


def test_fit_needs_the_catalog(data):
    ds, _ = data
    with pytest.raises(ValueError, match="needs TrainData.items"):
        TagEncoder().fit(TrainData(sp.csr_matrix((2, 2))))
    with pytest.raises(TypeError, match="takes a TrainData"):
        TagEncoder().fit(ds.items)


def test_sentence_encoder_unavailable_without_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import now raises ImportError
    with pytest.raises(EncoderUnavailable, match=r"pip install '\.\[text\]'"):
        SentenceEncoder()


@pytest.fixture(scope="module")
def sbert():
    try:
        return SentenceEncoder(batch_size=64)
    except EncoderUnavailable as exc:
        pytest.skip(str(exc))


@pytest.mark.text
def test_sentence_encoder_same_cluster_items_are_nearest(sbert, data):
    import os

    ds, clusters = data
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    sbert.fit(catalog(ds.items))
    check_unit_float32(sbert.item_vectors_)
    assert sbert.item_vectors_.shape == (len(ds.items), 384)
    assert same_cluster_neighbours(sbert.item_vectors_, clusters) > 3 * CHANCE
    query = sbert.transform(["astronauts launching a rocket into orbit"])
    top = np.argsort(-(sbert.item_vectors_ @ query[0]))[:10]
    assert (clusters[top] == SPACE).mean() >= 0.8
