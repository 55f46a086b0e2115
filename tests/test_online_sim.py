"""bench/online_sim.py at a small size: interleaved lists served by the real API (TestClient,
real SQLite store and MLflow registry) name the version behind each position, clicks posted
with the request id are credited from the store, and interleaving reaches the truth's decision
with fewer impressions than an A/B split; off-policy estimates from an exploring production land
near the candidate's true click-through and the gate's off-policy rule decides right."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
from harness import ROOT

pytestmark = pytest.mark.slow


def _sim():
    spec = importlib.util.spec_from_file_location("online_sim", ROOT / "bench" / "online_sim.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_interleaving_over_the_api_and_against_ab(tmp_path):
    sim = _sim()
    # a weak production (4 factors): a wide margin, so a small run decides
    cfg = sim.SimConfig(
        users=240,
        items=120,
        events=9_000,
        clusters=6,
        seeds=3,
        http_impressions=150,
        max_impressions=5_000,
        production=(4, 8),
        candidate=(16, 8),
        ope_impressions=30_000,
        bootstrap=100,
    )
    client, _ = sim.build(tmp_path, cfg)
    with client:
        world = sim.fetch_world(client, cfg)
        truth = (world.true_ctr(0), world.true_ctr(1))
        better = int(truth[1] > truth[0])
        pref, clicks = sim.http_phase(client, world, cfg.http_impressions, seed=3)
    assert truth[1] > truth[0]
    assert pref.impressions == cfg.http_impressions and clicks > 0
    assert pref.wins_a + pref.wins_b > 0
    assert pref.decided in (better, None)  # never the wrong way
    runs = sim.efficiency(world, cfg.seeds, cfg.max_impressions)
    assert all(r.interleaving_choice == better for r in runs)
    assert float(np.median([r.ratio for r in runs])) > 1.0  # fewer impressions than A/B
    # off-policy: production logs with exploration; the candidate's SNIPS near its true
    # click-through, the gate refusing the worse target and letting the candidate through
    true_candidate = world.true_clicks(1)
    for r in sim.off_policy(world, cfg)[:2]:
        assert r.better.candidate.snips.value == pytest.approx(true_candidate, rel=0.15)
        assert r.promotes_better and r.refuses_worse


def test_clustered_ratio_is_the_binomial_with_one_impression_each_and_clusters_by_visitor():
    sim = _sim()
    hits = np.array([1, 0, 1, 1])
    ones = np.ones(4)
    # one impression per visitor: R = 3/4 and R(1 − R)/n = 0.1875 / 4
    r, var = sim.clustered_ratio(hits, ones, np.array([1, 2, 3, 4]))
    assert r[-1] == pytest.approx(0.75) and var[-1] == pytest.approx(0.1875 / 4)
    # two visitors of two impressions (hits 1 and 2): Σ(y − R·n)² / (Σn)² = (0.25 + 0.25) / 16
    r, var = sim.clustered_ratio(hits, ones, np.array([2, 4]))
    assert r.tolist() == pytest.approx([0.5, 0.75]) and var[-1] == pytest.approx(0.5 / 16)
