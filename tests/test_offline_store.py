"""The offline half of the feature store: the Parquet event log, its export watermark,
compaction and the point-in-time snapshot read from it — on a real SQLite file, the real
PostgreSQL server and real Parquet files."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import create_engine, insert, select, text

from feature_store import FeatureStore, events_table, items_table, users_table
from feature_store.export import safe_max_seq
from feature_store.offline import OfflineStore, StoreMismatch
from recsys.datasets.base import Dataset
from recsys.datasets.synthetic import generate_synthetic
from recsys.matrix import InteractionMatrix


class Crash(RuntimeError):
    pass


def _store(url: str, tmp_path: Path, name: str = "offline") -> FeatureStore:
    return FeatureStore(url, offline_uri=str(tmp_path / name))


def _sql_ids(store: FeatureStore) -> np.ndarray:
    with store.engine.connect() as conn:
        return np.array(sorted(r[0] for r in conn.execute(select(events_table.c.id))), dtype=np.int64)


def _log_seqs(offline: OfflineStore) -> np.ndarray:
    return np.sort(offline.read_table(columns=["seq"]).column("seq").to_numpy())


def _assert_exactly_once(store: FeatureStore) -> None:
    seqs = _log_seqs(store.offline)
    assert len(np.unique(seqs)) == len(seqs), "a row appears twice in the log"
    assert np.array_equal(seqs, _sql_ids(store)), "the log and SQL hold different events"


def _events(n: int, start: int = 0, ts: str = "2024-03-01T12:00:00Z", users: int = 5, items: int = 4) -> list[dict]:
    base = pd.Timestamp(ts)
    return [
        {
            "event_id": f"ev{start + i}",
            "user_id": f"u{(start + i) % users}",
            "item_id": f"i{(start + i) % items}",
            "event_type": "click",
            "value": 1.0 + (i % 3),
            "timestamp": (base + pd.Timedelta(hours=7 * i)).isoformat(),
        }
        for i in range(n)
    ]


def _catalog(store: FeatureStore, items: int = 4) -> None:
    store.upsert_items([{"item_id": f"i{j}", "title": f"item {j}"} for j in range(items)])


# --------------------------------------------------------------------------- export watermark


def test_export_is_incremental_and_exactly_once(db_url, tmp_path):
    store = _store(db_url, tmp_path)
    _catalog(store)
    store.add_events(_events(30))
    first = store.export_offline(batch_events=7)
    assert first.events == 30 and first.batches == 5 and first.watermark == _sql_ids(store).max()
    assert store.export_offline().events == 0  # nothing new: nothing written
    store.add_events(_events(12, start=30))
    store.add_events(_events(5, start=0))  # duplicates: no new SQL rows, so nothing to export
    again = store.export_offline()
    assert again.events == 12 and again.batches == 1
    _assert_exactly_once(store)
    # Files are partitioned by event date and named by their batch's sequence range.
    names = {
        p.relative_to(tmp_path / "offline").as_posix() for p in (tmp_path / "offline" / "events").rglob("*.parquet")
    }
    assert all(n.split("/")[1].startswith("date=2024-03-") and n.split("/")[2].startswith("part-") for n in names)


@pytest.mark.parametrize("crash_after", [1, "last"])
def test_export_crash_resumes_exactly_once(db_url, tmp_path, crash_after):
    store = FeatureStore(db_url, offline_uri="")  # SQL only while loading
    _catalog(store)
    store.add_events(_events(40))
    offline = OfflineStore(str(tmp_path / "offline"))
    crashing = FeatureStore(store.engine, create=False, offline_uri=str(tmp_path / "offline"))
    files: list[str] = []
    n_files_first_batch = len({pd.Timestamp(e["timestamp"]).date() for e in _events(40)[:25]})
    limit = 1 if crash_after == 1 else n_files_first_batch

    def after_file(rel: str) -> None:
        files.append(rel)
        if len(files) == limit:
            raise Crash(rel)

    with pytest.raises(Crash):
        crashing.export_offline(batch_events=25, after_file=after_file)
    # Half-written batch: its files exist, nothing is committed, readers see nothing.
    assert all((tmp_path / "offline" / f).exists() for f in files)
    assert offline.state().watermark == 0 and offline.read_table().num_rows == 0
    store.add_events(_events(6, start=40))  # events arriving before the re-run
    rerun: list[str] = []
    result = crashing.export_offline(batch_events=25, after_file=rerun.append)
    assert result.events == 46
    assert rerun[: len(files)] == files  # the interrupted batch is rewritten under the same names
    _assert_exactly_once(crashing)
    assert offline.state().watermark == _sql_ids(store).max()


def test_export_refuses_another_stores_log(tmp_path):
    a = _store(f"sqlite:///{tmp_path / 'a.db'}", tmp_path, "shared")
    b = _store(f"sqlite:///{tmp_path / 'b.db'}", tmp_path, "shared")
    _catalog(a)
    a.add_events(_events(3))
    a.export_offline()
    with pytest.raises(StoreMismatch, match=f"store {a.store_id}.*not from store {b.store_id}.*--rebuild"):
        b.export_offline()


def test_recreated_store_is_refused_by_id_and_rebuilt(db_url, tmp_path):
    """300 events, the database recreated at the same URL, 400 other events: the log of the old
    store is refused (it would train on its events, re-attributed by surrogate key), naming both
    store ids and the command that rebuilds it; after the rebuild the snapshot holds exactly
    the new store's events."""
    old = _store(db_url, tmp_path)
    _catalog(old)
    old.add_events(_events(300))
    old.export_offline()
    old_id = old.store_id
    old.dispose()
    if db_url.startswith("sqlite"):
        Path(db_url.removeprefix("sqlite:///")).unlink()
    else:
        engine = create_engine(db_url)
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        engine.dispose()
    new = _store(db_url, tmp_path)
    assert new.store_id != old_id
    _catalog(new)
    new.add_events(_events(400, start=1000, users=7))  # different users, more events than before
    with pytest.raises(StoreMismatch) as info:
        new.snapshot()
    message = str(info.value)
    assert "\n" not in message and old_id in message and new.store_id in message
    assert "recsys store export --rebuild" in message
    new.export_offline(rebuild=True)
    snap = new.snapshot()
    assert sorted(snap.events["event_id"]) == sorted(f"ev{i}" for i in range(1000, 1400))
    _assert_exactly_once(new)


def test_copied_data_folder_keeps_its_log(tmp_path):
    """``cp -r`` of a data folder: the copy is the same store, so its log (at the copy's path)
    stays bound and the copy exports on from its watermark."""
    src = tmp_path / "a" / ".recsys"
    store = FeatureStore(f"sqlite:///{src / 'feature_store.db'}", offline_uri=str(src / "offline"))
    _catalog(store)
    store.add_events(_events(10))
    store.export_offline()
    store.dispose()
    import shutil

    dst = tmp_path / "b" / ".recsys"
    shutil.copytree(src, dst)
    copy = FeatureStore(f"sqlite:///{dst / 'feature_store.db'}", offline_uri=str(dst / "offline"))
    copy.add_events(_events(5, start=10))
    assert copy.export_offline().events == 5
    assert len(copy.snapshot().events) == 15
    assert OfflineStore(str(src / "offline")).state().rows == 10  # the original is untouched


# --------------------------------------------------------------------------- PostgreSQL in-flight


def _raw_insert(conn, n: int, start: int) -> None:
    user_pk = conn.execute(select(users_table.c.id).limit(1)).scalar_one()
    item_pk = conn.execute(select(items_table.c.id).limit(1)).scalar_one()
    conn.execute(
        insert(events_table),
        [
            {
                "event_id": f"raw{start + i}",
                "user_pk": user_pk,
                "item_pk": item_pk,
                "event_type": "click",
                "value": 1.0,
                "ts": 1_700_000_000_000 + i,
            }
            for i in range(n)
        ],
    )


def test_postgres_export_waits_for_in_flight_writer(postgres_url, tmp_path):
    """A transaction that drew smaller ids commits after a later one: max(id) alone would move
    the watermark past its rows and skip them forever."""
    store = _store(postgres_url, tmp_path)
    _catalog(store)
    store.add_events(_events(3))
    store.export_offline()
    slow = store.engine.connect()
    slow_tx = slow.begin()
    _raw_insert(slow, 2, start=0)  # draws ids, not committed yet
    store.add_events(_events(2, start=100))  # larger ids, committed
    # A short lock timeout: the exporter does not move past the in-flight rows.
    skipped = store.export_offline(lock_timeout_ms=200)
    assert skipped.events == 0 and skipped.watermark == store.offline.state().watermark
    # A long one: the exporter waits for the writer; commit it while the exporter waits.
    outcome: dict = {}
    worker = threading.Thread(target=lambda: outcome.setdefault("result", store.export_offline(lock_timeout_ms=60_000)))
    worker.start()
    watcher = create_engine(postgres_url)
    deadline = time.monotonic() + 30
    with watcher.connect() as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute(
                text(
                    "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                    "WHERE c.relname = 'events' AND l.mode = 'ShareLock' AND NOT l.granted"
                )
            ).scalar_one()
            if waiting:
                break
            time.sleep(0.02)
    watcher.dispose()
    assert waiting, "the exporter never waited for the in-flight writer"
    assert "result" not in outcome
    slow_tx.commit()
    slow.close()
    worker.join(timeout=30)
    assert outcome["result"].events == 4
    _assert_exactly_once(store)


def test_safe_max_seq_sqlite_is_committed_max(sqlite_url, tmp_path):
    store = _store(sqlite_url, tmp_path)
    _catalog(store)
    assert safe_max_seq(store.engine) == 0
    store.add_events(_events(4))
    assert safe_max_seq(store.engine) == _sql_ids(store).max()


# --------------------------------------------------------------------------- compaction


def test_compaction_merges_small_files_and_keeps_rows_once(sqlite_url, tmp_path):
    store = _store(sqlite_url, tmp_path)
    _catalog(store)
    for start in range(0, 60, 6):  # ten small exports, same few dates
        store.add_events(_events(6, start=start, ts="2024-05-01T00:00:00Z"))
        store.export_offline()
    before = store.offline.read_events()
    n_files = len(store.offline.state().files)
    seen_mid: list[np.ndarray] = []
    result = store.offline.compact(before_cleanup=lambda: seen_mid.append(_log_seqs(store.offline)))
    after = store.offline.state()
    assert result.files_before == n_files and len(after.files) < n_files
    assert len(after.files) == len({f.path.split("/")[1] for f in after.files})  # one file per date
    assert all("compact-" in f.path for f in after.files)
    assert np.array_equal(seen_mid[0], _sql_ids(store))  # between the switch and the clean-up
    pd.testing.assert_frame_equal(store.offline.read_events(), before)
    assert not [p for p in (tmp_path / "offline" / "events").rglob("part-*")]  # superseded files removed
    assert len(list((tmp_path / "offline" / "_log").glob("batch-*"))) == 0  # markers folded into the checkpoint
    # Exports continue from the checkpoint; a second compaction folds them in.
    store.add_events(_events(6, start=60, ts="2024-05-01T00:00:00Z"))
    assert store.export_offline().events == 6
    _assert_exactly_once(store)
    store.offline.compact()
    _assert_exactly_once(store)


def test_compaction_crash_before_cleanup_then_rerun(sqlite_url, tmp_path):
    store = _store(sqlite_url, tmp_path)
    _catalog(store)
    for start in range(0, 20, 5):
        store.add_events(_events(5, start=start))
        store.export_offline()

    def crash() -> None:
        raise Crash("after checkpoint")

    with pytest.raises(Crash):
        store.offline.compact(before_cleanup=crash)
    _assert_exactly_once(store)  # superseded files still on disk, but not read
    store.offline.compact()
    _assert_exactly_once(store)


def test_readers_see_every_row_once_during_compaction(sqlite_url, tmp_path):
    """A reader running beside exports and compactions: every read is a whole committed prefix
    of the event sequence (no row twice, none missing below what was committed before it)."""
    store = _store(sqlite_url, tmp_path)
    _catalog(store)
    store.add_events(_events(8, ts="2024-06-01T00:00:00Z"))
    store.export_offline()
    committed = [len(_sql_ids(store))]
    stop = threading.Event()
    reads: list[tuple[int, np.ndarray]] = []

    def reader() -> None:
        reader_log = OfflineStore(str(tmp_path / "offline"))
        while not stop.is_set():
            floor = committed[0]
            reads.append((floor, _log_seqs(reader_log)))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for start in range(8, 48, 4):
            store.add_events(_events(4, start=start, ts="2024-06-01T00:00:00Z"))
            store.export_offline()
            committed[0] = len(_sql_ids(store))
            store.offline.compact()
    finally:
        stop.set()
        thread.join()
    final = _sql_ids(store)
    assert len(reads) > 5
    for floor, seqs in reads:
        assert len(seqs) >= floor and np.array_equal(seqs, final[: len(seqs)]), (floor, seqs)


# --------------------------------------------------------------------------- snapshots


def test_snapshot_parquet_equals_sql(db_url, tmp_path):
    data = generate_synthetic(n_users=60, n_items=40, n_events=3000, seed=3)
    events = data.events.copy()
    events.loc[events.index[:300], "timestamp"] = pd.Timestamp("2024-01-10T10:00:00Z")  # many equal times
    store = _store(db_url, tmp_path)
    store.ingest(Dataset(events=events, items=data.items, users=data.users))
    as_of = datetime(2024, 1, 10, 10, 0, tzinfo=UTC)  # equal to the tied timestamps
    # Posted after the ingest, some before and some after as_of (exported by the snapshot).
    store.add_events(
        [
            {
                "event_id": f"late{i}",
                "user_id": f"new{i % 3}",
                "item_id": data.items["item_id"].iloc[i],
                "timestamp": "2024-01-10T10:00:00Z" if i % 2 else "2030-01-01T00:00:00Z",
            }
            for i in range(10)
        ]
    )
    for when in (as_of, None):
        sql = store.snapshot(when, source="sql")
        parquet = store.snapshot(when, source="offline")
        assert isinstance(parquet.events["user_id"].dtype, pd.CategoricalDtype)
        decoded = parquet.events.assign(
            user_id=parquet.events["user_id"].astype(str), item_id=parquet.events["item_id"].astype(str)
        )
        pd.testing.assert_frame_equal(decoded, sql.events)
        a = InteractionMatrix.from_events(sql.events, weighting="confidence", alpha=2.0)
        b = InteractionMatrix.from_events(parquet.events, weighting="confidence", alpha=2.0)
        assert np.array_equal(a.user_ids, b.user_ids) and np.array_equal(a.item_ids, b.item_ids)
        assert (a.matrix != b.matrix).nnz == 0 and a.matrix.nnz == b.matrix.nnz
        pd.testing.assert_frame_equal(parquet.items, sql.items)
        pd.testing.assert_frame_equal(parquet.users, sql.users)
    assert (store.snapshot(as_of, source="offline").events["timestamp"] <= pd.Timestamp(as_of)).all()
    assert len(store.snapshot(as_of, source="offline").events) < len(store.snapshot(None, source="offline").events)


# --------------------------------------------------------------------------- ingest into both halves


def test_reingest_adds_nothing_to_either_half(db_url, tmp_path):
    data = generate_synthetic(n_users=50, n_items=30, n_events=2000, seed=5)
    store = _store(db_url, tmp_path)
    first = store.ingest(data)
    assert first.events_inserted == 2000
    state = store.offline.state()
    assert state.rows == 2000
    again = store.ingest(data)
    assert again.events_inserted == 0
    assert store.offline.state() == state
    _assert_exactly_once(store)


def _cli(args, data_dir: Path, monkeypatch):
    from typer.testing import CliRunner

    from cli.main import app
    from recsys.settings import get_settings

    monkeypatch.setenv("RECSYS_DATA_DIR", str(data_dir))
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    finally:
        get_settings.cache_clear()


def test_bad_csv_writes_nothing_to_either_half(tmp_path, monkeypatch):
    good = tmp_path / "good.csv"
    good.write_text("user_id,item_id,value,timestamp\nu1,i1,1,2024-01-01T00:00:00Z\nu2,i2,2,2024-01-02T00:00:00Z\n")
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id,value,timestamp\nu3,i3,1,2024-01-03T00:00:00Z\nu4,i4,lots,2024-01-04T00:00:00Z\n")
    data_dir = tmp_path / "data"
    ok = _cli(["ingest", "csv", str(good)], data_dir, monkeypatch)
    assert ok.exit_code == 0, ok.output
    store = _store(f"sqlite:///{data_dir / 'feature_store.db'}", data_dir)
    assert store.count_events() == 2 and store.offline.state().rows == 2
    files = sorted(p.name for p in (data_dir / "offline").rglob("*"))
    failed = _cli(["ingest", "csv", str(bad)], data_dir, monkeypatch)
    assert failed.exit_code == 2 and "error:" in failed.output and "value" in failed.output
    assert store.count_events() == 2 and store.offline.state().rows == 2
    assert sorted(p.name for p in (data_dir / "offline").rglob("*")) == files


def test_cli_store_export_and_compact(tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    store = FeatureStore(f"sqlite:///{data_dir / 'feature_store.db'}", offline_uri="")  # SQL half only
    _catalog(store)
    store.add_events(_events(25))
    out = _cli(["store", "export", "--batch-events", "10"], data_dir, monkeypatch)
    assert out.exit_code == 0, out.output
    assert "exported 25 events in 3 batch(es)" in out.output and "events/s" in out.output
    assert "exported 0 events" in _cli(["store", "export"], data_dir, monkeypatch).output
    logged = FeatureStore(store.engine, create=False, offline_uri=str(data_dir / "offline"))
    _assert_exactly_once(logged)
    out = _cli(["store", "compact"], data_dir, monkeypatch)
    assert out.exit_code == 0 and "compacted" in out.output, out.output
    _assert_exactly_once(logged)
    status = _cli(["store", "status"], data_dir, monkeypatch)
    assert f"watermark {_sql_ids(store).max()}, 25 events" in status.output


def test_default_offline_uri_sits_beside_a_sqlite_file(tmp_path):
    store = FeatureStore(f"sqlite:///{tmp_path / 'x' / 'fs.db'}")
    assert store.offline is not None and Path(store.offline.uri) == (tmp_path / "x" / "offline").resolve()
    assert FeatureStore("sqlite://").offline is None


# --------------------------------------------------------------------------- train path


@pytest.mark.slow
def test_train_exports_api_events_before_its_snapshot(tmp_path):
    """Events posted through the API after the last export are in the next model: `train`
    exports before it snapshots, and the snapshot reads the Parquet log."""
    from pipelines import tracking
    from pipelines.train import IndexConfig, ModelConfig, TrainConfig, train
    from recsys.bundle import ModelBundle
    from recsys.settings import Settings

    settings = Settings(data_dir=tmp_path / "data")
    store = FeatureStore(settings.database_url, offline_uri=settings.offline_store_uri)
    store.ingest(generate_synthetic(n_users=80, n_items=40, n_events=3000, seed=2))
    api_side = FeatureStore(store.engine, create=False, offline_uri="")  # the API writes SQL only
    api_side.add_events([{"user_id": "fresh-user", "item_id": "i1", "event_id": f"api{i}"} for i in range(3)])
    assert store.offline.state().watermark < _sql_ids(store).max()
    config = TrainConfig(
        model=ModelConfig(kind="als", params={"factors": 8, "iterations": 3}),
        index=IndexConfig(kind="annoy", n_trees=5, recall_queries=20),
        promote_alias=None,
    )
    result = train(settings, config)
    assert list(result.timings)[0] == "snapshot"  # which exports the SQL tail first (steps.snapshot)
    _assert_exactly_once(store)
    client = tracking.setup(settings)
    bundle = ModelBundle.load(
        tracking.fetch_bundle(settings, tracking.get_version(client, settings.registered_model_name, result.version))
    )
    assert "fresh-user" in set(bundle.user_ids.tolist())
    for role in ("user", "item"):
        serving = bundle.info[f"index_{role}_serving"]
        expected = 1.0 if serving == "exact" else bundle.info[f"index_{role}_annoy_recall"]
        assert bundle.info[f"index_{role}_recall_at_10"] == expected
