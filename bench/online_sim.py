"""Online-evaluation simulator: synthetic users with known preferences click by a known model of
relevance and position; production and a candidate (two real trained versions) are compared by
team-draft interleaving and by an A/B split, and the impressions each needs for the right
decision at 95% are counted.

World
-----
The seeded generator's data (``recsys.datasets.synthetic``) with its clusters as the truth: an
item is relevant to a user of its cluster. A shown item at position ``p`` (0-based) is clicked
with probability ``θ × relevance × bias(p)`` (position-based model), ``relevance`` = 1 in the
user's cluster and ``REL_OUT / REL_IN`` outside it, ``bias(p) = 1 / (p + 1) ** POSITION_DECAY``,
``θ`` the visitor's click propensity, ``REL_IN`` on average. Production is an ALS with 8
factors, the candidate one with 16 (``SimConfig``); each version's true click-through follows
exactly from the click model and its lists, so the margin is known: with the defaults the
candidate's P(≥ 1 click) per impression is about 4% higher (0.510 → 0.530 under the default
visitors; 0.614 → 0.640 at θ = ``REL_IN``) and its clicks per impression 4% (0.930 → 0.966;
the run prints the exact figures). A relative 4% is a large online win, not a small one.

Phases
------
1. HTTP: the real API (in-process TestClient) and store serve ``--http-impressions`` interleaved
   lists (``RECSYS_INTERLEAVE=production,challenger``); simulated clicks are posted with their
   ``request_id``; the preference is computed from the impressions and credited clicks read
   back from the store, and must agree with the truth's direction.
2. Sample efficiency, per seed: one stream of visitors (:class:`Population`: each a user's
   profile, uniform over the users; a click propensity θ ~ Beta with mean ``REL_IN`` and
   concentration ``--concentration`` (2: sd 0.28); a lognormal number of impressions, mean
   ``--session-mean`` (5), σ = ``SESSION_SIGMA``), up to ``--max-impressions``, fed to both
   methods — the same visitors, sessions and θ, impressions counted alike (one served list):

   - interleaving: every impression a team-draft merge by the API's own :func:`team_draft`
     (every coin sequence enumerated, so the merge's distribution is exact), clicks credited
     to the team; the test is the sign test with ties excluded — the candidate's share of the
     won impressions against ½ — its variance clustered by visitor (delta method);
   - A/B: each visitor in one arm by a coin (as the service's stable user hash), served that
     version's list; per arm the share of impressions with at least one click, the
     difference's two-sided z-test with each arm's delta-method variance clustered by visitor
     (the per-impression test would be too narrow once a visitor has several impressions).

   With one impression per visitor both reduce to the plain binomial tests. Both are checked
   after every visitor — the same impression counts — and what a method *needs* is the number
   of impressions from which on its test gives the same decision at every later check up to
   the end of the stream (a first crossing alone would count lucky early flukes); a method
   undecided at the end counts the whole stream (a lower bound). ``--sweep`` prints this over
   user heterogeneity × session length × a cascade (a click ends the visit with probability
   ``stop``) instead of the per-seed table.

3. Off-policy, per seed: ``--ope-impressions`` impressions logged by a version's exploration
   policy (the API's own :func:`~recsys.evaluation.offpolicy.explore`, ε = ``--epsilon`` over its
   top ``--pool``, as ``RECSYS_EXPLORE_EPSILON`` serves), each shown item's propensity logged,
   clicked at θ = ``REL_IN`` (the visitors' mean: the expected clicks, which the estimators
   estimate, are the same under the visitors of phase 2);
   the other version's click-through (expected clicks per impression over its k positions, exact
   from the click model and its lists) estimated by IPS, SNIPS and DR with 95% bootstrap
   intervals (:func:`~recsys.evaluation.offpolicy.compare`), and the gate's ``off_policy`` rule
   (pipelines/gate.py) applied to the paired comparison with production — for the candidate
   (better: must promote) and for a worse one, production's own ranks k+1…2k with its scores
   (must refuse). Production logs in both.

Done when (issue 23): (a) both reach the right decision, and the median over the seeds of A/B
impressions ÷ interleaving impressions is ≥ 10; (b) the SNIPS estimate of the candidate's
click-through is within ±10% of its true value in every seed and its interval covers the truth
in ≥ 90% of the seeds; (c) the gate promotes the better candidate and refuses the worse one in
every seed. The tables go to stdout; exit 1 when a target is missed. How the ratio depends on
the visitors, the margin and the list length: docs/online-evaluation.md.

    PYTHONPATH=. .venv/bin/python bench/online_sim.py [--seeds 20] [--workdir DIR] [--sweep]
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.config import GateConfig, OffPolicyBounds
from pipelines.gate import decide
from recsys.evaluation.interleaving import credit, preference, team_draft
from recsys.evaluation.offpolicy import LoggedList, OffPolicyComparison, TargetList, compare, explore
from recsys.evaluation.online import Z_95

logger = logging.getLogger("online_sim")

REL_IN = 0.35
REL_OUT = 0.02
POSITION_DECAY = 0.8
RATIO_TARGET = 10.0
SNIPS_TOLERANCE = 0.10
COVERAGE_TARGET = 0.90
#: σ of the lognormal number of impressions per visitor (efficiency phase)
SESSION_SIGMA = 1.0


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
    #: both streams' length: a method undecided by then counts it (a lower bound)
    max_impressions: int = 200_000
    #: ALS (factors, iterations) of the two versions: the candidate with twice the factors,
    #: about three points of click-through better (the run prints the exact margin)
    production: tuple[int, int] = (8, 8)
    candidate: tuple[int, int] = (16, 8)
    #: off-policy phase: impressions logged per seed, the exploration policy, bootstrap resamples
    ope_impressions: int = 100_000
    epsilon: float = 0.5
    pool: int = 40
    bootstrap: int = 300


@dataclass
class World:
    """Both versions' lists per user (as the API serves them), the click model, the truth."""

    versions: tuple[str, str]  # production, candidate
    users: list[str]
    lists: tuple[dict[str, list[str]], dict[str, list[str]]]
    #: each version's scores of its k-list; its ranking's top ``pool`` (what it explores over)
    #: with their scores
    scores: tuple[dict[str, list[float]], dict[str, list[float]]]
    pools: tuple[dict[str, list[str]], dict[str, list[str]]]
    pool_scores: tuple[dict[str, list[float]], dict[str, list[float]]]
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

    def population_ctr(self, version: int, concentration: float) -> float:
        """P(an impression gets at least one click) when the visitors' propensity θ is Beta
        with mean ``REL_IN`` and concentration κ (``inf``: θ = ``REL_IN``), over the users;
        a click ending the visit does not change it (the first click happens all the same)."""
        if np.isinf(concentration):
            return self.true_ctr(version)
        from scipy.stats import beta

        m = REL_IN
        theta = beta.ppf((np.arange(4_000) + 0.5) / 4_000, concentration * m, concentration * (1 - m))
        per_user = [
            np.mean(1 - np.prod(1 - np.outer(theta, self.click_probs(u, self.lists[version][u]) / REL_IN), axis=1))
            for u in self.users
        ]
        return float(np.mean(per_user))

    def true_clicks(self, target: int) -> float:
        """Expected clicks per impression of a target's k-list (:meth:`target`), averaged over
        the users (the click-through the off-policy estimators estimate)."""
        return float(np.mean([self.click_probs(u, list(self.target(target, u).items)).sum() for u in self.users]))

    def target(self, target: int, user: str) -> TargetList:
        """0 production's k-list, 1 the candidate's, 2 the worse one: production's ranks k+1…2k."""
        if target == 2:
            lo, hi = self.k, 2 * self.k
            return TargetList(tuple(self.pools[0][user][lo:hi]), tuple(self.pool_scores[0][user][lo:hi]))
        return TargetList(tuple(self.lists[target][user]), tuple(self.scores[target][user]))


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
    scores: tuple[dict[str, list[float]], dict[str, list[float]]] = ({}, {})
    pools: tuple[dict[str, list[str]], dict[str, list[str]]] = ({}, {})
    pool_scores: tuple[dict[str, list[float]], dict[str, list[float]]] = ({}, {})
    for v, out, sc, pool, psc in zip(versions, lists, scores, pools, pool_scores):
        for u in users:
            for k, ids, sco in ((cfg.k, out, sc), (max(2 * cfg.k, cfg.pool), pool, psc)):
                r = client.get(f"/users/{u}/recommendations", params={"k": k, "model_version": v})
                r.raise_for_status()
                ids[u] = [i["item_id"] for i in r.json()["items"]]
                sco[u] = [float(i["score"]) for i in r.json()["items"]]
    user_cluster, item_cluster = synthetic_clusters(cfg.users, cfg.items, cfg.clusters, cfg.data_seed)
    return World(
        versions=versions,
        users=users,
        lists=lists,
        scores=scores,
        pools=pools,
        pool_scores=pool_scores,
        user_cluster=user_cluster,
        item_cluster=item_cluster,
        k=cfg.k,
    )


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
    # flush() returns once the queue is empty, which can be before the writer thread has
    # committed the batch it took off the queue: wait for that one
    deadline = time.monotonic() + 30
    while True:
        stored = [x for x in client.app.state.store.impressions() if x.impression.request_id in wanted]
        if len(stored) == n or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(stored) == n, f"{len(stored)} of {n} impressions stored"
    credits = []
    for x in stored:
        teams = [world.versions.index(v) for v in x.impression.sources]
        credits.append(credit(teams, x.clicks.get("click", [])))
    return preference(credits), len(clicks)


@dataclass(frozen=True)
class Population:
    """Who the impressions of the efficiency phase come from: a stream of visitors, each with
    a user's profile (uniform over the users: their cluster and both versions' lists), an own
    click propensity and a session of several impressions. Visitors differ in how much they
    click, which the within-visitor comparison of interleaving cancels and an A/B split between
    visitors does not; a session's impressions are correlated, so both tests are clustered by
    visitor."""

    #: Beta concentration κ of the click propensity θ (mean ``REL_IN``; sd √(m(1−m)/(κ+1))):
    #: 2 gives sd ≈ 0.28, many visitors who hardly click and a few who click a lot;
    #: ``inf``: every visitor has θ = ``REL_IN`` (the click model of the other phases)
    concentration: float = 2.0
    #: mean impressions per visitor, lognormal with σ = ``SESSION_SIGMA`` (heavy-tailed
    #: activity); 1: every visitor sees one list
    session_mean: float = 5.0
    #: after a click the visitor leaves the list with this probability (0: the position-based
    #: model, every position examined independently; > 0: a dependent-click cascade)
    stop: float = 0.0

    def label(self) -> str:
        return f"κ={self.concentration:g}, session mean {self.session_mean:g}, stop {self.stop:g}"


@dataclass(frozen=True)
class Visitors:
    """One seed's stream, cut at ``cap`` impressions: per impression its profile user (index),
    its visitor's propensity and its visitor; ``ends`` the impression count after each visitor."""

    user: np.ndarray
    theta: np.ndarray
    visitor: np.ndarray
    ends: np.ndarray


def visitors(pop: Population, n_users: int, cap: int, rng: np.random.Generator) -> Visitors:
    m = REL_IN
    n_vis = cap  # at least one impression each: never more visitors than impressions
    if np.isinf(pop.concentration):
        theta = np.full(n_vis, m)
    else:
        theta = rng.beta(pop.concentration * m, pop.concentration * (1 - m), size=n_vis)
    if pop.session_mean <= 1:
        sizes = np.ones(n_vis, np.int64)
    else:
        mu = np.log(pop.session_mean) - SESSION_SIGMA**2 / 2
        sizes = np.maximum(1, np.rint(rng.lognormal(mu, SESSION_SIGMA, size=n_vis))).astype(np.int64)
    ends = np.cumsum(sizes)
    last = int(np.searchsorted(ends, cap))  # the visitor in whose session the stream is cut
    ends = np.minimum(ends[: last + 1], cap)
    visitor = np.repeat(np.arange(last + 1), np.diff(ends, prepend=0))
    profile = rng.integers(n_users, size=last + 1)
    return Visitors(user=profile[visitor], theta=theta[visitor], visitor=visitor, ends=ends)


def sample_clicks(base: np.ndarray, theta: np.ndarray, stop: float, rng: np.random.Generator) -> np.ndarray:
    """Clicks (impressions × positions, bool): position ``p`` clicked with probability
    θ × ``base[:, p]``; under ``stop`` > 0 a click ends the visit with that probability."""
    probs = theta[:, None] * base
    clicked = rng.random(probs.shape) < probs
    if stop > 0:
        leaves = rng.random(probs.shape) < stop
        alive = np.ones(len(probs), bool)
        for p in range(probs.shape[1]):
            clicked[:, p] &= alive
            alive &= ~(clicked[:, p] & leaves[:, p])
    return clicked


class _Coins:
    """A fixed coin sequence (the bits of ``code``) in place of team draft's random source, so
    every draw of the API's :func:`team_draft` can be enumerated with its exact probability."""

    def __init__(self, code: int) -> None:
        self.code = code

    def randrange(self, n: int) -> int:
        assert n == 2
        bit, self.code = self.code & 1, self.code >> 1
        return bit


@dataclass(frozen=True)
class Merged:
    """Per user, every equally likely team-draft merge of the two versions' k-lists: the
    click model's ``base`` (probability ÷ θ) and the team (0, 1; −1 past the list's end) per position."""

    base: np.ndarray  # users × draws × k
    team: np.ndarray


def merged(world: World) -> Merged:
    k = world.k
    draws = 2 ** ((k + 1) // 2)  # team draft flips a coin at most once per two positions
    base = np.zeros((len(world.users), draws, k))
    team = np.full((len(world.users), draws, k), -1, np.int8)
    for ui, user in enumerate(world.users):
        for code in range(draws):
            items, teams = team_draft(world.lists[0][user], world.lists[1][user], k, _Coins(code))  # type: ignore[arg-type]
            base[ui, code, : len(items)] = world.click_probs(user, items) / REL_IN
            team[ui, code, : len(items)] = teams
    return Merged(base, team)


def ab_bases(world: World) -> np.ndarray:
    """versions × users × k: the click model's probability ÷ θ per position of each version's list."""
    out = np.zeros((2, len(world.users), world.k))
    for v in (0, 1):
        for ui, user in enumerate(world.users):
            items = world.lists[v][user]
            out[v, ui, : len(items)] = world.click_probs(user, items) / REL_IN
    return out


def clustered_ratio(num: np.ndarray, den: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per visitor boundary: Σnum / Σden over the visitors so far and its delta-method
    (cluster-robust) variance Σ_v (num_v − R·den_v)² / (Σden)², the visitor the unit — with one
    impression each this is the binomial R(1 − R)/n."""
    idx = np.r_[0, ends[:-1]]
    y = np.add.reduceat(num.astype(float), idx)
    n = np.add.reduceat(den.astype(float), idx)
    sy, sn = np.cumsum(y), np.cumsum(n)
    syy, syn, snn = np.cumsum(y * y), np.cumsum(y * n), np.cumsum(n * n)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = sy / sn
        var = (syy - 2 * r * syn + r * r * snn) / (sn * sn)
    return r, var


def side_of(z: np.ndarray) -> np.ndarray:
    """+1 above the 95% bound, −1 below its negative, 0 between (and where z is undefined)."""
    ok = np.isfinite(z)
    return np.where(ok & (z > Z_95), 1, np.where(ok & (z < -Z_95), -1, 0))


def interleaving_run(world: World, mix: Merged, stream: Visitors, stop: float, seed: int) -> tuple[int, int | None]:
    """Interleaved impressions of the stream: the candidate's share of the won impressions,
    tested against ½ at 95% (a sign test with ties excluded, clustered by visitor), checked
    after every visitor; (impressions to a stable decision, the version it prefers)."""
    rng = np.random.default_rng(seed)
    draw = rng.integers(mix.base.shape[1], size=len(stream.user))
    team = mix.team[stream.user, draw]
    clicked = sample_clicks(mix.base[stream.user, draw], stream.theta, stop, rng)
    wins_b = (clicked & (team == 1)).sum(axis=1) > (clicked & (team == 0)).sum(axis=1)
    wins_a = (clicked & (team == 0)).sum(axis=1) > (clicked & (team == 1)).sum(axis=1)
    share, var = clustered_ratio(wins_b, wins_b | wins_a, stream.ends)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (share - 0.5) / np.sqrt(var)
    return stable_decision(side_of(z), stream.ends)


def ab_run(bases: np.ndarray, stream: Visitors, stop: float, seed: int) -> tuple[int, int | None]:
    """A/B impressions of the same stream, each visitor in one arm (a coin, as a stable hash of
    the user splits): per arm the impressions with at least one click ÷ impressions, the
    difference's two-sided z-test at 95% with each arm's delta-method variance clustered by
    visitor, checked after every visitor; (impressions to a stable decision, the version)."""
    rng = np.random.default_rng(seed + 10_000)
    arm = rng.integers(2, size=len(stream.ends))[stream.visitor]
    hit = sample_clicks(bases[arm, stream.user], stream.theta, stop, rng).any(axis=1)
    ones = np.ones(len(hit), bool)
    rates, variances = [], []
    for a in (0, 1):
        r, var = clustered_ratio(hit & (arm == a), ones & (arm == a), stream.ends)
        rates.append(r)
        variances.append(var)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (rates[1] - rates[0]) / np.sqrt(variances[0] + variances[1])
    return stable_decision(side_of(z), stream.ends)


def stable_decision(side: np.ndarray, at: np.ndarray) -> tuple[int, int | None]:
    """(impressions, choice): from ``at[i]`` impressions on, the test (``side[i]``, checked at
    ``at[i]``) says the same thing at every later check up to the end (1: the candidate,
    0: production). A stream whose last test is undecided gives (its length, None)."""
    last = int(side[-1])
    if last == 0:
        return int(at[-1]), None
    changed = np.flatnonzero(side != last)
    return int(at[changed[-1] + 1] if len(changed) else at[0]), (1 if last == 1 else 0)


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


def efficiency(world: World, seeds: int, cap: int, population: Population | None = None) -> list[SeedResult]:
    """Per seed, one visitor stream of ``cap`` impressions run through both methods (the same
    visitors, sessions and propensities; clicks drawn independently)."""
    pop = population or Population()
    mix, bases = merged(world), ab_bases(world)
    out = []
    for seed in range(seeds):
        stream = visitors(pop, len(world.users), cap, np.random.default_rng(seed + 30_000))
        n_i, c_i = interleaving_run(world, mix, stream, pop.stop, seed)
        n_ab, c_ab = ab_run(bases, stream, pop.stop, seed)
        out.append(SeedResult(seed, n_i, c_i, n_ab, c_ab))
    return out


def exploration_log(world: World, logging_version: int, n: int, epsilon: float, pool: int, seed: int):
    """``n`` impressions shown by ``logging_version``'s exploration policy to uniformly drawn
    users, clicked by the click model: (users, logged lists with propensities and clicks)."""
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed + 20_000)
    users, logged = [], []
    for _ in range(n):
        user = world.users[rng.randrange(len(world.users))]
        items, props = explore(world.pools[logging_version][user], world.k, epsilon, pool, rng)
        clicked = np.flatnonzero(nrng.random(len(items)) < world.click_probs(user, items))
        users.append(user)
        logged.append(LoggedList(tuple(items), tuple(props), tuple(int(c) for c in clicked)))
    return users, logged


def off_policy_run(world: World, cfg: SimConfig, seed: int) -> tuple[OffPolicyComparison, OffPolicyComparison]:
    """Production logs with exploration; the candidate and the worse target are each compared
    with production off-policy on that log."""
    users, logged = exploration_log(world, 0, cfg.ope_impressions, cfg.epsilon, cfg.pool, seed)

    def targets(t: int) -> list[TargetList]:
        cache = {u: world.target(t, u) for u in world.users}
        return [cache[u] for u in users]

    prod = targets(0)
    better = compare(logged, targets(1), prod, bootstrap=cfg.bootstrap, seed=seed)
    worse = compare(logged, targets(2), prod, bootstrap=cfg.bootstrap, seed=seed)
    return better, worse


@dataclass(frozen=True)
class OffPolicySeed:
    seed: int
    better: OffPolicyComparison  # the candidate against production
    worse: OffPolicyComparison  # production's ranks k+1…2k against production
    promotes_better: bool
    refuses_worse: bool


def gate_off_policy(comparison: OffPolicyComparison) -> bool:
    """Whether the gate's off-policy rule lets the candidate through (the other rules are given
    passing inputs, so only ``off_policy`` can refuse)."""
    cfg = GateConfig(also=[], popularity_baseline=False, off_policy=OffPolicyBounds())
    decision = decide(cfg, {cfg.metric: 1.0, "coverage": 1.0}, None, {}, True, off_policy=comparison)
    assert set(decision.refused_by) <= {"off_policy"}, decision.reasons
    return decision.passed


def off_policy(world: World, cfg: SimConfig) -> list[OffPolicySeed]:
    out = []
    for seed in range(cfg.seeds):
        better, worse = off_policy_run(world, cfg, seed)
        out.append(OffPolicySeed(seed, better, worse, gate_off_policy(better), not gate_off_policy(worse)))
        logger.info("off-policy seed %d done", seed)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=SimConfig.seeds)
    parser.add_argument("--users", type=int, default=SimConfig.users)
    parser.add_argument("--k", type=int, default=SimConfig.k, help="list length")
    parser.add_argument("--production-factors", type=int, default=SimConfig.production[0])
    parser.add_argument("--http-impressions", type=int, default=SimConfig.http_impressions)
    parser.add_argument("--max-impressions", type=int, default=SimConfig.max_impressions)
    parser.add_argument("--concentration", type=float, default=Population.concentration)
    parser.add_argument("--session-mean", type=float, default=Population.session_mean)
    parser.add_argument("--stop", type=float, default=Population.stop)
    parser.add_argument("--sweep", action="store_true", help="only the efficiency table over populations")
    parser.add_argument("--ope-impressions", type=int, default=SimConfig.ope_impressions)
    parser.add_argument("--epsilon", type=float, default=SimConfig.epsilon)
    parser.add_argument("--pool", type=int, default=SimConfig.pool)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    cfg = SimConfig(
        seeds=args.seeds,
        users=args.users,
        k=args.k,
        production=(args.production_factors, SimConfig.production[1]),
        http_impressions=args.http_impressions,
        max_impressions=args.max_impressions,
        ope_impressions=args.ope_impressions,
        epsilon=args.epsilon,
        pool=args.pool,
    )
    pop = Population(args.concentration, args.session_mean, args.stop)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="online-sim-"))
    client, _ = build(workdir, cfg)
    with client:
        world = fetch_world(client, cfg)
        truth = (world.population_ctr(0, pop.concentration), world.population_ctr(1, pop.concentration))
        better = int(truth[1] > truth[0])
        pref, n_clicks = http_phase(client, world, cfg.http_impressions, seed=1)
    clicks = (world.true_clicks(0), world.true_clicks(1))
    print(f"versions production={world.versions[0]} candidate={world.versions[1]} (k = {world.k})")
    print(
        f"truth: P(≥ 1 click) per impression under the visitors ({pop.label()}): production {truth[0]:.4f}, "
        f"candidate {truth[1]:.4f} (margin {truth[1] - truth[0]:+.4f}, {truth[1] / truth[0] - 1:+.1%}); "
        f"clicks per impression {clicks[0]:.4f} vs {clicks[1]:.4f} ({clicks[1] / clicks[0] - 1:+.1%})"
    )
    print(
        f"HTTP phase: {pref.impressions} interleaved impressions, {n_clicks} clicks; candidate wins "
        f"{pref.wins_b}, production {pref.wins_a}, ties {pref.ties}; share {pref.share_b:.3f} "
        f"[{pref.interval[0]:.3f}, {pref.interval[1]:.3f}], sign test p={pref.p_value:.2g}"
    )
    if args.sweep:
        sweep(world, cfg)
        return 0
    results = efficiency(world, cfg.seeds, cfg.max_impressions, pop)
    print("\n| seed | interleaving impressions | choice | A/B impressions | choice | A/B ÷ interleaving |")
    print("|---:|---:|---|---:|---|---:|")
    name = {0: "production", 1: "candidate", None: "undecided"}
    for r in results:
        print(
            f"| {r.seed} | {r.interleaving:,} | {name[r.interleaving_choice]} | {r.ab:,} | {name[r.ab_choice]} "
            f"| {r.ratio:.1f} |"
        )
    summary = Summary.of(results, better)
    print(
        f"\nmedian A/B ÷ interleaving: {summary.median_ratio:.1f} (target ≥ {RATIO_TARGET:.0f}); ratio of the "
        f"medians {summary.ratio_of_medians:.1f} ({summary.ab_median:,.0f} ÷ {summary.interleaving_median:,.0f}); "
        f"right decisions: interleaving {summary.right_interleaving}/{len(results)}, A/B {summary.right_ab}/"
        f"{len(results)} (an undecided A/B counts the whole stream, {cfg.max_impressions:,}: a lower bound)"
    )
    ok = (
        better == 1
        and pref.decided in (better, None)
        and summary.median_ratio >= RATIO_TARGET
        and summary.right_interleaving >= 0.95 * len(results)
    )
    ok = report_off_policy(world, cfg, off_policy(world, cfg)) and ok
    if not ok:
        print("TARGET MISSED", file=sys.stderr)
    return 0 if ok else 1


@dataclass(frozen=True)
class Summary:
    median_ratio: float
    interleaving_median: float
    ab_median: float
    right_interleaving: int
    right_ab: int

    @property
    def ratio_of_medians(self) -> float:
        return self.ab_median / self.interleaving_median

    @classmethod
    def of(cls, results: list[SeedResult], better: int) -> Summary:
        return cls(
            median_ratio=float(np.median([r.ratio for r in results])),
            interleaving_median=float(np.median([r.interleaving for r in results])),
            ab_median=float(np.median([r.ab for r in results])),
            right_interleaving=sum(r.interleaving_choice == better for r in results),
            right_ab=sum(r.ab_choice == better for r in results),
        )


#: the populations ``--sweep`` compares: user heterogeneity × session length × cascade
SWEEP = [
    Population(concentration, session, stop)
    for stop in (0.0, 0.5)
    for concentration in (float("inf"), 10.0, 2.0, 0.5)
    for session in (1.0, 5.0, 20.0)
]


def sweep(world: World, cfg: SimConfig) -> None:
    """The efficiency phase over :data:`SWEEP` on one world: how the ratio depends on the visitors."""
    print(
        "\n| κ (propensity) | impressions per visitor | stop after click | P(≥ 1 click) production → candidate "
        "| interleaving median | A/B median | right (interleaving, A/B) | median A/B ÷ interleaving "
        "| ratio of medians |"
    )
    print("|---:|---:|---:|---|---:|---:|---|---:|---:|")
    for pop in SWEEP:
        truth = (world.population_ctr(0, pop.concentration), world.population_ctr(1, pop.concentration))
        s = Summary.of(efficiency(world, cfg.seeds, cfg.max_impressions, pop), int(truth[1] > truth[0]))
        print(
            f"| {pop.concentration:g} | {pop.session_mean:g} | {pop.stop:g} | {truth[0]:.4f} → {truth[1]:.4f} "
            f"| {s.interleaving_median:,.0f} | {s.ab_median:,.0f} | {s.right_interleaving}, {s.right_ab} "
            f"| {s.median_ratio:.1f} | {s.ratio_of_medians:.1f} |",
            flush=True,
        )


def report_off_policy(world: World, cfg: SimConfig, runs: list[OffPolicySeed]) -> bool:
    """Print the off-policy table; whether (b) and (c) hold."""
    truth = (world.true_clicks(0), world.true_clicks(1), world.true_clicks(2))
    print(
        f"\noff-policy: {cfg.ope_impressions:,} impressions per seed logged by production, ε = {cfg.epsilon} over "
        f"its top {cfg.pool}; true clicks per impression: production {truth[0]:.4f}, candidate {truth[1]:.4f}, "
        f"worse (production's ranks {world.k + 1}–{2 * world.k}) {truth[2]:.4f}"
    )
    print(
        "\n| seed | candidate IPS | SNIPS [95%] | DR | SNIPS error | covers | matched | "
        "candidate − production [95%] | gate: candidate | worse − production [95%] | gate: worse |"
    )
    print("|---:|---:|---|---:|---:|---|---:|---|---|---|---|")
    errors, covered = [], 0
    for r in runs:
        c, d = r.better.candidate, r.better.difference
        err = c.snips.value / truth[1] - 1
        hit = c.snips.interval[0] <= truth[1] <= c.snips.interval[1]
        errors.append(err)
        covered += hit
        print(
            f"| {r.seed} | {c.ips.value:.4f} | {c.snips.value:.4f} [{c.snips.interval[0]:.4f}, {c.snips.interval[1]:.4f}] "
            f"| {c.dr.value:.4f} | {err:+.1%} | {'yes' if hit else 'no'} | {c.matched:,} "
            f"| {d.value:+.4f} [{d.interval[0]:+.4f}, {d.interval[1]:+.4f}] "
            f"| {'promoted' if r.promotes_better else 'REFUSED'} "
            f"| {r.worse.difference.value:+.4f} [{r.worse.difference.interval[0]:+.4f}, "
            f"{r.worse.difference.interval[1]:+.4f}] | {'refused' if r.refuses_worse else 'PROMOTED'} |"
        )
    within = sum(abs(e) <= SNIPS_TOLERANCE for e in errors)
    gate_ok = sum(r.promotes_better and r.refuses_worse for r in runs)
    print(
        f"\nSNIPS within ±{SNIPS_TOLERANCE:.0%}: {within}/{len(runs)} (largest error {max(map(abs, errors)):.1%}); "
        f"interval covers the truth: {covered}/{len(runs)} (target ≥ {COVERAGE_TARGET:.0%}); "
        f"gate right both ways: {gate_ok}/{len(runs)}"
    )
    return within == len(runs) and covered >= COVERAGE_TARGET * len(runs) and gate_ok == len(runs)


if __name__ == "__main__":
    sys.exit(main())
