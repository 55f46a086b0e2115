"""RankRequest validation; the Ranker's exact lists against a brute-force reference over a real
ALS model; the blend weights."""

import math

import numpy as np
import pytest

from pipelines.train import (
    ContentConfig,
    ModelConfig,
    TrainConfig,
    build_bundle,
    fit_content,
    fit_model,
)
from recsys.bundle import ModelBundle, ServingSpec
from recsys.catalog_state import Filters
from recsys.datasets.synthetic import generate_synthetic
from recsys.matrix import InteractionMatrix
from recsys.models.als import ALSEmbedder
from recsys.models.base import TrainData
from recsys.models.foldin import FoldInSpec
from recsys.ranking import NEW_ITEM_REASON, RankRequest, RankRequestError
from recsys.recommender import Recommender


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"mode": "magic"}, "mode"),
        ({"k": 0}, "k"),
        ({"k": 2.5}, "k"),
        ({"k": True}, "k"),
        ({"offset": -1}, "offset"),
        ({"exclude": [3, -1]}, "exclude"),
        ({"exclude": [0.5]}, "exclude"),
        ({"exclude": [[1, 2]]}, "exclude"),
        ({"blend_weights": (1.0,)}, "blend_weights"),
        ({"blend_weights": (math.nan, 1.0)}, "blend_weights"),
        ({"blend_weights": (-1.0, 2.0)}, "blend_weights"),
        ({"blend_weights": (0, 0)}, "blend_weights"),
        ({"fusion": "magic"}, "fusion"),
        ({"diversity": 1.5}, "diversity"),
        ({"diversity": math.inf}, "diversity"),
    ],
)
def test_rank_request_refuses_values_out_of_domain_naming_the_field(kwargs, field):
    with pytest.raises(RankRequestError) as info:
        RankRequest(**{"mode": "collaborative", **kwargs})
    assert info.value.field == field and isinstance(info.value, ValueError)


def test_rank_request_normalizes_and_sizes_its_pool():
    r = RankRequest("hybrid", k=5, offset=2, exclude=[4, 4, 9], blend_weights=(1, 0), fusion="rrf", diversity=0.5)
    assert r.exclude.dtype == np.int64 and r.exclude.tolist() == [4, 9]  # repeats collapse
    assert r.blend_weights == (1.0, 0.0) and r.n == 7 and r.pool == 40
    # the pager's blocks: the first block's window, then one block more per further block
    assert RankRequest(k=10, offset=20, diversity=0.5).pool == 40 + 2 * 10
    assert RankRequest(k=10, offset=20, calibration=1.0).pool == 110 + 2 * 10
    assert RankRequest("content", k=5, diversity=1.0).pool == 5
    assert RankRequest(exclude=None).exclude.size == 0
    with pytest.raises(AttributeError):
        r.k = 3  # frozen


@pytest.fixture(scope="module")
def als():
    data = generate_synthetic(n_users=300, n_items=400, n_events=12_000, n_clusters=4, seed=9)
    matrix = InteractionMatrix.from_events(data.events, alpha=2.0)
    model = ALSEmbedder(factors=12, iterations=8, random_state=0).fit(TrainData(matrix.matrix))
    bundle = ModelBundle(
        kind="als",
        params={"alpha": 2.0, "regularization": model.regularization},
        metric="dot",
        user_ids=matrix.user_ids,
        item_ids=matrix.item_ids,
        user_vectors=model.user_vectors_,
        item_vectors=model.item_vectors_,
        item_popularity=np.diff(matrix.matrix.tocsc().indptr).astype(float),
        fold_in=FoldInSpec.of(model, "confidence", 2.0),
        serving=ServingSpec(calibration=0.0, hybrid=None, content_kind=None),
        user_item_counts=np.diff(matrix.matrix.indptr),
    )
    history = data.events.sort_values("timestamp").groupby("user_id")["item_id"].agg(list)
    return data, bundle, history


def brute_force(bundle, rec, user_id, history, k, offset, allowed):
    scores = bundle.item_vectors @ bundle.user_vectors[bundle.user_pos[user_id]]
    blocked = ~allowed
    blocked[[bundle.item_pos[i] for i in history]] = True
    order = sorted((j for j in range(len(scores)) if not blocked[j]), key=lambda j: (-np.float32(scores[j]), j))
    return [rec.item_ids[j] for j in order[offset : offset + k]]


def test_user_lists_equal_a_brute_force_ranking_under_filters(als):
    data, bundle, history = als
    rec = Recommender(bundle, data.items)
    cats = sorted({c for cs in data.items["categories"] for c in cs})
    rec.set_available(rec.item_ids[5], False)
    cases = [
        Filters(),
        Filters(include_categories=(cats[1],)),
        Filters(exclude_categories=(cats[0],)),
        Filters(include_attributes={"cluster": [2]}, exclude_items=tuple(rec.item_ids[:30])),
    ]
    for user_id in history.index[:25]:
        for f in cases:
            for k, offset in ((10, 0), (7, 5)):
                got = rec.recommend_for_user(user_id, history[user_id], k, offset=offset, filters=f)
                allowed = rec.catalog.mask(f).copy()
                assert [i.item_id for i in got.items] == brute_force(
                    bundle, rec, user_id, history[user_id], k, offset, allowed
                )
                assert all(i.reason and i.reason.startswith("because you interacted with") for i in got.items)
    # ranking never wrote into the shared availability mask
    assert rec.catalog.mask().sum() == len(rec.item_ids) - 1


def test_narrow_filter_returns_every_allowed_item_and_nothing_else(als):
    data, bundle, history = als
    rec = Recommender(bundle, data.items)
    keep = tuple(rec.item_ids[10:14])
    f = Filters(
        include_attributes={"cluster": [0, 1, 2, 3]}, exclude_items=tuple(i for i in rec.item_ids if i not in keep)
    )
    user_id = history.index[0]
    got = rec.recommend_for_user(user_id, [], 10, filters=f).items
    assert sorted(i.item_id for i in got) == sorted(keep)
    assert [i.score for i in got] == sorted((i.score for i in got), reverse=True)


def test_popular_and_sessions_respect_filters_and_exclusions(als):
    data, bundle, _ = als
    rec = Recommender(bundle, data.items)
    cat = data.items["categories"].iloc[0][0]
    pop = rec.popular(8, filters=Filters(include_categories=(cat,))).items
    assert pop and all(cat in rec.categories[rec.item_pos[i.item_id]] for i in pop)
    assert [i.score for i in pop] == sorted((i.score for i in pop), reverse=True)
    session = rec.item_ids[:3]
    got = rec.recommend_for_items(session, [1.0, 2.0, 0.5], 10)
    assert got.strategy == "fold_in" and len(got.items) == 10 and not set(session) & {i.item_id for i in got.items}
    with pytest.raises(RankRequestError) as info:
        rec.recommend_for_items(session, [1.0], 10)
    assert info.value.field == "item_weights"
    with pytest.raises(RankRequestError):
        rec.recommend_for_items(session, [1.0, math.nan, 1.0], 10)
    with pytest.raises(RankRequestError) as info:
        rec.recommend_for_user(session[0], [], k=0)
    assert info.value.field == "k"


@pytest.fixture(scope="module")
def hybrid():
    data = generate_synthetic(n_users=300, n_items=200, n_events=9_000, n_clusters=4, seed=4)
    config = TrainConfig(
        model=ModelConfig(kind="als", params={"factors": 8, "iterations": 5}),
        content=ContentConfig(kind="tfidf", params={"n_components": 16}),
    )
    full = InteractionMatrix.from_events(data.events, alpha=config.alpha)
    bundle = build_bundle(
        config, fit_model(config.model, full, data), full, {}, data, fit_content(config, data, full.item_ids)
    )
    return data, Recommender(bundle, data.items)


def test_blend_weights_steer_the_fusion(hybrid):
    data, rec = hybrid
    user_id, history = data.events["user_id"].iloc[0], data.events["item_id"].iloc[:5].tolist()

    def ids(result):
        return [i.item_id for i in result.items]

    cf_only = rec.recommend_for_user(user_id, history, 10, mode="hybrid", blend_weights=(1.0, 0.0))
    assert ids(cf_only) != ids(rec.recommend_for_user(user_id, history, 10, mode="hybrid", blend_weights=(0.0, 1.0)))
    session = rec.item_ids[:4]
    by_new = rec.recommend_for_items(session, [1, 1, 1, 3], 10, mode="hybrid", blend_weights=(0.2, 0.8))
    assert ids(by_new) != ids(rec.recommend_for_items(session, [1, 1, 1, 3], 10, mode="hybrid", blend_weights=(1, 0)))
    with pytest.raises(RankRequestError) as info:
        rec.recommend_for_items(session, None, 10, mode="hybrid", blend_weights=(0, 0))
    assert info.value.field == "blend_weights"


def test_added_items_are_ranked_filtered_and_explained_like_the_others():
    data = generate_synthetic(n_users=300, n_items=200, n_events=9_000, n_clusters=4, seed=6)
    config = TrainConfig(
        model=ModelConfig(kind="als", params={"factors": 8, "iterations": 5}),
        content=ContentConfig(kind="tfidf", params={"n_components": 16}),
    )
    full = InteractionMatrix.from_events(data.events, alpha=config.alpha)
    bundle = build_bundle(
        config, fit_model(config.model, full, data), full, {}, data, fit_content(config, data, full.item_ids)
    )
    rec = Recommender(bundle, data.items)
    n = len(rec.item_ids)
    # New items: copies of existing ones under new ids (same text → near their originals).
    originals = data.items.iloc[:6]
    new = originals.assign(item_id=[f"new-{i}" for i in range(6)], categories=[["fresh"]] * 6)
    assert rec.add_items(new) == new["item_id"].tolist()
    assert rec.item_ids[n:] == new["item_id"].tolist() and len(rec.cf_vectors) == n + 6 == len(rec.content_vectors)
    assert rec.add_items(new) == []  # already known: only a catalog update
    only_new = Filters(include_categories=("fresh",))
    for mode in ("collaborative", "content", "hybrid"):
        got = rec.similar_items("new-0", 10, mode=mode, filters=only_new).items
        assert {i.item_id for i in got} == {f"new-{i}" for i in range(1, 6)}, mode
        # nobody interacted with them: explained by their text, never "liked by the same users"
        assert {i.reason for i in got} == {"similar item" if mode == "hybrid" else "similar text"}, mode
    established = rec.similar_items(originals["item_id"].iloc[1], 10, mode="collaborative").items
    assert {i.reason for i in established if not i.item_id.startswith("new-")} == {"liked by the same users"}
    assert rec.similar_items(originals["item_id"].iloc[0], 1, mode="content").items[0].item_id == "new-0"
    hits = rec.search(originals["title"].iloc[0], 3, filters=only_new).items
    assert hits[0].item_id == "new-0"
    user_id = data.events["user_id"].iloc[0]
    got = rec.recommend_for_user(
        user_id, [originals["item_id"].iloc[0]], 10, mode="collaborative", filters=only_new, refresh=True
    ).items
    assert {i.item_id for i in got} == set(new["item_id"])
    titles = set(data.items["title"])
    assert all(
        i.reason.startswith("similar text to ") and i.reason.removeprefix("similar text to ") in titles for i in got
    ), [i.reason for i in got]
    fresh = rec.popular(6, filters=only_new).items
    assert fresh[-1].score == 0.0 and {i.reason for i in fresh} == {NEW_ITEM_REASON}  # no interactions yet
    assert {i.reason for i in rec.popular(5).items} == {"popular"}
    rec.update_catalog(new.assign(available=False).iloc[:3])
    assert {i.item_id for i in rec.popular(10, filters=only_new).items} == {f"new-{i}" for i in range(3, 6)}


def test_exclusion_helpers_agree_with_numpy():
    """RankRequest keeps exclusions sorted and unique once; membership is then a binary search
    (recsys.ranking._among), which must answer exactly what np.isin does."""
    from recsys.ranking import _among, _sorted_unique

    rng = np.random.default_rng(3)
    for size in (0, 1, 2, 7, 50, 400):
        history = rng.integers(0, 300, size)
        exclude = _sorted_unique(history.astype(np.int64))
        assert np.array_equal(exclude, np.unique(history))
        ids = rng.integers(0, 320, 60)
        assert np.array_equal(_among(ids, exclude), np.isin(ids, history))
    request = RankRequest(exclude=[5, 3, 5, 0, 3])
    assert request.exclude.tolist() == [0, 3, 5]
    with pytest.raises(RankRequestError):
        RankRequest(exclude=[4, -1])


def test_sparse_queries_score_by_columns_as_a_dense_product_would(als):
    """A mostly-zero query (an ensemble's item-kNN block) is scored from the transposed space;
    the scores equal the dense product's, and a replaced row is seen at once."""
    data, bundle, _ = als
    ranker = Recommender(bundle, data.items).ranker
    vectors = ranker.vectors("cf")
    query = np.zeros(vectors.shape[1], np.float32)
    query[[1, 7]] = (0.5, -2.0)
    np.testing.assert_allclose(ranker.exact_scores("user", query), vectors @ query, rtol=1e-5, atol=1e-6)
    assert "cf" in ranker._transposed  # the column path ran
    ranker.replace_rows("cf", [3], np.full((1, vectors.shape[1]), 9.0, np.float32))
    assert ranker.exact_scores("user", query)[3] == pytest.approx(9.0 * 0.5 - 9.0 * 2.0)
    dense = np.ones(vectors.shape[1], np.float32)
    np.testing.assert_allclose(ranker.exact_scores("user", dense), ranker.vectors("cf") @ dense, rtol=1e-5)
