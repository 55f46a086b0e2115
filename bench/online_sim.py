"""Online-evaluation simulator: synthetic users with known preferences click by a known model of
relevance and position; production and a candidate (two real trained versions) are compared by
team-draft interleaving and by an A/B split, and the impressions each needs for the right
decision at 95% are counted.

World
-----
The seeded generator's data (``recsys.datasets.synthetic``) with its clusters as the truth: an
item is relevant to a user of its cluster. A shown item at position ``p`` (0-based) is clicked
with probability ``relevance × bias(p)``, ``relevance`` = ``REL_IN`` in the user's cluster and
``REL_OUT`` outside it, ``bias(p) = 1 / (p + 1) ** POSITION_DECAY``. Production is an ALS with 8
factors, the candidate one with 16 (``SimConfig``); each version's true click-through (the
chance that an impression gets at least one click, over the users) follows exactly from the
click model and its lists, so the margin is known.

Phases
------
1. HTTP: the real API (in-process TestClient) and store serve ``--http-impressions`` interleaved
   lists (``RECSYS_INTERLEAVE=production,challenger``); simulated clicks are posted with their
   ``request_id``; the preference is computed from the impressions and credited clicks read
   back from the store, and must agree with the truth's direction.
2. Sample efficiency, per seed: a stream of interleaved impressions (the API's own
   :func:`team_draft` over the two versions' lists as the API serves them; sign test, Wilson
   interval of the candidate's share of won impressions) and a stream of A/B impressions (each
   to one version at random; per-impression click rate, two-proportion z-test), each up to
   ``--max-impressions``. What a method *needs* is the number of impressions from which on its
   test at 95% gives the same decision at every later impression of the stream (a first
   crossing alone would count lucky early flukes).

Done when (issue 23, a): both reach the right decision, and the median over the seeds of A/B
impressions ÷ interleaving impressions is ≥ 10. The table goes to stdout; exit 1 when missed.

    PYTHONPATH=. .venv/bin/python bench/online_sim.py [--seeds 20] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recsys.evaluation.interleaving import Credit, credit, preference, team_draft
from recsys.evaluation.online import Z_95

logger = logging.getLogger("online_sim")

REL_IN = 0.35
REL_OUT = 0.02
POSITION_DECAY = 0.8
RATIO_TARGET = 10.0


@dataclass(frozen=True)
class SimConfig:
    users: int = 400
    items: int = 200
    events: int = 16_000
    clusters: int = 8
    data_seed: int = 7
    k: int = 10
    seeds: int = 20
    http_impressions: int = 400
    max_impressions: int = 40_000
    #: ALS (factors, iterations) of the two versions: the candidate with twice the factors,
    #: about three points of click-through better (the run prints the exact margin)
    production: tuple[int, int] = (8, 8)
    candidate: tuple[int, int] = (16, 8)


@dataclass
class World:
    """Both versions' lists per user (as the API serves them), the click model, the truth."""

    versions: tuple[str, str]  # production, candidate
    users: list[str]
    lists: tuple[dict[str, list[str]], dict[str, list[str]]]
    user_cluster: np.ndarray
    item_cluster: np.ndarray
    k: int

    def click_probs(self, user: str, items: list[str]) -> np.ndarray:
        uc = self.user_cluster[int(user[1:])]
        rel = np.array([REL_IN if self.item_cluster[int(i[1:])] == uc else REL_OUT for i in items])
        return rel * position_bias(len(items))

    def true_ctr(self, version: int) -> float:
        """P(an impression gets at least one click), averaged over the users."""
        return float(np.mean([self.any_click_prob(version, u) for u in self.users]))

    def any_click_prob(self, version: int, user: str) -> float:
        return float(1 - np.prod(1 - self.click_probs(user, self.lists[version][user])))


def position_bias(n: int) -> np.ndarray:
    return 1.0 / (np.arange(n) + 1.0) ** POSITION_DECAY


def build(workdir: Path, cfg: SimConfig):
    """Data, store, production (weak) and candidate versions, an app interleaving the two.
    Returns (TestClient context manager, settings)."""
    from fastapi.testclient import TestClient

    from api.main import create_app
    from pipelines.train import train
    from tests.harness import prepare, settings_for, training_config

    env = prepare(
        workdir,
        users=cfg.users,
        items=cfg.items,
        events=cfg.events,
        clusters=cfg.clusters,
        seed=cfg.data_seed,
        factors=cfg.production[0],
        iterations=cfg.production[1],
    )
    settings = settings_for(env)
    train(settings, training_config(factors=cfg.candidate[0], iterations=cfg.candidate[1], alias="challenger"))
    app_settings = settings.model_copy(
        update={"api_keys": "sim", "reload_poll_seconds": 0, "interleave": "production,challenger"}
    )
    return TestClient(create_app(app_settings)), app_settings


def fetch_world(client, cfg: SimConfig) -> World:
    from recsys.datasets.synthetic import synthetic_clusters

    ready = client.get("/ready").json()["variants"]
    versions = (ready["production"], ready["challenger"])
    users = [f"u{i}" for i in range(cfg.users)]
    lists: tuple[dict[str, list[str]], dict[str, list[str]]] = ({}, {})
    for v, out in zip(versions, lists):
        for u in users:
            r = client.get(f"/users/{u}/recommendations", params={"k": cfg.k, "model_version": v})
            r.raise_for_status()
            out[u] = [i["item_id"] for i in r.json()["items"]]
    user_cluster, item_cluster = synthetic_clusters(cfg.users, cfg.items, cfg.clusters, cfg.data_seed)
    return World(versions, users, lists, user_cluster, item_cluster, cfg.k)


def http_phase(client, world: World, n: int, seed: int):
    """Interleaved lists served by the API, clicks posted with their request id, the
    preference computed from what the store holds."""
    rng = np.random.default_rng(seed)
    clicks, request_ids = [], []
    for _ in range(n):
        user = world.users[int(rng.integers(len(world.users)))]
        body = client.get(f"/users/{user}/recommendations", params={"k": world.k}).json()
        assert body["variant"] == "interleaved" and len(body["sources"]) == len(body["items"])
        items = [i["item_id"] for i in body["items"]]
        request_ids.append(body["request_id"])
        for pos in np.flatnonzero(rng.random(len(items)) < world.click_probs(user, items)):
            clicks.append(
                {"user_id": user, "item_id": items[pos], "event_type": "click", "request_id": body["request_id"]}
            )
    for lo in range(0, len(clicks), 5_000):
        r = client.post("/events", json=clicks[lo : lo + 5_000], headers={"X-API-Key": "sim"})
        r.raise_for_status()
    client.app.state.holder.impressions.flush()
    wanted = set(request_ids)
    stored = [x for x in client.app.state.store.impressions() if x.impression.request_id in wanted]
    assert len(stored) == n, f"{len(stored)} of {n} impressions stored"
    credits = []
    for x in stored:
        teams = [world.versions.index(v) for v in x.impression.sources]
        credits.append(credit(teams, x.clicks.get("click", [])))
    return preference(credits), len(clicks)


def interleaving_run(world: World, seed: int, cap: int) -> tuple[int, int | None]:
    """Interleaved impressions until the sign-test decision at 95% is reached and stays the
    same up to ``cap``, and the version it prefers (None: not stable by ``cap``)."""
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    winner = np.zeros(cap, np.int8)  # +1 candidate, -1 production, 0 tie
    for n in range(cap):
        user = world.users[rng.randrange(len(world.users))]
        items, teams = team_draft(world.lists[0][user], world.lists[1][user], world.k, rng)
        c: Credit = credit(teams, np.flatnonzero(nrng.random(len(items)) < world.click_probs(user, items)))
        winner[n] = 0 if c.winner is None else (1 if c.winner == 1 else -1)
    wins_b = np.cumsum(winner == 1)
    decided = np.cumsum(winner != 0)
    return stable_decision(wilson_side(wins_b, decided))


def ab_run(world: World, seed: int, cap: int) -> tuple[int, int | None]:
    """A/B impressions (both arms) until the two-proportion z-test at 95% on the per-impression
    click rate is reached and stays the same up to ``cap``, and the version it prefers."""
    rng = np.random.default_rng(seed + 10_000)
    q = np.array([[world.any_click_prob(v, u) for u in world.users] for v in (0, 1)])
    users = rng.integers(len(world.users), size=cap)
    arm = rng.integers(2, size=cap)
    hit = rng.random(cap) < q[arm, users]
    n = np.cumsum(np.stack([arm == 0, arm == 1]), axis=1)
    s = np.cumsum(np.stack([hit & (arm == 0), hit & (arm == 1)]), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = s / n
        zscore = (p[1] - p[0]) / np.sqrt(p[0] * (1 - p[0]) / n[0] + p[1] * (1 - p[1]) / n[1])
    side = np.where(np.isfinite(zscore) & (zscore > Z_95), 1, np.where(np.isfinite(zscore) & (zscore < -Z_95), -1, 0))
    return stable_decision(side)


def wilson_side(successes: np.ndarray, trials: np.ndarray) -> np.ndarray:
    """Per prefix: +1 when the Wilson interval of successes/trials lies above 0.5, -1 below, else 0."""
    z2 = Z_95 * Z_95
    m = np.maximum(trials, 1)
    p = successes / m
    centre = (p + z2 / (2 * m)) / (1 + z2 / m)
    half = Z_95 * np.sqrt(p * (1 - p) / m + z2 / (4 * m * m)) / (1 + z2 / m)
    return np.where((trials > 0) & (centre - half > 0.5), 1, np.where((trials > 0) & (centre + half < 0.5), -1, 0))


def stable_decision(side: np.ndarray) -> tuple[int, int | None]:
    """(impressions, choice): from that many impressions on, the test says the same thing at
    every later impression up to the end (1: the candidate, 0: production). A stream whose
    last test is undecided gives (its length, None)."""
    last = int(side[-1])
    if last == 0:
        return len(side), None
    changed = np.flatnonzero(side != last)
    return (int(changed[-1]) + 2 if len(changed) else 1), (1 if last == 1 else 0)


@dataclass(frozen=True)
class SeedResult:
    seed: int
    interleaving: int
    interleaving_choice: int | None
    ab: int
    ab_choice: int | None

    @property
    def ratio(self) -> float:
        return self.ab / self.interleaving


def efficiency(world: World, seeds: int, cap: int) -> list[SeedResult]:
    out = []
    for seed in range(seeds):
        n_i, c_i = interleaving_run(world, seed, cap)
        n_ab, c_ab = ab_run(world, seed, cap)
        out.append(SeedResult(seed, n_i, c_i, n_ab, c_ab))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=SimConfig.seeds)
    parser.add_argument("--users", type=int, default=SimConfig.users)
    parser.add_argument("--http-impressions", type=int, default=SimConfig.http_impressions)
    parser.add_argument("--max-impressions", type=int, default=SimConfig.max_impressions)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    cfg = SimConfig(
        seeds=args.seeds, users=args.users, http_impressions=args.http_impressions, max_impressions=args.max_impressions
    )
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="online-sim-"))
    client, _ = build(workdir, cfg)
    with client:
        world = fetch_world(client, cfg)
        truth = (world.true_ctr(0), world.true_ctr(1))
        better = int(truth[1] > truth[0])
        pref, n_clicks = http_phase(client, world, cfg.http_impressions, seed=1)
    print(f"versions production={world.versions[0]} candidate={world.versions[1]}")
    print(
        f"true click-through: production {truth[0]:.4f}, candidate {truth[1]:.4f} (margin {truth[1] - truth[0]:+.4f})"
    )
    print(
        f"HTTP phase: {pref.impressions} interleaved impressions, {n_clicks} clicks; candidate wins "
        f"{pref.wins_b}, production {pref.wins_a}, ties {pref.ties}; share {pref.share_b:.3f} "
        f"[{pref.interval[0]:.3f}, {pref.interval[1]:.3f}], sign test p={pref.p_value:.2g}"
    )
    results = efficiency(world, cfg.seeds, cfg.max_impressions)
    print("\n| seed | interleaving impressions | choice | A/B impressions | choice | A/B ÷ interleaving |")
    print("|---:|---:|---|---:|---|---:|")
    name = {0: "production", 1: "candidate", None: "undecided"}
    for r in results:
        print(
            f"| {r.seed} | {r.interleaving:,} | {name[r.interleaving_choice]} | {r.ab:,} | {name[r.ab_choice]} "
            f"| {r.ratio:.1f} |"
        )
    median = float(np.median([r.ratio for r in results]))
    right_i = sum(r.interleaving_choice == better for r in results)
    right_ab = sum(r.ab_choice == better for r in results)
    print(
        f"\nmedian A/B ÷ interleaving: {median:.1f} (target ≥ {RATIO_TARGET:.0f}); right decisions: "
        f"interleaving {right_i}/{len(results)}, A/B {right_ab}/{len(results)}"
    )
    ok = better == 1 and pref.decided in (better, None) and median >= RATIO_TARGET and right_i >= 0.95 * len(results)
    if not ok:
        print("TARGET MISSED", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
