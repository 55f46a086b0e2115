"""Engine creation and schema setup for the feature store."""

from __future__ import annotations

import json
import logging
import re
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine, create_engine, event, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, InterfaceError, OperationalError

from feature_store import impressions as _impressions  # noqa: F401  (registers its tables)
from feature_store.tables import metadata, store_identity_table

logger = logging.getLogger(__name__)

#: errors that mean "the database URL is wrong or the database is unreachable", not a bug
CONNECTION_ERRORS: tuple[type[Exception], ...] = (ArgumentError, OperationalError, InterfaceError)

#: indexes earlier schemas created that no read uses (by table)
RETIRED_INDEXES: dict[str, tuple[str, ...]] = {"impressions": ("ix_impressions_user_id", "ix_impressions_variant")}


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


#: one encoder for every JSON column: ``json.dumps`` with options builds a new one per call
_ENCODER = json.JSONEncoder(default=_json_default, ensure_ascii=False)


def _dumps(value: Any) -> str:
    return _ENCODER.encode(value)


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


def read_store_id(engine: Engine) -> str:
    """The id the store wrote once at creation (:data:`~feature_store.tables.store_identity_table`)."""
    with engine.connect() as conn:
        return str(conn.execute(select(store_identity_table.c.store_id)).scalar_one())


def _jsonb_to_json(engine: Engine) -> None:
    """Stores created when the JSON columns were JSONB keep exact numbers from now on."""
    with engine.begin() as conn:
        rows = conn.execute(
            text(
                "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema() "
                "AND data_type = 'jsonb' AND table_name IN ('items', 'users')"
            )
        ).all()
        for table, column in rows:
            conn.execute(text(f'ALTER TABLE "{table}" ALTER COLUMN "{column}" TYPE json USING "{column}"::json'))


def replace_prefix(url: str, columns: dict[str, tuple[str, ...]], old: str, new: str) -> int:
    """In the database at ``url``, rewrite every value of the given ``{table: columns}`` that
    starts with ``old`` to start with ``new`` instead, in one transaction (tables that do not
    exist are skipped); returns the rows changed. Used to rebind MLflow's SQLite tracking store
    to a copied data folder (pipelines/tracking.py)."""
    from sqlalchemy import inspect

    engine = create_engine(url)
    changed = 0
    try:
        tables = set(inspect(engine).get_table_names())
        with engine.begin() as conn:
            for table, names in columns.items():
                if table not in tables:
                    continue
                for column in names:
                    changed += conn.execute(
                        text(
                            f'UPDATE "{table}" SET "{column}" = :new || substr("{column}", :cut) '
                            f'WHERE substr("{column}", 1, :n) = :old'
                        ),
                        {"new": new, "old": old, "cut": len(old) + 1, "n": len(old)},
                    ).rowcount
    finally:
        engine.dispose()
    return changed


def _drop_retired_indexes(engine: Engine) -> None:
    """Stores created while these indexes were in the schema stop paying them on every write."""
    from sqlalchemy import inspect

    for table, names in RETIRED_INDEXES.items():
        present = {ix["name"] for ix in inspect(engine).get_indexes(table)} & set(names)
        if present:
            with engine.begin() as conn:
                for name in sorted(present):
                    conn.execute(text(f'DROP INDEX IF EXISTS "{name}"'))
            logger.info("dropped unused indexes %s of %s", ", ".join(sorted(present)), table)


def init_db(engine: Engine) -> None:
    """Create the tables that do not exist yet and give a new store its identity (once)."""
    metadata.create_all(engine)
    if engine.dialect.name == "postgresql":
        _jsonb_to_json(engine)
    _drop_retired_indexes(engine)
    insert = sqlite_insert if engine.dialect.name == "sqlite" else pg_insert
    with engine.begin() as conn:
        conn.execute(
            insert(store_identity_table)
            .values(singleton=1, store_id=str(uuid.uuid4()))
            .on_conflict_do_nothing(index_elements=["singleton"])
        )
    logger.debug("feature store schema ready on %s", engine.url.render_as_string(hide_password=True))
