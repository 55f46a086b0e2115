"""Reads the API needs from the feature store's tables (on the store's engine)."""

from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd
from sqlalchemy import select

from feature_store import FeatureStore, events_table, items_table, users_table


def user_history(store: FeatureStore, user_id: str) -> tuple[list[str], datetime | None]:
    """The user's item ids (oldest first, repeats kept) and when the newest event was stored."""
    stmt = (
        select(items_table.c.item_id, events_table.c.created_at)
        .select_from(events_table.join(items_table, events_table.c.item_pk == items_table.c.id))
        .join(users_table, events_table.c.user_pk == users_table.c.id)
        .where(users_table.c.user_id == str(user_id))
        .order_by(events_table.c.ts, events_table.c.id)
    )
    with store.engine.connect() as conn:
        rows = conn.execute(stmt).all()
    newest = max((r[1] for r in rows if r[1] is not None), default=None)
    if newest is not None and newest.tzinfo is None:  # SQLite's CURRENT_TIMESTAMP is naive UTC
        newest = newest.replace(tzinfo=timezone.utc)
    return [r[0] for r in rows], newest


def has_fresh_events(newest: datetime | None, trained_as_of: pd.Timestamp | None) -> bool:
    """Were some of the user's events stored after the model's training snapshot?

    SQLite stores ``created_at`` to the second, so the snapshot time is compared at that
    resolution too (an event stored in the very second of the snapshot counts as trained).
    """
    if newest is None or trained_as_of is None:
        return False
    cutoff = trained_as_of.tz_convert("UTC").to_pydatetime()
    if newest.microsecond == 0:
        cutoff = cutoff.replace(microsecond=0)
    return newest > cutoff
