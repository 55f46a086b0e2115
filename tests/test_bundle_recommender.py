"""ModelBundle round trip and integrity; Recommender rules over a real ALS bundle."""

import json

import numpy as np
import pytest

from recsys.bundle import BundleError, ModelBundle, ServingSpec
from recsys.datasets.synthetic import generate_synthetic
from recsys.index import AnnoyItemIndex
from recsys.matrix import InteractionMatrix
from recsys.models.als import ALSEmbedder
from recsys.models.base import TrainData
from recsys.models.foldin import FoldInSpec
from recsys.recommender import Filters, Recommender, UnknownItemError


@pytest.fixture(scope="module")
def trained():
    data = generate_synthetic(n_users=400, n_items=200, n_events=20_000, n_clusters=5, seed=3)
    matrix = InteractionMatrix.from_events(data.events, alpha=2.0)
    model = ALSEmbedder(factors=16, iterations=10, random_state=0).fit(TrainData(matrix.matrix))
    bundle = ModelBundle(
        kind="als",
        params={"factors": 16, "alpha": 2.0, "regularization": model.regularization},
        metric="dot",
        user_ids=matrix.user_ids,
        item_ids=matrix.item_ids,
        user_vectors=model.user_vectors_,
        item_vectors=model.item_vectors_,
        item_popularity=np.diff(matrix.matrix.tocsc().indptr).astype(float),
        fold_in=FoldInSpec.of(model, "confidence", 2.0),
        serving=ServingSpec(calibration=0.0, hybrid=None, content_kind=None),
        user_item_counts=np.diff(matrix.matrix.indptr),
        indexes={
            "user": AnnoyItemIndex("dot", n_trees=20).build(model.item_vectors_),
            "item": AnnoyItemIndex("cosine", n_trees=20).build(model.item_vectors_),
        },
        info={"data": data.stats()},
    )
    return data, matrix, model, bundle


def cluster_of(data, kind):
    frame = data.items if kind == "item" else data.users
    col = "item_id" if kind == "item" else "user_id"
    return dict(zip(frame[col], (a["cluster"] for a in frame["attributes"])))


def test_bundle_round_trip_and_checksums(tmp_path, trained):
    _, _, model, bundle = trained
    path = bundle.save(tmp_path / "b")
    loaded = ModelBundle.load(path)
    np.testing.assert_array_equal(loaded.item_vectors, model.item_vectors_)
    assert loaded.item_ids.tolist() == bundle.item_ids.tolist()
    assert set(loaded.indexes) == {"user", "item"}
    assert not list(tmp_path.glob(".b.*")), "no temporary folder left behind"
    # Corrupt one vector file: the bundle is refused.
    arr = np.load(path / "item_vectors.npy")
    arr[0, 0] += 1
    np.save(path / "item_vectors.npy", arr)
    with pytest.raises(BundleError, match="checksum"):
        ModelBundle.load(path)


def test_bundle_refuses_missing_file_and_bad_shapes(tmp_path, trained):
    _, _, _, bundle = trained
    path = bundle.save(tmp_path / "b")
    (path / "index_user" / "index.ann").unlink()
    with pytest.raises(BundleError, match="missing"):
        ModelBundle.load(path)
    with pytest.raises(BundleError):
        ModelBundle(
            kind="als",
            params={},
            metric="dot",
            user_ids=["a"],
            item_ids=["x", "y"],
            user_vectors=np.zeros((1, 2), np.float32),
            item_vectors=np.zeros((3, 2), np.float32),
            item_popularity=np.zeros(2),
        )


def test_manifest_records_dims_and_data(tmp_path, trained):
    _, _, _, bundle = trained
    manifest = json.loads((bundle.save(tmp_path / "b") / "manifest.json").read_text())
    assert manifest["dims"] == 16 and manifest["metric"] == "dot" and manifest["info"]["data"]["n_events"] == 20_000


def test_user_recommendations_exclude_seen_and_follow_cluster(trained):
    data, matrix, _, bundle = trained
    rec = Recommender(bundle, data.items)
    users, items = cluster_of(data, "user"), cluster_of(data, "item")
    history = data.events.groupby("user_id")["item_id"].agg(list)
    same = total = 0
    for user_id in list(history.index[:60]):
        result = rec.recommend_for_user(user_id, history[user_id], k=10)
        assert result.strategy == "collaborative" and len(result.items) == 10
        ids = [i.item_id for i in result.items]
        assert not set(ids) & set(history[user_id])
        assert [i.score for i in result.items] == sorted((i.score for i in result.items), reverse=True)
        same += sum(items[i] == users[user_id] for i in ids)
        total += len(ids)
    assert same / total > 3 * (1 / 5), f"only {same / total:.2f} of recommendations share the user's cluster"


def test_unknown_user_gets_popular_and_filters_apply(trained):
    data, _, _, bundle = trained
    rec = Recommender(bundle, data.items)
    result = rec.recommend_for_user("nobody", [], k=5)
    assert result.strategy == "popular"
    pops = [bundle.item_popularity[bundle.item_pos[i.item_id]] for i in result.items]
    assert pops == sorted(pops, reverse=True) and pops[0] == bundle.item_popularity.max()
    # Category include filter and unavailable items hold for popular and collaborative answers.
    category = data.items["categories"].iloc[0][0]
    only = rec.popular(5, filters=Filters(include_categories=[category]))
    assert all(category in rec.categories[bundle.item_pos[i.item_id]] for i in only.items)
    top = rec.recommend_for_user("u1", [], k=3).items[0].item_id
    rec.set_available(top, False)
    assert top not in [i.item_id for i in rec.recommend_for_user("u1", [], k=50).items]


def test_fold_in_moves_new_user_to_cluster(trained):
    data, _, _, bundle = trained
    rec = Recommender(bundle, data.items)
    items = cluster_of(data, "item")
    for cluster in (0, 3):
        touched = [i for i, c in items.items() if c == cluster][:5]
        result = rec.recommend_for_user("brand-new", touched, k=10)
        assert result.strategy == "fold_in"
        share = np.mean([items[i.item_id] == cluster for i in result.items])
        assert share >= 0.7, f"fold-in toward cluster {cluster}: only {share:.0%}"
        assert not set(touched) & {i.item_id for i in result.items}


def test_similar_items_share_cluster_and_unknown_raises(trained):
    data, _, _, bundle = trained
    rec = Recommender(bundle, data.items)
    items = cluster_of(data, "item")
    shares = [np.mean([items[s.item_id] == items[i] for s in rec.similar_items(i, 10).items]) for i in list(items)[:40]]
    assert np.mean(shares) > 0.6
    with pytest.raises(UnknownItemError):
        rec.similar_items("no-such-item")
