"""The pipeline YAML schema (pydantic). One file describes one scheduled training pipeline.

Every section has defaults, so the smallest valid file is ``name: nightly``. See
``pipelines/examples/nightly.yaml`` for every field with a comment.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pipelines.card import BiasConfig
from pipelines.train import ContentConfig, HybridConfig, IndexConfig, TrainConfig
from recsys.evaluation.holdout import HoldoutConfig
from recsys.models.config import ModelConfig
from recsys.problems import describe_validation_error


class ConfigError(ValueError):
    """A pipeline config that cannot be read or does not validate (one line, for the CLI)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceConfig(_Strict):
    #: ``feature_store``: point-in-time snapshot of RECSYS_DATABASE_URL; ``dataset``: files.
    kind: Literal["feature_store", "dataset"] = "feature_store"
    #: snapshot time for ``feature_store`` (default: now)
    as_of: str | None = None
    #: ``dataset`` only: events file (csv/parquet) or dataset folder (movielens-100k, …)
    path: Path | None = None
    format: str = "parquet"
    items_path: Path | None = None
    users_path: Path | None = None

    @model_validator(mode="after")
    def _need_path(self) -> SourceConfig:
        if self.kind == "dataset" and self.path is None:
            raise ValueError("source.kind 'dataset' needs source.path")
        return self


class EvaluationConfig(_Strict):
    #: ``time``: the newest ``test_ratio`` of events (one global cutoff) are the holdout. The only
    #: split offered: it is the one that does not leak the future into the production comparison.
    split: Literal["time"] = "time"
    test_ratio: float = Field(0.1, gt=0, lt=0.5)
    #: use the events newer than production's training data as the holdout when they are at
    #: least this share of the snapshot (see pipelines/gate.py on leakage)
    min_fresh_ratio: float = Field(0.02, gt=0, lt=1)
    k: int = Field(10, ge=1, le=1000)
    eval_users: int = Field(10_000, ge=1)
    seed: int = 42
    metrics: list[str] = Field(default_factory=lambda: ["ndcg", "precision", "recall", "map", "hit_rate", "auc"])


class DriftConfig(_Strict):
    enabled: bool = True
    #: relative change of the event count vs the previous run (0.5: fail outside ×0.5 … ×1.5)
    max_events_change: float = 0.5
    #: relative change of the users active in the last ``active_days`` of the snapshot
    max_active_users_change: float = 0.5
    active_days: float = 7.0
    #: popularity shift: total variation distance of the top-``top_n`` item distribution
    max_top_items_tv: float = 0.35
    #: and its Jensen–Shannon divergence (base 2, in [0, 1])
    max_top_items_js: float = 0.25
    top_n: int = 100


class ValidationConfig(_Strict):
    min_events: int = 100
    min_users: int = 10
    min_items: int = 10
    #: events whose user/item is not in the users/items table (dataset sources with an items
    #: or users file; the feature store enforces this with foreign keys)
    max_unknown_ids: int = 0
    max_duplicate_ids: int = 0
    drift: DriftConfig = Field(default_factory=DriftConfig)


class CardBounds(_Strict):
    """Bounds on the model card's bias report (pipelines/card.py); None: not checked."""

    #: catalogue coverage of the holdout recommendations
    min_coverage: float | None = Field(None, ge=0, le=1)
    #: the largest worst/best nDCG gap over the user attributes (activity buckets excluded)
    max_group_gap: float | None = Field(None, ge=0)
    #: exposure Gini − data Gini
    max_amplification: float | None = None
    #: the largest attribute leakage AUC of the served user vectors
    max_leakage_auc: float | None = Field(None, ge=0.5, le=1)


class OffPolicyBounds(_Strict):
    """The gate's off-policy rule (recsys/evaluation/offpolicy.py): the candidate's click-through
    estimated by self-normalised IPS from logged impressions with propensities, against
    production's on the same log and bootstrap resamples."""

    #: refuse when the paired interval of (candidate − production) lies wholly below
    #: ``−tolerance × production``
    tolerance: float = Field(0.0, ge=0, lt=1)
    #: refuse when fewer logged (impression, position) pairs show what the candidate would show
    min_matched: int = Field(200, ge=1)
    #: bootstrap resamples of the intervals
    bootstrap: int = Field(500, ge=50)


class GateConfig(_Strict):
    #: metric name as produced by evaluation, e.g. ``ndcg_at_10``
    metric: str = "ndcg_at_10"
    #: candidate passes if candidate >= production * (1 - relative_tolerance)
    relative_tolerance: float = Field(0.02, ge=0, lt=1)
    #: other metrics that must also hold up (same tolerance)
    also: list[str] = Field(default_factory=lambda: ["recall_at_10"])
    min_index_recall: float = Field(0.9, ge=0, le=1)
    #: sanity: share of the catalogue the candidate recommends on the holdout
    min_coverage: float = Field(0.0, ge=0, le=1)
    #: sanity: candidate coverage must be >= production coverage * (1 - max_coverage_drop)
    max_coverage_drop: float = Field(0.5, ge=0, le=1)
    #: a holdout with fewer evaluation users, or fewer distinct scorable (user, item) test pairs
    #: among them (a bot repeating clicks adds events, not pairs), cannot tell models apart:
    #: the gate refuses (rule ``holdout_too_small``)
    min_eval_users: int = Field(20, ge=1)
    min_holdout_interactions: int = Field(50, ge=1)
    #: refuse a candidate that ranks below plain popularity on the same holdout (same tolerance)
    popularity_baseline: bool = True
    #: promote even if the candidate lacks a capability production has (content space, /search,
    #: content/hybrid modes); by default that is refused (rule ``capability_loss``)
    allow_capability_loss: bool = False
    #: bounds on the candidate's model card (its bias report); each one that fails refuses
    #: with a rule named after it (``card.min_coverage``, …)
    card: CardBounds | None = None
    #: the off-policy rule (``off_policy``): refuse a candidate whose click-through estimated
    #: from logged impressions with propensities (RECSYS_EXPLORE_EPSILON) is credibly below
    #: production's
    off_policy: OffPolicyBounds | None = None


class NotifyConfig(_Strict):
    #: servers to tell: ``POST <url>/admin/reload`` with header ``X-API-Key``
    urls: list[str] = Field(default_factory=list)
    #: environment variable holding the API key (falls back to the RECSYS_ADMIN_API_KEY setting)
    api_key_env: str = "RECSYS_ADMIN_API_KEY"
    timeout_s: float = 30.0
    #: fail the run when a server cannot be told (default: warn; the alias is already moved)
    required: bool = False


class SearchCadenceConfig(_Strict):
    """Search the model (``pipelines/search.py``) every ``every``; in between, refit the last
    winner. The pipeline then trains that one candidate instead of ``models``."""

    every: str = "7d"
    trials: int = Field(40, ge=1)
    #: wall-clock cap of one search
    budget: str = "10m"
    #: families to search (LightFM with the catalog's features included)
    families: list[Literal["als", "ease", "lightfm", "bpr", "itemknn", "item2vec"]] = Field(
        default_factory=lambda: ["als", "ease", "lightfm", "bpr", "itemknn", "item2vec"], min_length=1
    )

    @field_validator("every", "budget")
    @classmethod
    def _duration(cls, v: str) -> str:
        from pipelines.search import parse_duration

        parse_duration(v)
        return v


class PipelineConfig(_Strict):
    name: str = Field("default", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    source: SourceConfig = Field(default_factory=SourceConfig)
    #: models to train (``recsys.models.config.ModelConfig``, the same as ``recsys train``'s
    #: ``model``); the best by the gate metric is the candidate. ``name`` labels each one.
    models: list[ModelConfig] = Field(default_factory=lambda: [ModelConfig()], min_length=1)
    #: a content encoder trained beside the candidates (content/hybrid modes, /search, cold
    #: start), as ``recsys train``'s ``content``
    content: ContentConfig | None = None
    hybrid: HybridConfig = Field(default_factory=HybridConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    index: IndexConfig = Field(default_factory=IndexConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    #: alias to promote on a passed gate (default: the RECSYS_MODEL_ALIAS setting)
    alias: str | None = None
    notify: NotifyConfig = Field(default_factory=NotifyConfig)
    #: search the model on a cadence instead of training ``models`` (e.g. ``search: {every: 7d}``)
    search: SearchCadenceConfig | None = None
    #: also copy the snapshot Parquet files into MLflow (their sha256 is always logged)
    log_snapshot_artifacts: bool = False
    #: the model card's bias report and the mitigations (as ``recsys train``'s ``bias:``)
    bias: BiasConfig = Field(default_factory=BiasConfig)

    @field_validator("models")
    @classmethod
    def _unique_labels(cls, models: list[ModelConfig]) -> list[ModelConfig]:
        labels = [m.label for m in models]
        if len(set(labels)) != len(labels):
            raise ValueError(f"model names must be unique, got {labels}")
        return models

    def train_config(self, candidate: ModelConfig) -> TrainConfig:
        """The config ``recsys train`` would train this candidate with (same steps, same
        holdout: the same vectors and metrics)."""
        return TrainConfig(
            model=candidate,
            content=self.content,
            hybrid=self.hybrid,
            split="time",
            test_ratio=self.evaluation.test_ratio,
            k=self.evaluation.k,
            eval_users=self.evaluation.eval_users,
            seed=self.evaluation.seed,
            index=self.index,
            register_version=False,
            promote_alias=None,
            bias=self.bias,
        )

    def holdout(self) -> HoldoutConfig:
        ev = self.evaluation
        return HoldoutConfig(kind="time", test_ratio=ev.test_ratio, eval_users=ev.eval_users, seed=ev.seed)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def load_config(path: str | Path) -> PipelineConfig:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"pipeline config not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        cfg = PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, f"{path}:", PipelineConfig)) from exc
    # relative dataset paths are relative to the config file
    if cfg.source.kind == "dataset":
        for attr in ("path", "items_path", "users_path"):
            value = getattr(cfg.source, attr)
            if value is not None and not value.is_absolute():
                setattr(cfg.source, attr, (path.parent / value).resolve())
    return cfg
