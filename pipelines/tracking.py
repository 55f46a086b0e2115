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
    try:
        return mlflow.create_experiment(name, artifact_location=f"{settings.mlflow_artifact_root.rstrip('/')}/{name}")
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
