"""The model contract over every kind in the registry; collaborative embedders, LightFM
features, cold-start mapping and the registry.

The synthetic generator plants clusters: users put ~85% of their events on items of their own
cluster. With 6 clusters chance is 1/6, so "same cluster > 3× chance" means > 0.5.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.preprocessing import normalize

from recsys.datasets.synthetic import generate_synthetic
from recsys.features import build_item_features, build_user_features
from recsys.matrix import InteractionMatrix
from recsys.models.base import TrainData
from recsys.models.coldstart import ContentToCFMapper
from recsys.models.config import ModelConfig
from recsys.models.content import EncoderUnavailable, TfidfEncoder
from recsys.models.lightfm import LightFMEmbedder
from recsys.models.registry import MODEL_KINDS, make_model, param_names, validate_params

N_CLUSTERS = 6
CHANCE = 1 / N_CLUSTERS

CF_MODELS = {
    "als": {"factors": 32, "iterations": 10},
    "bpr": {"factors": 32, "iterations": 60},
    "lightfm": {"no_components": 32, "epochs": 20, "loss": "warp"},
    "item2vec": {"factors": 32, "epochs": 5, "window": 10},
}


@pytest.fixture(scope="module")
def data():
    ds = generate_synthetic(n_users=600, n_items=300, n_events=30_000, n_clusters=N_CLUSTERS, seed=7)
    im = InteractionMatrix.from_events(ds.events)
    items = ds.items.set_index("item_id")
    users = ds.users.set_index("user_id")
    item_cluster = items.loc[im.item_ids, "attributes"].map(lambda a: a["cluster"]).to_numpy()
    user_cluster = users.loc[im.user_ids, "attributes"].map(lambda a: a["cluster"]).to_numpy()
    return ds, im, item_cluster, user_cluster


@pytest.fixture(scope="module", params=sorted(CF_MODELS))
def fitted(request, data):
    _, im, _, _ = data
    model = make_model(request.param, **CF_MODELS[request.param])
    assert model.fit(TrainData(im.matrix)) is model
    return model


def same_cluster_neighbours(vectors: np.ndarray, clusters: np.ndarray, k: int = 10) -> float:
    """Fraction of each item's k nearest items (cosine, itself excluded) in its own cluster."""
    v = normalize(vectors)
    sims = v @ v.T
    np.fill_diagonal(sims, -np.inf)
    top = np.argsort(-sims, axis=1)[:, :k]
    return float((clusters[top] == clusters[:, None]).mean())


def top_k(scores: np.ndarray, k: int = 10, exclude=()) -> np.ndarray:
    scores = np.array(scores, dtype=np.float64)
    scores[list(exclude)] = -np.inf
    return np.argsort(-scores, kind="stable")[:k]


def test_vectors_are_float32_and_aligned(fitted, data):
    _, im, _, _ = data
    assert fitted.user_vectors_.dtype == np.float32 and fitted.item_vectors_.dtype == np.float32
    assert fitted.user_vectors_.shape[0] == im.shape[0]
    assert fitted.item_vectors_.shape[0] == im.shape[1]
    assert fitted.user_vectors_.shape[1] == fitted.item_vectors_.shape[1]
    assert fitted.metric == "dot"


def test_same_cluster_items_are_neighbours(fitted, data):
    # item-item similarity is cosine over the item vectors, as implicit's similar_items does
    _, _, item_cluster, _ = data
    assert same_cluster_neighbours(fitted.item_vectors_, item_cluster) > 3 * CHANCE


def test_recommendations_come_from_the_users_cluster(fitted, data):
    _, im, item_cluster, user_cluster = data
    scores = fitted.user_vectors_ @ fitted.item_vectors_.T  # the model's metric: dot
    top = np.argsort(-scores, axis=1)[:, :10]
    assert (item_cluster[top] == user_cluster[:, None]).mean() > 0.7


def test_fold_in_recommends_from_the_touched_cluster(fitted, data):
    _, _, item_cluster, _ = data
    rng = np.random.default_rng(0)
    rates = []
    for c in range(N_CLUSTERS):
        touched = rng.choice(np.flatnonzero(item_cluster == c), 5, replace=False)
        user = fitted.fold_in(touched)
        assert user.dtype == np.float32 and user.shape == (fitted.item_vectors_.shape[1],)
        rates.append((item_cluster[top_k(fitted.item_vectors_ @ user, exclude=touched)] == c).mean())
    assert min(rates) >= 0.6, rates
    assert np.mean(rates) > 0.8, rates


def test_fold_in_without_history_is_finite(fitted):
    user = fitted.fold_in(np.array([], dtype=np.int64))
    assert np.all(np.isfinite(user))


def test_bpr_vectors_reproduce_implicit_scores(data):
    _, im, _, _ = data
    model = make_model("bpr", factors=16, iterations=20).fit(TrainData(im.matrix))
    assert model.item_vectors_.shape[1] == 17  # factors + item-bias column
    assert np.allclose(model.user_vectors_[:, -1], 1.0)
    for u in (0, 7, 42):
        ids, scores = model.model_.recommend(u, im.matrix[u], N=20, filter_already_liked_items=False)
        ours = model.item_vectors_[ids] @ model.user_vectors_[u]
        np.testing.assert_allclose(ours, scores, rtol=1e-5, atol=1e-6)


# --- LightFM -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lightfm_with_features(data):
    ds, im, _, _ = data
    item_features, item_names = build_item_features(ds.items, im.item_ids, identity=True, categories=True)
    user_features, user_names = build_user_features(ds.users, im.user_ids, identity=True, exclude_keys=["cluster"])
    model = LightFMEmbedder(no_components=24, epochs=15, random_state=3)
    model.fit(TrainData(im.matrix, item_features=item_features, user_features=user_features))
    return model, item_features, user_features, item_names, user_names


def test_lightfm_dot_product_equals_predict(lightfm_with_features, data):
    model, item_features, user_features, _, _ = lightfm_with_features
    _, im, _, _ = data
    n_items = im.shape[1]
    for u in (0, 5, 99, 321):
        predicted = model.model_.predict(
            np.full(n_items, u, dtype=np.int32),
            np.arange(n_items, dtype=np.int32),
            item_features=item_features,
            user_features=user_features,
        )
        ours = model.item_vectors_ @ model.user_vectors_[u]
        np.testing.assert_allclose(ours, predicted, rtol=1e-4, atol=1e-4)
        assert np.array_equal(top_k(ours), top_k(predicted))


def test_lightfm_annoy_dot_index_matches_predict_top10(lightfm_with_features, data):
    from annoy import AnnoyIndex

    model, item_features, user_features, _, _ = lightfm_with_features
    _, im, _, _ = data
    n_items, dims = model.item_vectors_.shape
    index = AnnoyIndex(dims, "dot")
    for i, v in enumerate(model.item_vectors_):
        index.add_item(i, v.tolist())
    index.set_seed(1)
    index.build(50)
    for u in (0, 5, 99, 321, 500):
        predicted = model.model_.predict(
            np.full(n_items, u, dtype=np.int32),
            np.arange(n_items, dtype=np.int32),
            item_features=item_features,
            user_features=user_features,
        )
        ann = index.get_nns_by_vector(model.user_vectors_[u].tolist(), 10, search_k=50 * n_items)
        assert ann == list(np.argsort(-predicted)[:10])


def test_lightfm_cold_start_items_by_features(data):
    """Items never seen in training are placed by their categories next to their cluster."""
    ds, im, item_cluster, _ = data
    held = np.arange(im.shape[1]) % 5 == 0
    warm_ids = im.item_ids[~held]
    warm = InteractionMatrix.from_events(ds.events, user_ids=im.user_ids, item_ids=warm_ids)
    feats, names = build_item_features(ds.items, warm_ids, identity=True, categories=True)
    model = LightFMEmbedder(no_components=24, epochs=15).fit(TrainData(warm.matrix, item_features=feats))
    cold_feats, cold_names = build_item_features(ds.items, im.item_ids[held], feature_names=names)
    assert list(cold_names) == list(names) and cold_feats.shape == (held.sum(), len(names))
    assert not any(name.startswith("id:") and name[3:] in set(im.item_ids[held]) for name in names)
    cold = model.item_vectors_for_features(cold_feats)
    assert cold.dtype == np.float32 and cold.shape[1] == model.item_vectors_.shape[1]
    sims = normalize(cold[:, :-2]) @ normalize(model.item_vectors_[:, :-2]).T
    nearest = np.argsort(-sims, axis=1)[:, :10]
    assert (item_cluster[~held][nearest] == item_cluster[held][:, None]).mean() > 3 * CHANCE


def test_lightfm_fold_in_by_user_features(lightfm_with_features, data):
    model, _, user_features, _, user_names = lightfm_with_features
    np.testing.assert_allclose(model.fold_in([], user_features=user_features[7]), model.user_vectors_[7], rtol=1e-6)
    plain = LightFMEmbedder(no_components=8, epochs=1).fit(TrainData(data[1].matrix))
    with pytest.raises(ValueError, match="without user features"):
        plain.fold_in([], user_features=user_features[7])


def test_lightfm_rejects_unknown_loss(data):
    with pytest.raises(ValueError, match="loss"):
        LightFMEmbedder(loss="hinge").fit(TrainData(data[1].matrix))


@pytest.mark.parametrize("loss", ["bpr", "logistic", "warp-kos"])
def test_lightfm_other_losses_fit(loss, data):
    model = LightFMEmbedder(no_components=8, epochs=2, loss=loss).fit(TrainData(data[1].matrix))
    assert np.all(np.isfinite(model.item_vectors_)) and model.item_vectors_.shape[1] == 10


# --- features ------------------------------------------------------------------------------


def test_item_features_are_aligned_and_named(data):
    ds, _, _, _ = data
    ids = np.array(["i3", "i1", "nope"], dtype=object)
    X, names = build_item_features(ds.items, ids, identity=True, categories=True, text=True, normalize_rows=False)
    assert sp.issparse(X) and X.dtype == np.float32 and X.shape == (3, len(names))
    col = {n: j for j, n in enumerate(names)}
    row_i3 = {names[j] for j in X[0].indices}
    cats = ds.items.set_index("item_id").loc["i3", "categories"]
    assert {"id:i3", *(f"cat:{c}" for c in cats)} <= row_i3
    assert any(n.startswith("word:") for n in row_i3)
    assert not any(ch.isdigit() for n in names if n.startswith("word:") for ch in n)  # "#3" ids dropped
    assert {names[j] for j in X[2].indices} == {"id:nope"}  # unknown id: identity only
    assert X[1, col["id:i1"]] == 1.0
    Xn, _ = build_item_features(ds.items, ids, identity=False, categories=True)
    assert not any(n.startswith("id:") for n in _)
    np.testing.assert_allclose(np.asarray(Xn[:2].sum(axis=1)).ravel(), 1.0, rtol=1e-6)  # l1 rows


def test_user_features_key_value(data):
    ds, im, _, _ = data
    X, names = build_user_features(ds.users, im.user_ids[:10], identity=False, keys=["country", "age_group"])
    assert all("=" in n for n in names) and not any(n.startswith("cluster=") for n in names)
    assert np.all(np.diff(X.indptr) == 2)  # one country and one age group per user
    attrs = ds.users.set_index("user_id").loc[im.user_ids[0], "attributes"]
    assert {names[j] for j in X[0].indices} == {f"country={attrs['country']}", f"age_group={attrs['age_group']}"}


# --- cold start mapper --------------------------------------------------------------------


def test_content_to_cf_mapper_places_new_items_in_their_cluster(data):
    ds, im, item_cluster, user_cluster = data
    held = np.arange(im.shape[1]) % 5 == 0
    warm_ids, cold_ids = im.item_ids[~held], im.item_ids[held]
    warm = InteractionMatrix.from_events(ds.events, user_ids=im.user_ids, item_ids=warm_ids)
    cf = make_model("als", factors=32, iterations=10).fit(TrainData(warm.matrix))
    content = TfidfEncoder(n_components=32).fit(TrainData.catalog_only(ds.items, ds.items["item_id"].to_numpy()))
    pos = {item_id: j for j, item_id in enumerate(content.item_ids_)}
    content_warm = content.item_vectors_[[pos[i] for i in warm_ids]]
    content_cold = content.item_vectors_[[pos[i] for i in cold_ids]]

    mapper = ContentToCFMapper(alpha=1.0).fit(content_warm, cf.item_vectors_)
    predicted = mapper.predict(content_cold)
    assert predicted.dtype == np.float32 and predicted.shape == (held.sum(), cf.item_vectors_.shape[1])
    # near their cluster's warm items
    sims = normalize(predicted) @ normalize(cf.item_vectors_).T
    nearest = np.argsort(-sims, axis=1)[:, :10]
    assert (item_cluster[~held][nearest] == item_cluster[held][:, None]).mean() > 3 * CHANCE
    # and users of that cluster score them above other clusters' new items
    scores = cf.user_vectors_ @ predicted.T
    best = np.argmax(scores, axis=1)
    assert (item_cluster[held][best] == user_cluster).mean() > 0.7


def test_mapper_requires_fit():
    with pytest.raises(RuntimeError, match="not fitted"):
        ContentToCFMapper().predict(np.zeros((1, 3)))


# --- registry ------------------------------------------------------------------------------


def test_registry_knows_all_kinds_and_rejects_unknown():
    assert set(MODEL_KINDS) == {
        "als",
        "bpr",
        "lightfm",
        "tags",
        "tfidf",
        "sbert",
        "ease",
        "ensemble",
        "item2vec",
        "popular",
        "random",
        "itemknn",
    }
    for kind in ("als", "bpr", "lightfm", "tags", "tfidf"):
        model = make_model(kind)
        assert model.kind == kind and model.get_params()
    assert make_model("bpr", factors=7).factors == 7
    with pytest.raises(
        ValueError, match="als, bpr, ease, ensemble, item2vec, itemknn, lightfm, popular, random, sbert, tags, tfidf"
    ):
        make_model("svd")


def test_importing_registry_does_not_import_torch():
    code = "import sys, recsys.models.registry; print('torch' in sys.modules or 'sentence_transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_ensemble_dot_space_ranks_like_per_user_standardized_blend():
    """The concatenated vectors rank exactly like Σ w·z-score of the members' scores."""
    from recsys.hybrid import _zscore
    from recsys.models.ensemble import EnsembleEmbedder

    data = generate_synthetic(n_users=300, n_items=150, n_events=12_000, n_clusters=4, seed=5)
    matrix = InteractionMatrix.from_events(data.events)
    ens = EnsembleEmbedder(
        [
            {"kind": "als", "params": {"factors": 8, "iterations": 5}, "weight": 0.6},
            {"kind": "bpr", "params": {"factors": 8, "iterations": 20}, "weight": 0.4},
        ]
    ).fit(TrainData(matrix.matrix))
    assert ens.item_vectors_.shape[1] == 8 + 9  # BPR carries its bias column
    a, b = ens.models_
    expected = 0.6 * _zscore(a.user_vectors_ @ a.item_vectors_.T) + 0.4 * _zscore(b.user_vectors_ @ b.item_vectors_.T)
    served = ens.user_vectors_ @ ens.item_vectors_.T
    # same ranking: the difference per user is a constant (the dropped means)
    diff = served - expected
    np.testing.assert_allclose(diff - diff.mean(axis=1, keepdims=True), 0, atol=1e-3)
    folded = ens.fold_in(np.array([0, 1, 2]))
    assert folded.shape == (17,) and np.isfinite(folded).all()


# --- the model contract, over every kind in the registry ---------------------------------
#
# Enumerated from MODEL_KINDS: a new kind runs every check below without being listed anywhere.
# CONTRACT_PARAMS only makes known kinds fast; a kind it does not name trains with its defaults.

ML100K = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "ml-100k"
METRICS = {"dot", "cosine", "euclidean", "manhattan", "hamming"}
CONTRACT_PARAMS = {
    "als": {"factors": 16, "iterations": 8},
    "bpr": {"factors": 16, "iterations": 30},
    "lightfm": {"no_components": 16, "epochs": 10},
    "item2vec": {"factors": 16, "epochs": 5, "window": 10},
    "ease": {"l2": 50.0},
    "itemknn": {"K": 50},
    "tags": {"n_components": 16},
    "tfidf": {"n_components": 32},
    "ensemble": {
        "members": [
            {"kind": "als", "params": {"factors": 16, "iterations": 8}, "weight": 1.0},
            {"kind": "item2vec", "params": {"factors": 8, "epochs": 3}, "weight": 0.5},
        ]
    },
}
#: the reference kind whose vectors carry no information: its fold-in is random by design
NO_INFORMATION = {"random"}


@pytest.fixture(scope="module")
def contract_data():
    """MovieLens 100K's first 300 users (real events, titles, genres, user attributes); the
    synthetic generator where the files are absent, so no kind ever skips the contract."""
    from recsys.datasets import Dataset, load_movielens_100k

    if ML100K.exists():
        full = load_movielens_100k(ML100K)
        events = full.events[full.events["user_id"].astype(int) <= 300]
        dataset = Dataset(events, full.items, full.users, validate=False)
    else:
        dataset = generate_synthetic(n_users=300, n_items=400, n_events=15_000, seed=3)
    return dataset, InteractionMatrix.from_events(dataset.events, weighting="confidence", alpha=2.0)


@pytest.fixture(scope="module", params=sorted(MODEL_KINDS))
def contract(request, contract_data):
    """(kind, config, unfitted twin, fitted model, the TrainData it was fitted on)."""
    dataset, matrix = contract_data
    config = ModelConfig(kind=request.param, params=CONTRACT_PARAMS.get(request.param, {}))
    try:
        model = config.make_model()
    except EncoderUnavailable as exc:
        pytest.skip(f"{request.param}: {exc}")
    data = config.train_data(model, matrix, dataset)
    unfitted = copy.deepcopy(model)
    assert model.fit(data) is model
    return request.param, config, unfitted, model, data


def test_contract_params_name_registered_kinds():
    assert set(CONTRACT_PARAMS) <= set(MODEL_KINDS)


def test_contract_class_flags_and_hyperparameters(contract):
    kind, config, unfitted, _, _ = contract
    assert type(unfitted).kind == kind and unfitted.metric in METRICS
    for flag in ("needs_catalog", "uses_side_features", "uses_sequences", "supports_fold_in", "reference"):
        assert isinstance(getattr(unfitted, flag), bool), flag
    params = unfitted.get_params()
    assert list(params) == param_names(kind)
    assert type(unfitted)(**params).get_params() == params  # hyperparameters round-trip
    validate_params(kind, params)  # and pass the config check every config goes through
    assert set(config.params) <= set(params)


def test_contract_fit_keeps_hyperparameters_and_learns_trailing_underscore_state(contract):
    _, _, unfitted, model, _ = contract
    assert model.get_params() == unfitted.get_params()
    learned = set(vars(model)) - set(vars(unfitted))
    assert learned and all(name.endswith("_") for name in learned), sorted(learned)


def test_contract_vectors_are_aligned_float32(contract):
    _, _, _, model, data = contract
    n_users, n_items = data.shape
    assert model.item_vectors_.dtype == np.float32 and model.item_vectors_.shape[0] == n_items
    assert model.user_vectors_.dtype == np.float32 and model.user_vectors_.shape == (
        n_users,
        model.item_vectors_.shape[1],
    )
    assert np.isfinite(model.item_vectors_).all() and np.isfinite(model.user_vectors_).all()


def test_contract_fit_takes_one_typed_input(contract):
    _, _, unfitted, _, data = contract
    with pytest.raises(TypeError, match="takes a TrainData"):
        copy.deepcopy(unfitted).fit(data.matrix)
    if unfitted.needs_catalog:
        with pytest.raises(ValueError, match="needs TrainData.items"):
            copy.deepcopy(unfitted).fit(TrainData(data.matrix, item_ids=data.item_ids))


def test_contract_fold_in(contract):
    """Every kind folds in; from a trained user's own history (weighted as the matrix is) the
    folded vector ranks the catalog much as the trained vector does."""
    kind, _, _, model, data = contract
    assert model.supports_fold_in
    empty = model.fold_in(np.array([], dtype=np.int64))
    assert empty.dtype == np.float32 and empty.shape == (model.item_vectors_.shape[1],) and np.isfinite(empty).all()
    if kind in NO_INFORMATION:
        return
    overlaps = []
    for row in range(0, data.shape[0], 15):
        seen = data.matrix[row]
        folded = model.fold_in(seen.indices, seen.data)
        trained = top_k(model.item_vectors_ @ model.user_vectors_[row], exclude=seen.indices)
        overlaps.append(len(set(top_k(model.item_vectors_ @ folded, exclude=seen.indices)) & set(trained)) / 10)
    assert np.mean(overlaps) >= 0.5, (kind, np.round(overlaps, 2))


def test_contract_recommend_through_a_saved_bundle(contract, contract_data, tmp_path_factory):
    """Saved, verified, loaded and served: k items ordered by the model's own score, none the
    user has seen, and the bundle's vectors are the model's."""
    from pipelines.train import IndexConfig, TrainConfig, build_bundle
    from recsys.bundle import ModelBundle
    from recsys.recommender import Recommender

    kind, config, _, model, data = contract
    dataset, matrix = contract_data
    train_config = TrainConfig(model=config, index=IndexConfig(kind="exact"))
    folder = build_bundle(train_config, model, matrix, {}, dataset).save(tmp_path_factory.mktemp(kind) / "bundle")
    bundle = ModelBundle.load(folder, verify=True)
    np.testing.assert_array_equal(bundle.item_vectors, model.item_vectors_)
    assert bundle.kind == kind and bundle.metric == model.metric
    rec = Recommender(bundle, dataset.items)
    k = 10
    for row in range(0, data.shape[0], 30):
        history = [str(matrix.item_ids[j]) for j in data.matrix[row].indices]
        result = rec.recommend_for_user(str(matrix.user_ids[row]), history, k, mode="collaborative")
        got = [item.item_id for item in result.items]
        scores = np.array([item.score for item in result.items])
        assert len(got) == k and len(set(got)) == k and not set(got) & set(history)
        assert np.all(np.diff(scores) <= 1e-6), scores
        own = model.item_vectors_ @ model.user_vectors_[row]
        expected = np.sort(np.delete(own, data.matrix[row].indices))[::-1][:k]
        np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-5)
