"""A registered model version as people are shown it: the dashboard's models pages and
``recsys model list`` read the registry rows of ``pipelines.tracking.list_versions`` through
:func:`version_view`, so both show the same status, gate reason and metrics (coverage
included). Imports nothing heavier than the settings: the command line stays quick."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from recsys.settings import Settings

#: offline metrics shown for every version (key in the run's metrics → column label)
MAIN_METRICS = {
    "ndcg_at_10": "nDCG@10",
    "precision_at_10": "P@10",
    "recall_at_10": "recall@10",
    "hybrid_ndcg_at_10": "hybrid nDCG@10",
    "coverage": "coverage",
}
#: where a version's catalogue coverage is read, first found wins: the bias report's (what the
#: model card shows; every train and pipeline run measures it), else the gate's
COVERAGE_KEYS = ("bias_coverage", "coverage")


@dataclass(frozen=True)
class IndexView:
    role: str
    kind: str
    recall_at_10: float | None
    query_ms: float | None


@dataclass(frozen=True)
class VersionView:
    version: str
    aliases: list[str]
    kind: str
    status: str  # promoted | rejected | rolled back | registered
    status_reason: str | None
    metrics: dict[str, float]
    all_metrics: dict[str, float]
    params: dict[str, str]
    tags: dict[str, str]
    data_events: int | None
    data_users: int | None
    data_items: int | None
    data_as_of: str | None
    fit_seconds: float | None
    total_seconds: float | None
    indexes: list[IndexView]
    run_id: str | None
    run_url: str | None
    created: str

    @property
    def ndcg(self) -> float | None:
        return self.metrics.get("ndcg_at_10")


def _int(params: dict[str, str], key: str) -> int | None:
    try:
        return int(float(params[key]))
    except (KeyError, ValueError):
        return None


def run_url(settings: Settings, experiment_id: str | None, run_id: str | None) -> str | None:
    """The run's page in the MLflow UI, when the deployment has one to link to."""
    base = settings.mlflow_ui_url or (settings.mlflow_tracking_uri if settings.uses_tracking_server else "")
    if not base or not run_id or not experiment_id:
        return None
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def _main_metrics(metrics: dict[str, float]) -> dict[str, float]:
    shown = {k: metrics[k] for k in MAIN_METRICS if k in metrics}
    coverage = next((metrics[k] for k in COVERAGE_KEYS if k in metrics), None)
    if coverage is not None:
        shown["coverage"] = coverage
    return {k: shown[k] for k in MAIN_METRICS if k in shown}


def version_view(row: dict[str, Any], settings: Settings) -> VersionView:
    """One row of ``pipelines.tracking.list_versions`` as the dashboard shows it."""
    tags, metrics, params = row["tags"], row["metrics"], row.get("params") or {}
    if "rolled_back" in tags:
        status, reason = "rolled back", tags["rolled_back"]
    elif "rejected" in tags:
        status, reason = "rejected", tags["rejected"]
    elif "promoted" in tags or row["aliases"]:
        status, reason = "promoted", tags.get("gate")
    else:
        status, reason = "registered", tags.get("gate")
    indexes = []
    for key, kind in sorted(tags.items()):
        if key.startswith("index."):
            role = key.removeprefix("index.")
            indexes.append(
                IndexView(role, kind, metrics.get(f"index_{role}_recall_at_10"), metrics.get(f"index_{role}_query_ms"))
            )
    times = {k: v for k, v in metrics.items() if k.startswith("time_") and k.endswith("_s")}
    return VersionView(
        version=row["version"],
        aliases=list(row["aliases"]),
        kind=tags.get("kind") or params.get("model_kind", "?"),
        status=status,
        status_reason=reason,
        metrics=_main_metrics(metrics),
        all_metrics=dict(sorted(metrics.items())),
        params=dict(sorted(params.items())),
        tags=dict(sorted(tags.items())),
        data_events=_int(params, "data_n_events"),
        data_users=_int(params, "data_n_users"),
        data_items=_int(params, "data_n_items"),
        data_as_of=params.get("data_as_of"),
        fit_seconds=metrics.get("time_fit_s"),
        total_seconds=sum(times.values()) if times else None,
        indexes=indexes,
        run_id=row.get("run_id"),
        run_url=run_url(settings, row.get("experiment_id"), row.get("run_id")),
        created=row.get("created", ""),
    )


def with_bundle_facts(view: VersionView, info: dict[str, Any]) -> VersionView:
    """Fill what the registry row lacks (versions registered by a pipeline carry no data or
    index params) from the manifest ``info`` of the bundle this worker has loaded."""
    data = info.get("data") or {}
    indexes = view.indexes or [
        IndexView(
            role,
            str(info.get(f"index_{role}_serving", "?")),
            info.get(f"index_{role}_recall_at_10"),
            info.get(f"index_{role}_query_ms"),
        )
        for role in sorted(info.get("index_choice") or {})
    ]
    return replace(
        view,
        data_events=view.data_events if view.data_events is not None else data.get("n_events"),
        data_users=view.data_users if view.data_users is not None else data.get("n_users"),
        data_items=view.data_items if view.data_items is not None else data.get("n_items"),
        data_as_of=view.data_as_of or data.get("as_of"),
        indexes=indexes,
    )
