"""Tables the API owns, on the feature store's engine (kept apart from the store's own metadata).

- ``api_keys``: sha256 of each API key (the key itself is never stored), revocable.

The catalog change log and the reload generation shared by workers live in
``feature_store/control.py``.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    false,
    func,
)

metadata = MetaData()

api_keys_table = Table(
    "api_keys",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(255), nullable=False),
    Column("key_sha256", String(64), nullable=False, unique=True),
    Column("revoked", Boolean, nullable=False, server_default=false()),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

def init_api_tables(engine: Engine) -> None:
    metadata.create_all(engine)
