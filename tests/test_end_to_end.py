"""The whole spine through the real CLI, a real SQLite store, a real MLflow store and
uvicorn over real HTTP."""

import os
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest
from servers import RECSYS, serve_process

from feature_store import FeatureStore
from recsys.datasets.synthetic import generate_synthetic

pytestmark = pytest.mark.slow

N_CLUSTERS = 6
GEN = ["--users", "600", "--items", "300", "--events", "30000", "--clusters", str(N_CLUSTERS), "--seed", "7"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("recsys")
    return {**os.environ, "RECSYS_DATA_DIR": str(data_dir)}


def run(args, env, check=True):
    proc = subprocess.run(RECSYS + args, env=env, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"recsys {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def trained(env):
    run(["generate", *GEN], env)
    out = run(["train", "--trials", "6"], env)
    assert "registered recsys version 1" in out.stdout
    return env


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
    with serve_process(trained, log_path=tmp_path_factory.mktemp("serve") / "serve.log") as proc:
        yield proc.url


@pytest.fixture(scope="module")
def truth():
    data = generate_synthetic(n_users=600, n_items=300, n_events=30000, n_clusters=N_CLUSTERS, seed=7)
    users = dict(zip(data.users["user_id"], (a["cluster"] for a in data.users["attributes"])))
    items = dict(zip(data.items["item_id"], (a["cluster"] for a in data.items["attributes"])))
    history = data.events.groupby("user_id")["item_id"].agg(set)
    return users, items, history


def test_user_recommendations_over_http(server, truth):
    users, items, history = truth
    same = total = 0
    for user_id in list(history.index[:50]):
        body = httpx.get(f"{server}/users/{user_id}/recommendations", params={"k": 10}).raise_for_status().json()
        assert body["user_id"] == user_id and body["model_version"] == "1" and body["strategy"] == "collaborative"
        ids = [i["item_id"] for i in body["items"]]
        assert len(ids) == 10 and len(set(ids)) == 10
        assert not set(ids) & history[user_id], "an already-seen item was recommended"
        assert all(i["title"] for i in body["items"])
        same += sum(items[i] == users[user_id] for i in ids)
        total += len(ids)
    chance = 1 / N_CLUSTERS
    assert same / total > 3 * chance, f"{same / total:.2f} share the user's cluster (chance {chance:.2f})"


def test_similar_items_over_http(server, truth):
    _, items, _ = truth
    shares = []
    for item_id in list(items)[:30]:
        body = httpx.get(f"{server}/items/{item_id}/similar", params={"k": 10}).raise_for_status().json()
        assert body["item_id"] == item_id and body["model_version"] == "1"
        ids = [i["item_id"] for i in body["items"]]
        assert item_id not in ids and len(ids) == 10
        shares.append(np.mean([items[i] == items[item_id] for i in ids]))
    assert np.mean(shares) > 3 / N_CLUSTERS


def test_unknown_user_gets_popular(server):
    body = httpx.get(f"{server}/users/never-seen/recommendations", params={"k": 5}).json()
    assert body["strategy"] == "popular" and len(body["items"]) == 5


def test_bad_requests(server):
    for k in (0, 1001, "ten"):
        r = httpx.get(f"{server}/users/u1/recommendations", params={"k": k})
        assert r.status_code == 422 and r.json()["detail"]["field"] == "k"
    r = httpx.get(f"{server}/items/no-such-item/similar")
    assert r.status_code == 404 and r.json()["detail"]["field"] == "item_id"


def test_cli_bad_input_writes_nothing(trained, tmp_path):
    store = FeatureStore(f"sqlite:///{Path(trained['RECSYS_DATA_DIR']) / 'feature_store.db'}")
    before = store.count_events()
    proc = run(["ingest", "nosuchformat", str(tmp_path)], trained, check=False)
    assert proc.returncode == 2 and "unknown format" in proc.stderr
    proc = run(["ingest", "csv", str(tmp_path / "missing.csv")], trained, check=False)
    assert proc.returncode == 2 and "not found" in proc.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id,value,timestamp\nu1,i1,1,2024-01-01\nu2,i2,not-a-number,2024-01-02\n")
    proc = run(["ingest", "csv", str(bad)], trained, check=False)
    assert proc.returncode == 2 and "error" in proc.stderr and "Traceback" not in proc.stderr
    empty = tmp_path / "empty.csv"
    empty.write_text("user_id,item_id\n")
    proc = run(["ingest", "csv", str(empty)], trained, check=False)
    assert proc.returncode == 2
    assert store.count_events() == before
