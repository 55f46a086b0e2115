"""The scheduled training pipeline: stages, persisted state, resume, MLflow runs.

Stages, in order::

    snapshot → validate → train → evaluate → index → gate → register → promote → notify

* **State.** Every run has a folder ``$RECSYS_DATA_DIR/pipelines/<run_id>/`` with one
  sub-folder per stage (its outputs) and ``state.json`` (written atomically after each stage).
  Running again with the same run id skips completed stages and resumes after the last one.
* **MLflow.** One parent run per pipeline run (its id is kept in ``state.json``, so a resumed
  run continues the same parent), one nested run per stage attempt. Every file a stage writes
  is sha256-hashed; the digests are logged as ``sha256/<path>`` tags of the stage's run.
* **Registration.** The bundle is uploaded to the parent run and its upload checked against the
  manifest *before* a registry version is created, and the version is created with all its
  tags at once (``pipeline_run_id``, ``gate``, ``rejected``=reason) — so no version ever points
  at a partial bundle. A resumed ``register`` finds its version by ``pipeline_run_id`` instead
  of creating a second one. ``promote`` moves the alias only if the gate passed and the alias
  still points where it did when production was evaluated.
* **Test hook.** ``RECSYS_FAIL_AT_STAGE=<stage>`` raises :class:`InjectedFailure` at the start
  of that stage; ``<stage>:after`` raises after the stage's work, before it is recorded as done.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pipelines import tracking
from pipelines.card import assessment_dict, assessment_from_dict, log_card, new_card
from pipelines.config import ConfigError, PipelineConfig
from pipelines.gate import (
    GateDecision,
    Holdout,
    HoldoutStats,
    choose_cutoff,
    decide,
    production_user_mask,
    score,
    score_popularity,
    score_production,
    trained_until,
)
from pipelines.lock import pipeline_lock
from pipelines.train import ModelConfig, build_bundle, debias_model, fit_model
from pipelines.validate import ValidationFailed, snapshot_stats, validate_snapshot
from recsys.bundle import ModelBundle, manifest_capabilities
from recsys.evaluation.bias import BiasReport, Leakage, user_attribute_labels
from recsys.evaluation.mitigation import Assessment, assess, served_leakage
from recsys.index.base import file_sha256
from recsys.matrix import InteractionMatrix
from recsys.models.foldin import FoldInSpec
from recsys.settings import Settings

logger = logging.getLogger(__name__)

USER_ATTRIBUTES = "user_attributes.parquet"
STAGES = ("snapshot", "validate", "train", "evaluate", "index", "gate", "register", "promote", "notify")
FAIL_ENV = "RECSYS_FAIL_AT_STAGE"

OnStage = Callable[[str, str], None]  # (stage, "start" | "done" | "skipped")


class InjectedFailure(RuntimeError):
    """Raised by the ``RECSYS_FAIL_AT_STAGE`` test hook."""


class PipelineConflict(RuntimeError):
    """The registry changed under the run in a way it must not paper over."""


@dataclass
class PipelineResult:
    run_id: str
    status: str  # promoted | rejected | stopped
    reason: str
    version: str | None
    mlflow_run_id: str
    run_dir: Path
    timings: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


def new_run_id(name: str) -> str:
    return f"{name}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:6]}"


def pipelines_dir(settings: Settings) -> Path:
    return settings.data_dir / "pipelines"


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def _maybe_fail(stage: str, where: str) -> None:
    target = os.environ.get(FAIL_ENV, "").strip()
    if not target:
        return
    name, _, pos = target.partition(":")
    if name == stage and (pos or "start") == where:
        raise InjectedFailure(f"{FAIL_ENV}={target}: injected failure in stage {stage!r} ({where})")


class RunState:
    """``state.json`` of one pipeline run."""

    def __init__(self, path: Path, data: dict[str, Any]):
        self.path = path
        self.data = data

    @classmethod
    def open(cls, run_dir: Path, run_id: str, config: PipelineConfig) -> RunState:
        path = run_dir / "state.json"
        if path.exists():
            data = _read_json(path)
            if data.get("config_digest") != config.digest():
                raise ConfigError(f"pipeline run {run_id!r} was started with a different config; use a new --run-id")
            return cls(path, data)
        data = {
            "run_id": run_id,
            "pipeline": config.name,
            "config_digest": config.digest(),
            "config": config.model_dump(mode="json"),
            "status": "running",
            "created_at": datetime.now(UTC).isoformat(),
            "stages": {},
        }
        state = cls(path, data)
        state.save()
        return state

    def save(self) -> None:
        _write_json(self.path, self.data)

    def done(self, stage: str) -> bool:
        return self.data["stages"].get(stage, {}).get("status") == "done"

    def output(self, stage: str) -> dict[str, Any]:
        return self.data["stages"][stage]["outputs"]

    def mark(self, stage: str, status: str, **extra: Any) -> None:
        self.data["stages"].setdefault(stage, {}).update(status=status, at=datetime.now(UTC).isoformat(), **extra)
        self.save()


class Pipeline:
    """One pipeline run. ``run()`` takes the lock, then runs or resumes the stages."""

    def __init__(
        self, settings: Settings, config: PipelineConfig, run_id: str | None = None, on_stage: OnStage | None = None
    ):
        self.settings = settings
        self.config = config
        self.run_id = run_id or new_run_id(config.name)
        if not all(c.isalnum() or c in "-_." for c in self.run_id):
            raise ConfigError(f"run id {self.run_id!r}: use letters, digits, '-', '_' and '.' only")
        self.run_dir = pipelines_dir(settings) / self.run_id
        self.on_stage = on_stage
        self.alias = config.alias or settings.model_alias
        self.model_name = settings.registered_model_name

    # ------------------------------------------------------------------ runner

    def run(self) -> PipelineResult:
        with pipeline_lock(self.config.name, self.settings.database_url, pipelines_dir(self.settings)):
            return self._run_locked()

    def _run_locked(self) -> PipelineResult:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.state = RunState.open(self.run_dir, self.run_id, self.config)
        if self.state.data["status"] in ("completed", "stopped"):
            logger.info("pipeline run %s already %s; nothing to do", self.run_id, self.state.data["status"])
            return self._result()
        handler = logging.FileHandler(self.run_dir / "pipeline.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.setLevel(logging.INFO)
        pipelines_logger = logging.getLogger("pipelines")
        old_level = pipelines_logger.level
        pipelines_logger.addHandler(handler)
        pipelines_logger.setLevel(logging.INFO)
        try:
            return self._run_stages()
        finally:
            pipelines_logger.removeHandler(handler)
            pipelines_logger.setLevel(old_level)
            handler.close()

    def _run_stages(self) -> PipelineResult:
        self.client = tracking.setup(self.settings)
        experiment_id = tracking.ensure_experiment(self.settings, f"{self.settings.experiment_name}-pipeline")
        parent_id = self.state.data.get("mlflow_run_id")
        resumed = parent_id is not None
        if resumed:
            parent = tracking.start_run(run_id=parent_id)
        else:
            parent = tracking.start_run(
                experiment_id,
                self.run_id,
                tags={
                    "pipeline": self.config.name,
                    "pipeline_run_id": self.run_id,
                    "config_digest": self.config.digest(),
                },
            )
            self.state.data["mlflow_run_id"] = parent.info.run_id
            self.state.save()
            tracking.log_dict(self.config.model_dump(mode="json"), "pipeline_config.json")
        self.parent_id = parent.info.run_id
        self.experiment_id = parent.info.experiment_id
        logger.info(
            "pipeline %s run %s (%s; MLflow run %s)",
            self.config.name,
            self.run_id,
            "resumed" if resumed else "new",
            self.parent_id,
        )
        try:
            for stage in STAGES:
                if self.state.done(stage):
                    logger.info("stage %s: already done, skipped", stage)
                    if self.on_stage:
                        self.on_stage(stage, "skipped")
                    continue
                self._run_stage(stage)
        except ValidationFailed as exc:
            self.state.data.update(status="stopped", reason=f"validation failed: {exc}")
            self.state.save()
            tracking.set_tags({"status": "stopped", "validation_failed": str(exc)[:5000]})
            logger.error("pipeline %s run %s stopped before training: %s", self.config.name, self.run_id, exc)
            tracking.end_run("FAILED")
            return self._result()
        except BaseException as exc:
            self.state.data.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
            self.state.save()
            tracking.set_tags({"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:5000]})
            logger.error(
                "pipeline run %s failed: %s: %s (rerun with --run-id %s to resume)",
                self.run_id,
                type(exc).__name__,
                exc,
                self.run_id,
            )
            tracking.end_run("FAILED")
            raise
        promoted = self.state.output("promote").get("promoted", False)
        gate = self.state.output("gate")
        self.state.data.update(
            status="completed",
            reason="promoted" if promoted else f"rejected: {gate['reason']}",
            finished_at=datetime.now(UTC).isoformat(),
        )
        self.state.save()
        tracking.set_tags({"status": "completed", "outcome": "promoted" if promoted else "rejected"})
        tracking.end_run("FINISHED")
        result = self._result()
        logger.info("pipeline run %s completed: %s (version %s)", self.run_id, result.status, result.version)
        return result

    def _run_stage(self, stage: str) -> None:
        if self.on_stage:
            self.on_stage(stage, "start")
        logger.info("stage %s: start", stage)
        start = time.perf_counter()
        self.state.mark(stage, "running")
        attempt = int(self.state.data["stages"][stage].get("attempts", 0)) + 1
        self.state.data["stages"][stage]["attempts"] = attempt
        with tracking.start_run(
            self.experiment_id,
            stage,
            nested=True,
            tags={"stage": stage, "attempt": str(attempt), "pipeline_run_id": self.run_id},
        ):
            try:
                _maybe_fail(stage, "start")
                outputs = getattr(self, f"_stage_{stage}")()
                _maybe_fail(stage, "after")
            except ValidationFailed as exc:
                self.state.mark(stage, "failed", error=str(exc))
                tracking.set_tags({"validation_failed": str(exc)[:5000]})
                raise
            except BaseException as exc:
                self.state.mark(stage, "failed", error=f"{type(exc).__name__}: {exc}")
                tracking.set_tag("error", f"{type(exc).__name__}: {exc}"[:5000])
                raise
            hashes = self._hash_outputs(stage, outputs.pop("_log_artifacts", ()))
            seconds = time.perf_counter() - start
            tracking.log_metrics_finite({"seconds": seconds})
        self.state.mark(stage, "done", outputs=outputs, seconds=seconds, sha256=hashes)
        self.client.set_tag(self.parent_id, f"stage.{stage}", "done")
        logger.info("stage %s: done in %.2fs", stage, seconds)
        if self.on_stage:
            self.on_stage(stage, "done")

    def _hash_outputs(self, stage: str, log_artifacts) -> dict[str, str]:
        """sha256 of every file the stage wrote (tags ``sha256/<path>``); small ones are logged."""
        folder = self.run_dir / stage
        hashes: dict[str, str] = {}
        if folder.exists():
            for p in sorted(folder.rglob("*")):
                if p.is_file():
                    hashes[str(p.relative_to(self.run_dir))] = file_sha256(p)
        for rel, digest in list(hashes.items())[:200]:
            tracking.set_tag(f"sha256/{rel}", digest)
        for rel in log_artifacts:
            tracking.log_artifact(self.run_dir / rel, str(Path(rel).parent))
        return hashes

    def _result(self) -> PipelineResult:
        d = self.state.data
        stages = d["stages"]
        status = {
            "completed": "promoted" if stages.get("promote", {}).get("outputs", {}).get("promoted") else "rejected"
        }.get(d["status"], d["status"])
        version = stages.get("register", {}).get("outputs", {}).get("version")
        metrics = stages.get("evaluate", {}).get("outputs", {}).get("best_metrics", {})
        return PipelineResult(
            run_id=self.run_id,
            status=status,
            reason=d.get("reason", ""),
            version=version,
            mlflow_run_id=d.get("mlflow_run_id", ""),
            run_dir=self.run_dir,
            timings={s: v.get("seconds", 0.0) for s, v in stages.items() if v.get("status") == "done"},
            metrics=metrics,
        )

    # ------------------------------------------------------------------ helpers

    def _events(self) -> pd.DataFrame:
        return pd.read_parquet(self.run_dir / "snapshot" / "events.parquet")

    def _previous_stats(self) -> dict[str, Any] | None:
        """Snapshot stats of the latest completed run of the same pipeline."""
        best = None
        for state_path in pipelines_dir(self.settings).glob("*/state.json"):
            try:
                data = _read_json(state_path)
            except (OSError, ValueError):
                continue
            if (
                data.get("pipeline") != self.config.name
                or data.get("run_id") == self.run_id
                or data.get("status") != "completed"
            ):
                continue
            if best is None or data.get("finished_at", "") > best[0]:
                best = (data.get("finished_at", ""), state_path.parent)
        if best is None:
            return None
        stats_path = best[1] / "snapshot" / "stats.json"
        return _read_json(stats_path) if stats_path.exists() else None

    def _labels(self, user_ids: np.ndarray) -> dict[str, np.ndarray]:
        """Group labels per user of ``user_ids`` from the snapshot's user attributes."""
        path = self.run_dir / "snapshot" / USER_ATTRIBUTES
        if not path.exists():
            return {}
        users = pd.read_parquet(path)
        users["attributes"] = [json.loads(a) for a in users["attributes"]]
        return user_attribute_labels(users, user_ids)

    def _production(self):
        version = tracking.resolve_alias(self.client, self.model_name, self.alias)
        if version is None:
            return None, None
        return version, ModelBundle.load(tracking.fetch_bundle(self.settings, version), verify=True)

    # ------------------------------------------------------------------ stages

    def _stage_snapshot(self) -> dict[str, Any]:
        src = self.config.source
        out = self.run_dir / "snapshot"
        out.mkdir(parents=True, exist_ok=True)
        as_of = pd.Timestamp(src.as_of) if src.as_of else pd.Timestamp.now(tz="UTC")
        if src.kind == "feature_store":
            from feature_store import FeatureStore

            store = FeatureStore(self.settings.database_url)
            try:
                dataset = store.snapshot(as_of.to_pydatetime())
            finally:
                store.dispose()
            events, items, users = dataset.events, dataset.items[["item_id", "available"]], dataset.users[["user_id"]]
            attributes = dataset.users[["user_id", "attributes"]]
            del dataset
        else:
            events, items, users, attributes = _read_dataset_source(src)
        if attributes is not None and len(attributes):
            # user attributes (JSON per user) for the model card's group and leakage report
            pd.DataFrame(
                {
                    "user_id": attributes["user_id"].astype(str).to_numpy(),
                    "attributes": [json.dumps(a or {}, default=str) for a in attributes["attributes"]],
                }
            ).to_parquet(out / USER_ATTRIBUTES, index=False)
        events.to_parquet(out / "events.parquet", index=False)
        items.to_parquet(out / "items.parquet", index=False)
        users.to_parquet(out / "users.parquet", index=False)
        stats = snapshot_stats(events, items, users, active_days=self.config.validation.drift.active_days)
        stats["as_of"] = as_of.isoformat()
        stats["source"] = src.kind if src.kind == "feature_store" else str(src.path)
        _write_json(out / "stats.json", stats)
        tracking.log_params_flat({f"data_{k}": v for k, v in stats.items() if not isinstance(v, dict)})
        arts = ["snapshot/stats.json"] + (
            ["snapshot/events.parquet", "snapshot/items.parquet", "snapshot/users.parquet"]
            if self.config.log_snapshot_artifacts
            else []
        )
        logger.info("snapshot: %d events, %d users, %d items", stats["n_events"], stats["n_users"], stats["n_items"])
        return {"n_events": stats["n_events"], "as_of": stats["as_of"], "_log_artifacts": arts}

    def _stage_validate(self) -> dict[str, Any]:
        stats = _read_json(self.run_dir / "snapshot" / "stats.json")
        events = pd.read_parquet(self.run_dir / "snapshot" / "events.parquet", columns=None)
        previous = self._previous_stats()
        report = validate_snapshot(events, stats, self.config.validation, previous)
        del events
        _write_json(self.run_dir / "validate" / "report.json", report.as_dict())
        tracking.log_artifact(self.run_dir / "validate" / "report.json", "validate")
        drift = report.checks.get("drift")
        if isinstance(drift, dict):
            tracking.log_metrics_finite({f"drift_{k}": float(v) if math.isfinite(v) else 1e9 for k, v in drift.items()})
        if not report.ok:
            raise ValidationFailed(report.reasons)
        return {"ok": True, "checks": report.checks}

    def _stage_train(self) -> dict[str, Any]:
        events = self._events()
        prod_version, prod_bundle = self._production()
        until = trained_until(prod_bundle) if prod_bundle is not None else None
        cutoff, mode = choose_cutoff(
            events, self.config.evaluation.test_ratio, until, self.config.evaluation.min_fresh_ratio
        )
        holdout = Holdout.build(events, cutoff)
        out = self.run_dir / "train"
        trained = []
        production: dict[str, Any] | None = None
        if prod_bundle is not None:
            production = {
                "version": str(prod_version.version),
                "trained_until": until.isoformat() if until is not None else None,
                "eval": "bundle vectors on a fresh holdout"
                if mode == "fresh"
                else "recipe refit on the holdout's train part",
                "capabilities": sorted(prod_bundle.capabilities),
            }
            if mode == "refit":
                params = dict(prod_bundle.params or {})
                weighting, alpha = params.pop("weighting", "confidence"), float(params.pop("alpha", 1.0))
                recipe = ModelConfig(kind=prod_bundle.kind, params=params, weighting=weighting, alpha=alpha)
                m = fit_model(
                    recipe,
                    InteractionMatrix.from_events(
                        holdout.split.train,
                        user_ids=holdout.user_ids,
                        item_ids=holdout.item_ids,
                        weighting=weighting,
                        alpha=alpha,
                    ),
                    None,
                )
                (out / "production").mkdir(parents=True, exist_ok=True)
                np.savez(
                    out / "production" / "eval_vectors.npz", user_vectors=m.user_vectors_, item_vectors=m.item_vectors_
                )
                production["metric"] = m.metric
                del m
            del prod_bundle
        logger.info(
            "holdout: events from %s (%s%s)",
            cutoff,
            mode,
            f", production v{production['version']}" if production else "",
        )
        candidates = self._choose_candidates(events)
        _write_json(out / "candidates.json", [c.model_dump(mode="json") for c in candidates])
        for i, cand in enumerate(candidates):
            tc = self.config.train_config(cand)
            folder = out / str(i)
            folder.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            train_m = InteractionMatrix.from_events(
                holdout.split.train,
                user_ids=holdout.user_ids,
                item_ids=holdout.item_ids,
                weighting=tc.weighting,
                alpha=tc.alpha,
            )
            model = fit_model(tc.model, train_m, None, events=holdout.split.train)
            np.savez(folder / "eval_vectors.npz", user_vectors=model.user_vectors_, item_vectors=model.item_vectors_)
            del train_m, model
            full = InteractionMatrix.from_events(events, weighting=tc.weighting, alpha=tc.alpha)
            model = fit_model(tc.model, full, None, events=events)
            np.savez(folder / "full_vectors.npz", user_vectors=model.user_vectors_, item_vectors=model.item_vectors_)
            sp.save_npz(folder / "full_matrix.npz", full.matrix)
            _write_json(folder / "ids.json", {"user_ids": full.user_ids.tolist(), "item_ids": full.item_ids.tolist()})
            _write_json(
                folder / "model.json",
                {
                    "label": cand.label,
                    "kind": model.kind,
                    "metric": model.metric,
                    "params": cand.params,
                    "fold_in": FoldInSpec.of(model, tc.weighting, tc.alpha).model_dump(mode="json"),
                },
            )
            seconds = time.perf_counter() - t0
            tracking.log_metrics_finite({f"fit_seconds_{i}": seconds})
            trained.append(
                {"index": i, "label": cand.label, "kind": model.kind, "metric": model.metric, "seconds": seconds}
            )
            logger.info("trained candidate %s in %.1fs", cand.label, seconds)
            del full, model
        _write_json(out / "split.json", {k: v for k, v in holdout.split.report.items()})
        tracking.log_params_flat({f"split_{k}": v for k, v in holdout.split.report.items()})
        return {
            "candidates": trained,
            "cutoff": pd.Timestamp(cutoff).isoformat(),
            "holdout_mode": mode,
            "production": production,
            "_log_artifacts": ["train/split.json"],
        }

    def _choose_candidates(self, events: pd.DataFrame) -> list[ModelConfig]:
        """The configured models; with ``search``, the last search's winner, searched anew on
        this snapshot when the last search is older than ``search.every`` (or there is none)."""
        cadence = self.config.search
        if cadence is None:
            return list(self.config.models)
        from pipelines.search import SearchConfig, describe, parse_duration, run_search
        from recsys.datasets.base import Dataset

        path = pipelines_dir(self.settings) / f"{self.config.name}.search.json"
        last = _read_json(path) if path.exists() else None
        now = pd.Timestamp.now(tz="UTC")
        if last is not None and (now - pd.Timestamp(last["searched_at"])).total_seconds() < parse_duration(
            cadence.every
        ):
            logger.info(
                "train: refitting the last search's winner (%s, searched %s)", last["label"], last["searched_at"]
            )
            return [ModelConfig.model_validate(last["winner"])]
        folder = self.run_dir / "snapshot"
        dataset = Dataset(
            events=events,
            items=pd.read_parquet(folder / "items.parquet"),
            users=pd.read_parquet(folder / "users.parquet"),
        )
        outcome = run_search(
            self.settings,
            dataset,
            SearchConfig(
                trials=cadence.trials,
                max_seconds=parse_duration(cadence.budget),
                seed=self.config.evaluation.seed,
                content="none",
                families=tuple(cadence.families),
            ),
        )
        winner = outcome.winner.model_copy(update={"name": "searched"})
        _write_json(
            path,
            {
                "searched_at": now.isoformat(),
                "winner": winner.model_dump(mode="json"),
                "label": describe(winner),
                "search_run_id": outcome.parent_run_id,
                "validation_ndcg": outcome.score,
                "popularity_ndcg": outcome.popularity_score,
            },
        )
        logger.info("train: searched anew, winner %s", describe(winner))
        return [winner]

    def _trained_candidates(self) -> list[ModelConfig]:
        path = self.run_dir / "train" / "candidates.json"
        if not path.exists():  # a run started before candidates were recorded
            return list(self.config.models)
        return [ModelConfig.model_validate(c) for c in _read_json(path)]

    def _stage_evaluate(self) -> dict[str, Any]:
        ev = self.config.evaluation
        tr = self.state.output("train")
        holdout = Holdout.build(self._events(), pd.Timestamp(tr["cutoff"]))
        prod_info = tr["production"]
        prod_bundle = None
        if prod_info is not None:
            prod_version = tracking.get_version(self.client, self.model_name, prod_info["version"])
            prod_bundle = ModelBundle.load(tracking.fetch_bundle(self.settings, prod_version), verify=True)
        mask = production_user_mask(holdout, prod_bundle, tr["holdout_mode"]) if prod_bundle is not None else None
        users = holdout.eval_users(ev.eval_users, ev.seed, mask)
        # No evaluation users (none known to both sides) is not an error of the run: the gate
        # refuses such a holdout (holdout_too_small), with the metrics left out.
        empty = {"eval_users": 0.0}
        result: dict[str, Any] = {
            "cutoff": holdout.cutoff.isoformat(),
            "eval_users": int(len(users)),
            "test_interactions": int(holdout.test[users].nnz) if len(users) else 0,
            "candidates": {},
        }
        if len(users) == 0:
            logger.warning("evaluate: no holdout users known to both the candidate and production")
        for cand in self.state.output("train")["candidates"]:
            vec = np.load(self.run_dir / "train" / str(cand["index"]) / "eval_vectors.npz")
            m = (
                score(holdout, users, vec["user_vectors"], vec["item_vectors"], cand["metric"], ev.k)
                if len(users)
                else dict(empty)
            )
            result["candidates"][cand["label"]] = m
            tracking.log_metrics_finite({f"{cand['label']}.{k}": v for k, v in m.items() if math.isfinite(v)})
        result["popularity"] = score_popularity(holdout, users, ev.k) if len(users) else None
        if result["popularity"] is not None:
            tracking.log_metrics_finite(
                {f"popularity.{k}": v for k, v in result["popularity"].items() if math.isfinite(v)}
            )
        gate_metric = self.config.gate.metric

        def key(label: str) -> float:
            v = result["candidates"][label].get(gate_metric, float("nan"))
            return v if math.isfinite(v) else -math.inf

        best_label = max(result["candidates"], key=key)
        best = next(c for c in self.state.output("train")["candidates"] if c["label"] == best_label)
        result["best"] = best_label
        if prod_bundle is not None:
            if len(users) == 0:
                pm = dict(empty)
            elif tr["holdout_mode"] == "fresh":
                pm = score_production(holdout, prod_bundle, users, ev.k)
            else:
                vec = np.load(self.run_dir / "train" / "production" / "eval_vectors.npz")
                pm = score(holdout, users, vec["user_vectors"], vec["item_vectors"], prod_info["metric"], ev.k)
            result["production"] = {**prod_info, "metrics": pm}
            tracking.log_metrics_finite({f"production.{k}": v for k, v in pm.items() if math.isfinite(v)})
            tracking.set_tags({"production_version": prod_info["version"], "production_eval": prod_info["eval"]})
        else:
            result["production"] = None
        _write_json(self.run_dir / "evaluate" / "metrics.json", result)
        arts = ["evaluate/metrics.json"]
        if self.config.bias.enabled and len(users):
            assessment = self._assess(holdout, users, best)
            _write_json(self.run_dir / "evaluate" / "bias.json", assessment_dict(assessment))
            summary = {k: v for k, v in assessment.report.summary().items() if math.isfinite(v)}
            tracking.log_metrics_finite(summary)
            # the version's run (leakage: of the served vectors, logged at index)
            tracking.log_metrics_to_run(
                self.client, self.parent_id, {k: v for k, v in summary.items() if "leakage" not in k}
            )
            arts.append("evaluate/bias.json")
        best_metrics = result["candidates"][best_label]
        tracking.log_metrics_to_run(self.client, self.parent_id, best_metrics)
        logger.info(
            "evaluate: best %s %s=%.4f%s",
            best_label,
            gate_metric,
            best_metrics.get(gate_metric, float("nan")),
            f", production v{prod_version.version} {result['production']['metrics'].get(gate_metric, float('nan')):.4f}"
            if prod_bundle is not None
            else ", no production model",
        )
        return {
            "best": best_label,
            "best_index": best["index"],
            "best_metrics": best_metrics,
            "production_version": result["production"]["version"] if result["production"] else None,
            "_log_artifacts": arts,
        }

    def _assess(self, holdout: Holdout, users: np.ndarray, best: dict[str, Any]) -> Assessment:
        """The best candidate's bias report and configured mitigations on the holdout."""
        cand = self._trained_candidates()[best["index"]]
        vec = np.load(self.run_dir / "train" / str(best["index"]) / "eval_vectors.npz")
        train = InteractionMatrix.from_events(
            holdout.split.train,
            user_ids=holdout.user_ids,
            item_ids=holdout.item_ids,
            weighting=cand.weighting,
            alpha=cand.alpha,
        )
        ev = self.config.evaluation
        return assess(
            vec["user_vectors"],
            vec["item_vectors"],
            best["metric"] if best["metric"] in ("dot", "cosine") else "dot",
            train.matrix,
            holdout.test,
            users,
            ev.k,
            self._labels(holdout.user_ids),
            self.config.bias.settings(ev.seed),
            model_kind=cand.kind,
            regularization=cand.params.get("regularization"),
            leakage=False,  # the gate and the card use the served vectors' (index stage)
        )

    def _stage_index(self) -> dict[str, Any]:
        ev = self.state.output("evaluate")
        i = ev["best_index"]
        folder = self.run_dir / "train" / str(i)
        cand = self._trained_candidates()[i]
        tc = self.config.train_config(cand)
        meta = _read_json(folder / "model.json")
        vec = np.load(folder / "full_vectors.npz")
        ids = _read_json(folder / "ids.json")
        matrix = InteractionMatrix(
            matrix=sp.load_npz(folder / "full_matrix.npz").tocsr(),
            user_ids=np.asarray(ids["user_ids"], dtype=object),
            item_ids=np.asarray(ids["item_ids"], dtype=object),
        )
        model = SimpleNamespace(
            kind=meta["kind"],
            metric=meta["metric"],
            user_vectors_=vec["user_vectors"],
            item_vectors_=vec["item_vectors"],
        )
        stats = _read_json(self.run_dir / "snapshot" / "stats.json")
        stats.pop("top_items", None)
        info = {
            "data": stats,
            "metrics": ev["best_metrics"],
            "pipeline": {"name": self.config.name, "run_id": self.run_id, "candidate": cand.label},
        }
        bias = self.config.bias
        labels = self._labels(matrix.user_ids) if bias.enabled or bias.debias is not None else {}
        debiaser, debias_info = None, None
        if bias.debias is not None:
            model, debiaser, debias_info = debias_model(tc, model, matrix, labels)
        bundle = build_bundle(tc, model, matrix, info, fold_in=FoldInSpec.model_validate(meta["fold_in"]))
        bundle.info["calibration"] = bias.calibration
        if debiaser is not None:
            bundle.objects["debias"] = debiaser
            bundle.info["debias"] = debias_info
        if bias.enabled:
            leakage = served_leakage(bundle.user_vectors, labels, bias.settings(self.config.evaluation.seed))
            _write_json(self.run_dir / "index" / "leakage.json", [asdict(x) for x in leakage])
            tracking.log_metrics_to_run(
                self.client, self.parent_id, {f"bias_leakage_{x.attribute}": x.auc for x in leakage}
            )
        recall = {k: float(v) for k, v in bundle.info.items() if k.endswith("recall_at_10")}
        if self.config.index.kind == "exact":
            recall = {"index_user_recall_at_10": 1.0, "index_item_recall_at_10": 1.0}
        finite = bool(np.isfinite(bundle.user_vectors).all() and np.isfinite(bundle.item_vectors).all())
        bundle.save(self.run_dir / "index" / "bundle")
        tracking.log_metrics_finite(recall)
        tracking.log_artifact(self.run_dir / "index" / "bundle" / "manifest.json", "index")
        return {"recall": recall, "vectors_finite": finite, "bundle": "index/bundle", "debias": debias_info}

    def _stage_gate(self) -> dict[str, Any]:
        metrics = _read_json(self.run_dir / "evaluate" / "metrics.json")
        idx = self.state.output("index")
        cand = metrics["candidates"][metrics["best"]]
        prod = metrics["production"]["metrics"] if metrics.get("production") else None
        recall = {k.removeprefix("index_").removesuffix("_recall_at_10"): v for k, v in idx["recall"].items()}
        candidate_caps = manifest_capabilities(_read_json(self.run_dir / "index" / "bundle" / "manifest.json"))
        decision: GateDecision = decide(
            self.config.gate,
            cand,
            prod,
            recall,
            idx["vectors_finite"],
            popularity=metrics.get("popularity"),
            holdout=HoldoutStats(int(metrics["eval_users"]), int(metrics.get("test_interactions", 0))),
            production_capabilities=self._production_capabilities(metrics.get("production")),
            candidate_capabilities=candidate_caps,
            card=self._bias_report(),
        )
        out = {
            "passed": decision.passed,
            "reason": decision.reason,
            "reasons": decision.reasons,
            "refused_by": decision.refused_by,
            "checks": decision.checks,
            "production_version": metrics["production"]["version"] if metrics.get("production") else None,
            "production_eval": (metrics.get("production") or {}).get("eval"),
        }
        _write_json(self.run_dir / "gate" / "decision.json", out)
        tracking.set_tags({"gate": "passed" if decision.passed else "rejected", "gate_reason": decision.reason[:5000]})
        self.client.set_tag(self.parent_id, "gate", "passed" if decision.passed else "rejected")
        self.client.set_tag(self.parent_id, "gate_reason", decision.reason[:5000])
        if decision.refused_by:
            self.client.set_tag(self.parent_id, "gate_refused_by", ",".join(decision.refused_by))
        (logger.info if decision.passed else logger.warning)(
            "gate %s: %s", "passed" if decision.passed else "REJECTED", decision.reason
        )
        return {**out, "_log_artifacts": ["gate/decision.json"]}

    def _bias_report(self) -> BiasReport | None:
        """The candidate's bias report (evaluate stage) with the leakage of the vectors it
        serves (index stage); None when the bias report is off or had no users."""
        path = self.run_dir / "evaluate" / "bias.json"
        if not path.exists():
            return None
        report = assessment_from_dict(_read_json(path)).report
        leakage = self.run_dir / "index" / "leakage.json"
        if leakage.exists():
            report = replace(report, leakage=[Leakage(**x) for x in _read_json(leakage)])
        return report

    def _production_capabilities(self, production: dict[str, Any] | None) -> list[str] | None:
        """What production serves (recorded at train; read from its manifest for older runs)."""
        if production is None:
            return None
        if "capabilities" in production:
            return production["capabilities"]
        mv = tracking.get_version(self.client, self.model_name, production["version"])
        path = tracking.fetch_bundle(self.settings, mv)
        return sorted(manifest_capabilities(_read_json(path / "manifest.json")))

    def _find_registered(self):
        try:
            versions = self.client.search_model_versions(f"name='{self.model_name}'")
        except Exception:  # the registered model does not exist yet
            return None
        mine = [v for v in versions if v.tags.get("pipeline_run_id") == self.run_id]
        return max(mine, key=lambda v: int(v.version)) if mine else None

    def _stage_register(self) -> dict[str, Any]:
        gate = self.state.output("gate")
        existing = self._find_registered()
        if existing is not None:
            logger.info("register: version %s already registered by this run; reusing it", existing.version)
            self._log_card(str(existing.version))
            return {"version": str(existing.version), "reused": True}
        bundle_dir = self.run_dir / "index" / "bundle"
        manifest = _read_json(bundle_dir / "manifest.json")
        self.client.log_artifacts(self.parent_id, str(bundle_dir), tracking.BUNDLE_ARTIFACT)
        uploaded = {
            f.path.split("/", 1)[1] for f in _list_artifacts(self.client, self.parent_id, tracking.BUNDLE_ARTIFACT)
        }
        expected = set(manifest["files"]) | {"manifest.json"}
        if not expected <= uploaded:
            raise RuntimeError(f"bundle upload incomplete: missing {sorted(expected - uploaded)[:5]}")
        metrics = self.state.output("evaluate")["best_metrics"]
        tags = {
            "pipeline": self.config.name,
            "pipeline_run_id": self.run_id,
            "kind": manifest["kind"],
            "candidate": self.state.output("evaluate")["best"],
            "gate": "passed" if gate["passed"] else "rejected",
            "manifest_sha256": file_sha256(bundle_dir / "manifest.json"),
            self.config.gate.metric: f"{metrics.get(self.config.gate.metric, float('nan')):.6f}",
        }
        if not gate["passed"]:
            tags["rejected"] = gate["reason"][:5000]
        mv = tracking.register_bundle(self.client, self.model_name, self.parent_id, tags=tags)
        tracking.set_tag("version", str(mv.version))
        self.client.set_tag(self.parent_id, "version", str(mv.version))
        self._log_card(str(mv.version))
        return {"version": str(mv.version), "reused": False}

    def _log_card(self, version: str) -> None:
        """The version's model card, on the parent run (the version's run) under model_card/."""
        if not self.config.bias.enabled:
            return
        path = self.run_dir / "evaluate" / "bias.json"
        assessment = assessment_from_dict(_read_json(path)) if path.exists() else None
        ev = self.state.output("evaluate")
        cand = self._trained_candidates()[ev["best_index"]]
        stats = _read_json(self.run_dir / "snapshot" / "stats.json")
        tr = self.state.output("train")
        card = new_card(
            model_name=self.model_name,
            version=version,
            run_id=self.parent_id,
            model=cand.model_dump(mode="json"),
            data_stats=stats,
            validation=ev["best_metrics"],
            validation_split=f"time holdout: events from {tr['cutoff']} ({tr['holdout_mode']})",
            bias=self._bias_report(),
            mitigations=assessment.mitigations if assessment is not None else [],
            serving={"calibration": self.config.bias.calibration, "debias": self.state.output("index").get("debias")},
        )
        log_card(self.client, self.parent_id, card)

    def _stage_promote(self) -> dict[str, Any]:
        gate = self.state.output("gate")
        version = self.state.output("register")["version"]
        if not gate["passed"]:
            logger.warning("promote: not promoting version %s (gate rejected: %s)", version, gate["reason"])
            return {"promoted": False, "version": version}
        current = tracking.resolve_alias(self.client, self.model_name, self.alias)
        current_v = str(current.version) if current is not None else None
        if current_v not in (gate["production_version"], version):
            raise PipelineConflict(
                f"alias {self.alias} moved from version {gate['production_version']} to {current_v} "
                f"after this run evaluated against it; start a new run to re-evaluate"
            )
        tracking.set_alias(self.client, self.model_name, self.alias, version)
        self.client.set_model_version_tag(self.model_name, version, "promoted", datetime.now(UTC).isoformat())
        self.client.set_tag(self.parent_id, "promoted", f"{self.alias}={version}")
        return {"promoted": True, "version": version, "previous": current_v}

    def _stage_notify(self) -> dict[str, Any]:
        if not self.state.output("promote").get("promoted"):
            return {"notified": []}
        generation = self._bump_reload_generation()
        if not self.config.notify.urls:
            return {"notified": [], "reload_generation": generation}
        import httpx

        cfg = self.config.notify
        key = os.environ.get(cfg.api_key_env) or next(iter(getattr(self.settings, "api_key_list", []) or []), None)
        headers = {"X-API-Key": key} if key else {}
        results = []
        for url in cfg.urls:
            target = f"{url.rstrip('/')}/admin/reload"
            try:
                resp = httpx.post(target, headers=headers, timeout=cfg.timeout_s)
                ok = resp.status_code < 400
                results.append({"url": target, "status": resp.status_code, "ok": ok, "body": resp.text[:500]})
            except httpx.HTTPError as exc:
                ok = False
                results.append({"url": target, "status": None, "ok": False, "error": str(exc)})
            (logger.info if ok else logger.warning)(
                "notify %s: %s", target, results[-1].get("status") or results[-1].get("error")
            )
        failed = [r for r in results if not r["ok"]]
        tracking.set_tag("notify_failed", str(len(failed)))
        _write_json(self.run_dir / "notify" / "results.json", results)
        if failed and cfg.required:
            raise RuntimeError(f"{len(failed)} server(s) could not be told to reload: {failed[0]['url']}")
        return {"notified": results, "reload_generation": generation}

    def _bump_reload_generation(self) -> int | None:
        """Every API worker on this database reloads within a second (feature_store/control.py);
        the notify URLs reach servers on other databases. A failure here only warns: the alias
        has moved, and the servers' alias poll will see it."""
        from feature_store import FeatureStore

        try:
            store = FeatureStore(self.settings.database_url, create=False)
            try:
                generation = store.control.bump_reload_generation(f"pipeline {self.config.name} run {self.run_id}")
            finally:
                store.dispose()
        except Exception as exc:  # noqa: BLE001 - whatever the database says, the run has promoted
            logger.warning("notify: could not bump the reload generation in the feature store: %s", exc)
            return None
        logger.info("notify: reload generation %d", generation)
        return generation


def _list_artifacts(client, run_id: str, path: str) -> list:
    out, todo = [], [path]
    while todo:
        for f in client.list_artifacts(run_id, todo.pop()):
            (todo.append(f.path) if f.is_dir else out.append(f))
    return out


def _read_dataset_source(src) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame | None]:
    """Events (normalized, duplicates kept), items and users (ids only, duplicates kept), and
    the users' attributes when the source has them (``user_id``, ``attributes`` dicts)."""
    from recsys.datasets.base import DatasetError, normalize_events, source_time

    if not src.path.exists():
        raise DatasetError(f"dataset path not found: {src.path}")

    def read(path: Path) -> pd.DataFrame:
        return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)

    if src.format in ("parquet", "csv"):
        raw = read(src.path)
        if "timestamp" not in raw:
            raw["timestamp"] = source_time(src.path)
        events = normalize_events(raw)
        items = (
            read(src.items_path)[["item_id"]].astype(str)
            if src.items_path
            else pd.DataFrame({"item_id": pd.Series(dtype=str)})
        )
        users = (
            read(src.users_path)[["user_id"]].astype(str)
            if src.users_path
            else pd.DataFrame({"user_id": pd.Series(dtype=str)})
        )
        if "available" not in items:
            items["available"] = True
        return events, items, users, None
    from recsys.datasets import load_dataset

    ds = load_dataset(src.format, src.path)
    return ds.events, ds.items[["item_id", "available"]], ds.users[["user_id"]], ds.users[["user_id", "attributes"]]


def run_pipeline(
    settings: Settings, config: PipelineConfig, run_id: str | None = None, on_stage: OnStage | None = None
) -> PipelineResult:
    return Pipeline(settings, config, run_id=run_id, on_stage=on_stage).run()
