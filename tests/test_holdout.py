"""The one holdout module (recsys/evaluation/holdout.py): the three kinds, the test rule and
one evaluate."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from recsys.datasets.synthetic import generate_synthetic
from recsys.evaluation.holdout import Holdout, HoldoutConfig, evaluate, time_cutoff


@pytest.fixture(scope="module")
def events() -> pd.DataFrame:
    return generate_synthetic(n_users=200, n_items=120, n_events=6000, seed=3).events


def test_user_time_holdout_tests_each_users_newest_events(events):
    h = Holdout.build(events, HoldoutConfig(kind="user_time", test_ratio=0.25))
    train, test = h.split.train, h.split.test
    last_train = train.groupby("user_id")["timestamp"].max()
    first_test = test.groupby("user_id")["timestamp"].min()
    assert (last_train.reindex(first_test.index) <= first_test).all()
    share = len(h.split.test) / len(events)
    assert 0.15 < share < 0.3


def test_time_holdout_starts_at_the_cutoff(events):
    cutoff = time_cutoff(events, 0.2)
    h = Holdout.build(events, HoldoutConfig(kind="time", test_ratio=0.2))
    assert h.cutoff == cutoff
    assert h.split.train["timestamp"].max() < cutoff <= h.split.test["timestamp"].min()


def test_repeats_of_train_items_are_not_test_pairs(events):
    first = events.iloc[:1]
    repeat = first.assign(timestamp=events["timestamp"].max() + pd.Timedelta(days=1), event_id="repeat")
    h = Holdout.build(pd.concat([events, repeat]), HoldoutConfig(kind="time", test_ratio=0.2))
    row = list(h.user_ids).index(first["user_id"].iloc[0])
    col = list(h.item_ids).index(first["item_id"].iloc[0])
    assert h.train[row, col] > 0 and h.test[row, col] == 0
    assert set(np.unique(h.test.data)) == {1.0}


@dataclass
class _Vectors:
    user_vectors_: np.ndarray
    item_vectors_: np.ndarray
    metric: str = "dot"


@pytest.mark.parametrize("kind", ["time", "user_time", "random"])
def test_evaluate_scores_an_oracle_perfectly_and_noise_worse(events, kind):
    h = Holdout.build(events, HoldoutConfig(kind=kind, test_ratio=0.2, eval_users=150))
    oracle = _Vectors(h.test.toarray().astype(np.float32), np.eye(len(h.item_ids), dtype=np.float32))
    perfect = evaluate(oracle, h, 10)
    assert perfect["hit_rate_at_10"] == 1.0 and perfect["eval_users"] == len(h.users) <= 150
    rng = np.random.default_rng(0)
    noise = _Vectors(rng.normal(size=(len(h.user_ids), 8)), rng.normal(size=(len(h.item_ids), 8)))
    assert evaluate(noise, h, 10)["ndcg_at_10"] < perfect["ndcg_at_10"]
