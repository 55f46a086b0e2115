"""Serving control state shared by every API worker and replica (same database as the store).

Two append-only logs; the max ``seq`` of each is a *generation* a worker compares with the one it
has applied (one primary-key lookup):

- ``api_catalog_changes``: item ids changed through the API. A worker behind re-reads just those
  items and applies them to its loaded models (availability, metadata, cold-start items).
- ``serving_reloads``: reload requests (``POST /admin/reload``, the pipeline's notify stage).
  Every worker watches its max ``seq`` and reloads its aliases when it moves, so a reload sent
  to one worker reaches all of them.

And one small table of the workers themselves:

- ``serving_workers``: each worker's id, the catalog generation it has applied and when it
  last said so (epoch seconds, its own clock). A catalog write waits until every live worker
  has applied it (:meth:`ServingControl.workers_behind`), so requests never check the catalog
  generation themselves (api/serving.py).
"""

from __future__ import annotations

import pandas as pd
from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    func,
    select,
)

metadata = MetaData()

catalog_changes_table = Table(
    "api_catalog_changes",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("item_id", String(255), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

reloads_table = Table(
    "serving_reloads",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    #: who asked (``admin/reload pid 123``, ``pipeline nightly-…``), for the log
    Column("requested_by", String(255), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

workers_table = Table(
    "serving_workers",
    metadata,
    #: ``host:pid:random``, unique per worker process
    Column("worker_id", String(255), primary_key=True),
    Column("catalog_seq", Integer, nullable=False),
    #: epoch seconds of the worker's last report
    Column("seen_at", Float, nullable=False),
)

_ITEM_COLUMNS = ["item_id", "title", "description", "categories", "attributes", "available"]
_IN_CHUNK = 500


class ServingControl:
    """The two generation logs on ``engine`` (tables created on construction)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        metadata.create_all(engine)

    # ---- catalog changes ---------------------------------------------------------------
    def append_catalog_changes(self, item_ids: list[str]) -> int:
        """Log changed item ids (call after the store write committed); returns the generation
        that includes them."""
        if not item_ids:
            return self.catalog_generation()
        with self.engine.begin() as conn:
            conn.execute(catalog_changes_table.insert(), [{"item_id": str(i)} for i in item_ids])
            return int(conn.execute(select(func.max(catalog_changes_table.c.seq))).scalar() or 0)

    def catalog_generation(self) -> int:
        # driver SQL: every worker's sync thread runs this several times a second
        with self.engine.connect() as conn:
            return int(conn.exec_driver_sql("SELECT max(seq) FROM api_catalog_changes").scalar() or 0)

    def changed_item_ids(self, since: int, upto: int) -> list[str]:
        """Distinct item ids changed in generations ``(since, upto]``, sorted."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(catalog_changes_table.c.item_id).where(
                    catalog_changes_table.c.seq > since, catalog_changes_table.c.seq <= upto
                )
            )
            return sorted({r[0] for r in rows})

    def items_by_ids(self, item_ids: list[str]) -> pd.DataFrame:
        """Catalog rows (item_id, title, description, categories, attributes, available)."""
        from feature_store.tables import items_table

        if not item_ids:
            return pd.DataFrame({c: [] for c in _ITEM_COLUMNS})
        rows = []
        with self.engine.connect() as conn:
            for lo in range(0, len(item_ids), _IN_CHUNK):
                rows += conn.execute(
                    select(*(items_table.c[c] for c in _ITEM_COLUMNS)).where(
                        items_table.c.item_id.in_(item_ids[lo : lo + _IN_CHUNK])
                    )
                ).all()
        frame = pd.DataFrame([tuple(r) for r in rows], columns=_ITEM_COLUMNS)
        frame["categories"] = [list(c or []) for c in frame["categories"]]
        frame["attributes"] = [dict(a or {}) for a in frame["attributes"]]
        frame["available"] = frame["available"].astype(bool)
        return frame

    # ---- reload generation -------------------------------------------------------------
    def bump_reload_generation(self, requested_by: str) -> int:
        """Ask every worker to reload its aliases; returns the new generation."""
        with self.engine.begin() as conn:
            result = conn.execute(reloads_table.insert().values(requested_by=str(requested_by)[:255]))
            return int(result.inserted_primary_key[0])

    def reload_generation(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.exec_driver_sql("SELECT max(seq) FROM serving_reloads").scalar() or 0)

    # ---- workers -----------------------------------------------------------------------
    def report_worker(self, worker_id: str, catalog_seq: int, seen_at: float) -> None:
        """Record that ``worker_id`` is alive and has applied catalog generation ``catalog_seq``."""
        values = {"catalog_seq": int(catalog_seq), "seen_at": float(seen_at)}
        with self.engine.begin() as conn:
            updated = conn.execute(
                workers_table.update().where(workers_table.c.worker_id == worker_id).values(**values)
            )
            if updated.rowcount == 0:
                conn.execute(workers_table.insert().values(worker_id=worker_id, **values))

    def remove_worker(self, worker_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(workers_table.delete().where(workers_table.c.worker_id == worker_id))

    def workers_behind(self, catalog_seq: int, seen_after: float, exclude: str = "") -> list[str]:
        """Workers seen after ``seen_after`` (epoch seconds) that have not applied ``catalog_seq``."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(workers_table.c.worker_id).where(
                    workers_table.c.catalog_seq < int(catalog_seq),
                    workers_table.c.seen_at > float(seen_after),
                    workers_table.c.worker_id != exclude,
                )
            )
            return sorted(r[0] for r in rows)
