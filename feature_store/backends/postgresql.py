"""PostgreSQL backend: COPY in and out for bulk events, advisory locks, deadlock/serialization retries."""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Connection, Table
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError

from feature_store.backends.base import EVENT_INSERT_COLUMNS, Backend, LockHeld
from feature_store.tables import events_table
from recsys.progress import track

logger = logging.getLogger(__name__)

# Batches at least this big go through COPY into a temp table.
_COPY_MIN_ROWS = 5_000
# deadlock_detected, serialization_failure: the server rolled the whole transaction back.
_RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})
_HISTORY_SQL = (
    "SELECT i.item_id, e.created_at FROM events e JOIN items i ON e.item_pk = i.id "
    "JOIN users u ON e.user_pk = u.id WHERE u.user_id = %s ORDER BY e.ts, e.id"
)
_EVENT_READ_COLUMNS = ["event_id", "user_pk", "item_pk", "event_type", "value", "ts"]


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for ``pg_try_advisory_lock``."""
    return int.from_bytes(hashlib.sha256(f"recsys-lock:{name}".encode()).digest()[:8], "big", signed=True)


def sqlstate(exc: DBAPIError) -> str | None:
    """The SQLSTATE of a driver error (psycopg2: ``pgcode``, psycopg 3: ``sqlstate``)."""
    orig = exc.orig
    return getattr(orig, "pgcode", None) or getattr(orig, "sqlstate", None)


class PostgreSQLBackend(Backend):
    name = "postgresql"

    def insert(self, table: Table) -> Any:
        return pg_insert(table)

    def insert_events(self, conn: Connection, rows: pd.DataFrame, *, chunk_size: int, progress: bool) -> int:
        # Concurrent batches that share event ids (client retries) must lock unique-index
        # entries in the same order, or PostgreSQL finds a deadlock cycle between them.
        rows = rows.sort_values("event_id", kind="stable", ignore_index=True)
        if len(rows) >= _COPY_MIN_ROWS:
            return self._copy_events(conn, rows, chunk_size, progress)
        # Small batches: RETURNING yields exactly the rows that were inserted.
        stmt = pg_insert(events_table).on_conflict_do_nothing(index_elements=["event_id"]).returning(events_table.c.id)
        records = rows.to_dict("records")
        inserted = 0
        for lo in track(range(0, len(rows), chunk_size), "events (chunks)", enabled=progress):
            batch = [{k: _py(v) for k, v in r.items()} for r in records[lo : lo + chunk_size]]
            inserted += len(conn.execute(stmt, batch).all())
        return inserted

    def _copy_events(self, conn: Connection, rows: pd.DataFrame, chunk_size: int, progress: bool) -> int:
        cols = ", ".join(EVENT_INSERT_COLUMNS)
        cur = conn.connection.driver_connection.cursor()
        try:
            cur.execute(
                "CREATE TEMP TABLE _events_in (LIKE events INCLUDING DEFAULTS) ON COMMIT DROP; "
                "ALTER TABLE _events_in DROP COLUMN id, DROP COLUMN created_at"
            )
            copy_sql = f"COPY _events_in ({cols}) FROM STDIN WITH (FORMAT csv, FORCE_NOT_NULL (event_id, event_type))"
            for lo in track(range(0, len(rows), chunk_size), "events (chunks)", enabled=progress):
                buf = io.StringIO()
                rows.iloc[lo : lo + chunk_size].to_csv(buf, header=False, index=False, float_format="%.17g")
                buf.seek(0)
                cur.copy_expert(copy_sql, buf)
            cur.execute(
                f"INSERT INTO events ({cols}) SELECT {cols} FROM _events_in ORDER BY event_id "
                "ON CONFLICT (event_id) DO NOTHING"
            )
            inserted = cur.rowcount
            cur.execute("DROP TABLE _events_in")
        finally:
            cur.close()
        return int(inserted)

    def read_events(self, conn: Connection, cutoff_ms: int) -> dict[str, Any]:
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
            names=_EVENT_READ_COLUMNS,
            dtype={
                "event_id": "str",
                "user_pk": "int64",
                "item_pk": "int64",
                "event_type": "str",
                "value": "float64",
                "ts": "int64",
            },
            keep_default_na=False,
            engine="c",
        )
        return {c: df[c].to_numpy() if c not in ("event_id", "event_type") else df[c] for c in df.columns}

    def user_activity_rows(self, conn: Connection, user_id: str) -> list[tuple[str, Any]]:
        return [tuple(r) for r in conn.exec_driver_sql(_HISTORY_SQL, (str(user_id),)).all()]

    @contextmanager
    def exclusive_lock(self, name: str, lock_dir: Path) -> Iterator[str]:
        # A session-level advisory lock held by one dedicated connection for the whole block:
        # the server releases it if the process dies. ``lock_dir`` is not needed here.
        key = advisory_key(name)
        conn = self.engine.connect()
        try:
            got = conn.exec_driver_sql("SELECT pg_try_advisory_lock(%s)", (key,)).scalar_one()
            conn.commit()
            if not got:
                raise LockHeld(f"PostgreSQL advisory lock {key} is held")
            try:
                yield f"pg_advisory_lock({key})"
            finally:
                conn.exec_driver_sql("SELECT pg_advisory_unlock(%s)", (key,))
                conn.commit()
        finally:
            conn.close()

    def is_retryable(self, exc: DBAPIError) -> bool:
        return sqlstate(exc) in _RETRYABLE_SQLSTATES


def _py(v: Any) -> Any:
    """numpy scalars -> Python scalars for DBAPI drivers."""
    return v.item() if isinstance(v, np.generic) else v
