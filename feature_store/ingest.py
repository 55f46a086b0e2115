"""Ingest: events into the online store — id resolution, idempotent bulk insert, API records.

External string ids are mapped to integer surrogate keys in pandas; events are stored with
those keys and epoch-millisecond times. The dialect's bulk path (executemany or COPY) is the
backend's :meth:`~feature_store.backends.Backend.insert_events`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Connection, Table, bindparam, select

from feature_store.backends import Backend
from feature_store.catalog import check_records, insert_missing_items, insert_missing_users
from feature_store.impressions import AttributedEvent
from feature_store.tables import events_table, items_table, users_table
from recsys.datasets.base import DatasetError, normalize_events

# Up to this many distinct ids are looked up with IN (...); more and the whole id table is read.
_IN_LOOKUP_LIMIT = 500


@dataclass(frozen=True)
class IngestResult:
    users_upserted: int
    items_upserted: int
    events_inserted: int
    events_duplicate: int


@dataclass(frozen=True)
class EventBatch:
    """Normalized events (``EVENT_COLUMNS``) plus the variant each is attributed to (or None)
    and the impression (``request_id``) each came from (or None).

    ``given_id``: rows whose ``event_id`` the caller chose (None: every id was given, as a
    dataset's are, or derived); ``given_time``: rows whose time the caller gave (None: all).
    A given id that is stored with other content is a conflict (:class:`EventIdConflict`).
    """

    events: pd.DataFrame
    variant: pd.Series | None = None
    request_id: pd.Series | None = None
    given_id: np.ndarray | None = None
    given_time: np.ndarray | None = None


class EventIdConflict(ValueError):
    """An ``event_id`` already stored (or repeated in the batch) with other content."""

    def __init__(self, event_id: str) -> None:
        super().__init__(
            f"event_id {event_id!r} is already stored with a different user, item, type, value or time: "
            "nothing of this batch was stored"
        )
        self.event_id = event_id


def events_from_records(records: Sequence[dict[str, Any]]) -> EventBatch:
    """Event dicts (API / ``add_events``) as a normalized batch.

    Keys: user_id, item_id (required), event_type, value, timestamp (datetime, ISO string or
    epoch seconds; default now), event_id (default: derived from the other fields), variant,
    request_id (the impression the event came from).
    """
    check_records(
        records,
        "event",
        ids=("user_id", "item_id", "event_id", "request_id"),
        labels=("event_type", "variant"),
        numbers=("value", "timestamp"),
    )
    frame = pd.DataFrame.from_records(list(records))
    now = pd.Timestamp.now(tz="UTC")
    if "timestamp" not in frame:
        given_time = np.zeros(len(frame), bool)
        frame["timestamp"] = now
    else:
        given_time = np.array([not _missing(v) for v in frame["timestamp"]], bool)
        frame["timestamp"] = [now if _missing(v) else v for v in frame["timestamp"]]
        if frame["timestamp"].map(lambda v: isinstance(v, (int, float))).all():
            frame["timestamp"] = pd.to_numeric(frame["timestamp"])
    # Per-record defaults, so one record leaving a field out doesn't fail the batch.
    for col, default in (("value", 1.0), ("event_type", "interaction")):
        if col in frame:
            frame[col] = [default if _missing(v) else v for v in frame[col]]
    given_ids = frame.get("event_id")
    events = normalize_events(frame.drop(columns=["event_id", "request_id"], errors="ignore"))
    mask = np.zeros(len(events), bool)
    if given_ids is not None:
        # Keep caller ids where given; derived ids only fill the gaps.
        mask = given_ids.notna().to_numpy()
        ids = np.array(events["event_id"].to_numpy(dtype=object), dtype=object)
        ids[mask] = given_ids[mask].astype(str).to_numpy()
        events["event_id"] = pd.Series(ids, dtype="str")
    variant = frame["variant"].reset_index(drop=True) if "variant" in frame else None
    request_id = frame["request_id"].reset_index(drop=True) if "request_id" in frame else None
    return EventBatch(events=events, variant=variant, request_id=request_id, given_id=mask, given_time=given_time)


def attributed_events(batch: EventBatch) -> list[AttributedEvent]:
    """The batch's events that name an impression (``request_id``), for ``impression_events``."""
    if batch.request_id is None:
        return []
    events = batch.events
    ts_ms = events["timestamp"].array.as_unit("ns").asi8 // 1_000_000
    return [
        AttributedEvent(
            event_id=str(events["event_id"].iat[i]),
            request_id=str(rid),
            item_id=str(events["item_id"].iat[i]),
            event_type=str(events["event_type"].iat[i]),
            ts=int(ts_ms[i]),
            value=float(events["value"].iat[i]),
        )
        for i, rid in enumerate(batch.request_id)
        if not _missing(rid)
    ]


def lookup_pks(conn: Connection, table: Table, key: str, ids: np.ndarray) -> np.ndarray:
    """Surrogate key for each external id in ``ids`` (-1 where unknown)."""
    uniq = pd.unique(ids)
    col = table.c[key]
    if len(uniq) <= _IN_LOOKUP_LIMIT:
        stmt = select(table.c.id, col).where(col.in_(bindparam("ids", expanding=True)))
        rows = conn.execute(stmt, {"ids": [str(u) for u in uniq]}).all()
    else:
        rows = conn.execute(select(table.c.id, col)).all()
    known = pd.Index([r[1] for r in rows], dtype="str")
    pks = np.array([r[0] for r in rows], dtype=np.int64)
    pos = known.get_indexer(ids)
    out = np.full(len(ids), -1, dtype=np.int64)
    hit = pos >= 0
    out[hit] = pks[pos[hit]]
    return out


def write_events(
    conn: Connection,
    backend: Backend,
    batch: EventBatch,
    *,
    create_users: bool,
    chunk_size: int,
    progress: bool = False,
    create_items: bool = False,
) -> int:
    """Insert the batch's events (stored event ids are skipped); returns how many were inserted.

    Unknown items are created (empty catalog entries) when ``create_items``, else they are a
    DatasetError; unknown users are created when ``create_users``, else they are a DatasetError too.
    """
    events = batch.events
    if len(events) == 0:
        return 0
    item_ids = events["item_id"].to_numpy()
    item_pk = lookup_pks(conn, items_table, "item_id", item_ids)
    if (item_pk < 0).any() and create_items:
        insert_missing_items(conn, backend, pd.unique(item_ids[item_pk < 0]))
        item_pk = lookup_pks(conn, items_table, "item_id", item_ids)
    if (item_pk < 0).any():
        missing = pd.unique(item_ids[item_pk < 0])
        raise DatasetError(
            f"events reference {len(missing)} unknown item(s): {', '.join(map(repr, missing[:10]))}"
            + (" ..." if len(missing) > 10 else "")
        )
    user_ids = events["user_id"].to_numpy()
    user_pk = lookup_pks(conn, users_table, "user_id", user_ids)
    if (user_pk < 0).any():
        missing = pd.unique(user_ids[user_pk < 0])
        if not create_users:
            raise DatasetError(f"events reference unknown user(s): {', '.join(map(repr, missing[:10]))}")
        insert_missing_users(conn, backend, missing)
        user_pk = lookup_pks(conn, users_table, "user_id", user_ids)
    ts = events["timestamp"]
    ts_ms = ts.array.as_unit("ns").asi8 // 1_000_000  # floor division: exact for pre-1970 too
    variant = batch.variant
    rows = pd.DataFrame(
        {
            "event_id": events["event_id"].to_numpy(dtype=object),
            "user_pk": user_pk,
            "item_pk": item_pk,
            "event_type": events["event_type"].to_numpy(dtype=object),
            "value": events["value"].to_numpy(dtype=np.float64),
            "ts": ts_ms,
            # object dtype, so a missing variant stays None (SQL NULL): pandas would infer a str
            # column holding NaN, which psycopg2 sends as the float 'NaN'.
            "variant": pd.Series(
                variant.astype(object).where(variant.notna(), None).to_numpy()
                if variant is not None
                else np.full(len(events), None, dtype=object),
                dtype=object,
            ),
        }
    )
    inserted = backend.insert_events(conn, rows, chunk_size=chunk_size, progress=progress)
    if inserted < len(rows):
        _check_conflicts(conn, rows, batch)
    return inserted


def _check_conflicts(conn: Connection, rows: pd.DataFrame, batch: EventBatch) -> None:
    """Raise :class:`EventIdConflict` (the caller's transaction then rolls back) when a skipped
    row's given id is stored with other content. Derived ids hash the content, so only given
    ids can conflict; the time is compared only where the caller gave one (a retry without a
    timestamp gets a new "now")."""
    given = np.ones(len(rows), bool) if batch.given_id is None else batch.given_id
    if not given.any():
        return
    times = np.ones(len(rows), bool) if batch.given_time is None else batch.given_time
    check = rows[given].assign(time_given=times[given])
    for lo in range(0, len(check), 5_000):
        part = check.iloc[lo : lo + 5_000]
        stored = conn.execute(
            select(
                events_table.c.event_id,
                events_table.c.user_pk,
                events_table.c.item_pk,
                events_table.c.event_type,
                events_table.c.value,
                events_table.c.ts,
            ).where(events_table.c.event_id.in_(bindparam("ids", expanding=True))),
            {"ids": [str(v) for v in pd.unique(part["event_id"])]},
        ).all()
        by_id = {r[0]: r[1:] for r in stored}
        for r in part.itertuples(index=False):
            s = by_id.get(r.event_id)
            if s is None:
                continue
            if (s[0], s[1], s[2], float(s[3])) != (int(r.user_pk), int(r.item_pk), r.event_type, float(r.value)) or (
                r.time_given and int(s[4]) != int(r.ts)
            ):
                raise EventIdConflict(r.event_id)


def _missing(v: Any) -> bool:
    return v is None or v is pd.NaT or (isinstance(v, float) and np.isnan(v))
