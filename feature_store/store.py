"""FeatureStore: the online store's one public facade (ingest, snapshots, catalog, activity, admin).

The SQL lives in modules by job — :mod:`~feature_store.ingest`, :mod:`~feature_store.catalog`,
:mod:`~feature_store.activity`, :mod:`~feature_store.admin` — and what differs between SQLite
and PostgreSQL lives in one backend per dialect (:mod:`feature_store.backends`). This class
opens the connections and transactions: every public write is one transaction (a failure
leaves the database exactly as it was), run again by the store's one retry policy when it
lost a race with a concurrent writer (:mod:`feature_store.transactions`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
from sqlalchemy import Connection, Engine

from feature_store import activity, admin, catalog, impressions, ingest
from feature_store.activity import ActiveUser, StoreCounts, StoredEvent, TimelineEvent, VariantActivity
from feature_store.backends import backend_for
from feature_store.catalog import NotFoundError
from feature_store.control import ServingControl
from feature_store.db import init_db, make_engine, read_store_id
from feature_store.export import export_events, export_impressions
from feature_store.impressions import ExposureCounts, Impression, LoggedImpression
from feature_store.ingest import EventBatch, IngestResult
from feature_store.offline import (
    IMPRESSIONS_LOG,
    ExportResult,
    OfflineStore,
    OfflineStoreError,
    cutoff_millis,
    default_offline_uri,
    impressions_log_uri,
)
from feature_store.transactions import RetryPolicy, run_write
from recsys.datasets.base import (
    EVENT_COLUMNS,
    ITEM_COLUMNS,
    USER_COLUMNS,
    Dataset,
    DatasetError,
)

logger = logging.getLogger(__name__)

CHUNK_SIZE = 50_000
T = TypeVar("T")


class FeatureStore:
    """The online feature store. Same public behaviour on SQLite and PostgreSQL.

    Parameters
    ----------
    engine_or_url : Engine or str
        An engine from :func:`feature_store.db.make_engine` or a database URL.
    create : bool
        Create missing tables on construction.
    chunk_size : int
        Events per insert batch during ingest.
    retry : RetryPolicy
        How writes that lost a race with a concurrent writer are run again.
    offline_uri : str, optional
        The offline Parquet event log (see :mod:`feature_store.offline`); default from
        :func:`feature_store.offline.default_offline_uri`. ``""`` means none: snapshots then
        read SQL.
    """

    def __init__(
        self,
        engine_or_url: Engine | str,
        *,
        create: bool = True,
        chunk_size: int = CHUNK_SIZE,
        retry: RetryPolicy | None = None,
        offline_uri: str | None = None,
    ):
        self.engine = make_engine(engine_or_url) if isinstance(engine_or_url, str) else engine_or_url
        self.backend = backend_for(self.engine)
        self.dialect = self.backend.name
        self.chunk_size = int(chunk_size)
        self.retry = retry or RetryPolicy()
        if create:
            init_db(self.engine)
        if offline_uri is None:
            offline_uri = default_offline_uri(self.engine.url.render_as_string(hide_password=False))
        self.offline = OfflineStore(offline_uri) if offline_uri else None
        #: the impressions log beside the event log (same layout and commit protocol)
        self.offline_impressions = (
            OfflineStore(impressions_log_uri(offline_uri), IMPRESSIONS_LOG) if offline_uri else None
        )

    def __repr__(self) -> str:
        return f"FeatureStore({self.engine.url.render_as_string(hide_password=True)!r})"

    def dispose(self) -> None:
        self.engine.dispose()

    def _write(self, what: str, work: Callable[[Connection], T]) -> T:
        """``work(conn)`` in one write transaction under the store's retry policy."""
        return run_write(self.engine, self.backend, self.retry, what, work)

    @functools.cached_property
    def control(self) -> ServingControl:
        """Serving control state shared by API workers (feature_store/control.py)."""
        return ServingControl(self.engine)

    # ------------------------------------------------------------------ ingest

    def ingest(self, dataset: Dataset, *, progress: bool = False) -> IngestResult:
        """Upsert the dataset's items and users and insert its events, in one transaction.

        Events whose ``event_id`` is already stored are skipped (counted as duplicates), so
        re-ingesting the same dataset writes nothing new.
        """
        if len(dataset.events) == 0 and len(dataset.items) == 0:
            raise DatasetError(f"dataset {dataset.name!r} is empty: no events and no items")
        start = time.perf_counter()

        def work(conn: Connection) -> IngestResult:
            n_items = catalog.upsert_items(conn, self.backend, dataset.items, placeholders_overwrite=False)
            n_users = catalog.upsert_users(conn, self.backend, dataset.users, placeholders_overwrite=False)
            inserted = ingest.write_events(
                conn,
                self.backend,
                EventBatch(dataset.events),
                create_users=False,
                chunk_size=self.chunk_size,
                progress=progress,
            )
            return IngestResult(
                users_upserted=n_users,
                items_upserted=n_items,
                events_inserted=inserted,
                events_duplicate=len(dataset.events) - inserted,
            )

        result = self._write(f"ingest {dataset.name}", work)
        if self.offline is not None and result.events_inserted:
            # The offline half right after the commit. A failure here only delays it (the next
            # export picks the committed rows up by the watermark), so it is not the ingest's.
            try:
                self.export_offline(progress=progress)
            except (OfflineStoreError, OSError) as exc:
                logger.warning("events committed to SQL but not yet exported (run `recsys store export`): %s", exc)
        logger.info("ingested %s in %.1fs: %s", dataset.name, time.perf_counter() - start, result)
        return result

    def add_events(self, records: Sequence[dict[str, Any]], *, create_items: bool = False) -> tuple[int, int]:
        """Insert events given as dicts; returns ``(inserted, duplicates)``.

        Keys: user_id, item_id (required), event_type, value, timestamp (datetime, ISO string or
        epoch seconds; default now), event_id (default: derived from the other fields), variant,
        request_id (the impression it came from: recorded with its position in that impression,
        in the same transaction, once per event_id).
        Unknown users are created; an unknown item raises DatasetError and writes nothing, unless
        ``create_items``: then it is created in the same transaction (no title or text, available).
        """
        if not records:
            return 0, 0
        batch = ingest.events_from_records(records)
        attributed = ingest.attributed_events(batch)

        def work(conn: Connection) -> int:
            inserted = ingest.write_events(
                conn, self.backend, batch, create_users=True, chunk_size=self.chunk_size, create_items=create_items
            )
            impressions.insert_attributed(conn, self.backend, attributed)
            return inserted

        inserted = self._write("add_events", work)
        return inserted, len(batch.events) - inserted

    # ------------------------------------------------------------------ snapshot

    @functools.cached_property
    def store_id(self) -> str:
        """The id this store wrote once at creation; its offline log is bound to it."""
        return read_store_id(self.engine)

    def export_offline(self, *, progress: bool = False, rebuild: bool = False, **kwargs: Any) -> ExportResult:
        """Append committed events past the offline log's watermark, then committed impressions
        past the impressions log's (see feature_store.export).

        ``rebuild``: empty the logs first and export every event and impression of this store
        again (the way out when the log belongs to another store,
        :class:`~feature_store.offline.StoreMismatch`).
        """
        if self.offline is None or self.offline_impressions is None:
            raise ValueError("this feature store has no offline store (offline_uri)")
        source = self.engine.url.render_as_string(hide_password=True)
        if rebuild:
            self.offline.rebuild(self.store_id, source)
            self.offline_impressions.rebuild(self.store_id, source)
        result = export_events(self.engine, self.offline, store_id=self.store_id, progress=progress, **kwargs)
        shown = export_impressions(self.engine, self.offline_impressions, store_id=self.store_id)
        return dataclasses.replace(result, impressions=shown.events)

    def snapshot(self, as_of: datetime | None = None, *, source: str = "auto") -> Dataset:
        """All events with ``timestamp <= as_of`` (default now) plus the full item and user tables.

        ``source``: ``"offline"`` exports what is new and reads the Parquet log (ids come back
        as pandas Categorical); ``"sql"`` reads the events table; ``"auto"`` is offline when the
        store has an offline log.
        """
        if source not in ("auto", "sql", "offline"):
            raise ValueError(f"source must be auto, sql or offline, got {source!r}")
        if source == "offline" or (source == "auto" and self.offline is not None):
            return self._snapshot_offline(as_of)
        as_of_ts, cutoff_ms = cutoff_millis(as_of)
        start = time.perf_counter()
        with self.engine.connect() as conn:
            # Events first: items and users are never hard-deleted, so every key read here
            # resolves against the tables read afterwards even while writers are active.
            ev = self._read_events(conn, cutoff_ms)
            t_events = time.perf_counter() - start
            users = catalog.read_users(conn)
            items = catalog.read_items(conn)
        user_pos = _pk_positions(users["id"].to_numpy())
        item_pos = _pk_positions(items["id"].to_numpy())
        events = pd.DataFrame(
            {
                "event_id": ev["event_id"],
                "user_id": _take_str(users["user_id"], user_pos[ev["user_pk"]]),
                "item_id": _take_str(items["item_id"], item_pos[ev["item_pk"]]),
                "event_type": ev["event_type"],
                "value": ev["value"],
                "timestamp": pd.to_datetime(ev["ts"], unit="ms", utc=True).astype("datetime64[ns, UTC]"),
            }
        )
        name = f"snapshot-{as_of_ts.isoformat()}"
        dataset = Dataset(
            events=events, items=items[ITEM_COLUMNS], users=users[USER_COLUMNS], name=name, validate=False
        )
        logger.info(
            "snapshot as of %s: %d events, %d items, %d users in %.2fs (event read %.2fs)",
            as_of_ts,
            len(events),
            len(items),
            len(users),
            time.perf_counter() - start,
            t_events,
        )
        return dataset

    def _snapshot_offline(self, as_of: datetime | None) -> Dataset:
        as_of_ts, cutoff_ms = cutoff_millis(as_of)
        start = time.perf_counter()
        self.export_offline()
        t_export = time.perf_counter() - start
        # The catalog after the export: every key in the log was committed before it was
        # exported, and items and users are never hard-deleted.
        with self.engine.connect() as conn:
            users, items = catalog.read_users(conn), catalog.read_items(conn)
        t_catalog = time.perf_counter() - start - t_export
        events = self.offline.read_events(
            cutoff_ms, users=users.set_index("id")["user_id"], items=items.set_index("id")["item_id"]
        )
        t_events = time.perf_counter() - start - t_export - t_catalog
        # Stored data was validated on its way in: checking millions of rows again would only
        # make every training fail on a row that predates a rule.
        dataset = Dataset(
            events=events,
            items=items[ITEM_COLUMNS],
            users=users[USER_COLUMNS],
            name=f"snapshot-{as_of_ts.isoformat()}",
            validate=False,
        )
        logger.info(
            "offline snapshot as of %s: %d events, %d items, %d users in %.2fs (export %.2fs, catalog %.2fs, "
            "event read %.2fs)",
            as_of_ts,
            len(events),
            len(items),
            len(users),
            time.perf_counter() - start,
            t_export,
            t_catalog,
            t_events,
        )
        return dataset

    def _read_events(self, conn: Connection, cutoff_ms: int) -> dict[str, Any]:
        """Every event up to ``cutoff_ms`` as columns (see :meth:`Backend.read_events`)."""
        return self.backend.read_events(conn, cutoff_ms)

    # ------------------------------------------------------------------ catalog

    def get_item(self, item_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            return catalog.get_item(conn, item_id)

    def get_user(self, user_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            return catalog.get_user(conn, user_id)

    def upsert_items(self, records: Sequence[dict[str, Any]]) -> int:
        """Insert or update items; fields a record leaves out get their defaults. Returns rows written."""
        frame = catalog.records_frame(records, "item_id", "item")
        if frame is None:
            return 0
        return self._write(
            "upsert_items", lambda conn: catalog.upsert_items(conn, self.backend, frame, placeholders_overwrite=True)
        )

    def upsert_users(self, records: Sequence[dict[str, Any]]) -> int:
        frame = catalog.records_frame(records, "user_id", "user")
        if frame is None:
            return 0
        return self._write(
            "upsert_users", lambda conn: catalog.upsert_users(conn, self.backend, frame, placeholders_overwrite=True)
        )

    def set_item_available(self, item_id: str, available: bool) -> None:
        self._write("set_item_available", lambda conn: catalog.set_item_available(conn, item_id, available))

    def delete_item(self, item_id: str) -> None:
        """Soft delete: the row stays (past events still point at it) but is no longer available."""
        self.set_item_available(item_id, False)

    def items_frame(self) -> pd.DataFrame:
        with self.engine.connect() as conn:
            return catalog.read_items(conn)[ITEM_COLUMNS]

    def users_frame(self) -> pd.DataFrame:
        with self.engine.connect() as conn:
            return catalog.read_users(conn)[USER_COLUMNS]

    # ------------------------------------------------------------------ activity

    def user_history(self, user_id: str) -> list[str]:
        """Item ids the user interacted with, oldest first (repeats kept)."""
        return self.user_activity(user_id)[0]

    def user_activity(self, user_id: str) -> tuple[list[str], datetime | None]:
        """The user's item ids (oldest first, repeats kept) and when their newest event was
        stored (UTC). Plain driver SQL: this runs on every recommendation request."""
        with self.engine.connect() as conn:
            return activity.user_activity(conn, self.backend, user_id)

    def events_since(self, after_seq: int, limit: int = 10_000, also_seqs: Sequence[int] = ()) -> list[StoredEvent]:
        """The event feed: events with ``events.id > after_seq`` (at most ``limit``) plus any of
        ``also_seqs``, by id (serving follows it, api/history.py)."""
        with self.engine.connect() as conn:
            return activity.events_since(conn, after_seq, limit, also_seqs)

    def last_event_seq(self) -> int:
        """The highest ``events.id`` stored (0 when there is none)."""
        with self.engine.connect() as conn:
            return activity.last_event_seq(conn)

    def user_events(self, user_id: str) -> list[StoredEvent]:
        """Every event of one user with its feed position, oldest first."""
        with self.engine.connect() as conn:
            return activity.user_events(conn, user_id)

    def events_of_users_stored_since(self, since: datetime) -> list[StoredEvent]:
        """Every event of the users who have an event stored at or after ``since`` (to the
        second), grouped by user, oldest first: the users a model trained at ``since`` has
        not seen all of (``recsys recommend --all-users`` folds them in as the API does)."""
        with self.engine.connect() as conn:
            return activity.events_of_users_stored_since(conn, since)

    def recent_users_events(self, n_users: int, users_per_read: int = 2_000) -> Iterator[list[StoredEvent]]:
        """Every event of the ``n_users`` most recently active users, most recent users first,
        read ``users_per_read`` users at a time (one list each, grouped by user, oldest first)."""
        with self.engine.connect() as conn:
            pks = activity.recent_user_pks(conn, n_users)
            for lo in range(0, len(pks), users_per_read):
                yield activity.events_of_user_pks(conn, pks[lo : lo + users_per_read])

    def item_popularity(self, limit: int | None = None) -> pd.Series:
        """Event count per item_id, most popular first (ties by item_id)."""
        with self.engine.connect() as conn:
            return activity.item_popularity(conn, limit)

    def count_events(self) -> int:
        with self.engine.connect() as conn:
            return activity.count_events(conn)

    def variant_activity(self, event_types: Sequence[str], since: datetime | None = None) -> list[VariantActivity]:
        """Per A/B variant (sorted): exposed users, events, and users with each of ``event_types``.

        Only events that carry a variant count; ``since`` (naive = UTC) keeps events at or after it.
        """
        with self.engine.connect() as conn:
            return activity.variant_activity(conn, event_types, since)

    # ------------------------------------------------------------------ impressions

    def add_impressions(self, records: Sequence[Impression]) -> int:
        """Store a batch of impressions in one transaction; returns how many."""
        return self._write("add_impressions", lambda conn: impressions.insert_impressions(conn, records))

    def impressions(self, since: datetime | None = None, surface: str | None = None) -> list[LoggedImpression]:
        """Impressions (oldest first) with the positions of the events attributed to them."""
        with self.engine.connect() as conn:
            return impressions.read_impressions(conn, None if since is None else cutoff_millis(since)[1], surface)

    def exposure_counts(self, event_types: Sequence[str], since: datetime | None = None) -> list[ExposureCounts]:
        """Per variant (sorted): users with an impression, impressions, and those with each outcome."""
        with self.engine.connect() as conn:
            return impressions.exposure_counts(conn, event_types, None if since is None else cutoff_millis(since)[1])

    # ------------------------------------------------------------------ dashboard reads (api/ui)

    def counts(self) -> StoreCounts:
        """How many items (and how many of them available), users and events are stored."""
        with self.engine.connect() as conn:
            return activity.store_counts(conn)

    def events_per_day(self, item_id: str | None = None) -> pd.Series:
        """Events per UTC day (a Timestamp index, oldest first); of one item when given."""
        with self.engine.connect() as conn:
            return activity.events_per_day(conn, item_id)

    def user_timeline(self, user_id: str, limit: int = 50, offset: int = 0) -> tuple[list[TimelineEvent], int]:
        """The user's events newest first, ``offset`` skipped and at most ``limit``, with the
        items' titles and categories, and the user's event count."""
        with self.engine.connect() as conn:
            return activity.user_timeline(conn, user_id, limit, offset)

    def items_by_ids(self, item_ids: Sequence[str]) -> pd.DataFrame:
        """Catalog rows of these items (item_id, title, description, categories, attributes,
        available), in no particular order; unknown ids are left out."""
        return self.control.items_by_ids(list(item_ids))

    def active_users(self, limit: int = 10) -> list[ActiveUser]:
        """The users with the most events."""
        with self.engine.connect() as conn:
            return activity.active_users(conn, limit)

    # ------------------------------------------------------------------ admin: API keys, locks

    def create_api_key(self, name: str) -> str:
        """Store a new API key under ``name`` (sha256 only); returns the key, which is never stored."""
        key = admin.new_api_key()
        self._write("create_api_key", lambda conn: admin.insert_api_key(conn, name, key))
        return key

    def revoke_api_keys(self, name: str) -> int:
        """Revoke every active key stored under ``name``; returns how many."""
        return self._write("revoke_api_keys", lambda conn: admin.revoke_api_keys(conn, name))

    def has_api_keys(self) -> bool:
        """Whether any stored key is active (not revoked)."""
        with self.engine.connect() as conn:
            return admin.any_active_api_key(conn)

    def api_key_active(self, key: str) -> bool:
        """Whether ``key`` is a stored key that is not revoked (looked up by its sha256)."""
        with self.engine.connect() as conn:
            return admin.api_key_active(conn, admin.key_hash(key))

    def exclusive_lock(self, name: str, lock_dir: Path) -> AbstractContextManager[str]:
        """Hold the named lock for a ``with`` block, across processes, without waiting.

        PostgreSQL: a session-level advisory lock on a dedicated connection; SQLite: a file lock
        on ``lock_dir/<name>.lock``. Both are released if the process dies. Raises
        :class:`~feature_store.backends.LockHeld` when another holder has it.
        """
        return self.backend.exclusive_lock(name, Path(lock_dir))


# ---------------------------------------------------------------------- helpers


def _pk_positions(pks: np.ndarray) -> np.ndarray:
    """Array mapping surrogate key -> row position (-1 where no row)."""
    out = np.full(int(pks.max()) + 1 if len(pks) else 1, -1, dtype=np.int64)
    out[pks] = np.arange(len(pks))
    return out


def _take_str(values: pd.Series, positions: np.ndarray) -> pd.Series:
    """values[positions] as a str Series, gathered by pyarrow in C instead of per Python object."""
    if (positions < 0).any():
        raise RuntimeError("events reference rows missing from the users/items tables")
    arr = pa.array(values.to_numpy(dtype=object), type=pa.large_string()).take(pa.array(positions))
    return pd.Series(arr.to_pandas(), dtype="str")


__all__ = ["CHUNK_SIZE", "EVENT_COLUMNS", "FeatureStore", "IngestResult", "NotFoundError"]
