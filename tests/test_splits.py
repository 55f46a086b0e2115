import numpy as np
import pandas as pd
import pytest

from recsys.datasets.base import normalize_events
from recsys.evaluation.splits import leave_last_n_split, random_split, stratified_split, time_split


def make_events(n_users=60, n_items=16, seed=0, with_singletons=True):
    """Few items, many events: every item is seen in train, so no test event is dropped."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        n = rng.integers(2, 15) if not (with_singletons and u % 10 == 0) else 1
        for item in rng.choice(n_items, size=n, replace=False):
            rows.append((f"u{u}", f"i{item}", int(rng.integers(1_600_000_000, 1_600_000_000 + 10_000_000))))
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    return normalize_events(df)


def assert_partition(events, split):
    train_ids, test_ids = set(split.train["event_id"]), set(split.test["event_id"])
    assert not train_ids & test_ids
    assert train_ids | test_ids <= set(events["event_id"])
    assert len(train_ids) + len(test_ids) + split.report["dropped_test_events"] <= len(events)
    assert split.report["n_train"] == len(split.train)
    assert split.report["n_test"] == len(split.test)
    # nothing in test is unknown to train
    assert split.test["user_id"].isin(split.train["user_id"]).all()
    assert split.test["item_id"].isin(split.train["item_id"]).all()
    assert list(split.train.columns) == list(events.columns)


def test_random_split_ratio_and_partition():
    events = make_events()
    split = random_split(events, test_ratio=0.25, seed=7)
    assert_partition(events, split)
    assert split.report["dropped_test_events"] == 0
    assert len(split.train) + len(split.test) == len(events)
    n = events.groupby("user_id").size()
    n_test = split.test.groupby("user_id").size().reindex(n.index, fill_value=0)
    expected = np.minimum(np.maximum(np.floor(0.25 * n + 0.5), 1), n - 1).where(n >= 2, 0)
    assert (n_test == expected).all()
    # users with a single event stay in train
    singles = n.index[n == 1]
    assert len(singles) > 0 and not split.test["user_id"].isin(singles).any()
    assert split.report["users_only_in_train"] == len(singles)


def test_random_split_deterministic_per_seed():
    events = make_events()
    a, b, c = random_split(events, seed=1), random_split(events, seed=1), random_split(events, seed=2)
    assert set(a.test["event_id"]) == set(b.test["event_id"])
    assert set(a.test["event_id"]) != set(c.test["event_id"])


def test_random_split_min_user_events():
    events = make_events()
    split = random_split(events, test_ratio=0.2, seed=0, min_user_events=5)
    n = events.groupby("user_id").size()
    assert not split.test["user_id"].isin(n.index[n < 5]).any()
    assert split.test["user_id"].isin(n.index[n >= 5]).any()


def test_leave_last_n_picks_latest():
    events = make_events()
    split = leave_last_n_split(events, n=2, seed=0)
    assert_partition(events, split)
    n = events.groupby("user_id").size()
    per_user = split.test.groupby("user_id").size()
    assert (per_user == 2).all()
    assert set(per_user.index) == set(n.index[n > 2])
    last_train = split.train.groupby("user_id")["timestamp"].max()
    first_test = split.test.groupby("user_id")["timestamp"].min()
    assert (first_test >= last_train.reindex(first_test.index)).all()


def test_leave_last_n_ties_broken_by_seed():
    # one user, 4 events at the same instant: which one is "last" depends on the seed only
    df = normalize_events(
        pd.DataFrame(
            {
                "user_id": ["a"] * 4 + ["b"] * 4,
                "item_id": ["1", "2", "3", "4"] * 2,
                "timestamp": [5] * 8,
            }
        )
    )
    picks = {tuple(leave_last_n_split(df, n=1, seed=s).test.sort_values("user_id")["item_id"]) for s in range(12)}
    assert len(picks) > 1
    assert leave_last_n_split(df, 1, seed=3).test.equals(leave_last_n_split(df, 1, seed=3).test)


def test_time_split_respects_cutoff_and_reports_absent():
    events = make_events()
    cutoff = events["timestamp"].quantile(0.7)
    # a user and an item that only exist after the cutoff
    late = normalize_events(
        pd.DataFrame(
            {
                "user_id": ["new_user", "new_user", "u1"],
                "item_id": ["i1", "i2", "new_item"],
                "timestamp": [cutoff + pd.Timedelta("1D")] * 3,
            }
        )
    )
    events = pd.concat([events, late], ignore_index=True)
    split = time_split(events, cutoff)
    assert_partition(events, split)
    assert (split.train["timestamp"] < cutoff).all()
    assert (split.test["timestamp"] >= cutoff).all()
    assert split.report["test_users_not_in_train"] >= 1
    assert split.report["test_items_not_in_train"] >= 1
    assert "new_user" not in set(split.test["user_id"]) and "new_item" not in set(split.test["item_id"])
    raw_test = events[events["timestamp"] >= cutoff]
    known = raw_test["user_id"].isin(split.train["user_id"]) & raw_test["item_id"].isin(split.train["item_id"])
    assert split.report["dropped_test_events"] == int((~known).sum()) >= 3
    # naive datetime is read as UTC
    naive = time_split(events, cutoff.tz_localize(None))
    assert naive.report == split.report


def test_stratified_split_per_user_ratio():
    events = make_events()
    split = stratified_split(events, ratio=0.75, seed=3)
    assert_partition(events, split)
    n = events.groupby("user_id").size()
    n_train = split.train.groupby("user_id").size().reindex(n.index, fill_value=0)
    # Recommenders: an event trains iff rank/count <= ratio, so floor(ratio * n) per user
    assert (n_train == np.floor(0.75 * n).astype(int)).all()
    # single-event users go wholly to test there, so here they are dropped and reported
    singles = n.index[n == 1]
    assert split.report["test_users_not_in_train"] == len(singles)
    assert split.report["dropped_test_events"] == len(singles)
    other = stratified_split(events, ratio=0.75, seed=4)
    assert set(other.test["event_id"]) != set(split.test["event_id"])
    assert set(stratified_split(events, ratio=0.75, seed=3).test["event_id"]) == set(split.test["event_id"])


def test_stratified_split_min_rating_and_filter_by_item():
    events = make_events()
    split = stratified_split(events, ratio=0.5, seed=0, min_rating=6)
    n = events.groupby("user_id").size()
    small = n.index[n < 6]
    assert not split.train["user_id"].isin(small).any() and not split.test["user_id"].isin(small).any()
    assert split.report["filtered_min_rating_events"] == int(n[n < 6].sum())
    by_item = stratified_split(events, ratio=0.5, seed=0, filter_by="item")
    m = events.groupby("item_id").size()
    m_train = by_item.train.groupby("item_id").size().reindex(m.index, fill_value=0)
    assert (m_train == np.floor(0.5 * m).astype(int)).all()
    with pytest.raises(ValueError):
        stratified_split(events, filter_by="session")
    with pytest.raises(ValueError):
        stratified_split(events, min_rating=0)
