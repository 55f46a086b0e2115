"""The YAML experiment spec: what data, which split, which models (and their search spaces),
which metrics at which cut-offs.

A model parameter (and a model's ``weighting`` / ``alpha``) is one of

- a single value: ``factors: 64``;
- a grid: ``factors: [32, 64, 128]`` (``run`` trains every combination; ``search`` samples
  from it, or walks it with ``search.method: grid``);
- a random range: ``regularization: {low: 0.001, high: 0.1, log: true}`` (``search`` only;
  integers when both bounds are integers).

A parameter whose *value* must be a list (rare) is written ``{value: [..]}``.

Example::

    name: ml100k
    dataset: {format: movielens-100k, path: ../shared/datasets/ml-100k}
    split: {method: stratified, ratio: 0.75, filter_by: item}
    k: [5, 10, 20]
    models:
      - {kind: als, weighting: bm25, params: {factors: [32, 64], regularization: 0.01}}
      - {kind: popular}
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from recsys.datasets.loaders import LOADERS
from recsys.matrix import WEIGHTINGS
from recsys.models.config import FeatureConfig, ModelConfig
from recsys.models.registry import MODEL_KINDS, param_names
from recsys.problems import describe_validation_error

DATASET_FORMATS = (*LOADERS, "synthetic", "feature_store")
RANKING_METRICS = ("precision", "recall", "ndcg", "map", "hit_rate", "mrr", "auc")
BEYOND_METRICS = ("coverage", "novelty", "diversity", "avg_rec_popularity", "gini")
METRICS = RANKING_METRICS + BEYOND_METRICS


class SpecError(ValueError):
    """An experiment spec that cannot be used; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Range(_Strict):
    """A random-search range: uniform in [low, high], or log-uniform with ``log: true``."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> Range:
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) must be >= low ({self.low})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self

    #: both bounds were written as integers: samples are rounded to int
    _int_hint: bool = False


def _parse_space(value: Any) -> Any:
    """Normalize one parameter: scalar, list (grid) or Range."""
    if isinstance(value, dict):
        if set(value) == {"value"}:
            return _Fixed(value["value"])
        r = Range.model_validate(value)
        r._int_hint = (
            isinstance(value.get("low"), int)
            and isinstance(value.get("high"), int)
            and not isinstance(value.get("low"), bool)
        )
        return r
    if isinstance(value, list):
        if not value:
            raise ValueError("an empty grid")
        return list(value)
    return value


class _Fixed:
    """A literal value (written ``{value: ...}``) that is never expanded."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"_Fixed({self.value!r})"


class DatasetSpec(_Strict):
    format: str = Field(description="a loader format, 'synthetic' or 'feature_store'")
    path: str | None = None
    #: loader keyword arguments, or ``generate_synthetic`` arguments for ``synthetic``
    params: dict[str, Any] = Field(default_factory=dict)
    #: feature_store only: point-in-time snapshot
    as_of: str | None = None

    @field_validator("format")
    @classmethod
    def _format(cls, v: str) -> str:
        if v not in DATASET_FORMATS:
            raise ValueError(f"unknown dataset format {v!r}; expected one of {', '.join(DATASET_FORMATS)}")
        return v

    @model_validator(mode="after")
    def _path(self) -> DatasetSpec:
        if self.format in LOADERS and not self.path:
            raise ValueError(f"format {self.format!r} needs a path")
        return self


class SplitSpec(_Strict):
    method: Literal["random", "leave_last_n", "time", "stratified"] = "random"
    #: random: share of each user's events held out
    test_ratio: float = Field(0.2, gt=0, lt=1)
    #: stratified: *train* share, as Microsoft Recommenders' ``python_stratified_split``
    ratio: float = Field(0.75, gt=0, lt=1)
    filter_by: Literal["user", "item"] = "user"
    min_rating: int = Field(1, ge=1)
    #: leave_last_n
    n: int = Field(1, ge=1)
    #: time: events at or after this instant are test
    cutoff: str | None = None
    #: default: the spec's seed
    seed: int | None = None

    @model_validator(mode="after")
    def _cutoff(self) -> SplitSpec:
        if self.method == "time" and not self.cutoff:
            raise ValueError("split method 'time' needs a cutoff")
        return self


class ModelSpec(_Strict):
    kind: str
    #: label in tables and run names (default: the kind, numbered when repeated)
    name: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    weighting: Any = "confidence"
    alpha: Any = 1.0
    #: LightFM side features (``items`` / ``users`` / ``text``); off unless the spec asks
    features: FeatureConfig = Field(default_factory=lambda: FeatureConfig(item_categories=False, user_attributes=False))
    #: search space for ``recsys experiment search`` only: model params and/or ``weighting`` /
    #: ``alpha`` as lists or ranges; overrides ``params`` there, ignored by ``run``
    search: dict[str, Any] = Field(default_factory=dict)

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        known = sorted(MODEL_KINDS)
        if v not in known:
            raise ValueError(f"unknown model kind {v!r}; known kinds: {', '.join(known)}")
        return v

    @field_validator("params")
    @classmethod
    def _params(cls, v: dict[str, Any]) -> dict[str, Any]:
        return {k: _parse_space(x) for k, x in v.items()}

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, v: Any) -> Any:
        return _parse_space(v)

    @field_validator("search")
    @classmethod
    def _search(cls, v: dict[str, Any]) -> dict[str, Any]:
        out = {k: _parse_space(x) for k, x in v.items()}
        if "weighting" in out:
            cls._weighting(v["weighting"])
        return out

    @field_validator("weighting")
    @classmethod
    def _weighting(cls, v: Any) -> Any:
        v = _parse_space(v)
        for w in v if isinstance(v, list) else [v]:
            if not isinstance(w, str) or w not in WEIGHTINGS:
                raise ValueError(f"weighting must be one of {WEIGHTINGS} (or a list of them), got {w!r}")
        return v

    @model_validator(mode="after")
    def _check_params(self) -> ModelSpec:
        allowed = set(param_names(self.kind))
        unknown = sorted((set(self.params) | (set(self.search) - {"weighting", "alpha"})) - allowed)
        if unknown:
            raise ValueError(
                f"model kind {self.kind!r} has no parameter {unknown[0]!r}; its parameters: {', '.join(sorted(allowed))}"
            )
        if (self.features.item_categories or self.features.user_attributes) and self.kind not in (
            "lightfm",
            "ensemble",
        ):
            raise ValueError(f"features are only used by lightfm, not {self.kind!r}")
        return self

    # -- search spaces -------------------------------------------------------------------
    def space(self, for_search: bool = False) -> dict[str, Any]:
        """All dimensions: model params plus ``weighting`` / ``alpha`` (with ``for_search``,
        overridden by the model's ``search`` entries)."""
        out = {**{f"params.{k}": v for k, v in self.params.items()}, "weighting": self.weighting, "alpha": self.alpha}
        if for_search:
            out.update({(k if k in ("weighting", "alpha") else f"params.{k}"): v for k, v in self.search.items()})
        return out

    def grid(self, for_search: bool = False) -> list[ModelConfig]:
        """Every combination of the grid values (ranges are refused: they are for ``search``)."""
        space = self.space(for_search)
        ranged = [k for k, v in space.items() if isinstance(v, Range)]
        if ranged:
            raise SpecError(
                f"model {self.label()!r}: {ranged[0]} is a random range; ranges are for `recsys experiment search`"
            )
        keys = list(space)
        values = [v if isinstance(v, list) else [v] for v in space.values()]
        return [self._config(dict(zip(keys, combo))) for combo in itertools.product(*values)]

    def family(self, name: str):
        """This model's search space as the one search's declared family
        (``pipelines.search.Family``): lists are choices, ranges spans, the rest fixed."""
        from pipelines.search import Choice, Family, Span

        fixed: dict[str, Any] = {}
        dimensions: dict[str, Any] = {}
        for key, v in self.space(for_search=True).items():
            dim = key.removeprefix("params.")
            if isinstance(v, Range):
                dimensions[dim] = Span(v.low, v.high, log=v.log, integer=v._int_hint)
                fixed[key] = int(v.low) if v._int_hint else v.low
            elif isinstance(v, list):
                dimensions[dim] = Choice(tuple(v))
                fixed[key] = v[0]
            else:
                fixed[key] = v
        return Family(name, self._config(fixed), dimensions)

    def _config(self, point: dict[str, Any]) -> ModelConfig:
        params = {
            k.split(".", 1)[1]: (v.value if isinstance(v, _Fixed) else v)
            for k, v in point.items()
            if k.startswith("params.")
        }
        return ModelConfig(
            kind=self.kind,
            name=self.label(),
            params=params,
            weighting=point["weighting"],
            alpha=float(point["alpha"]),
            features=self.features,
        )

    def label(self) -> str:
        return self.name or self.kind


class SearchSpec(_Strict):
    """``recsys experiment search``: the spec's models' spaces searched by the one search
    (pipelines/search.py): ``random`` draws, ``grid`` walks every combination (at most
    ``trials``), ``tpe`` (Optuna's TPE) learns from the trials so far."""

    method: Literal["random", "grid", "tpe"] = "random"
    trials: int = Field(20, ge=1)
    #: the per-user ranking metric to maximize (ndcg, precision, recall, map, hit_rate, mrr),
    #: ``<name>@<k>`` or ``<name>_at_<k>`` (default: ndcg at the main k)
    metric: str | None = None
    #: ``validation``: trials are scored on a second split carved out of the train part (same
    #: method), so the test part never chooses the parameters; ``test``: on the spec's split
    holdout: Literal["validation", "test"] = "validation"


class ExperimentSpec(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str = ""
    dataset: DatasetSpec
    split: SplitSpec = Field(default_factory=SplitSpec)
    models: list[ModelSpec] = Field(min_length=1)
    metrics: list[str] = Field(default_factory=lambda: list(METRICS))
    k: list[int] = Field(default_factory=lambda: [5, 10, 20])
    seed: int = 42
    #: evaluate on at most this many test users (seeded sample); null = all
    eval_users: int | None = Field(None, ge=1)
    #: measure the recall@10 of the index training would choose (recsys/index/choice.py),
    #: against exact search, on this many user vectors (0 = skip)
    index_recall_queries: int = Field(100, ge=0)
    #: a user attribute key for the breakdown; ``auto`` picks the first low-cardinality one
    breakdown_attribute: str | None = "auto"
    search: SearchSpec = Field(default_factory=SearchSpec)

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, v: list[str]) -> list[str]:
        bad = [m for m in v if m not in METRICS]
        if bad:
            raise ValueError(f"unknown metric {bad[0]!r}; known metrics: {', '.join(METRICS)}")
        if not v:
            raise ValueError("at least one metric")
        return list(dict.fromkeys(v))

    @field_validator("k")
    @classmethod
    def _k(cls, v: list[int]) -> list[int]:
        if not v or any(x < 1 for x in v):
            raise ValueError("k must be a non-empty list of positive integers")
        return sorted(set(v))

    @model_validator(mode="after")
    def _search_metric(self) -> ExperimentSpec:
        if self.search.metric is None:
            self.search.metric = f"ndcg@{self.main_k}"
        name, k = parse_metric(self.search.metric)
        if name not in RANKING_METRICS + BEYOND_METRICS:
            raise ValueError(f"search.metric: unknown metric {name!r}")
        if k not in self.k:
            raise ValueError(f"search.metric: k={k} is not among the spec's k values {self.k}")
        return self

    @property
    def split_seed(self) -> int:
        return self.seed if self.split.seed is None else self.split.seed

    @property
    def main_k(self) -> int:
        return 10 if 10 in self.k else self.k[len(self.k) // 2]

    def configs(self) -> list[ModelConfig]:
        """Every model configuration ``run`` trains (grids expanded), with unique names."""
        configs = [c for m in self.models for c in m.grid()]
        return name_configs(configs)


def name_configs(configs: list[ModelConfig]) -> list[ModelConfig]:
    """Unique names: the label, plus the grid values that vary between configs of that label."""
    by_label: dict[str, list[ModelConfig]] = {}
    for c in configs:  # ``name`` holds the spec's label until it is made unique here
        by_label.setdefault(c.label, []).append(c)
    seen: dict[str, int] = {}
    for label, group in by_label.items():
        varying = []
        if len(group) > 1:
            keys = set().union(*(c.params for c in group))
            varying = [k for k in sorted(keys) if len({repr(c.params.get(k)) for c in group}) > 1]
            for extra in ("weighting", "alpha"):
                if len({repr(getattr(c, extra)) for c in group}) > 1:
                    varying.append(extra)
        for c in group:
            parts = [f"{k}={c.params[k] if k in c.params else getattr(c, k)}" for k in varying]
            name = label + (f"[{','.join(parts)}]" if parts else "")
            n = seen.get(name, 0)
            seen[name] = n + 1
            c.name = name if n == 0 else f"{name}#{n + 1}"
    return configs


def parse_metric(text: str) -> tuple[str, int]:
    """``ndcg@10`` / ``ndcg_at_10`` → (``ndcg``, 10)."""
    for sep in ("@", "_at_"):
        if sep in text:
            name, _, k = text.rpartition(sep)
            if k.isdigit():
                return name, int(k)
    raise SpecError(f"metric {text!r} should look like ndcg@10")


def load_spec(path: str | Path) -> ExperimentSpec:
    """Read and validate a spec; every problem is a :class:`SpecError` naming file and field."""
    path = Path(path)
    if not path.exists():
        raise SpecError(f"spec not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping at the top level")
    return parse_spec(raw, source=str(path))


def parse_spec(raw: dict[str, Any], source: str = "spec") -> ExperimentSpec:
    try:
        return ExperimentSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(describe_validation_error(exc, f"{source}:", ExperimentSpec)) from None
