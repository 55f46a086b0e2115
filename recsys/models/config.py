"""The one model configuration — kind, params, interaction weighting, side features — read by
``recsys train --config``, the pipeline's candidates, experiment specs and the automatic search.
``pipelines.train.fit_model`` is the one function that fits it: ``make_model`` then
``fit(train_data(...))``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

from recsys.matrix import InteractionMatrix
from recsys.models.base import Embedder, TrainData
from recsys.models.registry import MODEL_KINDS, make_model, validate_params

if TYPE_CHECKING:
    from recsys.datasets.base import Dataset

logger = logging.getLogger(__name__)

Weighting = Literal["confidence", "bm25", "tfidf", "none"]


class _Strict(BaseModel):
    # A typo in a YAML config is an error naming the field, not a silently ignored key.
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class FeatureConfig(_Strict):
    """Side features for LightFM (ignored by other kinds). Experiment specs may write the short
    names ``items`` / ``users`` / ``text``."""

    item_categories: bool = Field(True, validation_alias=AliasChoices("item_categories", "items"))
    item_text: bool = Field(False, validation_alias=AliasChoices("item_text", "text"))
    user_attributes: bool = Field(True, validation_alias=AliasChoices("user_attributes", "users"))
    identity: bool = True
    #: user attribute keys to leave out (e.g. a label)
    exclude_user_keys: list[str] = Field(default_factory=list)


def check_kind(kind: str) -> str:
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; known kinds: {', '.join(sorted(MODEL_KINDS))}")
    return kind


def checked_params(params: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
    # Checked against the model's constructor when the config is read, not when training
    # reaches the fit: a typo or a wrong type is then a config error naming params.<name>.
    kind = info.data.get("kind")
    return params if kind is None else validate_params(kind, params)


class ModelConfig(_Strict):
    """One model to fit: what ``recsys train`` trains, a pipeline candidate, an experiment trial."""

    kind: str = "als"
    params: dict[str, Any] = Field(default_factory=lambda: {"factors": 64, "regularization": 0.05, "iterations": 15})
    #: how events become matrix values (``recsys.matrix.weight``); ``alpha`` scales confidence
    weighting: Weighting = "confidence"
    alpha: float = Field(2.0, ge=0)
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    #: label in tables, run names and logs (default: kind and params)
    name: str | None = None
    #: where ALS is fitted: in this process (implicit) or on Spark (``RECSYS_SPARK_MASTER``); the
    #: same params and the same kind of bundle either way (recsys.models.spark_als)
    engine: Literal["implicit", "spark"] = "implicit"

    _kind = field_validator("kind")(check_kind)
    _params = field_validator("params")(checked_params)

    @field_validator("engine")
    @classmethod
    def _engine_supports_kind(cls, engine: str, info: ValidationInfo) -> str:
        if engine == "spark" and info.data.get("kind") != "als":
            raise ValueError(f"engine 'spark' trains kind 'als' only, not {info.data.get('kind')!r}")
        return engine

    @property
    def label(self) -> str:
        return self.name or f"{self.kind}-" + "-".join(f"{k}{v}" for k, v in sorted(self.params.items()))

    def matrix(
        self, events: pd.DataFrame, user_ids: np.ndarray | None = None, item_ids: np.ndarray | None = None
    ) -> InteractionMatrix:
        """``events`` as this model's training matrix (its weighting and alpha)."""
        return InteractionMatrix.from_events(
            events, user_ids=user_ids, item_ids=item_ids, weighting=self.weighting, alpha=self.alpha
        )

    def make_model(self) -> Embedder:
        """A new, unfitted model of this config (on the configured engine)."""
        if self.engine == "spark":
            from recsys.models.spark_als import SparkALSEmbedder

            return SparkALSEmbedder(**self.params)
        return make_model(self.kind, **self.params)

    def train_data(
        self,
        model: Embedder,
        matrix: InteractionMatrix,
        dataset: Dataset | None = None,
        events: pd.DataFrame | None = None,
    ) -> TrainData:
        """What ``model`` learns from, built only as far as its capability flags ask: side
        features from ``dataset``'s catalog and users (as ``features`` says), each user's
        time-ordered items from ``events`` (default: the dataset's events), the catalog."""
        if model.needs_catalog and dataset is None:
            raise ValueError(f"{self.kind} is a content encoder: it needs the items catalog")
        item_features = user_features = sequences = None
        if model.uses_side_features and dataset is not None:
            from recsys.features import build_item_features, build_user_features

            f = self.features
            if f.item_categories or f.item_text:
                item_features = build_item_features(
                    dataset.items, matrix.item_ids, identity=f.identity, categories=f.item_categories, text=f.item_text
                )[0]
            if f.user_attributes and not dataset.users.empty:
                user_features = build_user_features(
                    dataset.users, matrix.user_ids, identity=f.identity, exclude_keys=tuple(f.exclude_user_keys)
                )[0]
        if model.uses_sequences:
            source = events if events is not None else (dataset.events if dataset is not None else None)
            if source is not None and "timestamp" in source:
                sequences = user_sequences(source, matrix)
        return TrainData(
            matrix.matrix,
            user_ids=matrix.user_ids,
            item_ids=matrix.item_ids,
            item_features=item_features,
            user_features=user_features,
            sequences=sequences,
            items=dataset.items if model.needs_catalog else None,
        )


def user_sequences(events: pd.DataFrame, matrix: InteractionMatrix) -> list[np.ndarray]:
    """Each matrix row's item columns in time order (ties in event order): item2vec's sentences."""
    cols = pd.Index(matrix.item_ids).get_indexer(events["item_id"].astype(str).to_numpy())
    rows = pd.Index(matrix.user_ids).get_indexer(events["user_id"].astype(str).to_numpy())
    keep = (rows >= 0) & (cols >= 0)
    frame = pd.DataFrame({"row": rows[keep], "col": cols[keep], "t": events["timestamp"].to_numpy()[keep]})
    frame = frame.sort_values(["row", "t"], kind="stable")
    out: list[np.ndarray] = [np.empty(0, np.int64)] * matrix.shape[0]
    for row, group in frame.groupby("row", sort=False)["col"]:
        out[int(row)] = group.to_numpy(np.int64)
    return out
