"""Activity: reads over the events table for serving and reports — a user's recent history,
item popularity, event counts, per-A/B-variant exposure and outcome counts, and the event feed
serving follows (events by ``events.id``, the store's sequence number)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from sqlalchemy import Connection, case, distinct, func, or_, select

from feature_store.backends import Backend
from feature_store.tables import events_table, items_table, users_table


@dataclass(frozen=True)
class VariantActivity:
    """Events attributed to one A/B variant (``events.variant``, e.g. ``"production:3"``)."""

    variant: str
    #: distinct users with at least one event attributed to the variant (the exposed users)
    users: int
    #: events attributed to the variant
    events: int
    #: event type -> distinct users with at least one event of that type in the variant
    users_with: dict[str, int]


def user_activity(conn: Connection, backend: Backend, user_id: str) -> tuple[list[str], datetime | None]:
    """The user's item ids (oldest first, repeats kept) and when their newest event was stored (UTC)."""
    rows = backend.user_activity_rows(conn, user_id)
    newest = max((r[1] for r in rows if r[1] is not None), default=None)
    if isinstance(newest, str):  # SQLite returns CURRENT_TIMESTAMP text ("YYYY-MM-DD HH:MM:SS", UTC)
        newest = datetime.fromisoformat(newest)
    if newest is not None and newest.tzinfo is None:
        newest = newest.replace(tzinfo=UTC)
    return [r[0] for r in rows], newest


def item_popularity(conn: Connection, limit: int | None = None) -> pd.Series:
    """Event count per item_id, most popular first (ties by item_id)."""
    n = func.count(events_table.c.id).label("n")
    stmt = (
        select(items_table.c.item_id, n)
        .select_from(events_table.join(items_table, events_table.c.item_pk == items_table.c.id))
        .group_by(items_table.c.item_id)
        .order_by(n.desc(), items_table.c.item_id)
    )
    if limit is not None:
        stmt = stmt.limit(int(limit))
    rows = conn.execute(stmt).all()
    return pd.Series(
        [int(r[1]) for r in rows],
        index=pd.Index([r[0] for r in rows], dtype="str", name="item_id"),
        name="count",
        dtype="int64",
    )


def count_events(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(events_table)).scalar_one())


def variant_activity(
    conn: Connection, event_types: Sequence[str], since: datetime | None = None
) -> list[VariantActivity]:
    """Per variant (sorted by name): exposed users, events, and users with each event type.

    Only events that carry a variant count; ``since`` (naive = UTC) keeps events at or after it.
    """
    ev = events_table
    event_types = list(dict.fromkeys(event_types))
    cols = [ev.c.variant, func.count(distinct(ev.c.user_pk)), func.count()]
    cols += [func.count(distinct(case((ev.c.event_type == t, ev.c.user_pk)))) for t in event_types]
    stmt = select(*cols).where(ev.c.variant.is_not(None)).group_by(ev.c.variant)
    if since is not None:
        stmt = stmt.where(ev.c.ts >= _epoch_ms(since))
    return [
        VariantActivity(
            variant=str(row[0]),
            users=int(row[1]),
            events=int(row[2]),
            users_with={t: int(n) for t, n in zip(event_types, row[3:])},
        )
        # Sorted here, not by ORDER BY: the server's collation would order names differently.
        for row in sorted(conn.execute(stmt).all(), key=lambda r: str(r[0]))
    ]


def _epoch_ms(when: datetime) -> int:
    ts = pd.Timestamp(when)
    if ts.tzinfo is None:
        ts = ts.tz_localize("UTC")
    return int(ts.tz_convert("UTC").value // 1_000_000)


# ---- the event feed: serving keeps users' histories in memory (api/history.py) ----------------
@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One stored event as serving needs it: ``seq`` is ``events.id`` (the feed position)."""

    seq: int
    user_id: str
    item_id: str
    #: when the row was stored (UTC)
    stored_at: datetime | None
    #: the event's ``value`` (training sums a user's values per item into the matrix entry)
    value: float = 1.0


_FEED_COLUMNS = (
    events_table.c.id,
    users_table.c.user_id,
    items_table.c.item_id,
    events_table.c.created_at,
    events_table.c.value,
)
_FEED_FROM = events_table.join(users_table, events_table.c.user_pk == users_table.c.id).join(
    items_table, events_table.c.item_pk == items_table.c.id
)


def _stored(rows) -> list[StoredEvent]:
    return [StoredEvent(int(r[0]), r[1], r[2], _utc(r[3]), float(r[4])) for r in rows]


def _utc(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):  # SQLite returns CURRENT_TIMESTAMP text ("YYYY-MM-DD HH:MM:SS", UTC)
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def events_since(conn: Connection, after_seq: int, limit: int, also_seqs: Sequence[int] = ()) -> list[StoredEvent]:
    """Events with ``events.id > after_seq`` (at most ``limit``), plus those whose id is in
    ``also_seqs`` (ids the reader saw missing: a transaction that had not committed yet), by id."""
    cond = events_table.c.id > int(after_seq)
    if also_seqs:
        cond = or_(cond, events_table.c.id.in_([int(s) for s in also_seqs]))
    stmt = select(*_FEED_COLUMNS).select_from(_FEED_FROM).where(cond).order_by(events_table.c.id).limit(int(limit))
    return _stored(conn.execute(stmt).all())


def last_event_seq(conn: Connection) -> int:
    return int(conn.execute(select(func.max(events_table.c.id))).scalar() or 0)


def user_events(conn: Connection, user_id: str) -> list[StoredEvent]:
    """Every event of one user, oldest first (``ts``, then id)."""
    stmt = (
        select(*_FEED_COLUMNS)
        .select_from(_FEED_FROM)
        .where(users_table.c.user_id == str(user_id))
        .order_by(events_table.c.ts, events_table.c.id)
    )
    return _stored(conn.execute(stmt).all())


def recent_user_pks(conn: Connection, n_users: int) -> list[int]:
    """Keys of the ``n_users`` most recently active users (by their newest event), newest first."""
    stmt = (
        select(events_table.c.user_pk)
        .group_by(events_table.c.user_pk)
        .order_by(func.max(events_table.c.id).desc())
        .limit(int(n_users))
    )
    return [int(r[0]) for r in conn.execute(stmt)]


def events_of_user_pks(conn: Connection, user_pks: Sequence[int]) -> list[StoredEvent]:
    """Every event of the given users, grouped by user, oldest first."""
    stmt = (
        select(*_FEED_COLUMNS)
        .select_from(_FEED_FROM)
        .where(events_table.c.user_pk.in_([int(p) for p in user_pks]))
        .order_by(events_table.c.user_pk, events_table.c.ts, events_table.c.id)
    )
    return _stored(conn.execute(stmt).all())


def is_fresh(newest: datetime | None, cutoff: datetime | None) -> bool:
    """Were some of the user's events stored after the model's training snapshot ``cutoff``?

    SQLite stores ``created_at`` to the second, so the snapshot time is compared at that
    resolution too (an event stored in the very second of the snapshot counts as trained).
    """
    if newest is None or cutoff is None:
        return False
    if newest.microsecond == 0:
        cutoff = cutoff.replace(microsecond=0)
    return newest > cutoff


def snapshot_cutoff(trained_as_of: pd.Timestamp | None) -> datetime | None:
    """A model's training snapshot time as an aware UTC datetime (computed once per model)."""
    return None if trained_as_of is None else trained_as_of.tz_convert("UTC").to_pydatetime()


def events_of_users_stored_since(conn: Connection, since: datetime) -> list[StoredEvent]:
    """Every event of the users with an event stored at or after ``since`` (compared to the
    second: SQLite stores ``created_at`` to the second), grouped by user, oldest first."""
    floor = since.astimezone(UTC).replace(microsecond=0, tzinfo=None)
    if conn.dialect.name != "sqlite":
        floor = floor.replace(tzinfo=UTC)
    recent = select(events_table.c.user_pk).where(events_table.c.created_at >= floor).distinct()
    stmt = (
        select(*_FEED_COLUMNS)
        .select_from(_FEED_FROM)
        .where(events_table.c.user_pk.in_(recent))
        .order_by(events_table.c.user_pk, events_table.c.ts, events_table.c.id)
    )
    return _stored(conn.execute(stmt).all())


# ---- reads for the operator dashboard (api/ui) -----------------------------------------------
DAY_MS = 86_400_000


@dataclass(frozen=True)
class StoreCounts:
    """Sizes of the online store."""

    items: int
    available_items: int
    users: int
    events: int


@dataclass(frozen=True)
class TimelineEvent:
    """One event of a user with the item's catalog entry (the dashboard's history view and
    ``GET /users/{user_id}/events``)."""

    event_id: str
    item_id: str
    title: str
    categories: list[str]
    event_type: str
    value: float
    timestamp: datetime
    variant: str | None


@dataclass(frozen=True)
class ActiveUser:
    user_id: str
    events: int
    last_event: datetime


def store_counts(conn: Connection) -> StoreCounts:
    items, available = conn.execute(
        select(func.count(), func.count(case((items_table.c.available, 1)))).select_from(items_table)
    ).one()
    users = conn.execute(select(func.count()).select_from(users_table)).scalar_one()
    return StoreCounts(int(items), int(available), int(users), count_events(conn))


def events_per_day(conn: Connection, item_id: str | None = None) -> pd.Series:
    """Events per UTC day (index: day as a UTC Timestamp, sorted), optionally of one item."""
    day = (events_table.c.ts // DAY_MS).label("day")
    stmt = select(day, func.count()).group_by(day).order_by(day)
    if item_id is not None:
        stmt = stmt.select_from(events_table.join(items_table, events_table.c.item_pk == items_table.c.id)).where(
            items_table.c.item_id == str(item_id)
        )
    rows = conn.execute(stmt).all()
    index = pd.to_datetime([int(r[0]) * DAY_MS for r in rows], unit="ms", utc=True)
    return pd.Series([int(r[1]) for r in rows], index=index, name="events", dtype="int64")


def user_timeline(conn: Connection, user_id: str, limit: int, offset: int = 0) -> tuple[list[TimelineEvent], int]:
    """The user's events newest first (ties: the later stored first), ``offset`` skipped and at
    most ``limit``, with titles and categories, and how many events the user has in all."""
    ev = events_table
    where = users_table.c.user_id == str(user_id)
    joined = ev.join(users_table, ev.c.user_pk == users_table.c.id).join(items_table, ev.c.item_pk == items_table.c.id)
    total = conn.execute(select(func.count()).select_from(joined).where(where)).scalar_one()
    stmt = (
        select(
            ev.c.event_id,
            items_table.c.item_id,
            items_table.c.title,
            items_table.c.categories,
            ev.c.event_type,
            ev.c.value,
            ev.c.ts,
            ev.c.variant,
        )
        .select_from(joined)
        .where(where)
        .order_by(ev.c.ts.desc(), ev.c.id.desc())
        .limit(int(limit))
        .offset(int(offset))
    )
    out = [
        TimelineEvent(
            event_id=r[0],
            item_id=r[1],
            title=r[2] or "",
            categories=list(r[3] or []),
            event_type=r[4],
            value=float(r[5]),
            timestamp=datetime.fromtimestamp(int(r[6]) / 1000, UTC),
            variant=r[7],
        )
        for r in conn.execute(stmt).all()
    ]
    return out, int(total)


def active_users(conn: Connection, limit: int) -> list[ActiveUser]:
    """The users with the most events (ties: most recent first)."""
    n = func.count(events_table.c.id).label("n")
    last = func.max(events_table.c.ts).label("last")
    stmt = (
        select(users_table.c.user_id, n, last)
        .select_from(events_table.join(users_table, events_table.c.user_pk == users_table.c.id))
        .group_by(users_table.c.user_id)
        .order_by(n.desc(), last.desc(), users_table.c.user_id)
        .limit(int(limit))
    )
    return [
        ActiveUser(user_id=r[0], events=int(r[1]), last_event=datetime.fromtimestamp(int(r[2]) / 1000, UTC))
        for r in conn.execute(stmt).all()
    ]
