"""Models served wrong, and what stops it: the bundle cache keyed by content, a replaced MLflow
store noticed, served bundles immune to writes into the cache, a gate that can't be fooled by a
degenerate holdout or drop a capability, reloads reaching every worker, and pinned loads kept
off the event loop behind an API key.

Real parts throughout: a SQLite feature store and MLflow store in tmp_path, bundles trained on
generated data, the FastAPI app in-process (TestClient) or under uvicorn with 2 workers.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from harness import live_server, prepare, settings_for, training_config

from feature_store import FeatureStore
from pipelines import tracking
from pipelines.config import GateConfig, PipelineConfig
from pipelines.gate import HoldoutStats, decide
from pipelines.pipeline import run_pipeline
from pipelines.train import train
from recsys.datasets.synthetic import generate_synthetic
from recsys.settings import Settings

pytestmark = pytest.mark.slow  # trains models or starts processes: not in make test-fast

KEY = "safety-key"
AUTH = {"X-API-Key": KEY}
#: the store of the tests about bundles, caches and reloads: what they assert (which version and
#: bundle is served, checksums, workers) does not depend on the data's size
SMALL_STORE = {"users": 200, "items": 100, "events": 5_000, "clusters": 4}


def app_settings(env: dict, **overrides) -> Settings:
    base = settings_for(env)
    return Settings(
        data_dir=base.data_dir, database_url=base.database_url, api_keys=KEY, reload_poll_seconds=0, **overrides
    )


def client_for(settings: Settings) -> TestClient:
    from api.main import create_app

    return TestClient(create_app(settings))


def top(client: TestClient, user: str = "u1", **params) -> dict:
    r = client.get(f"/users/{user}/recommendations", params={"k": 10, **params})
    assert r.status_code == 200, r.text
    return r.json()


def answer(body: dict) -> list[tuple[str, float]]:
    return [(i["item_id"], round(i["score"], 5)) for i in body["items"]]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A store with version 1 behind ``production`` and version 2 registered without an alias
    (read-only for the tests that use it)."""
    env = prepare(tmp_path_factory.mktemp("safety") / "data")
    v2 = train(settings_for(env), training_config(alias=None, seed=2)).version
    assert v2 == "2"
    return env


# --------------------------------------------------------------------------- 1. cache key


def test_recreated_store_retrained_serves_new_bundle_not_old_cache(tmp_path):
    env = prepare(tmp_path / "data", **SMALL_STORE)
    settings = app_settings(env)
    with client_for(settings) as client:
        old_run = client.app.state.holder.current.run_id
        old_answer = answer(top(client))
    # Recreate the MLflow store (registry and artifacts) but keep the bundle cache, train again:
    # the new store's "version 1" is another bundle.
    (settings.data_dir / "mlflow.db").unlink()
    shutil.rmtree(settings.data_dir / "mlartifacts")
    tracking.forget_store(settings.mlflow_tracking_uri)  # as in the new process a retrain would be
    assert any((settings.cache_dir / "bundles").rglob("manifest.json")), "the old bundle is cached"
    train(settings_for(env), training_config(seed=11, factors=24))
    mv = tracking.resolve_alias(tracking.setup(settings), settings.registered_model_name, "production")
    assert str(mv.version) == "1" and mv.run_id != old_run
    with client_for(settings) as client:
        served = client.app.state.holder.current
        assert (served.version, served.run_id) == ("1", mv.run_id)
        manifest = Path(tracking.fetch_bundle(settings, mv)) / "manifest.json"
        assert json.loads(manifest.read_text())["params"]["factors"] == 24
        assert served.recommender.bundle.dims == 24
        assert answer(top(client)) != old_answer


# --------------------------------------------------------------------------- 2. replaced store


def test_replaced_tracking_store_file_is_noticed(tmp_path):
    env = prepare(tmp_path / "data", **SMALL_STORE)
    settings = app_settings(env)
    db = settings.data_dir / "mlflow.db"
    with client_for(settings) as client:
        holder = client.app.state.holder
        assert holder.current.version == "1"
        # Another copy of the store gets a new production version, then replaces the file the
        # server has open (a restored backup, a recreated store).
        new_db = settings.data_dir / "mlflow-new.db"
        shutil.copyfile(db, new_db)
        other = Settings(
            data_dir=settings.data_dir, database_url=settings.database_url, mlflow_tracking_uri=f"sqlite:///{new_db}"
        )
        assert train(other, training_config(seed=5)).version == "2"
        os.replace(new_db, db)
        r = client.post("/admin/reload", headers=AUTH)
        assert r.status_code == 200, r.text
        assert r.json()["served"] == {"production": "2"}
        assert holder.registry.reconnects == 1
        assert top(client)["model_version"] == "2"


# --------------------------------------------------------------------------- 3. immutable bundles


def _cached_files(settings: Settings) -> list[Path]:
    return [
        p for p in (settings.cache_dir / "bundles").rglob("*") if p.is_file() and p.suffix in (".npy", ".ann", ".hnsw")
    ]


def test_writes_into_and_truncation_of_cached_bundle_change_nothing(trained):
    settings = app_settings(trained)
    item = "i3"
    with client_for(settings) as client:
        before = answer(top(client))
        similar = answer(client.get(f"/items/{item}/similar").json())
        files = _cached_files(settings)
        # vectors, plus the index files of whichever kind the build chose (index kind auto)
        assert ".npy" in {p.suffix for p in files} <= {".npy", ".ann", ".hnsw"}
        for path in files:  # garbage in the middle of every vector and index file
            with open(path, "r+b") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(size // 2)
                f.write(os.urandom(min(4096, size // 2)))
        assert answer(top(client)) == before
        for path in files:  # a truncated file under a mapping would SIGBUS the process
            os.truncate(path, 16)
        assert answer(top(client)) == before
        assert answer(client.get(f"/items/{item}/similar").json()) == similar
        assert client.get("/health").json()["model_version"] == "1"
    # Restart on the corrupt cache: the good version is served at once (downloaded again).
    with client_for(settings) as client:
        assert client.get("/ready").status_code == 200
        assert answer(top(client)) == before
    assert all(p.stat().st_size > 16 for p in _cached_files(settings)), "the corrupt cache was replaced"


def test_bad_artifact_in_store_is_refused_and_old_version_keeps_serving(tmp_path):
    env = prepare(tmp_path / "data", **SMALL_STORE)
    settings = app_settings(env)
    with client_for(settings) as client:
        v2 = train(settings_for(env), training_config(seed=4)).version
        mv = tracking.get_version(tracking.setup(settings), settings.registered_model_name, v2)
        artifact = Path(mv.source.removeprefix("file://")) / "item_vectors.npy"
        good = artifact.read_bytes()
        artifact.write_bytes(good[:-64] + os.urandom(64))
        r = client.post("/admin/reload", headers=AUTH)
        assert r.status_code == 409 and "checksum" in r.json()["detail"]["message"]
        assert r.json()["detail"]["message"].endswith("(serving production v1)")
        assert top(client)["model_version"] == "1"
        artifact.write_bytes(good)
        r = client.post("/admin/reload", headers=AUTH)
        assert r.status_code == 200 and r.json()["served"] == {"production": v2}


def test_start_with_a_bad_version_serves_the_last_good_one(tmp_path):
    env = prepare(tmp_path / "data", **SMALL_STORE)
    settings = app_settings(env)
    client = tracking.setup(settings)
    name = settings.registered_model_name
    client.set_model_version_tag(name, "1", "promoted", "yes")  # as the pipeline tags it
    v2 = train(settings_for(env), training_config(seed=4)).version
    client.set_model_version_tag(name, v2, "promoted", "yes")
    artifact = Path(tracking.get_version(client, name, v2).source.removeprefix("file://")) / "item_vectors.npy"
    good = artifact.read_bytes()
    artifact.write_bytes(good[:-64] + os.urandom(64))
    with client_for(settings) as api:
        assert api.get("/ready").status_code == 200
        assert api.get("/health").json()["variants"] == {"production": "1"}
        assert top(api)["model_version"] == "1"
        artifact.write_bytes(good)
        r = api.post("/admin/reload", headers=AUTH)
        assert r.status_code == 200 and r.json()["served"] == {"production": v2}, r.text


# --------------------------------------------------------------------------- 4. the gate

GOOD = {"kind": "als", "params": {"factors": 16, "iterations": 8, "regularization": 0.05}}


def pipeline_cfg(**extra) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {"name": "safety", "models": [GOOD], "evaluation": {"eval_users": 400}, "index": {"n_trees": 20}, **extra}
    )


def test_decide_names_each_refusing_rule():
    cfg = GateConfig()
    ok = {"ndcg_at_10": 0.2, "recall_at_10": 0.2, "coverage": 0.5}
    stats = HoldoutStats(eval_users=300, test_interactions=1000)
    assert decide(cfg, ok, ok, {}, True, popularity={"ndcg_at_10": 0.1}, holdout=stats).passed
    zero = {"ndcg_at_10": 0.0, "recall_at_10": 0.0, "coverage": 0.5}
    d = decide(cfg, zero, zero, {}, True, popularity={"ndcg_at_10": 0.0}, holdout=HoldoutStats(3, 7))
    assert not d.passed and d.refused_by == ["holdout_too_small", "holdout_uninformative"]
    d = decide(cfg, ok, None, {}, True, popularity={"ndcg_at_10": 0.3}, holdout=stats)
    assert d.refused_by == ["below_popularity"]
    assert decide(
        GateConfig(popularity_baseline=False), ok, None, {}, True, popularity={"ndcg_at_10": 0.3}, holdout=stats
    ).passed
    caps = {
        "production_capabilities": {"collaborative", "content_space", "search"},
        "candidate_capabilities": {"collaborative"},
    }
    d = decide(cfg, ok, ok, {}, True, holdout=stats, **caps)
    assert d.refused_by == ["capability_loss"] and "content_space, search" in d.reason
    assert decide(GateConfig(allow_capability_loss=True), ok, ok, {}, True, holdout=stats, **caps).passed


def test_gate_refuses_degenerate_fresh_holdout(tmp_path, monkeypatch):
    monkeypatch.setenv("RECSYS_DATA_DIR", str(tmp_path / "data"))
    settings = Settings(data_dir=tmp_path / "data")
    store = FeatureStore(settings.database_url)
    data = generate_synthetic(n_users=400, n_items=200, n_events=15_000, seed=1)
    store.ingest(data)
    cfg = pipeline_cfg(validation={"drift": {"enabled": False}})
    base = run_pipeline(settings, cfg, run_id="base")
    assert base.status == "promoted", base.reason
    # A flood of bot-like events: three known users clicking, over and over, items they had.
    bots = data.events["user_id"].value_counts().index[:3].tolist()
    seen = {u: data.events.loc[data.events["user_id"] == u, "item_id"].unique()[:3].tolist() for u in bots}
    now = time.time()
    inserted, _ = store.add_events(
        [
            {"event_id": f"bot-{u}-{n}", "user_id": u, "item_id": seen[u][n % 3], "timestamp": now - n}
            for u in bots
            for n in range(150)
        ]
    )
    assert inserted == 450
    flooded = run_pipeline(settings, cfg, run_id="flooded")
    assert flooded.status == "rejected"
    decision = json.loads((flooded.run_dir / "gate" / "decision.json").read_text())
    state = json.loads((flooded.run_dir / "state.json").read_text())
    assert state["stages"]["split"]["outputs"]["mode"] == "fresh"
    assert "holdout_too_small" in decision["refused_by"], decision
    # the bots only repeated items they had: not one (user, item) pair of the holdout is scorable
    assert decision["checks"]["holdout_eval_users"] == 0 == decision["checks"]["holdout_test_interactions"]
    assert (
        str(tracking.resolve_alias(tracking.setup(settings), settings.registered_model_name, "production").version)
        == base.version
    )


def test_gate_refuses_losing_the_content_space_unless_allowed(tmp_path, monkeypatch):
    env = prepare(tmp_path / "data", users=400, items=200, events=15_000, content="tfidf")
    monkeypatch.setenv("RECSYS_DATA_DIR", env["RECSYS_DATA_DIR"])
    settings = settings_for(env)
    gate = {"relative_tolerance": 0.9, "popularity_baseline": False}  # only the capability rule decides
    lost = run_pipeline(settings, pipeline_cfg(gate=gate), run_id="collab-only")
    assert lost.status == "rejected"
    decision = json.loads((lost.run_dir / "gate" / "decision.json").read_text())
    assert decision["refused_by"] == ["capability_loss"], decision
    assert {"content_space", "search"} <= set(decision["checks"]["capabilities_lost"])
    assert (
        str(tracking.resolve_alias(tracking.setup(settings), settings.registered_model_name, "production").version)
        == "1"
    )
    allowed = run_pipeline(settings, pipeline_cfg(gate={**gate, "allow_capability_loss": True}), run_id="allowed")
    assert allowed.status == "promoted", allowed.reason


# --------------------------------------------------------------------------- 5. every worker swaps


def _pids_serving(base: str, version: str, pids: set[int], deadline: float) -> set[int]:
    """Poll /health until every pid in ``pids`` answered ``version``; returns the pids that did."""
    done: set[int] = set()
    while time.time() < deadline and done != pids:
        body = httpx.get(f"{base}/health", timeout=5).json()
        if body["model_version"] == version:
            done.add(body["pid"])
    return done


def test_reload_reaches_every_worker(tmp_path, db_url):
    # The reload generation lives in the online store: both databases.
    env = prepare(tmp_path / "data", database_url=db_url if db_url.startswith("postgresql") else None, **SMALL_STORE)
    settings = settings_for(env)
    extra = {"RECSYS_API_KEYS": KEY, "RECSYS_RELOAD_POLL_SECONDS": "0"}
    with live_server(env, workers=2, extra_env=extra, log_path=tmp_path / "server.log") as base:
        pids: set[int] = set()
        deadline = time.time() + 60
        while len(pids) < 2:
            assert time.time() < deadline, f"only saw workers {pids}"
            body = httpx.get(f"{base}/health", timeout=5).json()
            assert body["model_version"] == "1"
            pids.add(body["pid"])
        # /admin/reload reaches one worker; the reload generation brings the other along.
        assert train(settings, training_config(seed=3)).version == "2"
        r = httpx.post(f"{base}/admin/reload", headers=AUTH, timeout=120)
        assert r.status_code == 200 and r.json()["served"] == {"production": "2"}, r.text
        assert _pids_serving(base, "2", pids, time.time() + 15) == pids
        # The pipeline's notify bumps the same generation in the database.
        assert train(settings, training_config(seed=4)).version == "3"
        store = FeatureStore(settings.database_url)
        store.control.bump_reload_generation("test")
        store.dispose()
        assert _pids_serving(base, "3", pids, time.time() + 15) == pids


# --------------------------------------------------------------------------- 6. pinned versions


def test_pinned_version_needs_key_and_loads_off_the_event_loop(trained, monkeypatch):
    settings = app_settings(trained)
    entered, release, loaded = threading.Event(), threading.Event(), threading.Event()
    real_fetch = tracking.fetch_bundle_checked

    def gated_fetch(*args, **kwargs):  # the real download, held until the test lets it go
        entered.set()
        release.wait(timeout=60)
        try:
            return real_fetch(*args, **kwargs)
        finally:
            loaded.set()

    with client_for(settings) as client:
        holder = client.app.state.holder
        loop_thread = client.portal.call(lambda: threading.current_thread().name)
        assert client.get("/users/u1/recommendations", params={"model_version": "2"}).status_code == 401
        r = client.get("/users/u1/recommendations", params={"model_version": "2"}, headers={"X-API-Key": "nope"})
        assert r.status_code == 403
        assert client.get("/users/u1/recommendations", params={"model_version": "99"}, headers=AUTH).status_code == 404
        monkeypatch.setattr(tracking, "fetch_bundle_checked", gated_fetch)
        result: dict = {}
        pinned = threading.Thread(
            target=lambda: result.update(
                r=client.get("/users/u1/recommendations", params={"model_version": "2"}, headers=AUTH)
            )
        )
        pinned.start()
        assert entered.wait(60), "the pinned load did not start"
        # The load is held inside its download; the event loop still answers.
        health = client.get("/health")
        assert health.status_code == 200 and not loaded.is_set()
        # One load at a time per process: another version meanwhile is told to come back.
        busy = client.get("/users/u1/recommendations", params={"model_version": "1000"}, headers=AUTH)
        assert busy.status_code == 503 and busy.headers["Retry-After"]
        release.set()
        pinned.join(60)
        assert result["r"].status_code == 200 and result["r"].json()["model_version"] == "2"
        model = holder.loaded_version("2")
        assert model.load_thread.startswith("pinned-load") and model.load_thread != loop_thread
        # A loaded version is open to every reader.
        anon = client.get("/users/u1/recommendations", params={"model_version": "2"})
        assert anon.status_code == 200 and anon.json()["variant"] == "pinned"
