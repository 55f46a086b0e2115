"""Online A/B statistics: per variant, the share of exposed users with an outcome (click,
purchase) and its Wilson score interval. Framework-free: the counts come from the feature
store (``FeatureStore.variant_activity``); the report (experiments/online.py) and the
dashboard (api/ui) both compute the rates here.

A user is *exposed* to a variant when they have at least one event attributed to it; a
*success* is at least one event of the outcome type in that variant.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

OUTCOMES = ("click", "purchase")
#: the normal quantile of a two-sided 95% interval
Z_95 = 1.959963984540054


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (default 95%)."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


class VariantCounts(Protocol):
    """What the store counts per variant (``feature_store.VariantActivity``)."""

    variant: str
    users: int
    events: int
    users_with: Mapping[str, int]


@dataclass
class VariantStats:
    variant: str
    alias: str
    version: str | None
    users: int
    events: int
    successes: dict[str, int]
    rates: dict[str, float]
    intervals: dict[str, tuple[float, float]]

    def metrics(self) -> dict[str, float]:
        out = {"online_users": float(self.users), "online_events": float(self.events)}
        for o in self.rates:
            out[f"online_{o}_rate"] = self.rates[o]
            out[f"online_{o}_rate_ci_low"] = self.intervals[o][0]
            out[f"online_{o}_rate_ci_high"] = self.intervals[o][1]
        return out


def variant_stats(
    rows: Iterable[VariantCounts], outcomes: Sequence[str] = OUTCOMES, z: float = Z_95
) -> list[VariantStats]:
    """Per variant (in the rows' order): exposed users, events, and each outcome's rate with its
    Wilson interval. A variant label ``alias:version`` is split into its two parts."""
    out = []
    for row in rows:
        alias, _, version = row.variant.rpartition(":")
        if not alias:
            alias, version = row.variant, None
        succ = {o: int(row.users_with.get(o, 0)) for o in outcomes}
        out.append(
            VariantStats(
                variant=row.variant,
                alias=alias,
                version=version,
                users=row.users,
                events=row.events,
                successes=succ,
                rates={o: succ[o] / row.users if row.users else 0.0 for o in outcomes},
                intervals={o: wilson_interval(succ[o], row.users, z) for o in outcomes},
            )
        )
    return out
