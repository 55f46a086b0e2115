"""Dependencies injected into routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from api.serving import LoadedModel, ModelHolder
from feature_store import FeatureStore


def get_holder(request: Request) -> ModelHolder:
    return request.app.state.holder


def get_store(request: Request) -> FeatureStore:
    return request.app.state.store


def get_model(holder: Annotated[ModelHolder, Depends(get_holder)]) -> LoadedModel:
    return holder.current


HolderDep = Annotated[ModelHolder, Depends(get_holder)]
StoreDep = Annotated[FeatureStore, Depends(get_store)]
ModelDep = Annotated[LoadedModel, Depends(get_model)]
