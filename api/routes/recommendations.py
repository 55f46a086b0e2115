"""Read routes: user recommendations, similar items, text search, anonymous sessions.

All business rules are the Recommender's; these routes map query parameters and bodies to it.
"""

from __future__ import annotations

import inspect
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query

from api.deps import HolderDep, PinDep, StoreDep, read_key, resolve
from api.history import has_fresh_events
from api.request_guards import StrictJSONRoute
from api.schemas import (
    Error,
    Fusion,
    Id,
    Label,
    Mode,
    RecommendedItem,
    SearchResults,
    SearchText,
    SessionRecommendations,
    SessionRequest,
    SimilarItems,
    UserRecommendations,
)
from recsys.recommender import (
    Filters,
    RecommendationResult,
    SearchUnavailable,
    UnknownItemError,
)

router = APIRouter(tags=["recommendations"], dependencies=[Depends(read_key)], route_class=StrictJSONRoute)

ERRORS = {
    401: {"model": Error, "description": "API key missing (when reads require one)"},
    403: {"model": Error, "description": "API key not valid"},
    404: {"model": Error, "description": "unknown item or pinned model version"},
    422: {"model": Error, "description": "invalid parameter (the body names the field)"},
    503: {"model": Error, "description": "no model loaded, or the model lacks what the request needs"},
}

IdPath = Annotated[Id, Path()]
K = Annotated[int, Query(ge=1, le=1000, description="number of items to return")]
Offset = Annotated[int, Query(ge=0, le=10_000, description="skip this many items (pagination)")]
#: key:value query filters (a label, then any text): checked whole as a label here, split in _attrs
AttrFilter = Label


class RuleParams:
    """Filters and ranking options shared by every recommendation route (query parameters)."""

    def __init__(
        self,
        include_category: Annotated[list[Label], Query(max_length=100, description="only items in one of these categories")] = [],  # noqa: B006
        exclude_category: Annotated[list[Label], Query(max_length=100, description="no items in these categories")] = [],  # noqa: B006
        include_attr: Annotated[list[AttrFilter], Query(max_length=100, description="key:value — only items whose attribute key has one of the given values")] = [],  # noqa: B006
        exclude_attr: Annotated[list[AttrFilter], Query(max_length=100, description="key:value — no items whose attribute key has this value")] = [],  # noqa: B006
        exclude_item: Annotated[list[Id], Query(max_length=1000, description="never return these item ids")] = [],  # noqa: B006
    ) -> None:
        self.filters = Filters(
            exclude_items=tuple(exclude_item),
            include_categories=tuple(include_category),
            exclude_categories=tuple(exclude_category),
            include_attributes=_attrs(include_attr, "include_attr"),
            exclude_attributes=_attrs(exclude_attr, "exclude_attr"),
        )


class RankParams:
    def __init__(
        self,
        mode: Annotated[Mode | None, Query(description="collaborative, content or hybrid (default: the model's)")] = None,
        cf_weight: Annotated[float | None, Query(ge=0, le=1000, description="hybrid: weight of the collaborative score")] = None,
        content_weight: Annotated[float | None, Query(ge=0, le=1000, description="hybrid: weight of the content score")] = None,
        fusion: Annotated[Fusion | None, Query(description="hybrid: weighted scores or reciprocal-rank fusion")] = None,
        diversity: Annotated[float | None, Query(ge=0, le=1, description="MMR lambda: 1 = pure relevance, 0 = pure diversity")] = None,
    ) -> None:
        if (cf_weight is None) != (content_weight is None):
            field = "content_weight" if content_weight is None else "cf_weight"
            raise HTTPException(status_code=422, detail={"field": field, "message": "give both cf_weight and content_weight"})
        if cf_weight is not None and cf_weight + content_weight <= 0:
            raise HTTPException(status_code=422, detail={"field": "cf_weight", "message": "the weights must not both be 0"})
        self.options: dict[str, Any] = {
            "mode": mode,
            "fusion": fusion,
            "diversity": diversity,
        }
        self.weights = None if cf_weight is None else (cf_weight, content_weight)


def on_event_loop(cls):
    """``cls`` as an ``async`` dependency with the same parameters (see api/deps.py: a sync
    dependency costs a thread-pool hop per request)."""

    async def dependency(**params):
        return cls(**params)

    dependency.__signature__ = inspect.signature(cls)
    return dependency


Rules = Annotated[RuleParams, Depends(on_event_loop(RuleParams))]
Rank = Annotated[RankParams, Depends(on_event_loop(RankParams))]


def _attrs(values: list[str], field: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for v in values:
        key, sep, value = v.partition(":")
        if not sep or not key:
            raise HTTPException(status_code=422, detail={"field": field, "message": f"expected key:value, got {v!r}"})
        out.setdefault(key, []).append(value)
    return out


def _items(result: RecommendationResult) -> list[RecommendedItem]:
    return [RecommendedItem(item_id=i.item_id, score=i.score, title=i.title, reason=i.reason) for i in result.items]


def _unavailable(exc: SearchUnavailable, field: str) -> HTTPException:
    return HTTPException(status_code=503, detail={"field": field, "message": str(exc)})


@router.get("/users/{user_id}/recommendations", response_model=UserRecommendations, responses=ERRORS)
async def user_recommendations(
    user_id: IdPath,
    holder: HolderDep,
    store: StoreDep,
    pinned: PinDep,
    rules: Rules,
    rank: Rank,
    k: K = 10,
    offset: Offset = 0,
    exclude_seen: Annotated[bool, Query(description="leave out items the user already interacted with")] = True,
) -> UserRecommendations:
    """Top-k items for a user; events posted a moment ago already count (fold-in).

    ``async`` on purpose: the work is ~1-2 ms of CPU plus two indexed reads, cheaper to run on
    the event loop than to hand to the thread pool (measured by bench/serve_bench.py).
    """
    model, variant = resolve(holder, user_id, pinned)
    history, newest = store.user_activity(user_id)
    refresh = has_fresh_events(newest, model.trained_as_of)
    try:
        result = model.recommender.recommend_for_user(
            user_id, history, k, offset=offset, exclude_seen=exclude_seen, filters=rules.filters,
            weights=rank.weights, refresh=refresh, **rank.options)
    except SearchUnavailable as exc:
        raise _unavailable(exc, "mode")
    return UserRecommendations(user_id=user_id, model_version=model.version, variant=variant, strategy=result.strategy,
                               mode=result.mode, offset=offset, items=_items(result))


@router.get("/items/{item_id}/similar", response_model=SimilarItems, responses=ERRORS)
def similar_items(
    item_id: IdPath,
    holder: HolderDep,
    pinned: PinDep,
    rules: Rules,
    k: K = 10,
    offset: Offset = 0,
    mode: Annotated[Mode | None, Query(description="collaborative, content or hybrid (default: the model's)")] = None,
    user_id: Annotated[Id | None, Query(description="for the A/B split")] = None,
) -> SimilarItems:
    """Items nearest to this item (collaborative, content or hybrid similarity)."""
    model, variant = resolve(holder, user_id, pinned)
    try:
        result = model.recommender.similar_items(item_id, k, offset=offset, filters=rules.filters, mode=mode)
    except UnknownItemError:
        raise HTTPException(status_code=404, detail={"field": "item_id", "message": f"unknown item: {item_id}"})
    except SearchUnavailable as exc:
        raise _unavailable(exc, "mode")
    return SimilarItems(item_id=item_id, model_version=model.version, variant=variant, strategy=result.strategy,
                        mode=result.mode, offset=offset, items=_items(result))


@router.get("/search", response_model=SearchResults, responses=ERRORS)
def search(
    q: Annotated[SearchText, Query(description="free text")],
    holder: HolderDep,
    pinned: PinDep,
    rules: Rules,
    k: K = 10,
    offset: Offset = 0,
    user_id: Annotated[Id | None, Query(description="for the A/B split")] = None,
) -> SearchResults:
    """Items whose content matches the text (needs a model trained with a text encoder)."""
    model, variant = resolve(holder, user_id, pinned)
    try:
        result = model.recommender.search(q, k, offset=offset, filters=rules.filters)
    except SearchUnavailable as exc:
        raise _unavailable(exc, "q")
    return SearchResults(query=q, model_version=model.version, variant=variant, strategy=result.strategy,
                         mode=result.mode, offset=offset, items=_items(result))


@router.post("/recommendations", response_model=SessionRecommendations, responses=ERRORS)
def session_recommendations(body: SessionRequest, holder: HolderDep, pinned: PinDep) -> SessionRecommendations:
    """Anonymous session: recommendations folded in from the given items (and weights)."""
    model, variant = resolve(holder, body.session_id, pinned)
    f = body.filters
    filters = Filters(exclude_items=tuple(f.exclude_items), include_categories=tuple(f.include_categories),
                      exclude_categories=tuple(f.exclude_categories), include_attributes=f.include_attributes,
                      exclude_attributes=f.exclude_attributes)
    if (body.cf_weight is None) != (body.content_weight is None):
        raise HTTPException(status_code=422, detail={"field": "content_weight" if body.content_weight is None else "cf_weight",
                                                     "message": "give both cf_weight and content_weight"})
    if body.cf_weight is not None and body.cf_weight + body.content_weight <= 0:
        raise HTTPException(status_code=422, detail={"field": "cf_weight", "message": "the weights must not both be 0"})
    blend = None if body.cf_weight is None else (body.cf_weight, body.content_weight)
    try:
        result = model.recommender.recommend_for_items(
            body.item_ids, body.weights, body.k, offset=body.offset, filters=filters, mode=body.mode,
            blend=blend, fusion=body.fusion, diversity=body.diversity)
    except SearchUnavailable as exc:
        raise _unavailable(exc, "mode")
    return SessionRecommendations(model_version=model.version, variant=variant, strategy=result.strategy,
                                  mode=result.mode, offset=body.offset, items=_items(result))
