"""Online A/B report: per variant, the share of exposed users who clicked / purchased, with
Wilson score intervals, logged onto the MLflow runs of the versions behind each variant.

Events carry ``variant = "alias:version"`` (set by ``POST /events`` from the response the
client saw, or from the user's stable hash bucket). A user is *exposed* to a variant when they
have at least one event attributed to it; a *success* is at least one event of the outcome
type (``click``, ``purchase``) in that variant.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import datetime

from feature_store import FeatureStore
from pipelines import tracking
from recsys.evaluation import online as online_stats
from recsys.evaluation.online import OUTCOMES, Z_95, VariantStats, wilson_interval
from recsys.settings import Settings

__all__ = ["OUTCOMES", "VariantStats", "as_rows", "report", "variant_stats", "wilson_interval"]

logger = logging.getLogger(__name__)


def variant_stats(
    store: FeatureStore, outcomes=OUTCOMES, since: datetime | None = None, z: float = Z_95
) -> list[VariantStats]:
    """Per variant (sorted by name): exposed users, events, and each outcome's rate with its Wilson interval."""
    return online_stats.variant_stats(store.variant_activity(outcomes, since), outcomes, z)


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
