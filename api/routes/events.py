"""POST /events: validated, idempotent by event_id, committed before the 2xx."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Body, Depends

from api import metrics
from api.deps import HolderDep, StoreDep, require_key
from api.errors import ApiError
from api.request_guards import StrictJSONRoute
from api.schemas import Error, EventIn, EventsAccepted
from feature_store import WriteConflict
from feature_store.ingest import EventIdConflict
from recsys.datasets.base import DatasetError
from recsys.validation import LABEL_MAX_LENGTH

logger = logging.getLogger(__name__)

router = APIRouter(tags=["events"], dependencies=[Depends(require_key)], route_class=StrictJSONRoute)

MAX_BATCH = 10_000


@router.post(
    "/events",
    response_model=EventsAccepted,
    status_code=200,
    responses={
        401: {"model": Error},
        403: {"model": Error},
        409: {"model": Error, "description": "an event_id is stored with other content: nothing stored"},
        422: {"model": Error, "description": "invalid event(s): nothing stored"},
        503: {"model": Error, "description": "lost to concurrent writers on every retry: nothing stored, send again"},
    },
)
def post_events(
    body: Annotated[
        EventIn | Annotated[list[EventIn], Body(min_length=1, max_length=MAX_BATCH)],
        Body(description="one event or a list of up to 10,000"),
    ],
    holder: HolderDep,
    store: StoreDep,
) -> EventsAccepted:
    """Store one event or a batch in one transaction (all or nothing). Re-sending an event
    with the same ``event_id`` is a no-op counted under ``duplicates``; the same ``event_id``
    with another user, item, type, value or timestamp is a conflict (409, nothing stored).
    Events without an ``event_id`` get one derived from all their fields and their place in
    the batch, so two identical events in one batch are two events. An event for an item the
    catalog lacks is refused (422, nothing stored) unless the server creates unknown items
    (``RECSYS_CREATE_UNKNOWN_ITEMS=true``)."""
    events = body if isinstance(body, list) else [body]
    records = []
    for i, e in enumerate(events):
        record = e.model_dump(exclude={"variant", "model_version"}, exclude_none=True)
        record["variant"] = holder.variant_label(e.user_id, e.variant, e.model_version)
        if record["variant"] is not None and len(record["variant"]) > LABEL_MAX_LENGTH:
            where = f"event {i}: " if isinstance(body, list) else ""
            raise ApiError(
                422,
                "variant",
                f"{where}variant and model_version are stored together as 'variant:version', "
                f"at most {LABEL_MAX_LENGTH} characters ({len(record['variant'])} given)",
            )
        records.append(record)
    # Lock ordering and retries after a deadlock / serialization failure are the store's job.
    try:
        inserted, duplicates = store.add_events(records, create_items=holder.settings.create_unknown_items)
    except EventIdConflict as exc:  # same id, other content: the transaction rolled back
        raise ApiError(409, "event_id", str(exc))
    except DatasetError as exc:  # e.g. an unknown item: the transaction rolled back
        raise ApiError(422, exc.column or "item_id", str(exc))
    except WriteConflict as exc:  # lost to concurrent writers on every retry: nothing stored
        raise ApiError(503, None, str(exc), headers={"Retry-After": "1"})
    if inserted:
        # Committed: follow the feed now, so this worker's next answer counts these events
        # (and finds the users folded in).
        holder.follow_events()
    metrics.EVENTS_INGESTED.labels(result="inserted").inc(inserted)
    metrics.EVENTS_INGESTED.labels(result="duplicate").inc(duplicates)
    return EventsAccepted(received=len(records), inserted=inserted, duplicates=duplicates)
