"""Off-policy evaluation of a registered version on the traffic production served: the user
recommendation impressions logged with propensities (``RECSYS_EXPLORE_EPSILON``), the lists the
version and the version behind an alias (production) would have shown each impression's user,
and the IPS / SNIPS / DR estimates of both with bootstrap intervals
(recsys/evaluation/offpolicy.py). ``recsys model evaluate-offpolicy`` reports a registered
version this way (:func:`evaluate_offpolicy`); the pipeline's gate (``gate.off_policy``) its
candidate bundle (:func:`compare_bundles`).

A target list is what the version ranks for the impression's user from the events the user had
stored before the impression (seen items excluded, the model's defaults) — not from the user's
history now, which holds the very clicks being estimated.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from feature_store import FeatureStore
from feature_store.activity import is_fresh, snapshot_cutoff
from feature_store.impressions import LoggedImpression
from pipelines import tracking
from recsys.bundle import ModelBundle
from recsys.evaluation.offpolicy import LoggedList, OffPolicyComparison, TargetList, compare
from recsys.recommender import Recommender
from recsys.settings import Settings

logger = logging.getLogger(__name__)


class NothingToEvaluate(ValueError):
    """No logged impression carries propensities (exploration was off)."""


@dataclass(frozen=True)
class OffPolicyReport:
    candidate_version: str
    production_version: str
    alias: str
    comparison: OffPolicyComparison


def logged_lists(impressions: list[LoggedImpression]) -> list[LoggedImpression]:
    """The user recommendation impressions an exploration policy drew (with propensities)."""
    return [
        x
        for x in impressions
        if x.impression.propensities is not None and x.impression.sources is None and x.impression.user_id
    ]


def _events_before(events, ts_ms: int) -> int:
    # the store keeps an event's time to the second: one stored in the impression's own second
    # counts as after it (it may be the click being estimated)
    cut = datetime.fromtimestamp(ts_ms // 1000, tz=UTC)
    return sum(1 for e in events if e.stored_at is None or _utc(e.stored_at) < cut)


def _utc(t: datetime) -> datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def compare_bundles(
    settings: Settings,
    candidate: ModelBundle,
    production: ModelBundle,
    *,
    since: datetime | None = None,
    outcome: str = "click",
    bootstrap: int = 500,
    seed: int = 0,
) -> OffPolicyComparison:
    """The candidate bundle against production's on the user recommendation impressions logged
    with propensities since ``since``. Raises NothingToEvaluate when there are none."""
    store = FeatureStore(settings.database_url)
    try:
        logged = logged_lists(store.impressions(since=since, surface="user"))
        if not logged:
            raise NothingToEvaluate(
                "no user recommendation impressions with propensities"
                + (f" since {since.isoformat()}" if since else "")
                + ": turn exploration on (RECSYS_EXPLORE_EPSILON) and serve traffic first"
            )
        users = sorted({x.impression.user_id for x in logged})
        histories = {u: store.user_events(u) for u in users}
        items = store.items_frame()
    finally:
        store.dispose()
    k = max(len(x.impression.items) for x in logged)
    # per impression: its user and how many of the user's events (oldest first) came before it
    keys = [(x.impression.user_id, _events_before(histories[x.impression.user_id], x.impression.ts)) for x in logged]
    targets = []
    for bundle in (candidate, production):
        rec = Recommender(bundle, items)
        cutoff = snapshot_cutoff(bundle.trained_as_of)
        lists: dict[tuple[str, int], TargetList] = {}
        for key in keys:
            user, n = key
            if key not in lists:
                before = histories[user][:n]
                newest = max((e.stored_at for e in before if e.stored_at is not None), default=None)
                result = rec.recommend_for_user(
                    user,
                    [e.item_id for e in before],
                    k,
                    refresh=is_fresh(newest, cutoff),  # fold in what the model did not train on, as serving does
                    values=[e.value for e in before],
                )
                lists[key] = TargetList(
                    tuple(i.item_id for i in result.items), tuple(float(i.score) for i in result.items)
                )
        targets.append([lists[key] for key in keys])
    log = [LoggedList(x.impression.items, x.impression.propensities, tuple(x.clicks.get(outcome, ()))) for x in logged]
    return compare(log, targets[0], targets[1], bootstrap=bootstrap, seed=seed)


def evaluate_offpolicy(
    settings: Settings,
    version: str,
    *,
    alias: str | None = None,
    since: datetime | None = None,
    outcome: str = "click",
    bootstrap: int = 500,
    seed: int = 0,
) -> OffPolicyReport:
    """``version`` against the version behind ``alias`` (default: the serving alias) on the
    logged impressions since ``since``. Raises ValueError (unknown version or alias, no
    impressions with propensities)."""
    client = tracking.setup(settings)
    name = settings.registered_model_name
    alias = alias or settings.model_alias
    cand = tracking.get_version(client, name, version)
    if cand is None:
        raise ValueError(f"no version {version} of model {name!r}")
    prod = tracking.resolve_alias(client, name, alias)
    if prod is None:
        raise ValueError(f"no model version behind alias {name}@{alias}")
    bundles = []
    for mv in (cand, prod):
        fetched = tracking.fetch_bundle_checked(settings, mv)
        bundles.append(ModelBundle.load(fetched.path, verify=True, manifest_sha256=fetched.manifest_sha256))
    comparison = compare_bundles(
        settings, bundles[0], bundles[1], since=since, outcome=outcome, bootstrap=bootstrap, seed=seed
    )
    logger.info(
        "off-policy: version %s vs %s@%s on %d impressions",
        cand.version,
        alias,
        prod.version,
        comparison.candidate.impressions,
    )
    return OffPolicyReport(str(cand.version), str(prod.version), alias, comparison)
