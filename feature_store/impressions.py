"""Impressions: what was shown, to whom, by which model version and variant, at which positions
(and, under an exploration policy, with which propensities); and the events attributed to them.

Two tables of their own (``impressions``, ``impression_events``) so the events table stays as
it is: an event that names a ``request_id`` is also recorded here, in the same transaction as
the event itself and under the same ``event_id`` (a re-sent event is attributed once), with the
position its item had in that impression. Impressions are written in batches off the request
path (api/impressions.py), so a click can reach the store before its impression: its position
is then NULL and filled in when read (:func:`read_impressions`) from the impression's items.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Connection,
    Float,
    Integer,
    String,
    Table,
    func,
    insert,
    select,
)

from feature_store.backends import Backend
from feature_store.tables import JSONType, metadata

#: an absent propensity / source list is SQL NULL, not the JSON text ``null``: nothing to encode
JSON_OR_NULL = JSON(none_as_null=True)

# Indexes are what the reads need, no more (each one is paid on every logged list): the unique
# ``request_id`` (events attributed by it, the exposure join) and ``ts`` (the ``since`` reads);
# the export pages by ``id``. Request ids grow with time (api/impressions.py), so both indexes
# take their inserts at the right edge instead of at random pages.
impressions_table = Table(
    "impressions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(64), unique=True, nullable=False),
    Column("user_id", String(255), nullable=True),
    Column("surface", String(32), nullable=False),
    Column("model_version", String(255), nullable=False),
    Column("variant", String(255), nullable=False),
    Column("ts", BigInteger, nullable=False, index=True),
    Column("items", JSONType, nullable=False),
    Column("propensities", JSON_OR_NULL, nullable=True),
    Column("sources", JSON_OR_NULL, nullable=True),
)

impression_events_table = Table(
    "impression_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(255), unique=True, nullable=False),
    Column("request_id", String(255), nullable=False, index=True),
    Column("item_id", String(255), nullable=False),
    Column("event_type", String(64), nullable=False),
    Column("position", Integer, nullable=True),
    Column("value", Float, nullable=False, default=1.0),
    Column("ts", BigInteger, nullable=False),
)


@dataclass(frozen=True, slots=True)
class Impression:
    """One served list. ``items`` in shown order (position 0 first); ``propensities`` the
    probability the logging policy had of showing each item at its position (None: deterministic);
    ``sources`` which interleaved version contributed each position (None: not interleaved)."""

    request_id: str
    user_id: str | None
    surface: str
    model_version: str
    variant: str
    ts: int
    items: tuple[str, ...]
    propensities: tuple[float, ...] | None = None
    sources: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class AttributedEvent:
    """An event that names the impression (``request_id``) it came from."""

    event_id: str
    request_id: str
    item_id: str
    event_type: str
    ts: int
    value: float = 1.0


@dataclass
class LoggedImpression:
    """An impression read back with the positions of the events attributed to it."""

    impression: Impression
    clicks: dict[str, list[int]] = field(default_factory=dict)  # event type -> positions


@dataclass(frozen=True, slots=True)
class ExposureCounts:
    """Per variant: users with at least one impression, impressions, and per outcome the users
    and impressions with at least one attributed event of that type."""

    variant: str
    users: int
    impressions: int
    users_with: dict[str, int]
    impressions_with: dict[str, int]


def insert_impressions(conn: Connection, records: Sequence[Impression]) -> int:
    if not records:
        return 0
    rows = [
        {
            "request_id": r.request_id,
            "user_id": r.user_id,
            "surface": r.surface,
            "model_version": r.model_version,
            "variant": r.variant,
            "ts": int(r.ts),
            "items": list(r.items),
            "propensities": None if r.propensities is None else [float(p) for p in r.propensities],
            "sources": None if r.sources is None else list(r.sources),
        }
        for r in records
    ]
    conn.execute(insert(impressions_table), rows)
    return len(rows)


def insert_attributed(conn: Connection, backend: Backend, records: Sequence[AttributedEvent]) -> int:
    """Record events that name a request id, with their item's position in that impression
    (None when the impression is not stored yet or did not show the item); an ``event_id``
    already recorded is skipped. Returns how many had a position."""
    if not records:
        return 0
    ids = sorted({r.request_id for r in records})
    shown = {
        rid: list(items)
        for rid, items in conn.execute(
            select(impressions_table.c.request_id, impressions_table.c["items"]).where(
                impressions_table.c.request_id.in_(ids)
            )
        )
    }
    rows, placed = [], 0
    for r in records:
        items = shown.get(r.request_id) or []
        pos = items.index(r.item_id) if r.item_id in items else None
        placed += pos is not None
        rows.append(
            {
                "event_id": r.event_id,
                "request_id": r.request_id,
                "item_id": r.item_id,
                "event_type": r.event_type,
                "position": pos,
                "value": float(r.value),
                "ts": int(r.ts),
            }
        )
    conn.execute(backend.insert(impression_events_table).on_conflict_do_nothing(index_elements=["event_id"]), rows)
    return placed


def _impression(row) -> Impression:
    return Impression(
        request_id=row.request_id,
        user_id=row.user_id,
        surface=row.surface,
        model_version=row.model_version,
        variant=row.variant,
        ts=int(row.ts),
        items=tuple(row.items),
        propensities=None if row.propensities is None else tuple(float(p) for p in row.propensities),
        sources=None if row.sources is None else tuple(row.sources),
    )


def read_impressions(
    conn: Connection, since_ms: int | None = None, surface: str | None = None
) -> list[LoggedImpression]:
    """Impressions (oldest first) with the positions of their attributed events."""
    q = select(impressions_table).order_by(impressions_table.c.id)
    if since_ms is not None:
        q = q.where(impressions_table.c.ts >= since_ms)
    if surface is not None:
        q = q.where(impressions_table.c.surface == surface)
    out = {row.request_id: LoggedImpression(_impression(row)) for row in conn.execute(q)}
    if not out:
        return []
    e = impression_events_table
    ev = select(e.c.request_id, e.c.event_type, e.c.position, e.c.item_id).order_by(e.c.id)
    if since_ms is not None:
        ev = ev.where(e.c.ts >= since_ms)
    for rid, etype, pos, item in conn.execute(ev):
        logged = out.get(rid)
        if logged is None:
            continue
        if pos is None:  # the event was stored before its impression: place it now
            items = logged.impression.items
            if item not in items:
                continue
            pos = items.index(item)
        logged.clicks.setdefault(etype, []).append(int(pos))
    return list(out.values())


def read_impression_rows(conn: Connection, lo: int, hi: int):
    """Impressions with ``lo < id <= hi`` as an Arrow table in the impressions log's layout
    (:data:`feature_store.offline.IMPRESSION_SCHEMA`)."""
    import pyarrow as pa

    from feature_store.offline import IMPRESSION_SCHEMA

    i = impressions_table
    rows = conn.execute(select(i).where(i.c.id > int(lo), i.c.id <= int(hi)).order_by(i.c.id)).all()
    columns = {
        "seq": [r.id for r in rows],
        "request_id": [r.request_id for r in rows],
        "user_id": [r.user_id for r in rows],
        "surface": [r.surface for r in rows],
        "model_version": [r.model_version for r in rows],
        "variant": [r.variant for r in rows],
        "items": [list(r.items) for r in rows],
        "propensities": [None if r.propensities is None else [float(p) for p in r.propensities] for r in rows],
        "sources": [None if r.sources is None else list(r.sources) for r in rows],
        "ts": pa.array([int(r.ts) for r in rows], pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
    }
    return pa.table(columns, schema=IMPRESSION_SCHEMA)


def exposure_counts(conn: Connection, event_types: Sequence[str], since_ms: int | None = None) -> list[ExposureCounts]:
    """Per variant: users and impressions, and those with an event of each type that names one
    of the variant's impressions (by request id: a click on the list it came from)."""
    i, e = impressions_table, impression_events_table
    base = select(i.c.variant, func.count(func.distinct(i.c.user_id)), func.count()).group_by(i.c.variant)
    if since_ms is not None:
        base = base.where(i.c.ts >= since_ms)
    rows = {v: (int(u), int(n)) for v, u, n in conn.execute(base.order_by(i.c.variant))}
    users_with: dict[str, dict[str, int]] = {v: {} for v in rows}
    imps_with: dict[str, dict[str, int]] = {v: {} for v in rows}
    for etype in event_types:
        q = (
            select(i.c.variant, func.count(func.distinct(i.c.user_id)), func.count(func.distinct(i.c.request_id)))
            .join(e, e.c.request_id == i.c.request_id)
            .where(e.c.event_type == etype)
            .group_by(i.c.variant)
        )
        if since_ms is not None:
            q = q.where(i.c.ts >= since_ms)
        for v, u, n in conn.execute(q):
            users_with[v][etype], imps_with[v][etype] = int(u), int(n)
    return [ExposureCounts(v, u, n, users_with[v], imps_with[v]) for v, (u, n) in rows.items()]
