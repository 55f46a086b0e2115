"""Tables the API owns, on the feature store's engine (kept apart from the store's own metadata).

- ``api_catalog_changes``: an append-only log of item ids changed through the API. Its max
  ``seq`` is the catalog *generation*: every worker compares it with the generation its loaded
  models have seen (one primary-key lookup per request) and re-reads only the changed items.

(API keys live in the feature store: ``feature_store.tables.api_keys_table``.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, func

if TYPE_CHECKING:
    from feature_store import FeatureStore

metadata = MetaData()

catalog_changes_table = Table(
    "api_catalog_changes",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("item_id", String(255), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)


def init_api_tables(store: FeatureStore) -> None:
    metadata.create_all(store.engine)
