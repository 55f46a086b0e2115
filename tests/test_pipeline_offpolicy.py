"""The pipeline's gate with ``gate.off_policy``: without impressions logged under exploration
it refuses (``off_policy_missing``); once the API served explored lists and clicks came back,
the candidate bundle is estimated against production on them and the rule decides on that."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient
from harness import prepare, settings_for

from api.main import create_app
from pipelines.config import PipelineConfig
from pipelines.pipeline import run_pipeline

KEY = "k"


def _cfg() -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "name": "ope",
            "models": [{"kind": "als", "params": {"factors": 16, "iterations": 6}}],
            "evaluation": {"eval_users": 200},
            "index": {"n_trees": 10},
            "validation": {"drift": {"enabled": False}},
            # only the off-policy rule decides
            "gate": {"relative_tolerance": 0.9, "popularity_baseline": False, "off_policy": {"min_matched": 20}},
        }
    )


def _decision(result) -> dict:
    return json.loads((result.run_dir / "gate" / "decision.json").read_text())


def test_gate_off_policy_in_the_pipeline(tmp_path, monkeypatch):
    env = prepare(tmp_path / "data", users=200, items=100, events=6_000, factors=8, iterations=4)
    monkeypatch.setenv("RECSYS_DATA_DIR", env["RECSYS_DATA_DIR"])
    settings = settings_for(env)
    missing = run_pipeline(settings, _cfg(), run_id="nolog")
    assert missing.status == "rejected"
    assert _decision(missing)["refused_by"] == ["off_policy_missing"]

    app = settings.model_copy(update={"api_keys": KEY, "reload_poll_seconds": 0, "explore_epsilon": 0.5})
    with TestClient(create_app(app)) as c:
        for n in range(200):
            user = f"u{n % 100}"
            body = c.get(f"/users/{user}/recommendations", params={"k": 5}).json()
            click = {"user_id": user, "item_id": body["items"][n % 3]["item_id"], "event_type": "click"}
            r = c.post("/events", json={**click, "request_id": body["request_id"]}, headers={"X-API-Key": KEY})
            assert r.status_code < 300
        c.app.state.holder.impressions.flush()
    logged = run_pipeline(settings, _cfg(), run_id="logged")
    decision = _decision(logged)
    assert "off_policy_missing" not in decision["refused_by"], decision
    checks = decision["checks"]
    assert checks["off_policy_matched"] >= 20
    assert 0 < checks["off_policy_production_ctr"]
    assert checks["off_policy_difference_low"] <= checks["off_policy_difference_high"]
    # the rule's verdict is the paired interval's: refused exactly when it lies below 0
    assert ("off_policy" in decision["refused_by"]) == (checks["off_policy_difference_high"] < 0)
