"""Off-policy evaluation of a ranking from logged impressions with known propensities, and the
exploration policy that makes the propensities known.

Exploration (:func:`explore`)
-----------------------------
ε-uniform over the top candidates: with probability ``1 - ε`` the list is the ranking's top
``k``; with probability ``ε`` it is a uniformly random ordered sample of ``k`` of the ranking's
top ``pool`` items. The chance that item ``i`` is shown at position ``p`` is then exactly
``(1 - ε)·[i is the ranking's p-th] + ε / pool`` for every pool item (0 outside the pool); that
is the propensity logged for each shown item (``Impression.propensities``).

Estimators (item-position model)
--------------------------------
The value of a target ranking is its expected number of clicks per impression over its
``k`` positions. Under the item-position model (a click at a position depends on the item and
the position, not on the rest of the list; Li et al., 2018) each position is a bandit of its
own, so with ``w_np = [logged item at p == target item at p] / π_np`` over impressions ``n``:

* **IPS**: ``mean_n Σ_p w_np · c_np`` (unbiased wherever the logging policy can show the
  target's item at its position);
* **SNIPS** (self-normalised, per position): ``Σ_p Σ_n w_np c_np / Σ_n w_np`` — a little biased,
  much less variance; a position no logged list matched contributes 0;
* **DR** (doubly robust): ``mean_n Σ_p [q̂_np + w_np (c_np − q̂_np)]`` with ``q̂`` a reward model
  of the target's own scores (per position, a weighted linear fit of clicks on the target's
  score where logged and target agree), clipped to [0, 1]: unbiased when either the propensities
  or ``q̂`` are right.

Intervals are percentile bootstrap intervals over impressions (Poisson weights, the reward
model held fixed). :func:`compare` estimates two targets on the same resamples, so the interval
of their difference is paired; :func:`off_policy_refusal` is the gate's rule ``off_policy`` on it.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)


def explore(
    ranked: Sequence[str], k: int, epsilon: float, pool: int, rng: random.Random
) -> tuple[list[str], list[float]]:
    """The shown list and each shown item's propensity under ε-uniform exploration over the
    top ``pool`` of ``ranked`` (module docstring). ``epsilon`` 0 is the top ``k``, propensity 1."""
    top = list(ranked[: max(pool, k)])
    k = min(k, len(top))
    m = len(top)
    if m == 0:
        return [], []
    shown = rng.sample(top, k) if epsilon > 0 and rng.random() < epsilon else top[:k]
    return shown, [(1 - epsilon) * (item == top[p]) + epsilon / m for p, item in enumerate(shown)]


@dataclass(frozen=True)
class LoggedList:
    """One logged impression as the estimators read it: items in shown order, the propensity of
    each at its position, and the clicked positions (repeats count once)."""

    items: tuple[str, ...]
    propensities: tuple[float, ...]
    clicked: tuple[int, ...]


@dataclass(frozen=True)
class TargetList:
    """The ranking the evaluated policy would have shown for that impression, best first, with
    its own scores (the doubly-robust reward model reads them)."""

    items: tuple[str, ...]
    scores: tuple[float, ...]


@dataclass(frozen=True)
class Estimate:
    value: float
    interval: tuple[float, float]


@dataclass(frozen=True)
class OffPolicyEstimates:
    """A target's click-through (expected clicks per impression) by the three estimators;
    ``matched`` counts (impression, position) pairs where logged and target agree."""

    impressions: int
    matched: int
    ips: Estimate
    snips: Estimate
    dr: Estimate


@dataclass(frozen=True)
class OffPolicyComparison:
    """Candidate and production estimated on the same log and resamples; ``difference`` is the
    candidate's SNIPS minus production's, with its paired interval."""

    candidate: OffPolicyEstimates
    production: OffPolicyEstimates
    difference: Estimate


class _Arrays:
    """Per impression and target position: match weight, click, reward model, as arrays."""

    def __init__(self, logged: Sequence[LoggedList], targets: Sequence[TargetList]) -> None:
        if len(logged) != len(targets):
            raise ValueError(f"{len(logged)} logged impressions but {len(targets)} target lists")
        n = len(logged)
        k = max((len(t.items) for t in targets), default=0)
        self.w = np.zeros((n, k))
        self.c = np.zeros((n, k))
        self.s = np.full((n, k), np.nan)
        for row, (x, t) in enumerate(zip(logged, targets)):
            if len(x.propensities) != len(x.items):
                raise ValueError(f"impression {row}: {len(x.items)} items but {len(x.propensities)} propensities")
            clicked = set(x.clicked)
            self.s[row, : len(t.scores)] = t.scores
            for p, item in enumerate(t.items[: len(x.items)]):
                if x.items[p] == item:
                    if not x.propensities[p] > 0:
                        raise ValueError(f"impression {row}: propensity {x.propensities[p]} at position {p}")
                    self.w[row, p] = 1.0 / x.propensities[p]
                    self.c[row, p] = float(p in clicked)
        self.q = self._reward_model()

    def _reward_model(self) -> np.ndarray:
        """q̂ per position: clicks on the target's score, IPS-weighted least squares over the
        matched rows (a constant when the scores do not vary), clipped to [0, 1]."""
        q = np.zeros_like(self.w)
        for p in range(self.w.shape[1]):
            m = self.w[:, p] > 0
            if not m.any():
                continue
            x, y, wt = self.s[m, p], self.c[m, p], self.w[m, p]
            mean = float(np.average(y, weights=wt))
            if np.ptp(x) > 0 and m.sum() >= 3:
                xm = np.average(x, weights=wt)
                slope = np.sum(wt * (x - xm) * (y - mean)) / np.sum(wt * (x - xm) ** 2)
                q[:, p] = mean + slope * (np.nan_to_num(self.s[:, p], nan=xm) - xm)
            else:
                q[:, p] = mean
        return np.clip(q, 0.0, 1.0)

    def values(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """IPS, SNIPS and DR under each row of impression weights ``counts`` (B × n)."""
        total = np.maximum(counts.sum(axis=1), 1e-12)
        ips = counts @ (self.w * self.c).sum(axis=1) / total
        num, den = counts @ (self.w * self.c), counts @ self.w
        snips = np.divide(num, den, out=np.zeros_like(num), where=den > 0).sum(axis=1)
        dr = counts @ (self.q + self.w * (self.c - self.q)).sum(axis=1) / total
        return ips, snips, dr


def _resamples(n: int, bootstrap: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).poisson(1.0, size=(bootstrap, n)).astype(np.float64)


def _interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def _estimates(a: _Arrays, counts: np.ndarray, level: float) -> OffPolicyEstimates:
    point = a.values(np.ones((1, a.w.shape[0])))
    boot = a.values(counts)
    ips, snips, dr = (Estimate(float(v[0]), _interval(b, level)) for v, b in zip(point, boot))
    return OffPolicyEstimates(a.w.shape[0], int((a.w > 0).sum()), ips, snips, dr)


def evaluate(
    logged: Sequence[LoggedList],
    targets: Sequence[TargetList],
    *,
    bootstrap: int = 500,
    level: float = 0.95,
    seed: int = 0,
) -> OffPolicyEstimates:
    """The target's click-through by IPS, SNIPS and DR with bootstrap intervals (module doc)."""
    a = _Arrays(logged, targets)
    return _estimates(a, _resamples(len(logged), bootstrap, seed), level)


def compare(
    logged: Sequence[LoggedList],
    candidate: Sequence[TargetList],
    production: Sequence[TargetList],
    *,
    bootstrap: int = 500,
    level: float = 0.95,
    seed: int = 0,
) -> OffPolicyComparison:
    """Both targets on the same log and the same resamples; the SNIPS difference's interval is paired."""
    a, b = _Arrays(logged, candidate), _Arrays(logged, production)
    counts = _resamples(len(logged), bootstrap, seed)
    diff = a.values(counts)[1] - b.values(counts)[1]
    ca, cb = _estimates(a, counts, level), _estimates(b, counts, level)
    return OffPolicyComparison(ca, cb, Estimate(ca.snips.value - cb.snips.value, _interval(diff, level)))


def off_policy_refusal(
    comparison: OffPolicyComparison, *, tolerance: float, min_matched: int, checks: dict[str, float]
) -> str | None:
    """Why the gate refuses (rule ``off_policy``), or None: the candidate's SNIPS click-through is
    credibly below production's — the upper end of the paired difference's interval is below
    ``−tolerance × production`` — or the log matched the candidate's lists too rarely to say
    (fewer than ``min_matched`` (impression, position) pairs). The figures go into ``checks``."""
    c, p, d = comparison.candidate, comparison.production, comparison.difference
    checks.update(
        off_policy_candidate_ctr=c.snips.value,
        off_policy_production_ctr=p.snips.value,
        off_policy_difference_low=d.interval[0],
        off_policy_difference_high=d.interval[1],
        off_policy_matched=float(c.matched),
    )
    if c.matched < min_matched:
        return f"only {c.matched} logged (impression, position) pairs match the candidate's lists (< {min_matched})"
    floor = -tolerance * p.snips.value
    if d.interval[1] < floor:
        return (
            f"off-policy click-through {c.snips.value:.4f} vs production {p.snips.value:.4f}: difference "
            f"{d.value:+.4f} [{d.interval[0]:+.4f}, {d.interval[1]:+.4f}] is credibly below {floor:+.4f}"
        )
    return None
