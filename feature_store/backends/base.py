"""What differs between the SQL dialects the online store runs on, behind one interface.

Everything else in ``feature_store`` is dialect-free SQLAlchemy Core and calls these methods
where a dialect needs its own SQL or its own driver path: the upsert statement, the bulk event
insert and read, the per-request history query, cross-process locks, and which errors mean
"the transaction lost a race, run it again".
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import Connection, Engine, Table, func, select
from sqlalchemy.exc import DBAPIError

#: Columns of the events table written by the bulk insert, in this order.
EVENT_INSERT_COLUMNS = ["event_id", "user_pk", "item_pk", "event_type", "value", "ts", "variant"]
#: Rows per statement when upserting items/users.
UPSERT_BATCH_ROWS = 10_000


class LockHeld(RuntimeError):
    """Another holder (another process, or another run in this one) has the named lock."""


class Backend(abc.ABC):
    """The dialect-specific half of the online store; one subclass per SQL dialect."""

    name: str

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # ------------------------------------------------------------------ statements

    @abc.abstractmethod
    def insert(self, table: Table) -> Any:
        """The dialect's ``INSERT`` construct (the one with ``on_conflict_do_*``)."""

    def upsert(self, conn: Connection, table: Table, key: str, rows: list[dict], overwrite: bool) -> int:
        """INSERT ... ON CONFLICT (key) DO UPDATE (or DO NOTHING); returns rows inserted or updated."""
        if not rows:
            return 0
        ins = self.insert(table)
        if overwrite:
            cols = [c for c in rows[0] if c != key]
            stmt = ins.on_conflict_do_update(
                index_elements=[key],
                set_={**{c: ins.excluded[c] for c in cols}, "updated_at": func.now()},
            )
            for lo in range(0, len(rows), UPSERT_BATCH_ROWS):
                conn.execute(stmt, rows[lo : lo + UPSERT_BATCH_ROWS])
            return len(rows)
        count = select(func.count()).select_from(table)
        before = conn.execute(count).scalar_one()
        stmt = ins.on_conflict_do_nothing(index_elements=[key])
        for lo in range(0, len(rows), UPSERT_BATCH_ROWS):
            conn.execute(stmt, rows[lo : lo + UPSERT_BATCH_ROWS])
        return int(conn.execute(count).scalar_one() - before)

    # ------------------------------------------------------------------ events

    @abc.abstractmethod
    def insert_events(self, conn: Connection, rows: pd.DataFrame, *, chunk_size: int, progress: bool) -> int:
        """Insert event rows (columns :data:`EVENT_INSERT_COLUMNS`), skipping stored event ids;
        returns how many were inserted."""

    @abc.abstractmethod
    def read_events(self, conn: Connection, cutoff_ms: int) -> dict[str, Any]:
        """Every event with ``ts <= cutoff_ms`` in (ts, id) order, as columns: ``event_id`` and
        ``event_type`` str Series; ``user_pk``, ``item_pk``, ``ts`` int64 and ``value`` float64 arrays."""

    @abc.abstractmethod
    def user_activity_rows(self, conn: Connection, user_id: str) -> list[tuple[str, Any]]:
        """(item_id, stored-at) of the user's events, oldest first: the per-request history read."""

    # ------------------------------------------------------------------ locks and retries

    @abc.abstractmethod
    def exclusive_lock(self, name: str, lock_dir: Path) -> AbstractContextManager[str]:
        """Hold the lock ``name`` for a block without waiting (:class:`LockHeld` when taken);
        released when the block ends or the process dies. Yields a description of the lock."""

    def is_retryable(self, exc: DBAPIError) -> bool:
        """Whether ``exc`` rolled back a transaction that can simply run again (it lost a race)."""
        return False


@contextmanager
def file_lock(name: str, lock_dir: Path) -> Iterator[str]:
    """:meth:`Backend.exclusive_lock` as a file lock on ``lock_dir/<name>.lock``."""
    from filelock import FileLock, Timeout

    lock_dir.mkdir(parents=True, exist_ok=True)
    path = lock_dir / f"{name}.lock"
    lock = FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise LockHeld(f"file lock {path} is held") from None
    try:
        yield str(path)
    finally:
        lock.release()
