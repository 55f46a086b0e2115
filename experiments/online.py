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

from sqlalchemy import and_, distinct, func, select

from feature_store import FeatureStore, events_table
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


def variant_stats(store: FeatureStore, outcomes=OUTCOMES, since: datetime | None = None, z: float = 1.959963984540054) -> list[VariantStats]:
    ev = events_table
    where = [ev.c.variant.is_not(None)]
    if since is not None:
        where.append(ev.c.ts >= int(since.timestamp() * 1000))
    cond = and_(*where)
    with store.engine.connect() as conn:
        base = conn.execute(
            select(ev.c.variant, func.count(distinct(ev.c.user_pk)), func.count()).where(cond).group_by(ev.c.variant)
        ).all()
        hits = {o: dict(conn.execute(
            select(ev.c.variant, func.count(distinct(ev.c.user_pk))).where(and_(cond, ev.c.event_type == o)).group_by(ev.c.variant)
        ).all()) for o in outcomes}
    out = []
    for variant, users, events in sorted(base):
        alias, _, version = str(variant).rpartition(":")
        if not alias:
            alias, version = str(variant), None
        succ = {o: int(hits[o].get(variant, 0)) for o in outcomes}
        out.append(VariantStats(
            variant=str(variant), alias=alias, version=version, users=int(users), events=int(events), successes=succ,
            rates={o: succ[o] / users if users else 0.0 for o in outcomes},
            intervals={o: wilson_interval(succ[o], int(users), z) for o in outcomes},
        ))
    return out


def report(settings: Settings, *, outcomes=OUTCOMES, since: datetime | None = None, log_to_mlflow: bool = True) -> list[VariantStats]:
    """Compute the per-variant stats and log each onto its version's MLflow run."""
    stats = variant_stats(FeatureStore(settings.database_url), outcomes, since)
    if log_to_mlflow:
        summary = {s.variant: {o: round(s.rates[o], 5) for o in outcomes} for s in stats}
        for s in stats:
            if s.version is None or not s.version.isdigit():
                continue
            run_id = tracking.log_online_metrics(settings, s.version, s.metrics(),
                                                 tags={"online_variant": s.alias, "online_report": str(summary)})
            logger.info("logged online metrics of %s to run %s", s.variant, run_id)
    return stats


def as_rows(stats: list[VariantStats]) -> list[dict]:
    return [asdict(s) for s in stats]
