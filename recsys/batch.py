"""Recommendations for every user of a model at once (``recsys recommend --all-users``).

The rules are the API's (``GET /users/{id}/recommendations`` in collaborative mode): the
user's trained vector, items the user interacted with left out, available items only, the
request's filters. Two ways to get there:

- **scan** — when serving scans too (an exact index, or an Annoy index measured slower than a
  scan: ``prefer_exact``), or with ``exact=True``: every user batch is one matrix product
  against the allowed items and a batched top-k (recsys.evaluation.topk). Same lists as the
  API up to float rounding of the product.
- **index** — when serving asks an approximate index (HNSW, Annoy): each user goes through
  :meth:`Recommender.recommend_for_user` itself, so the lists are the API's by construction
  (the ANN answer depends on how many candidates are fetched, which depends on the history).
  Also when the model serves with popularity calibration by default (``bias.calibration``):
  the re-ranking is the Ranker's, per user.
  Blocks of users are shared among forked worker processes (one per core): the per-user path
  is Python-bound, so threads would not run it in parallel.

Either way, batches of users are yielded as arrays; the caller writes them (cli/recommend.py
writes Parquet).

**Fresh users** — users with events stored after the model's training snapshot, given as
:class:`FreshHistory` (their whole history in the order the API holds it) — get the API's
answer too: each goes through :meth:`Recommender.recommend_for_user` with ``refresh``, i.e.
the trained model's own fold-in (a returning user's trained vector plus their new events, a
new user's history folded in; a new user with no known item gets the popular list). New users
follow the model's users, in the order given.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys.evaluation.topk import top_k_scores
from recsys.recommender import NO_FILTERS, Filters, Recommender

logger = logging.getLogger(__name__)

SCAN_METRICS = ("dot", "cosine")


@dataclass
class UserBatch:
    """Top-k of a block of users: their ids, rows (bundle users first, then the new fresh users
    in order), item positions (-1: fewer than k) and scores."""

    user_ids: np.ndarray
    user_rows: np.ndarray
    item_rows: np.ndarray
    scores: np.ndarray


@dataclass(frozen=True)
class FreshHistory:
    """A user with events stored after the model's training snapshot: every event of theirs,
    oldest first (the order the API's history holds them), item ids and event values."""

    user_id: str
    items: list[str]
    values: list[float]


def seen_matrix(events: pd.DataFrame, user_ids: np.ndarray, item_ids: np.ndarray) -> sp.csr_matrix:
    """users × items (bundle order) with a stored entry where the user interacted with the item;
    events of users or items the model does not know are ignored."""
    users = pd.Index(pd.Series(user_ids, dtype=object).astype(str))
    items = pd.Index(pd.Series(item_ids, dtype=object).astype(str))
    rows = users.get_indexer(events["user_id"].astype(str))
    cols = items.get_indexer(events["item_id"].astype(str))
    known = (rows >= 0) & (cols >= 0)
    m = sp.csr_matrix(
        (np.ones(int(known.sum()), np.float32), (rows[known], cols[known])), shape=(len(user_ids), len(item_ids))
    )
    m.sum_duplicates()
    return m


def allowed_mask(recommender: Recommender, filters: Filters = NO_FILTERS) -> np.ndarray:
    """Item positions the API may recommend under ``filters``: available and passing them."""
    return np.asarray(recommender.catalog.mask(filters), dtype=bool)


def serving_uses_index(recommender: Recommender) -> bool:
    """Whether the API answers user lists through the ``user`` index (else by an exact scan)."""
    return "user" in recommender.ranker.indexed_roles


def batch_path(recommender: Recommender, exact: bool = False) -> str:
    """``scan`` or ``index`` (see module doc) for this model."""
    index = recommender.bundle.indexes.get("user")
    metric = index.metric if index is not None else recommender.bundle.metric
    if recommender.ranker.default_calibration > 0:
        return "index"
    if (
        (exact or not serving_uses_index(recommender))
        and metric in SCAN_METRICS
        and len(recommender.cf_vectors) == len(recommender.bundle.item_ids)
    ):
        return "scan"
    return "index"


def recommend_all(
    recommender: Recommender,
    seen: sp.csr_matrix,
    k: int,
    *,
    filters: Filters = NO_FILTERS,
    exact: bool = False,
    batch_size: int = 2048,
    on_batch: Callable[[int], None] | None = None,
    workers: int = 0,
    fresh: Sequence[FreshHistory] = (),
) -> Iterator[UserBatch]:
    """Top-``k`` for every user of the bundle, in blocks of ``batch_size`` users (bundle order),
    then for the users of ``fresh`` the bundle does not know.

    ``seen``: users × items interactions (rows aligned with ``bundle.user_ids``), left out of
    each user's list. ``fresh``: users with events newer than the model, answered through the
    API's fold-in (module doc). ``on_batch(n_users)`` is called after each block (progress
    bars). ``workers``: processes for the index path (0: one per available core; 1: this process).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    bundle = recommender.bundle
    n_users = len(bundle.user_ids)
    if seen.shape != (n_users, len(bundle.item_ids)):
        raise ValueError(f"seen matrix is {seen.shape}, the model has {n_users} users × {len(bundle.item_ids)} items")
    seen = sp.csr_matrix(seen)
    path = batch_path(recommender, exact)
    known = {bundle.user_pos[f.user_id]: f for f in fresh if f.user_id in bundle.user_pos}
    new = [f for f in fresh if f.user_id not in bundle.user_pos]
    start = time.perf_counter()
    if path == "scan":
        batches = _scan(recommender, seen, k, filters, batch_size)
    else:
        batches = _per_user(recommender, seen, k, filters, batch_size, workers or len(os.sched_getaffinity(0)), known)
    user_ids = np.asarray(bundle.user_ids, dtype=object).astype(str)
    for batch in batches:
        if path == "scan":
            for i, row in enumerate(batch.user_rows):
                if int(row) in known:  # the API folds this user's fresh events in
                    batch.item_rows[i], batch.scores[i] = _fresh_top_k(recommender, known[int(row)], k, filters)
        batch.user_ids = user_ids[batch.user_rows]
        yield batch
        if on_batch is not None:
            on_batch(len(batch.user_rows))
    for lo in range(0, len(new), batch_size):
        block = new[lo : lo + batch_size]
        ids = np.full((len(block), k), -1, np.int64)
        scores = np.full((len(block), k), -np.inf, np.float32)
        for i, history in enumerate(block):
            ids[i], scores[i] = _fresh_top_k(recommender, history, k, filters)
        rows = np.arange(n_users + lo, n_users + lo + len(block))
        yield UserBatch(np.asarray([f.user_id for f in block], dtype=object), rows, ids, scores)
        if on_batch is not None:
            on_batch(len(block))
    seconds = time.perf_counter() - start
    total = n_users + len(new)
    logger.info(
        "recommended for %d users (%s path; %d with fresh events, %d of them new) in %.1fs: %.0f users/s",
        total,
        path,
        len(known) + len(new),
        len(new),
        seconds,
        total / max(seconds, 1e-9),
    )


def _fresh_top_k(
    recommender: Recommender, history: FreshHistory, k: int, filters: Filters
) -> tuple[np.ndarray, np.ndarray]:
    """The API's answer for a user with fresh events (fold-in), as item positions and scores."""
    result = recommender.recommend_for_user(
        history.user_id, history.items, k, filters=filters, mode="collaborative", refresh=True, values=history.values
    )
    ids = np.full(k, -1, np.int64)
    scores = np.full(k, -np.inf, np.float32)
    ids[: len(result.items)] = [recommender.item_pos[it.item_id] for it in result.items]
    scores[: len(result.items)] = [it.score for it in result.items]
    return ids, scores


def _scan(
    recommender: Recommender, seen: sp.csr_matrix, k: int, filters: Filters, batch_size: int
) -> Iterator[UserBatch]:
    bundle = recommender.bundle
    index = bundle.indexes.get("user")
    metric = index.metric if index is not None else bundle.metric
    # The API's availability and filter rules, computed once for the whole run.
    allowed = np.flatnonzero(allowed_mask(recommender, filters))
    vectors = recommender.cf_vectors[allowed]
    seen_allowed = seen[:, allowed].tocsr()
    user_vectors = np.asarray(bundle.user_vectors, dtype=np.float32)
    for start in range(0, len(user_vectors), batch_size):
        rows = np.arange(start, min(start + batch_size, len(user_vectors)))
        if len(allowed) == 0:
            yield UserBatch(
                _NO_IDS, rows, np.full((len(rows), k), -1, np.int64), np.full((len(rows), k), -np.inf, np.float32)
            )
            continue
        ids, scores = top_k_scores(user_vectors, vectors, k, exclude=seen_allowed[rows], user_rows=rows, metric=metric)
        yield UserBatch(_NO_IDS, rows, np.where(ids >= 0, allowed[np.maximum(ids, 0)], -1), scores)


#: ids of a block before recommend_all names its users
_NO_IDS = np.empty(0, dtype=object)

#: what forked workers of the index path read (set only around the pool's life)
_PER_USER: tuple[Recommender, sp.csr_matrix, int, Filters, dict[int, FreshHistory]] | None = None


def _per_user(
    recommender: Recommender,
    seen: sp.csr_matrix,
    k: int,
    filters: Filters,
    batch_size: int,
    workers: int = 1,
    fresh: dict[int, FreshHistory] | None = None,
) -> Iterator[UserBatch]:
    global _PER_USER
    n_users = len(recommender.bundle.user_ids)
    blocks = [np.arange(start, min(start + batch_size, n_users)) for start in range(0, n_users, batch_size)]
    _PER_USER = (recommender, seen, k, filters, fresh or {})
    try:
        if workers <= 1 or len(blocks) < 2 or "fork" not in multiprocessing.get_all_start_methods():
            yield from map(_per_user_block, blocks)
            return
        from concurrent.futures import ProcessPoolExecutor

        # fork: the workers share the loaded model and index pages; blocks come back in order
        with ProcessPoolExecutor(min(workers, len(blocks)), mp_context=multiprocessing.get_context("fork")) as pool:
            yield from pool.map(_per_user_block, blocks)
    finally:
        _PER_USER = None


def _per_user_block(rows: np.ndarray) -> UserBatch:
    recommender, seen, k, filters, fresh = _PER_USER
    bundle = recommender.bundle
    item_ids = np.asarray(recommender.item_ids, dtype=object)
    ids = np.full((len(rows), k), -1, np.int64)
    scores = np.full((len(rows), k), -np.inf, np.float32)
    for i, row in enumerate(rows):
        if int(row) in fresh:
            ids[i], scores[i] = _fresh_top_k(recommender, fresh[int(row)], k, filters)
            continue
        history = item_ids[seen.indices[seen.indptr[row] : seen.indptr[row + 1]]].tolist()
        result = recommender.recommend_for_user(
            str(bundle.user_ids[row]), history, k, filters=filters, mode="collaborative"
        )
        ids[i, : len(result.items)] = [recommender.item_pos[it.item_id] for it in result.items]
        scores[i, : len(result.items)] = [it.score for it in result.items]
    return UserBatch(_NO_IDS, rows, ids, scores)
