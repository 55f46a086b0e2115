"""Online A/B statistics: per variant, the share of exposed users with an outcome (click,
purchase) and the share of impressions with one, each with its Wilson score interval.
Framework-free: the counts come from the feature store (``FeatureStore.exposure_counts``); the
report (experiments/online.py) and the dashboard (api/ui) both compute the rates here.

*Exposure* is an impression: a user is exposed to a variant when a list of it was shown to
them (logged by the API, api/impressions.py), whether or not they did anything afterwards — so
a variant that drives users away shows a lower rate instead of a smaller denominator. A
*success* is an event of the outcome type that names one of the variant's impressions by its
``request_id``. The per-impression interval treats impressions as independent; impressions of
one user are not quite, so read it as a little too narrow and prefer the per-user rate.
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
    """What the store counts per variant (``feature_store.impressions.ExposureCounts``)."""

    variant: str
    users: int
    impressions: int
    users_with: Mapping[str, int]
    impressions_with: Mapping[str, int]


@dataclass
class VariantStats:
    """One variant: exposed users and impressions; per outcome the users (``successes``) and
    impressions with it, the two rates and their intervals."""

    variant: str
    alias: str
    version: str | None
    users: int
    impressions: int
    successes: dict[str, int]
    rates: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    impression_successes: dict[str, int]
    impression_rates: dict[str, float]
    impression_intervals: dict[str, tuple[float, float]]

    def metrics(self) -> dict[str, float]:
        out = {"online_users": float(self.users), "online_impressions": float(self.impressions)}
        for o in self.rates:
            out[f"online_{o}_rate"] = self.rates[o]
            out[f"online_{o}_rate_ci_low"] = self.intervals[o][0]
            out[f"online_{o}_rate_ci_high"] = self.intervals[o][1]
            out[f"online_{o}_impression_rate"] = self.impression_rates[o]
            out[f"online_{o}_impression_rate_ci_low"] = self.impression_intervals[o][0]
            out[f"online_{o}_impression_rate_ci_high"] = self.impression_intervals[o][1]
        return out


def variant_stats(
    rows: Iterable[VariantCounts], outcomes: Sequence[str] = OUTCOMES, z: float = Z_95
) -> list[VariantStats]:
    """Per variant (in the rows' order): exposed users and impressions, and each outcome's rate
    per user and per impression with its Wilson interval. A variant label ``alias:version`` is
    split into its two parts."""
    out = []
    for row in rows:
        alias, _, version = row.variant.rpartition(":")
        if not alias:
            alias, version = row.variant, None
        succ = {o: int(row.users_with.get(o, 0)) for o in outcomes}
        shown = {o: int(row.impressions_with.get(o, 0)) for o in outcomes}
        out.append(
            VariantStats(
                variant=row.variant,
                alias=alias,
                version=version,
                users=row.users,
                impressions=row.impressions,
                successes=succ,
                rates={o: succ[o] / row.users if row.users else 0.0 for o in outcomes},
                intervals={o: wilson_interval(succ[o], row.users, z) for o in outcomes},
                impression_successes=shown,
                impression_rates={o: shown[o] / row.impressions if row.impressions else 0.0 for o in outcomes},
                impression_intervals={o: wilson_interval(shown[o], row.impressions, z) for o in outcomes},
            )
        )
    return out
