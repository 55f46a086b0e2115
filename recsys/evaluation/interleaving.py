"""Team-draft interleaving (Radlinski, Kurup & Joachims, 2008): two rankers' lists merged into
one shown list, each position remembering which ranker ("team") contributed it; a click is
credited to its position's team, and an impression is won by the team with more clicks on it.

The preference over many impressions is a sign test: among impressions one team won, the share
won by the challenger, with a Wilson interval; the decision at 95% is the interval leaving 0.5.
Framework-free: the API merges with :func:`team_draft`, the report and the simulator
(bench/online_sim.py) credit with :func:`credit` and :func:`preference`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from recsys.evaluation.online import Z_95, wilson_interval


def team_draft(a: Sequence[str], b: Sequence[str], k: int, rng: random.Random) -> tuple[list[str], list[int]]:
    """Merge ranked lists ``a`` and ``b`` into at most ``k`` distinct items; returns the items
    and, per position, the team that picked it (0: ``a``, 1: ``b``).

    Each round the team with fewer picks so far picks next (a coin flip when even): its
    highest-ranked item not yet shown. A team with nothing left to add stops picking.
    """
    shown: list[str] = []
    teams: list[int] = []
    seen: set[str] = set()
    lists = (list(a), list(b))
    cursor = [0, 0]
    picks = [0, 0]

    def next_item(team: int) -> str | None:
        items = lists[team]
        while cursor[team] < len(items) and items[cursor[team]] in seen:
            cursor[team] += 1
        return items[cursor[team]] if cursor[team] < len(items) else None

    while len(shown) < k:
        options = [t for t in (0, 1) if next_item(t) is not None]
        if not options:
            break
        if len(options) == 1:
            team = options[0]
        elif picks[0] != picks[1]:
            team = 0 if picks[0] < picks[1] else 1
        else:
            team = rng.randrange(2)
        item = next_item(team)
        shown.append(item)
        teams.append(team)
        seen.add(item)
        picks[team] += 1
    return shown, teams


@dataclass(frozen=True)
class Credit:
    """Clicks of one interleaved impression credited to each team."""

    a: int
    b: int

    @property
    def winner(self) -> int | None:
        """0 (``a``), 1 (``b``) or None (a tie, including no click at all)."""
        if self.a == self.b:
            return None
        return 0 if self.a > self.b else 1


def credit(teams: Sequence[int], clicked_positions: Iterable[int]) -> Credit:
    """Credit each clicked position (0-based; repeats count once) to the team that filled it."""
    clicked = {int(p) for p in clicked_positions if 0 <= int(p) < len(teams)}
    b = sum(1 for p in clicked if teams[p] == 1)
    return Credit(a=len(clicked) - b, b=b)


@dataclass(frozen=True)
class Preference:
    """Over interleaved impressions: wins per team, ties, and the challenger's (``b``'s) share
    of the decided impressions with its Wilson interval and the two-sided sign-test p-value."""

    impressions: int
    wins_a: int
    wins_b: int
    ties: int
    share_b: float
    interval: tuple[float, float]
    p_value: float

    @property
    def decided(self) -> int | None:
        """0 or 1 when the interval excludes 0.5 (that team is preferred), else None."""
        lo, hi = self.interval
        if lo > 0.5:
            return 1
        if hi < 0.5:
            return 0
        return None


def preference(credits: Iterable[Credit], z: float = Z_95) -> Preference:
    wins = [0, 0]
    n = ties = 0
    for c in credits:
        n += 1
        w = c.winner
        if w is None:
            ties += 1
        else:
            wins[w] += 1
    decided = wins[0] + wins[1]
    return Preference(
        impressions=n,
        wins_a=wins[0],
        wins_b=wins[1],
        ties=ties,
        share_b=wins[1] / decided if decided else 0.5,
        interval=wilson_interval(wins[1], decided, z),
        p_value=sign_test(wins[1], decided),
    )


def sign_test(successes: int, trials: int) -> float:
    """Two-sided exact binomial p-value of ``successes`` in ``trials`` under p = 0.5."""
    if trials <= 0:
        return 1.0
    k = min(successes, trials - successes)
    tail = sum(math.comb(trials, i) for i in range(k + 1)) / 2**trials
    return min(1.0, 2 * tail)
