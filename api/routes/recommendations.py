"""Read routes: user recommendations, similar items, text search, anonymous sessions.

All business rules are the Recommender's; these routes map query parameters and bodies to it.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, StringConstraints, TypeAdapter

from api.deps import (
    VERSION_CONSTRAINTS,
    HolderDep,
    PinDep,
    api_key_header,
    check_read_key,
    pin,
    read_key,
    resolve,
)
from api.errors import ApiError
from api.history import is_fresh
from api.query import DirectRoute, checked, documented_inputs, query_model, query_reader
from api.request_guards import StrictJSONRoute
from api.schemas import (
    Error,
    Fusion,
    Id,
    Label,
    Mode,
    RecommendedItem,
    SearchMatch,
    SearchResults,
    SearchText,
    SessionRecommendations,
    SessionRequest,
    SimilarItems,
    UserRecommendations,
)
from api.serving import LoadedModel, ModelHolder
from feature_store.impressions import Impression
from recsys.evaluation.interleaving import team_draft
from recsys.evaluation.offpolicy import explore
from recsys.recommender import (
    Filters,
    RankRequestError,
    RecommendationResult,
    ScoredItem,
    SearchUnavailable,
    UnknownItemError,
)

router = APIRouter(tags=["recommendations"], dependencies=[Depends(read_key)], route_class=StrictJSONRoute)
#: routes that read their inputs (the read key too) themselves, in one pass (api/query.py)
hot_router = APIRouter(tags=["recommendations"], route_class=DirectRoute)

ERRORS = {
    401: {"model": Error, "description": "API key missing (when reads require one)"},
    403: {"model": Error, "description": "API key not valid"},
    404: {"model": Error, "description": "unknown item or pinned model version"},
    422: {"model": Error, "description": "invalid parameter (the body names the field)"},
    503: {"model": Error, "description": "no model loaded, or the model lacks what the request needs"},
}

IdPath = Annotated[Id, Path()]
#: key:value query filters (a label, then any text): checked whole as a label here, split in _attrs
AttrFilter = Label


class RuleQuery(BaseModel):
    """Filters shared by every recommendation route (query parameters, parsed in one pass)."""

    include_category: list[Label] = Field([], max_length=100, description="only items in one of these categories")
    exclude_category: list[Label] = Field([], max_length=100, description="no items in these categories")
    include_attr: list[AttrFilter] = Field(
        [], max_length=100, description="key:value — only items whose attribute key has one of the given values"
    )
    exclude_attr: list[AttrFilter] = Field(
        [], max_length=100, description="key:value — no items whose attribute key has this value"
    )
    exclude_item: list[Id] = Field([], max_length=1000, description="never return these item ids")
    k: int = Field(10, ge=1, le=1000, description="number of items to return")
    offset: int = Field(0, ge=0, le=10_000, description="skip this many items (pagination)")

    def filters(self) -> Filters:
        return Filters(
            exclude_items=tuple(self.exclude_item),
            include_categories=tuple(self.include_category),
            exclude_categories=tuple(self.exclude_category),
            include_attributes=_attrs(self.include_attr, "include_attr"),
            exclude_attributes=_attrs(self.exclude_attr, "exclude_attr"),
        )


class UserQuery(RuleQuery):
    """GET /users/{user_id}/recommendations: filters plus ranking options."""

    mode: Mode | None = Field(None, description="collaborative, content or hybrid (default: the model's)")
    cf_weight: float | None = Field(None, ge=0, le=1000, description="hybrid: weight of the collaborative score")
    content_weight: float | None = Field(None, ge=0, le=1000, description="hybrid: weight of the content score")
    fusion: Fusion | None = Field(None, description="hybrid: weighted scores or reciprocal-rank fusion")
    diversity: float | None = Field(None, ge=0, le=1, description="MMR lambda: 1 = pure relevance, 0 = pure diversity")
    calibration: float | None = Field(
        None,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="popularity calibration strength: 0 = as ranked, 1 = the list's popularity mix "
        "matches the user's history (default: the model's)",
    )
    exclude_seen: bool = Field(True, description="leave out items the user already interacted with")

    def weights(self) -> tuple[float, float] | None:
        if (self.cf_weight is None) != (self.content_weight is None):
            field = "content_weight" if self.content_weight is None else "cf_weight"
            raise ApiError(422, field, "give both cf_weight and content_weight")
        if self.cf_weight is None:
            return None
        if self.cf_weight + self.content_weight <= 0:
            raise ApiError(422, "cf_weight", "the weights must not both be 0")
        return self.cf_weight, self.content_weight


class SimilarQuery(RuleQuery):
    mode: Mode | None = Field(None, description="collaborative, content or hybrid (default: the model's)")
    user_id: Id | None = Field(None, description="for the A/B split")


class SearchQuery(RuleQuery):
    q: SearchText = Field(description="free text")
    match: SearchMatch = Field(
        "hybrid",
        description="what the text must match: lexical (its words, BM25 with stemming and typo correction), "
        "semantic (its meaning, the model's content encoder) or hybrid (both, blended)",
    )
    user_id: Id | None = Field(None, description="for the A/B split")


similar_query, SIMILAR_QUERY_DOC = query_model(SimilarQuery)
search_query, SEARCH_QUERY_DOC = query_model(SearchQuery)


def _attrs(values: list[str], field: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for v in values:
        key, sep, value = v.partition(":")
        if not sep or not key:
            raise ApiError(422, field, f"expected key:value, got {v!r}")
        out.setdefault(key, []).append(value)
    return out


def _json(answer: BaseModel) -> Response:
    """The answer as JSON bytes. Built from values the route already typed, so it is serialized
    once, without FastAPI's second validation pass (``response_model`` still documents it)."""
    return Response(content=answer.model_dump_json(), media_type="application/json")


@dataclass(slots=True)
class UserAnswer:
    """The body of GET /users/{user_id}/recommendations (documented as UserRecommendations, the
    same fields in the same order; a test checks one against the other), holding the
    Recommender's ScoredItems as they are: serialized in one pass of pydantic's encoder, no
    per-item response model built."""

    request_id: str
    model_version: str
    variant: str
    strategy: str
    mode: str | None
    offset: int
    items: list[ScoredItem]
    user_id: str
    sources: list[str] | None = None
    propensities: list[float] | None = None


_USER_ANSWER = TypeAdapter(UserAnswer)


def _items(result: RecommendationResult) -> list[RecommendedItem]:
    # model_construct: the fields come typed from the Recommender; validating them again is waste
    return [
        RecommendedItem.model_construct(item_id=i.item_id, score=float(i.score), title=i.title, reason=i.reason)
        for i in result.items
    ]


#: request ids' random bits: seeded from os.urandom, reseeded in a forked worker (no two workers
#: share a stream); a system call per request (os.urandom) costs more than the rest of the id
_ID_BITS = random.Random()
os.register_at_fork(after_in_child=_ID_BITS.seed)


def _request_id() -> str:
    """32 hex digits like a UUID: the time in ms, then 80 random bits (unique across workers).
    Time first, so the impressions' unique index takes each new id at its right edge
    (feature_store/impressions.py) instead of at a random page."""
    return f"{time.time_ns() // 1_000_000:012x}{_ID_BITS.getrandbits(80):020x}"


def _shown(
    holder: ModelHolder,
    surface: str,
    user_id: str | None,
    answer: UserAnswer | SimilarItems | SearchResults | SessionRecommendations,
) -> None:
    """Log the served list as an impression (queued, never blocking: api/impressions.py)."""
    log = holder.impressions
    if log is None:
        return
    log.record(
        Impression(
            request_id=answer.request_id,
            user_id=user_id,
            surface=surface,
            model_version=answer.model_version,
            variant=f"{answer.variant}:{answer.model_version}",
            ts=time.time_ns() // 1_000_000,
            items=tuple(i.item_id for i in answer.items),
            sources=tuple(answer.sources) if isinstance(answer, UserAnswer) and answer.sources else None,
            propensities=tuple(answer.propensities)
            if isinstance(answer, UserAnswer) and answer.propensities is not None
            else None,
        )
    )


def _unavailable(exc: SearchUnavailable, field: str) -> ApiError:
    return ApiError(503, field, str(exc))


@dataclass(slots=True, frozen=True)
class UserInputs:
    """What GET /users/{user_id}/recommendations reads from a request."""

    user_id: str
    query: UserQuery
    pinned: LoadedModel | None


_USER_ID = TypeAdapter(Id)
_VERSION = TypeAdapter(Annotated[str, StringConstraints(**VERSION_CONSTRAINTS)])
_read_user_query = query_reader(UserQuery)


async def _declared_user_inputs(
    user_id: IdPath, query: Annotated[UserQuery, Query()], pinned: PinDep
) -> None:  # pragma: no cover - documentation only
    """The inputs of the route as FastAPI declares them: rendered into its OpenAPI operation."""


USER_INPUTS_DOC = documented_inputs(
    _declared_user_inputs, "/users/{user_id}/recommendations", dependencies=[Depends(read_key)]
)


async def user_inputs(request: Request) -> UserInputs:
    """Read key, path, query and pin of the route in one pass (what ``read_key``, ``IdPath``,
    a query model dependency and ``PinDep`` do, without a dependency-solver round each: those
    were ~40% of the route's CPU, bench/profiles/). 401/403 first, then every invalid input in
    one 422."""
    key = await api_key_header(request)
    check_read_key(request, key)
    errors: list[dict[str, Any]] = []
    user_id = checked(_USER_ID, request.path_params["user_id"], ("path", "user_id"), errors)
    query, query_errors = _read_user_query(request)
    errors += query_errors
    version = request.query_params.get("model_version")
    if version is not None:
        version = checked(_VERSION, version, ("query", "model_version"), errors)
    header_version = request.headers.get("x-model-version")
    if header_version is not None:
        header_version = checked(_VERSION, header_version, ("header", "x-model-version"), errors)
    if errors:
        raise RequestValidationError(errors)
    pinned = await pin(request, request.app.state.holder, key, version or header_version)
    return UserInputs(user_id, query, pinned)


@hot_router.get(
    "/users/{user_id}/recommendations",
    response_model=UserRecommendations,
    responses=ERRORS,
    openapi_extra=USER_INPUTS_DOC,
)
async def user_recommendations(request: Request) -> Response:
    """Top-k items for a user, each with a score and a reason. Events posted a moment ago
    already count; a user without events gets the most popular items (``strategy`` says which).
    Page with ``offset``; ``exclude_seen`` (default on) leaves out what the user interacted with."""
    # async: the history comes from the worker's memory (api/history.py) and the work is CPU
    # only, cheaper on the event loop than handed to the thread pool; a user not in the history
    # cache is read from the store in a thread (bench/serve_bench.py).
    inputs = await user_inputs(request)
    try:
        answer = await answer_user(request.app.state.holder, inputs.user_id, inputs.query, inputs.pinned)
    except SearchUnavailable as exc:
        raise _unavailable(exc, "mode")
    _shown(request.app.state.holder, "user", inputs.user_id, answer)
    return Response(content=_USER_ANSWER.dump_json(answer), media_type="application/json")


async def answer_user(holder: ModelHolder, user_id: str, query: UserQuery, pinned: LoadedModel | None) -> UserAnswer:
    """The answer of ``GET /users/{user_id}/recommendations`` (the dashboard shows the same).
    With ``RECSYS_INTERLEAVE`` (and no pinned version, first page) the two aliases' lists are
    merged by team draft, each position naming the version that contributed it; otherwise, with
    ``RECSYS_EXPLORE_EPSILON`` (no pinned version, first page), the list is drawn by the
    exploration policy (:func:`recsys.evaluation.offpolicy.explore`) with each item's propensity.
    Raises SearchUnavailable and the 422 ApiError of :meth:`UserQuery.weights`."""
    pair = holder.interleaved() if pinned is None and query.offset == 0 else None
    model, variant = resolve(holder, user_id, pinned)
    history = holder.history.get(user_id) or await run_in_threadpool(holder.history.load, user_id)

    settings = holder.settings
    exploring = pair is None and pinned is None and query.offset == 0 and settings.explore_epsilon > 0

    def rank(model: LoadedModel) -> RecommendationResult:
        return model.recommender.recommend_for_user(
            user_id,
            history.items,
            max(query.k, settings.explore_pool) if exploring else query.k,
            offset=query.offset,
            exclude_seen=query.exclude_seen,
            filters=query.filters(),
            mode=query.mode,
            blend_weights=query.weights(),
            fusion=query.fusion,
            diversity=query.diversity,
            calibration=query.calibration,
            refresh=is_fresh(history.newest, model.fresh_cutoff),
            values=history.values,
        )

    request_id = _request_id()
    if pair is None:
        result = rank(model)
        if not exploring:
            return UserAnswer(
                request_id, model.version, variant, result.strategy, result.mode, query.offset, result.items, user_id
            )
        by_id = {i.item_id: i for i in result.items}
        ids, propensities = explore(
            [i.item_id for i in result.items],
            query.k,
            settings.explore_epsilon,
            settings.explore_pool,
            random.Random(request_id),
        )
        return UserAnswer(
            request_id,
            model.version,
            variant,
            result.strategy,
            result.mode,
            0,
            [by_id[i] for i in ids],
            user_id,
            propensities=propensities,
        )
    results = [rank(m) for m in pair]
    scored = [{i.item_id: i for i in r.items} for r in results]
    ids, teams = team_draft(
        [i.item_id for i in results[0].items], [i.item_id for i in results[1].items], query.k, random.Random(request_id)
    )
    return UserAnswer(
        request_id,
        "+".join(m.version for m in pair),
        "interleaved",
        results[0].strategy,
        results[0].mode,
        0,
        [scored[t][i] for i, t in zip(ids, teams)],
        user_id,
        [pair[t].version for t in teams],
    )


@router.get("/items/{item_id}/similar", response_model=SimilarItems, responses=ERRORS, openapi_extra=SIMILAR_QUERY_DOC)
def similar_items(
    item_id: IdPath, query: Annotated[SimilarQuery, Depends(similar_query)], holder: HolderDep, pinned: PinDep
) -> Response:
    """Items nearest to this item (collaborative, content or hybrid similarity)."""
    try:
        answer = answer_similar(holder, item_id, query, pinned)
    except UnknownItemError:
        raise ApiError(404, "item_id", f"unknown item: {item_id}", location="path")
    except SearchUnavailable as exc:
        raise _unavailable(exc, "mode")
    _shown(holder, "similar", query.user_id, answer)
    return _json(answer)


def answer_similar(holder: ModelHolder, item_id: str, query: SimilarQuery, pinned: LoadedModel | None) -> SimilarItems:
    """The answer of ``GET /items/{item_id}/similar`` (the dashboard shows the same).
    Raises UnknownItemError and SearchUnavailable."""
    model, variant = resolve(holder, query.user_id, pinned)
    result = model.recommender.similar_items(
        item_id, query.k, offset=query.offset, filters=query.filters(), mode=query.mode
    )
    return SimilarItems.model_construct(
        request_id=_request_id(),
        item_id=item_id,
        model_version=model.version,
        variant=variant,
        strategy=result.strategy,
        mode=result.mode,
        offset=query.offset,
        items=_items(result),
    )


@router.get("/search", response_model=SearchResults, responses=ERRORS, openapi_extra=SEARCH_QUERY_DOC)
def search(query: Annotated[SearchQuery, Depends(search_query)], holder: HolderDep, pinned: PinDep) -> Response:
    """Items matching the text by its words, its meaning or both (semantic and hybrid need a
    model trained with a text encoder); no match is an empty list."""
    model, variant = resolve(holder, query.user_id, pinned)
    try:
        result = model.recommender.search(
            query.q, query.k, offset=query.offset, filters=query.filters(), match=query.match
        )
    except SearchUnavailable as exc:
        raise _unavailable(exc, "match")
    except RankRequestError as exc:
        raise ApiError(422, exc.field, exc.message)
    answer = SearchResults.model_construct(
        request_id=_request_id(),
        query=query.q,
        model_version=model.version,
        variant=variant,
        strategy=result.strategy,
        mode=result.mode,
        offset=query.offset,
        items=_items(result),
    )
    _shown(holder, "search", query.user_id, answer)
    return _json(answer)


@router.post("/recommendations", response_model=SessionRecommendations, responses=ERRORS)
def session_recommendations(body: SessionRequest, holder: HolderDep, pinned: PinDep) -> SessionRecommendations:
    """Recommendations for an anonymous session from the items it touched (``item_ids``,
    optionally ``weights``), with the same filters and ranking options as a user's list."""
    model, variant = resolve(holder, body.session_id, pinned)
    f = body.filters
    filters = Filters(
        exclude_items=tuple(f.exclude_items),
        include_categories=tuple(f.include_categories),
        exclude_categories=tuple(f.exclude_categories),
        include_attributes=f.include_attributes,
        exclude_attributes=f.exclude_attributes,
    )
    if (body.cf_weight is None) != (body.content_weight is None):
        raise ApiError(
            422,
            "content_weight" if body.content_weight is None else "cf_weight",
            "give both cf_weight and content_weight",
        )
    if body.cf_weight is not None and body.cf_weight + body.content_weight <= 0:
        raise ApiError(422, "cf_weight", "the weights must not both be 0")
    blend = None if body.cf_weight is None else (body.cf_weight, body.content_weight)
    try:
        result = model.recommender.recommend_for_items(
            body.item_ids,
            body.weights,
            body.k,
            offset=body.offset,
            filters=filters,
            mode=body.mode,
            blend_weights=blend,
            fusion=body.fusion,
            diversity=body.diversity,
            calibration=body.calibration,
        )
    except SearchUnavailable as exc:
        raise _unavailable(exc, "mode")
    answer = SessionRecommendations(
        request_id=_request_id(),
        model_version=model.version,
        variant=variant,
        strategy=result.strategy,
        mode=result.mode,
        offset=body.offset,
        items=_items(result),
    )
    _shown(holder, "session", body.session_id, answer)
    return answer
