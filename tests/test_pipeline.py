"""The training pipeline on a real SQLite feature store and a real MLflow SQLite store:
crash/resume at every stage, bad data, the quality gate, rollback, lock, schedule, hot reload."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml
from servers import RECSYS, serve_process

from feature_store import FeatureStore
from pipelines import tracking
from pipelines.config import PipelineConfig
from pipelines.lock import LockHeld, pipeline_lock
from pipelines.pipeline import FAIL_ENV, STAGES, InjectedFailure, run_pipeline
from recsys.bundle import ModelBundle
from recsys.datasets.synthetic import generate_synthetic
from recsys.settings import Settings

pytestmark = pytest.mark.slow  # trains models or starts processes: not in make test-fast

GOOD = {"kind": "als", "params": {"factors": 16, "iterations": 8, "regularization": 0.05}}
BAD = {"kind": "als", "params": {"factors": 1, "iterations": 1}}


def make_settings(data_dir: Path) -> Settings:
    return Settings(data_dir=data_dir)


def cfg(model=GOOD, **extra) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {"name": "t", "models": [model], "evaluation": {"eval_users": 400}, "index": {"n_trees": 20}, **extra}
    )


def ingest(settings: Settings, seed: int = 1, **kw) -> None:
    kw = {"n_users": 400, "n_items": 200, "n_events": 15_000, **kw}
    FeatureStore(settings.database_url).ingest(generate_synthetic(seed=seed, **kw))


def alias_version(settings: Settings) -> str | None:
    v = tracking.resolve_alias(tracking.setup(settings), settings.registered_model_name, settings.model_alias)
    return None if v is None else str(v.version)


def versions_of(settings: Settings, run_id: str | None = None) -> list:
    rows = tracking.list_versions(tracking.setup(settings), settings.registered_model_name)
    return [r for r in rows if run_id is None or r["tags"].get("pipeline_run_id") == run_id]


@pytest.fixture
def settings(tmp_path, monkeypatch) -> Settings:
    monkeypatch.setenv("RECSYS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv(FAIL_ENV, raising=False)
    return make_settings(tmp_path / "data")


@pytest.fixture(scope="module")
def production_dir(tmp_path_factory) -> Path:
    """A data dir with ingested data and one promoted production version (reused read-only:
    each test copies it)."""
    data = tmp_path_factory.mktemp("prod") / "data"
    s = make_settings(data)
    ingest(s)
    result = run_pipeline(s, cfg(), run_id="base")
    assert result.status == "promoted", result.reason
    return data


# --------------------------------------------------------------------------- crash and resume


@pytest.mark.parametrize("where", [*STAGES, "register:after", "promote:after"])
def test_crash_at_each_stage_keeps_production_and_resumes(production_dir, tmp_path, monkeypatch, where):
    s = make_settings(production_dir)  # runs with distinct ids share the store; the lock serialises them
    before = alias_version(s)
    run_id = f"crash-{where.replace(':', '-')}"
    monkeypatch.setenv(FAIL_ENV, where)
    with pytest.raises(InjectedFailure):
        run_pipeline(s, cfg(), run_id=run_id)
    state = json.loads((s.data_dir / "pipelines" / run_id / "state.json").read_text())
    assert state["status"] == "failed" and where.split(":")[0] in state["reason"]
    mine = versions_of(s, run_id)
    if where in ("promote:after", "notify"):
        # the alias move itself had completed (a gate-passed version); the crash changes nothing else
        assert alias_version(s) == mine[0]["version"] and mine[0]["tags"]["gate"] == "passed"
    else:
        assert alias_version(s) == before, "a crashed run moved the production alias"
    if STAGES.index(where.split(":")[0]) < STAGES.index("register") or where == "register":
        assert mine == [], "a version was registered before the register stage finished"
    for v in mine:  # whatever exists is whole: tagged and its bundle verifies
        assert v["tags"]["gate"] in ("passed", "rejected")
        mv = tracking.get_version(tracking.setup(s), s.registered_model_name, v["version"])
        ModelBundle.load(tracking.fetch_bundle(s, mv), verify=True)

    monkeypatch.delenv(FAIL_ENV)
    result = run_pipeline(s, cfg(), run_id=run_id)
    assert result.status == "promoted", result.reason
    mine = versions_of(s, run_id)
    assert len(mine) == 1, "resume registered a second version"
    assert alias_version(s) == mine[0]["version"] == result.version
    state = json.loads((s.data_dir / "pipelines" / run_id / "state.json").read_text())
    assert state["status"] == "completed"
    assert all(state["stages"][st]["status"] == "done" for st in STAGES)
    if state["stages"]["split"]["outputs"]["mode"] == "refit":  # production's recipe is the candidate's
        assert state["stages"]["fit"]["outputs"]["production_fit"] == 0, "one holdout fit serves both"
    crashed = where.split(":")[0]
    assert state["stages"][crashed]["attempts"] == 2
    # stages before the crash ran once: resume really skipped them
    assert all(state["stages"][st]["attempts"] == 1 for st in STAGES[: STAGES.index(crashed)])
    client = tracking.setup(s)
    parent = client.get_run(result.mlflow_run_id)
    assert parent.data.tags["status"] == "completed"
    nested = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    finished = {r.data.tags["stage"]: r for r in nested if r.info.status == "FINISHED"}
    assert set(finished) == set(STAGES), "one finished nested run per stage"
    assert any(k.startswith("sha256/snapshot/events.parquet") for k in finished["snapshot"].data.tags)
    assert sum(r.data.tags["stage"] == crashed for r in nested) == 2  # the failed attempt and the resumed one


# --------------------------------------------------------------------------- bad data


def _write_dataset(folder: Path, events, items=None) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    events.to_parquet(folder / "events.parquet", index=False)
    src = {"kind": "dataset", "path": str(folder / "events.parquet"), "format": "parquet"}
    if items is not None:
        items.to_parquet(folder / "items.parquet", index=False)
        src["items_path"] = str(folder / "items.parquet")
    return src


def _assert_stopped(s: Settings, result, needle: str) -> None:
    assert result.status == "stopped"
    assert needle in result.reason
    assert versions_of(s) == [] and alias_version(s) is None
    state = json.loads((result.run_dir / "state.json").read_text())
    assert "train" not in state["stages"], "training ran on bad data"
    assert needle in (result.run_dir / "pipeline.log").read_text()
    run = tracking.setup(s).get_run(result.mlflow_run_id)
    assert needle in run.data.tags["validation_failed"]


def test_empty_snapshot_stops_before_training(settings):
    FeatureStore(settings.database_url)  # tables, no data
    _assert_stopped(settings, run_pipeline(settings, cfg(), run_id="empty"), "empty snapshot")


def test_unknown_and_duplicate_ids_stop_before_training(settings, tmp_path):
    data = generate_synthetic(n_users=300, n_items=150, n_events=8000, seed=3)
    items = data.items[["item_id"]].iloc[10:]  # events reference 10 items the table lacks
    src = _write_dataset(tmp_path / "unknown", data.events, items)
    _assert_stopped(settings, run_pipeline(settings, cfg(source=src), run_id="unknown"), "unknown ids")

    events = data.events.copy()
    events.loc[:49, "event_id"] = events.loc[50:99, "event_id"].to_numpy()
    src = _write_dataset(tmp_path / "dups", events, data.items[["item_id"]])
    _assert_stopped(
        settings, run_pipeline(settings, cfg(source=src), run_id="dups"), "duplicate ids: 50 repeated event_id"
    )


def test_drift_past_threshold_stops_before_training(settings, tmp_path):
    a = generate_synthetic(n_users=300, n_items=150, n_events=8000, seed=3)
    src = _write_dataset(tmp_path / "a", a.events)
    assert run_pipeline(settings, cfg(source=src), run_id="day1").status == "promoted"
    b = generate_synthetic(n_users=300, n_items=150, n_events=8000, seed=4)  # same ids, other popularity
    src_b = _write_dataset(tmp_path / "b", b.events)
    before = alias_version(settings)
    result = run_pipeline(settings, cfg(source=src_b), run_id="day2")
    assert result.status == "stopped" and "drift: top-100 item popularity shifted" in result.reason
    assert alias_version(settings) == before and versions_of(settings, "day2") == []
    assert "drift" in tracking.setup(settings).get_run(result.mlflow_run_id).data.tags["validation_failed"]


def test_cli_exit_code_4_on_validation_stop(settings, tmp_path):
    FeatureStore(settings.database_url)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "cli"}))
    proc = subprocess.run(
        RECSYS + ["pipeline", "run", str(path)], env={**os.environ}, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 4, proc.stderr
    assert "stopped" in proc.stdout and "empty snapshot" in proc.stdout


def test_cli_bad_config_is_one_line_exit_2(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: x\nmodels: [{kind: als, paramz: {}}]\n")
    proc = subprocess.run(
        RECSYS + ["pipeline", "run", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RECSYS_DATA_DIR": str(tmp_path / "d")},
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip().startswith("error:")
        and "paramz" in proc.stderr
        and len(proc.stderr.strip().splitlines()) == 1
    )


# --------------------------------------------------------------------------- gate, rollback


def test_gate_promotes_better_rejects_worse_and_rollback(settings):
    ingest(settings)
    # a weak production (factors=1, index recall relaxed so it can be promoted at all)
    weak = run_pipeline(settings, cfg(BAD, gate={"min_index_recall": 0.0, "popularity_baseline": False}), run_id="weak")
    assert weak.status == "promoted", weak.reason
    good = run_pipeline(settings, cfg(), run_id="good")
    assert good.status == "promoted", good.reason
    assert alias_version(settings) == good.version
    state = json.loads((good.run_dir / "state.json").read_text())
    assert state["stages"]["split"]["outputs"]["production"]["version"] == weak.version

    bad = run_pipeline(settings, cfg(BAD), run_id="bad")
    assert bad.status == "rejected" and "ndcg_at_10" in bad.reason
    assert alias_version(settings) == good.version
    tags = versions_of(settings, "bad")[0]["tags"]
    assert tags["gate"] == "rejected" and "ndcg_at_10" in tags["rejected"] and "promoted" not in tags

    env = {**os.environ, "RECSYS_DATA_DIR": str(settings.data_dir), "COLUMNS": "300"}
    listed = subprocess.run(RECSYS + ["model", "list"], env=env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and "rejected" in listed.stdout and "production" in listed.stdout
    rb = subprocess.run(RECSYS + ["model", "rollback"], env=env, capture_output=True, text=True, timeout=120)
    assert rb.returncode == 0, rb.stderr
    assert alias_version(settings) == weak.version, "rollback goes to the previous promoted version"
    assert "rolled_back" in versions_of(settings, "good")[0]["tags"]
    rb = subprocess.run(RECSYS + ["model", "rollback"], env=env, capture_output=True, text=True, timeout=120)
    assert rb.returncode == 2 and rb.stderr.startswith("error:")


# --------------------------------------------------------------------------- lock and schedule


def test_file_lock_blocks_second_run_exit_3(settings, tmp_path):
    ingest(settings)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "t"}))
    with pipeline_lock("t", settings.database_url, settings.data_dir / "pipelines"):
        with pytest.raises(LockHeld):
            with pipeline_lock("t", settings.database_url, settings.data_dir / "pipelines"):
                pass
        proc = subprocess.run(
            RECSYS + ["pipeline", "run", str(path)], env={**os.environ}, capture_output=True, text=True, timeout=120
        )
    assert proc.returncode == 3 and "already running" in proc.stderr
    with pipeline_lock("t", settings.database_url, settings.data_dir / "pipelines"):
        pass  # released


@pytest.mark.postgres
def test_postgres_advisory_lock(postgres_url, tmp_path):
    with pipeline_lock("nightly", postgres_url, tmp_path):
        with pytest.raises(LockHeld, match="advisory lock"):
            with pipeline_lock("nightly", postgres_url, tmp_path):
                pass
        with pipeline_lock("other", postgres_url, tmp_path):
            pass  # other pipelines are independent
    with pipeline_lock("nightly", postgres_url, tmp_path):
        pass


def test_schedule_fires_twice_and_lock_stops_overlap(settings, tmp_path):
    ingest(settings)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "models": [GOOD], "index": {"n_trees": 10}}))
    env = {**os.environ}
    proc = subprocess.run(
        RECSYS + ["-v", "pipeline", "schedule", str(path), "--interval-seconds", "1", "--max-runs", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr
    states = [json.loads(p.read_text()) for p in (settings.data_dir / "pipelines").glob("*/state.json")]
    assert len(states) == 2 and all(s["status"] == "completed" for s in states)
    assert proc.stderr.count("run exited 0") == 2
    # an overlapping run (the lock held by another process) is skipped, not queued
    with pipeline_lock("t", settings.database_url, settings.data_dir / "pipelines"):
        proc = subprocess.run(
            RECSYS + ["-v", "pipeline", "schedule", str(path), "--interval-seconds", "1", "--max-runs", "1"],
            env=env,
            capture_output=True,
            text=True,
            timeout=400,
        )
    assert proc.returncode == 0
    assert "run exited 3" in proc.stderr and "holds the lock" in proc.stderr
    assert len(list((settings.data_dir / "pipelines").glob("*/state.json"))) == 2


# --------------------------------------------------------------------------- server reload


def test_promotion_reaches_running_server(settings, tmp_path):
    ingest(settings)
    first = run_pipeline(
        settings, cfg(BAD, gate={"min_index_recall": 0.0, "popularity_baseline": False}), run_id="first"
    )
    assert first.status == "promoted"
    env = {**os.environ, "RECSYS_API_KEYS": "secret-key", "RECSYS_RELOAD_POLL_SECONDS": "0"}
    with serve_process(env, log_path=tmp_path / "serve.log") as server:
        base = server.url
        assert httpx.get(f"{base}/health", timeout=5).json()["model_version"] == first.version
        probe = httpx.post(f"{base}/admin/reload", timeout=30)
        if probe.status_code == 404:
            pytest.skip("the server has no POST /admin/reload yet")
        os.environ["RECSYS_ADMIN_API_KEY"] = "secret-key"
        try:
            second = run_pipeline(settings, cfg(GOOD, notify={"urls": [base], "required": True}), run_id="second")
        finally:
            del os.environ["RECSYS_ADMIN_API_KEY"]
        assert second.status == "promoted", second.reason
        assert alias_version(settings) == second.version
        notified = json.loads((second.run_dir / "notify" / "results.json").read_text())
        assert notified[0]["status"] == 200
        assert httpx.get(f"{base}/health", timeout=5).json()["model_version"] == second.version


# --------------------------------------------------------------------------- search cadence


def test_pipeline_searches_on_its_cadence_and_refits_the_winner_in_between(settings):
    import json

    ingest(settings)
    config = cfg(search={"every": "7d", "trials": 3, "families": ["als", "itemknn"]})
    first = run_pipeline(settings, config, run_id="search-1")
    assert first.status in ("promoted", "rejected"), first.reason
    record = json.loads((settings.data_dir / "pipelines" / "t.search.json").read_text())
    winner = record["winner"]
    assert winner["kind"] in ("als", "itemknn", "popular", "ensemble")

    def candidates(result) -> list:
        return json.loads((result.run_dir / "state.json").read_text())["stages"]["search"]["outputs"]["candidates"]

    assert candidates(first) == [winner]
    # within the cadence: no new search, the same winner is refitted
    second = run_pipeline(settings, config, run_id="search-2")
    assert candidates(second) == [winner]
    assert (
        json.loads((settings.data_dir / "pipelines" / "t.search.json").read_text())["searched_at"]
        == record["searched_at"]
    )


def test_pipeline_search_cadence_is_validated():
    with pytest.raises(ValueError, match="duration"):
        cfg(search={"every": "weekly"})
