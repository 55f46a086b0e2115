"""Serving folds users in through the trained model's own ``fold_in``, for every kind in the
registry, from a saved bundle alone; a returning user's answer after one event stays close
to the trained one; cached folded vectors follow the history."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.train import IndexConfig, ModelConfig, TrainConfig, build_bundle, fit_model
from recsys.bundle import ModelBundle
from recsys.datasets.synthetic import generate_synthetic
from recsys.matrix import InteractionMatrix
from recsys.models.content import EncoderUnavailable
from recsys.models.registry import MODEL_KINDS
from recsys.recommender import Recommender

#: small, fast params per kind (kinds not listed train with their defaults)
SMALL = {
    "als": {"factors": 16, "iterations": 8},
    "bpr": {"factors": 16, "iterations": 30},
    "lightfm": {"no_components": 16, "epochs": 10},
    "item2vec": {"factors": 16, "epochs": 5, "window": 10},
    "ease": {"l2": 50.0},
    "itemknn": {"K": 50},
    "ensemble": {
        "members": [
            {"kind": "lightfm", "params": {"no_components": 16, "epochs": 10}, "weight": 1.0},
            {"kind": "itemknn", "params": {"K": 50}, "weight": 0.25},
        ]
    },
    "tfidf": {},
    "tags": {},
}


@pytest.fixture(scope="module")
def data():
    return generate_synthetic(n_users=300, n_items=150, n_events=9_000, n_clusters=4, seed=11)


def _bundle(tmp_path_factory, data, kind: str, weighting: str = "confidence"):
    config = TrainConfig(
        model=ModelConfig(kind=kind, params=SMALL.get(kind, {}), weighting=weighting, alpha=2.0),
        index=IndexConfig(kind="exact"),
    )
    matrix = InteractionMatrix.from_events(data.events, weighting=weighting, alpha=2.0)
    try:
        model = fit_model(config.model, matrix, data)
    except EncoderUnavailable as exc:
        pytest.skip(f"{kind}: {exc}")
    folder = build_bundle(config, model, matrix, {}, data).save(tmp_path_factory.mktemp(kind) / "bundle")
    return model, matrix, ModelBundle.load(folder)


@pytest.mark.parametrize("kind", sorted(MODEL_KINDS))
def test_serving_folds_in_through_the_models_own_method(tmp_path_factory, data, kind):
    model, matrix, bundle = _bundle(tmp_path_factory, data, kind)
    rec = Recommender(bundle, data.items)
    assert type(rec.fold_in_model) is type(model)
    touched = matrix.matrix[5].indices[:6]
    served = rec.fold_in(np.concatenate([touched, touched[:2]]))  # two items touched twice
    counts = np.ones(len(touched))
    counts[:2] = 2
    order = np.argsort(touched)
    own = model.fold_in(touched[order], bundle.fold_in.weights(counts[order]))
    if kind == "random":  # a random vector by design: only its shape is the model's
        assert served.shape == own.shape
    else:
        np.testing.assert_allclose(served, own, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["als", "bpr", "lightfm", "ease", "ensemble"])
def test_returning_user_after_one_event_stays_close_to_trained(tmp_path_factory, data, kind):
    _, matrix, bundle = _bundle(tmp_path_factory, data, kind)
    rec = Recommender(bundle, data.items)
    overlaps = []
    for row in range(0, 60, 3):
        user = str(matrix.user_ids[row])
        history = [str(matrix.item_ids[j]) for j in matrix.matrix[row].indices]
        unseen = sorted(set(map(str, matrix.item_ids)) - set(history))
        before = rec.recommend_for_user(user, history, 20, mode="collaborative")
        assert before.strategy == "collaborative"
        after = rec.recommend_for_user(
            user, history + [unseen[row % len(unseen)]], 20, refresh=True, mode="collaborative"
        )
        assert after.strategy == "fold_in"
        overlaps.append(len({i.item_id for i in before.items} & {i.item_id for i in after.items}) / 20)
    # the new item leaves the list, and one event moves the rest a little, not wholesale
    assert np.mean(overlaps) >= 0.7, overlaps


def test_folded_vector_is_cached_until_the_next_event(tmp_path_factory, data):
    _, matrix, bundle = _bundle(tmp_path_factory, data, "als")
    rec = Recommender(bundle, data.items)
    user = str(matrix.user_ids[0])
    history = [str(matrix.item_ids[j]) for j in matrix.matrix[0].indices]
    unseen = sorted(set(map(str, matrix.item_ids)) - set(history))
    seen = rec.catalog.positions(history + unseen[:1])
    first = rec.user_vector(user, seen)
    assert rec.user_vector(user, seen) is first  # cached
    grown = rec.catalog.positions(history + unseen[:2])
    second = rec.user_vector(user, grown)
    assert second is not first and not np.allclose(second, first)
    # the trained part of the history gives the trained vector back exactly
    np.testing.assert_array_equal(rec.user_vector(user, rec.catalog.positions(history)), bundle.user_vectors[0])


def test_fold_in_weighs_event_values_as_the_training_matrix(tmp_path_factory, data):
    """A user's events with their values, folded in through serving, give the model's own
    fold-in over their training-matrix row (1 + alpha * summed value), and the ALS fold-in of a
    trained user's history comes back close to their trained vector — closer than with the
    values left out."""
    model, matrix, bundle = _bundle(tmp_path_factory, data, "als")
    rec = Recommender(bundle, data.items)
    events = data.events.sort_values("timestamp", kind="stable")
    by_user = events.groupby("user_id")
    with_values, without = [], []
    for row in range(0, 40, 4):
        user = str(matrix.user_ids[row])
        own = by_user.get_group(user)
        seen = rec.catalog.positions(own["item_id"])
        served = rec.fold_in(seen, own["value"].to_numpy())
        entries = matrix.matrix[row]
        np.testing.assert_allclose(served, model.fold_in(entries.indices, entries.data), rtol=1e-4, atol=1e-5)
        trained = bundle.user_vectors[row]
        with_values.append(np.linalg.norm(served - trained) / np.linalg.norm(trained))
        without.append(np.linalg.norm(rec.fold_in(seen) - trained) / np.linalg.norm(trained))
    assert np.median(with_values) < 0.25 and np.median(with_values) < np.median(without)


def test_returning_fold_in_delta_or_afresh(tmp_path_factory, data):
    """``delta`` keeps the trained vector plus the new events' change, ``afresh`` folds the
    whole history in; the kind's own choice unless the Recommender overrides it."""
    _, matrix, bundle = _bundle(tmp_path_factory, data, "als")
    user = str(matrix.user_ids[3])
    history = [str(matrix.item_ids[j]) for j in matrix.matrix[3].indices]
    unseen = sorted(set(map(str, matrix.item_ids)) - set(history))[:2]
    seen = Recommender(bundle, data.items).catalog.positions(history + unseen)
    delta = Recommender(bundle, data.items, returning_fold_in="delta")
    afresh = Recommender(bundle, data.items, returning_fold_in="afresh")
    trained_part = seen[: len(history)]
    expected = bundle.user_vectors[3] + delta.fold_in(seen) - delta.fold_in(trained_part)
    np.testing.assert_allclose(delta.user_vector(user, seen), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(afresh.user_vector(user, seen), afresh.fold_in(seen), rtol=1e-6)
    assert Recommender(bundle, data.items).returning_fold_in == type(delta.fold_in_model).returning_fold_in
    with pytest.raises(ValueError, match="returning_fold_in"):
        Recommender(bundle, data.items, returning_fold_in="sometimes")
