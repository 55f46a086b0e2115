"""Online feature store (SQL: SQLite or PostgreSQL): catalog, users, idempotent events, recent
history, API keys, locks — behind one facade, :class:`FeatureStore`. The only package with SQL."""

from feature_store.activity import VariantActivity
from feature_store.admin import key_hash
from feature_store.backends import LockHeld
from feature_store.catalog import NotFoundError
from feature_store.control import ServingControl
from feature_store.db import init_db, make_engine
from feature_store.ingest import IngestResult
from feature_store.store import FeatureStore
from feature_store.tables import (
    ApiKey,
    Event,
    Item,
    User,
    api_keys_table,
    events_table,
    items_table,
    users_table,
)
from feature_store.transactions import RetryPolicy, WriteConflict

__all__ = [
    "ApiKey",
    "Event",
    "FeatureStore",
    "IngestResult",
    "Item",
    "LockHeld",
    "NotFoundError",
    "RetryPolicy",
    "ServingControl",
    "User",
    "VariantActivity",
    "WriteConflict",
    "api_keys_table",
    "events_table",
    "init_db",
    "items_table",
    "key_hash",
    "make_engine",
    "users_table",
]
