import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recsys.evaluation import (
    ItemKNNRecommender,
    PopularityRecommender,
    RandomRecommender,
    activity_buckets,
    breakdown,
    catalog_coverage,
    gini,
    intra_list_diversity,
    novelty,
    per_user_metrics,
    popularity_bias,
    ranking_metrics_at_k,
    recommenders_metrics,
    top_k_scores,
)
from recsys.models.base import TrainData


def csr(rows, n_items):
    """CSR from a list of per-user relevant item lists."""
    r = [i for i, items in enumerate(rows) for _ in items]
    c = [j for items in rows for j in items]
    return sp.csr_matrix((np.ones(len(c), np.float32), (r, c)), shape=(len(rows), n_items))


# ---------------------------------------------------------------- hand-computed metrics


def tiny():
    # user 0: relevant {1,3,5}; recs [1,2,3,4] -> hits at ranks 1 and 3
    # user 1: relevant {0};     recs [2,-1,-1,-1] -> no hit
    # user 2: no test items -> skipped
    test = csr([[1, 3, 5], [0], []], 10)
    rec = np.array([[1, 2, 3, 4], [2, -1, -1, -1], [0, 1, 2, 3]])
    return rec, test


def test_hand_computed_per_user():
    rec, test = tiny()
    df = per_user_metrics(rec, test, 4)
    assert list(df["user_row"]) == [0, 1]
    u0, u1 = df.iloc[0], df.iloc[1]
    assert u0["hits"] == 2 and u0["n_relevant"] == 3
    assert u0["precision"] == pytest.approx(0.5)
    assert u0["precision_implicit"] == pytest.approx(2 / 3)
    assert u0["recall"] == pytest.approx(2 / 3)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert u0["ndcg"] == pytest.approx((1 + 1 / math.log2(4)) / idcg)
    assert u0["map"] == pytest.approx((1 / 1 + 2 / 3) / 3)
    assert u0["hit_rate"] == 1 and u0["mrr"] == 1
    # implicit AUC: miss at rank 2 adds 1, miss at rank 4 adds 2; then (2+3)/2 * (7-2) = 12.5
    assert u0["auc"] == pytest.approx((1 + 2 + 12.5) / (3 * 7))
    assert u1[["precision", "recall", "ndcg", "map", "hit_rate", "mrr"]].sum() == 0
    # padding counts as misses: (0 + 1)/2 * (9 - 4) / (1 * 9)
    assert u1["auc"] == pytest.approx(2.5 / 9)


def test_hand_computed_means():
    rec, test = tiny()
    m = ranking_metrics_at_k(rec, test, 4)
    assert m["n_users"] == 2
    assert m["precision"] == pytest.approx(0.25)
    assert m["precision_implicit"] == pytest.approx(2 / (3 + 1))  # micro: sum hits / sum min(k, R)
    assert m["recall"] == pytest.approx(1 / 3)
    assert m["map"] == pytest.approx(5 / 18)
    assert m["hit_rate"] == pytest.approx(0.5) and m["mrr"] == pytest.approx(0.5)
    assert m["auc"] == pytest.approx((15.5 / 21 + 2.5 / 9) / 2)


def test_mrr_user_rows_truncation_and_n_items_total():
    test = csr([[7], [1]], 10)
    rec = np.array([[7, 8, 1, 0, 5]])
    # recommendations are for test row 1: first hit at rank 3
    m = ranking_metrics_at_k(rec, test, 3, user_rows=np.array([1]))
    assert m["n_users"] == 1 and m["mrr"] == pytest.approx(1 / 3)
    # k=2 truncates the list: no hit
    assert ranking_metrics_at_k(rec, test, 2, user_rows=np.array([1]))["hit_rate"] == 0
    # AUC with a larger catalogue: hit at 3 after 2 misses -> 0 + (1+1)/2 * (N - 2), N = 99
    m = ranking_metrics_at_k(rec, test, 3, user_rows=np.array([1]), n_items_total=100)
    assert m["auc"] == pytest.approx((0 + 1.0 * (99 - 2)) / 99)


def test_map_differs_when_more_relevant_than_k():
    test = csr([[0, 1, 2, 3, 4, 5]], 10)
    rec = np.array([[0, 9, 1, 8]])
    rr = 1 / 1 + 2 / 3
    assert ranking_metrics_at_k(rec, test, 4)["map"] == pytest.approx(rr / 4)
    r = recommenders_metrics(rec, test, 4)
    assert r["map"] == pytest.approx(rr / 6)  # normalized by |relevant|
    assert r["map_at_k"] == pytest.approx(rr / 4)  # normalized by min(k, |relevant|)
    assert r["precision_at_k"] == pytest.approx(2 / 4)
    assert r["recall_at_k"] == pytest.approx(2 / 6)
    idcg = sum(1 / math.log(1 + i) for i in range(1, 5))
    assert r["ndcg_at_k"] == pytest.approx((1 / math.log(2) + 1 / math.log(4)) / idcg)


def test_recommenders_metrics_tiny_and_user_without_predictions():
    rec, test = tiny()
    r = recommenders_metrics(rec, test, 4)
    assert r["n_users"] == 2
    assert r["precision_at_k"] == pytest.approx(0.25)
    assert r["map"] == pytest.approx(5 / 18)
    # a test user with no recommendation at all: out of n_users except for nDCG (outer join)
    rec2 = rec.copy()
    rec2[1] = -1
    r2 = recommenders_metrics(rec2, test, 4)
    assert r2["n_users"] == 1
    assert r2["precision_at_k"] == pytest.approx(0.5)
    assert r2["ndcg_at_k"] == pytest.approx(r["ndcg_at_k"])  # still averaged over both test users
    # no hit at all -> 0.0 as in the reference
    assert recommenders_metrics(np.array([[9, 8, 7, 6]] * 3), test, 4)["map"] == 0.0


def test_no_evaluated_users():
    m = ranking_metrics_at_k(np.array([[0, 1]]), csr([[]], 5), 2)
    assert m["n_users"] == 0 and math.isnan(m["ndcg"])


# ---------------------------------------------------------------- agreement with implicit


@pytest.mark.parametrize("K,density", [(10, 0.1), (3, 0.3)])
def test_agrees_with_implicit(K, density):
    from implicit.als import AlternatingLeastSquares
    from implicit.evaluation import ranking_metrics_at_k as implicit_metrics
    from implicit.evaluation import train_test_split

    M = sp.random(300, 90, density=density, random_state=1, format="csr", dtype=np.float32)
    M.data[:] = 1.0
    train, test = train_test_split(M, 0.8, random_state=3)
    model = AlternatingLeastSquares(factors=8, iterations=5, random_state=0)
    model.fit(train, show_progress=False)
    ref = implicit_metrics(model, train, test, K, show_progress=False)

    users = np.flatnonzero(np.diff(test.indptr) > 0)
    ids, _ = model.recommend(users, train[users], N=K, filter_already_liked_items=True)
    ours = ranking_metrics_at_k(ids, test, K, user_rows=users)
    assert ours["n_users"] == len(users)
    assert ours["precision_implicit"] == pytest.approx(ref["precision"], abs=1e-6)
    for name in ("map", "ndcg", "auc"):
        assert ours[name] == pytest.approx(ref[name], abs=1e-6), name
    if K == 3:  # users with more relevant items than K: textbook precision differs
        assert abs(ours["precision"] - ref["precision"]) > 1e-3

    # our exact top-k reproduces implicit's recommendations from the same factors
    ours_ids, _ = top_k_scores(model.user_factors, model.item_factors, K, exclude=train, user_rows=users)
    assert (ours_ids == ids).mean() > 0.99
    again = ranking_metrics_at_k(ours_ids, test, K, user_rows=users)
    assert again["map"] == pytest.approx(ref["map"], abs=1e-3)


# ---------------------------------------------------------------- top-k


def test_top_k_matches_brute_force_and_excludes():
    rng = np.random.default_rng(0)
    U, V = rng.standard_normal((50, 6)), rng.standard_normal((40, 6))
    exclude = sp.random(50, 40, density=0.2, random_state=2, format="csr")
    idx, scores = top_k_scores(U, V, 7, exclude=exclude, batch_size=16)
    assert idx.dtype == np.int64 and scores.dtype == np.float32 and idx.shape == (50, 7)
    full = U @ V.T
    full[exclude.toarray() != 0] = -np.inf
    expected = np.argsort(-full, axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(idx, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(full, expected, 1), rtol=1e-5)
    dense = exclude.toarray()
    assert not dense[np.arange(50)[:, None], idx].any()
    assert (np.diff(scores, axis=1) <= 0).all()


def test_top_k_user_rows_and_aligned_exclude_and_cosine():
    rng = np.random.default_rng(1)
    U, V = rng.standard_normal((20, 4)), rng.standard_normal((30, 4))
    exclude = sp.random(20, 30, density=0.3, random_state=5, format="csr")
    rows = np.array([3, 17, 5])
    a, _ = top_k_scores(U, V, 5, exclude=exclude, user_rows=rows)
    b, _ = top_k_scores(U, V, 5, exclude=exclude[rows], user_rows=rows)  # already aligned
    full, _ = top_k_scores(U, V, 5, exclude=exclude)
    np.testing.assert_array_equal(a, full[rows])
    np.testing.assert_array_equal(b, full[rows])
    Un = U / np.linalg.norm(U, axis=1, keepdims=True)
    Vn = V / np.linalg.norm(V, axis=1, keepdims=True)
    c, cs = top_k_scores(U, V, 5, metric="cosine")
    d, _ = top_k_scores(Un, Vn, 5)
    np.testing.assert_array_equal(c, d)
    assert (cs <= 1 + 1e-6).all()
    with pytest.raises(ValueError):
        top_k_scores(U, V, 5, metric="euclid")
    with pytest.raises(ValueError):  # neither one row per user vector nor per user_rows entry
        top_k_scores(U, V, 5, exclude=exclude[:7], user_rows=rows)


def test_top_k_pads_when_too_few_candidates():
    U, V = np.ones((2, 1)), np.arange(5, dtype=np.float32)[:, None]
    exclude = csr([[4, 3, 2], []], 5)
    idx, scores = top_k_scores(U, V, 4, exclude=exclude)
    np.testing.assert_array_equal(idx[0], [1, 0, -1, -1])
    assert np.isneginf(scores[0, 2:]).all()
    np.testing.assert_array_equal(idx[1], [4, 3, 2, 1])
    # k larger than the catalogue
    idx, _ = top_k_scores(U, V, 7)
    np.testing.assert_array_equal(idx[1], [4, 3, 2, 1, 0, -1, -1])


# ---------------------------------------------------------------- baselines


def skewed_matrix(n_users=200, n_items=50, seed=0):
    """Item i is chosen with probability proportional to 1/(i+1): popularity follows the index."""
    rng = np.random.default_rng(seed)
    p = 1 / np.arange(1, n_items + 1)
    p /= p.sum()
    rows = [np.unique(rng.choice(n_items, size=8, p=p)).tolist() for _ in range(n_users)]
    return csr(rows, n_items)


def test_popularity_recommender_ranks_by_popularity():
    train = skewed_matrix()
    model = PopularityRecommender().fit(TrainData(train))
    pop = np.diff(train.tocsc().indptr)
    np.testing.assert_array_equal(model.item_vectors_[:, 0], pop)
    assert model.user_vectors_.shape == (train.shape[0], 1) and model.kind == "popular"
    idx, scores = model.recommend(np.arange(10), train, 5)
    dense = train.toarray()
    for u in range(10):  # small hand check over 10 users
        allowed = np.flatnonzero(dense[u] == 0)
        best = allowed[np.argsort(-pop[allowed], kind="stable")][:5]
        assert set(pop[idx[u]]) == set(pop[best]) and not dense[u, idx[u]].any()
    assert (np.diff(scores, axis=1) <= 0).all()
    assert model.fold_in(np.array([1, 2])).shape == (1,)


def test_random_recommender_seeded_and_per_user():
    train = skewed_matrix()
    a = RandomRecommender(random_state=3).fit(TrainData(train))
    b = RandomRecommender(random_state=3).fit(TrainData(train))
    c = RandomRecommender(random_state=4).fit(TrainData(train))
    ia, _ = a.recommend(np.arange(20), train, 10)
    ib, _ = b.recommend(np.arange(20), train, 10)
    ic, _ = c.recommend(np.arange(20), train, 10)
    np.testing.assert_array_equal(ia, ib)
    assert (ia != ic).any()
    assert len({tuple(r) for r in ia}) > 15  # different users get different lists
    assert a.kind == "random" and a.fold_in(np.array([0])).shape == (a.factors,)


def test_baselines_rank_as_expected():
    """Block structure: ItemKNN > Popularity > Random on held-out items."""
    rng = np.random.default_rng(0)
    n_users, n_blocks, per_block = 300, 5, 12
    n_items = n_blocks * per_block
    rows = []
    for u in range(n_users):
        # half the users live in block 0, so its items are the most popular (popularity > random)
        b = 0 if u % 2 == 0 else u % n_blocks
        k = 6 if b == 0 else 4
        rows.append(sorted(rng.choice(np.arange(b * per_block, (b + 1) * per_block), size=k, replace=False)))
    M = csr(rows, n_items)
    from implicit.evaluation import train_test_split

    train, test = train_test_split(M, 0.7, random_state=1)
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    results = {}
    for model in (RandomRecommender(random_state=0), PopularityRecommender(), ItemKNNRecommender(K=20)):
        model.fit(TrainData(train))
        ids, scores = model.recommend(users, train, 10)
        assert not train[users].toarray()[np.arange(len(users))[:, None], np.maximum(ids, 0)][ids >= 0].any()
        results[model.kind] = ranking_metrics_at_k(ids, test, 10, user_rows=users)["ndcg"]
    assert results["itemknn"] > results["popular"] > results["random"]


def test_itemknn_needs_fit_and_pads():
    with pytest.raises(RuntimeError):
        ItemKNNRecommender().recommend(np.array([0]), csr([[0]], 3), 2)
    train = csr([[0, 1], [1, 2], [0, 2]], 3)
    model = ItemKNNRecommender(K=5).fit(TrainData(train))
    ids, scores = model.recommend(np.array([0]), train, 3)
    assert ids.shape == (1, 3) and ids[0, 0] == 2 and (ids[0, 1:] == -1).all()
    assert np.isneginf(scores[0, 1:]).all()


# ---------------------------------------------------------------- beyond accuracy


def test_coverage_novelty_diversity_popularity_tiny():
    assert catalog_coverage(np.array([[0, 1], [1, -1]]), 4) == pytest.approx(0.5)
    pop = np.array([4, 2, 1, 0])
    # p = [1, .5, .25, .25 (zero counts as one)] -> info [0, 1, 2, 2]; lists: 0.5 and 2
    assert novelty(np.array([[0, 1], [2, 3]]), pop, n_users=4) == pytest.approx(1.25)
    # without n_users: p = pop / 7
    assert novelty(np.array([[0, -1]]), pop) == pytest.approx(-math.log2(4 / 7))
    E = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    # [0,1,2]: pairs (0,1)=1, (0,2)=0, (1,2)=1 -> 2/3; [0,1] -> 1; [0,-1,-1] has no pair
    assert intra_list_diversity(np.array([[0, 1, 2], [0, 1, -1], [0, -1, -1]]), E) == pytest.approx((2 / 3 + 1) / 2)
    bias = popularity_bias(np.array([[0, 1], [0, 2]]), np.array([10, 0, 0, 0]))
    assert bias["avg_rec_popularity"] == pytest.approx(5.0)
    # exposure [2,1,1,0] -> sorted [0,1,1,2]: (-1 + 1 + 6) / (4 * 4)
    assert bias["gini_exposure"] == pytest.approx(0.375)
    assert gini(np.array([0, 0, 0, 4])) == pytest.approx(0.75)
    assert gini(np.ones(5)) == pytest.approx(0.0)


def test_activity_buckets_and_breakdown():
    train = csr([[0], [0, 1], [0, 1, 2], [0, 1, 2, 3], [0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5]], 6)
    rows = np.arange(6)
    # terciles of counts 1..6: 2.67 and 4.33
    buckets = activity_buckets(train, rows)
    assert list(buckets) == ["cold", "cold", "medium", "medium", "heavy", "heavy"]
    assert list(activity_buckets(train, np.array([5, 0, 3]))) == ["heavy", "cold", "medium"]
    df = pd.DataFrame({"user_row": rows, "ndcg": [0.0, 0.2, 0.4, 0.6, 0.8, 1.0], "hits": [0, 1, 1, 2, 2, 3]})
    out = breakdown(df, pd.Series(buckets))
    assert out.loc["cold", "ndcg"] == pytest.approx(0.1)
    assert out.loc["heavy", "hits"] == pytest.approx(2.5)
    assert (out["n_users"] == 2).all()
    # attribute indexed by user row (fairness view), users without a value left out
    gender = pd.Series({0: "f", 1: "m", 2: "f", 3: "m", 4: "f"})
    sub = df.iloc[[0, 1, 2, 5]]
    out = breakdown(sub, gender)
    assert out.loc["f", "ndcg"] == pytest.approx(0.2) and out.loc["f", "n_users"] == 2
    assert out.loc["m", "ndcg"] == pytest.approx(0.2) and out["n_users"].sum() == 3


def test_beyond_metrics_on_real_recommendations():
    train = skewed_matrix()
    users = np.arange(train.shape[0])
    pop = np.diff(train.tocsc().indptr)
    popular, _ = PopularityRecommender().fit(TrainData(train)).recommend(users, train, 5)
    rand, _ = RandomRecommender(random_state=0).fit(TrainData(train)).recommend(users, train, 5)
    assert catalog_coverage(rand, train.shape[1]) > catalog_coverage(popular, train.shape[1])
    assert novelty(rand, pop, n_users=len(users)) > novelty(popular, pop, n_users=len(users))
    assert popularity_bias(popular, pop)["gini_exposure"] > popularity_bias(rand, pop)["gini_exposure"]
    df = per_user_metrics(rand, train, 5)  # evaluated on train just to get a frame
    assert len(breakdown(df, pd.Series(activity_buckets(train, df["user_row"].to_numpy())))) == 3
