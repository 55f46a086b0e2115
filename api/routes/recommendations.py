from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query

from api.deps import ModelDep, StoreDep
from api.schemas import RecommendedItem, SimilarItems, UserRecommendations
from recsys.recommender import RecommendationResult, UnknownItemError

router = APIRouter(tags=["recommendations"])

K = Annotated[int, Query(ge=1, le=1000, description="number of items to return")]


def _items(result: RecommendationResult) -> list[RecommendedItem]:
    return [RecommendedItem(item_id=i.item_id, score=i.score, title=i.title, reason=i.reason) for i in result.items]


@router.get("/users/{user_id}/recommendations", response_model=UserRecommendations)
def user_recommendations(user_id: Annotated[str, Path(min_length=1, max_length=256)], model: ModelDep, store: StoreDep, k: K = 10) -> UserRecommendations:
    """Top-k items for a user, excluding what they already interacted with; popular items for an unknown user."""
    history = store.user_history(user_id)
    result = model.recommender.recommend_for_user(user_id, history, k)
    return UserRecommendations(user_id=user_id, model_version=model.version, strategy=result.strategy, items=_items(result))


@router.get("/items/{item_id}/similar", response_model=SimilarItems)
def similar_items(item_id: Annotated[str, Path(min_length=1, max_length=256)], model: ModelDep, k: K = 10) -> SimilarItems:
    """Items whose embeddings are nearest to this item's."""
    try:
        result = model.recommender.similar_items(item_id, k)
    except UnknownItemError:
        raise HTTPException(status_code=404, detail={"field": "item_id", "message": f"unknown item: {item_id}"})
    return SimilarItems(item_id=item_id, model_version=model.version, strategy=result.strategy, items=_items(result))
