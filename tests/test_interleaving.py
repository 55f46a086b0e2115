"""Team-draft interleaving on hand-computed cases: the merge, the credit per position, the sign
test; and over the API, interleaved answers naming the version behind each position."""

from __future__ import annotations

import random

import pytest

from recsys.evaluation.interleaving import Credit, credit, preference, sign_test, team_draft


class Coins(random.Random):
    """The coin flips of the draft, given in order."""

    def __init__(self, flips: list[int]) -> None:
        super().__init__(0)
        self.flips = list(flips)

    def randrange(self, n: int) -> int:  # noqa: D102 - the draft only flips coins
        return self.flips.pop(0)


def test_team_draft_hand_computed():
    a, b = ["a1", "a2", "a3", "s"], ["s", "b2", "b3"]
    # round 1 even → coin 0: a picks a1; round 2 a is ahead: b picks s; round 3 even → coin 1:
    # b picks b2; round 4 b is ahead: a picks a2 (its next unshown); round 5 even → coin 0: a3
    items, teams = team_draft(a, b, 5, Coins([0, 1, 0]))
    assert items == ["a1", "s", "b2", "a2", "a3"]
    assert teams == [0, 1, 1, 0, 0]
    # an exhausted team stops picking; the other fills the list; no item twice
    items, teams = team_draft(["x"], ["x", "y", "z"], 5, Coins([0]))
    assert items == ["x", "y", "z"] and teams == [0, 1, 1]


def test_credit_per_position_hand_computed():
    teams = [0, 1, 1, 0, 0]
    # clicks on positions 1 (b), 2 (b) and 3 (a); a repeat click and one off the list count nothing
    c = credit(teams, [1, 2, 3, 2, 9])
    assert c == Credit(a=1, b=2) and c.winner == 1
    assert credit(teams, [0, 1]).winner is None  # one each: a tie
    assert credit(teams, []).winner is None


def test_preference_sign_test_hand_computed():
    credits = [Credit(0, 1)] * 7 + [Credit(2, 1)] * 3 + [Credit(0, 0), Credit(1, 1)]
    p = preference(credits)
    assert (p.impressions, p.wins_a, p.wins_b, p.ties) == (12, 3, 7, 2)
    assert p.share_b == 0.7
    # two-sided exact binomial: 2 * (C(10,0) + C(10,1) + C(10,2) + C(10,3)) / 2^10 = 352 / 1024
    assert p.p_value == pytest.approx(352 / 1024)
    assert p.interval[0] < 0.5 < p.interval[1] and p.decided is None  # 7 of 10 is not enough
    strong = preference([Credit(0, 1)] * 18 + [Credit(1, 0)] * 2)
    assert strong.decided == 1 and strong.p_value == pytest.approx(2 * (1 + 20 + 190) / 2**20)
    assert sign_test(5, 10) == 1.0
