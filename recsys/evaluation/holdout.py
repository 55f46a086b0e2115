"""The one holdout of training, the pipeline's gate, the search and experiments.

A :class:`Holdout` is a split of the snapshot's events (``time``: one global cutoff, the
newest ``test_ratio`` of events; ``user_time``: each user's newest events; ``random``: a
per-user random share) in one id space — every user and item of the train part — with the
raw train counts (exclusions; :meth:`Holdout.train_matrix` weights them for a fit), the test
matrix and the evaluation users (a seeded sample). :func:`evaluate` scores a fitted model on
it; :func:`score_vectors` scores any vectors, e.g. a production bundle's, on the same users;
:func:`top_k` and :func:`rank_metrics` are its two halves for callers that score the same
ranking further (experiments: several k, beyond-accuracy metrics, breakdowns).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field

from recsys.evaluation.beyond import catalog_coverage
from recsys.evaluation.metrics import ranking_metrics_at_k
from recsys.evaluation.splits import Split, random_split, time_split, user_time_split
from recsys.evaluation.topk import top_k_scores
from recsys.matrix import InteractionMatrix, weight

logger = logging.getLogger(__name__)

HoldoutKind = Literal["time", "user_time", "random"]


class HoldoutConfig(BaseModel):
    """How the holdout is cut and how many of its users are scored."""

    model_config = ConfigDict(extra="forbid")

    #: ``time``: the newest ``test_ratio`` of events (one global cutoff); ``user_time``: each
    #: user's newest ``test_ratio`` of events; ``random``: a per-user random ``test_ratio``
    kind: HoldoutKind = "random"
    test_ratio: float = Field(0.2, gt=0, lt=1)
    #: score at most this many test users (sampled with the seed) to bound the scoring cost
    eval_users: int = Field(10_000, ge=1)
    seed: int = 42


def vector_metric(metric: str) -> str:
    """The similarity the bias report and the mitigations use for a model's vectors: its own
    when it is ``dot`` or ``cosine``, else ``dot``."""
    return metric if metric in ("dot", "cosine") else "dot"


def time_cutoff(events: pd.DataFrame, test_ratio: float) -> pd.Timestamp:
    """The timestamp from which the newest ``test_ratio`` of ``events`` are the holdout."""
    if len(events) < 2:
        raise ValueError("need at least two events for a holdout split")
    ts = events["timestamp"]
    return pd.Timestamp(ts.sort_values(kind="stable").iloc[min(len(ts) - 1, int(len(ts) * (1 - test_ratio)))])


@dataclass
class Holdout:
    """A split in one common id space (every id of the train part)."""

    kind: str
    split: Split
    user_ids: np.ndarray
    item_ids: np.ndarray
    #: raw summed values of the train part (exclusions; :meth:`train_matrix` weights them)
    train: sp.csr_matrix
    test: sp.csr_matrix
    #: the evaluation users (rows of both matrices)
    users: np.ndarray
    cutoff: pd.Timestamp | None = None

    @classmethod
    def build(
        cls,
        events: pd.DataFrame,
        config: HoldoutConfig,
        cutoff: pd.Timestamp | None = None,
        *,
        require_test: bool = True,
    ) -> Holdout:
        """``cutoff`` fixes a ``time`` holdout's start (default: :func:`time_cutoff`).

        A repeat of an item the user already has in the train part is not something to
        recommend (it is excluded from every ranking): such test pairs are dropped, and test
        values count as one relevant pair each. ``require_test=False`` allows a holdout with
        nothing to score (e.g. every event at one instant: all of it trains).
        """
        # Only the columns the matrices and sequences need: the split then copies codes, floats
        # and times, not millions of event-id strings it never looks at (same rows, same order).
        events = events[[c for c in ("user_id", "item_id", "value", "timestamp") if c in events]]
        if config.kind == "time":
            cutoff = pd.Timestamp(cutoff) if cutoff is not None else time_cutoff(events, config.test_ratio)
            split = time_split(events, cutoff)
            if len(split.train) == 0 and not require_test:  # every event at one instant
                split = time_split(events, events["timestamp"].max() + pd.Timedelta(seconds=1))
            cutoff = pd.Timestamp(split.report["cutoff"])
        elif config.kind == "user_time":
            split = user_time_split(events, config.test_ratio, seed=config.seed)
        else:
            split = random_split(events, config.test_ratio, seed=config.seed)
        if split.report["n_test"] == 0 and require_test:
            raise ValueError(f"the {config.kind} holdout holds no scorable events (every test user/item is new)")
        return cls.of_split(split, config.kind, config.eval_users, config.seed, cutoff)

    @classmethod
    def of_split(
        cls, split: Split, kind: str, eval_users: int | None, seed: int, cutoff: pd.Timestamp | None = None
    ) -> Holdout:
        """The holdout of a given split (e.g. an experiment spec's); ``eval_users`` None: all."""
        train = InteractionMatrix.from_events(split.train, weighting="none")
        test = InteractionMatrix.from_events(
            split.test, user_ids=train.user_ids, item_ids=train.item_ids, weighting="none"
        ).matrix
        test.data = np.ones_like(test.data)
        test = sp.csr_matrix(test - test.multiply(train.matrix > 0))
        test.eliminate_zeros()
        holdout = cls(kind, split, train.user_ids, train.item_ids, train.matrix, test, np.array([]), cutoff)
        holdout.users = holdout.eval_users(eval_users if eval_users is not None else len(train.user_ids), seed)
        return holdout

    def train_matrix(self, weighting: str, alpha: float) -> InteractionMatrix:
        """The train part weighted for a fit (rows/columns: :attr:`user_ids`, :attr:`item_ids`)."""
        return InteractionMatrix(
            matrix=weight(self.train, weighting, alpha=alpha), user_ids=self.user_ids, item_ids=self.item_ids
        )

    def eval_users(self, limit: int, seed: int, known: np.ndarray | None = None) -> np.ndarray:
        """Test users (``known``: a mask over :attr:`user_ids`), at most ``limit`` of them."""
        users = np.flatnonzero(np.diff(self.test.indptr) > 0)
        if known is not None:
            users = users[known[users]]
        if len(users) > limit:
            users = np.sort(np.random.default_rng(seed).choice(users, limit, replace=False))
        return users

    @property
    def test_interactions(self) -> int:
        return int(self.test[self.users].nnz) if len(self.users) else 0

    def report(self) -> dict[str, float]:
        """The split's numeric report, as ``split_<name>`` metrics."""
        return {f"split_{k}": float(v) for k, v in self.split.report.items() if isinstance(v, (int, float))}

    def describe(self) -> str:
        r = self.split.report
        if self.kind == "time":
            return f"time holdout: events from {self.cutoff.isoformat()}"
        return f"per-user {self.kind.replace('_', ' ')} holdout, test_ratio {r.get('test_ratio')}, seed {r.get('seed')}"


@dataclass(frozen=True)
class ContentScoring:
    """Score the content-only and hybrid rankings too (prefixes ``content_``, ``hybrid_``):
    the content encoder's item vectors in the holdout's item space, the hybrid fusion."""

    item_vectors: np.ndarray
    weights: tuple[float, float]
    fusion: str


def score_vectors(
    holdout: Holdout,
    users: np.ndarray,
    user_vectors: np.ndarray,
    item_vectors: np.ndarray,
    metric: str,
    k: int,
    *,
    user_rows: np.ndarray | None = None,
    item_map: np.ndarray | None = None,
) -> dict[str, float]:
    """Ranking metrics + coverage for ``users`` (rows of the common space).

    ``user_rows`` — rows of ``user_vectors`` for those users (default: the same rows);
    ``item_map`` — common-space column for each row of ``item_vectors`` (-1: not in the common
    space); default identity.
    """
    user_rows = users if user_rows is None else user_rows
    if item_map is None:
        exclude = holdout.train[users]
    else:
        # exclusions in the model's item space: common column -> model row
        inverse = np.full(len(holdout.item_ids), -1, dtype=np.int64)
        known = item_map >= 0
        inverse[item_map[known]] = np.flatnonzero(known)
        sub = holdout.train[users].tocoo()
        cols = inverse[sub.col]
        keep = cols >= 0
        exclude = sp.csr_matrix(
            (np.ones(keep.sum(), np.float32), (sub.row[keep], cols[keep])), shape=(len(users), len(item_vectors))
        )
    rec, _ = top_k_scores(np.asarray(user_vectors)[user_rows], item_vectors, k, exclude=exclude, metric=metric)
    if item_map is not None:
        rec = np.where(rec >= 0, item_map[np.maximum(rec, 0)], -1)
    return rank_metrics(rec, holdout, users, k)


def top_k(model, holdout: Holdout, k: int, users: np.ndarray | None = None) -> np.ndarray:
    """A fitted model's ``k`` best item columns (train items excluded, ``-1`` padded) for the
    evaluation users (or ``users``): the ranking :func:`evaluate` scores."""
    users = holdout.users if users is None else users
    return top_k_scores(
        model.user_vectors_,
        model.item_vectors_,
        k,
        exclude=holdout.train,
        user_rows=users,
        metric=vector_metric(model.metric),
    )[0]


def rank_metrics(rec: np.ndarray, holdout: Holdout, users: np.ndarray, k: int, prefix: str = "") -> dict[str, float]:
    """Ranking metrics at ``k`` (``<name>_at_<k>``) and catalog ``coverage`` of ``rec``, the
    top-k of ``users`` (one row each)."""
    n_common = len(holdout.item_ids)
    metrics = ranking_metrics_at_k(rec, holdout.test[users], k, n_items_total=n_common)
    out = {f"{prefix}{name}_at_{k}": float(v) for name, v in metrics.items() if name != "n_users"}
    out[f"{prefix}coverage"] = catalog_coverage(rec, n_common)
    return out


def evaluate(
    model, holdout: Holdout, k: int, *, users: np.ndarray | None = None, content: ContentScoring | None = None
) -> dict[str, float]:
    """``model`` (fitted on ``holdout.train_matrix(...)``: ``user_vectors_``, ``item_vectors_``,
    ``metric``) scored on the holdout's evaluation users (or ``users``)."""
    users = holdout.users if users is None else users
    if len(users) == 0:
        return {"eval_users": 0.0}
    out = score_vectors(holdout, users, model.user_vectors_, model.item_vectors_, model.metric, k)
    if content is not None:
        from recsys.hybrid import history_profiles, hybrid_top_k

        seen = holdout.train[users]
        profiles = history_profiles(seen, content.item_vectors)
        ranked, _ = top_k_scores(profiles, content.item_vectors, k, exclude=seen, metric="cosine")
        out.update(rank_metrics(ranked, holdout, users, k, "content_"))
        ranked = hybrid_top_k(
            np.asarray(model.user_vectors_)[users],
            model.item_vectors_,
            profiles,
            content.item_vectors,
            k,
            exclude=seen,
            metric=model.metric,
            weights=content.weights,
            fusion=content.fusion,
        )
        out.update(rank_metrics(ranked, holdout, users, k, "hybrid_"))
    out["eval_users"] = float(len(users))
    return out
