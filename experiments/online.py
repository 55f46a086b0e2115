"""Online A/B report: per variant, the share of exposed users who clicked / purchased, with
Wilson score intervals, logged onto the MLflow runs of the versions behind each variant.

Events carry ``variant = "alias:version"`` (set by ``POST /events`` from the response the
client saw, or from the user's stable hash bucket). A user is *exposed* to a variant when they
have at least one event attributed to it; a *success* is at least one event of the outcome
type (``click``, ``purchase``) in that variant.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from datetime import datetime

from feature_store import FeatureStore
from pipelines import tracking
from recsys.settings import Settings

logger = logging.getLogger(__name__)

OUTCOMES = ("click", "purchase")


def wilson_interval(successes: int, trials: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (default 95%)."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


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
    store: FeatureStore, outcomes=OUTCOMES, since: datetime | None = None, z: float = 1.959963984540054
) -> list[VariantStats]:
    """Per variant (sorted by name): exposed users, events, and each outcome's rate with its Wilson interval."""
    out = []
    for row in store.variant_activity(outcomes, since):
        alias, _, version = row.variant.rpartition(":")
        if not alias:
            alias, version = row.variant, None
        succ = {o: row.users_with[o] for o in outcomes}
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


def report(
    settings: Settings, *, outcomes=OUTCOMES, since: datetime | None = None, log_to_mlflow: bool = True
) -> list[VariantStats]:
    """Compute the per-variant stats and log each onto its version's MLflow run."""
    store = FeatureStore(settings.database_url)
    try:
        stats = variant_stats(store, outcomes, since)
    finally:
        store.dispose()
    if log_to_mlflow:
        summary = {s.variant: {o: round(s.rates[o], 5) for o in outcomes} for s in stats}
        for s in stats:
            if s.version is None or not s.version.isdigit():
                continue
            run_id = tracking.log_online_metrics(
                settings, s.version, s.metrics(), tags={"online_variant": s.alias, "online_report": str(summary)}
            )
            logger.info("logged online metrics of %s to run %s", s.variant, run_id)
    return stats


def as_rows(stats: list[VariantStats]) -> list[dict]:
    return [asdict(s) for s in stats]
