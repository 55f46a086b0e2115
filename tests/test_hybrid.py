"""Train-path hybrid bundle: cold-start catalog items are servable at once, in collaborative
answers too, and go to the users of their own cluster; blending and modes behave."""

import numpy as np
import pytest

from pipelines.train import ContentConfig, ModelConfig, TrainConfig, build_bundle, fit_content, fit_model
from recsys.datasets.base import Dataset
from recsys.datasets.synthetic import generate_synthetic
from recsys.hybrid import blend
from recsys.matrix import InteractionMatrix
from recsys.recommender import Recommender


@pytest.fixture(scope="module")
def hybrid():
    data = generate_synthetic(n_users=600, n_items=300, n_events=30_000, n_clusters=5, seed=11)
    cold = set(data.items["item_id"].sample(20, random_state=0))
    dataset = Dataset(events=data.events[~data.events["item_id"].isin(cold)], items=data.items, users=data.users)
    config = TrainConfig(
        model=ModelConfig(kind="als", params={"factors": 16, "iterations": 10}),
        content=ContentConfig(kind="tfidf", params={"n_components": 32}),
    )
    full = InteractionMatrix.from_events(dataset.events, alpha=config.alpha)
    encoder = fit_content(config, dataset, full.item_ids)
    model = fit_model(config.model, full, dataset)
    bundle = build_bundle(config, model, full, {}, dataset, encoder)
    item_cluster = dict(zip(data.items["item_id"], (a["cluster"] for a in data.items["attributes"])))
    user_cluster = dict(zip(data.users["user_id"], (a["cluster"] for a in data.users["attributes"])))
    history = dataset.events.groupby("user_id")["item_id"].agg(list)
    return bundle, Recommender(bundle, data.items), cold, item_cluster, user_cluster, history


def test_cold_items_are_in_the_bundle_with_predicted_cf_vectors(hybrid):
    bundle, rec, cold, *_ = hybrid
    assert cold <= set(bundle.item_ids.tolist())
    assert bundle.info["cold_start_items"] == len(cold)
    rows = [bundle.item_pos[i] for i in cold]
    assert np.isfinite(bundle.item_vectors[rows]).all() and np.abs(bundle.item_vectors[rows]).sum() > 0
    assert set(rec.modes) == {"collaborative", "content", "hybrid"}


def test_cold_items_reach_their_own_cluster_in_collaborative_answers(hybrid):
    _, rec, cold, item_cluster, user_cluster, history = hybrid
    hits = own = 0
    for user_id in history.index[:300]:
        items = rec.recommend_for_user(user_id, history[user_id], k=30, mode="collaborative").items
        for item in items:
            if item.item_id in cold:
                hits += 1
                own += item_cluster[item.item_id] == user_cluster[user_id]
    assert hits >= 30, f"cold items appeared only {hits} times in 300 users' top-30"
    assert own / hits >= 0.8, f"only {own}/{hits} cold-item recommendations went to the item's own cluster"


def test_modes_and_fusions_answer_and_respect_exclusions(hybrid):
    _, rec, _, item_cluster, user_cluster, history = hybrid
    user_id = history.index[0]
    seen = set(history[user_id])
    for mode in ("collaborative", "content", "hybrid"):
        for fusion in ("weighted", "rrf"):
            result = rec.recommend_for_user(user_id, history[user_id], k=10, mode=mode, fusion=fusion)
            ids = [i.item_id for i in result.items]
            assert len(ids) == 10 and not seen & set(ids)
            share = np.mean([item_cluster[i] == user_cluster[user_id] for i in ids])
            assert share >= 0.6, f"{mode}/{fusion}: {share:.0%} from the user's cluster"
    # text search finds the cluster's vocabulary
    hits = rec.search("rocket orbit galaxy astronaut", k=10).items
    assert len(hits) == 10


def test_blend_weighted_is_scale_free_and_rrf_uses_ranks():
    cf = np.array([[10.0, 20.0, 30.0]])
    ct = np.array([[0.3, 0.2, 0.1]])
    # standardizing makes the result independent of each score's scale
    np.testing.assert_allclose(blend(cf, ct, (0.5, 0.5)), blend(cf * 1000, ct / 7, (0.5, 0.5)), atol=1e-5)
    rrf = blend(cf, ct, (1.0, 1.0), "rrf")[0]
    np.testing.assert_allclose(rrf, [1 / 63 + 1 / 61, 1 / 62 + 1 / 62, 1 / 61 + 1 / 63], rtol=1e-6)
    with pytest.raises(ValueError, match="fusion"):
        blend(cf, ct, (1, 1), "magic")


@pytest.mark.parametrize("metric", ["euclidean", "manhattan", "hamming"])
def test_index_metric_is_selectable_per_index(metric):
    """A config's item/content metric reaches the Annoy index and the answers follow it."""
    from pipelines.train import IndexConfig
    from recsys.index.exact import pairwise_scores

    data = generate_synthetic(n_users=200, n_items=120, n_events=6_000, n_clusters=4, seed=2)
    config = TrainConfig(
        model=ModelConfig(kind="als", params={"factors": 8, "iterations": 5}),
        content=ContentConfig(kind="tags", params={"n_components": 8}),
        index=IndexConfig(item_metric=metric, content_metric=metric),
    )
    full = InteractionMatrix.from_events(data.events, alpha=config.alpha)
    bundle = build_bundle(
        config, fit_model(config.model, full, data), full, {}, data, fit_content(config, data, full.item_ids)
    )
    assert bundle.indexes["item"].metric == metric and bundle.indexes["content"].metric == metric
    assert bundle.indexes["user"].metric == "dot"
    rec = Recommender(bundle, data.items)
    item = bundle.item_ids[0]
    got = rec.similar_items(item, k=5, mode="collaborative").items
    exact = pairwise_scores(bundle.item_vectors[0], bundle.item_vectors, metric)[0]
    exact[0] = -np.inf
    # same scores as an exact search with that metric (ties allowed for hamming)
    np.testing.assert_allclose(sorted((i.score for i in got), reverse=True), np.sort(exact)[::-1][:5], atol=1e-4)
