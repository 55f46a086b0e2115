"""Online store pieces that moved into feature_store: API keys, A/B variant counts, cross-process
locks and the one write-retry policy — on the real SQLite file and the real PostgreSQL server.
Also keeps the rule that SQL lives only in feature_store/."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from api.keys import KeyChecker
from feature_store import FeatureStore, LockHeld, RetryPolicy, WriteConflict
from pipelines.lock import pipeline_lock
from recsys.datasets import generate_synthetic

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(db_url):
    fs = FeatureStore(db_url)
    fs.ingest(generate_synthetic(n_users=20, n_items=10, n_events=100, seed=5))
    yield fs
    fs.dispose()


def _poll(condition, what: str, deadline_s: float = 30.0, every: float = 0.05):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


# --------------------------------------------------------------------------- API keys


def test_api_keys_create_lookup_revoke(store):
    key = store.create_api_key("ci")
    other = store.create_api_key("dashboard")
    assert key.startswith("rk_") and key != other
    assert store.api_key_active(key) and store.api_key_active(other)
    assert not store.api_key_active(key + "x")
    # Only the sha256 is stored; the key itself appears nowhere in the table.
    with store.engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(text("SELECT name, key_sha256, revoked FROM api_keys ORDER BY id"))]
    assert [(r[0], r[1]) for r in rows] == [
        ("ci", hashlib.sha256(key.encode()).hexdigest()),
        ("dashboard", hashlib.sha256(other.encode()).hexdigest()),
    ]
    assert not any(key in str(v) for r in rows for v in r)

    second = store.create_api_key("ci")
    assert store.revoke_api_keys("ci") == 2
    assert not store.api_key_active(key) and not store.api_key_active(second)
    assert store.api_key_active(other)  # another name is untouched
    assert store.revoke_api_keys("ci") == 0  # nothing active is left under that name


def test_key_checker_uses_stored_and_static_keys(store):
    checker = KeyChecker(store, ["static-key"], ttl=0.0)
    key = store.create_api_key("svc")
    assert checker.valid("static-key") and checker.valid(key)
    assert not checker.valid("rk_unknown")
    store.revoke_api_keys("svc")
    assert not checker.valid(key)


def test_keys_command_creates_and_revokes(db_url, tmp_path):
    env = {**os.environ, "RECSYS_DATABASE_URL": db_url, "RECSYS_DATA_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}

    def keys(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "api.keys", *args], check=False, env=env, capture_output=True, text=True, timeout=120
        )

    created = keys("create", "ops")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    store = FeatureStore(db_url)
    try:
        assert store.api_key_active(key)
        revoked = keys("revoke", "ops")
        assert revoked.returncode == 0 and "revoked 1 key(s) named 'ops'" in revoked.stdout
        assert not store.api_key_active(key)
    finally:
        store.dispose()
    bad = keys("create", " ")
    assert bad.returncode == 2 and bad.stderr.startswith("error: NAME")
    usage = keys("delete", "ops")
    assert usage.returncode == 2 and usage.stderr.startswith("error: usage")


# --------------------------------------------------------------------------- A/B variant counts


def test_variant_activity_and_stats(store):
    old = datetime(2020, 1, 1, tzinfo=UTC)
    new = datetime.now(UTC) - timedelta(minutes=1)
    records = [
        # production:3 — u1 clicks, u2 clicks twice and purchases, u3 only views
        {"user_id": "u1", "item_id": "i1", "event_type": "click", "variant": "production:3", "timestamp": new},
        {"user_id": "u2", "item_id": "i1", "event_type": "click", "variant": "production:3", "timestamp": new},
        {"user_id": "u2", "item_id": "i2", "event_type": "click", "variant": "production:3", "timestamp": new},
        {"user_id": "u2", "item_id": "i2", "event_type": "purchase", "variant": "production:3", "timestamp": new},
        {"user_id": "u3", "item_id": "i3", "event_type": "view", "variant": "production:3", "timestamp": old},
        # challenger:4 — u4 clicks (an old event)
        {"user_id": "u4", "item_id": "i1", "event_type": "click", "variant": "challenger:4", "timestamp": old},
        # a variant without a version, and an event without a variant (not counted anywhere)
        {"user_id": "u5", "item_id": "i1", "event_type": "view", "variant": "holdout", "timestamp": new},
        {"user_id": "u6", "item_id": "i1", "event_type": "click", "timestamp": new},
    ]
    assert store.add_events(records) == (8, 0)

    rows = store.variant_activity(["click", "purchase"])
    assert [r.variant for r in rows] == ["challenger:4", "holdout", "production:3"]
    by = {r.variant: r for r in rows}
    assert (by["production:3"].users, by["production:3"].events) == (3, 5)
    assert by["production:3"].users_with == {"click": 2, "purchase": 1}
    assert (by["challenger:4"].users, by["challenger:4"].events, by["challenger:4"].users_with) == (
        1,
        1,
        {"click": 1, "purchase": 0},
    )

    recent = {r.variant: r for r in store.variant_activity(["click"], since=new - timedelta(seconds=1))}
    assert set(recent) == {"holdout", "production:3"}
    assert (recent["production:3"].users, recent["production:3"].events) == (2, 4)


# --------------------------------------------------------------------------- locks

_HOLDER = """
import sys, time
from pathlib import Path
from pipelines.lock import pipeline_lock
with pipeline_lock(sys.argv[1], sys.argv[2], Path(sys.argv[3])) as held:
    print("held", held, flush=True)
    time.sleep(600)
"""


def _lock_dies_with_holder(name: str, url: str, lock_dir: Path, held_message: str) -> None:
    """Another process holds the lock: we are refused; it is killed: the lock is free again."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, name, url, str(lock_dir)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout.readline().startswith("held")
        with pytest.raises(LockHeld, match=held_message), pipeline_lock(name, url, lock_dir):
            pass
        with pipeline_lock(f"{name}-other", url, lock_dir):
            pass  # other names are independent
    finally:
        proc.kill()
        proc.wait(timeout=30)

    def free() -> bool:
        try:
            with pipeline_lock(name, url, lock_dir):
                return True
        except LockHeld:
            return False

    _poll(free, "the dead holder's lock to be released")


def test_file_lock_on_sqlite(sqlite_url, tmp_path):
    store, other = FeatureStore(sqlite_url), FeatureStore(sqlite_url)
    with store.exclusive_lock("nightly", tmp_path / "locks") as held:
        assert held == str(tmp_path / "locks" / "nightly.lock")
        with pytest.raises(LockHeld, match="file lock"), other.exclusive_lock("nightly", tmp_path / "locks"):
            pass
    with other.exclusive_lock("nightly", tmp_path / "locks"):
        pass  # released at the end of the block
    store.dispose()
    other.dispose()
    _lock_dies_with_holder("nightly", sqlite_url, tmp_path / "locks", "already running.*file lock")


@pytest.mark.postgres
def test_advisory_lock_on_postgres(postgres_url, tmp_path):
    store, other = FeatureStore(postgres_url), FeatureStore(postgres_url)
    try:
        with store.exclusive_lock("nightly", tmp_path) as held:
            assert held.startswith("pg_advisory_lock(")
            with store.engine.connect() as conn:
                n = conn.execute(
                    text(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                    )
                ).scalar()
            assert n == 1
            with pytest.raises(LockHeld, match="advisory lock"), other.exclusive_lock("nightly", tmp_path):
                pass
        with other.exclusive_lock("nightly", tmp_path):
            pass  # released at the end of the block
        assert not (tmp_path / "nightly.lock").exists()  # the server holds it, not a file
    finally:
        store.dispose()
        other.dispose()
    _lock_dies_with_holder("nightly", postgres_url, tmp_path, "already running.*advisory lock")


# --------------------------------------------------------------------------- retry policy


def _race_serializable_insert(postgres_url: str, store: FeatureStore) -> tuple[int, int] | BaseException:
    """Under SERIALIZABLE, the store's add_events waits on an event id another transaction has
    inserted but not committed; that one commits, so the store's transaction cannot serialize
    (SQLSTATE 40001). Returns what add_events returned or raised."""
    other = create_engine(postgres_url)
    outcome: list = []
    try:
        with other.connect() as blocker:
            blocker.execute(
                text(
                    "INSERT INTO events (event_id, user_pk, item_pk, event_type, value, ts) "
                    "SELECT 'race-1', u.id, i.id, 'click', 1, 0 FROM users u, items i "
                    "WHERE u.user_id = 'u1' AND i.item_id = 'i1'"
                )
            )

            def write() -> None:
                try:
                    outcome.append(
                        store.add_events(
                            [
                                # the same event as the other transaction's (a client retry)
                                {"event_id": "race-1", "user_id": "u1", "item_id": "i1", "event_type": "click"},
                                {"event_id": "race-2", "user_id": "u2", "item_id": "i2"},
                            ]
                        )
                    )
                except BaseException as exc:  # noqa: BLE001 - handed back to the test
                    outcome.append(exc)

            writer = threading.Thread(target=write)
            writer.start()

            def store_waits_on_lock() -> bool:
                return bool(
                    blocker.execute(
                        text(
                            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
                        )
                    ).scalar()
                )

            _poll(store_waits_on_lock, "the store's insert to wait on the uncommitted event")
            blocker.commit()
            writer.join(timeout=60)
            assert not writer.is_alive()
    finally:
        other.dispose()
    return outcome[0]


@pytest.fixture
def serializable_url(postgres_url):
    """A fresh PostgreSQL database whose transactions run SERIALIZABLE by default."""
    store = FeatureStore(postgres_url)
    store.ingest(generate_synthetic(n_users=20, n_items=10, n_events=100, seed=5))
    store.dispose()
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'ALTER DATABASE "{admin.url.database}" SET default_transaction_isolation = serializable'))
    admin.dispose()
    return postgres_url


@pytest.mark.postgres
def test_serialization_failure_is_retried_by_the_store(serializable_url, caplog):
    store = FeatureStore(serializable_url)
    try:
        with store.engine.connect() as conn:
            assert conn.execute(text("SHOW transaction_isolation")).scalar() == "serializable"
        with caplog.at_level(logging.INFO, logger="feature_store.transactions"):
            result = _race_serializable_insert(serializable_url, store)
        # The first attempt failed with 40001, the retry saw race-1 committed: a duplicate.
        assert result == (1, 1)
        assert any(
            "could not serialize" in r.getMessage() and "running it again" in r.getMessage() for r in caplog.records
        )
        assert store.count_events() == 100 + 2
    finally:
        store.dispose()


@pytest.mark.postgres
def test_serialization_failure_without_retries_surfaces_as_write_conflict(serializable_url):
    store = FeatureStore(serializable_url, retry=RetryPolicy(max_attempts=1))
    try:
        result = _race_serializable_insert(serializable_url, store)
        assert isinstance(result, WriteConflict) and "could not serialize" in str(result)
        assert store.count_events() == 100 + 1  # only the other transaction's event: nothing half-written
    finally:
        store.dispose()


# --------------------------------------------------------------------------- the SQL boundary


def _grep(pattern: str) -> set[str]:
    proc = subprocess.run(
        ["grep", "-rlE", "--include=*.py", pattern, "api", "experiments", "pipelines", "cli"],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode in (0, 1), proc.stderr  # 1 = no match
    return set(proc.stdout.split())


def test_sql_lives_only_in_feature_store():
    assert _grep(r'import sqlalchemy|from sqlalchemy|sqlmodel|[^_a-zA-Z]text\("|\bSELECT\b') == set()
    # the store's SQLAlchemy engine (not e.g. a config's ``model.engine`` field)
    assert _grep(r"store\.engine\b|\.engine\.(connect|begin|dispose|url)\b") == set()
