"""Catalog writes: items and users. An item made unavailable or deleted is never recommended
again from the next request on, in every worker (see api.serving: catalog generation)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Query

from api.deps import HolderDep, StoreDep, read_key, require_key
from api.errors import ApiError
from api.request_guards import StrictJSONRoute
from api.schemas import (
    Error,
    Id,
    ItemIn,
    ItemOut,
    ItemUpdate,
    UserEvent,
    UserEvents,
    UserIn,
    UserOut,
    UserUpdate,
    Written,
)
from feature_store import NotFoundError
from recsys.datasets.base import DatasetError

router = APIRouter(tags=["catalog"], route_class=StrictJSONRoute)

IdPath = Annotated[Id, Path()]
WRITE_ERRORS = {401: {"model": Error}, 403: {"model": Error}, 422: {"model": Error}}
NOT_FOUND = {404: {"model": Error}}


def _bad(exc: Exception, field: str) -> ApiError:
    return ApiError(422, field, str(exc))


# ---- items ---------------------------------------------------------------------------------
@router.post(
    "/items", response_model=Written, status_code=201, responses=WRITE_ERRORS, dependencies=[Depends(require_key)]
)
def create_items(
    body: Annotated[ItemIn | Annotated[list[ItemIn], Body(min_length=1, max_length=10_000)], Body()],
    holder: HolderDep,
    store: StoreDep,
) -> Written:
    """Insert or update one item or a list (upsert by item_id)."""
    items = body if isinstance(body, list) else [body]
    try:
        n = store.upsert_items([i.model_dump() for i in items])
    except DatasetError as exc:
        raise _bad(exc, "items")
    holder.record_catalog_change([i.item_id for i in items])
    return Written(written=n)


@router.put("/items/{item_id}", response_model=ItemOut, responses=WRITE_ERRORS, dependencies=[Depends(require_key)])
def put_item(item_id: IdPath, body: ItemUpdate, holder: HolderDep, store: StoreDep) -> ItemOut:
    """Create or replace the item."""
    try:
        store.upsert_items([{"item_id": item_id, **body.model_dump()}])
    except DatasetError as exc:
        raise _bad(exc, "item")
    holder.record_catalog_change([item_id])
    return ItemOut(item_id=item_id, **body.model_dump())


@router.delete(
    "/items/{item_id}",
    response_model=ItemOut,
    responses={**WRITE_ERRORS, **NOT_FOUND},
    dependencies=[Depends(require_key)],
)
def delete_item(item_id: IdPath, holder: HolderDep, store: StoreDep) -> ItemOut:
    """Soft delete: the item stays for past events but is never recommended again."""
    try:
        store.delete_item(item_id)
    except NotFoundError:
        raise ApiError(404, "item_id", f"unknown item: {item_id}", location="path")
    holder.record_catalog_change([item_id])
    return _item_out(store.get_item(item_id))


@router.get("/items/{item_id}", response_model=ItemOut, responses=NOT_FOUND, dependencies=[Depends(read_key)])
def get_item(item_id: IdPath, store: StoreDep) -> ItemOut:
    """The item's catalog entry (a deleted item too: ``available`` is false)."""
    row = store.get_item(item_id)
    if row is None:
        raise ApiError(404, "item_id", f"unknown item: {item_id}", location="path")
    return _item_out(row)


def _item_out(row: dict) -> ItemOut:
    return ItemOut(
        item_id=row["item_id"],
        title=row["title"] or "",
        description=row["description"] or "",
        categories=list(row["categories"] or []),
        attributes=dict(row["attributes"] or {}),
        available=bool(row["available"]),
    )


# ---- users ---------------------------------------------------------------------------------
@router.post(
    "/users", response_model=Written, status_code=201, responses=WRITE_ERRORS, dependencies=[Depends(require_key)]
)
def create_users(
    body: Annotated[UserIn | Annotated[list[UserIn], Body(min_length=1, max_length=10_000)], Body()],
    store: StoreDep,
) -> Written:
    """Insert or update one user or a list (upsert by user_id)."""
    users = body if isinstance(body, list) else [body]
    try:
        return Written(written=store.upsert_users([u.model_dump() for u in users]))
    except DatasetError as exc:
        raise _bad(exc, "users")


@router.put("/users/{user_id}", response_model=UserOut, responses=WRITE_ERRORS, dependencies=[Depends(require_key)])
def put_user(user_id: IdPath, body: UserUpdate, store: StoreDep) -> UserOut:
    """Create the user or replace their attributes."""
    try:
        store.upsert_users([{"user_id": user_id, **body.model_dump()}])
    except DatasetError as exc:
        raise _bad(exc, "user")
    return UserOut(user_id=user_id, attributes=body.attributes)


@router.get("/users/{user_id}", response_model=UserOut, responses=NOT_FOUND, dependencies=[Depends(read_key)])
def get_user(user_id: IdPath, store: StoreDep) -> UserOut:
    """The user's attributes (their events: ``GET /users/{user_id}/events``)."""
    row = store.get_user(user_id)
    if row is None:
        raise ApiError(404, "user_id", f"unknown user: {user_id}", location="path")
    return UserOut(user_id=row["user_id"], attributes=dict(row["attributes"] or {}))


@router.get("/users/{user_id}/events", response_model=UserEvents, responses=NOT_FOUND, dependencies=[Depends(read_key)])
def user_events(
    user_id: IdPath,
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="events per page")] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000, description="skip this many of the newest events")] = 0,
) -> UserEvents:
    """The user's stored events, newest first, a page at a time (``total`` counts them all).
    Events stored meanwhile come first, so a page read later may repeat the end of the one
    before. 404 for a user the store does not have."""
    events, total = store.user_timeline(user_id, limit, offset)
    if total == 0 and store.get_user(user_id) is None:
        raise ApiError(404, "user_id", f"unknown user: {user_id}", location="path")
    return UserEvents(
        user_id=user_id,
        total=total,
        offset=offset,
        limit=limit,
        events=[
            UserEvent(
                event_id=e.event_id,
                item_id=e.item_id,
                title=e.title,
                event_type=e.event_type,
                value=e.value,
                timestamp=e.timestamp,
                variant=e.variant,
            )
            for e in events
        ],
    )
