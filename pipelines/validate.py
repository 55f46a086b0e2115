"""Snapshot statistics and the data checks that stop a pipeline before training.

``snapshot_stats`` summarises a snapshot (counts, active users, the top-item distribution);
``validate_snapshot`` checks schema, size, unknown and duplicate ids, and drift against the
previous run's stats. Each failed check is one human-readable reason; any reason stops the run.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipelines.config import DriftConfig, ValidationConfig
from recsys.datasets.base import EVENT_COLUMNS

logger = logging.getLogger(__name__)

#: items kept in the stats' popularity distribution (drift compares the top ``top_n`` of them)
TOP_ITEMS_KEPT = 1000


class ValidationFailed(RuntimeError):
    """The snapshot failed a data check; ``reasons`` lists every failed check."""

    def __init__(self, reasons: list[str]):
        self.reasons = list(reasons)
        super().__init__("; ".join(self.reasons))


@dataclass
class ValidationReport:
    reasons: list[str] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.reasons

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "reasons": self.reasons, "checks": self.checks}


def snapshot_stats(
    events: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame, *, active_days: float = 7.0
) -> dict[str, Any]:
    """Counts, time range, active users and the top-item distribution of a snapshot.

    ``items``/``users`` are the catalogue tables *before* any de-duplication, so duplicate ids
    are counted here; ``catalog_provided`` says whether a catalogue exists to check ids against.
    """
    n = len(events)
    stats: dict[str, Any] = {
        "n_events": int(n),
        "n_users": int(events["user_id"].nunique()) if n else 0,
        "n_items": int(events["item_id"].nunique()) if n else 0,
        "n_catalog_items": int(len(items)),
        "n_catalog_users": int(len(users)),
        "duplicate_event_ids": int(events["event_id"].duplicated().sum()) if n else 0,
        "duplicate_item_ids": int(items["item_id"].duplicated().sum()) if len(items) else 0,
        "duplicate_user_ids": int(users["user_id"].duplicated().sum()) if len(users) else 0,
        "items_catalog_provided": bool(len(items)),
        "users_catalog_provided": bool(len(users)),
    }
    stats["unknown_item_events"] = (
        int((~events["item_id"].isin(pd.Index(items["item_id"]))).sum()) if len(items) and n else 0
    )
    stats["unknown_user_events"] = (
        int((~events["user_id"].isin(pd.Index(users["user_id"]))).sum()) if len(users) and n else 0
    )
    if n:
        ts = events["timestamp"]
        tmax = ts.max()
        stats["min_timestamp"] = ts.min().isoformat()
        stats["max_timestamp"] = tmax.isoformat()
        recent = ts >= tmax - pd.Timedelta(days=active_days)
        stats["active_users"] = int(events.loc[recent, "user_id"].nunique())
        counts = events["item_id"].value_counts()
        top = counts.head(TOP_ITEMS_KEPT)
        stats["top_items"] = {str(k): int(v) for k, v in top.items()}
        stats["top_item_share"] = float(top.iloc[0] / n)
    else:
        stats.update(min_timestamp=None, max_timestamp=None, active_users=0, top_items={}, top_item_share=0.0)
    stats["active_days"] = float(active_days)
    return stats


def popularity_shift(prev: dict[str, Any], cur: dict[str, Any], top_n: int) -> tuple[float, float]:
    """(total variation, Jensen–Shannon divergence base 2) between two snapshots' item
    distributions over the union of their top-``top_n`` items plus one "other" bucket."""
    p_top = dict(list(prev.get("top_items", {}).items())[:top_n])
    q_top = dict(list(cur.get("top_items", {}).items())[:top_n])
    p_full, q_full = prev.get("top_items", {}), cur.get("top_items", {})
    keys = sorted(set(p_top) | set(q_top))
    p_tot, q_tot = max(prev.get("n_events", 0), 1), max(cur.get("n_events", 0), 1)
    p = np.array([p_full.get(k, 0) for k in keys], dtype=np.float64) / p_tot
    q = np.array([q_full.get(k, 0) for k in keys], dtype=np.float64) / q_tot
    p = np.append(p, max(0.0, 1.0 - p.sum()))
    q = np.append(q, max(0.0, 1.0 - q.sum()))
    tv = 0.5 * float(np.abs(p - q).sum())
    m = 0.5 * (p + q)

    def kl(a: np.ndarray, b: np.ndarray) -> float:
        mask = a > 0
        return float(np.sum(a[mask] * np.log2(a[mask] / b[mask])))

    js = 0.5 * kl(p, m) + 0.5 * kl(q, m)
    return tv, js


def _rel_change(prev: float, cur: float) -> float:
    if prev <= 0:
        return math.inf if cur > 0 else 0.0
    return abs(cur - prev) / prev


def check_drift(prev: dict[str, Any], cur: dict[str, Any], cfg: DriftConfig) -> tuple[list[str], dict[str, Any]]:
    reasons: list[str] = []
    events_change = _rel_change(prev.get("n_events", 0), cur["n_events"])
    active_change = _rel_change(prev.get("active_users", 0), cur["active_users"])
    tv, js = popularity_shift(prev, cur, cfg.top_n)
    checks = {
        "events_change": events_change,
        "active_users_change": active_change,
        "top_items_tv": tv,
        "top_items_js": js,
    }
    if events_change > cfg.max_events_change:
        reasons.append(
            f"drift: event count changed by {events_change:.0%} ({prev.get('n_events')} -> {cur['n_events']}), limit {cfg.max_events_change:.0%}"
        )
    if active_change > cfg.max_active_users_change:
        reasons.append(
            f"drift: active users changed by {active_change:.0%} ({prev.get('active_users')} -> {cur['active_users']}), limit {cfg.max_active_users_change:.0%}"
        )
    if tv > cfg.max_top_items_tv:
        reasons.append(
            f"drift: top-{cfg.top_n} item popularity shifted (total variation {tv:.3f} > {cfg.max_top_items_tv})"
        )
    if js > cfg.max_top_items_js:
        reasons.append(
            f"drift: top-{cfg.top_n} item popularity shifted (JS divergence {js:.3f} > {cfg.max_top_items_js})"
        )
    return reasons, checks


def validate_snapshot(
    events: pd.DataFrame,
    stats: dict[str, Any],
    cfg: ValidationConfig,
    previous: dict[str, Any] | None,
) -> ValidationReport:
    """Run every check; the report lists all failures (not only the first)."""
    report = ValidationReport()
    reasons = report.reasons
    missing = [c for c in EVENT_COLUMNS if c not in events.columns]
    if missing:
        reasons.append(f"schema: events lack columns {missing}")
        return report
    if not pd.api.types.is_datetime64_any_dtype(events["timestamp"]):
        reasons.append(f"schema: events.timestamp is {events['timestamp'].dtype}, expected a datetime")
    if not pd.api.types.is_float_dtype(events["value"]):
        reasons.append(f"schema: events.value is {events['value'].dtype}, expected float")
    elif len(events) and not np.isfinite(events["value"].to_numpy()).all():
        reasons.append("schema: events.value holds NaN or infinite values")
    if stats["n_events"] == 0:
        reasons.append("empty snapshot: no events")
        return report
    for what, minimum in (("events", cfg.min_events), ("users", cfg.min_users), ("items", cfg.min_items)):
        if stats[f"n_{what}"] < minimum:
            reasons.append(f"too little data: {stats[f'n_{what}']} {what}, need at least {minimum}")
    for what in ("item", "user"):
        n = stats[f"unknown_{what}_events"]
        if n > cfg.max_unknown_ids:
            reasons.append(
                f"unknown ids: {n} events reference {what}s missing from the {what}s table (allowed {cfg.max_unknown_ids})"
            )
    for what in ("event", "item", "user"):
        n = stats[f"duplicate_{what}_ids"]
        if n > cfg.max_duplicate_ids:
            reasons.append(f"duplicate ids: {n} repeated {what}_id values (allowed {cfg.max_duplicate_ids})")
    if cfg.drift.enabled and previous is not None:
        drift_reasons, report.checks["drift"] = check_drift(previous, stats, cfg.drift)
        reasons.extend(drift_reasons)
    elif previous is None:
        report.checks["drift"] = "no previous run: skipped"
    return report
