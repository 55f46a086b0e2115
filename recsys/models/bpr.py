"""Bayesian Personalized Ranking (implicit) as an Embedder."""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp
from scipy.optimize import minimize
from scipy.special import expit, log_expit

from recsys.models.base import Embedder, TrainData

logger = logging.getLogger(__name__)


class BPREmbedder(Embedder):
    """Pairwise ranking matrix factorization by BPR-SGD (Rendle et al. 2009).

    Parameters mirror ``implicit.cpu.bpr.BayesianPersonalizedRanking``. BPR only uses which
    entries of the matrix are non-zero (the confidence weights do not change its sampling).

    implicit learns ``factors`` latent dimensions plus an item bias: its ``item_factors`` have
    ``factors + 1`` columns, the last being the item bias, and its ``user_factors`` carry a
    constant 1 in that column. We export both arrays unchanged, so
    ``user_vectors_ @ item_vectors_.T`` equals implicit's own score and ``metric`` is "dot".
    """

    kind = "bpr"
    metric = "dot"
    supports_fold_in = True
    #: the solved pairwise step beats the SGD-trained user vectors (docs/foldin.md)
    returning_fold_in = "afresh"

    def __init__(
        self,
        factors: int = 64,
        learning_rate: float = 0.05,
        regularization: float = 0.01,
        iterations: int = 100,
        random_state: int | None = 42,
        num_threads: int = 0,
        show_progress: bool = False,
        fold_in_negatives: int = 256,
    ) -> None:
        self.factors = factors
        self.learning_rate = learning_rate
        self.regularization = regularization
        self.iterations = iterations
        self.random_state = random_state
        self.num_threads = num_threads
        self.show_progress = show_progress
        self.fold_in_negatives = fold_in_negatives

    def _fit(self, data: TrainData) -> None:
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        model = BayesianPersonalizedRanking(
            factors=self.factors,
            learning_rate=self.learning_rate,
            regularization=self.regularization,
            iterations=self.iterations,
            random_state=self.random_state,
            num_threads=self.num_threads,
            dtype=np.float32,
        )
        model.fit(sp.csr_matrix(data.matrix, dtype=np.float32), show_progress=self.show_progress)
        self.model_ = model
        self.user_vectors_ = np.ascontiguousarray(model.user_factors, dtype=np.float32)
        self.item_vectors_ = np.ascontiguousarray(model.item_factors, dtype=np.float32)
        if self.user_vectors_.shape[1] != self.factors + 1 or not np.allclose(self.user_vectors_[:, -1], 1.0):
            # Guard the layout we rely on (implicit 0.7: last user column 1, last item column bias).
            raise RuntimeError("unexpected implicit BPR factor layout: expected a trailing item-bias column")
        logger.info(
            "BPR fitted: %d users, %d items, %d dims",
            *self.user_vectors_.shape[:1],
            self.item_vectors_.shape[0],
            self.item_vectors_.shape[1],
        )

    def fold_in(self, item_indices: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """The BPR user step for one new user against the fixed item factors.

        Solved to optimum by ``pairwise_user_solve`` (see there) with this model's
        ``regularization``; the bias column of the result is the constant 1, as for trained users.
        ``weights`` are ignored: training samples every touched item alike, whatever its weight.
        """
        self._check_fitted()
        user = np.ones(self.item_vectors_.shape[1], np.float32)
        user[:-1] = pairwise_user_solve(
            self.item_vectors_[:, :-1],
            self.item_vectors_[:, -1],
            item_indices,
            None,
            regularization=self.regularization,
            n_negatives=self.fold_in_negatives,
            random_state=self.random_state,
        )
        return user


def pairwise_user_solve(
    item_factors: np.ndarray,
    item_bias: np.ndarray | None,
    item_indices: np.ndarray,
    weights: np.ndarray | None = None,
    *,
    regularization: float = 0.01,
    n_negatives: int = 256,
    random_state: int | None = 42,
) -> np.ndarray:
    """A user vector ``u`` for fixed item factors ``Y`` / biases ``b`` by the BPR criterion.

    With the items fixed, BPR's objective in ``u`` is convex:

        minimize  −Σ_(i,j) w_i · log σ(u·(y_i − y_j) + b_i − b_j) / Σ w  +  λ·|u|²

    over pairs of a touched item ``i`` and an untouched item ``j`` (the pair terms averaged, so
    λ acts as it does per SGD step). We take all untouched items as ``j``, or ``n_negatives`` of
    them per positive (seeded) when the catalog is larger, and solve with L-BFGS (scipy). Used for
    BPR and for LightFM (whose warp/bpr losses are pairwise ranking losses too).
    """
    Y = np.asarray(item_factors, dtype=np.float64)
    n_items, factors = Y.shape
    b = np.zeros(n_items) if item_bias is None else np.asarray(item_bias, dtype=np.float64)
    item_indices = np.asarray(item_indices, dtype=np.int64)
    if weights is None:
        item_indices = np.unique(item_indices)
        w = np.ones(len(item_indices))
    else:
        w = np.asarray(weights, dtype=np.float64)
    untouched = np.ones(n_items, bool)
    untouched[item_indices] = False
    negatives = np.flatnonzero(untouched)
    if len(item_indices) == 0 or len(negatives) == 0 or w.sum() <= 0:
        return np.zeros(factors, np.float32)
    if len(negatives) > n_negatives:
        neg = np.random.default_rng(random_state).choice(negatives, size=(len(item_indices), n_negatives))
    else:
        neg = np.broadcast_to(negatives, (len(item_indices), len(negatives)))
    # Over the items the pairs use only, each step costs O(items·factors + pairs) (not
    # O(pairs·factors)): scores s = Y·u, pair margins from s, gradient as per-item pair weights · Y.
    in_pairs = ~untouched
    in_pairs[neg] = True
    used = np.flatnonzero(in_pairs)
    row_of = np.cumsum(in_pairs) - 1  # item -> its row in ``used``
    Yu = Y[used]
    pos_rows, neg_rows = row_of[item_indices], row_of[neg]
    off = b[item_indices][:, None] - b[neg]  # (n_pos, n_neg)
    pair_w = np.broadcast_to(w[:, None], off.shape) / (w.sum() * off.shape[1])
    flat_neg = neg_rows.ravel()

    def objective(u: np.ndarray) -> tuple[float, np.ndarray]:
        scores = Yu @ u
        x = scores[pos_rows][:, None] - scores[neg_rows] + off
        loss = -(pair_w * log_expit(x)).sum() + regularization * (u @ u)
        c = pair_w * expit(-x)
        per_item = np.bincount(pos_rows, weights=c.sum(axis=1), minlength=len(used)) - np.bincount(
            flat_neg, weights=c.ravel(), minlength=len(used)
        )
        return loss, -(per_item @ Yu) + 2 * regularization * u

    result = minimize(objective, np.zeros(factors), jac=True, method="L-BFGS-B")
    if not result.success:
        logger.warning("pairwise fold-in did not converge: %s", result.message)
    return result.x.astype(np.float32)
