"""Experiments end to end: spec → CLI → MLflow parent/child runs → report; validation errors;
search → TrainConfig YAML; compare reproduces the logged metrics."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.slow  # trains models or starts processes: not in make test-fast

REPO = Path(__file__).resolve().parents[1]
ML100K = REPO.parent / "shared" / "datasets" / "ml-100k"

SPEC = {
    "name": "tiny",
    "dataset": {"format": "synthetic", "params": {"n_users": 300, "n_items": 120, "n_events": 6000, "n_clusters": 4}},
    "split": {"method": "random", "test_ratio": 0.2},
    "seed": 7,
    "k": [5, 10],
    "breakdown_attribute": "age_group",
    "models": [
        {
            "kind": "als",
            "params": {"factors": [8, 16], "iterations": 5},
            "search": {"regularization": {"low": 0.001, "high": 1.0, "log": True}, "weighting": ["confidence", "bm25"]},
        },
        {"kind": "ease", "params": {"l2": 50.0}},
        {"kind": "tags"},
        {"kind": "popular"},
    ],
    "search": {"trials": 4, "metric": "ndcg@10"},
}
EXPECTED_MODELS = ["als[factors=8]", "als[factors=16]", "ease", "tags", "popular"]
METRIC_NAMES = [
    "precision",
    "recall",
    "ndcg",
    "map",
    "hit_rate",
    "mrr",
    "auc",
    "coverage",
    "novelty",
    "diversity",
    "avg_rec_popularity",
    "gini",
]


def _cli(args: list[str], data_dir: Path, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """``python -m cli.main ...`` in a subprocess, as a user runs it."""
    env = {**os.environ, "RECSYS_DATA_DIR": str(data_dir), "OPENBLAS_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def _cli_inproc(args: list[str], data_dir: Path, monkeypatch):
    """The same Typer app in-process (no interpreter start-up): exit code, stdout, stderr."""
    from typer.testing import CliRunner

    from cli.main import app
    from recsys.settings import get_settings

    monkeypatch.setenv("RECSYS_DATA_DIR", str(data_dir))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    finally:
        get_settings.cache_clear()
    return result


def _client(data_dir: Path):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{data_dir / 'mlflow.db'}")


@pytest.fixture(scope="module")
def experiment_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("exp")
    spec_path = tmp / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC))
    data_dir, report = tmp / "data", tmp / "report"
    proc = _cli(["experiment", "run", str(spec_path), "--report-dir", str(report)], data_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"tmp": tmp, "spec": spec_path, "data": data_dir, "report": report, "stdout": proc.stdout}


def test_run_writes_report(experiment_run):
    report = experiment_run["report"]
    df = pd.read_csv(report / "comparison.csv", index_col="model")
    assert list(df.index) == EXPECTED_MODELS
    for m in METRIC_NAMES:
        for k in (5, 10):
            assert f"{m}_at_{k}" in df.columns, f"{m}_at_{k}"
    for c in ("time_train_s", "time_eval_s", "index_recall_at_10", "run_id"):
        assert c in df.columns
    assert df[[f"{m}_at_10" for m in METRIC_NAMES]].notna().all().all()
    assert ((df["precision_at_10"] >= 0) & (df["precision_at_10"] <= 1)).all()
    # learned models beat popularity on data with latent clusters; recall grows with k
    assert df.loc["ease", "ndcg_at_10"] > df.loc["popular", "ndcg_at_10"]
    assert (df["recall_at_10"] >= df["recall_at_5"] - 1e-12).all()
    assert df.loc["popular", "coverage_at_10"] < df.loc["ease", "coverage_at_10"]
    assert ((df["index_recall_at_10"] > 0) & (df["index_recall_at_10"] <= 1)).all()
    for png in ("metric_bars.png", "metric_at_k.png", "popularity_vs_coverage.png", "training_time.png"):
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    md = (report / "report.md").read_text()
    assert "ndcg_at_10" in md and "![metric bars](metric_bars.png)" in md
    best = df["ndcg_at_10"].idxmax()
    assert f"**{df.loc[best, 'ndcg_at_10']:.4f}**" in md
    bd = pd.read_csv(report / "breakdown_ease.csv")
    assert set(bd["dimension"]) == {"activity", "age_group"}
    assert set(bd.loc[bd["dimension"] == "activity", "group"]) == {"cold", "medium", "heavy"}
    assert (
        bd.loc[bd["dimension"] == "activity", "n_users"].sum()
        == bd.loc[bd["dimension"] == "age_group", "n_users"].sum()
    )
    assert "ease" in experiment_run["stdout"] and "ndcg@10" in experiment_run["stdout"]


def test_mlflow_parent_and_children_share_split(experiment_run):
    client = _client(experiment_run["data"])
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("recsys.experiment.kind") == "parent"]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["recsys.experiment.config"] for r in children) == sorted(EXPECTED_MODELS)
    hashes = {r.data.params["split_hash"] for r in children}
    assert hashes == {parent.data.params["split_hash"]}
    df = pd.read_csv(experiment_run["report"] / "comparison.csv", index_col="model")
    for r in children:
        m = r.data.metrics
        for name in METRIC_NAMES:
            assert f"{name}_at_10" in m
        assert m["time_train_s"] >= 0 and m["time_eval_s"] > 0
        name = r.data.tags["recsys.experiment.config"]
        assert m["ndcg_at_10"] == pytest.approx(df.loc[name, "ndcg_at_10"])
        assert r.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "report" in artifacts


def test_same_split_for_every_model_in_process():
    """The split is made once: every model sees the same train/test matrices."""
    from experiments.runner import make_split, prepare_data, split_hash
    from experiments.spec import parse_spec
    from recsys.datasets import generate_synthetic

    spec = parse_spec(SPEC)
    ds = generate_synthetic(**SPEC["dataset"]["params"], seed=7)
    a = make_split(ds.events, spec.split, spec.split_seed)
    b = make_split(ds.events, spec.split, spec.split_seed)
    c = make_split(ds.events, spec.split, spec.split_seed + 1)
    assert split_hash(a) == split_hash(b) != split_hash(c)
    data = prepare_data(spec, ds, a)
    assert data.split_hash == split_hash(a)
    # train and test partition the events; the test matrix holds only test events
    assert set(a.train["event_id"]).isdisjoint(a.test["event_id"])
    assert len(a.train) + len(a.test) == len(ds.events) - a.report["dropped_test_events"]
    # one relevant pair per distinct test (user, item), repeats of train pairs left out (the holdout rule)
    pairs = set(zip(a.test["user_id"], a.test["item_id"])) - set(zip(a.train["user_id"], a.train["item_id"]))
    assert data.test.sum() == len(pairs)


def test_compare_reproduces_run_metrics(experiment_run, tmp_path, monkeypatch):
    client = _client(experiment_run["data"])
    exp = client.get_experiment_by_name("tiny")
    parent = [
        r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("recsys.experiment.kind") == "parent"
    ][0]
    out = tmp_path / "cmp"
    for args in (
        ["experiment", "compare", parent.info.run_id, "--report-dir", str(out)],
        ["experiment", "compare", "--experiment", "tiny", "--report-dir", str(out / "by-name")],
    ):
        res = _cli_inproc(args, experiment_run["data"], monkeypatch)
        assert res.exit_code == 0, (res.output, res.exception)
    original = pd.read_csv(experiment_run["report"] / "comparison.csv", index_col="model")
    for folder in (out, out / "by-name"):
        again = pd.read_csv(folder / "comparison.csv", index_col="model")
        assert sorted(again.index) == sorted(original.index)
        cols = [f"{m}_at_{k}" for m in METRIC_NAMES for k in (5, 10)]
        pd.testing.assert_frame_equal(again.loc[original.index, cols], original[cols], check_exact=False, rtol=1e-9)
        assert (folder / "report.md").exists() and (folder / "metric_bars.png").exists()
        assert (folder / "breakdown_ease.csv").exists()
    res = _cli_inproc(["experiment", "compare", "nonexistent-run-id"], experiment_run["data"], monkeypatch)
    assert res.exit_code == 2 and "error:" in res.stderr and "nonexistent-run-id" in res.stderr
    res = _cli_inproc(["experiment", "compare"], experiment_run["data"], monkeypatch)
    assert res.exit_code == 2 and "RUN_ID" in res.stderr


@pytest.mark.parametrize(
    "change, field",
    [
        ({"models": [{"kind": "nope"}]}, "models.0.kind"),
        ({"models": [{"kind": "als", "params": {"factorz": 8}}]}, "factorz"),
        ({"split": {"method": "sideways"}}, "split.method"),
        ({"k": [0, 10]}, "k"),
        ({"metrics": ["ndcg", "fun"]}, "metrics"),
        ({"dataset": {"format": "movielens-100k"}}, "dataset"),
        ({"models": [{"kind": "als", "weighting": "log"}]}, "models.0.weighting"),
    ],
)
def test_spec_validation_errors_exit_2(tmp_path, change, field, monkeypatch):
    spec = {**SPEC, **change}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    res = _cli_inproc(["experiment", "run", str(path)], tmp_path / "data", monkeypatch)
    assert res.exit_code == 2, (res.output, res.exception)
    err = res.stderr.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1, err
    assert field in err
    assert not (tmp_path / "data" / "mlflow.db").exists()  # nothing tracked for a bad spec


def test_missing_spec_and_ranges_in_run(tmp_path, monkeypatch):
    # as a user runs it: a real process, one line on stderr, exit code 2
    proc = _cli(["experiment", "run", str(tmp_path / "absent.yaml")], tmp_path / "data")
    assert (
        proc.returncode == 2
        and proc.stderr.strip().startswith("error: spec not found")
        and len(proc.stderr.strip().splitlines()) == 1
    )
    spec = {**SPEC, "models": [{"kind": "als", "params": {"factors": {"low": 4, "high": 16}}}]}
    path = tmp_path / "ranges.yaml"
    path.write_text(yaml.safe_dump(spec))
    res = _cli_inproc(["experiment", "run", str(path)], tmp_path / "data", monkeypatch)
    assert res.exit_code == 2 and "params.factors" in res.stderr and "search" in res.stderr


def test_search_writes_trainable_best_config(experiment_run, tmp_path, monkeypatch):
    from pipelines.train import TrainConfig

    out = tmp_path / "best.yaml"
    res = _cli_inproc(
        [
            "experiment",
            "search",
            str(experiment_run["spec"]),
            "--trials",
            "4",
            "--out",
            str(out),
            "--report-dir",
            str(tmp_path / "search"),
        ],
        experiment_run["data"],
        monkeypatch,
    )
    assert res.exit_code == 0, (res.output, res.exception)
    cfg = TrainConfig.model_validate(yaml.safe_load(out.read_text()))
    assert cfg.model.kind in ("als", "ease")  # baselines and content encoders are not searched
    trials = pd.read_csv(tmp_path / "search" / "trials.csv")
    assert len(trials) == 4
    best = trials.sort_values("ndcg_at_10", ascending=False).iloc[0]
    assert cfg.model.kind == best["kind"] and cfg.weighting == best["weighting"]
    assert "best:" in res.stdout
    # every trial a child run of one search run
    client = _client(experiment_run["data"])
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id])
    search = [r for r in runs if r.data.tags.get("recsys.experiment.kind") == "search"]
    assert len(search) == 1
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == search[0].info.run_id]
    assert len(kids) == 4
    assert search[0].data.metrics["best_ndcg_at_10"] == pytest.approx(best["ndcg_at_10"])


def test_search_candidates_sample_ranges_and_grids():
    from experiments.search import candidates
    from experiments.spec import parse_spec

    spec = parse_spec(SPEC)
    configs = candidates(spec, 6)
    assert len(configs) == 6 and {c.kind for c in configs} == {"als", "ease"} or {c.kind for c in configs} == {"als"}
    regs = [c.params["regularization"] for c in configs if c.kind == "als"]
    assert all(0.001 <= r <= 1.0 for r in regs) and len(set(regs)) == len(regs)
    assert {c.weighting for c in configs} <= {"confidence", "bm25"}
    grid_spec = parse_spec(
        {
            **SPEC,
            "models": [{"kind": "als", "params": {"factors": [4, 8, 16]}, "weighting": ["bm25", "none"]}],
            "search": {"method": "grid", "trials": 100},
        }
    )
    grid = candidates(grid_spec, 100)
    assert len(grid) == 6 and len({(c.params["factors"], c.weighting) for c in grid}) == 6


def test_ease_matches_closed_form():
    import scipy.sparse as sp

    from recsys.models.base import TrainData
    from recsys.models.registry import make_model

    rng = np.random.default_rng(0)
    X = sp.csr_matrix((rng.random((40, 15)) < 0.3).astype(np.float32))
    model = make_model("ease", l2=5.0).fit(TrainData(X))
    G = X.T.toarray() @ X.toarray() + 5.0 * np.eye(15)
    # B minimizes |X - XB|² + λ|B|² s.t. diag(B) = 0: check the KKT condition off the diagonal
    B = model.B_.astype(np.float64)
    grad = G @ B - X.T.toarray() @ X.toarray()
    off = ~np.eye(15, dtype=bool)
    assert np.abs(grad[off]).max() < 1e-3
    assert np.allclose(np.diag(B), 0)
    np.testing.assert_allclose(model.user_vectors_ @ model.item_vectors_.T, X.toarray() @ B, atol=1e-4)
    np.testing.assert_allclose(model.fold_in(X[3].indices), X[3].toarray()[0])


@pytest.mark.skipif(not ML100K.exists(), reason="../shared/datasets/ml-100k absent")
def test_movielens_spec_is_valid():
    from experiments.spec import load_spec

    spec = load_spec(REPO / "experiments" / "movielens100k.yaml")
    assert spec.split.method == "stratified" and spec.split.ratio == 0.75
    assert {m.kind for m in spec.models} >= {"als", "bpr", "lightfm", "ease", "itemknn", "popular", "random", "tags"}
    load_spec(REPO / "experiments" / "synthetic.yaml")
