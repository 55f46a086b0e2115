"""The scheduled training pipeline: the kernel's steps (pipelines/steps.py) plus validation,
the gate, promotion and notification, with persisted state, resume and MLflow runs.

Steps, in order::

    snapshot → validate → split → search → fit → evaluate → index → gate → register → promote → notify

* **Same steps as ``recsys train``.** Candidates are fitted, scored, indexed and bundled by the
  same functions, so the pipeline trains every kind ``recsys train`` trains (LightFM with the
  catalog's features, content encoders and hybrids, ensembles, item2vec, Spark ALS) and, with
  the same snapshot, config and seed, gives the same vectors and holdout metrics.
* **State.** Every run has a folder ``$RECSYS_DATA_DIR/pipelines/<run_id>/`` with one
  sub-folder per step (its files) and ``state.json`` (written atomically after each step)
  holding each step's typed result. Running again with the same run id skips completed steps
  and resumes after the last one.
* **MLflow.** One parent run per pipeline run (its id is kept in ``state.json``, so a resumed
  run continues the same parent), one nested run per step attempt. Every file a step writes
  is sha256-hashed; the digests are logged as ``sha256/<path>`` tags of the step's run.
* **Registration.** The bundle is uploaded to the parent run and its upload checked against the
  manifest *before* a registry version is created, and the version is created with all its
  tags at once (``pipeline_run_id``, ``gate``, ``rejected``=reason) — so no version ever points
  at a partial bundle. A resumed ``register`` finds its version by ``pipeline_run_id`` instead
  of creating a second one. ``promote`` moves the alias only if the gate passed and the alias
  still points where it did when production was evaluated.
* **Test hook.** ``RECSYS_FAIL_AT_STAGE=<step>`` raises :class:`InjectedFailure` at the start
  of that step; ``<step>:after`` raises after the step's work, before it is recorded as done.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from pipelines import steps, tracking
from pipelines.card import assessment_dict, assessment_from_dict, log_card, new_card
from pipelines.config import ConfigError, PipelineConfig
from pipelines.gate import (
    GateDecision,
    HoldoutStats,
    choose_cutoff,
    decide,
    production_user_mask,
    score_popularity,
    score_production,
    trained_until,
)
from pipelines.lock import pipeline_lock
from pipelines.train import ModelConfig
from pipelines.validate import ValidationFailed, snapshot_stats, validate_snapshot
from recsys.bundle import ModelBundle, manifest_capabilities
from recsys.datasets.base import Dataset
from recsys.evaluation.bias import BiasReport
from recsys.evaluation.holdout import Holdout, score_vectors
from recsys.index.base import file_sha256
from recsys.settings import Settings

logger = logging.getLogger(__name__)

STAGES = (
    "snapshot",
    "validate",
    "split",
    "search",
    "fit",
    "evaluate",
    "index",
    "gate",
    "register",
    "promote",
    "notify",
)
FAIL_ENV = "RECSYS_FAIL_AT_STAGE"

OnStage = Callable[[str, str], None]  # (step, "start" | "done" | "skipped")


class InjectedFailure(RuntimeError):
    """Raised by the ``RECSYS_FAIL_AT_STAGE`` test hook."""


class PipelineConflict(RuntimeError):
    """The registry changed under the run in a way it must not paper over."""


# ------------------------------------------------------------------------- step results


class _Result(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SnapshotResult(_Result):
    n_events: int
    as_of: str


class ValidateResult(_Result):
    ok: bool
    checks: dict[str, Any]


class ProductionRef(_Result):
    """The production version the candidate is compared with, and how."""

    version: str
    trained_until: str | None
    #: how production is scored: its bundle's vectors on a fresh holdout, or its recipe refit
    eval: str
    capabilities: list[str]
    #: the recipe (model config) refit on the holdout's train part in ``refit`` mode
    recipe: ModelConfig | None = None


class SplitResult(_Result):
    cutoff: str
    #: ``fresh``: the events after production's data; ``refit``: the newest ``test_ratio``
    mode: Literal["fresh", "refit"]
    production: ProductionRef | None
    report: dict[str, Any]


class SearchResult(_Result):
    candidates: list[ModelConfig]
    searched: bool


class CandidateFit(_Result):
    index: int
    label: str
    kind: str
    metric: str
    seconds: float


class FitResult(_Result):
    candidates: list[CandidateFit]
    #: the ranking metric of production's refit recipe (``refit`` mode)
    production_metric: str | None = None
    #: the candidate whose holdout fit is production's recipe refit (None: fitted on its own)
    production_fit: int | None = None


class ProductionScore(_Result):
    version: str
    eval: str
    capabilities: list[str]
    metrics: dict[str, float]


class EvaluateResult(_Result):
    cutoff: str
    eval_users: int
    test_interactions: int
    candidates: dict[str, dict[str, float]]
    popularity: dict[str, float] | None
    production: ProductionScore | None
    best: str
    best_index: int
    best_metrics: dict[str, float]

    @property
    def production_version(self) -> str | None:
        return self.production.version if self.production is not None else None


class IndexResult(_Result):
    recall: dict[str, float]
    vectors_finite: bool
    bundle: str
    debias: dict[str, Any] | None


class GateResult(_Result):
    passed: bool
    reason: str
    reasons: list[str]
    refused_by: list[str]
    checks: dict[str, Any]
    production_version: str | None
    production_eval: str | None


class RegisterResult(_Result):
    version: str
    reused: bool


class PromoteResult(_Result):
    promoted: bool
    version: str
    previous: str | None = None


class NotifyResult(_Result):
    notified: list[dict[str, Any]]
    reload_generation: int | None = None


R = TypeVar("R", bound=_Result)


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
    """``state.json`` of one pipeline run: each step's status and typed result."""

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

    def output(self, stage: str, kind: type[R]) -> R:
        return kind.model_validate(self.data["stages"][stage]["outputs"])

    def mark(self, stage: str, status: str, **extra: Any) -> None:
        self.data["stages"].setdefault(stage, {}).update(status=status, at=datetime.now(UTC).isoformat(), **extra)
        self.save()


class Pipeline:
    """One pipeline run. ``run()`` takes the lock, then runs or resumes the steps."""

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
        self._dataset: Dataset | None = None
        self._holdout: Holdout | None = None
        #: the steps, in order (names: STAGES)
        self.steps: list[tuple[str, Callable[[], _Result]]] = [
            ("snapshot", self.snapshot),
            ("validate", self.validate),
            ("split", self.split),
            ("search", self.search),
            ("fit", self.fit),
            ("evaluate", self.evaluate),
            ("index", self.index),
            ("gate", self.gate),
            ("register", self.register),
            ("promote", self.promote),
            ("notify", self.notify),
        ]
        assert tuple(name for name, _ in self.steps) == STAGES

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
            return self._run_steps()
        finally:
            pipelines_logger.removeHandler(handler)
            pipelines_logger.setLevel(old_level)
            handler.close()

    def _run_steps(self) -> PipelineResult:
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
            for name, step in self.steps:
                if self.state.done(name):
                    logger.info("step %s: already done, skipped", name)
                    if self.on_stage:
                        self.on_stage(name, "skipped")
                    continue
                self._run_step(name, step)
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
        promoted = self.state.output("promote", PromoteResult).promoted
        gate = self.state.output("gate", GateResult)
        self.state.data.update(
            status="completed",
            reason="promoted" if promoted else f"rejected: {gate.reason}",
            finished_at=datetime.now(UTC).isoformat(),
        )
        self.state.save()
        tracking.set_tags({"status": "completed", "outcome": "promoted" if promoted else "rejected"})
        tracking.end_run("FINISHED")
        result = self._result()
        logger.info("pipeline run %s completed: %s (version %s)", self.run_id, result.status, result.version)
        return result

    def _run_step(self, name: str, step: Callable[[], _Result]) -> None:
        if self.on_stage:
            self.on_stage(name, "start")
        logger.info("step %s: start", name)
        start = time.perf_counter()
        self.state.mark(name, "running")
        attempt = int(self.state.data["stages"][name].get("attempts", 0)) + 1
        self.state.data["stages"][name]["attempts"] = attempt
        with tracking.start_run(
            self.experiment_id,
            name,
            nested=True,
            tags={"stage": name, "attempt": str(attempt), "pipeline_run_id": self.run_id},
        ):
            try:
                _maybe_fail(name, "start")
                result = step()
                _maybe_fail(name, "after")
            except ValidationFailed as exc:
                self.state.mark(name, "failed", error=str(exc))
                tracking.set_tags({"validation_failed": str(exc)[:5000]})
                raise
            except BaseException as exc:
                self.state.mark(name, "failed", error=f"{type(exc).__name__}: {exc}")
                tracking.set_tag("error", f"{type(exc).__name__}: {exc}"[:5000])
                raise
            hashes = self._hash_files(name)
            seconds = time.perf_counter() - start
            tracking.log_metrics_finite({"seconds": seconds})
        self.state.mark(name, "done", outputs=result.model_dump(mode="json"), seconds=seconds, sha256=hashes)
        self.client.set_tag(self.parent_id, f"stage.{name}", "done")
        logger.info("step %s: done in %.2fs", name, seconds)
        if self.on_stage:
            self.on_stage(name, "done")

    def _hash_files(self, stage: str) -> dict[str, str]:
        """sha256 of every file the step wrote (tags ``sha256/<path>``)."""
        folder = self.run_dir / stage
        hashes: dict[str, str] = {}
        if folder.exists():
            for p in sorted(folder.rglob("*")):
                if p.is_file():
                    hashes[str(p.relative_to(self.run_dir))] = file_sha256(p)
        for rel, digest in list(hashes.items())[:200]:
            tracking.set_tag(f"sha256/{rel}", digest)
        return hashes

    def _log(self, *paths: str) -> None:
        """Copy files of this run into the current step's MLflow run."""
        for rel in paths:
            tracking.log_artifact(self.run_dir / rel, str(Path(rel).parent))

    def _result(self) -> PipelineResult:
        d = self.state.data
        stages = d["stages"]
        done = {s for s, v in stages.items() if v.get("status") == "done"}
        promoted = "promote" in done and self.state.output("promote", PromoteResult).promoted
        status = {"completed": "promoted" if promoted else "rejected"}.get(d["status"], d["status"])
        return PipelineResult(
            run_id=self.run_id,
            status=status,
            reason=d.get("reason", ""),
            version=self.state.output("register", RegisterResult).version if "register" in done else None,
            mlflow_run_id=d.get("mlflow_run_id", ""),
            run_dir=self.run_dir,
            timings={s: v.get("seconds", 0.0) for s, v in stages.items() if v.get("status") == "done"},
            metrics=self.state.output("evaluate", EvaluateResult).best_metrics if "evaluate" in done else {},
        )

    # ------------------------------------------------------------------ helpers

    def _dataset_of_run(self) -> Dataset:
        """The run's snapshot as the training steps read it (ids encoded once per process)."""
        if self._dataset is None:
            self._dataset = steps.encode_ids(steps.load_snapshot(self.run_dir / "snapshot"))
        return self._dataset

    def _holdout_of_run(self) -> Holdout:
        if self._holdout is None:
            cutoff = pd.Timestamp(self.state.output("split", SplitResult).cutoff)
            self._holdout = steps.split(self._dataset_of_run(), self.config.holdout(), cutoff)
        return self._holdout

    def _candidates(self) -> list[ModelConfig]:
        return self.state.output("search", SearchResult).candidates

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

    def _production(self):
        version = tracking.resolve_alias(self.client, self.model_name, self.alias)
        if version is None:
            return None, None
        return version, ModelBundle.load(tracking.fetch_bundle(self.settings, version), verify=True)

    def _off_policy(self, ev: EvaluateResult):
        """The candidate bundle against production on the impressions logged with propensities
        (``gate.off_policy``); None when the rule is off, there is no production or nothing was
        logged (the gate then refuses with ``off_policy_missing``)."""
        bounds = self.config.gate.off_policy
        if bounds is None or ev.production is None:
            return None
        from pipelines.offpolicy import NothingToEvaluate, compare_bundles

        candidate = ModelBundle.load(self.run_dir / "index" / "bundle", verify=True)
        version = tracking.get_version(self.client, self.model_name, ev.production.version)
        production = ModelBundle.load(tracking.fetch_bundle(self.settings, version), verify=True)
        try:
            return compare_bundles(self.settings, candidate, production, bootstrap=bounds.bootstrap)
        except NothingToEvaluate as exc:
            logger.warning("gate: %s", exc)
            return None

    def _production_bundle(self, ref: ProductionRef) -> ModelBundle:
        version = tracking.get_version(self.client, self.model_name, ref.version)
        return ModelBundle.load(tracking.fetch_bundle(self.settings, version), verify=True)

    # ------------------------------------------------------------------ steps

    def snapshot(self) -> SnapshotResult:
        src = self.config.source
        out = self.run_dir / "snapshot"
        as_of = pd.Timestamp(src.as_of) if src.as_of else pd.Timestamp.now(tz="UTC")
        if src.kind == "feature_store":
            from feature_store import FeatureStore

            store = FeatureStore(self.settings.database_url)
            try:
                dataset = store.snapshot(as_of.to_pydatetime())
            finally:
                store.dispose()
            events, items, users = dataset.events, dataset.items, dataset.users
            del dataset
        else:
            events, items, users = _read_dataset_source(src)
        steps.save_snapshot(out, events, items, users)
        stats = snapshot_stats(events, items, users, active_days=self.config.validation.drift.active_days)
        stats["as_of"] = as_of.isoformat()
        stats["source"] = src.kind if src.kind == "feature_store" else str(src.path)
        _write_json(out / "stats.json", stats)
        tracking.log_params_flat({f"data_{k}": v for k, v in stats.items() if not isinstance(v, dict)})
        self._log("snapshot/stats.json")
        if self.config.log_snapshot_artifacts:
            self._log("snapshot/events.parquet", "snapshot/items.parquet", "snapshot/users.parquet")
        logger.info("snapshot: %d events, %d users, %d items", stats["n_events"], stats["n_users"], stats["n_items"])
        return SnapshotResult(n_events=stats["n_events"], as_of=stats["as_of"])

    def validate(self) -> ValidateResult:
        folder = self.run_dir / "snapshot"
        stats = _read_json(folder / "stats.json")
        events = pd.read_parquet(folder / "events.parquet")
        report = validate_snapshot(events, stats, self.config.validation, self._previous_stats())
        del events
        _write_json(self.run_dir / "validate" / "report.json", report.as_dict())
        self._log("validate/report.json")
        drift = report.checks.get("drift")
        if isinstance(drift, dict):
            tracking.log_metrics_finite({f"drift_{k}": float(v) if math.isfinite(v) else 1e9 for k, v in drift.items()})
        if not report.ok:
            raise ValidationFailed(report.reasons)
        return ValidateResult(ok=True, checks=report.checks)

    def split(self) -> SplitResult:
        dataset = self._dataset_of_run()
        ev = self.config.evaluation
        prod_version, prod_bundle = self._production()
        until = trained_until(prod_bundle) if prod_bundle is not None else None
        cutoff, mode = choose_cutoff(dataset.events, ev.test_ratio, until, ev.min_fresh_ratio)
        holdout = steps.split(dataset, self.config.holdout(), cutoff)
        self._holdout = holdout
        production = None
        if prod_bundle is not None:
            recipe = None
            if mode == "refit":
                params = dict(prod_bundle.params or {})
                weighting, alpha = params.pop("weighting", "confidence"), float(params.pop("alpha", 1.0))
                recipe = ModelConfig(kind=prod_bundle.kind, params=params, weighting=weighting, alpha=alpha)
            production = ProductionRef(
                version=str(prod_version.version),
                trained_until=until.isoformat() if until is not None else None,
                eval="bundle vectors on a fresh holdout"
                if mode == "fresh"
                else "recipe refit on the holdout's train part",
                capabilities=sorted(prod_bundle.capabilities),
                recipe=recipe,
            )
        logger.info(
            "holdout: events from %s (%s%s)",
            holdout.cutoff,
            mode,
            f", production v{production.version}" if production else "",
        )
        _write_json(self.run_dir / "split" / "split.json", holdout.split.report)
        self._log("split/split.json")
        tracking.log_params_flat({f"split_{k}": v for k, v in holdout.split.report.items()})
        return SplitResult(
            cutoff=holdout.cutoff.isoformat(), mode=mode, production=production, report=holdout.split.report
        )

    def search(self) -> SearchResult:
        """The configured models; with ``search``, the last search's winner, searched anew on
        this snapshot when the last search is older than ``search.every`` (or there is none)."""
        cadence = self.config.search
        if cadence is None:
            return SearchResult(candidates=list(self.config.models), searched=False)
        from pipelines.search import SearchConfig, describe, parse_duration, run_search

        path = pipelines_dir(self.settings) / f"{self.config.name}.search.json"
        last = _read_json(path) if path.exists() else None
        now = pd.Timestamp.now(tz="UTC")
        if last is not None and (now - pd.Timestamp(last["searched_at"])).total_seconds() < parse_duration(
            cadence.every
        ):
            logger.info(
                "search: refitting the last search's winner (%s, searched %s)", last["label"], last["searched_at"]
            )
            return SearchResult(candidates=[ModelConfig.model_validate(last["winner"])], searched=False)
        outcome = run_search(
            self.settings,
            self._dataset_of_run(),
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
        logger.info("search: searched anew, winner %s", describe(winner))
        return SearchResult(candidates=[winner], searched=True)

    def fit(self) -> FitResult:
        """Each candidate fitted on the holdout's train part (what ``evaluate`` scores) and on
        the whole snapshot (what ``index`` bundles); production's recipe refit in ``refit`` mode."""
        dataset = self._dataset_of_run()
        holdout = self._holdout_of_run()
        split = self.state.output("split", SplitResult)
        out = self.run_dir / "fit"
        encoder = None
        if self.config.content is not None:
            full_ids = steps.matrix(self.config.train_config(self._candidates()[0]), dataset).item_ids
            encoder = steps.content(self.config.train_config(self._candidates()[0]), dataset, full_ids)
            steps.save_encoder(encoder, out)
        fitted = []
        for i, cand in enumerate(self._candidates()):
            tc = self.config.train_config(cand)
            t0 = time.perf_counter()
            steps.fit_holdout(tc, dataset, holdout).save(out / str(i) / "holdout")
            trained = steps.fit(tc, dataset, steps.matrix(tc, dataset), dataset.events)
            trained.save(out / str(i) / "full")
            seconds = time.perf_counter() - t0
            tracking.log_metrics_finite({f"fit_seconds_{i}": seconds})
            fitted.append(
                CandidateFit(index=i, label=cand.label, kind=trained.kind, metric=trained.metric, seconds=seconds)
            )
            logger.info("fitted candidate %s in %.1fs", cand.label, seconds)
        production_metric, production_fit = None, None
        recipe = split.production.recipe if split.production is not None else None
        if recipe is not None:
            # production's recipe is usually a candidate's (the same config, nightly): that
            # candidate's holdout fit serves both
            same = [c.index for c, m in zip(fitted, self._candidates()) if _same_recipe(m, recipe)]
            if same:
                production_fit = same[0]
                production_metric = fitted[production_fit].metric
                logger.info("production's recipe is candidate %s's: its holdout fit serves both", fitted[same[0]].label)
            else:
                trained = steps.fit_holdout(self.config.train_config(recipe), dataset, holdout)
                trained.save(out / "production")
                production_metric = trained.metric
        return FitResult(candidates=fitted, production_metric=production_metric, production_fit=production_fit)

    def evaluate(self) -> EvaluateResult:
        ev = self.config.evaluation
        dataset = self._dataset_of_run()
        holdout = self._holdout_of_run()
        split = self.state.output("split", SplitResult)
        fit = self.state.output("fit", FitResult)
        prod_bundle = self._production_bundle(split.production) if split.production is not None else None
        mask = production_user_mask(holdout, prod_bundle, split.mode) if prod_bundle is not None else None
        users = holdout.eval_users(ev.eval_users, ev.seed, mask)
        # No evaluation users (none known to both sides) is not an error of the run: the gate
        # refuses such a holdout (holdout_too_small), with the metrics left out.
        if len(users) == 0:
            logger.warning("evaluate: no holdout users known to both the candidate and production")
        encoder = steps.load_encoder(self.run_dir / "fit")
        full_ids = None
        if encoder is not None:
            full_ids = steps.matrix(self.config.train_config(self._candidates()[0]), dataset).item_ids
        candidates: dict[str, dict[str, float]] = {}
        for cand, done in zip(self._candidates(), fit.candidates):
            trained = steps.TrainedModel.load(self.run_dir / "fit" / str(done.index) / "holdout")
            m = steps.score(self.config.train_config(cand), holdout, trained, encoder, full_ids, users)
            candidates[done.label] = m
            prefix = re.sub(r"[^\w\-. :/]", "_", done.label)[:200]  # what MLflow accepts in a metric name
            tracking.log_metrics_finite({f"{prefix}.{k}": v for k, v in m.items() if math.isfinite(v)})
        popularity = score_popularity(holdout, users, ev.k) if len(users) else None
        if popularity is not None:
            tracking.log_metrics_finite({f"popularity.{k}": v for k, v in popularity.items() if math.isfinite(v)})
        gate_metric = self.config.gate.metric

        def key(label: str) -> float:
            v = candidates[label].get(gate_metric, float("nan"))
            return v if math.isfinite(v) else -math.inf

        best = max(fit.candidates, key=lambda c: key(c.label))
        production = None
        if prod_bundle is not None:
            ref = split.production
            if len(users) == 0:
                pm = {"eval_users": 0.0}
            elif split.mode == "fresh":
                pm = score_production(holdout, prod_bundle, users, ev.k)
            else:
                folder = "production" if fit.production_fit is None else f"{fit.production_fit}/holdout"
                vec = steps.TrainedModel.load(self.run_dir / "fit" / folder)
                pm = score_vectors(holdout, users, vec.user_vectors_, vec.item_vectors_, fit.production_metric, ev.k)
            production = ProductionScore(version=ref.version, eval=ref.eval, capabilities=ref.capabilities, metrics=pm)
            tracking.log_metrics_finite({f"production.{k}": v for k, v in pm.items() if math.isfinite(v)})
            tracking.set_tags({"production_version": ref.version, "production_eval": ref.eval})
        result = EvaluateResult(
            cutoff=holdout.cutoff.isoformat(),
            eval_users=int(len(users)),
            test_interactions=int(holdout.test[users].nnz) if len(users) else 0,
            candidates=candidates,
            popularity=popularity,
            production=production,
            best=best.label,
            best_index=best.index,
            best_metrics=candidates[best.label],
        )
        _write_json(self.run_dir / "evaluate" / "metrics.json", result.model_dump(mode="json"))
        self._log("evaluate/metrics.json")
        if self.config.bias.enabled and len(users):
            tc = self.config.train_config(self._candidates()[best.index])
            trained = steps.TrainedModel.load(self.run_dir / "fit" / str(best.index) / "holdout")
            assessment = steps.assess_bias(tc, holdout, trained, dataset, users)
            _write_json(self.run_dir / "evaluate" / "bias.json", assessment_dict(assessment))
            summary = {k: v for k, v in assessment.report.summary().items() if math.isfinite(v)}
            tracking.log_metrics_finite(summary)
            # the version's run (leakage: of the served vectors, logged at index)
            tracking.log_metrics_to_run(
                self.client, self.parent_id, {k: v for k, v in summary.items() if "leakage" not in k}
            )
            self._log("evaluate/bias.json")
        tracking.log_metrics_to_run(self.client, self.parent_id, result.best_metrics)
        logger.info(
            "evaluate: best %s %s=%.4f%s",
            best.label,
            gate_metric,
            result.best_metrics.get(gate_metric, float("nan")),
            f", production v{production.version} {production.metrics.get(gate_metric, float('nan')):.4f}"
            if production is not None
            else ", no production model",
        )
        return result

    def index(self) -> IndexResult:
        ev = self.state.output("evaluate", EvaluateResult)
        dataset = self._dataset_of_run()
        tc = self.config.train_config(self._candidates()[ev.best_index])
        trained = steps.TrainedModel.load(self.run_dir / "fit" / str(ev.best_index) / "full")
        full = steps.matrix(tc, dataset)
        stats = _read_json(self.run_dir / "snapshot" / "stats.json")
        stats.pop("top_items", None)
        info = {
            "data": stats,
            "metrics": ev.best_metrics,
            "pipeline": {"name": self.config.name, "run_id": self.run_id, "candidate": ev.best},
        }
        bias_path = self.run_dir / "evaluate" / "bias.json"
        assessment = assessment_from_dict(_read_json(bias_path)) if bias_path.exists() else None
        built = steps.bundle(tc, trained, full, dataset, steps.load_encoder(self.run_dir / "fit"), info, assessment)
        bundle = built.bundle
        if built.assessment is not None:
            _write_json(self.run_dir / "index" / "bias.json", assessment_dict(built.assessment))
            tracking.log_metrics_to_run(
                self.client,
                self.parent_id,
                {f"bias_leakage_{x.attribute}": x.auc for x in built.assessment.report.leakage},
            )
        recall = {k: float(v) for k, v in bundle.info.items() if k.endswith("recall_at_10")}
        if self.config.index.kind == "exact":
            recall = {"index_user_recall_at_10": 1.0, "index_item_recall_at_10": 1.0}
        finite = bool(np.isfinite(bundle.user_vectors).all() and np.isfinite(bundle.item_vectors).all())
        bundle.save(self.run_dir / "index" / "bundle")
        tracking.log_metrics_finite(recall)
        self._log("index/bundle/manifest.json")
        return IndexResult(recall=recall, vectors_finite=finite, bundle="index/bundle", debias=built.debias)

    def gate(self) -> GateResult:
        ev = self.state.output("evaluate", EvaluateResult)
        idx = self.state.output("index", IndexResult)
        recall = {k.removeprefix("index_").removesuffix("_recall_at_10"): v for k, v in idx.recall.items()}
        candidate_caps = manifest_capabilities(_read_json(self.run_dir / "index" / "bundle" / "manifest.json"))
        decision: GateDecision = decide(
            self.config.gate,
            ev.candidates[ev.best],
            ev.production.metrics if ev.production is not None else None,
            recall,
            idx.vectors_finite,
            popularity=ev.popularity,
            holdout=HoldoutStats(ev.eval_users, ev.test_interactions),
            production_capabilities=ev.production.capabilities if ev.production is not None else None,
            candidate_capabilities=candidate_caps,
            card=self._bias_report(),
            off_policy=self._off_policy(ev),
        )
        out = GateResult(
            passed=decision.passed,
            reason=decision.reason,
            reasons=decision.reasons,
            refused_by=decision.refused_by,
            checks=decision.checks,
            production_version=ev.production_version,
            production_eval=ev.production.eval if ev.production is not None else None,
        )
        _write_json(self.run_dir / "gate" / "decision.json", out.model_dump(mode="json"))
        self._log("gate/decision.json")
        tracking.set_tags({"gate": "passed" if decision.passed else "rejected", "gate_reason": decision.reason[:5000]})
        self.client.set_tag(self.parent_id, "gate", "passed" if decision.passed else "rejected")
        self.client.set_tag(self.parent_id, "gate_reason", decision.reason[:5000])
        if decision.refused_by:
            self.client.set_tag(self.parent_id, "gate_refused_by", ",".join(decision.refused_by))
        (logger.info if decision.passed else logger.warning)(
            "gate %s: %s", "passed" if decision.passed else "REJECTED", decision.reason
        )
        return out

    def _assessment(self):
        """The candidate's bias report with the leakage of the vectors it serves (index
        step); None when the bias report is off or had no users."""
        path = self.run_dir / "index" / "bias.json"
        return assessment_from_dict(_read_json(path)) if path.exists() else None

    def _bias_report(self) -> BiasReport | None:
        assessment = self._assessment()
        return assessment.report if assessment is not None else None

    def _find_registered(self):
        try:
            versions = self.client.search_model_versions(f"name='{self.model_name}'")
        except Exception:  # the registered model does not exist yet
            return None
        mine = [v for v in versions if v.tags.get("pipeline_run_id") == self.run_id]
        return max(mine, key=lambda v: int(v.version)) if mine else None

    def register(self) -> RegisterResult:
        gate = self.state.output("gate", GateResult)
        existing = self._find_registered()
        if existing is not None:
            logger.info("register: version %s already registered by this run; reusing it", existing.version)
            self._log_card(str(existing.version))
            return RegisterResult(version=str(existing.version), reused=True)
        bundle_dir = self.run_dir / "index" / "bundle"
        manifest = _read_json(bundle_dir / "manifest.json")
        self.client.log_artifacts(self.parent_id, str(bundle_dir), tracking.BUNDLE_ARTIFACT)
        uploaded = {
            f.path.split("/", 1)[1] for f in _list_artifacts(self.client, self.parent_id, tracking.BUNDLE_ARTIFACT)
        }
        expected = set(manifest["files"]) | {"manifest.json"}
        if not expected <= uploaded:
            raise RuntimeError(f"bundle upload incomplete: missing {sorted(expected - uploaded)[:5]}")
        ev = self.state.output("evaluate", EvaluateResult)
        tags = {
            "pipeline": self.config.name,
            "pipeline_run_id": self.run_id,
            "kind": manifest["kind"],
            "candidate": ev.best,
            "gate": "passed" if gate.passed else "rejected",
            "manifest_sha256": file_sha256(bundle_dir / "manifest.json"),
            self.config.gate.metric: f"{ev.best_metrics.get(self.config.gate.metric, float('nan')):.6f}",
        }
        if not gate.passed:
            tags["rejected"] = gate.reason[:5000]
        mv = tracking.register_bundle(self.client, self.model_name, self.parent_id, tags=tags)
        tracking.set_tag("version", str(mv.version))
        self.client.set_tag(self.parent_id, "version", str(mv.version))
        self._log_card(str(mv.version))
        return RegisterResult(version=str(mv.version), reused=False)

    def _log_card(self, version: str) -> None:
        """The version's model card, on the parent run (the version's run) under model_card/."""
        if not self.config.bias.enabled:
            return
        assessment = self._assessment()
        ev = self.state.output("evaluate", EvaluateResult)
        split = self.state.output("split", SplitResult)
        card = new_card(
            model_name=self.model_name,
            version=version,
            run_id=self.parent_id,
            model=self._candidates()[ev.best_index].model_dump(mode="json"),
            data_stats=_read_json(self.run_dir / "snapshot" / "stats.json"),
            validation=ev.best_metrics,
            validation_split=f"time holdout: events from {split.cutoff} ({split.mode})",
            bias=assessment.report if assessment is not None else None,
            mitigations=assessment.mitigations if assessment is not None else [],
            serving={
                "calibration": self.config.bias.calibration,
                "debias": self.state.output("index", IndexResult).debias,
            },
        )
        log_card(self.client, self.parent_id, card)

    def promote(self) -> PromoteResult:
        gate = self.state.output("gate", GateResult)
        version = self.state.output("register", RegisterResult).version
        if not gate.passed:
            logger.warning("promote: not promoting version %s (gate rejected: %s)", version, gate.reason)
            return PromoteResult(promoted=False, version=version)
        current = tracking.resolve_alias(self.client, self.model_name, self.alias)
        current_v = str(current.version) if current is not None else None
        if current_v not in (gate.production_version, version):
            raise PipelineConflict(
                f"alias {self.alias} moved from version {gate.production_version} to {current_v} "
                f"after this run evaluated against it; start a new run to re-evaluate"
            )
        tracking.set_alias(self.client, self.model_name, self.alias, version)
        self.client.set_model_version_tag(self.model_name, version, "promoted", datetime.now(UTC).isoformat())
        self.client.set_tag(self.parent_id, "promoted", f"{self.alias}={version}")
        return PromoteResult(promoted=True, version=version, previous=current_v)

    def notify(self) -> NotifyResult:
        if not self.state.output("promote", PromoteResult).promoted:
            return NotifyResult(notified=[])
        generation = self._bump_reload_generation()
        if not self.config.notify.urls:
            return NotifyResult(notified=[], reload_generation=generation)
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
        return NotifyResult(notified=results, reload_generation=generation)

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


def _same_recipe(candidate: ModelConfig, recipe: ModelConfig) -> bool:
    """Whether fitting ``candidate`` is fitting production's ``recipe`` (read from its bundle:
    kind, params, weighting and alpha)."""
    return (candidate.kind, candidate.params, candidate.weighting, float(candidate.alpha), candidate.engine) == (
        recipe.kind,
        recipe.params,
        recipe.weighting,
        float(recipe.alpha),
        recipe.engine,
    )


def _list_artifacts(client, run_id: str, path: str) -> list:
    out, todo = [], [path]
    while todo:
        for f in client.list_artifacts(run_id, todo.pop()):
            (todo.append(f.path) if f.is_dir else out.append(f))
    return out


def _read_dataset_source(src) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Events (normalized, duplicates kept), items and users (as given, duplicates kept: the
    validate step counts them) of a ``dataset`` source."""
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
        items = read(src.items_path) if src.items_path else pd.DataFrame({"item_id": pd.Series(dtype=str)})
        users = read(src.users_path) if src.users_path else pd.DataFrame({"user_id": pd.Series(dtype=str)})
        items["item_id"] = items["item_id"].astype(str)
        users["user_id"] = users["user_id"].astype(str)
        return events, items, users
    from recsys.datasets import load_dataset

    ds = load_dataset(src.format, src.path)
    return ds.events, ds.items, ds.users


def run_pipeline(
    settings: Settings, config: PipelineConfig, run_id: str | None = None, on_stage: OnStage | None = None
) -> PipelineResult:
    return Pipeline(settings, config, run_id=run_id, on_stage=on_stage).run()
