"""A/B split: stable per user, close to the configured ratio, named in every response, carried
by later events, and reported per variant (Wilson intervals) onto both versions' MLflow runs."""

from __future__ import annotations

import subprocess
import sys

import pytest
from fastapi.testclient import TestClient
from harness import prepare, settings_for, training_config
from mlflow import MlflowClient

from api.main import create_app
from api.serving import assign_variant
from experiments.online import report, wilson_interval
from recsys.settings import Settings

SPLIT = {"production": 0.9, "challenger": 0.1}


def test_split_stable_and_close_to_ratio():
    users = [f"user-{i}" for i in range(10_000)]
    first = [assign_variant(u, SPLIT, "salt") for u in users]
    assert first == [assign_variant(u, SPLIT, "salt") for u in users]
    share = first.count("challenger") / len(users)
    assert abs(share - 0.10) <= 0.02, share
    other_salt = [assign_variant(u, SPLIT, "other") for u in users]
    assert other_salt != first  # the salt reshuffles buckets


def test_wilson_interval():
    lo, hi = wilson_interval(10, 100)
    assert lo < 0.10 < hi and round(lo, 4) == 0.0552 and round(hi, 4) == 0.1744
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 50)[0] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.slow
def test_ab_over_http_and_online_report(tmp_path):
    from pipelines.train import train

    env = prepare(tmp_path / "ab", users=400, items=200, events=15_000)
    settings = settings_for(env)
    assert train(settings, training_config(alias="challenger", seed=5)).version == "2"
    served = Settings(
        data_dir=settings.data_dir,
        database_url=settings.database_url,
        ab_split="production=0.9,challenger=0.1",
        api_keys="k",
        reload_poll_seconds=0,
    )
    with TestClient(create_app(served)) as api:
        assert api.get("/ready").json()["variants"] == {"production": "1", "challenger": "2"}
        seen = {}
        for i in range(300):
            user = f"u{i}"
            body = api.get(f"/users/{user}/recommendations", params={"k": 3}).json()
            expected = assign_variant(user, SPLIT, settings.ab_salt)
            assert body["variant"] == expected
            assert body["model_version"] == {"production": "1", "challenger": "2"}[expected]
            seen[user] = body
        again = api.get("/users/u7/recommendations", params={"k": 3}).json()
        assert again["variant"] == seen["u7"]["variant"]
        counts = [b["variant"] for b in seen.values()]
        assert 0 < counts.count("challenger") < 90
        # Events posted later carry the variant (from the response, or the user's bucket).
        events = []
        for n, (user, body) in enumerate(seen.items()):
            item = body["items"][0]["item_id"]
            events.append({"user_id": user, "item_id": item, "event_type": "view", "event_id": f"ab-view-{user}"})
            if n % 3 == 0:
                events.append(
                    {
                        "user_id": user,
                        "item_id": item,
                        "event_type": "click",
                        "event_id": f"ab-click-{user}",
                        "variant": body["variant"],
                        "model_version": body["model_version"],
                        "request_id": body["request_id"],
                    }
                )
        r = api.post("/events", headers={"X-API-Key": "k"}, json=events)
        assert r.status_code == 200 and r.json()["inserted"] == len(events)
    stats = {s.variant: s for s in report(settings)}
    assert set(stats) == {"production:1", "challenger:2"}
    assert sum(s.users for s in stats.values()) == 300
    ch = stats["challenger:2"]
    assert ch.users == counts.count("challenger")
    assert ch.intervals["click"][0] <= ch.rates["click"] <= ch.intervals["click"][1]
    # exposure is the list shown: every user got one, every third clicked on it
    assert sum(s.successes["click"] for s in stats.values()) == len(range(0, 300, 3))
    client = MlflowClient(settings.mlflow_tracking_uri)
    for version, s in (("1", stats["production:1"]), ("2", ch)):
        run = client.get_run(client.get_model_version(settings.registered_model_name, version).run_id)
        assert run.data.metrics["online_click_rate"] == pytest.approx(s.rates["click"])
        assert run.data.tags["online_variant"] == s.alias
    out = subprocess.run(
        [sys.executable, "-m", "cli.main", "online-report", "--no-mlflow"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and "challenger:2" in out.stdout, out.stdout + out.stderr
