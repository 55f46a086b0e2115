"""One backend per SQL dialect: :func:`backend_for` picks it from the engine."""

from __future__ import annotations

from sqlalchemy import Engine

from feature_store.backends.base import Backend, LockHeld
from feature_store.backends.postgresql import PostgreSQLBackend
from feature_store.backends.sqlite import SQLiteBackend

_BACKENDS: dict[str, type[Backend]] = {"sqlite": SQLiteBackend, "postgresql": PostgreSQLBackend}


def backend_for(engine: Engine) -> Backend:
    """The backend for the engine's dialect; ValueError for a dialect the store doesn't support."""
    name = engine.dialect.name
    if name not in _BACKENDS:
        raise ValueError(f"unsupported database dialect {name!r} (sqlite or postgresql)")
    return _BACKENDS[name](engine)


__all__ = ["Backend", "LockHeld", "PostgreSQLBackend", "SQLiteBackend", "backend_for"]
