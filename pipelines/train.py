"""`recsys train`: snapshot → matrix → embedder → holdout evaluation → indexes → bundle →
MLflow run → registered version → alias. Each stage is timed and logged."""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipelines import tracking
from pipelines.card import BiasConfig, log_card, new_card
from recsys.bundle import ModelBundle
from recsys.datasets.base import Dataset, DatasetError
from recsys.evaluation.bias import user_attribute_labels
from recsys.evaluation.metrics import ranking_metrics_at_k
from recsys.evaluation.mitigation import Assessment, assess, fit_debiaser, served_leakage
from recsys.evaluation.splits import random_split
from recsys.evaluation.topk import top_k_scores
from recsys.features import build_item_features, build_user_features
from recsys.hybrid import history_profiles, hybrid_top_k
from recsys.index import IndexSettings, build_index
from recsys.matrix import InteractionMatrix
from recsys.models.base import Embedder
from recsys.models.coldstart import ContentToCFMapper
from recsys.models.config import FeatureConfig, ModelConfig, checked_params, user_sequences
from recsys.models.foldin import FoldInSpec
from recsys.models.registry import CONTENT_KINDS, SEQUENCE_KINDS, make_model
from recsys.settings import Settings

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
    #: ``auto`` builds no approximate index when one exact query takes at most this (ms): the
    #: most an index could save per query (recsys.index.IndexSettings says what was measured)
    exact_enough_ms: float = Field(0.05, ge=0)
    #: wall time per space for building, tuning and timing the candidates (HNSW is abandoned
    #: once its measured insertion rate projects past what is left)
    build_budget_seconds: float = Field(150.0, gt=0)
    #: distance metric per index. ``user`` defaults to the model's own (``dot`` for matrix
    #: factorization: Annoy's ranking then equals the model's score); any of cosine, dot,
    #: euclidean, manhattan, hamming may be chosen for each.
    user_metric: Literal["cosine", "dot", "euclidean", "manhattan", "hamming"] | None = None
    item_metric: Literal["cosine", "dot", "euclidean", "manhattan", "hamming"] = "cosine"
    content_metric: Literal["cosine", "dot", "euclidean", "manhattan", "hamming"] = "cosine"


class ContentConfig(_Config):
    """A content encoder trained beside the CF model: content/hybrid modes, /search, cold start."""

    kind: Literal["tags", "tfidf", "sbert"] = "tfidf"
    params: dict[str, Any] = Field(default_factory=dict)

    _params = field_validator("params")(checked_params)


class HybridConfig(_Config):
    default_mode: Literal["collaborative", "content", "hybrid"] = "hybrid"
    fusion: Literal["weighted", "rrf"] = "weighted"
    weights: tuple[float, float] = (0.7, 0.3)
    #: ridge penalty of the content → CF mapping for cold-start items
    cold_start_alpha: float = 1.0


class TrainConfig(_Config):
    #: the model, its weighting and side features (``recsys.models.config.ModelConfig``, the
    #: one model config of train, pipeline, experiments and search)
    model: ModelConfig = Field(default_factory=ModelConfig)
    content: ContentConfig | None = None
    hybrid: HybridConfig = Field(default_factory=HybridConfig)
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


@dataclass
class HoldoutFit:
    """What the holdout evaluation fitted and scored: the model, its train matrix (weighted as
    the config says), the test matrix and the evaluated users (rows of both)."""

    model: Embedder
    train: InteractionMatrix
    test: InteractionMatrix
    users: np.ndarray


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
    """Fit ``config`` on ``matrix`` (already weighted as ``config`` says). LightFM gets side
    features built from ``dataset``'s catalog; item2vec gets each user's time-ordered items
    from ``events`` (default: the dataset's events restricted to the matrix)."""
    if config.engine == "spark":
        from recsys.models.spark_als import SparkALSEmbedder

        return SparkALSEmbedder(**config.params).fit(matrix.matrix)
    model = make_model(config.kind, **config.params)
    if config.kind in CONTENT_KINDS:
        if dataset is None:
            raise ValueError(f"{config.kind} is a content encoder: it needs the items catalog")
        return model.fit(dataset.items, item_ids=matrix.item_ids, matrix=matrix.matrix)
    kinds = config.member_kinds()
    kwargs: dict[str, Any] = {}
    lightfm = [p for k, p in kinds if k == "lightfm"]
    if lightfm and dataset is not None:
        f = config.features
        if any(p.get("use_item_features", True) for p in lightfm) and (f.item_categories or f.item_text):
            kwargs["item_features"] = build_item_features(
                dataset.items, matrix.item_ids, identity=f.identity, categories=f.item_categories, text=f.item_text
            )[0]
        if any(p.get("use_user_features", True) for p in lightfm) and f.user_attributes and not dataset.users.empty:
            kwargs["user_features"] = build_user_features(
                dataset.users, matrix.user_ids, identity=f.identity, exclude_keys=tuple(f.exclude_user_keys)
            )[0]
    if any(k in SEQUENCE_KINDS for k, _ in kinds):
        source = events if events is not None else (dataset.events if dataset is not None else None)
        if source is not None and "timestamp" in source:
            kwargs["sequences"] = user_sequences(source, matrix)
    return model.fit(matrix.matrix, **kwargs)


def fit_content(config: TrainConfig, dataset: Dataset, item_ids: np.ndarray):
    """The content encoder, fitted on the catalog (no interactions: nothing leaks from a split)."""
    encoder = make_model(config.content.kind, **config.content.params)
    return encoder.fit(dataset.items, item_ids=item_ids)


def fit_holdout(
    config: TrainConfig, dataset: Dataset, full: InteractionMatrix, encoder=None
) -> tuple[dict[str, float], HoldoutFit]:
    """Fit on a per-user random holdout split and score the held-out interactions; returns the
    metrics and what it fitted (for the bias report).

    With a content encoder, the content-only and hybrid rankings are scored on the same split
    (prefixes ``content_`` and ``hybrid_``); unprefixed metrics are the collaborative model's.
    """
    # Only the columns the matrices need: the split then copies codes and floats, not 5M
    # event-id strings and timestamps it never looks at (same rows, same order: same split).
    split = random_split(
        dataset.events[["user_id", "item_id", "value"]], test_ratio=config.test_ratio, seed=config.seed
    )
    train = InteractionMatrix.from_events(
        split.train, user_ids=full.user_ids, item_ids=full.item_ids, weighting=config.weighting, alpha=config.alpha
    )
    test = InteractionMatrix.from_events(split.test, user_ids=full.user_ids, item_ids=full.item_ids, weighting="none")
    model = fit_model(config.model, train, dataset, events=split.train)
    users = np.flatnonzero(np.diff(test.matrix.indptr) > 0)
    if len(users) > config.eval_users:
        users = np.sort(np.random.default_rng(config.seed).choice(users, config.eval_users, replace=False))
    seen = train.matrix[users]
    rankings = {
        "": top_k_scores(
            model.user_vectors_, model.item_vectors_, config.k, exclude=seen, user_rows=users, metric=model.metric
        )[0]
    }
    if encoder is not None:
        profiles = history_profiles(seen, encoder.item_vectors_)
        rankings["content_"] = top_k_scores(profiles, encoder.item_vectors_, config.k, exclude=seen, metric="cosine")[0]
        rankings["hybrid_"] = hybrid_top_k(
            model.user_vectors_[users],
            model.item_vectors_,
            profiles,
            encoder.item_vectors_,
            config.k,
            exclude=seen,
            metric=model.metric,
            weights=config.hybrid.weights,
            fusion=config.hybrid.fusion,
        )
    out: dict[str, float] = {}
    for prefix, recommended in rankings.items():
        metrics = ranking_metrics_at_k(recommended, test.matrix, config.k, user_rows=users)
        out.update({f"{prefix}{name}_at_{config.k}": float(v) for name, v in metrics.items() if name != "n_users"})
    out["eval_users"] = float(len(users))
    out.update({f"split_{k}": float(v) for k, v in split.report.items() if isinstance(v, (int, float))})
    return out, HoldoutFit(model, train, test, users)


def assess_holdout(config: TrainConfig, holdout: HoldoutFit, labels: dict[str, np.ndarray]) -> Assessment:
    """The bias report and each configured mitigation on the holdout (pipelines/card.py)."""
    model = holdout.model
    return assess(
        model.user_vectors_,
        model.item_vectors_,
        model.metric if model.metric in ("dot", "cosine") else "dot",
        holdout.train.matrix,
        holdout.test.matrix,
        holdout.users,
        config.k,
        labels,
        config.bias.settings(config.seed),
        model_kind=config.model.kind,
        regularization=config.model.params.get("regularization"),
        leakage=False,  # the card reports the leakage of the served vectors (measured on them)
    )


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
        info["hybrid"] = config.hybrid.model_dump()
        info["hybrid"]["content_kind"] = encoder.kind
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
    settings = IndexSettings(
        target_recall=ix.target_recall,
        n_trees=ix.n_trees,
        search_k=ix.search_k,
        M=ix.M,
        ef_construction=ix.ef_construction,
        ef=ix.ef,
        num_threads=ix.num_threads,
        vector_dtype=ix.vector_dtype,
        tune_seconds=ix.tune_seconds,
        annoy_auto_max_items=ix.annoy_auto_max_items,
        num_leaves=ix.num_leaves,
        exact_enough_ms=ix.exact_enough_ms,
        build_budget_seconds=ix.build_budget_seconds,
    )
    choices = {}
    for role, metric, vectors, queries in spaces:
        sample = queries[rng.choice(len(queries), min(ix.recall_queries, len(queries)), replace=False)]
        index, choice = build_index(ix.kind, metric, vectors, sample, settings)
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
        user_item_counts=np.diff(matrix.matrix.indptr).astype(np.int32),
    )


def train(
    settings: Settings,
    config: TrainConfig | None = None,
    *,
    dataset: Dataset | None = None,
    as_of: datetime | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train one model on the feature store's snapshot (or a given dataset) and register it."""
    from feature_store import FeatureStore

    config = config or TrainConfig()
    timings: dict[str, float] = {}
    if dataset is None:
        store = FeatureStore(settings.database_url, offline_uri=settings.offline_store_uri)
        with _stage("export", timings, on_stage):
            # Events posted through the API since the last export join the offline log first.
            store.export_offline()
    with _stage("snapshot", timings, on_stage):
        if dataset is None:
            dataset = store.snapshot(as_of)
            store.dispose()
        if len(dataset.events) == 0:
            raise DatasetError("the snapshot holds no events: ingest data first (recsys ingest / recsys generate)")
    with _stage("matrix", timings, on_stage):
        # Categorical ids, once: the split and the three matrices then work on integer codes
        # instead of re-hashing millions of id strings each (5M events: ~8 s → ~2 s).
        events, dataset = dataset.events, copy.copy(dataset)  # the caller's dataset stays as it was
        dataset.events = events.assign(
            user_id=events["user_id"].astype("category"), item_id=events["item_id"].astype("category")
        )
        full = InteractionMatrix.from_events(dataset.events, weighting=config.weighting, alpha=config.alpha)
    encoder = None
    if config.content is not None:
        with _stage("content", timings, on_stage):
            encoder = fit_content(config, dataset, full.item_ids)
    with _stage("evaluate", timings, on_stage):
        metrics, holdout = fit_holdout(config, dataset, full, encoder)
    labels = user_attribute_labels(dataset.users, full.user_ids)
    assessment = None
    if config.bias.enabled:
        with _stage("bias", timings, on_stage):
            assessment = assess_holdout(config, holdout, labels)
    del holdout
    with _stage("fit", timings, on_stage):
        model = fit_model(config.model, full, dataset)
    fold_in = FoldInSpec.of(model, config.weighting, config.alpha)
    debiaser, debias_info = None, None
    if config.bias.debias is not None:
        with _stage("debias", timings, on_stage):
            model, debiaser, debias_info = debias_model(config, model, full, labels)
    stats = dataset.stats()
    stats["as_of"] = (as_of or datetime.now().astimezone()).isoformat()
    with _stage("index", timings, on_stage):
        bundle = build_bundle(
            config, model, full, {"data": stats, "metrics": metrics}, dataset, encoder, fold_in=fold_in
        )
        bundle.info["calibration"] = config.bias.calibration
        if debiaser is not None:
            bundle.objects["debias"] = debiaser
            bundle.info["debias"] = debias_info
    if assessment is not None:
        with _stage("leakage", timings, on_stage):
            # the card's leakage is that of the vectors served (after debiasing, when configured)
            report = replace(
                assessment.report,
                leakage=served_leakage(bundle.user_vectors, labels, config.bias.settings(config.seed)),
            )
            assessment = Assessment(report, assessment.mitigations, assessment.after)
    client = tracking.setup(settings)
    with _stage("track", timings, on_stage), tempfile.TemporaryDirectory(prefix="bundle-") as tmp:
        bundle_dir = bundle.save(Path(tmp) / "bundle")
        with tracking.start_run(
            tracking.ensure_experiment(settings, settings.experiment_name), f"train-{model.kind}"
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
                    "model_kind": model.kind,
                    **config.model.params,
                    "alpha": config.alpha,
                    "weighting": config.weighting,
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
                client, settings.registered_model_name, run_id, tags={"kind": model.kind, **index_tags}
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
            validation_split=f"per-user random holdout, test_ratio {config.test_ratio}, seed {config.seed}",
            bias=assessment.report,
            mitigations=assessment.mitigations,
            serving={"calibration": config.bias.calibration, "debias": debias_info},
        )
        with _stage("card", timings, on_stage):
            log_card(client, run_id, card)
    logger.info("trained %s: %s", model.kind, {k: round(v, 4) for k, v in metrics.items()})
    return TrainResult(
        run_id=run_id,
        version=version,
        metrics=metrics,
        bundle_uri=f"runs:/{run_id}/{tracking.BUNDLE_ARTIFACT}",
        timings=timings,
    )
