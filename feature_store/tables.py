"""Online store tables: items, users, events, api_keys (SQLModel on SQLAlchemy 2, SQLite and PostgreSQL).

External ids (``item_id``, ``user_id``, ``event_id``) are strings; rows are joined through integer
surrogate keys so the 5M-row events table stays narrow and fast to scan. ``events.ts`` is epoch
milliseconds UTC as BIGINT: integer comparisons and reads are much cheaper than datetimes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Table,
    Text,
    false,
    func,
    true,
)
from sqlmodel import Field, SQLModel

# JSON text on every dialect: PostgreSQL's JSONB stores numbers as ``numeric`` and gives back
# 1e300 as a 301-digit integer and -0.0 as 0; JSON keeps the text that was written, so every
# store returns what was stored (no query reads inside these columns).
JSONType = JSON()


def _created() -> Column:
    return Column(DateTime(timezone=True), nullable=False, server_default=func.now())


class Item(SQLModel, table=True):
    __tablename__ = "items"

    id: int | None = Field(default=None, primary_key=True)
    item_id: str = Field(sa_column=Column(String(255), unique=True, nullable=False))
    title: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    description: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    categories: list[str] = Field(default_factory=list, sa_column=Column(JSONType, nullable=False))
    attributes: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONType, nullable=False))
    available: bool = Field(default=True, sa_column=Column(Boolean, nullable=False, server_default=true()))
    created_at: datetime | None = Field(default=None, sa_column=_created())
    updated_at: datetime | None = Field(default=None, sa_column=_created())


class User(SQLModel, table=True):
    __tablename__ = "users"

    id: int | None = Field(default=None, primary_key=True)
    user_id: str = Field(sa_column=Column(String(255), unique=True, nullable=False))
    attributes: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONType, nullable=False))
    created_at: datetime | None = Field(default=None, sa_column=_created())
    updated_at: datetime | None = Field(default=None, sa_column=_created())


class Event(SQLModel, table=True):
    __tablename__ = "events"

    id: int | None = Field(default=None, primary_key=True)
    # Idempotency key: re-sending or re-ingesting the same event is a no-op.
    event_id: str = Field(sa_column=Column(String(255), unique=True, nullable=False))
    user_pk: int = Field(sa_column=Column(ForeignKey("users.id"), nullable=False, index=True))
    item_pk: int = Field(sa_column=Column(ForeignKey("items.id"), nullable=False, index=True))
    event_type: str = Field(sa_column=Column(String(64), nullable=False))
    value: float = Field(default=1.0, sa_column=Column(Float, nullable=False))
    ts: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    # A/B variant or model version the event is attributed to (filled by the serving side).
    variant: str | None = Field(default=None, sa_column=Column(String(255), nullable=True))
    created_at: datetime | None = Field(default=None, sa_column=_created())


class ApiKey(SQLModel, table=True):
    """An API key of the HTTP API: only its sha256 is stored (the key is shown once, at creation)."""

    __tablename__ = "api_keys"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(sa_column=Column(String(255), nullable=False))
    key_sha256: str = Field(sa_column=Column(String(64), unique=True, nullable=False))
    revoked: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, server_default=false()))
    created_at: datetime | None = Field(default=None, sa_column=_created())


#: The store's identity: one row, written once when the schema is created. The offline log is
#: bound to this id (not to the database URL), so a recreated database is a different store
#: and a copied data folder is the same one.
store_identity_table = Table(
    "store_identity",
    SQLModel.metadata,
    Column("singleton", Integer, primary_key=True, autoincrement=False),
    Column("store_id", String(36), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

items_table = Item.__table__
users_table = User.__table__
events_table = Event.__table__
api_keys_table = ApiKey.__table__
metadata = SQLModel.metadata
