"""The SQL side of the offline export: a safe upper bound on the event sequence, and event
rows of a sequence range with their string ids.

Why the bound needs care on PostgreSQL: ``events.id`` comes from a sequence at insert time, but
transactions commit in any order, so right after reading ``max(id) = M`` a transaction that
drew a smaller id may still commit — an export up to M would skip that row forever.
``LOCK TABLE events IN SHARE MODE`` conflicts with the ROW EXCLUSIVE lock every INSERT holds
from before it draws an id until its transaction ends, so once we hold it no transaction with
a drawn-but-uncommitted id remains; ``max(id)`` read then is a bound no later commit can go
under (later inserts draw larger ids; this assumes the sequence's default CACHE 1). The lock is
held for one index lookup; ``lock_timeout`` caps how long queued writers wait behind it while
we wait for a long in-flight transaction (e.g. a bulk ingest): then export stops at the last
committed watermark and says so. SQLite has one writer at a time and ``id`` is the rowid
(events are never deleted), so the committed ``max(id)`` is already safe.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import OperationalError

from feature_store.offline import (
    EVENT_SCHEMA,
    ExportResult,
    OfflineStore,
    OfflineStoreError,
)
from recsys.progress import progress_bar

logger = logging.getLogger(__name__)

_IN_LOOKUP_LIMIT = 2_000
_SQLITE_FETCH_ROWS = 250_000
_ROW_TYPE = pa.struct(
    [
        ("seq", pa.int64()),
        ("user_pk", pa.int64()),
        ("item_pk", pa.int64()),
        ("ts", pa.int64()),
        ("value", pa.float64()),
        ("event_type", pa.string()),
        ("event_id", pa.string()),
    ]
)


class BoundUnavailable(RuntimeError):
    """In-flight writers kept the safe upper bound out of reach within the lock timeout."""


def safe_max_seq(engine: Engine, *, lock_timeout_ms: int = 5_000, table: str = "events") -> int:
    """The largest ``<table>.id`` (events or impressions) below which no uncommitted row can
    still appear."""
    if table not in ("events", "impressions"):
        raise ValueError(f"no offline log for table {table!r}")
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}"))
            try:
                conn.execute(text(f"LOCK TABLE {table} IN SHARE MODE"))
            except OperationalError as exc:
                if getattr(exc.orig, "pgcode", None) == "55P03":  # lock_not_available
                    raise BoundUnavailable(
                        f"{table} table busy for {lock_timeout_ms} ms (a long write in flight)"
                    ) from exc
                raise
        return int(conn.execute(text(f"SELECT coalesce(max(id), 0) FROM {table}")).scalar_one())


class EventReader:
    """Reads events ``lo < id <= hi`` as an Arrow table in :data:`EVENT_SCHEMA`.

    User/item surrogate keys are turned into string ids with a pk → id map kept across batches
    (users and items are never deleted and keys never change, so the map only grows).
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        self.dialect = engine.dialect.name
        self._ids: dict[str, tuple[np.ndarray, pa.Array]] = {}

    def read(self, lo: int, hi: int) -> pa.Table:
        with self.engine.connect() as conn:
            rows = self._rows(conn, lo, hi)
            user = self._strings(conn, "users", "user_id", rows["user_pk"])
            item = self._strings(conn, "items", "item_id", rows["item_pk"])
        return pa.table(
            {
                "seq": rows["seq"],
                "event_id": rows["event_id"],
                "user_id": user,
                "item_id": item,
                "user_pk": rows["user_pk"],
                "item_pk": rows["item_pk"],
                "event_type": rows["event_type"],
                "value": rows["value"],
                "ts": pa.array(rows["ts"], pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
            },
            schema=EVENT_SCHEMA,
        )

    def _rows(self, conn: Connection, lo: int, hi: int) -> dict:
        sql = (
            "SELECT id, user_pk, item_pk, ts, value, event_type, event_id FROM events "
            f"WHERE id > {int(lo)} AND id <= {int(hi)} ORDER BY id"
        )
        if self.dialect == "postgresql":
            # COPY + Arrow's CSV reader: far cheaper than fetching millions of row tuples.
            buf = io.BytesIO()
            cur = conn.connection.driver_connection.cursor()
            try:
                cur.copy_expert(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv)", buf)
            finally:
                cur.close()
            buf.seek(0)
            from pyarrow import csv

            names = _ROW_TYPE.names
            table = csv.read_csv(
                buf,
                read_options=csv.ReadOptions(column_names=names),
                convert_options=csv.ConvertOptions(
                    column_types={f.name: f.type for f in _ROW_TYPE},
                    strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                ),
            )
            return {
                n: table.column(n).combine_chunks() if table.num_rows else pa.array([], _ROW_TYPE.field(n).type)
                for n in names
            }
        cur = conn.connection.driver_connection.cursor()
        chunks = []
        try:
            cur.execute(sql)
            while batch := cur.fetchmany(_SQLITE_FETCH_ROWS):
                chunks.append(pa.array(batch, type=_ROW_TYPE))  # row tuples -> Arrow in C
        finally:
            cur.close()
        arr = pa.concat_arrays(chunks) if chunks else pa.array([], type=_ROW_TYPE)
        return {n: arr.field(n) for n in _ROW_TYPE.names}

    def _strings(self, conn: Connection, table: str, column: str, pks: pa.Array) -> pa.Array:
        pk = pks.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        positions, strings = self._ids.get(table, (np.full(1, -1, np.int64), pa.array([], pa.string())))
        missing = (
            np.unique(pk[(pk >= len(positions)) | (positions[np.minimum(pk, len(positions) - 1)] < 0)])
            if len(pk)
            else pk
        )
        if len(missing):
            if len(missing) <= _IN_LOOKUP_LIMIT:
                found = conn.execute(
                    text(f"SELECT id, {column} FROM {table} WHERE id IN ({','.join(str(int(p)) for p in missing)})")
                ).all()
            else:
                found = conn.execute(text(f"SELECT id, {column} FROM {table}")).all()
            new_pk = np.fromiter((r[0] for r in found), np.int64, len(found))
            new_str = pa.array([r[1] for r in found], pa.string())
            size = max(len(positions), int(new_pk.max()) + 1 if len(new_pk) else 0)
            grown = np.full(size, -1, np.int64)
            grown[: len(positions)] = positions
            # New strings go after the known ones; map each new pk to its slot.
            fresh = grown[new_pk] < 0
            grown[new_pk[fresh]] = len(strings) + np.arange(int(fresh.sum()))
            strings = pa.concat_arrays([strings, new_str.filter(pa.array(fresh))])
            positions = grown
            self._ids[table] = (positions, strings)
        pos = positions[pk] if len(pk) else pk
        if len(pos) and (pos < 0).any():
            raise RuntimeError(f"events reference {table} rows that do not exist")
        return strings.take(pa.array(pos))


def export_events(
    engine: Engine,
    offline: OfflineStore,
    *,
    store_id: str,
    batch_events: int = 1_000_000,
    lock_timeout_ms: int = 5_000,
    progress: bool = False,
    after_file: Callable[[str], None] | None = None,
) -> ExportResult:
    """Append every committed event past the log's watermark to the offline log.

    Batches of at most ``batch_events`` sequence numbers, each committed on its own; a crash
    leaves the log at the last committed batch and the next call resumes there, rewriting the
    interrupted batch under the same names. ``store_id``: the SQL store's identity
    (:func:`feature_store.db.read_store_id`), which the log must be bound to.
    """
    return _export(
        engine,
        offline,
        EventReader(engine).read,
        "events",
        store_id=store_id,
        batch_rows=batch_events,
        lock_timeout_ms=lock_timeout_ms,
        progress=progress,
        after_file=after_file,
    )


def export_impressions(
    engine: Engine, offline: OfflineStore, *, store_id: str, batch_rows: int = 200_000, lock_timeout_ms: int = 5_000
) -> ExportResult:
    """:func:`export_events` for the impressions table, into the impressions log
    (``offline.kind`` is :data:`~feature_store.offline.IMPRESSIONS_LOG`)."""
    from feature_store.impressions import read_impression_rows

    def read(lo: int, hi: int) -> pa.Table:
        with engine.connect() as conn:
            return read_impression_rows(conn, lo, hi)

    return _export(
        engine, offline, read, "impressions", store_id=store_id, batch_rows=batch_rows, lock_timeout_ms=lock_timeout_ms
    )


def _export(
    engine: Engine,
    offline: OfflineStore,
    read: Callable[[int, int], pa.Table],
    table: str,
    *,
    store_id: str,
    batch_rows: int,
    lock_timeout_ms: int,
    progress: bool = False,
    after_file: Callable[[str], None] | None = None,
) -> ExportResult:
    """The export loop of one log: rows of ``table`` past the watermark, batch by batch."""
    start = time.perf_counter()
    offline.bind_source(store_id, engine.url.render_as_string(hide_password=True))
    lo = offline.state().watermark
    try:
        top = safe_max_seq(engine, lock_timeout_ms=lock_timeout_ms, table=table)
    except BoundUnavailable as exc:
        logger.warning("offline export of %s skipped, log stays at sequence %d: %s", table, lo, exc)
        return ExportResult(events=0, batches=0, seconds=time.perf_counter() - start, watermark=lo)
    if top < lo:
        raise OfflineStoreError(
            f"offline log {offline.uri} is at sequence {lo} but the database's {table} only reach {top}: "
            "was the database recreated? Rebuild the log with `recsys store export --rebuild`"
        )
    exported = batches = 0
    with progress_bar(disable=not progress) as bar:
        task = bar.add_task(f"export {table}", total=max(top - lo, 0))
        while lo < top:
            hi = offline.pending_batch(lo)
            if hi is None or not lo < hi <= top:
                hi = min(lo + int(batch_rows), top)
                offline.begin_batch(lo, hi)
            rows = read(lo, hi)
            offline.write_batch(lo, hi, rows, after_file=after_file)
            exported += rows.num_rows
            batches += 1
            bar.advance(task, hi - lo)
            lo = hi
    result = ExportResult(events=exported, batches=batches, seconds=time.perf_counter() - start, watermark=lo)
    if exported:
        logger.info(
            "exported %d %s to %s in %.2fs (%.0f rows/s), watermark %d",
            exported,
            table,
            offline.uri,
            result.seconds,
            result.events_per_second,
            lo,
        )
    return result
