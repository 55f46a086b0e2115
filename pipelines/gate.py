"""Holdout evaluation shared by candidate and production, and the quality gate.

Leakage and the holdout
-----------------------
The holdout is **time-based**: the newest events are the test part, the rest trains. The
production model was trained by an earlier run on a snapshot that ends at its
``info.data.max_timestamp`` ("trained until"). Scoring its vectors on events it was trained on
would reward memorisation (its user *and* item vectors encode them), so:

* **fresh holdout** (the normal nightly case once new events have arrived): when at least
  ``min_fresh_ratio`` of the snapshot is newer than production's trained-until time, the cutoff
  is exactly that time. The holdout then holds only events production never saw; the production
  bundle's own vectors are scored on it, against the candidate fit on the events before it;
* **no fresh data** (production's data overlaps any usable holdout, e.g. a rerun on the same
  snapshot): the newest ``test_ratio`` of events are the holdout and production's *recipe*
  (kind and params from its bundle manifest) is refit on the same train part, so both sides
  are compared on equal footing. ``production_eval`` records which of the two happened.

Both sides are scored on the same users (test users production can score) and the same test
items; items production does not know count as misses.

What the gate refuses (each reason names its rule, ``GateDecision.refused_by``)
------------------------------------------------------------------------------
A comparison is only as good as the holdout. A flood of bot-like events made a fresh holdout
where production *and* a broken candidate both scored nDCG 0, and "0 >= 0 × 0.98" promoted it.
So besides the metric floors, the index recall and the coverage sanity checks, the gate refuses
when the holdout cannot tell models apart — too few evaluation users or scorable events
(``holdout_too_small``), a gate metric of 0 (``holdout_uninformative``: nothing was ranked
right, by either side), a candidate below plain popularity on the same holdout
(``below_popularity``) — and when the candidate lacks a capability production has, e.g. its
content space and with it /search (``capability_loss``, unless ``allow_capability_loss``).
With ``gate.card`` it also bounds the candidate's model card (pipelines/card.py): coverage,
the largest user-group nDCG gap, exposure amplification and the attribute leakage of the
served user vectors, each refusal named ``card.<bound>``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipelines.config import CardBounds, GateConfig
from recsys.evaluation.bias import ACTIVITY, BiasReport
from recsys.evaluation.holdout import Holdout, score_vectors, time_cutoff

logger = logging.getLogger(__name__)


def choose_cutoff(
    events: pd.DataFrame, test_ratio: float, trained_until: pd.Timestamp | None, min_fresh_ratio: float = 0.01
) -> tuple[pd.Timestamp, str]:
    """``(cutoff, mode)``: mode ``fresh`` (cutoff just after production's data) or ``refit``
    (the newest ``test_ratio`` of events, :func:`recsys.evaluation.holdout.time_cutoff`)."""
    if len(events) < 2:
        raise ValueError("need at least two events for a holdout split")
    ts = events["timestamp"]
    if trained_until is not None:
        fresh = int((ts > trained_until).sum())
        if fresh >= max(1, min_fresh_ratio * len(ts)) and fresh < len(ts):
            return ts[ts > trained_until].min(), "fresh"
    return time_cutoff(events, test_ratio), "refit"


def trained_until(bundle) -> pd.Timestamp | None:
    data = (bundle.info or {}).get("data", {}) or {}
    return pd.Timestamp(data["max_timestamp"]) if data.get("max_timestamp") else None


def production_user_mask(holdout: Holdout, bundle, mode: str) -> np.ndarray | None:
    """Common-space users production can score (None: all, when its recipe is refit here)."""
    if mode == "refit":
        return None
    return pd.Index(bundle.user_ids.astype(str)).get_indexer(pd.Index(holdout.user_ids.astype(str))) >= 0


def score_production(holdout: Holdout, bundle, users: np.ndarray, k: int) -> dict[str, float]:
    """Score a production ``ModelBundle``'s own vectors on a fresh holdout (see module doc)."""
    item_map = (
        pd.Index(holdout.item_ids.astype(str)).get_indexer(pd.Index(bundle.item_ids.astype(str))).astype(np.int64)
    )
    user_rows = pd.Index(bundle.user_ids.astype(str)).get_indexer(pd.Index(holdout.user_ids.astype(str))[users])
    if (user_rows < 0).any():
        raise ValueError("production cannot score some evaluation users (pick users with production_user_mask)")
    return score_vectors(
        holdout,
        users,
        bundle.user_vectors,
        bundle.item_vectors,
        bundle.metric,
        k,
        user_rows=user_rows,
        item_map=item_map,
    )


def score_popularity(holdout: Holdout, users: np.ndarray, k: int) -> dict[str, float]:
    """The popularity baseline on the same holdout: every user gets the items most interacted
    with in the holdout's train part (their own seen items excluded), scored like a model."""
    counts = np.asarray(holdout.train.sum(axis=0), dtype=np.float32).ravel()
    return score_vectors(holdout, users, np.ones((len(holdout.user_ids), 1), np.float32), counts[:, None], "dot", k)


@dataclass(frozen=True)
class HoldoutStats:
    """How much the holdout can say: evaluation users and their distinct scorable (user, item) test pairs."""

    eval_users: int
    test_interactions: int


#: rule names a GateDecision reports in ``refused_by``
RULES = (
    "sanity_finite",
    "metric_missing",
    "metric_regression",
    "index_recall",
    "coverage",
    "coverage_collapse",
    "holdout_too_small",
    "holdout_uninformative",
    "below_popularity",
    "capability_loss",
    "card.min_coverage",
    "card.max_group_gap",
    "card.max_amplification",
    "card.max_leakage_auc",
    "card_missing",
)


@dataclass
class GateDecision:
    passed: bool
    reasons: list[str]
    checks: dict[str, Any]
    #: the rules that refused (see RULES), in the order they fired, each once
    refused_by: list[str] = field(default_factory=list)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons) if self.reasons else "passed"


def decide(
    cfg: GateConfig,
    candidate: dict[str, float],
    production: dict[str, float] | None,
    index_recall: dict[str, float],
    vectors_finite: bool,
    *,
    popularity: dict[str, float] | None = None,
    holdout: HoldoutStats | None = None,
    production_capabilities: Iterable[str] | None = None,
    candidate_capabilities: Iterable[str] | None = None,
    card: BiasReport | None = None,
) -> GateDecision:
    """Candidate vs production on the same holdout, whether the holdout can tell them apart,
    the popularity baseline, lost capabilities, index recall, sanity bounds and the bounds on
    the candidate's model card (``cfg.card``: its bias report)."""
    reasons: list[str] = []
    refused_by: list[str] = []
    checks: dict[str, Any] = {}

    def refuse(rule: str, message: str) -> None:
        reasons.append(f"{rule}: {message}")
        if rule not in refused_by:
            refused_by.append(rule)

    if not vectors_finite:
        refuse("sanity_finite", "the candidate's embeddings contain NaN or infinite values")
    if holdout is not None:
        checks["holdout_eval_users"], checks["holdout_test_interactions"] = (
            holdout.eval_users,
            holdout.test_interactions,
        )
        if holdout.eval_users < cfg.min_eval_users:
            refuse(
                "holdout_too_small",
                f"{holdout.eval_users} evaluation users < {cfg.min_eval_users}: the holdout cannot tell models apart",
            )
        if holdout.test_interactions < cfg.min_holdout_interactions:
            refuse(
                "holdout_too_small",
                f"{holdout.test_interactions} distinct scorable (user, item) holdout interactions < {cfg.min_holdout_interactions}: the holdout cannot tell models apart",
            )
    for name in [cfg.metric, *cfg.also]:
        value = candidate.get(name)
        if value is None or not math.isfinite(value):
            refuse("metric_missing", f"metric {name} is missing or not finite for the candidate ({value})")
            continue
        if production is not None:
            ref = production.get(name)
            if ref is not None and math.isfinite(ref):
                floor = ref * (1 - cfg.relative_tolerance)
                checks[f"{name}_floor"] = floor
                if value < floor:
                    refuse(
                        "metric_regression",
                        f"{name} {value:.4f} < production {ref:.4f} (tolerance {cfg.relative_tolerance:.0%})",
                    )
    value = candidate.get(cfg.metric)
    if value is not None and math.isfinite(value) and value <= 0:
        ref = production.get(cfg.metric) if production is not None else None
        refuse(
            "holdout_uninformative",
            f"{cfg.metric} is {value:.4f} for the candidate"
            + (f" and {ref:.4f} for production" if ref is not None else "")
            + ": the holdout ranks nothing right, it cannot tell models apart",
        )
    if cfg.popularity_baseline and popularity is not None and value is not None and math.isfinite(value):
        base = popularity.get(cfg.metric)
        if base is not None and math.isfinite(base):
            floor = base * (1 - cfg.relative_tolerance)
            checks[f"popularity_{cfg.metric}"] = base
            if value < floor:
                refuse(
                    "below_popularity", f"{cfg.metric} {value:.4f} < popularity baseline {base:.4f} on the same holdout"
                )
    if production_capabilities is not None and candidate_capabilities is not None:
        lost = sorted(set(production_capabilities) - set(candidate_capabilities))
        checks["capabilities_lost"] = lost
        if lost and not cfg.allow_capability_loss:
            refuse(
                "capability_loss",
                f"the candidate lacks {', '.join(lost)} that production serves "
                "(set gate.allow_capability_loss: true to accept)",
            )
        elif lost:
            logger.warning("gate: capability loss allowed by config: %s", ", ".join(lost))
    for role, recall in index_recall.items():
        checks[f"index_{role}_recall"] = recall
        if not recall >= cfg.min_index_recall:
            refuse("index_recall", f"index {role} recall@10 {recall:.3f} < {cfg.min_index_recall}")
    cov = candidate.get("coverage", float("nan"))
    if not cov >= cfg.min_coverage:
        refuse("coverage", f"sanity: coverage {cov:.4f} < {cfg.min_coverage}")
    if production is not None and production.get("coverage", 0) > 0:
        floor = production["coverage"] * (1 - cfg.max_coverage_drop)
        if cov < floor:
            refuse(
                "coverage_collapse",
                f"sanity: coverage collapsed to {cov:.4f} (production {production['coverage']:.4f}, floor {floor:.4f})",
            )
    if cfg.card is not None:
        for rule, message in card_refusals(cfg.card, card, checks):
            refuse(rule, message)
    return GateDecision(passed=not reasons, reasons=reasons, checks=checks, refused_by=refused_by)


def card_refusals(bounds: CardBounds, report: BiasReport | None, checks: dict[str, Any]) -> list[tuple[str, str]]:
    """``(rule, message)`` for every bound on the model card that fails (``card.<bound>``);
    the measured values go into ``checks``."""
    wanted = {k: v for k, v in bounds.model_dump().items() if v is not None}
    if not wanted:
        return []
    if report is None:
        return [("card_missing", f"the gate bounds the model card ({', '.join(wanted)}) but no bias report was made")]
    out = []
    measured = {
        "min_coverage": report.coverage,
        "max_group_gap": report.max_group_gap,
        "max_amplification": report.amplification,
        "max_leakage_auc": report.max_leakage_auc,
    }
    for bound, limit in wanted.items():
        value = measured[bound]
        checks[f"card_{bound.removeprefix('min_').removeprefix('max_')}"] = value
        low = bound.startswith("min_")
        if math.isfinite(value) and (value >= limit if low else value <= limit):
            continue
        if not math.isfinite(value):
            out.append((f"card.{bound}", f"not measurable on this holdout ({value}), bound {limit}"))
            continue
        detail = ""
        if bound == "max_group_gap":
            g = max((g for g in report.groups if g.attribute != ACTIVITY and math.isfinite(g.gap)), key=lambda g: g.gap)
            detail = f" ({g.attribute}: {g.worst} vs {g.best})"
        elif bound == "max_leakage_auc":
            x = max((x for x in report.leakage if math.isfinite(x.auc)), key=lambda x: x.auc)
            detail = f" ({x.attribute})"
        op = "<" if low else ">"
        what = bound.removeprefix("min_").removeprefix("max_").replace("_", " ")
        out.append((f"card.{bound}", f"model card {what} {value:.4f}{detail} {op} {limit}"))
    return out
