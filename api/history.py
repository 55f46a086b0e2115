"""Reads the API needs from the feature store's tables (on the store's engine)."""

from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd
from feature_store import FeatureStore


# The hot path of every recommendation: plain SQL through the driver (no per-call statement
# compilation); same query as FeatureStore.user_history plus the newest created_at.
_HISTORY_SQL = (
    "SELECT i.item_id, e.created_at FROM events e JOIN items i ON e.item_pk = i.id "
    "JOIN users u ON e.user_pk = u.id WHERE u.user_id = {p} ORDER BY e.ts, e.id"
)


def user_history(store: FeatureStore, user_id: str) -> tuple[list[str], datetime | None]:
    """The user's item ids (oldest first, repeats kept) and when the newest event was stored."""
    sql = _HISTORY_SQL.format(p="?" if store.dialect == "sqlite" else "%s")
    with store.engine.connect() as conn:
        rows = conn.exec_driver_sql(sql, (str(user_id),)).all()
    newest = max((r[1] for r in rows if r[1] is not None), default=None)
    if isinstance(newest, str):  # SQLite returns CURRENT_TIMESTAMP text ("YYYY-MM-DD HH:MM:SS", UTC)
        newest = datetime.fromisoformat(newest)
    if newest is not None and newest.tzinfo is None:
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
