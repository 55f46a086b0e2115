"""Feature store on real databases: SQLite file and PostgreSQL (db_url runs each test on both)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from sqlalchemy import inspect

from feature_store import FeatureStore, IngestResult, NotFoundError
from recsys.datasets import Dataset, DatasetError, generate_synthetic


@pytest.fixture
def store(db_url):
    fs = FeatureStore(db_url)
    yield fs
    fs.dispose()


@pytest.fixture(scope="module")
def small():
    return generate_synthetic(n_users=50, n_items=30, n_events=2000, days=30, seed=7)


def test_sqlite_file_and_pragmas(sqlite_url):
    fs = FeatureStore(sqlite_url)  # parent folder does not exist yet
    with fs.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    assert {"items", "users", "events"} <= set(inspect(fs.engine).get_table_names())
    fs.dispose()


def test_ingest_snapshot_roundtrip(store, small):
    result = store.ingest(small)
    assert result == IngestResult(users_upserted=50, items_upserted=30, events_inserted=2000, events_duplicate=0)
    assert store.count_events() == 2000

    snap = store.snapshot()
    assert list(snap.events.columns) == ["event_id", "user_id", "item_id", "event_type", "value", "timestamp"]
    assert str(snap.events["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert snap.events["user_id"].map(type).eq(str).all()
    # The offline (Parquet) snapshot gives ids as Categorical of str; the SQL one as str.
    got = snap.events.astype({"user_id": "str", "item_id": "str"}).sort_values("event_id").reset_index(drop=True)
    want = small.events.sort_values("event_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want, check_dtype=False)
    assert snap.events["timestamp"].is_monotonic_increasing
    # Catalog and user metadata survive the trip, JSON included.
    items = snap.items.set_index("item_id")
    src = small.items.set_index("item_id")
    assert items.loc["i3", "categories"] == src.loc["i3", "categories"]
    assert items.loc["i3", "attributes"] == src.loc["i3", "attributes"]
    assert (
        snap.users.set_index("user_id").loc["u4", "attributes"]
        == small.users.set_index("user_id").loc["u4", "attributes"]
    )


def test_reingest_is_idempotent(store, small):
    store.ingest(small)
    again = store.ingest(small)
    assert again.events_inserted == 0 and again.events_duplicate == 2000
    assert store.count_events() == 2000
    assert len(store.users_frame()) == 50 and len(store.items_frame()) == 30


def test_event_only_ids_do_not_blank_catalog(store, small):
    store.ingest(small)
    # A dataset that only mentions i3 in an event must not erase i3's stored title.
    ds = Dataset(events=pd.DataFrame({"user_id": ["u1"], "item_id": ["i3"], "timestamp": [1_700_000_000]}))
    store.ingest(ds)
    assert store.get_item("i3")["title"] == small.items.set_index("item_id").loc["i3", "title"]
    assert store.get_user("u1")["attributes"]["country"]


def test_snapshot_as_of_is_point_in_time(store, small):
    store.ingest(small)
    ts = small.events["timestamp"]
    cut = ts.iloc[len(ts) // 2].to_pydatetime()
    snap = store.snapshot(as_of=cut)
    assert len(snap.events) == int((ts <= cut).sum())
    assert snap.events["timestamp"].max() <= cut
    assert len(store.snapshot(as_of=ts.min().to_pydatetime() - timedelta(seconds=1)).events) == 0
    # Naive datetimes mean UTC; the full item table is always included.
    naive = store.snapshot(as_of=cut.replace(tzinfo=None))
    assert len(naive.events) == len(snap.events)
    assert len(naive.items) == 30


def test_empty_dataset_rejected(store):
    with pytest.raises(DatasetError, match="empty"):
        store.ingest(Dataset(events=pd.DataFrame({"user_id": [], "item_id": []})))


def test_add_events_dedupes_and_creates_users(store, small):
    store.ingest(small)
    now = datetime(2026, 3, 1, tzinfo=UTC)
    recs = [
        {
            "event_id": "live-1",
            "user_id": "new-user",
            "item_id": "i1",
            "event_type": "click",
            "value": 2.0,
            "timestamp": now,
            "variant": "B",
        },
        {"event_id": "live-2", "user_id": "u1", "item_id": "i2", "event_type": "view", "timestamp": now},
    ]
    assert store.add_events(recs) == (2, 0)
    assert store.add_events(recs) == (0, 2)
    assert store.add_events([recs[0], {**recs[0], "event_id": "live-3"}]) == (1, 1)
    assert store.get_user("new-user") is not None
    assert store.count_events() == 2003
    assert store.user_history("new-user") == ["i1", "i1"]
    with store.engine.connect() as conn:
        variant = conn.exec_driver_sql("SELECT variant FROM events WHERE event_id = 'live-1'").scalar()
    assert variant == "B"
    # Without event_id, the derived id makes a resend a duplicate too.
    rec = {"user_id": "u2", "item_id": "i4", "event_type": "view", "timestamp": "2026-03-02T10:00:00Z"}
    assert store.add_events([rec]) == (1, 0)
    assert store.add_events([rec]) == (0, 1)


def test_failed_add_events_writes_nothing(store, small):
    store.ingest(small)
    before = store.count_events()
    ok = {"event_id": "ok-1", "user_id": "brand-new", "item_id": "i1", "timestamp": 1_767_000_000}
    bad = {"event_id": "bad-1", "user_id": "brand-new-2", "item_id": "no-such-item", "timestamp": 1_767_000_000}
    with pytest.raises(DatasetError, match="no-such-item"):
        store.add_events([ok, bad])
    assert store.count_events() == before
    assert store.get_user("brand-new") is None and store.get_user("brand-new-2") is None
    assert store.add_events([ok]) == (1, 0)  # the store is still usable afterwards


def test_failed_ingest_rolls_back_everything(store, small):
    store.ingest(small)
    ds = generate_synthetic(n_users=5, n_items=5, n_events=50, seed=99)
    ds.events["event_id"] = "new-" + ds.events["event_id"]
    ds.items.loc[0, "title"] = "CHANGED"  # written first, must be rolled back
    ds.users.loc[0, "user_id"] = "user-that-must-vanish"
    # Edited after construction, so normalization never added the item: the store must refuse.
    ds.events.loc[len(ds.events) - 1, "item_id"] = "ghost-item"
    with pytest.raises(DatasetError, match="ghost-item"):
        store.ingest(ds)
    assert store.count_events() == 2000
    assert store.get_item("i0")["title"] != "CHANGED"
    assert store.get_user("user-that-must-vanish") is None


def test_catalog_ops(store, small):
    store.ingest(small)
    assert store.get_item("nope") is None
    assert (
        store.upsert_items([{"item_id": "new-1", "title": "Fresh", "categories": ["a", "b"], "attributes": {"p": 1}}])
        == 1
    )
    item = store.get_item("new-1")
    assert item["title"] == "Fresh" and item["categories"] == ["a", "b"] and item["attributes"] == {"p": 1}
    assert item["available"] is True and item["created_at"] is not None
    store.upsert_items([{"item_id": "new-1", "title": "Renamed"}])
    assert store.get_item("new-1")["title"] == "Renamed"
    assert len(store.items_frame()) == 31

    store.delete_item("i1")
    assert store.get_item("i1")["available"] is False
    assert "i1" in store.user_history(small.events.loc[small.events["item_id"] == "i1", "user_id"].iloc[0])
    assert len(store.snapshot().events) == 2000  # history stays valid after a soft delete
    store.set_item_available("i1", True)
    assert store.get_item("i1")["available"] is True
    with pytest.raises(NotFoundError, match="ghost"):
        store.set_item_available("ghost", False)
    with pytest.raises(DatasetError, match="item_id"):
        store.upsert_items([{"title": "no id"}])

    store.upsert_users([{"user_id": "u1", "attributes": {"tier": "gold"}}])
    assert store.get_user("u1")["attributes"] == {"tier": "gold"}
    assert store.get_user("missing") is None


def test_history_and_popularity(store, small):
    store.ingest(small)
    user = small.events["user_id"].value_counts().index[0]
    want = small.events[small.events["user_id"] == user].sort_values("timestamp", kind="stable")["item_id"].tolist()
    assert store.user_history(user) == want
    assert store.user_history("nobody") == []

    pop = store.item_popularity()
    counts = small.events["item_id"].value_counts()
    assert pop.sum() == 2000
    assert pop.is_monotonic_decreasing
    assert pop.to_dict() == counts.to_dict()
    assert list(store.item_popularity(limit=3).index) == list(pop.index[:3])


def test_bulk_ingest_chunks_and_reindex(store):
    # Big enough to take the SQLite index-rebuild path and the PostgreSQL COPY path.
    ds = generate_synthetic(n_users=500, n_items=200, n_events=120_000, seed=3)
    store.chunk_size = 25_000
    assert store.ingest(ds).events_inserted == 120_000
    assert store.ingest(ds).events_inserted == 0
    assert len(store.snapshot().events) == 120_000
    if store.dialect == "sqlite":
        names = {ix["name"] for ix in inspect(store.engine).get_indexes("events")}
        assert {"ix_events_ts", "ix_events_user_pk", "ix_events_item_pk"} <= names


def test_concurrent_overlapping_batches_postgres(postgres_url):
    """Clients retrying batches that share event ids and new users: no deadlock surfaces, every
    valid event is stored exactly once (writers lock in one order; a deadlock victim retries)."""
    import random
    import threading

    from recsys.datasets.synthetic import generate_synthetic

    store = FeatureStore(postgres_url)
    store.ingest(generate_synthetic(n_users=50, n_items=40, n_events=10, seed=3))
    records = [{"event_id": f"c{i}", "user_id": f"new{i % 97}", "item_id": f"i{i % 40}"} for i in range(3000)]
    errors, sent = [], set()
    lock = threading.Lock()

    def client(seed):
        rng = random.Random(seed)
        for _ in range(12):
            batch = rng.sample(records, 300)
            try:
                store.add_events(batch)
                with lock:
                    sent.update(r["event_id"] for r in batch)
            except Exception as exc:  # noqa: BLE001 - the test reports any failure
                errors.append(repr(exc)[:300])

    threads = [threading.Thread(target=client, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with store.engine.connect() as conn:
        stored = {r[0] for r in conn.exec_driver_sql("SELECT event_id FROM events WHERE event_id LIKE 'c%%'")}
    assert stored == sent
    store.dispose()
