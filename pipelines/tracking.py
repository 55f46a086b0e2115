"""The one module that talks to MLflow: runs, bundle artifacts, registry versions, aliases.

``api/`` and ``experiments/`` call these helpers rather than using MLflow their own way.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, NamedTuple

import mlflow

# Downloads of a few bundle files need no progress bar in server and CLI logs.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
from dataclasses import dataclass
from datetime import UTC, datetime

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


class MovedDataFolder(ValueError):
    """The tracking store names artifact locations of the folder it was copied or moved from."""


def _expected_location(settings: Settings, name: str) -> str | None:
    return f"{settings.mlflow_artifact_root.rstrip('/')}/{name}" if settings.mlflow_artifact_root else None


def _moved_from(settings: Settings, exp) -> str | None:
    """The artifact root the experiment's runs would write to when this data folder is a copy
    (or a move) of another: the experiment's local location is not the configured one, and
    the configured one holds the same folder (copied along). None otherwise."""
    expected = _expected_location(settings, exp.name)
    location = exp.artifact_location or ""
    if expected is None or not location.startswith("file:") or not expected.startswith("file:"):
        return None
    if location.rstrip("/") == expected.rstrip("/"):
        return None
    from urllib.parse import unquote, urlparse

    if not Path(unquote(urlparse(expected).path)).is_dir():
        return None
    return location.rstrip("/").removesuffix(f"/{exp.name}")


def ensure_experiment(settings: Settings, name: str) -> str:
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        old = _moved_from(settings, exp)
        if old is not None:
            raise MovedDataFolder(
                f"MLflow experiment {name!r} keeps its artifacts in {old}, not in this data folder's "
                f"{settings.mlflow_artifact_root}: it was copied or moved; run `recsys store rebind` so runs "
                "from here write here"
            )
        return exp.experiment_id
    # No artifact root (a tracking server): the server's default, proxied through the server.
    location = _expected_location(settings, name)
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except MlflowException:  # created concurrently by another process
        return mlflow.get_experiment_by_name(name).experiment_id


#: columns of MLflow's SQL tracking store that hold artifact locations (mlflow 2.x and 3.x)
_LOCATION_COLUMNS = {
    "experiments": ("artifact_location",),
    "runs": ("artifact_uri",),
    "model_versions": ("source", "storage_location"),
    "logged_models": ("artifact_location",),
}


def rebind_artifacts(settings: Settings) -> tuple[str, str, int] | None:
    """Point every artifact location the local tracking store names under the folder it was
    copied or moved from at this data folder's artifact root (the files came along). Returns
    (old root, new root, rows changed), or None when nothing points elsewhere.

    MLflow has no call that moves an experiment's artifact location, so this rewrites the
    location columns of its SQLite store (:data:`_LOCATION_COLUMNS`) in one transaction,
    through the feature store's SQL helper (all SQL lives in feature_store/).
    """
    from feature_store.db import replace_prefix

    if _sqlite_path(settings.mlflow_tracking_uri) is None:
        raise MovedDataFolder(f"rebind works on a local SQLite tracking store, not {settings.mlflow_tracking_uri}")
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    exp = mlflow.get_experiment_by_name(settings.experiment_name)
    old = _moved_from(settings, exp) if exp is not None else None
    if old is None:
        return None
    new = settings.mlflow_artifact_root.rstrip("/")
    changed = replace_prefix(settings.mlflow_tracking_uri, _LOCATION_COLUMNS, old, new)
    forget_store(settings.mlflow_tracking_uri)
    logger.info("artifact locations %s -> %s (%d rows)", old, new, changed)
    return old, new, changed


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


class FetchedBundle(NamedTuple):
    path: Path
    #: sha256 of the manifest as downloaded from the artifact store (check it at load)
    manifest_sha256: str


def fetch_bundle(settings: Settings, version: ModelVersion) -> Path:
    """Local folder with the version's bundle (see :func:`fetch_bundle_checked`)."""
    return fetch_bundle_checked(settings, version).path


def fetch_bundle_checked(settings: Settings, version: ModelVersion, *, refresh: bool = False) -> FetchedBundle:
    """The version's bundle in the local cache, keyed by what identifies its content.

    The cache folder is ``<run id>-<manifest sha256>``: the manifest is fetched from the
    artifact store (the truth) first, so a recreated MLflow store whose new "version 1" is
    another bundle never gets the old cached copy. ``refresh`` downloads again over a cached
    copy (a cached file failed verification). The whole bundle is downloaded into a temporary
    sibling and renamed, so a folder is never half-written.
    """
    root = settings.cache_dir / "bundles" / version.name
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version.version}.", dir=root))
    try:
        manifest = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{version.source.rstrip('/')}/manifest.json",
            dst_path=str(tmp / "manifest"),
            tracking_uri=settings.mlflow_tracking_uri,
        )
        digest = hashlib.sha256(Path(manifest).read_bytes()).hexdigest()
        tagged = (version.tags or {}).get("manifest_sha256")
        if tagged and tagged != digest:
            raise ValueError(
                f"version {version.version}: the artifact store's manifest.json (sha256 {digest[:12]}…) "
                f"is not the registered one ({tagged[:12]}…)"
            )
        target = root / f"{version.run_id or 'norun'}-{digest}"
        if not refresh and (target / "manifest.json").is_file():
            return FetchedBundle(target, digest)
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=version.source, dst_path=str(tmp / "bundle"), tracking_uri=settings.mlflow_tracking_uri
            )
        )
        if target.exists():
            if not refresh and (target / "manifest.json").is_file():
                return FetchedBundle(target, digest)  # another worker placed it meanwhile: keep theirs
            # a corrupt copy: move it aside first, so the rename below is atomic
            old = root / f".old-{target.name}-{os.getpid()}-{threading.get_ident()}"
            try:
                os.replace(target, old)
            except OSError:  # another worker moved it first
                pass
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(local, target)
        except OSError:  # another worker placed a fresh copy first
            if not (target / "manifest.json").is_file():
                raise
        logger.info("downloaded bundle of %s version %s into %s", version.name, version.version, target)
        return FetchedBundle(target, digest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def store_identity(uri: str) -> tuple[int, int] | None:
    """(device, inode) of a SQLite tracking store file; None for other stores or no file."""
    path = _sqlite_path(uri)
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def forget_store(uri: str) -> None:
    """Drop MLflow's process-wide caches for ``uri``: its SQLAlchemy engines (their pooled
    connections keep reading a replaced, unlinked SQLite file) and the cached store objects.

    MLflow has no public call for this; these are its internals (mlflow 3.x), hence the guard.
    """
    try:
        from mlflow.store.model_registry.sqlalchemy_store import (
            SqlAlchemyStore as RegistrySqlStore,
        )
        from mlflow.store.tracking.sqlalchemy_store import (
            SqlAlchemyStore as TrackingSqlStore,
        )
        from mlflow.tracking._model_registry import utils as registry_utils
        from mlflow.tracking._tracking_service import utils as tracking_utils

        for store_cls in (TrackingSqlStore, RegistrySqlStore):
            with store_cls._engine_map_lock:
                engine = store_cls._engine_map.pop(uri, None)
            if engine is not None:
                engine.dispose()
        tracking_utils._tracking_store_registry._get_store_with_resolved_uri.cache_clear()
        registry_utils._get_store_registry()._get_store_with_resolved_uri.cache_clear()
    except (ImportError, AttributeError) as exc:  # another MLflow version: a new client still helps
        logger.warning("could not reset MLflow's cached stores for %s: %s", uri, exc)


class RegistryClient:
    """The MlflowClient a long-running server uses; notices a replaced SQLite tracking store.

    A store file replaced under a running server (recreated store, restored backup) would
    otherwise be read forever through connections to the old, unlinked file. Each ``get()``
    compares the file's (device, inode) with the one the client was built on — one ``stat`` —
    and rebuilds the client, and MLflow's cached engines, when it changed.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: MlflowClient | None = None
        self._identity: tuple[int, int] | None = None
        self._lock = threading.Lock()
        #: how many times the store was found replaced (for logs and tests)
        self.reconnects = 0

    def get(self) -> MlflowClient:
        uri = self.settings.mlflow_tracking_uri
        identity = store_identity(uri)
        with self._lock:
            if self._client is not None and identity == self._identity:
                return self._client
            if self._client is not None:
                logger.warning(
                    "MLflow tracking store %s was replaced (file identity %s -> %s): reconnecting",
                    uri,
                    self._identity,
                    identity,
                )
                forget_store(uri)
                self.reconnects += 1
            self._client = setup(self.settings)
            self._identity = store_identity(uri)
            return self._client


_PARAM_MAX = 500  # MLflow's limit on a param value


def experiment_id(settings: Settings, name: str) -> str:
    """Point MLflow at the configured store and return the id of experiment ``name`` (created if new)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    return ensure_experiment(settings, name)


def client_for(settings: Settings) -> MlflowClient:
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    return MlflowClient(settings.mlflow_tracking_uri)


def start_run(
    experiment_id_: str | None = None,
    run_name: str | None = None,
    *,
    run_id: str | None = None,
    nested: bool = False,
    tags: dict[str, str] | None = None,
):
    """Start (or, with ``run_id``, resume) a run; ``nested=True`` makes it a child of the active run."""
    if run_id is not None:
        return mlflow.start_run(run_id=run_id, nested=nested)
    return mlflow.start_run(experiment_id=experiment_id_, run_name=run_name, nested=nested, tags=tags)


def end_run(status: str = "FINISHED") -> None:
    mlflow.end_run(status)


def has_active_run() -> bool:
    return mlflow.active_run() is not None


def log_dict(obj: dict[str, Any], artifact_file: str) -> None:
    mlflow.log_dict(obj, artifact_file)


def set_tag(key: str, value: str) -> None:
    mlflow.set_tag(key, value)


def log_metrics_to_run(client: MlflowClient, run_id: str, metrics: dict[str, float]) -> None:
    """Log finite metrics to a run other than the active one (a pipeline's parent run)."""
    import math
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, 0) for k, v in metrics.items() if math.isfinite(float(v))]
    if batch:
        client.log_batch(run_id, metrics=batch)


def check_alias(alias: str) -> None:
    """MLflow's own alias rules, checked before training rather than after registering."""
    try:
        from mlflow.utils.validation import (
            _validate_model_alias_name,
            _validate_model_alias_name_reserved,
        )
    except ImportError:  # private helpers moved: MLflow still refuses a bad alias when setting it
        return
    _validate_model_alias_name(alias)
    _validate_model_alias_name_reserved(alias)


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
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{kind_tag}` = 'parent'",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
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
    """Every version of ``name``, newest first: version, aliases, tags, its run's metrics and
    params, run id, experiment id, how long the run took (seconds) and when it was created."""
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
        metrics: dict[str, Any] = {}
        params: dict[str, str] = {}
        run_seconds = None
        experiment = None
        try:
            if v.run_id:
                run = client.get_run(v.run_id)
                metrics, params = dict(run.data.metrics), dict(run.data.params)
                experiment = run.info.experiment_id
                if run.info.start_time and run.info.end_time:
                    run_seconds = (run.info.end_time - run.info.start_time) / 1000
        except MlflowException:
            pass
        created = (
            datetime.fromtimestamp(v.creation_timestamp / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
            if v.creation_timestamp
            else ""
        )
        rows.append(
            {
                "version": str(v.version),
                "aliases": sorted(aliases.get(str(v.version), [])),
                "tags": dict(v.tags or {}),
                "metrics": metrics,
                "params": params,
                "run_id": v.run_id,
                "experiment_id": experiment,
                "run_seconds": run_seconds,
                "created": created,
            }
        )
    return rows


def rollback_alias(client: MlflowClient, name: str, alias: str) -> tuple[str, str]:
    """Move ``alias`` to the newest version older than its current one that was promoted and
    never rejected; tag the version moved away from ``rolled_back``. Returns (old, new)."""
    current = resolve_alias(client, name, alias)
    if current is None:
        raise ValueError(f"alias {name}@{alias} does not exist: nothing to roll back")
    good = [
        r
        for r in list_versions(client, name)
        if int(r["version"]) < int(current.version) and "promoted" in r["tags"] and "rejected" not in r["tags"]
    ]
    if not good:
        raise ValueError(
            f"no earlier promoted version to roll {name}@{alias} back to (it is at version {current.version})"
        )
    target = good[0]["version"]
    set_alias(client, name, alias, target)
    client.set_model_version_tag(name, str(current.version), "rolled_back", datetime.now(UTC).isoformat())
    return str(current.version), target


# ---------------------------------------------------------------------------------------------
# Online experiments (api/ A/B split, experiments/online.py)
# ---------------------------------------------------------------------------------------------


def log_online_metrics(
    settings: Settings, version: str | int, metrics: dict[str, float], *, tags: dict[str, str] | None = None
) -> str | None:
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


# ---------------------------------------------------------------------------------------------
# Read-only views for the operator dashboard (api/ui)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PipelineRunInfo:
    """One run of ``recsys pipeline run`` as its MLflow parent run records it."""

    run_id: str
    experiment_id: str
    pipeline: str
    pipeline_run_id: str
    status: str
    gate: str | None
    gate_reason: str | None
    version: str | None
    promoted: str | None
    started: datetime | None


@dataclass(frozen=True)
class ReportRun:
    """A ``recsys experiment run`` parent run (its comparison report is the ``report/`` artifact)."""

    run_id: str
    experiment_id: str
    experiment: str
    name: str
    started: datetime | None


def _started(run) -> datetime | None:
    return datetime.fromtimestamp(run.info.start_time / 1000, UTC) if run.info.start_time else None


def pipeline_runs(client: MlflowClient, settings: Settings, limit: int = 10) -> list[PipelineRunInfo]:
    """The newest pipeline runs (parent runs of ``<experiment>-pipeline``), newest first."""
    exp = client.get_experiment_by_name(f"{settings.experiment_name}-pipeline")
    if exp is None:
        return []
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string="tags.pipeline != ''",  # parent runs only: stage runs carry no `pipeline` tag
        max_results=limit,
        order_by=["attributes.start_time DESC"],
    )
    out = []
    for run in runs:
        tags = run.data.tags
        if "mlflow.parentRunId" in tags:  # a stage run
            continue
        out.append(
            PipelineRunInfo(
                run_id=run.info.run_id,
                experiment_id=run.info.experiment_id,
                pipeline=tags.get("pipeline", ""),
                pipeline_run_id=tags.get("pipeline_run_id", ""),
                status=tags.get("status", run.info.status.lower()),
                gate=tags.get("gate"),
                gate_reason=tags.get("gate_reason"),
                version=tags.get("version"),
                promoted=tags.get("promoted"),
                started=_started(run),
            )
        )
    return out


def report_runs(client: MlflowClient, limit: int = 20, kind_tag: str = "recsys.experiment.kind") -> list[ReportRun]:
    """The newest experiment comparison runs of every experiment, newest first."""
    experiments = {e.experiment_id: e.name for e in client.search_experiments()}
    if not experiments:
        return []
    runs = client.search_runs(
        list(experiments),
        filter_string=f"tags.`{kind_tag}` = 'parent'",
        max_results=limit,
        order_by=["attributes.start_time DESC"],
    )
    return [
        ReportRun(
            run_id=r.info.run_id,
            experiment_id=r.info.experiment_id,
            experiment=experiments.get(r.info.experiment_id, ""),
            name=r.info.run_name or r.info.run_id,
            started=_started(r),
        )
        for r in runs
    ]


def run_artifact_folder(client: MlflowClient, run_id: str, folder: str, cache_dir: Path) -> Path | None:
    """A run's artifact folder (e.g. ``model_card``) as a local copy under ``cache_dir``; None
    when the run has no such folder. The copy is reused while the run lists the same files
    with the same sizes (one listing per call), and downloaded again when they changed, e.g. a
    card that was still being uploaded when it was first copied."""
    try:
        listed = {Path(f.path).name: f.file_size for f in client.list_artifacts(run_id, folder) if not f.is_dir}
    except (MlflowException, OSError):
        return None
    if not listed:
        return None
    target = Path(cache_dir) / run_id / folder
    if target.is_dir() and {p.name: p.stat().st_size for p in target.iterdir() if p.is_file()} == listed:
        return target
    with tempfile.TemporaryDirectory(dir=_mkdir(Path(cache_dir))) as tmp:
        local = download_run_artifact(client, run_id, folder, Path(tmp) / "new")
        if local is None or not local.is_dir():
            return None
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            os.replace(target, Path(tmp) / "old")  # removed with the temporary folder
        try:
            os.replace(local, target)
        except OSError:
            if not target.is_dir():  # another request put its copy there first: as good as ours
                raise
    return target


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
