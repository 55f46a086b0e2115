"""Annoy against exact search for every metric; save/load/checksum behaviour."""

import tempfile
from pathlib import Path

import numpy as np
import pytest

from recsys.index import METRICS, AnnoyItemIndex, ExactIndex, IndexError_, load_index, pairwise_scores


@pytest.fixture(scope="module")
def vectors():
    rng = np.random.default_rng(0)
    return rng.normal(size=(800, 16)).astype(np.float32), rng.normal(size=(30, 16)).astype(np.float32)


@pytest.mark.parametrize("metric", METRICS)
def test_annoy_matches_exact_for_each_metric(vectors, metric):
    items, queries = vectors
    annoy = AnnoyItemIndex(metric, n_trees=30, search_k=100_000).build(items)
    exact = ExactIndex(metric).build(items)
    for q in queries:
        a_ids, a_scores = annoy.query(q, 10)
        e_ids, e_scores = exact.query(q, 10)
        # Scores must be the same quantity on both sides (same metric, same sign convention)...
        np.testing.assert_allclose(a_scores, pairwise_scores(q, items, metric)[0][a_ids], rtol=1e-4, atol=1e-4)
        # ...and with an exhaustive search_k Annoy finds the exact top-10 (hamming has ties: compare scores).
        np.testing.assert_allclose(np.sort(a_scores), np.sort(e_scores), rtol=1e-4, atol=1e-4)


def test_exact_metrics_rank_correctly():
    items = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 0.1], [-1.0, -1.0]], np.float32)
    q = np.array([1.0, 0.0], np.float32)
    assert ExactIndex("dot").build(items).query(q, 1)[0][0] == 2
    assert ExactIndex("cosine").build(items).query(q, 1)[0][0] == 0
    assert ExactIndex("euclidean").build(items).query(q, 1)[0][0] == 0
    assert ExactIndex("manhattan").build(items).query(q, 2)[0].tolist() == [0, 1]
    # sign codes: q → [1,0]; items → [1,0],[0,1],[1,1],[0,0] → bits differing 0, 2, 1, 1
    ids, scores = ExactIndex("hamming").build(items).query(q, 4)
    assert ids[0] == 0 and scores[0] == 0 and sorted(scores.tolist()) == [-2, -1, -1, 0]


def test_exclude_is_respected(vectors):
    items, queries = vectors
    annoy = AnnoyItemIndex("dot", n_trees=10).build(items)
    top, _ = annoy.query(queries[0], 5)
    ids, _ = annoy.query(queries[0], 5, exclude=top[:3])
    assert not set(ids.tolist()) & set(top[:3].tolist())
    assert len(ids) == 5


def test_recall_measured_and_saved(tmp_path, vectors):
    items, queries = vectors
    annoy = AnnoyItemIndex("cosine", n_trees=5).build(items)
    recall = annoy.measure_recall(items, queries, k=10)
    assert 0.3 < recall <= 1.0
    meta = annoy.save(tmp_path / "idx")
    assert meta["recall_at_10"] == recall and meta["dims"] == 16 and meta["n_items"] == 800
    loaded = load_index(tmp_path / "idx")
    np.testing.assert_array_equal(loaded.query(queries[1], 10)[0], annoy.query(queries[1], 10)[0])


def test_corrupt_index_is_refused(tmp_path, vectors):
    items, _ = vectors
    AnnoyItemIndex("dot", n_trees=3).build(items).save(tmp_path / "idx")
    with open(tmp_path / "idx" / "index.ann", "r+b") as f:
        f.seek(100)
        f.write(b"\x00garbage\x00")
    with pytest.raises(IndexError_, match="checksum"):
        AnnoyItemIndex.load(tmp_path / "idx")


def test_tune_reaches_target_recall_on_clustered_dot_vectors():
    """Annoy's default search_k misses most neighbours on clustered ALS-like vectors; tuning fixes it."""
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(10, 16)) * 3
    items = (centers[rng.integers(0, 10, 3000)] + rng.normal(size=(3000, 16))).astype(np.float32)
    items *= rng.lognormal(0, 0.5, (3000, 1)).astype(np.float32)  # varied norms, as MF popularity gives
    queries = (centers[rng.integers(0, 10, 100)] + rng.normal(size=(100, 16))).astype(np.float32)
    default = AnnoyItemIndex("dot", n_trees=10).build(items)
    before = default.measure_recall(items, queries)
    tuned = AnnoyItemIndex("dot", n_trees=10, target_recall=0.95).build(items)
    after = tuned.tune(items, queries)
    assert after >= 0.95 and tuned.search_k > 10 * 10
    assert after > before
    meta = tuned.save(Path(tempfile.mkdtemp()) / "idx")
    assert meta["search_k"] == tuned.search_k  # the tuned value travels with the file
    # latencies are measured at build so serving can pick the faster of Annoy and a scan
    assert meta["query_ms"] > 0 and meta["exact_query_ms"] > 0
    assert tuned.prefer_exact == (meta["exact_query_ms"] < meta["query_ms"])


def test_tune_stopping_early_never_serves_annoy_below_target():
    """With stop_when_slower, tuning may stop short of the recall target only when Annoy is
    already slower than a scan — and then serving must scan (prefer_exact)."""
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(8, 16)) * 3
    items = (centers[rng.integers(0, 8, 2000)] + rng.normal(size=(2000, 16))).astype(np.float32)
    queries = (centers[rng.integers(0, 8, 60)] + rng.normal(size=(60, 16))).astype(np.float32)
    index = AnnoyItemIndex("dot", n_trees=10, target_recall=0.99).build(items)
    recall = index.tune(items, queries, stop_when_slower=True)
    assert index.query_ms_ is not None and index.exact_query_ms_ is not None
    assert recall >= 0.99 or index.prefer_exact
    assert recall == index.recall_at_10_
