"""`recsys train`: snapshot → matrix → embedder → holdout evaluation → indexes → bundle →
MLflow run → registered version → alias. Each stage is timed and logged."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipelines import tracking
from pipelines.card import BiasConfig, log_card, new_card
from recsys.bundle import HybridConfig, ModelBundle, ServingSpec
from recsys.datasets.base import Dataset, DatasetError
from recsys.evaluation.holdout import HoldoutConfig, HoldoutKind
from recsys.evaluation.mitigation import fit_debiaser
from recsys.index import IndexSettings, build_index
from recsys.matrix import InteractionMatrix
from recsys.models.base import Embedder, TrainData
from recsys.models.coldstart import ContentToCFMapper
from recsys.models.config import FeatureConfig, ModelConfig, checked_params
from recsys.models.foldin import FoldInSpec
from recsys.models.registry import make_model
from recsys.settings import Settings

if TYPE_CHECKING:
    from pipelines import steps

logger = logging.getLogger(__name__)


class _Config(BaseModel):
    # A typo in a YAML config is an error naming the field, not a silently ignored key.
    model_config = ConfigDict(extra="forbid")


class IndexConfig(_Config):
    #: ``auto``: build exact, ScaNN, IVF, HNSW and Annoy per space and keep the fastest reaching
    #: ``target_recall`` (measured on held-out queries; recsys/index/choice.py). The others
    #: force one kind.
    kind: Literal["auto", "annoy", "hnsw", "exact", "scann", "ivf_flat", "ivf_sq8", "ivf_pq"] = "auto"
    n_trees: int = Field(50, ge=1)
    #: -1: tuned at build time to the smallest value reaching ``target_recall``
    search_k: int = -1
    #: HNSW graph degree and construction beam (100: 2.5× faster to build than 200 on 100k×64
    #: ALS-like vectors, for the same recall once ``ef`` is tuned). M 24: on 200k×64 cosine
    #: vectors recall 0.95 at ef ~55 against ~75 for M 16 (about 1.5× faster queries) for a
    #: similar build time; M 32 needs ef ~45 but builds slower and its graph (2× the vectors)
    #: pushes serving RSS at 1M items to the 2.5× limit (bench/ann_bench.py)
    #: (M 16 since ScaNN serves cosine spaces: HNSW is then mostly chosen for dot spaces,
    #: which need a narrow beam; a smaller graph than M 24, quicker to build; docs/ann.md)
    M: int = Field(16, ge=2)
    ef_construction: int = Field(100, ge=1)
    #: HNSW search beam; -1: tuned at build time to the smallest value reaching ``target_recall``
    ef: int = -1
    #: threads for building indexes (-1: every core)
    num_threads: int = -1
    #: item vectors of the exact index: float16 halves their memory (recall stays near 1)
    vector_dtype: Literal["float32", "float16"] = "float32"
    target_recall: float = Field(0.95, gt=0, le=1)
    #: queries the index choice tunes and measures on (drawn from the query side; 1,000: the
    #: tuning bar, recall less two standard errors, is then ~0.008 at 1M cosine, against
    #: ~0.015 with 300 and a beam twice as wide, bench/ann_bench.py)
    recall_queries: int = Field(1000, ge=1)
    #: cap on each index's tuning time (seconds)
    tune_seconds: float = Field(120.0, gt=0)
    #: ``auto`` builds Annoy only for catalogs up to this size (it cannot win beyond; 0: never)
    annoy_auto_max_items: int = Field(200_000, ge=0)
    #: ScaNN tree leaves / IVF lists (-1: about 2·√n items)
    num_leaves: int = -1
    #: ``auto`` builds no approximate index when the most one could save per query (an exact
    #: query's time less that of a scan of k items) is at most this (ms;
    #: recsys.index.IndexSettings says what was measured)
    exact_enough_ms: float = Field(0.1, ge=0)
    #: ... nor for a catalog of at most this many items (0: off)
    exact_max_items: int = Field(2000, ge=0)
    #: wall time per space for building, tuning and timing the candidates (HNSW is abandoned
    #: once its measured insertion rate projects past what is left)
    build_budget_seconds: float = Field(150.0, gt=0)
    #: distance metric per index. ``user`` defaults to the model's own (``dot`` for matrix
    #: factorization: Annoy's ranking then equals the model's score); any of cosine, dot,
    #: euclidean, manhattan, hamming may be chosen for each.
    user_metric: Literal["cosine", "dot", "euclidean", "manhattan", "hamming"] | None = None
    item_metric: Literal["cosine", "dot", "euclidean", "manhattan", "hamming"] = "cosine"
    content_metric: Literal["cosine", "dot", "euclidean", "manhattan", "hamming"] = "cosine"

    def settings(self) -> IndexSettings:
        """The build-time knobs (recsys/index/choice.py)."""
        return IndexSettings(
            target_recall=self.target_recall,
            n_trees=self.n_trees,
            search_k=self.search_k,
            M=self.M,
            ef_construction=self.ef_construction,
            ef=self.ef,
            num_threads=self.num_threads,
            vector_dtype=self.vector_dtype,
            tune_seconds=self.tune_seconds,
            annoy_auto_max_items=self.annoy_auto_max_items,
            num_leaves=self.num_leaves,
            exact_enough_ms=self.exact_enough_ms,
            exact_max_items=self.exact_max_items,
            build_budget_seconds=self.build_budget_seconds,
        )

    def sample_queries(self, queries: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The queries the index choice tunes and measures on."""
        return queries[rng.choice(len(queries), min(self.recall_queries, len(queries)), replace=False)]


class ContentConfig(_Config):
    """A content encoder trained beside the CF model: content/hybrid modes, /search, cold start."""

    kind: Literal["tags", "tfidf", "sbert"] = "tfidf"
    params: dict[str, Any] = Field(default_factory=dict)

    _params = field_validator("params")(checked_params)


class TrainConfig(_Config):
    #: the model, its weighting and side features (``recsys.models.config.ModelConfig``, the
    #: one model config of train, pipeline, experiments and search)
    model: ModelConfig = Field(default_factory=ModelConfig)
    content: ContentConfig | None = None
    hybrid: HybridConfig = Field(default_factory=HybridConfig)
    #: the holdout the metrics are measured on (recsys/evaluation/holdout.py): a per-user
    #: ``random`` share, each user's newest events (``user_time``) or the newest events (``time``,
    #: the scheduled pipeline's)
    split: HoldoutKind = "random"
    test_ratio: float = Field(0.2, gt=0, lt=1)
    k: int = 10
    #: evaluate on at most this many test users (sampled with the seed) to bound scoring cost
    eval_users: int = 10_000
    seed: int = 42
    index: IndexConfig = Field(default_factory=IndexConfig)
    register_version: bool = True
    promote_alias: str | None = "production"
    #: the model card's bias report and the mitigations (popularity calibration served by
    #: default, linear debiasing of the user vectors); pipelines/card.py
    bias: BiasConfig = Field(default_factory=BiasConfig)

    @model_validator(mode="before")
    @classmethod
    def _model_level_keys(cls, data: Any) -> Any:
        # Files written before the model config was unified put weighting / alpha / features
        # beside ``model``; they belong to it now (same meaning).
        if isinstance(data, dict) and any(k in data for k in _MODEL_LEVEL_KEYS):
            data = dict(data)
            model = data.get("model", {})
            model = model.model_dump(exclude_unset=True) if isinstance(model, ModelConfig) else dict(model or {})
            for key in _MODEL_LEVEL_KEYS:
                if key in data:
                    if key in model:
                        raise ValueError(f"{key} is given twice: at the top level and under model")
                    model[key] = data.pop(key)
            data["model"] = model
        return data

    @property
    def holdout(self) -> HoldoutConfig:
        return HoldoutConfig(kind=self.split, test_ratio=self.test_ratio, eval_users=self.eval_users, seed=self.seed)

    @property
    def weighting(self) -> str:
        return self.model.weighting

    @property
    def alpha(self) -> float:
        return self.model.alpha

    @property
    def features(self) -> FeatureConfig:
        return self.model.features


_MODEL_LEVEL_KEYS = ("weighting", "alpha", "features")


@dataclass
class TrainResult:
    run_id: str
    version: str | None
    metrics: dict[str, float]
    bundle_uri: str
    timings: dict[str, float] = field(default_factory=dict)


@contextmanager
def _stage(name: str, timings: dict[str, float], on_stage: Callable[[str], None] | None) -> Iterator[None]:
    if on_stage:
        on_stage(name)
    logger.info("stage %s", name)
    start = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - start


def fit_model(
    config: ModelConfig, matrix: InteractionMatrix, dataset: Dataset | None = None, events: pd.DataFrame | None = None
) -> Embedder:
    """Fit ``config`` on ``matrix`` (already weighted as ``config`` says), with what the model's
    capability flags ask for (``ModelConfig.train_data``): side features from ``dataset``'s
    catalog, each user's time-ordered items from ``events`` (default: the dataset's events),
    the catalog itself for a content encoder."""
    model = config.make_model()
    return model.fit(config.train_data(model, matrix, dataset, events))


def fit_content(config: TrainConfig, dataset: Dataset, item_ids: np.ndarray):
    """The content encoder, fitted on the catalog (no interactions: nothing leaks from a split)."""
    encoder = make_model(config.content.kind, **config.content.params)
    return encoder.fit(TrainData.catalog_only(dataset.items, item_ids))


@dataclass
class DebiasedModel:
    """A fitted model with its user vectors debiased (and, for ALS, its item vectors refit)."""

    kind: str
    metric: str
    user_vectors_: np.ndarray
    item_vectors_: np.ndarray


def debias_model(config: TrainConfig, model, matrix: InteractionMatrix, labels: dict[str, np.ndarray]):
    """``(model with debiased vectors, the fitted LinearDebiaser, info for the manifest)``."""
    from recsys.models.debias import refit_als_items

    settings = config.bias.settings(config.seed)
    debiaser = fit_debiaser(model.user_vectors_, labels, settings.debias, config.seed)
    users = debiaser.transform(np.asarray(model.user_vectors_, np.float32))
    items = model.item_vectors_
    refit = settings.debias.refit_items and config.model.kind == "als" and "regularization" in config.model.params
    if refit:
        items = refit_als_items(users, matrix.matrix, float(config.model.params["regularization"]))
    info = {
        "attributes": list(settings.debias.attributes),
        "directions": debiaser.n_directions,
        "refit_items": bool(refit),
        "leakage_before": debiaser.auc_before_,
        "leakage_after": debiaser.auc_after_,
    }
    logger.info("debiased user vectors: %s", info)
    return DebiasedModel(model.kind, model.metric, users, items), debiaser, info


def build_bundle(
    config: TrainConfig,
    model,
    matrix: InteractionMatrix,
    info: dict[str, Any],
    dataset: Dataset | None = None,
    encoder=None,
    fold_in: FoldInSpec | None = None,
) -> ModelBundle:
    """Vectors, indexes and serving objects of one trained model.

    ``fold_in`` is what serving needs to fold users in through the model's own method
    (default: :meth:`FoldInSpec.of` the fitted ``model``; give it when ``model`` holds vectors
    only, e.g. after debiasing or when the pipeline reloads a candidate's vectors).

    With a content encoder, available catalog items that have no interactions yet are added
    as cold-start items: their CF vectors are predicted from content by a ridge mapping
    learned on the warm items, so they can appear in collaborative answers at once.
    """
    rng = np.random.default_rng(config.seed)
    item_ids, item_vectors = matrix.item_ids, model.item_vectors_
    popularity = np.bincount(matrix.matrix.indices, minlength=matrix.matrix.shape[1]).astype(
        np.float64
    )  # users per item
    extras, objects = {}, {}
    if encoder is not None:
        catalog = dataset.items
        cold = catalog[catalog["available"] & ~catalog["item_id"].isin(set(item_ids.tolist()))]
        mapper = ContentToCFMapper(alpha=config.hybrid.cold_start_alpha).fit(encoder.item_vectors_, model.item_vectors_)
        content = encoder.item_vectors_
        if len(cold):
            cold_content = encoder.transform(cold)
            content = np.vstack([content, cold_content])
            item_vectors = np.vstack([item_vectors, mapper.predict(cold_content)])
            item_ids = np.concatenate([item_ids, cold["item_id"].to_numpy(dtype=object)])
            popularity = np.concatenate([popularity, np.zeros(len(cold))])
        extras["content"] = content.astype(np.float32)
        objects = {"text_encoder": encoder.for_serving(), "cf_mapper": mapper}
        info["cold_start_items"] = int(len(cold))
    indexes = {}
    # Metric per index (IndexConfig): "user" defaults to the model's own ranking metric, "item"
    # (item-to-item similarity) and "content" to cosine.
    ix = config.index
    spaces = [
        ("user", ix.user_metric or model.metric, item_vectors, model.user_vectors_),
        ("item", ix.item_metric, item_vectors, item_vectors),
    ]
    if encoder is not None:
        spaces.append(("content", ix.content_metric, extras["content"], extras["content"]))
    settings = ix.settings()
    choices = {}
    for role, metric, vectors, queries in spaces:
        index, choice = build_index(ix.kind, metric, vectors, ix.sample_queries(queries, rng), settings)
        chosen = choice.chosen
        # An Annoy index slower than a scan short of its target is served by scanning (prefer_exact).
        info[f"index_{role}_serving"] = "exact" if index.prefer_exact else chosen.kind
        info[f"index_{role}_recall_at_10"] = 1.0 if index.prefer_exact else chosen.recall_at_10
        info[f"index_{role}_query_ms"] = chosen.query_ms_p50
        if chosen.kind == "annoy":
            info[f"index_{role}_annoy_recall"] = chosen.recall_at_10
            info[f"index_{role}_search_k"] = chosen.setting
        elif chosen.kind == "hnsw":
            info[f"index_{role}_ef"] = chosen.setting
        elif chosen.setting is not None:  # scann: leaves searched, ivf: nprobe
            info[f"index_{role}_setting"] = chosen.setting
            if chosen.reorder is not None:
                info[f"index_{role}_reorder"] = chosen.reorder
        choices[role] = choice.as_dict()
        indexes[role] = index
    info["index_choice"] = choices
    if fold_in is None:
        fold_in = FoldInSpec.of(model, config.weighting, config.alpha)
    return ModelBundle(
        kind=model.kind,
        params={**config.model.params, "alpha": config.alpha, "weighting": config.weighting},
        metric=model.metric,
        user_ids=matrix.user_ids,
        item_ids=item_ids,
        user_vectors=model.user_vectors_,
        item_vectors=item_vectors,
        item_popularity=popularity,
        indexes=indexes,
        extras=extras,
        objects=objects,
        info=info,
        fold_in=fold_in,
        serving=ServingSpec(
            calibration=config.bias.calibration,
            hybrid=config.hybrid if encoder is not None else None,
            content_kind=encoder.kind if encoder is not None else None,
        ),
        user_item_counts=np.diff(matrix.matrix.indptr).astype(np.int32),
    )


def train(
    settings: Settings,
    config: TrainConfig | None = None,
    *,
    dataset: Dataset | None = None,
    as_of: datetime | None = None,
    on_stage: Callable[[str], None] | None = None,
    holdout_fit: steps.HoldoutFit | None = None,
) -> TrainResult:
    """Train one model on the feature store's snapshot (or a given dataset) and register it:
    the kernel's steps (pipelines/steps.py) in one process. ``holdout_fit``: the config's model
    already fitted on a holdout of ``dataset`` (the search's winner on its validation split),
    evaluated instead of splitting and fitting again."""
    from pipelines import steps

    config = config or TrainConfig()
    timings: dict[str, float] = {}
    with _stage("snapshot", timings, on_stage):
        if dataset is None:
            dataset = steps.snapshot(settings, as_of)
        elif len(dataset.events) == 0:
            raise DatasetError("the snapshot holds no events: ingest data first (recsys ingest / recsys generate)")
    with _stage("matrix", timings, on_stage):
        dataset = steps.encode_ids(dataset)  # the caller's dataset stays as it was
        full = steps.matrix(config, dataset)
    if holdout_fit is None:
        with _stage("split", timings, on_stage):
            holdout = steps.split(dataset, config.holdout)
    encoder = None
    if config.content is not None:
        with _stage("content", timings, on_stage):
            encoder = steps.content(config, dataset, full.item_ids)
    with _stage("evaluate", timings, on_stage):
        if holdout_fit is None:
            evaluated = steps.fit_holdout(config, dataset, holdout)
        else:
            holdout, evaluated = holdout_fit.holdout, holdout_fit.trained
        metrics = steps.score(config, holdout, evaluated, encoder, full.item_ids)
    assessment = None
    if config.bias.enabled:
        with _stage("bias", timings, on_stage):
            assessment = steps.assess_bias(config, holdout, evaluated, dataset)
    split_description = holdout.describe()
    del holdout, evaluated
    with _stage("fit", timings, on_stage):
        trained = steps.fit(config, dataset, full, dataset.events)
    stats = dataset.stats()
    stats["as_of"] = (as_of or datetime.now().astimezone()).isoformat()
    with _stage("index", timings, on_stage):
        built = steps.bundle(config, trained, full, dataset, encoder, {"data": stats, "metrics": metrics}, assessment)
    bundle, assessment = built.bundle, built.assessment
    client = tracking.setup(settings)
    with _stage("track", timings, on_stage), tempfile.TemporaryDirectory(prefix="bundle-") as tmp:
        bundle_dir = bundle.save(Path(tmp) / "bundle")
        with tracking.start_run(
            tracking.ensure_experiment(settings, settings.experiment_name), f"train-{bundle.kind}"
        ) as run:
            if config.content is not None:
                tracking.log_params_flat(
                    {
                        "content_kind": config.content.kind,
                        "hybrid_fusion": config.hybrid.fusion,
                        "hybrid_weights": list(config.hybrid.weights),
                        "hybrid_default_mode": config.hybrid.default_mode,
                    }
                )
            tracking.log_params_flat(
                {
                    "model_kind": bundle.kind,
                    **config.model.params,
                    "alpha": config.alpha,
                    "weighting": config.weighting,
                    "split": config.split,
                    "test_ratio": config.test_ratio,
                    "seed": config.seed,
                    "index_kind": config.index.kind,
                    "n_trees": config.index.n_trees,
                }
            )
            tracking.log_params_flat({f"data_{k}": v for k, v in stats.items()})
            tracking.log_metrics_finite(metrics)
            tracking.log_params_flat(
                {f"index_{role}_kind": c["kind"] for role, c in bundle.info["index_choice"].items()}
            )
            tracking.log_metrics_finite(
                {k: v for k, v in bundle.info.items() if k.startswith("index_") and isinstance(v, (int, float))}
            )
            tracking.log_metrics_finite(
                {
                    f"index_{role}_{c['kind']}_{name}": c[name]
                    for role, choice in bundle.info["index_choice"].items()
                    for c in choice["candidates"]
                    for name in ("recall_at_10", "query_ms_p50", "build_seconds")
                }
            )
            tracking.log_metrics_finite({f"time_{k}_s": v for k, v in timings.items()})
            if assessment is not None:
                tracking.log_metrics_finite(assessment.report.summary())
            tracking.log_bundle(bundle_dir)
            run_id = run.info.run_id
        version = None
        if config.register_version:
            index_tags = {f"index.{role}": bundle.info[f"index_{role}_serving"] for role in bundle.info["index_choice"]}
            mv = tracking.register_bundle(
                client, settings.registered_model_name, run_id, tags={"kind": bundle.kind, **index_tags}
            )
            version = str(mv.version)
            if config.promote_alias:
                tracking.set_alias(client, settings.registered_model_name, config.promote_alias, version)
    if assessment is not None:
        card = new_card(
            model_name=settings.registered_model_name,
            version=version,
            run_id=run_id,
            model=config.model.model_dump(mode="json"),
            data_stats=stats,
            validation=metrics,
            validation_split=split_description,
            bias=assessment.report,
            mitigations=assessment.mitigations,
            serving={"calibration": config.bias.calibration, "debias": built.debias},
        )
        with _stage("card", timings, on_stage):
            log_card(client, run_id, card)
    logger.info("trained %s: %s", bundle.kind, {k: round(v, 4) for k, v in metrics.items()})
    return TrainResult(
        run_id=run_id,
        version=version,
        metrics=metrics,
        bundle_uri=f"runs:/{run_id}/{tracking.BUNDLE_ARTIFACT}",
        timings=timings,
    )
