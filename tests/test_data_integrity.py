"""Data you can trust: the store's identity binds its offline log, one event-id derivation,
conflicting event ids, stores that return what was stored — through the CLI and HTTP as a user
meets them, on SQLite and on PostgreSQL."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from test_cli_errors import _env, assert_one_error

from api.main import create_app
from feature_store import FeatureStore
from feature_store.impressions import Impression
from recsys.settings import Settings

KEY = "integrity-key"
H = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _drop(url: str) -> None:
    """Recreate the database at ``url`` empty (delete the SQLite file / the PostgreSQL schema)."""
    if url.startswith("sqlite"):
        Path(url.removeprefix("sqlite:///")).unlink()
        return
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()


def _csv(path: Path, n: int, users: str = "u") -> Path:
    rows = [f"{users}{i % 7},i{i % 5},click,1,{1_700_000_000 + 60 * i}" for i in range(n)]
    path.write_text("user_id,item_id,event_type,value,timestamp\n" + "\n".join(rows) + "\n")
    return path


# ------------------------------------------------------------------ store identity


@pytest.mark.slow
def test_train_refuses_the_log_of_a_deleted_store(db_url, tmp_path):
    """Ingest 300 events, recreate the database at the same URL, ingest 400 others: `recsys
    train` refuses with one line naming both store ids and the rebuild command (no traceback);
    after `recsys store export --rebuild` the snapshot holds exactly the 400 new events."""
    env = _env(tmp_path, db_url)
    env.vars["RECSYS_OFFLINE_STORE_URI"] = str(tmp_path / "data" / "offline")
    assert env.run("ingest", "csv", str(_csv(tmp_path / "a.csv", 300))).returncode == 0
    old_id = FeatureStore(db_url, create=False).store_id
    _drop(db_url)
    proc = env.run("ingest", "csv", str(_csv(tmp_path / "b.csv", 400, users="w")))
    assert proc.returncode == 0, proc.stderr
    new = FeatureStore(db_url, offline_uri=env.vars["RECSYS_OFFLINE_STORE_URI"])
    line = assert_one_error(env.run("train"), old_id, new.store_id, "recsys store export --rebuild")
    assert "store" in line
    proc = env.run("store", "export", "--rebuild")
    assert proc.returncode == 0, proc.stderr
    events = new.snapshot().events
    assert len(events) == 400 and set(events["user_id"].astype(str)) == {f"w{i}" for i in range(7)}


@pytest.mark.slow
def test_copied_data_folder_trains_into_its_own_artifacts(tmp_path):
    """`cp -r .recsys other/` + RECSYS_DATA_DIR at the copy: `recsys train` names the folder it
    was copied from and `recsys store rebind` (one line, no traceback); then training from the
    copy works, its snapshot reads the copy's log, and nothing is written into the original."""
    from harness import prepare

    original = tmp_path / "a" / ".recsys"
    prepare(original, users=150, items=80, events=4000, clusters=4, factors=8, iterations=3)
    before = sorted(p for p in original.rglob("*") if p.is_file() and "mlartifacts" in p.parts)
    (tmp_path / "b").mkdir()
    shutil.copytree(original, tmp_path / "b" / ".recsys")
    env = _env(tmp_path, "")
    for name in ("RECSYS_DATABASE_URL", "RECSYS_MLFLOW_TRACKING_URI", "RECSYS_OFFLINE_STORE_URI"):
        env.vars.pop(name, None)
    env.vars["RECSYS_DATA_DIR"] = str(tmp_path / "b" / ".recsys")
    assert_one_error(env.run("train"), str(original / "mlartifacts"), "recsys store rebind")
    proc = env.run("store", "rebind")
    assert proc.returncode == 0 and "moved" in proc.stdout, proc.stderr
    proc = env.run("train")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p for p in original.rglob("*") if p.is_file() and "mlartifacts" in p.parts) == before
    manifests = list((tmp_path / "b" / ".recsys" / "mlartifacts").rglob("manifest.json"))
    assert len(manifests) == 2  # the copied version and the new one


# ------------------------------------------------------------------ event ids


def test_csv_without_timestamp_keeps_every_row(db_url, tmp_path):
    """Two purchases with values 2 and 5 and no timestamp column are two events, at the file's
    modification time (not 1970-01-01); ingesting the unchanged file again adds nothing."""
    env = _env(tmp_path, db_url)
    path = tmp_path / "nots.csv"
    path.write_text("user_id,item_id,event_type,value\nu1,i1,purchase,2\nu1,i1,purchase,5\nu1,i1,purchase,5\n")
    os.utime(path, (1_750_000_000, 1_750_000_000))
    proc = env.run("ingest", "csv", str(path))
    assert proc.returncode == 0, proc.stderr
    store = FeatureStore(db_url, offline_uri="")
    events = store.snapshot().events.sort_values("value")
    assert list(events["value"]) == [2.0, 5.0, 5.0]  # two identical rows are two events too
    assert set(events["timestamp"].astype("int64") // 10**9) == {1_750_000_000}
    assert env.run("ingest", "csv", str(path)).returncode == 0
    assert len(store.snapshot().events) == 3


@pytest.fixture
def client(db_url, mlflow_uri, tmp_path):
    store = FeatureStore(db_url)
    store.upsert_items([{"item_id": "i1"}, {"item_id": "i2"}])
    store.dispose()
    app = create_app(
        Settings(
            data_dir=tmp_path, database_url=db_url, mlflow_tracking_uri=mlflow_uri, api_keys=KEY, reload_poll_seconds=0
        )
    )
    with TestClient(app) as client:
        yield client


def test_two_identical_clicks_in_one_batch_are_two_events(client):
    click = {"user_id": "u1", "item_id": "i1", "event_type": "click"}
    r = client.post("/events", json=[click, click], headers=H)
    assert r.status_code == 200 and r.json()["inserted"] == 2, r.text
    store = client.app.state.store
    assert len(store.user_events("u1")) == 2


def test_reused_event_id_with_other_content_is_a_conflict(client):
    store = client.app.state.store
    first = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "timestamp": "2024-01-01T00:00:00Z"}
    assert client.post("/events", json=first, headers=H).json()["inserted"] == 1
    assert client.post("/events", json=first, headers=H).json()["duplicates"] == 1  # a retry: no-op
    retry_without_time = {k: v for k, v in first.items() if k != "timestamp"}
    assert client.post("/events", json=retry_without_time, headers=H).json()["duplicates"] == 1
    other = {"event_id": "e1", "user_id": "u2", "item_id": "i2"}
    fresh = {"event_id": "e2", "user_id": "u3", "item_id": "i1"}
    r = client.post("/events", json=[fresh, other], headers=H)
    assert r.status_code == 409, r.text
    detail = r.json()["detail"]
    assert detail["field"] == "event_id" and "'e1'" in detail["message"]
    # nothing of that batch is stored, and its users were not created
    assert store.get_user("u2") is None and store.get_user("u3") is None
    assert [e.item_id for e in store.user_events("u1")] == ["i1"]
    same_batch = [
        {"event_id": "e9", "user_id": "u1", "item_id": "i1"},
        {"event_id": "e9", "user_id": "u1", "item_id": "i2"},
    ]
    assert client.post("/events", json=same_batch, headers=H).status_code == 409


def test_long_variant_with_model_version_names_variant(client):
    body = {"user_id": "u1", "item_id": "i1", "variant": "v" * 255, "model_version": "3"}
    r = client.post("/events", json=body, headers=H)
    assert r.status_code == 422 and r.json()["detail"]["field"] == "variant", r.text


# ------------------------------------------------------------------ stored values


def test_attributes_come_back_as_stored(db_url):
    store = FeatureStore(db_url, offline_uri="")
    store.upsert_items([{"item_id": "i1", "attributes": {"big": 1e300, "negzero": -0.0, "n": 3}}])
    attrs = store.get_item("i1")["attributes"]
    assert attrs["big"] == 1e300 and isinstance(attrs["big"], float)
    assert math.copysign(1.0, attrs["negzero"]) == -1.0 and isinstance(attrs["negzero"], float)
    assert attrs["n"] == 3 and isinstance(attrs["n"], int)


# ------------------------------------------------------------------ one bad value, every reader


def _hostile_events(store: FeatureStore) -> None:
    """Events at both ends of the accepted range, and served lists (impressions: what the A/B
    report counts as exposure) whose variant labels are math text and rich markup."""
    labels = {"r1": ("u1", "$\\frac{$"), "r2": ("u2", "[/x]"), "r3": ("u3", "[bold red]loud")}
    store.add_impressions(
        [
            Impression(rid, user, "user", "1", label, 1_700_000_000_000, ("i1", "i2"))
            for rid, (user, label) in labels.items()
        ]
    )
    store.add_events(
        [
            {"user_id": "u1", "item_id": "i1", "timestamp": "1970-01-01T00:00:00Z", "variant": "$\\frac{$"},
            {"user_id": "u2", "item_id": "i2", "timestamp": "2199-12-31T23:59:59Z", "variant": "[/x]"},
            {"user_id": "u3", "item_id": "i1", "event_type": "click", "variant": "[bold red]loud", "request_id": "r3"},
        ]
        + [{"user_id": f"n{i}", "item_id": "i2", "timestamp": f"2024-03-{1 + i % 28:02d}T10:00:00Z"} for i in range(60)]
    )


def test_dashboard_survives_extreme_times_and_math_text(client):
    """Events at both ends of the accepted range and a variant that is matplotlib math text:
    /ui, /ui/items/{id} and /ui/ab answer 200 with small pages, the label shown as written."""
    _hostile_events(client.app.state.store)
    for path in ("/ui", "/ui/items/i1", "/ui/ab"):
        r = client.get(path)
        assert r.status_code == 200, (path, r.status_code, r.text[:300])
        assert len(r.content) < 400_000, (path, len(r.content))
    assert "$\\frac{$" in client.get("/ui/ab").text


def test_online_report_prints_markup_as_text(db_url, tmp_path):
    env = _env(tmp_path, db_url)
    store = FeatureStore(db_url, offline_uri="")
    store.upsert_items([{"item_id": "i1"}, {"item_id": "i2"}])
    _hostile_events(store)
    proc = env.run("online-report", "--no-mlflow")
    assert proc.returncode == 0, proc.stderr
    assert "[/x]" in proc.stdout and "[bold red]loud" in proc.stdout and "Traceback" not in proc.stderr


# ------------------------------------------------------------------ smaller


@pytest.mark.parametrize("item_id", [".", ".."])
def test_dot_ids_are_refused_like_slash(client, item_id):
    r = client.put(f"/items/{item_id}", json={"title": "x"}, headers=H)  # the path itself normalises away
    assert r.status_code in (404, 405, 422)
    r = client.post("/items", json={"item_id": item_id, "title": "x"}, headers=H)
    assert r.status_code == 422 and "item_id" in r.text, r.text
    r = client.post("/events", json={"user_id": item_id, "item_id": "i1"}, headers=H)
    assert r.status_code == 422, r.text
    assert client.app.state.store.get_item(item_id) is None and client.app.state.store.get_user(item_id) is None


def test_revoked_key_stops_at_once_here_and_within_the_bound_elsewhere(db_url, mlflow_uri, tmp_path):
    import time

    from api.keys import KEY_CACHE_SECONDS

    store = FeatureStore(db_url)
    store.upsert_items([{"item_id": "i1"}])
    key = store.create_api_key("temp")
    settings = Settings(data_dir=tmp_path, database_url=db_url, mlflow_tracking_uri=mlflow_uri, reload_poll_seconds=0)
    event = {"user_id": "u1", "item_id": "i1"}
    with TestClient(create_app(settings)) as a, TestClient(create_app(settings)) as b:
        assert a.post("/events", json=event, headers={"X-API-Key": key}).status_code == 200
        assert b.post("/events", json=event, headers={"X-API-Key": key}).status_code == 200
        assert a.app.state.keys.revoke("temp") == 1
        assert a.post("/events", json=event, headers={"X-API-Key": key}).status_code == 403
        time.sleep(KEY_CACHE_SECONDS + 0.1)
        assert b.post("/events", json=event, headers={"X-API-Key": key}).status_code == 403
