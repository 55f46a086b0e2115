"""The automatic model search behind `recsys train` (pipelines/search.py): it beats popularity
on data with structure, resumes after a crash without redoing trials, falls back on tiny data,
and there is one model config and one fit path left in the code."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

from pipelines import tracking
from pipelines.search import SearchConfig, autotune, parse_duration, run_search
from recsys.datasets.base import Dataset
from recsys.datasets.synthetic import generate_synthetic
from recsys.evaluation.holdout import Holdout, HoldoutConfig
from recsys.settings import Settings

pytestmark = pytest.mark.slow  # trains models or starts processes: not in make test-fast

REPO = Path(__file__).resolve().parents[1]
FAST = ("als", "itemknn", "ease", "item2vec")


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=f"sqlite:///{tmp_path / 'fs.db'}",
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
    )


@pytest.fixture(scope="module")
def clustered() -> Dataset:
    return generate_synthetic(n_users=300, n_items=150, n_events=9000, n_clusters=5, seed=5)


def test_validation_split_is_by_time(clustered):
    split = Holdout.build(clustered.events, HoldoutConfig(kind="time", test_ratio=0.1)).split
    assert split.train["timestamp"].max() < split.test["timestamp"].min()
    assert 0.05 < len(split.test) / len(clustered.events) < 0.15


def test_search_beats_popularity_and_logs_every_trial(settings, clustered):
    outcome = run_search(settings, clustered, SearchConfig(trials=6, content="none", families=FAST, patience=100))
    assert outcome.winner.kind != "popular"
    assert outcome.score > 1.2 * outcome.popularity_score
    client = tracking.client_for(settings)
    children = tracking.child_runs(client, outcome.parent_run_id)
    trial_runs = [r for r in children if r.data.tags.get("recsys.search") == "trial"]
    assert len(trial_runs) == len(outcome.trials) == 6
    assert all(
        "kind" in r.data.params and ("ndcg_at_10" in r.data.metrics or "ndcg_at_10_half" in r.data.metrics)
        for r in trial_runs
    )


def test_same_data_and_budget_give_the_same_winner(tmp_path, clustered):
    winners = []
    for run in ("a", "b"):
        s = Settings(data_dir=tmp_path / run, database_url="", mlflow_tracking_uri=f"sqlite:///{tmp_path / run}.db")
        winners.append(run_search(s, clustered, SearchConfig(trials=5, content="none", families=FAST, patience=100)))
    assert winners[0].winner == winners[1].winner
    assert winners[0].score == pytest.approx(winners[1].score)


class Crash(RuntimeError):
    pass


def test_a_crashed_search_resumes_without_redoing_trials(settings, clustered):
    config = SearchConfig(trials=6, content="none", families=FAST, patience=100)

    def crash_at_3(number: int) -> None:
        if number == 3:
            raise Crash("simulated crash in trial 3")

    with pytest.raises(Crash):
        run_search(settings, clustered, config, trial_hook=crash_at_3)
    storage = f"sqlite:///{settings.data_dir / 'search' / 'optuna.db'}"
    (summary,) = optuna.get_all_study_summaries(storage)
    before = {
        t.number: (t.params, t.value)
        for t in optuna.load_study(study_name=summary.study_name, storage=storage).trials
        if t.state == optuna.trial.TrialState.COMPLETE
    }
    assert sorted(before) == [0, 1, 2]

    started: list[int] = []
    outcome = run_search(settings, clustered, config, trial_hook=started.append)
    assert started and min(started) > 3, started  # trials 0-2 were not redone
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    done = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(done) == config.trials
    assert {t.number: (t.params, t.value) for t in study.trials if t.number in before} == before
    assert any("resumed" in note for note in outcome.notes)
    # one parent run for the whole search, crash included
    children = tracking.child_runs(tracking.client_for(settings), outcome.parent_run_id)
    assert len([r for r in children if r.data.tags.get("recsys.search") == "trial"]) >= config.trials


def _tiny_popularity_data(n_events: int = 300, seed: int = 0) -> Dataset:
    """Users pick items from one global, steep popularity curve: no taste to learn."""
    rng = np.random.default_rng(seed)
    n_users, n_items = 60, 40
    p = 1.0 / np.arange(1, n_items + 1) ** 1.5
    p /= p.sum()
    events = pd.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(n_events)],
            "user_id": [f"u{u}" for u in rng.integers(0, n_users, n_events)],
            "item_id": [f"i{j}" for j in rng.choice(n_items, n_events, p=p)],
            "event_type": "click",
            "value": 1.0,
            "timestamp": pd.Timestamp("2024-01-01", tz="UTC")
            + pd.to_timedelta(rng.uniform(0, 30 * 86400, n_events), unit="s"),
        }
    )
    return Dataset(events=events.drop_duplicates(["user_id", "item_id"]))


def test_tiny_data_falls_back_to_a_simple_model(settings):
    outcome = run_search(settings, _tiny_popularity_data(), SearchConfig(trials=6, content="none", patience=100))
    assert outcome.winner.kind in ("popular", "itemknn"), outcome.winner
    assert outcome.score >= outcome.popularity_score
    assert any("fell back" in note for note in outcome.notes)


def test_too_few_validation_users_means_popularity(settings):
    data = _tiny_popularity_data(n_events=40, seed=1)
    outcome = run_search(settings, data, SearchConfig(trials=3, content="none", min_eval_users=50))
    assert outcome.winner.kind == "popular"
    assert any("too little data" in note for note in outcome.notes)


def test_autotune_registers_the_winner_with_a_content_space(settings, clustered):
    result = autotune(
        settings, SearchConfig(trials=4, content="tfidf", families=("als", "itemknn"), patience=100), dataset=clustered
    )
    client = tracking.client_for(settings)
    version = tracking.get_version(client, settings.registered_model_name, result.train.version)
    assert version.tags["autotune.winner"].startswith(result.search.winner.kind)
    assert "vs popularity" in version.tags["autotune.validation"]
    assert result.search.content is not None and result.search.content.kind == "tfidf"
    assert (
        str(tracking.resolve_alias(client, settings.registered_model_name, "production").version)
        == result.train.version
    )


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("10m", 600), ("1h", 3600), ("45", 45)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten minutes", "-5m", "0s", "nan"])
def test_parse_duration_refuses(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def _python_sources() -> dict[Path, str]:
    skip = {"tests", ".venv", ".git"}
    return {p: p.read_text(encoding="utf-8") for p in REPO.rglob("*.py") if not skip & set(p.relative_to(REPO).parts)}


def test_one_model_config_and_one_fit_path():
    sources = _python_sources()

    def defining(pattern: str) -> list[str]:
        return sorted(str(p.relative_to(REPO)) for p, text in sources.items() if re.search(pattern, text, re.M))

    assert defining(r"^class CandidateConfig\b") == []
    assert defining(r"^class FeatureSpec\b") == []
    assert defining(r"^def build_model\b") == []
    assert defining(r"^class ModelConfig\b") == ["recsys/models/config.py"]
    assert defining(r"^class FeatureConfig\b") == ["recsys/models/config.py"]
    assert defining(r"^def fit_model\b") == ["pipelines/train.py"]
    # experiments fit through it (a thin adapter passing the shared split's matrix)
    assert "from pipelines.train import fit_model" in sources[REPO / "experiments" / "runner.py"]


def test_baselines_are_registered_models():
    from recsys.models.registry import MODEL_KINDS, validate_params

    assert {kind for kind, cls in MODEL_KINDS.items() if cls.reference} == {"popular", "random", "itemknn"}
    assert validate_params("itemknn", {"K": "50"}) == {"K": 50}
    with pytest.raises(Exception, match="no parameter 'k'"):
        validate_params("itemknn", {"k": 50})


def test_train_cli_refuses_a_bad_budget(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "RECSYS_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(REPO)}
    env.pop("RECSYS_DATABASE_URL", None)
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "train", "--budget", "soon"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "error: --budget: a duration looks like 90s, 10m or 1h" in proc.stderr + proc.stdout


ML100K = REPO.parent / "shared" / "datasets" / "ml-100k"


@pytest.mark.skipif(not ML100K.exists(), reason="../shared/datasets/ml-100k absent")
def test_item2vec_defaults_learn_on_a_real_catalog():
    """With word2vec's usual short windows and few epochs, item2vec's vectors on a catalog of
    ~1,700 items stayed near their random start (validation nDCG@10 0.01 against popularity's
    0.17); the defaults must learn something comparable to popularity."""
    from pipelines.search import Validation
    from recsys.datasets import load_dataset
    from recsys.models.base import TrainData
    from recsys.models.config import ModelConfig
    from recsys.models.registry import make_model

    validation = Validation(load_dataset("movielens-100k", ML100K), SearchConfig())
    popular = validation.score(make_model("popular").fit(TrainData(validation.seen)))
    item2vec = validation.score(validation.fit(ModelConfig(kind="item2vec", params={}, weighting="none")))
    assert item2vec > 0.6 * popular


def test_validation_scores_the_fold_in_serving_uses(clustered):
    """The search scores a sample of validation users as serving folds them in: a model's own
    fold-in of ALS keeps close to its trained vectors, a fold-in that ignores the history
    (every user the same vector) scores far below them."""
    from pipelines.search import Validation
    from recsys.models.als import ALSEmbedder
    from recsys.models.config import ModelConfig

    validation = Validation(clustered, SearchConfig(fold_in_users=80))
    assert len(validation.fold_in_users) == 80
    config = ModelConfig(kind="als", params={"factors": 16, "iterations": 8, "regularization": 0.05})
    model = validation.fit(config)
    assert validation.fold_in_ratio(model, config) > 0.8

    class Forgetful(ALSEmbedder):
        def fold_in(self, item_indices, weights=None):
            return self.item_vectors_.mean(axis=0)

    forgetful = Forgetful(factors=16)
    forgetful.user_vectors_, forgetful.item_vectors_ = model.user_vectors_, model.item_vectors_
    assert validation.fold_in_ratio(forgetful, config) < 0.6
    assert Validation(clustered, SearchConfig(fold_in_users=0)).fold_in_ratio(forgetful, config) == 1.0


def test_a_declared_space_is_searched_by_its_metric_until_each_point_was_tried(settings, clustered):
    """A declared space (what `recsys experiment search` maps a spec's models onto): random
    draws stay inside it, trials are scored and logged by the metric asked for, and a finite
    space stops once each of its configurations was tried (a repeat draw is not refitted)."""
    from pipelines.search import Choice, Family, Span
    from recsys.models.config import ModelConfig

    als = Family(
        "als",
        ModelConfig(kind="als", params={"iterations": 5}),
        {"factors": Choice((8, 16)), "regularization": Span(0.01, 1.0, log=True)},
    )
    ease = Family("ease", ModelConfig(kind="ease", params={}, weighting="none"), {"l2": Choice((10.0, 100.0))})
    config = SearchConfig(trials=6, method="random", metric="recall", content="none", ensemble=False, patience=100)
    outcome = run_search(settings, clustered, config, space=[als, ease], experiment="declared")
    assert len(outcome.trials) == 6
    done = [ModelConfig.model_validate(c) for c in outcome.trials.loc[outcome.trials["state"] == "complete", "config"]]
    for c in done:
        if c.kind == "als":
            assert c.params["factors"] in (8, 16) and 0.01 <= c.params["regularization"] <= 1.0
            assert c.params["iterations"] == 5
        else:
            assert c.kind == "ease" and c.params["l2"] in (10.0, 100.0)
    client = tracking.client_for(settings)
    trial_runs = [
        r for r in tracking.child_runs(client, outcome.parent_run_id) if r.data.tags.get("recsys.search") == "trial"
    ]
    assert len(trial_runs) == len(done) and all("recall_at_10" in r.data.metrics for r in trial_runs)
    assert client.get_experiment(trial_runs[0].info.experiment_id).name == "declared"
    best = max(outcome.popularity_score, max(outcome.trials["value"].dropna()))
    assert outcome.score == pytest.approx(best, abs=1e-4)  # per-user scores are kept to 5 decimals

    finite = SearchConfig(trials=10, method="random", content="none", ensemble=False, patience=100)
    outcome = run_search(settings, clustered, finite, space=[ease])
    table = outcome.trials
    l2s = sorted(ModelConfig.model_validate(c).params["l2"] for c in table.loc[table["state"] == "complete", "config"])
    assert l2s == [10.0, 100.0]  # each point scored once
    assert len(table) < 10 and set(table["state"]) <= {"complete", "repeat"}
