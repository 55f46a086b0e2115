"""SQL feature store: items, users and events tables; bulk ingest; point-in-time snapshots."""

from feature_store.control import ServingControl
from feature_store.db import init_db, make_engine
from feature_store.store import FeatureStore, IngestResult, NotFoundError
from feature_store.tables import Event, Item, User, events_table, items_table, users_table

__all__ = [
    "Event",
    "FeatureStore",
    "IngestResult",
    "Item",
    "NotFoundError",
    "ServingControl",
    "User",
    "events_table",
    "init_db",
    "items_table",
    "make_engine",
    "users_table",
]
