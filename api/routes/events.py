"""POST /events: validated, idempotent by event_id, committed before the 2xx."""

from __future__ import annotations

import logging
import random
import time
from typing import Annotated

from fastapi import APIRouter, Body, Depends, HTTPException
from sqlalchemy.exc import OperationalError

from api import metrics
from api.deps import HolderDep, StoreDep, require_key
from api.request_guards import StrictJSONRoute
from api.schemas import Error, EventIn, EventsAccepted
from recsys.datasets.base import DatasetError

logger = logging.getLogger(__name__)

router = APIRouter(tags=["events"], dependencies=[Depends(require_key)], route_class=StrictJSONRoute)

MAX_BATCH = 10_000
MAX_ATTEMPTS = 8
RETRYABLE = {"40P01", "40001"}  # deadlock_detected, serialization_failure


@router.post(
    "/events",
    response_model=EventsAccepted,
    status_code=200,
    responses={401: {"model": Error}, 403: {"model": Error}, 422: {"model": Error, "description": "invalid event(s): nothing stored"}},
)
def post_events(
    body: Annotated[EventIn | Annotated[list[EventIn], Body(min_length=1, max_length=MAX_BATCH)], Body(description="one event or a list of up to 10,000")],
    holder: HolderDep,
    store: StoreDep,
) -> EventsAccepted:
    """Store one event or a batch in one transaction (all or nothing). Re-sending an event
    with the same ``event_id`` is a no-op counted under ``duplicates``."""
    events = body if isinstance(body, list) else [body]
    records = []
    for e in events:
        record = e.model_dump(exclude={"variant", "model_version"}, exclude_none=True)
        record["variant"] = holder.variant_label(e.user_id, e.variant, e.model_version)
        records.append(record)
    # One lock order for every batch (PostgreSQL: concurrent batches with overlapping event ids
    # otherwise deadlock on the unique index).
    records.sort(key=lambda r: str(r.get("event_id", "")))
    for attempt in range(MAX_ATTEMPTS):
        try:
            inserted, duplicates = store.add_events(records)
            break
        except DatasetError as exc:  # e.g. an unknown item: the transaction rolled back
            raise HTTPException(status_code=422, detail={"field": "item_id", "message": str(exc)})
        except OperationalError as exc:
            # Deadlock / serialization failure: the whole transaction rolled back and the
            # insert is idempotent, so running it again is safe.
            if getattr(exc.orig, "pgcode", None) not in RETRYABLE or attempt == MAX_ATTEMPTS - 1:
                raise
            logger.warning("events batch retried after %s (attempt %d)", exc.orig.pgcode, attempt + 1)
            time.sleep(random.uniform(0.01, 0.05) * (attempt + 1))
    metrics.EVENTS_INGESTED.labels(result="inserted").inc(inserted)
    metrics.EVENTS_INGESTED.labels(result="duplicate").inc(duplicates)
    return EventsAccepted(received=len(records), inserted=inserted, duplicates=duplicates)
