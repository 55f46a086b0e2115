"""Bias report (items, user groups, embedding leakage), its mitigations (popularity calibration,
linear debiasing) and the model card: hand-computed cases, a planted bias that must show up as
a group gap, the gate refusing on a card bound, card artifacts after ``recsys train``, and the
API's ``calibration`` parameter."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pipelines.card import CARD_ARTIFACT, CARD_JSON, CARD_MD, ModelCard, new_card, render_markdown
from pipelines.config import CardBounds, GateConfig
from pipelines.gate import decide
from recsys.evaluation.bias import (
    BiasReport,
    age_band,
    attribute_auc,
    bias_report,
    group_gap,
    item_bias,
    popularity_deciles,
    user_attribute_labels,
)
from recsys.evaluation.mitigation import BiasSettings, DebiasSettings, assess, served_leakage
from recsys.models.als import ALSEmbedder
from recsys.models.base import TrainData
from recsys.models.debias import LinearDebiaser
from recsys.ranking import RankRequest, RankRequestError, calibrate, calibrate_batch, popularity_bins

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------
# hand-computed numbers
# ------------------------------------------------------------------------------------------


def test_item_bias_hand_computed():
    # item i has popularity i + 1: ten items, one per decile
    pop = np.arange(1, 11, dtype=float)
    rec = np.array([[9, 8], [9, 7], [-1, -1]])
    ib = item_bias(rec, pop)
    # exposure: item 9 twice, items 8 and 7 once -> 4 slots
    assert ib.exposure_by_decile == pytest.approx([0, 0, 0, 0, 0, 0, 0, 0.25, 0.25, 0.5])
    assert ib.data_by_decile == pytest.approx(list(pop / 55))
    # Gini of [0]*7 + [1, 1, 2]: ((16-11)*1 + (18-11)*1 + (20-11)*2) / (10*4) = 30/40
    assert ib.exposure_gini == pytest.approx(0.75)
    # Gini of 1..10: (2*385 - 11*55) / (10*55) = 165/550
    assert ib.data_gini == pytest.approx(0.3)
    assert ib.amplification == pytest.approx(0.45)
    assert ib.coverage == pytest.approx(0.3)
    # head = the 2 most popular items (8, 9): one of four slots is in the long tail
    assert ib.long_tail_share == pytest.approx(0.25)


def test_popularity_deciles_equal_counts_ties_by_index():
    d = popularity_deciles(np.array([5, 5, 1, 1, 3, 3, 2, 2, 4, 4, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0], float))
    assert np.bincount(d).tolist() == [2] * 10
    assert d[10] == 9  # the most popular item is in the top decile
    assert d[11] == 0 and d[12] == 0  # the first zero-popularity items (by index) in the bottom one


def test_group_gap_hand_computed_and_bootstrap():
    values = np.array([1.0, 1.0, 0.0, 0.0, 0.5])
    labels = np.array(["a", "a", "b", "b", None], dtype=object)
    g = group_gap("x", values, labels, seed=1, n_boot=200, min_group_users=2)
    assert (g.worst, g.best, g.gap) == ("b", "a", 1.0)
    assert (g.gap_ci_low, g.gap_ci_high) == (1.0, 1.0)  # constant within groups
    assert [a.n_users for a in g.groups] == [2, 2]  # the unknown label is left out
    # noisy groups: the interval holds the estimate, and the same seed gives the same interval
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.5, 0.1, 50), rng.normal(0.3, 0.1, 50)])
    labels = np.array(["m"] * 50 + ["f"] * 50, dtype=object)
    g1 = group_gap("gender", values, labels, seed=3)
    g2 = group_gap("gender", values, labels, seed=3)
    assert g1 == g2
    assert g1.worst == "f" and g1.gap_ci_low < g1.gap < g1.gap_ci_high and g1.gap_ci_low > 0
    # a group below min_group_users is reported but not in the gap
    small = group_gap("x", np.array([1, 1, 1, 0.0]), np.array(["a", "a", "a", "b"], object), min_group_users=2)
    assert small.worst is None and math.isnan(small.gap) and not small.groups[1].in_gap


def test_age_bands_and_attribute_labels():
    assert [age_band(a) for a in (7, 17, 18, 24, 25, 44, 45, 55, 56, 80)] == [
        "<18", "<18", "18-24", "18-24", "25-34", "35-44", "45-55", "45-55", "56+", "56+",
    ]  # fmt: skip
    users = pd.DataFrame(
        {
            "user_id": [f"u{i}" for i in range(40)],
            "attributes": [{"age": 20 + i, "gender": "MF"[i % 2], "zip": f"{10000 + i}"} for i in range(40)],
        }
    )
    labels = user_attribute_labels(users, np.array(["u3", "u0", "nobody"], dtype=object))
    assert set(labels) == {"age_band", "gender"}  # 40 distinct zips are not groups
    assert labels["gender"].tolist() == ["F", "M", None]
    assert labels["age_band"].tolist() == ["18-24", "18-24", None]


def test_leakage_auc_finds_a_planted_signal_and_not_noise():
    rng = np.random.default_rng(0)
    gender = rng.random(400) < 0.4
    X = rng.normal(size=(400, 8))
    leaky = X.copy()
    leaky[:, 3] += 3.0 * gender  # AUC Φ(3/√2) ≈ 0.98
    assert attribute_auc(leaky, gender) > 0.9
    assert abs(attribute_auc(X, gender) - 0.5) < 0.08


# ------------------------------------------------------------------------------------------
# synthetic data with a planted bias
# ------------------------------------------------------------------------------------------


def _synthetic(hide_group: str | None, seed: int = 0):
    """Users in 5 taste clusters, half F half M; items popular by a power law inside each
    cluster. ``hide_group``: that group keeps only 2 of its training interactions (the
    model barely sees it)."""
    rng = np.random.default_rng(seed)
    n_users, n_items, n_clusters = 400, 200, 5
    cluster_u = rng.integers(0, n_clusters, n_users)
    cluster_i = np.arange(n_items) % n_clusters
    gender = np.where(rng.random(n_users) < 0.5, "F", "M").astype(object)
    weights = 1.0 / (1 + np.arange(n_items)) ** 0.8
    train_rows, train_cols, test_rows, test_cols = [], [], [], []
    for u in range(n_users):
        own = np.flatnonzero(cluster_i == cluster_u[u])
        p = weights[own] / weights[own].sum()
        items = rng.choice(own, 20, replace=False, p=p)
        tr, te = items[:15], items[15:]
        if hide_group is not None and gender[u] == hide_group:
            tr = tr[:2]
        train_rows += [u] * len(tr)
        train_cols += list(tr)
        test_rows += [u] * len(te)
        test_cols += list(te)
    train = sp.csr_matrix((np.ones(len(train_rows)), (train_rows, train_cols)), shape=(n_users, n_items))
    test = sp.csr_matrix((np.ones(len(test_rows)), (test_rows, test_cols)), shape=(n_users, n_items))
    return train, test, {"gender": gender}


def _als(train):
    return ALSEmbedder(factors=16, regularization=0.1, iterations=10, random_state=0).fit(
        TrainData(sp.csr_matrix(train * 2.0 + (train > 0)))
    )


def _report(train, test, labels, model, **kw):
    users = np.arange(train.shape[0])
    from recsys.evaluation.topk import top_k_scores

    rec = top_k_scores(model.user_vectors_, model.item_vectors_, 10, exclude=train, metric=model.metric)[0]
    return bias_report(rec, test, train, 10, user_rows=users, attributes=labels, seed=0, **kw)


def test_planted_bias_is_detected_as_a_group_gap():
    train, test, labels = _synthetic(hide_group="F")
    planted = _report(train, test, labels, _als(train)).group("gender")
    assert planted.worst == "F" and planted.best == "M"
    assert planted.gap_ci_low > 0  # the interval excludes "no gap"
    train0, test0, labels0 = _synthetic(hide_group=None)
    control = _report(train0, test0, labels0, _als(train0)).group("gender")
    assert planted.gap > control.gap + 0.05
    assert control.gap_ci_low < planted.gap_ci_low


def test_calibration_reduces_amplification_on_synthetic_data():
    train, test, labels = _synthetic(hide_group=None, seed=1)
    model = _als(train)
    out = assess(
        model.user_vectors_,
        model.item_vectors_,
        model.metric,
        train,
        test,
        np.arange(train.shape[0]),
        10,
        labels,
        BiasSettings(seed=0, n_boot=50, calibration=0.9),
    )
    (cal,) = out.mitigations
    assert cal.name == "calibration"
    assert cal.amplification_after < cal.amplification_before - 0.02
    assert cal.coverage_after > cal.coverage_before


def test_calibrate_follows_the_users_history_mix():
    bins = np.array([9, 9, 9, 0, 0, 0])  # items 0-2 popular, 3-5 in the bottom decile
    ids = np.arange(6)
    scores = np.array([6, 5, 4, 3, 2, 1], float)
    history = np.array([3, 4, 0])  # 2/3 of the history is in the bottom decile
    same, _ = calibrate(ids, scores, history, bins, 0.0, 3)
    assert same.tolist() == [0, 1, 2]
    chosen, chosen_scores = calibrate(ids, scores, history, bins, 0.9, 3)
    assert sorted(bins[chosen].tolist()) == [0, 0, 9]
    assert chosen_scores.tolist() == scores[chosen].tolist()
    assert calibrate(ids, scores, np.array([], int), bins, 0.9, 3)[0].tolist() == [0, 1, 2]
    batch = calibrate_batch(np.array([[0, 1, 2, 3, -1]]), np.array([[4, 3, 2, 1, 0.0]]), [history], bins, 0.9, 3)
    assert batch.shape == (1, 3) and set(batch[0]) <= {0, 1, 2, 3}
    assert popularity_bins(np.arange(20.0)).tolist() == np.repeat(np.arange(10), 2).tolist()


def test_rank_request_validates_calibration():
    for bad in (-0.1, 1.5, float("nan"), "x", True):
        with pytest.raises(RankRequestError) as err:
            RankRequest(calibration=bad)
        assert err.value.field == "calibration"
    assert RankRequest(k=10, calibration=0.5).pool >= 100


def test_projection_lowers_leakage_auc():
    rng = np.random.default_rng(0)
    gender = np.where(rng.random(500) < 0.4, "F", "M").astype(object)
    X = rng.normal(size=(500, 16)).astype(np.float32)
    X[:, 2] += 2.5 * (gender == "F")
    X[:, 5] -= 0.8 * (gender == "F")
    deb = LinearDebiaser(target_auc=0.55).fit(X, {"gender": gender})
    Y = deb.transform(X)
    assert deb.auc_before_["gender=F"] > 0.9
    assert attribute_auc(Y, gender == "F") <= 0.56
    assert 1 <= deb.n_directions <= 5
    assert Y.dtype == np.float32 and Y.shape == X.shape
    assert np.allclose(Y.mean(axis=0), X.mean(axis=0), atol=1e-4)  # the shared offset is kept
    assert np.allclose(deb.transform(Y), Y, atol=1e-4)  # a projection: applying it twice changes nothing


def test_debias_mitigation_reports_leakage_before_and_after():
    train, test, labels = _synthetic(hide_group=None, seed=2)
    model = _als(train)
    # plant the attribute in the vectors: shift F users along one axis
    U = model.user_vectors_.copy()
    U[labels["gender"] == "F", 0] += 3 * U[:, 0].std()
    out = assess(
        U,
        model.item_vectors_,
        model.metric,
        sp.csr_matrix(train * 2.0 + (train > 0)),
        test,
        np.arange(train.shape[0]),
        10,
        labels,
        BiasSettings(seed=0, n_boot=50, debias=DebiasSettings(attributes=["gender"])),
        model_kind="als",
        regularization=0.1,
    )
    (deb,) = out.mitigations
    assert deb.leakage_before["gender"] > 0.9 and deb.leakage_after["gender"] <= 0.56
    assert deb.setting["refit_items"] is True and deb.setting["directions"] >= 1
    with pytest.raises(ValueError, match="no attribute occupation"):
        assess(
            U, model.item_vectors_, model.metric, train, test, np.arange(train.shape[0]), 10, labels,
            BiasSettings(debias=DebiasSettings(attributes=["occupation"])),
        )  # fmt: skip


# ------------------------------------------------------------------------------------------
# gate and card
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def planted_report() -> BiasReport:
    train, test, labels = _synthetic(hide_group="F")
    model = _als(train)
    return _report(train, test, labels, model, user_vectors=model.user_vectors_)


def _decide(bounds: CardBounds, report: BiasReport | None):
    metrics = {"ndcg_at_10": 0.3, "recall_at_10": 0.2, "coverage": 0.5}
    return decide(GateConfig(card=bounds), metrics, None, {"user": 1.0}, True, card=report)


def test_gate_refuses_on_a_card_bound_and_names_it(planted_report):
    gap = planted_report.group("gender").gap
    decision = _decide(CardBounds(max_group_gap=gap / 2), planted_report)
    assert not decision.passed
    assert decision.refused_by == ["card.max_group_gap"]
    assert "card.max_group_gap" in decision.reason and "gender: F vs M" in decision.reason
    assert decision.checks["card_group_gap"] == pytest.approx(gap)
    ok = _decide(CardBounds(max_group_gap=gap + 0.01, min_coverage=0.01), planted_report)
    assert ok.passed, ok.reason
    both = _decide(CardBounds(min_coverage=0.99, max_amplification=-1.0), planted_report)
    assert both.refused_by == ["card.min_coverage", "card.max_amplification"]
    assert _decide(CardBounds(max_group_gap=1.0), None).refused_by == ["card_missing"]


def test_card_round_trips_and_renders(planted_report, tmp_path):
    card = new_card(
        model_name="recsys",
        version="3",
        run_id="r1",
        model={"kind": "als", "params": {"factors": 16}},
        data_stats={"n_users": 400, "n_items": 200, "n_events": 6000, "min_timestamp": "2020-01-01", "as_of": "now"},
        validation={"ndcg_at_10": 0.25},
        validation_split="test",
        bias=planted_report,
        mitigations=[],
        serving={"calibration": 0.0},
    )
    text = card.to_json()
    assert "NaN" not in text  # strict JSON for the dashboard
    again = ModelCard.from_dict(json.loads(text))
    assert again.bias.group("gender") == planted_report.group("gender")
    assert again.bias.item == planted_report.item
    md = render_markdown(again)
    assert "amplification" in md and "| gender | F | M |" in md


def test_leakage_probe_is_a_bounded_seeded_sample_named_in_the_card(planted_report):
    """The probe's cost is bounded: at most ``max_leakage_users`` users are probed (the same ones
    for the same seed); the card names the sample, its population and the holdout users."""
    train, _, labels = _synthetic(hide_group=None)
    vectors = _als(train).user_vectors_
    probed = served_leakage(vectors, labels, BiasSettings(max_leakage_users=150, seed=3))
    assert probed == served_leakage(vectors, labels, BiasSettings(max_leakage_users=150, seed=3))
    assert [(x.attribute, x.n_users, x.population) for x in probed] == [("gender", 150, 400)]
    whole = served_leakage(vectors, labels, BiasSettings(max_leakage_users=5_000, seed=3))
    assert [(x.n_users, x.population) for x in whole] == [(400, 400)]
    card = new_card(
        model_name="recsys",
        version="4",
        run_id="r2",
        model={"kind": "als", "params": {"factors": 16}},
        data_stats={"n_users": 400, "n_items": 200, "n_events": 6000, "min_timestamp": "2020-01-01", "as_of": "now"},
        validation={"ndcg_at_10": 0.25},
        validation_split="test",
        bias=replace(planted_report, leakage=probed),
        mitigations=[],
        serving={"calibration": 0.0},
    )
    md = render_markdown(ModelCard.from_dict(json.loads(card.to_json())))
    assert "| 150 of 400 (seeded sample) |" in md
    assert f"Over the {planted_report.n_users:,} holdout users evaluated" in md


# ------------------------------------------------------------------------------------------
# end to end: recsys train --config → card artifacts; the API's calibration parameter
# ------------------------------------------------------------------------------------------


def _cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_card_artifacts_after_train_on_sqlite_and_file_mlflow(tmp_path):
    """A SQLite feature store and MLflow's SQLite tracking file with file artifacts (MLflow 3
    refuses the plain ``./mlruns`` file store unless MLFLOW_ALLOW_FILE_STORE is set)."""
    from mlflow import MlflowClient

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "RECSYS_DATA_DIR": str(tmp_path / "data"),
        "RECSYS_DATABASE_URL": f"sqlite:///{tmp_path / 'store.db'}",
        "RECSYS_MLFLOW_TRACKING_URI": tracking_uri,
        "RECSYS_MLFLOW_ARTIFACT_ROOT": (tmp_path / "artifacts").as_uri(),
    }
    gen = _cli(
        env, "generate", "--users", "300", "--items", "120", "--events", "6000", "--clusters", "4", "--seed", "3"
    )
    assert gen.returncode == 0, gen.stderr
    config = tmp_path / "train.yaml"
    config.write_text(
        "model: {kind: als, params: {factors: 16, regularization: 0.1, iterations: 8}}\n"
        "index: {kind: exact}\n"
        "bias: {bootstrap: 100, calibration: 0.3, debias: {attributes: [cluster]}}\n"
    )
    run = _cli(env, "train", "--config", str(config))
    assert run.returncode == 0, run.stderr
    client = MlflowClient(tracking_uri)
    version = client.get_model_version("recsys", "1")
    names = {Path(f.path).name for f in client.list_artifacts(version.run_id, CARD_ARTIFACT)}
    assert {CARD_JSON, CARD_MD, "exposure_by_decile.png", "group_accuracy.png", "leakage.png"} <= names
    assert "mitigations.png" in names
    shown = _cli(env, "model", "card", "1", "--format", "json")
    assert shown.returncode == 0, shown.stderr
    card = ModelCard.from_dict(json.loads(shown.stdout))
    assert card.version == "1" and card.data.n_events == 6000 and card.model["kind"] == "als"
    assert {m.name for m in card.mitigations} == {"calibration", "debias"}
    assert card.serving["calibration"] == 0.3 and card.serving["debias"]["attributes"] == ["cluster"]
    assert card.validation["ndcg_at_10"] > 0
    # the served vectors were debiased: the cluster is (nearly) not recoverable from them
    assert card.bias.leakage_of("cluster").auc < 0.7
    md = _cli(env, "model", "card", "1")
    assert md.returncode == 0 and md.stdout.startswith("# Model card: recsys version 1")
    missing = _cli(env, "model", "card", "9")
    assert missing.returncode == 2 and "error: recsys has no version 9" in missing.stderr


@pytest.fixture(scope="module")
def api_client(tmp_path_factory):
    from fastapi.testclient import TestClient
    from harness import prepare

    from api.main import create_app
    from recsys.settings import Settings

    folder = tmp_path_factory.mktemp("bias-api")
    prepare(folder, users=200, items=100, events=5000, clusters=4, iterations=4)
    app = create_app(Settings(data_dir=folder, api_keys="k", reload_poll_seconds=0))
    with TestClient(app) as client:
        yield client


@pytest.mark.slow
@pytest.mark.parametrize("bad", ["-0.5", "1.01", "abc", "nan", "inf"])
def test_api_calibration_param_validated(api_client, bad):
    r = api_client.get("/users/u1/recommendations", params={"calibration": bad})
    assert r.status_code == 422, r.text
    assert any(err["field"] == "calibration" for err in r.json()["detail"]["errors"])
    r = api_client.post("/recommendations", json={"item_ids": ["i1"], "calibration": 7})
    assert r.status_code == 422
    assert any(err["field"] == "calibration" for err in r.json()["detail"]["errors"])


@pytest.mark.slow
def test_api_calibration_changes_the_list_toward_the_history_mix(api_client):
    plain = api_client.get("/users/u1/recommendations", params={"k": 10})
    strong = api_client.get("/users/u1/recommendations", params={"k": 10, "calibration": 1})
    zero = api_client.get("/users/u1/recommendations", params={"k": 10, "calibration": 0})
    assert plain.status_code == strong.status_code == zero.status_code == 200
    ids = [[i["item_id"] for i in r.json()["items"]] for r in (plain, strong, zero)]
    assert ids[0] == ids[2]  # the model's default is 0: no re-ranking
    assert len(ids[1]) == 10 and len(set(ids[1])) == 10
    session = api_client.post("/recommendations", json={"item_ids": ["i1", "i2"], "calibration": 0.5, "k": 5})
    assert session.status_code == 200 and len(session.json()["items"]) == 5


@pytest.mark.slow
def test_pipeline_gate_refuses_on_a_card_bound_and_logs_the_card(tmp_path, monkeypatch):
    """A feature-store pipeline run (synthetic users carry attributes): the card's group-gap
    bound refuses the candidate by name; the rejected version still has its card."""
    from feature_store import FeatureStore
    from pipelines.card import load_model_card
    from pipelines.config import PipelineConfig
    from pipelines.pipeline import FAIL_ENV, run_pipeline
    from recsys.datasets.synthetic import generate_synthetic
    from recsys.settings import Settings

    monkeypatch.setenv("RECSYS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv(FAIL_ENV, raising=False)
    settings = Settings(data_dir=tmp_path / "data")
    FeatureStore(settings.database_url).ingest(generate_synthetic(seed=1, n_users=400, n_items=200, n_events=15_000))
    config = PipelineConfig.model_validate(
        {
            "name": "card",
            "models": [{"kind": "als", "params": {"factors": 16, "iterations": 8, "regularization": 0.05}}],
            "evaluation": {"eval_users": 400},
            "index": {"kind": "exact"},
            "gate": {"card": {"max_group_gap": 0.0, "min_coverage": 0.01}},
            "bias": {"bootstrap": 100, "min_group_users": 5},
        }
    )
    result = run_pipeline(settings, config, run_id="card-1")
    assert result.status == "rejected"
    assert "card.max_group_gap" in result.reason and "card.min_coverage" not in result.reason
    decision = json.loads((result.run_dir / "gate" / "decision.json").read_text())
    assert decision["refused_by"] == ["card.max_group_gap"]
    card = load_model_card(settings, result.version)
    assert card.version == result.version and card.bias is not None
    assert card.bias.max_group_gap == pytest.approx(decision["checks"]["card_group_gap"])
    assert {x.attribute for x in card.bias.leakage} >= {"cluster"}
    assert card.validation_split.startswith("time holdout")
