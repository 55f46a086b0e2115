"""One run of a pipeline at a time.

The lock is the feature store's :meth:`~feature_store.FeatureStore.exclusive_lock`: on a
PostgreSQL store a session-level advisory lock held by one dedicated connection for the whole
run, on SQLite a file lock on ``$RECSYS_DATA_DIR/pipelines/<name>.lock`` — both released if the
process dies. A second run does not wait: it raises :class:`LockHeld` (the CLI exits with code 3).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from feature_store import FeatureStore, LockHeld

__all__ = ["LockHeld", "pipeline_lock"]

logger = logging.getLogger(__name__)


@contextmanager
def pipeline_lock(name: str, database_url: str, lock_dir: Path) -> Iterator[str]:
    """Hold the pipeline's lock for the block; yields a description of the lock."""
    with ExitStack() as stack:
        store = FeatureStore(database_url, create=False)
        stack.callback(store.dispose)
        try:
            held = stack.enter_context(store.exclusive_lock(name, lock_dir))
        except LockHeld as exc:
            raise LockHeld(f"pipeline {name!r} is already running ({exc})") from None
        logger.info("acquired %s for pipeline %s", held, name)
        yield held
