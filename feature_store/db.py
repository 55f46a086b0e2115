"""Engine creation and schema setup for the feature store."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

from feature_store.tables import metadata

logger = logging.getLogger(__name__)


def _json_default(value: Any) -> Any:
    # numpy scalars/arrays show up in attributes built with pandas; json can't encode them.
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default, ensure_ascii=False)


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL, synchronous=NORMAL, a busy timeout and foreign keys."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, json_serializer=_dumps)

    db = parsed.database
    if db and db != ":memory:" and not db.startswith("file:"):
        Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30}, json_serializer=_dumps)

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn, _record):  # noqa: ANN001
        cur = dbapi_conn.cursor()
        # WAL lets readers (API, snapshot) run while an ingest writes.
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        # 64 MiB page cache: bulk inserts into the event_id index otherwise thrash the default 2 MiB.
        cur.execute("PRAGMA cache_size=-65536")
        cur.close()

    return engine


def init_db(engine: Engine) -> None:
    """Create the tables that do not exist yet."""
    metadata.create_all(engine)
    logger.debug("feature store schema ready on %s", engine.url.render_as_string(hide_password=True))
