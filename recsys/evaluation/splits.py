"""Train/test splits of an events DataFrame (column contract in ``recsys.datasets.base``).

Every splitter returns a :class:`Split`. Test events whose user or item never appears in the
train part cannot be scored by a collaborative model, so they are removed from ``test`` — but
explicitly: the report counts them (``dropped_test_events``) and the distinct users/items behind
them (``test_users_not_in_train``, ``test_items_not_in_train``). All random choices are seeded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)


@dataclass
class Split:
    train: pd.DataFrame
    test: pd.DataFrame
    report: dict = field(default_factory=dict)


def _codes(column: pd.Series) -> tuple[np.ndarray, int]:
    """Integer codes 0..n-1 of an id column (much faster than set/isin on string ids).

    A Categorical's own codes are used as they are (groups unused by any row simply stay
    empty): hashing 5M codes again to renumber them cost seconds in the train path."""
    if isinstance(column.dtype, pd.CategoricalDtype) and not column.hasnans:
        return column.cat.codes.to_numpy().astype(np.int64), len(column.cat.categories)
    codes, uniques = pd.factorize(column, sort=False)
    return codes.astype(np.int64), len(uniques)


def _finalize(
    events: pd.DataFrame,
    train_mask: np.ndarray,
    test_mask: np.ndarray,
    method: str,
    codes: dict | None = None,
    **extra,
) -> Split:
    codes = codes or {}
    users, n_users = codes.get("user_id") or _codes(events["user_id"])
    items, n_items = codes.get("item_id") or _codes(events["item_id"])
    user_in_train = np.bincount(users[train_mask], minlength=n_users) > 0
    item_in_train = np.bincount(items[train_mask], minlength=n_items) > 0
    test_users, test_items = users[test_mask], items[test_mask]
    user_known, item_known = user_in_train[test_users], item_in_train[test_items]
    keep = user_known & item_known
    test_idx = np.flatnonzero(test_mask)
    report = {
        "method": method,
        "n_train": int(train_mask.sum()),
        "n_test": int(keep.sum()),
        "n_test_before_filter": int(len(test_idx)),
        "test_users_not_in_train": int(np.unique(test_users[~user_known]).size),
        "test_items_not_in_train": int(np.unique(test_items[~item_known]).size),
        "dropped_test_events": int((~keep).sum()),
        "n_train_users": int(user_in_train.sum()),
        "n_test_users": int(np.unique(test_users[keep]).size),
        **extra,
    }
    if report["dropped_test_events"]:
        logger.info(
            "%s split: dropped %d test events (%d users, %d items unseen in train)",
            method,
            report["dropped_test_events"],
            report["test_users_not_in_train"],
            report["test_items_not_in_train"],
        )
    train = events.iloc[np.flatnonzero(train_mask)].reset_index(drop=True)
    test = events.iloc[test_idx[keep]].reset_index(drop=True)
    return Split(train=train, test=test, report=report)


def _per_user_test_counts(n: np.ndarray, test_ratio: float, min_user_events: int) -> np.ndarray:
    """Test events per row's user: ``test_ratio`` of the user's ``n`` events, rounded, at least
    one and leaving at least one to train; 0 (all train) below ``min_user_events``."""
    n_test = np.minimum(np.maximum(np.floor(test_ratio * n + 0.5).astype(np.int64), 1), n - 1)
    n_test[n < max(min_user_events, 2)] = 0
    return n_test


def _group_rank(groups: np.ndarray, n_groups: int, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(1-based rank of ``key`` within each group, group size), per row.

    ``key`` is a permutation of ``0..n-1`` (a random order, or a position in time), so
    ``group * n + key`` is a unique int64 sort key: one argsort instead of a lexsort.
    """
    n = len(groups)
    counts = np.bincount(groups, minlength=n_groups)
    order = np.argsort(groups * np.int64(n) + key)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(groups), dtype=np.int64)
    rank[order] = np.arange(len(groups)) - starts[groups[order]] + 1
    return rank, counts[groups]


def random_split(events: pd.DataFrame, test_ratio: float = 0.2, seed: int = 42, min_user_events: int = 2) -> Split:
    """Per-user stratified random holdout.

    Each user with ``n >= min_user_events`` events puts ``round(test_ratio * n)`` of them (round
    half up, at least 1 and at most ``n - 1``) into test, chosen uniformly at random; users with
    fewer events stay entirely in train. Vectorized: one random key per event, ranked per user.
    """
    if not 0.0 < test_ratio < 1.0:
        raise ValueError(f"test_ratio must be in (0, 1), got {test_ratio}")
    events = events.reset_index(drop=True)
    key = np.random.default_rng(seed).permutation(len(events))
    users, n_users = _codes(events["user_id"])
    rank, n = _group_rank(users, n_users, key)
    n_test = _per_user_test_counts(n, test_ratio, min_user_events)
    test_mask = rank <= n_test
    return _finalize(
        events,
        ~test_mask,
        test_mask,
        "random",
        codes={"user_id": (users, n_users)},
        test_ratio=test_ratio,
        seed=seed,
        min_user_events=min_user_events,
        users_only_in_train=int(np.unique(users[n_test == 0]).size),
    )


def leave_last_n_split(events: pd.DataFrame, n: int = 1, seed: int = 42) -> Split:
    """Each user's last ``n`` events by timestamp go to test (ties broken by a seeded key).

    Users with ``n`` or fewer events stay entirely in train, so every test user keeps at least
    one train event.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    events = events.reset_index(drop=True)
    tie = np.random.default_rng(seed).random(len(events))
    ts = pd.to_datetime(events["timestamp"], utc=True).astype("int64").to_numpy()
    users, n_users = _codes(events["user_id"])
    # rank by (timestamp, tie) within user; the last n ranks are the latest events
    key = np.empty(len(events), dtype=np.int64)
    key[np.lexsort((tie, ts))] = np.arange(len(events))  # global position in time order
    rank, count = _group_rank(users, n_users, key)
    test_mask = (rank > count - n) & (count > n)
    return _finalize(
        events,
        ~test_mask,
        test_mask,
        "leave_last_n",
        codes={"user_id": (users, n_users)},
        n=n,
        seed=seed,
        users_only_in_train=int(np.unique(users[count <= n]).size),
    )


def user_time_split(events: pd.DataFrame, test_ratio: float = 0.2, seed: int = 42, min_user_events: int = 2) -> Split:
    """Per-user temporal holdout: each user's newest ``round(test_ratio * n)`` events (at least 1,
    at most ``n - 1``; ties in time broken by a seeded key) are test; users with fewer than
    ``min_user_events`` events stay in train."""
    if not 0.0 < test_ratio < 1.0:
        raise ValueError(f"test_ratio must be in (0, 1), got {test_ratio}")
    events = events.reset_index(drop=True)
    tie = np.random.default_rng(seed).random(len(events))
    ts = pd.to_datetime(events["timestamp"], utc=True).astype("int64").to_numpy()
    users, n_users = _codes(events["user_id"])
    key = np.empty(len(events), dtype=np.int64)
    key[np.lexsort((tie, ts))] = np.arange(len(events))
    rank, n = _group_rank(users, n_users, key)
    n_test = _per_user_test_counts(n, test_ratio, min_user_events)
    test_mask = rank > n - n_test
    return _finalize(
        events,
        ~test_mask,
        test_mask,
        "user_time",
        codes={"user_id": (users, n_users)},
        test_ratio=test_ratio,
        seed=seed,
        min_user_events=min_user_events,
    )


def time_split(events: pd.DataFrame, cutoff) -> Split:
    """Global temporal split: events strictly before ``cutoff`` train, the rest (``>= cutoff``) test."""
    cutoff = pd.Timestamp(cutoff)
    cutoff = cutoff.tz_localize("UTC") if cutoff.tzinfo is None else cutoff.tz_convert("UTC")
    events = events.reset_index(drop=True)
    test_mask = (events["timestamp"] >= cutoff).to_numpy()
    return _finalize(events, ~test_mask, test_mask, "time", cutoff=cutoff.isoformat())


def stratified_split(
    events: pd.DataFrame,
    ratio: float = 0.75,
    seed: int = 42,
    filter_by: str = "user",
    min_rating: int = 1,
) -> Split:
    """Microsoft Recommenders' ``python_stratified_split`` semantics, returning a :class:`Split`.

    ``ratio`` is the *train* fraction (as in Recommenders). Steps, as in its ``_do_stratification``:

    1. if ``min_rating > 1``, keep only groups (users if ``filter_by="user"``, else items) with
       at least ``min_rating`` events (``min_rating_filter_pandas``);
    2. shuffle each group with a seeded random key, number its events 1..count;
    3. an event goes to train if ``rank / count <= ratio``, else to test.

    So a group of 1 event goes wholly to test (1/1 > ratio); our :func:`_finalize` then drops such
    events when their user/item is unseen in train, and reports them. The random numbers differ
    from Recommenders' (``np.random.seed`` + ``rand``), so the split is not bit-identical.
    """
    if filter_by not in ("user", "item"):
        raise ValueError("filter_by should be either 'user' or 'item'.")
    if min_rating < 1:
        raise ValueError("min_rating should be integer and larger than or equal to 1.")
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio must be in (0, 1), got {ratio}")
    column = "user_id" if filter_by == "user" else "item_id"
    events = events.reset_index(drop=True)
    groups, n_groups = _codes(events[column])
    key = np.random.default_rng(seed).permutation(len(events))
    rank, count = _group_rank(groups, n_groups, key)
    eligible = count >= min_rating
    frac = rank / count
    train_mask = eligible & (frac <= ratio)
    test_mask = eligible & (frac > ratio)
    return _finalize(
        events,
        train_mask,
        test_mask,
        "stratified",
        codes={column: (groups, n_groups)},
        ratio=ratio,
        seed=seed,
        filter_by=filter_by,
        min_rating=min_rating,
        filtered_min_rating_events=int((~eligible).sum()),
    )
