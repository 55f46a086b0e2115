"""Online A/B report: per variant, the share of exposed users and of impressions with a click /
purchase, with Wilson score intervals, logged onto the MLflow runs of the versions behind each
variant.

Exposure is an impression (the API logs every served list with ``variant = "alias:version"``);
a success is an event of the outcome type (``click``, ``purchase``) that names one of the
variant's impressions by ``request_id`` (recsys/evaluation/online.py).
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
    """Per variant (sorted by name): exposed users and impressions, and each outcome's rate per
    user and per impression with its Wilson interval."""
    return online_stats.variant_stats(store.exposure_counts(outcomes, since), outcomes, z)


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
