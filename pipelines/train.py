"""`recsys train`: snapshot → matrix → embedder → holdout evaluation → indexes → bundle →
MLflow run → registered version → alias. Each stage is timed and logged."""

from __future__ import annotations

import logging
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import mlflow
import numpy as np
from pydantic import BaseModel, Field

from recsys.bundle import ModelBundle
from recsys.datasets.base import Dataset, DatasetError
from recsys.evaluation.metrics import ranking_metrics_at_k
from recsys.evaluation.splits import random_split
from recsys.evaluation.topk import top_k_scores
from recsys.index import make_index
from recsys.matrix import InteractionMatrix
from recsys.models.registry import make_model
from recsys.settings import Settings
from pipelines import tracking

logger = logging.getLogger(__name__)


class ModelConfig(BaseModel):
    kind: str = "als"
    params: dict[str, Any] = Field(default_factory=lambda: {"factors": 64, "regularization": 0.05, "iterations": 15})


class IndexConfig(BaseModel):
    kind: Literal["annoy", "exact"] = "annoy"
    n_trees: int = 50
    search_k: int = -1
    recall_queries: int = 200


class TrainConfig(BaseModel):
    model: ModelConfig = Field(default_factory=ModelConfig)
    weighting: Literal["confidence", "bm25", "tfidf", "none"] = "confidence"
    alpha: float = 2.0
    test_ratio: float = Field(0.2, gt=0, lt=1)
    k: int = 10
    #: evaluate on at most this many test users (sampled with the seed) to bound scoring cost
    eval_users: int = 10_000
    seed: int = 42
    index: IndexConfig = Field(default_factory=IndexConfig)
    register: bool = True
    promote_alias: str | None = "production"


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


def fit_model(config: TrainConfig, matrix: InteractionMatrix, dataset: Dataset | None = None):
    model = make_model(config.model.kind, **config.model.params)
    return model.fit(matrix.matrix)


def evaluate_holdout(config: TrainConfig, dataset: Dataset, full: InteractionMatrix) -> dict[str, float]:
    """Fit on a per-user random holdout split and score the held-out interactions."""
    split = random_split(dataset.events, test_ratio=config.test_ratio, seed=config.seed)
    train = InteractionMatrix.from_events(split.train, user_ids=full.user_ids, item_ids=full.item_ids, weighting=config.weighting, alpha=config.alpha)
    test = InteractionMatrix.from_events(split.test, user_ids=full.user_ids, item_ids=full.item_ids, weighting="none")
    model = fit_model(config, train, dataset)
    users = np.flatnonzero(np.diff(test.matrix.indptr) > 0)
    if len(users) > config.eval_users:
        users = np.sort(np.random.default_rng(config.seed).choice(users, config.eval_users, replace=False))
    recommended, _ = top_k_scores(model.user_vectors_, model.item_vectors_, config.k, exclude=train.matrix[users], user_rows=users, metric=model.metric)
    metrics = ranking_metrics_at_k(recommended, test.matrix, config.k, user_rows=users)
    out = {f"{name}_at_{config.k}": float(v) for name, v in metrics.items() if name != "n_users"}
    out["eval_users"] = float(len(users))
    out.update({f"split_{k}": float(v) for k, v in split.report.items() if isinstance(v, (int, float))})
    return out


def build_bundle(config: TrainConfig, model, matrix: InteractionMatrix, info: dict[str, Any]) -> ModelBundle:
    rng = np.random.default_rng(config.seed)
    indexes = {}
    # "user": the model's own ranking metric; "item": cosine for item-to-item similarity.
    for role, metric, queries in (("user", model.metric, model.user_vectors_), ("item", "cosine", model.item_vectors_)):
        params = {"n_trees": config.index.n_trees, "search_k": config.index.search_k} if config.index.kind == "annoy" else {}
        index = make_index(config.index.kind, metric, **params).build(model.item_vectors_)
        if config.index.kind == "annoy":
            sample = queries[rng.choice(len(queries), min(config.index.recall_queries, len(queries)), replace=False)]
            info[f"index_{role}_recall_at_10"] = index.measure_recall(model.item_vectors_, sample, k=10)
        indexes[role] = index
    popularity = np.diff(matrix.matrix.tocsc().indptr).astype(np.float64)
    return ModelBundle(
        kind=model.kind,
        params={**config.model.params, "alpha": config.alpha, "weighting": config.weighting},
        metric=model.metric,
        user_ids=matrix.user_ids,
        item_ids=matrix.item_ids,
        user_vectors=model.user_vectors_,
        item_vectors=model.item_vectors_,
        item_popularity=popularity,
        indexes=indexes,
        info=info,
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
    with _stage("snapshot", timings, on_stage):
        if dataset is None:
            dataset = FeatureStore(settings.database_url).snapshot(as_of)
        if len(dataset.events) == 0:
            raise DatasetError("the snapshot holds no events: ingest data first (recsys ingest / recsys generate)")
    with _stage("matrix", timings, on_stage):
        full = InteractionMatrix.from_events(dataset.events, weighting=config.weighting, alpha=config.alpha)
    with _stage("evaluate", timings, on_stage):
        metrics = evaluate_holdout(config, dataset, full)
    with _stage("fit", timings, on_stage):
        model = fit_model(config, full, dataset)
    stats = dataset.stats()
    stats["as_of"] = (as_of or datetime.now().astimezone()).isoformat()
    with _stage("index", timings, on_stage):
        bundle = build_bundle(config, model, full, {"data": stats, "metrics": metrics})
    client = tracking.setup(settings)
    with _stage("track", timings, on_stage), tempfile.TemporaryDirectory(prefix="bundle-") as tmp:
        bundle_dir = bundle.save(Path(tmp) / "bundle")
        with mlflow.start_run(experiment_id=tracking.ensure_experiment(settings, settings.experiment_name), run_name=f"train-{model.kind}") as run:
            mlflow.log_params({"model_kind": model.kind, **config.model.params, "alpha": config.alpha, "weighting": config.weighting,
                               "test_ratio": config.test_ratio, "seed": config.seed, "index_kind": config.index.kind, "n_trees": config.index.n_trees})
            mlflow.log_params({f"data_{k}": v for k, v in stats.items()})
            mlflow.log_metrics(metrics)
            mlflow.log_metrics({k: v for k, v in bundle.info.items() if k.endswith("recall_at_10")})
            mlflow.log_metrics({f"time_{k}_s": v for k, v in timings.items()})
            tracking.log_bundle(bundle_dir)
            run_id = run.info.run_id
        version = None
        if config.register:
            mv = tracking.register_bundle(client, settings.registered_model_name, run_id, tags={"kind": model.kind})
            version = str(mv.version)
            if config.promote_alias:
                tracking.set_alias(client, settings.registered_model_name, config.promote_alias, version)
    logger.info("trained %s: %s", model.kind, {k: round(v, 4) for k, v in metrics.items()})
    return TrainResult(run_id=run_id, version=version, metrics=metrics, bundle_uri=f"runs:/{run_id}/{tracking.BUNDLE_ARTIFACT}", timings=timings)
