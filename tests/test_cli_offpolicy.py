"""`recsys model evaluate-offpolicy`: a candidate's click-through estimated from impressions the
API logged with propensities (exploration on, real SQLite store and MLflow registry), beside
production's; bad input is one `error:` line, exit 2."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from harness import prepare, settings_for, training_config
from typer.testing import CliRunner

KEY = "k"


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    from api.main import create_app
    from pipelines.train import train

    env = prepare(tmp_path_factory.mktemp("ope"), users=120, items=80, events=4_000, factors=8, iterations=4)
    settings = settings_for(env)
    train(settings, training_config(factors=16, iterations=4, alias="challenger"))
    app_settings = settings.model_copy(
        update={"api_keys": KEY, "reload_poll_seconds": 0, "explore_epsilon": 0.5, "explore_pool": 10}
    )
    served = []
    with TestClient(create_app(app_settings)) as c:
        for n in range(240):
            user = f"u{n % 60}"
            body = c.get(f"/users/{user}/recommendations", params={"k": 5}).json()
            served.append(body)
            if n % 2 == 0:  # a click on the first shown item of every other list
                click = {
                    "user_id": user,
                    "item_id": body["items"][0]["item_id"],
                    "event_type": "click",
                    "request_id": body["request_id"],
                }
                assert c.post("/events", json=click, headers={"X-API-Key": KEY}).status_code < 300
        c.app.state.holder.impressions.flush()
    return settings, served


def _invoke(monkeypatch, settings, *args):
    from cli.main import app
    from recsys.settings import get_settings

    monkeypatch.setenv("RECSYS_DATA_DIR", str(settings.data_dir))
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(app, ["model", "evaluate-offpolicy", *args], prog_name="recsys")
    finally:
        get_settings.cache_clear()


def test_estimates_with_intervals_beside_production(logged, monkeypatch):
    from pipelines.offpolicy import evaluate_offpolicy

    settings, served = logged
    result = _invoke(monkeypatch, settings, "2", "--since", "2000-01-01", "--bootstrap", "100")
    assert result.exit_code == 0, result.output
    out = evaluate_offpolicy(settings, "2", bootstrap=100)
    c = out.comparison
    assert out.production_version == "1" and c.candidate.impressions == len(served)
    for label, e in (("IPS", c.candidate.ips), ("SNIPS", c.candidate.snips), ("DR", c.candidate.dr)):
        assert f"{e.value:.4f} [{e.interval[0]:.4f}, {e.interval[1]:.4f}]" in result.output, label
        assert e.interval[0] <= e.value <= e.interval[1]
    assert "production (version 1)" in result.output and "version 2" in result.output
    # production's own click-through on its log: half the lists had a click at position 0, and
    # every impression's first item is production's first or a pool item drawn with ε/pool
    prod = c.production
    assert 0 < prod.ips.value < 1 and prod.matched >= len(served) // 2
    # the version behind the alias against itself: no difference at all
    same = evaluate_offpolicy(settings, "1", bootstrap=100).comparison
    assert same.difference.value == 0 and same.difference.interval == (0.0, 0.0)


def test_bad_input_is_one_error_line(logged, monkeypatch):
    settings, _ = logged
    for args, message in (
        (["9"], "no version 9"),
        (["x"], "version must be a version number"),
        (["2", "--since", "2200-01-01"], "no user recommendation impressions with propensities"),
        # past pandas' nanosecond range (2262): still a time, nothing logged after it
        (["2", "--since", "2999-01-01"], "no user recommendation impressions with propensities since 2999"),
        (["2", "--since", "9999-12-31T23:59:59"], "no user recommendation impressions with propensities"),
        (["2", "--since", "next week"], "Invalid value for '--since'"),
        (["2", "--since", "2026-13-01"], "Invalid value for '--since'"),
        (["2", "--alias", "nosuch"], "no model version behind alias"),
    ):
        result = _invoke(monkeypatch, settings, *args)
        assert result.exit_code == 2, (args, result.output)
        assert "error:" in result.output and message in result.output, (args, result.output)
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_since_before_pandas_range_reads_every_impression(logged, monkeypatch):
    settings, served = logged
    result = _invoke(monkeypatch, settings, "2", "--since", "1600-01-01", "--bootstrap", "50")
    assert result.exit_code == 0, result.output
    assert f"on {len(served):,} impressions" in result.output
