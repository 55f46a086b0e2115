"""Engine creation and schema setup for the feature store."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, InterfaceError, OperationalError

from feature_store import impressions as _impressions  # noqa: F401  (registers its tables)
from feature_store.tables import metadata

logger = logging.getLogger(__name__)

#: errors that mean "the database URL is wrong or the database is unreachable", not a bug
CONNECTION_ERRORS: tuple[type[Exception], ...] = (ArgumentError, OperationalError, InterfaceError)


class DatabaseUrlError(ValueError):
    """A database URL that cannot be parsed; the message names it with the password hidden."""


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (also when SQLAlchemy cannot parse it)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):  # unparseable: hide whatever sits between "user:" and "@"
        return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url)


def describe_database_error(exc: Exception, url: str | None) -> str:
    """``cannot use the database URL: <the driver's first line>`` (password hidden)."""
    source = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(source).splitlines() if line.strip()]
    reason = lines[0] if lines else type(source).__name__
    if url:
        reason = reason.replace(url, mask_url(url))
    where = f" {mask_url(url)}" if url else ""
    return f"cannot use the database{where}: {reason}"


def check_database_url(url: str) -> None:
    """Raise :class:`DatabaseUrlError` when ``url`` is not a database URL SQLAlchemy can parse."""
    try:
        make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise DatabaseUrlError(describe_database_error(exc, url)) from exc


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
    def _sqlite_pragmas(dbapi_conn, _record):
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
