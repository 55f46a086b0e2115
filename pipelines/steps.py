"""The training kernel: the steps every training flow composes.

::

    snapshot → split → [search] → fit → evaluate → index/bundle → register → [gate → promote → notify]

``recsys train`` (:func:`pipelines.train.train`) runs the short list in one process; the
scheduled pipeline (:mod:`pipelines.pipeline`) runs the same steps plus validation, the gate,
promotion and notification, checkpointing each step's typed result so a crashed run resumes.
Each step here is a plain function with typed inputs and a typed result; what a step writes
to disk (:class:`TrainedModel`, the snapshot) can be read back as the same value.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd

from pipelines.train import TrainConfig, build_bundle, debias_model, fit_content, fit_model
from recsys.bundle import ModelBundle
from recsys.datasets.base import Dataset, DatasetError
from recsys.evaluation.bias import user_attribute_labels
from recsys.evaluation.holdout import ContentScoring, Holdout, HoldoutConfig, evaluate, vector_metric
from recsys.evaluation.mitigation import Assessment, assess, served_leakage
from recsys.matrix import InteractionMatrix
from recsys.models.foldin import FoldInSpec

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------- values


@dataclass
class TrainedModel:
    """What a fit leaves for the later steps: the vectors, the ranking metric and what serving
    needs to fold users in through the model's own method. Saved and loaded as is."""

    kind: str
    metric: str
    user_vectors_: np.ndarray
    item_vectors_: np.ndarray
    fold_in: FoldInSpec

    @classmethod
    def of(cls, model, weighting: str, alpha: float) -> TrainedModel:
        return cls(
            model.kind,
            model.metric,
            np.asarray(model.user_vectors_),
            np.asarray(model.item_vectors_),
            FoldInSpec.of(model, weighting, alpha),
        )

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / "vectors.npz", user_vectors=self.user_vectors_, item_vectors=self.item_vectors_)
        meta = {"kind": self.kind, "metric": self.metric, "fold_in": self.fold_in.model_dump(mode="json")}
        (folder / "model.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, folder: Path) -> TrainedModel:
        meta = json.loads((folder / "model.json").read_text())
        vec = np.load(folder / "vectors.npz")
        return cls(
            meta["kind"],
            meta["metric"],
            vec["user_vectors"],
            vec["item_vectors"],
            FoldInSpec.model_validate(meta["fold_in"]),
        )


@dataclass
class HoldoutFit:
    """A holdout and the config's model fitted on its train part: what :func:`score` and
    :func:`assess_bias` measure. The search leaves one for its winner (its validation split),
    so training the winner evaluates it without fitting it on a second split."""

    holdout: Holdout
    trained: TrainedModel


@dataclass
class Built:
    """The bundle step's result: the bundle, and what the card and the gate report on it."""

    bundle: ModelBundle
    debias: dict[str, Any] | None
    assessment: Assessment | None


# ---------------------------------------------------------------------------------- steps


def snapshot(settings, as_of=None) -> Dataset:
    """The feature store's point-in-time snapshot (events posted since the last export join
    the offline log first)."""
    from feature_store import FeatureStore

    store = FeatureStore(settings.database_url, offline_uri=settings.offline_store_uri)
    try:
        store.export_offline()
        dataset = store.snapshot(as_of)
    finally:
        store.dispose()
    if len(dataset.events) == 0:
        raise DatasetError("the snapshot holds no events: ingest data first (recsys ingest / recsys generate)")
    return dataset


def save_snapshot(folder: Path, events: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame) -> None:
    """A snapshot's events, catalog (text, categories, attributes) and users (attributes) as
    Parquet files :func:`load_snapshot` reads back as a :class:`Dataset`. The tables are kept
    as given (duplicates too: the pipeline's validation counts them)."""
    folder.mkdir(parents=True, exist_ok=True)
    events.assign(user_id=events["user_id"].astype(str), item_id=events["item_id"].astype(str)).to_parquet(
        folder / "events.parquet", index=False
    )
    for name, table in (("items", items), ("users", users)):
        if "attributes" in table:
            table = table.assign(attributes=[json.dumps(a or {}, default=str) for a in table["attributes"]])
        table.to_parquet(folder / f"{name}.parquet", index=False)


def load_snapshot(folder: Path) -> Dataset:
    items = pd.read_parquet(folder / "items.parquet")
    users = pd.read_parquet(folder / "users.parquet")
    for table in (items, users):
        if "attributes" in table:
            table["attributes"] = [json.loads(a) for a in table["attributes"]]
    if "categories" in items:
        items["categories"] = [list(c) if c is not None else [] for c in items["categories"]]
    return Dataset(events=pd.read_parquet(folder / "events.parquet"), items=items, users=users, validate=False)


def encode_ids(dataset: Dataset) -> Dataset:
    """The dataset with categorical ids (a copy): the split and the matrices then work on
    integer codes instead of re-hashing millions of id strings each (5M events: ~8 s → ~2 s)."""
    out = copy.copy(dataset)
    events = dataset.events
    out.events = events.assign(
        user_id=events["user_id"].astype("category"), item_id=events["item_id"].astype("category")
    )
    return out


def matrix(config: TrainConfig, dataset: Dataset) -> InteractionMatrix:
    """The full interaction matrix, weighted as the model config says."""
    return InteractionMatrix.from_events(dataset.events, weighting=config.weighting, alpha=config.alpha)


def split(dataset: Dataset, config: HoldoutConfig, cutoff: pd.Timestamp | None = None) -> Holdout:
    """The holdout (``cutoff``: where a time holdout starts, e.g. after production's data)."""
    return Holdout.build(dataset.events, config, cutoff)


def content(config: TrainConfig, dataset: Dataset, item_ids: np.ndarray):
    """The content encoder of a hybrid config (None without one), fitted on the catalog."""
    return fit_content(config, dataset, item_ids) if config.content is not None else None


def fit(config: TrainConfig, dataset: Dataset, train: InteractionMatrix, events: pd.DataFrame) -> TrainedModel:
    """Fit the config's model on ``train`` (``events``: the events behind it, for sequences)."""
    model = fit_model(config.model, train, dataset, events=events)
    return TrainedModel.of(model, config.weighting, config.alpha)


def fit_holdout(config: TrainConfig, dataset: Dataset, holdout: Holdout) -> TrainedModel:
    """The fit on the holdout's train part (what :func:`score` evaluates)."""
    return fit(config, dataset, holdout.train_matrix(config.weighting, config.alpha), holdout.split.train)


def score(
    config: TrainConfig,
    holdout: Holdout,
    trained: TrainedModel,
    encoder=None,
    full_item_ids: np.ndarray | None = None,
    users: np.ndarray | None = None,
) -> dict[str, float]:
    """The holdout metrics of ``trained`` (fitted by :func:`fit_holdout`); with the hybrid's
    content encoder (fitted on ``full_item_ids``), the content and hybrid rankings too."""
    scoring = None
    if encoder is not None:
        rows = pd.Index(full_item_ids).get_indexer(pd.Index(holdout.item_ids))
        scoring = ContentScoring(encoder.item_vectors_[rows], config.hybrid.weights, config.hybrid.fusion)
    metrics = evaluate(trained, holdout, config.k, users=users, content=scoring)
    return {**metrics, **holdout.report()}


def assess_bias(
    config: TrainConfig, holdout: Holdout, trained: TrainedModel, dataset: Dataset, users: np.ndarray | None = None
) -> Assessment:
    """The bias report and each configured mitigation on the holdout (pipelines/card.py)."""
    return assess(
        trained.user_vectors_,
        trained.item_vectors_,
        vector_metric(trained.metric),
        holdout.train_matrix(config.weighting, config.alpha).matrix,
        holdout.test,
        holdout.users if users is None else users,
        config.k,
        user_attribute_labels(dataset.users, holdout.user_ids),
        config.bias.settings(config.seed),
        model_kind=config.model.kind,
        regularization=config.model.params.get("regularization"),
        leakage=False,  # the card reports the leakage of the served vectors (measured on them)
    )


def bundle(
    config: TrainConfig,
    trained: TrainedModel,
    full: InteractionMatrix,
    dataset: Dataset,
    encoder,
    info: dict[str, Any],
    assessment: Assessment | None = None,
) -> Built:
    """Debias (when configured), build the indexes and the bundle, and measure the leakage of
    the vectors served (the card's and the gate's)."""
    labels = user_attribute_labels(dataset.users, full.user_ids)
    served, debiaser, debias_info = trained, None, None
    if config.bias.debias is not None:
        debiased, debiaser, debias_info = debias_model(config, trained, full, labels)
        served = replace(trained, user_vectors_=debiased.user_vectors_, item_vectors_=debiased.item_vectors_)
    built = build_bundle(config, served, full, info, dataset, encoder, fold_in=trained.fold_in)
    if debiaser is not None:
        built.objects["debias"] = debiaser
        built.info["debias"] = debias_info
    if assessment is not None:
        leakage = served_leakage(built.user_vectors, labels, config.bias.settings(config.seed))
        assessment = Assessment(replace(assessment.report, leakage=leakage), assessment.mitigations, assessment.after)
    return Built(built, debias_info, assessment)


def save_encoder(encoder, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    joblib.dump(encoder, folder / "encoder.joblib")


def load_encoder(folder: Path):
    path = folder / "encoder.joblib"
    return joblib.load(path) if path.exists() else None
