"""Whether a user's stored events are newer than the served model (then fold them in)."""

from __future__ import annotations

from datetime import datetime

import pandas as pd


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
