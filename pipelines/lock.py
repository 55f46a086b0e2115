"""One run of a pipeline at a time.

PostgreSQL feature store: a session-level advisory lock (``pg_try_advisory_lock``) on a key
derived from the pipeline name, held by one dedicated connection for the whole run — it is
released by the server if the process dies. SQLite feature store: a file lock (``filelock``)
on ``$RECSYS_DATA_DIR/pipelines/<name>.lock``, likewise released by the OS on process death.
A second run does not wait: it raises :class:`LockHeld` (the CLI exits with code 3).
"""

from __future__ import annotations

import hashlib
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

logger = logging.getLogger(__name__)


class LockHeld(RuntimeError):
    """Another run of the same pipeline holds the lock."""


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for ``pg_try_advisory_lock``."""
    return int.from_bytes(hashlib.sha256(f"recsys-pipeline:{name}".encode()).digest()[:8], "big", signed=True)


@contextmanager
def pipeline_lock(name: str, database_url: str, lock_dir: Path) -> Iterator[str]:
    """Hold the pipeline's lock for the block; yields a description of the lock."""
    if database_url.startswith("postgresql"):
        from sqlalchemy import text

        from feature_store.db import make_engine

        engine = make_engine(database_url)
        key = advisory_key(name)
        conn = engine.connect()
        try:
            got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar_one()
            conn.commit()
            if not got:
                raise LockHeld(f"pipeline {name!r} is already running (PostgreSQL advisory lock {key} is held)")
            logger.info("acquired PostgreSQL advisory lock %d for pipeline %s", key, name)
            try:
                yield f"pg_advisory_lock({key})"
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
        finally:
            conn.close()
            engine.dispose()
    else:
        from filelock import FileLock, Timeout

        lock_dir.mkdir(parents=True, exist_ok=True)
        path = lock_dir / f"{name}.lock"
        lock = FileLock(str(path), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise LockHeld(f"pipeline {name!r} is already running (file lock {path} is held)") from None
        logger.info("acquired file lock %s", path)
        try:
            yield str(path)
        finally:
            lock.release()
