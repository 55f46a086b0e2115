"""FeatureStore: bulk ingest, point-in-time snapshots and the catalog operations the API uses.

Writes go through SQLAlchemy Core (never a per-row ORM loop) and every public write is one
transaction: a failure leaves the database exactly as it was. External string ids are mapped to
integer surrogate keys in pandas; events are stored with those keys and epoch-millisecond times.
"""

from __future__ import annotations

import io
import json
import logging
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from sqlalchemy import Connection, Engine, Table, bindparam, func, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from tqdm.auto import tqdm

from feature_store.db import init_db, make_engine
from feature_store.export import export_events
from feature_store.offline import ExportResult, OfflineStore, OfflineStoreError, cutoff_millis, default_offline_uri
from feature_store.tables import events_table, items_table, users_table
from recsys.datasets.base import (
    EVENT_COLUMNS,
    ITEM_COLUMNS,
    USER_COLUMNS,
    Dataset,
    DatasetError,
    empty_items,
    empty_users,
    normalize_events,
    normalize_items,
    normalize_users,
)

logger = logging.getLogger(__name__)

CHUNK_SIZE = 50_000
# Up to this many distinct ids are looked up with IN (...); more and the whole id table is read.
_IN_LOOKUP_LIMIT = 500
# PostgreSQL: batches at least this big go through COPY into a temp table.
_PG_COPY_MIN_ROWS = 5_000
# SQLite: loads at least this big rebuild the secondary event indexes afterwards.
_SQLITE_REINDEX_MIN_ROWS = 100_000
_READ_CHUNK_ROWS = 250_000
_EVENT_ROW_TYPE = pa.struct(
    [
        ("user_pk", pa.int64()),
        ("item_pk", pa.int64()),
        ("ts", pa.int64()),
        ("value", pa.float64()),
        ("event_type", pa.large_string()),
        ("event_id", pa.large_string()),
    ]
)
_USER_ROW_TYPE = pa.struct([("id", pa.int64()), ("user_id", pa.large_string()), ("attributes", pa.large_string())])
_EVENT_INSERT_COLUMNS = ["event_id", "user_pk", "item_pk", "event_type", "value", "ts", "variant"]


class NotFoundError(KeyError):
    """A catalog operation named an item or user the store does not have."""

    def __str__(self) -> str:  # KeyError would print the repr with quotes
        return str(self.args[0]) if self.args else "not found"


@dataclass(frozen=True)
class IngestResult:
    users_upserted: int
    items_upserted: int
    events_inserted: int
    events_duplicate: int


_MAX_TX_RETRIES = 5
_HISTORY_SQL = (
    "SELECT i.item_id, e.created_at FROM events e JOIN items i ON e.item_pk = i.id "
    "JOIN users u ON e.user_pk = u.id WHERE u.user_id = {p} ORDER BY e.ts, e.id"
)


class FeatureStore:
    """The SQL feature store. Same code on SQLite and PostgreSQL.

    Parameters
    ----------
    engine_or_url : Engine or str
        An engine from :func:`feature_store.db.make_engine` or a database URL.
    create : bool
        Create missing tables on construction.
    chunk_size : int
        Events per insert batch during ingest.
    offline_uri : str, optional
        The offline Parquet event log (see :mod:`feature_store.offline`); default from
        :func:`feature_store.offline.default_offline_uri`. ``""`` means none: snapshots then
        read SQL.
    """

    def __init__(self, engine_or_url: Engine | str, *, create: bool = True, chunk_size: int = CHUNK_SIZE,
                 offline_uri: str | None = None):
        self.engine = make_engine(engine_or_url) if isinstance(engine_or_url, str) else engine_or_url
        self.dialect = self.engine.dialect.name
        if self.dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"unsupported database dialect {self.dialect!r} (sqlite or postgresql)")
        self.chunk_size = int(chunk_size)
        if create:
            init_db(self.engine)
        if offline_uri is None:
            offline_uri = default_offline_uri(self.engine.url.render_as_string(hide_password=False))
        self.offline = OfflineStore(offline_uri) if offline_uri else None

    def __repr__(self) -> str:
        return f"FeatureStore({self.engine.url.render_as_string(hide_password=True)!r})"

    def dispose(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------ ingest

    def ingest(self, dataset: Dataset, *, progress: bool = False) -> IngestResult:
        """Upsert the dataset's items and users and insert its events, in one transaction.

        Events whose ``event_id`` is already stored are skipped (counted as duplicates), so
        re-ingesting the same dataset writes nothing new.
        """
        if len(dataset.events) == 0 and len(dataset.items) == 0:
            raise DatasetError(f"dataset {dataset.name!r} is empty: no events and no items")
        start = time.perf_counter()
        with self.engine.begin() as conn:
            n_items = self._upsert_items(conn, dataset.items, placeholders_overwrite=False)
            n_users = self._upsert_users(conn, dataset.users, placeholders_overwrite=False)
            inserted = self._write_events(conn, dataset.events, create_users=False, progress=progress)
        if self.offline is not None and inserted:
            # The offline half right after the commit. A failure here only delays it (the next
            # export picks the committed rows up by the watermark), so it is not the ingest's.
            try:
                self.export_offline(progress=progress)
            except (OfflineStoreError, OSError) as exc:
                logger.warning("events committed to SQL but not yet exported (run `recsys store export`): %s", exc)
        result = IngestResult(
            users_upserted=n_users,
            items_upserted=n_items,
            events_inserted=inserted,
            events_duplicate=len(dataset.events) - inserted,
        )
        logger.info("ingested %s in %.1fs: %s", dataset.name, time.perf_counter() - start, result)
        return result

    def add_events(self, records: Sequence[dict[str, Any]]) -> tuple[int, int]:
        """Insert events given as dicts; returns ``(inserted, duplicates)``.

        Keys: user_id, item_id (required), event_type, value, timestamp (datetime, ISO string or
        epoch seconds; default now), event_id (default: derived from the other fields), variant.
        Unknown users are created; an unknown item raises DatasetError and writes nothing.
        """
        if not records:
            return 0, 0
        frame = pd.DataFrame.from_records(list(records))
        now = pd.Timestamp.now(tz="UTC")
        if "timestamp" not in frame:
            frame["timestamp"] = now
        else:
            frame["timestamp"] = [now if _missing(v) else v for v in frame["timestamp"]]
            if frame["timestamp"].map(lambda v: isinstance(v, (int, float))).all():
                frame["timestamp"] = pd.to_numeric(frame["timestamp"])
        # Per-record defaults, so one record leaving a field out doesn't fail the batch.
        for col, default in (("value", 1.0), ("event_type", "interaction")):
            if col in frame:
                frame[col] = [default if _missing(v) else v for v in frame[col]]
        given_ids = frame["event_id"] if "event_id" in frame else None
        events = normalize_events(frame.drop(columns=["event_id"], errors="ignore"))
        if given_ids is not None:
            # Keep caller ids where given; derived ids only fill the gaps.
            mask = given_ids.notna().to_numpy()
            ids = np.array(events["event_id"].to_numpy(dtype=object), dtype=object)
            ids[mask] = given_ids[mask].astype(str).to_numpy()
            events["event_id"] = pd.Series(ids, dtype="str")
        variant = frame["variant"].reset_index(drop=True) if "variant" in frame else None
        for attempt in range(_MAX_TX_RETRIES):
            try:
                with self.engine.begin() as conn:
                    inserted = self._write_events(conn, events, create_users=True, variant=variant)
                return inserted, len(events) - inserted
            except OperationalError as exc:
                # A deadlock / serialization victim rolled back whole: retrying is safe (idempotent).
                if getattr(exc.orig, "pgcode", None) not in ("40P01", "40001") or attempt == _MAX_TX_RETRIES - 1:
                    raise
                logger.info("add_events: transaction retried after %s", exc.orig.pgcode)
                time.sleep(0.01 * (attempt + 1) * (1 + random.random()))
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ snapshot

    def export_offline(self, *, progress: bool = False, **kwargs: Any) -> ExportResult:
        """Append committed events past the offline log's watermark (see feature_store.export)."""
        if self.offline is None:
            raise ValueError("this feature store has no offline store (offline_uri)")
        return export_events(self.engine, self.offline, progress=progress, **kwargs)

    def snapshot(self, as_of: datetime | None = None, *, source: str = "auto") -> Dataset:
        """All events with ``timestamp <= as_of`` (default now) plus the full item and user tables.

        ``source``: ``"offline"`` exports what is new and reads the Parquet log (ids come back
        as pandas Categorical); ``"sql"`` reads the events table; ``"auto"`` is offline when the
        store has an offline log.
        """
        if source not in ("auto", "sql", "offline"):
            raise ValueError(f"source must be auto, sql or offline, got {source!r}")
        if source == "offline" or (source == "auto" and self.offline is not None):
            return self._snapshot_offline(as_of)
        as_of_ts, cutoff_ms = cutoff_millis(as_of)
        start = time.perf_counter()
        with self.engine.connect() as conn:
            # Events first: items and users are never hard-deleted, so every key read here
            # resolves against the tables read afterwards even while writers are active.
            ev = self._read_events(conn, cutoff_ms)
            t_events = time.perf_counter() - start
            users = self._read_users(conn)
            items = self._read_items(conn)
        user_pos = _pk_positions(users["id"].to_numpy())
        item_pos = _pk_positions(items["id"].to_numpy())
        events = pd.DataFrame(
            {
                "event_id": ev["event_id"],
                "user_id": _take_str(users["user_id"], user_pos[ev["user_pk"]]),
                "item_id": _take_str(items["item_id"], item_pos[ev["item_pk"]]),
                "event_type": ev["event_type"],
                "value": ev["value"],
                "timestamp": pd.to_datetime(ev["ts"], unit="ms", utc=True).astype("datetime64[ns, UTC]"),
            }
        )
        name = f"snapshot-{as_of_ts.isoformat()}"
        dataset = Dataset(events=events, items=items[ITEM_COLUMNS], users=users[USER_COLUMNS], name=name)
        logger.info(
            "snapshot as of %s: %d events, %d items, %d users in %.2fs (event read %.2fs)",
            as_of_ts,
            len(events),
            len(items),
            len(users),
            time.perf_counter() - start,
            t_events,
        )
        return dataset

    def _snapshot_offline(self, as_of: datetime | None) -> Dataset:
        as_of_ts, cutoff_ms = cutoff_millis(as_of)
        start = time.perf_counter()
        self.export_offline()
        t_export = time.perf_counter() - start
        # The catalog after the export: every key in the log was committed before it was
        # exported, and items and users are never hard-deleted.
        with self.engine.connect() as conn:
            users, items = self._read_users(conn), self._read_items(conn)
        t_catalog = time.perf_counter() - start - t_export
        events = self.offline.read_events(cutoff_ms, users=users.set_index("id")["user_id"],
                                          items=items.set_index("id")["item_id"])
        t_events = time.perf_counter() - start - t_export - t_catalog
        dataset = Dataset(events=events, items=items[ITEM_COLUMNS], users=users[USER_COLUMNS],
                          name=f"snapshot-{as_of_ts.isoformat()}")
        logger.info("offline snapshot as of %s: %d events, %d items, %d users in %.2fs (export %.2fs, catalog %.2fs, "
                    "event read %.2fs)", as_of_ts, len(events), len(items), len(users), time.perf_counter() - start,
                    t_export, t_catalog, t_events)
        return dataset

    # ------------------------------------------------------------------ catalog

    def get_item(self, item_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(items_table).where(items_table.c.item_id == str(item_id))).mappings().first()
        return _public_row(row)

    def get_user(self, user_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(users_table).where(users_table.c.user_id == str(user_id))).mappings().first()
        return _public_row(row)

    def upsert_items(self, records: Sequence[dict[str, Any]]) -> int:
        """Insert or update items; fields a record leaves out get their defaults. Returns rows written."""
        frame = _records_frame(records, "item_id", "item")
        if frame is None:
            return 0
        with self.engine.begin() as conn:
            return self._upsert_items(conn, frame, placeholders_overwrite=True)

    def upsert_users(self, records: Sequence[dict[str, Any]]) -> int:
        frame = _records_frame(records, "user_id", "user")
        if frame is None:
            return 0
        with self.engine.begin() as conn:
            return self._upsert_users(conn, frame, placeholders_overwrite=True)

    def set_item_available(self, item_id: str, available: bool) -> None:
        with self.engine.begin() as conn:
            res = conn.execute(
                update(items_table)
                .where(items_table.c.item_id == str(item_id))
                .values(available=bool(available), updated_at=func.now())
            )
            if res.rowcount == 0:
                raise NotFoundError(f"unknown item: {item_id!r}")

    def delete_item(self, item_id: str) -> None:
        """Soft delete: the row stays (past events still point at it) but is no longer available."""
        self.set_item_available(item_id, False)

    def user_history(self, user_id: str) -> list[str]:
        """Item ids the user interacted with, oldest first (repeats kept)."""
        return self.user_activity(user_id)[0]

    def user_activity(self, user_id: str) -> tuple[list[str], datetime | None]:
        """The user's item ids (oldest first, repeats kept) and when their newest event was
        stored (UTC). Plain driver SQL: this runs on every recommendation request."""
        sql = _HISTORY_SQL.format(p="?" if self.dialect == "sqlite" else "%s")
        with self.engine.connect() as conn:
            rows = conn.exec_driver_sql(sql, (str(user_id),)).all()
        newest = max((r[1] for r in rows if r[1] is not None), default=None)
        if isinstance(newest, str):  # SQLite returns CURRENT_TIMESTAMP text ("YYYY-MM-DD HH:MM:SS", UTC)
            newest = datetime.fromisoformat(newest)
        if newest is not None and newest.tzinfo is None:
            newest = newest.replace(tzinfo=timezone.utc)
        return [r[0] for r in rows], newest

    def item_popularity(self, limit: int | None = None) -> pd.Series:
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
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return pd.Series(
            [int(r[1]) for r in rows],
            index=pd.Index([r[0] for r in rows], dtype="str", name="item_id"),
            name="count",
            dtype="int64",
        )

    def count_events(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(events_table)).scalar_one())

    def items_frame(self) -> pd.DataFrame:
        with self.engine.connect() as conn:
            return self._read_items(conn)[ITEM_COLUMNS]

    def users_frame(self) -> pd.DataFrame:
        with self.engine.connect() as conn:
            return self._read_users(conn)[USER_COLUMNS]

    # ------------------------------------------------------------------ internals: upserts

    def _insert(self, table: Table):
        return (sqlite_insert if self.dialect == "sqlite" else pg_insert)(table)

    def _upsert(self, conn: Connection, table: Table, key: str, rows: list[dict], overwrite: bool) -> int:
        """INSERT ... ON CONFLICT (key) DO UPDATE (or DO NOTHING); returns rows inserted or updated."""
        if not rows:
            return 0
        ins = self._insert(table)
        if overwrite:
            cols = [c for c in rows[0] if c != key]
            stmt = ins.on_conflict_do_update(
                index_elements=[key],
                set_={**{c: ins.excluded[c] for c in cols}, "updated_at": func.now()},
            )
            for lo in range(0, len(rows), 10_000):
                conn.execute(stmt, rows[lo : lo + 10_000])
            return len(rows)
        count = select(func.count()).select_from(table)
        before = conn.execute(count).scalar_one()
        stmt = ins.on_conflict_do_nothing(index_elements=[key])
        for lo in range(0, len(rows), 10_000):
            conn.execute(stmt, rows[lo : lo + 10_000])
        return int(conn.execute(count).scalar_one() - before)

    def _upsert_items(self, conn: Connection, items: pd.DataFrame, *, placeholders_overwrite: bool) -> int:
        if len(items) == 0:
            return 0
        items = items.drop_duplicates("item_id", keep="last")
        rows = [
            {
                "item_id": str(r.item_id),
                "title": str(r.title),
                "description": str(r.description),
                "categories": [str(c) for c in r.categories],
                "attributes": r.attributes,
                "available": bool(r.available),
            }
            for r in items.itertuples(index=False)
        ]
        if placeholders_overwrite:
            return self._upsert(conn, items_table, "item_id", rows, overwrite=True)
        # Items known only from events carry no metadata: insert them if new, but never let
        # them blank out a catalog entry stored earlier.
        blank = [
            not (r["title"] or r["description"] or r["categories"] or r["attributes"]) and r["available"]
            for r in rows
        ]
        full = [r for r, b in zip(rows, blank) if not b]
        empty = [r for r, b in zip(rows, blank) if b]
        return self._upsert(conn, items_table, "item_id", full, True) + self._upsert(
            conn, items_table, "item_id", empty, False
        )

    def _upsert_users(self, conn: Connection, users: pd.DataFrame, *, placeholders_overwrite: bool) -> int:
        if len(users) == 0:
            return 0
        users = users.drop_duplicates("user_id", keep="last")
        rows = [{"user_id": str(u), "attributes": a} for u, a in zip(users["user_id"], users["attributes"])]
        if placeholders_overwrite:
            return self._upsert(conn, users_table, "user_id", rows, overwrite=True)
        full = [r for r in rows if r["attributes"]]
        empty = [r for r in rows if not r["attributes"]]
        return self._upsert(conn, users_table, "user_id", full, True) + self._upsert(
            conn, users_table, "user_id", empty, False
        )

    # ------------------------------------------------------------------ internals: events

    def _lookup_pks(self, conn: Connection, table: Table, key: str, ids: np.ndarray) -> np.ndarray:
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

    def _write_events(
        self,
        conn: Connection,
        events: pd.DataFrame,
        *,
        create_users: bool,
        progress: bool = False,
        variant: pd.Series | None = None,
    ) -> int:
        if len(events) == 0:
            return 0
        item_ids = events["item_id"].to_numpy()
        item_pk = self._lookup_pks(conn, items_table, "item_id", item_ids)
        if (item_pk < 0).any():
            missing = pd.unique(item_ids[item_pk < 0])
            raise DatasetError(
                f"events reference {len(missing)} unknown item(s): {', '.join(map(repr, missing[:10]))}"
                + (" ..." if len(missing) > 10 else "")
            )
        user_ids = events["user_id"].to_numpy()
        user_pk = self._lookup_pks(conn, users_table, "user_id", user_ids)
        if (user_pk < 0).any():
            missing = pd.unique(user_ids[user_pk < 0])
            if not create_users:
                raise DatasetError(f"events reference unknown user(s): {', '.join(map(repr, missing[:10]))}")
            # Sorted: concurrent writers then take row locks in one order (no deadlock cycle).
            self._upsert(conn, users_table, "user_id", [{"user_id": str(u), "attributes": {}} for u in sorted(map(str, missing))], False)
            user_pk = self._lookup_pks(conn, users_table, "user_id", user_ids)
        ts = events["timestamp"]
        ts_ms = ts.array.as_unit("ns").asi8 // 1_000_000  # floor division: exact for pre-1970 too
        rows = pd.DataFrame(
            {
                "event_id": events["event_id"].to_numpy(dtype=object),
                "user_pk": user_pk,
                "item_pk": item_pk,
                "event_type": events["event_type"].to_numpy(dtype=object),
                "value": events["value"].to_numpy(dtype=np.float64),
                "ts": ts_ms,
                "variant": (
                    variant.astype(object).where(variant.notna(), None).to_numpy()
                    if variant is not None
                    else np.full(len(events), None, dtype=object)
                ),
            }
        )
        if self.dialect == "postgresql":
            # Concurrent batches that share event ids (client retries) must lock unique-index
            # entries in the same order, or PostgreSQL finds a deadlock cycle between them.
            rows = rows.sort_values("event_id", kind="stable", ignore_index=True)
            if len(rows) >= _PG_COPY_MIN_ROWS:
                return self._copy_events_pg(conn, rows, progress)
        return self._executemany_events(conn, rows, progress)

    def _executemany_events(self, conn: Connection, rows: pd.DataFrame, progress: bool) -> int:
        stmt = self._insert(events_table).on_conflict_do_nothing(index_elements=["event_id"])
        chunks = range(0, len(rows), self.chunk_size)
        inserted = 0
        if self.dialect == "sqlite":
            # Compiled once, then executemany with plain tuples: SQLAlchemy's per-row dict
            # processing would cost more than SQLite itself. sqlite3 sums rowcount over
            # executemany and ignored conflicts don't count, so it is the inserted total.
            compiled = stmt.values({c: bindparam(c) for c in _EVENT_INSERT_COLUMNS}).compile(dialect=conn.dialect)
            sql = str(compiled)
            cols = [rows[c].tolist() for c in compiled.positiontup]
            with self._sqlite_bulk_indexes(conn, rows["event_id"].to_numpy()):
                for lo in tqdm(chunks, desc="events", unit="chunk", disable=not progress):
                    params = list(zip(*(c[lo : lo + self.chunk_size] for c in cols)))
                    inserted += conn.exec_driver_sql(sql, params).rowcount
            return inserted
        # PostgreSQL small batches: RETURNING yields exactly the rows that were inserted.
        stmt = stmt.returning(events_table.c.id)
        records = rows.to_dict("records")
        for lo in tqdm(chunks, desc="events", unit="chunk", disable=not progress):
            batch = [{k: _py(v) for k, v in r.items()} for r in records[lo : lo + self.chunk_size]]
            inserted += len(conn.execute(stmt, batch).all())
        return inserted

    @contextmanager
    def _sqlite_bulk_indexes(self, conn: Connection, event_ids: np.ndarray) -> Iterator[None]:
        """For big loads, drop the secondary event indexes and rebuild them once at the end.

        Sorting once (CREATE INDEX) is ~3x cheaper than maintaining three B-trees row by row.
        SQLite DDL is transactional, so a failed ingest rolls the indexes back too.
        """
        existing = conn.execute(select(func.count()).select_from(events_table)).scalar_one()
        if existing and len(event_ids) >= _SQLITE_REINDEX_MIN_ROWS:
            # Estimate how many rows are really new from a sample (a re-ingest adds none).
            rng = np.random.default_rng(0)
            sample = [str(v) for v in rng.choice(event_ids, size=min(500, len(event_ids)), replace=False)]
            hits = conn.execute(
                select(func.count()).where(events_table.c.event_id.in_(bindparam("ids", expanding=True))),
                {"ids": sample},
            ).scalar_one()
            n_new = len(event_ids) * (1 - hits / len(sample))
        else:
            n_new = len(event_ids)
        if n_new < _SQLITE_REINDEX_MIN_ROWS or n_new < existing // 4:
            yield
            return
        logger.debug("bulk load of ~%d new events: rebuilding event indexes afterwards", n_new)
        indexes = list(events_table.indexes)
        for ix in indexes:
            ix.drop(conn, checkfirst=True)
        yield
        for ix in indexes:
            ix.create(conn)

    def _copy_events_pg(self, conn: Connection, rows: pd.DataFrame, progress: bool) -> int:
        cols = ", ".join(_EVENT_INSERT_COLUMNS)
        cur = conn.connection.driver_connection.cursor()
        try:
            cur.execute(
                "CREATE TEMP TABLE _events_in (LIKE events INCLUDING DEFAULTS) ON COMMIT DROP; "
                "ALTER TABLE _events_in DROP COLUMN id, DROP COLUMN created_at"
            )
            copy_sql = (
                f"COPY _events_in ({cols}) FROM STDIN WITH (FORMAT csv, FORCE_NOT_NULL (event_id, event_type))"
            )
            for lo in tqdm(range(0, len(rows), self.chunk_size), desc="events", unit="chunk", disable=not progress):
                buf = io.StringIO()
                rows.iloc[lo : lo + self.chunk_size].to_csv(buf, header=False, index=False, float_format="%.17g")
                buf.seek(0)
                cur.copy_expert(copy_sql, buf)
            cur.execute(
                f"INSERT INTO events ({cols}) SELECT {cols} FROM _events_in ORDER BY event_id ON CONFLICT (event_id) DO NOTHING"
            )
            inserted = cur.rowcount
            cur.execute("DROP TABLE _events_in")
        finally:
            cur.close()
        return int(inserted)

    # ------------------------------------------------------------------ internals: reads

    def _read_events(self, conn: Connection, cutoff_ms: int) -> dict[str, Any]:
        if self.dialect == "postgresql":
            # COPY ... TO STDOUT + pandas' C csv parser beats fetching millions of row tuples.
            buf = io.StringIO()
            cur = conn.connection.driver_connection.cursor()
            try:
                cur.copy_expert(
                    "COPY (SELECT event_id, user_pk, item_pk, event_type, value, ts FROM events "
                    f"WHERE ts <= {int(cutoff_ms)} ORDER BY ts, id) TO STDOUT WITH (FORMAT csv)",
                    buf,
                )
            finally:
                cur.close()
            buf.seek(0)
            df = pd.read_csv(
                buf,
                header=None,
                names=["event_id", "user_pk", "item_pk", "event_type", "value", "ts"],
                dtype={"event_id": "str", "user_pk": "int64", "item_pk": "int64", "event_type": "str",
                       "value": "float64", "ts": "int64"},
                keep_default_na=False,
                engine="c",
            )
            return {c: df[c].to_numpy() if c not in ("event_id", "event_type") else df[c] for c in df.columns}
        cur = conn.connection.driver_connection.cursor()
        chunks = []
        try:
            # The ts index already yields (ts, id) order, so ORDER BY costs no sort.
            cur.execute(
                "SELECT user_pk, item_pk, ts, value, event_type, event_id FROM events "
                "WHERE ts <= ? ORDER BY ts, id",
                (int(cutoff_ms),),
            )
            # Row tuples -> Arrow struct in C: ~3x faster than zip(*rows) + per-column arrays,
            # and fetchmany bounds the memory held in Python tuples.
            while rows := cur.fetchmany(_READ_CHUNK_ROWS):
                chunks.append(pa.array(rows, type=_EVENT_ROW_TYPE))
        finally:
            cur.close()

        def field(name: str) -> pa.Array:
            typ = _EVENT_ROW_TYPE.field(name).type
            return pa.concat_arrays([c.field(name) for c in chunks]) if chunks else pa.array([], type=typ)

        return {
            "event_id": _arrow_str(field("event_id")),
            "user_pk": field("user_pk").to_numpy(),
            "item_pk": field("item_pk").to_numpy(),
            "event_type": _arrow_str(field("event_type")),
            "value": field("value").to_numpy(),
            "ts": field("ts").to_numpy(),
        }

    def _read_items(self, conn: Connection) -> pd.DataFrame:
        # Driver SQL, JSON as text decoded in one call: SQLAlchemy's per-row result processing
        # and JSON decoding dominated snapshots of a 100k-user catalog.
        rows = _fetch_all(
            conn,
            "SELECT id, item_id, title, description, CAST(categories AS TEXT), CAST(attributes AS TEXT), available "
            "FROM items ORDER BY id",
        )
        if not rows:
            return empty_items().assign(id=pd.Series([], dtype="int64"))
        cols = list(zip(*rows))
        return pd.DataFrame(
            {
                "id": np.asarray(cols[0], dtype=np.int64),
                "item_id": pd.Series(cols[1], dtype="str"),
                "title": pd.Series(cols[2], dtype="str"),
                "description": pd.Series(cols[3], dtype="str"),
                "categories": _json_column(cols[4]),
                "attributes": _json_column(cols[5]),
                "available": np.asarray(cols[6], dtype=bool),
            }
        )

    def _read_users(self, conn: Connection) -> pd.DataFrame:
        rows = _fetch_all(conn, "SELECT id, user_id, CAST(attributes AS TEXT) FROM users ORDER BY id")
        if not rows:
            return empty_users().assign(id=pd.Series([], dtype="int64"))
        table = pa.array(rows, type=_USER_ROW_TYPE)  # row tuples -> columns in C
        return pd.DataFrame(
            {
                "id": table.field("id").to_numpy(),
                "user_id": pd.Series(table.field("user_id").to_pandas(), dtype="str"),
                "attributes": _json_column(table.field("attributes").to_pylist()),
            }
        )


# ---------------------------------------------------------------------- helpers


def _fetch_all(conn: Connection, sql: str) -> list[tuple]:
    """Plain DBAPI tuples (no per-row Row objects) for a whole-table read."""
    cur = conn.connection.driver_connection.cursor()
    try:
        cur.execute(sql)
        return cur.fetchall()
    finally:
        cur.close()


def _json_column(texts: Sequence[str]) -> list:
    """JSON texts (read cast to text) decoded in one json.loads: a 100k-user catalog decodes
    ~5x faster than through a per-row result processor."""
    return json.loads("[" + ",".join(texts) + "]")


def _pk_positions(pks: np.ndarray) -> np.ndarray:
    """Array mapping surrogate key -> row position (-1 where no row)."""
    out = np.full(int(pks.max()) + 1 if len(pks) else 1, -1, dtype=np.int64)
    out[pks] = np.arange(len(pks))
    return out


def _take_str(values: pd.Series, positions: np.ndarray) -> pd.Series:
    """values[positions] as a str Series, gathered by pyarrow in C instead of per Python object."""
    if (positions < 0).any():
        raise RuntimeError("events reference rows missing from the users/items tables")
    arr = pa.array(values.to_numpy(dtype=object), type=pa.large_string()).take(pa.array(positions))
    return pd.Series(arr.to_pandas(), dtype="str")


def _arrow_str(arr: pa.Array) -> pd.Series:
    return pd.Series(arr.to_pandas(), dtype="str")


def _records_frame(records: Sequence[dict[str, Any]], key: str, what: str) -> pd.DataFrame | None:
    if not records:
        return None
    for i, r in enumerate(records):
        if not isinstance(r, dict) or r.get(key) in (None, ""):
            raise DatasetError(f"{what} record {i} has no {key!r}: {r!r}")
    frame = pd.DataFrame.from_records(list(records))
    no_events = pd.DataFrame({c: pd.Series(dtype="str") for c in ("user_id", "item_id")})
    return normalize_items(frame, no_events) if what == "item" else normalize_users(frame, no_events)


def _public_row(row: Any) -> dict[str, Any] | None:
    if row is None:
        return None
    out = dict(row)
    out.pop("id", None)
    return out


def _missing(v: Any) -> bool:
    return v is None or v is pd.NaT or (isinstance(v, float) and np.isnan(v))


def _py(v: Any) -> Any:
    """numpy scalars -> Python scalars for DBAPI drivers."""
    return v.item() if isinstance(v, np.generic) else v


__all__ = ["FeatureStore", "IngestResult", "NotFoundError", "CHUNK_SIZE", "EVENT_COLUMNS"]
