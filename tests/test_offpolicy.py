"""Off-policy estimators on a hand-computed log, and the exploration policy's propensities."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from recsys.evaluation.offpolicy import LoggedList, TargetList, compare, evaluate, explore, off_policy_refusal

# four logged impressions; the target would show (a, b) to each
LOG = [
    LoggedList(("a", "b"), (0.5, 0.25), (0, 1)),  # both match: weights 2 and 4, both clicked
    LoggedList(("b", "a"), (0.5, 0.5), (1,)),  # no position matches
    LoggedList(("a", "c"), (0.5, 0.5), ()),  # position 0 matches (weight 2), no click
    LoggedList(("c", "b"), (0.5, 0.5), ()),  # position 1 matches (weight 2), no click
]
TARGET = [TargetList(("a", "b"), (0.9, 0.4))] * 4


def test_ips_and_snips_by_hand():
    est = evaluate(LOG, TARGET, bootstrap=50)
    # IPS: (2·1 + 4·1) / 4 impressions
    assert est.ips.value == pytest.approx(1.5)
    # SNIPS per position: p0 2/(2+2), p1 4/(4+2)
    assert est.snips.value == pytest.approx(0.5 + 4 / 6)
    assert est.matched == 4
    for e in (est.ips, est.snips, est.dr):
        assert e.interval[0] <= e.interval[1]


def test_target_the_log_never_showed_is_worth_nothing():
    est = evaluate(LOG, [TargetList(("x", "y"), (1.0, 0.5))] * 4, bootstrap=20)
    assert est.matched == 0 and est.ips.value == 0 and est.snips.value == 0


def test_mismatched_lengths_and_zero_propensity_are_refused():
    with pytest.raises(ValueError):
        evaluate(LOG[:2], TARGET, bootstrap=10)
    with pytest.raises(ValueError):
        evaluate([LoggedList(("a",), (0.0,), ())], [TargetList(("a",), (1.0,))], bootstrap=10)


def test_explore_propensities_are_the_policy_marginals():
    ranked = [f"i{j}" for j in range(10)]
    eps, pool, k, n = 0.3, 6, 3, 60_000
    rng = random.Random(5)
    seen: Counter = Counter()
    logged: dict[tuple[int, str], float] = {}
    for _ in range(n):
        shown, props = explore(ranked, k, eps, pool, rng)
        assert len(shown) == k == len(set(shown)) and set(shown) <= set(ranked[:pool])
        for p, (item, prop) in enumerate(zip(shown, props)):
            seen[p, item] += 1
            logged[p, item] = prop
    for p in range(k):
        # per position, the propensities of all pool items sum to 1 ...
        assert sum(logged[p, i] for i in ranked[:pool]) == pytest.approx(1.0)
        assert logged[p, ranked[p]] == pytest.approx(1 - eps + eps / pool)
        # ... and are how often the policy showed each item there
        for i in ranked[:pool]:
            assert seen[p, i] / n == pytest.approx(logged[p, i], abs=0.01)
    assert explore(ranked, k, 0.0, pool, rng) == (ranked[:k], [1.0] * k)


def _simulated_log(n: int, seed: int):
    """Logging: ε-uniform exploration over a fixed ranking; clicks by item relevance × position bias."""
    rng, nrng = random.Random(seed), np.random.default_rng(seed)
    ranked = [f"i{j}" for j in range(8)]
    rel = {i: r for i, r in zip(ranked, [0.1, 0.2, 0.6, 0.5, 0.3, 0.05, 0.4, 0.2])}
    bias = np.array([1.0, 0.6, 0.4])
    log = []
    for _ in range(n):
        shown, props = explore(ranked, 3, 0.5, 8, rng)
        clicked = np.flatnonzero(nrng.random(3) < np.array([rel[i] for i in shown]) * bias)
        log.append(LoggedList(tuple(shown), tuple(props), tuple(int(c) for c in clicked)))
    return log, rel, bias


def test_estimators_recover_a_better_target_and_the_gate_reads_the_difference():
    log, rel, bias = _simulated_log(30_000, seed=2)
    good = ("i2", "i3", "i6")
    prod = ("i0", "i1", "i2")
    truth_good = float(sum(rel[i] * b for i, b in zip(good, bias)))
    truth_prod = float(sum(rel[i] * b for i, b in zip(prod, bias)))
    cand_t = [TargetList(good, (0.6, 0.5, 0.4))] * len(log)
    prod_t = [TargetList(prod, (0.3, 0.2, 0.1))] * len(log)
    cmp = compare(log, cand_t, prod_t, bootstrap=200)
    for e in (cmp.candidate.ips, cmp.candidate.snips, cmp.candidate.dr):
        assert e.value == pytest.approx(truth_good, rel=0.1)
        assert e.interval[0] <= truth_good <= e.interval[1]
    assert cmp.production.snips.value == pytest.approx(truth_prod, rel=0.1)
    assert cmp.difference.interval[0] > 0
    checks: dict[str, float] = {}
    assert off_policy_refusal(cmp, tolerance=0.0, min_matched=100, checks=checks) is None
    assert checks["off_policy_candidate_ctr"] == cmp.candidate.snips.value
    swapped = compare(log, prod_t, cand_t, bootstrap=200)
    assert "credibly below" in off_policy_refusal(swapped, tolerance=0.0, min_matched=100, checks={})
    assert "match" in off_policy_refusal(swapped, tolerance=0.0, min_matched=10**9, checks={})
