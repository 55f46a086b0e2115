"""HTTP request/response schemas (kept apart from the feature-store tables)."""

from __future__ import annotations

from pydantic import BaseModel


class RecommendedItem(BaseModel):
    item_id: str
    score: float
    title: str
    reason: str | None = None


class UserRecommendations(BaseModel):
    user_id: str
    model_version: str
    strategy: str
    items: list[RecommendedItem]


class SimilarItems(BaseModel):
    item_id: str
    model_version: str
    strategy: str
    items: list[RecommendedItem]


class Health(BaseModel):
    status: str
    model_version: str | None = None
