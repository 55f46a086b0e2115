"""The one module that talks to MLflow: runs, bundle artifacts, registry versions, aliases.

``api/`` and ``experiments/`` call these helpers rather than using MLflow their own way.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow

# Downloads of a few bundle files need no progress bar in server and CLI logs.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from recsys.settings import Settings

logger = logging.getLogger(__name__)

BUNDLE_ARTIFACT = "bundle"


def setup(settings: Settings) -> MlflowClient:
    """Point MLflow at the configured store and make sure the experiment exists."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    ensure_experiment(settings, settings.experiment_name)
    return MlflowClient(settings.mlflow_tracking_uri)


def ensure_experiment(settings: Settings, name: str) -> str:
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    # No artifact root (a tracking server): the server's default, proxied through the server.
    location = f"{settings.mlflow_artifact_root.rstrip('/')}/{name}" if settings.mlflow_artifact_root else None
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except MlflowException:  # created concurrently by another process
        return mlflow.get_experiment_by_name(name).experiment_id


def log_bundle(bundle_dir: Path) -> None:
    """Attach a bundle folder to the active run."""
    mlflow.log_artifacts(str(bundle_dir), BUNDLE_ARTIFACT)


def register_bundle(client: MlflowClient, name: str, run_id: str, tags: dict[str, str] | None = None) -> ModelVersion:
    """Create a registry version whose source is the run's bundle artifact."""
    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(name)
        except MlflowException:
            pass  # created concurrently
    run = client.get_run(run_id)
    source = f"{run.info.artifact_uri.rstrip('/')}/{BUNDLE_ARTIFACT}"
    version = client.create_model_version(name, source=source, run_id=run_id, tags=tags or {})
    logger.info("registered %s version %s from run %s", name, version.version, run_id)
    return version


def set_alias(client: MlflowClient, name: str, alias: str, version: str | int) -> None:
    client.set_registered_model_alias(name, alias, str(version))
    logger.info("alias %s@%s -> version %s", name, alias, version)


def resolve_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def get_version(client: MlflowClient, name: str, version: str | int) -> ModelVersion | None:
    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        return None


def fetch_bundle(settings: Settings, version: ModelVersion) -> Path:
    """Local folder with the version's bundle, downloaded once into the cache (atomically)."""
    target = settings.cache_dir / "models" / version.name / str(version.version)
    if (target / "manifest.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version.version}.", dir=target.parent))
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(tmp), tracking_uri=settings.mlflow_tracking_uri)
        if target.exists():
            shutil.rmtree(target)
        os.replace(local, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def run_metrics(client: MlflowClient, run_id: str) -> dict[str, Any]:
    return dict(client.get_run(run_id).data.metrics)


# =============================================================================================
# Experiment helpers (used by experiments/: comparison runs, nested child runs, reading back)
# =============================================================================================

_PARAM_MAX = 500


def experiment_id(settings: Settings, name: str) -> str:
    """Point MLflow at the configured store and return the id of experiment ``name`` (created if new)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    return ensure_experiment(settings, name)


def client_for(settings: Settings) -> MlflowClient:
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    return MlflowClient(settings.mlflow_tracking_uri)


def start_run(experiment_id_: str, run_name: str, *, nested: bool = False, tags: dict[str, str] | None = None):
    """``mlflow.start_run`` for an experiment run; ``nested=True`` makes it a child of the active run."""
    return mlflow.start_run(experiment_id=experiment_id_, run_name=run_name, nested=nested, tags=tags)


def log_params_flat(params: dict[str, Any], prefix: str = "") -> None:
    """Log params, stringified and truncated to MLflow's value limit; ``None`` values skipped."""
    flat = {f"{prefix}{k}": (str(v)[:_PARAM_MAX]) for k, v in params.items() if v is not None}
    if flat:
        mlflow.log_params(flat)


def log_metrics_finite(metrics: dict[str, float], step: int | None = None) -> None:
    """Log the finite numeric metrics (NaN/inf are skipped: MLflow would store them as NaN)."""
    import math

    clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(float(v))}
    if clean:
        mlflow.log_metrics(clean, step=step)


def log_artifact(path: Path, artifact_path: str | None = None) -> None:
    """Attach a file or a folder to the active run."""
    path = Path(path)
    if path.is_dir():
        mlflow.log_artifacts(str(path), artifact_path)
    else:
        mlflow.log_artifact(str(path), artifact_path)


def set_tags(tags: dict[str, str]) -> None:
    mlflow.set_tags(tags)


def child_runs(client: MlflowClient, parent_run_id: str) -> list:
    """Finished or running child runs of a parent run, oldest first."""
    parent = client.get_run(parent_run_id)
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
        max_results=10_000,
        order_by=["attributes.start_time ASC"],
    )
    return list(runs)


def get_run(client: MlflowClient, run_id: str):
    """The run, or ``ValueError`` naming the id when the store has no such run."""
    try:
        return client.get_run(run_id)
    except MlflowException:
        raise ValueError(f"no MLflow run with id {run_id!r}") from None


def latest_parent_run(client: MlflowClient, experiment_name: str, kind_tag: str = "recsys.experiment.kind"):
    """The most recent top-level run of experiment ``experiment_name`` that carries ``kind_tag``."""
    exp = client.get_experiment_by_name(experiment_name)
    if exp is None:
        raise ValueError(f"no MLflow experiment named {experiment_name!r}")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{kind_tag}` = 'parent'",
                              max_results=1, order_by=["attributes.start_time DESC"])
    if not runs:
        raise ValueError(f"experiment {experiment_name!r} has no experiment runs")
    return runs[0]


def download_run_artifact(client: MlflowClient, run_id: str, path: str, dst: Path) -> Path | None:
    """Download one artifact of a run into ``dst`` (``None`` when the run lacks it)."""
    try:
        return Path(client.download_artifacts(run_id, path, str(dst)))
    except (MlflowException, OSError):
        return None


# =============================================================================================
# end of experiment helpers
# =============================================================================================


# ---------------------------------------------------------------------------------------------
# Pipeline registry helpers (pipelines/pipeline.py, cli/model.py): version listing and rollback
# ---------------------------------------------------------------------------------------------


def list_versions(client: MlflowClient, name: str) -> list[dict[str, Any]]:
    """Every version of ``name``, newest first: version, aliases, tags, its run's metrics."""
    from datetime import datetime, timezone

    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return []
    aliases: dict[str, list[str]] = {}
    try:
        for alias, version in (client.get_registered_model(name).aliases or {}).items():
            aliases.setdefault(str(version), []).append(alias)
    except MlflowException:
        pass
    rows = []
    for v in sorted(versions, key=lambda v: int(v.version), reverse=True):
        try:
            metrics = run_metrics(client, v.run_id) if v.run_id else {}
        except MlflowException:
            metrics = {}
        created = datetime.fromtimestamp(v.creation_timestamp / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if v.creation_timestamp else ""
        rows.append({"version": str(v.version), "aliases": sorted(aliases.get(str(v.version), [])), "tags": dict(v.tags or {}),
                     "metrics": metrics, "run_id": v.run_id, "created": created})
    return rows


def rollback_alias(client: MlflowClient, name: str, alias: str) -> tuple[str, str]:
    """Move ``alias`` to the newest version older than its current one that was promoted and
    never rejected; tag the version moved away from ``rolled_back``. Returns (old, new)."""
    from datetime import datetime, timezone

    current = resolve_alias(client, name, alias)
    if current is None:
        raise ValueError(f"alias {name}@{alias} does not exist: nothing to roll back")
    good = [r for r in list_versions(client, name)
            if int(r["version"]) < int(current.version) and "promoted" in r["tags"] and "rejected" not in r["tags"]]
    if not good:
        raise ValueError(f"no earlier promoted version to roll {name}@{alias} back to (it is at version {current.version})")
    target = good[0]["version"]
    set_alias(client, name, alias, target)
    client.set_model_version_tag(name, str(current.version), "rolled_back", datetime.now(timezone.utc).isoformat())
    return str(current.version), target


# ---------------------------------------------------------------------------------------------
# Online experiments (api/ A/B split, experiments/online.py)
# ---------------------------------------------------------------------------------------------


def log_online_metrics(settings: Settings, version: str | int, metrics: dict[str, float], *, tags: dict[str, str] | None = None) -> str | None:
    """Log online (A/B) metrics onto the MLflow run that produced a registered version.

    Returns the run id, or None when the version does not exist.
    """
    client = setup(settings)
    mv = get_version(client, settings.registered_model_name, version)
    if mv is None or not mv.run_id:
        return None
    for key, value in metrics.items():
        client.log_metric(mv.run_id, key, float(value))
    for key, value in (tags or {}).items():
        client.set_tag(mv.run_id, key, str(value))
    return mv.run_id


# ---------------------------------------------------------------------------------------------
# end of online experiments
# ---------------------------------------------------------------------------------------------
