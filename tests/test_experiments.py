"""Experiments end to end: spec → CLI → MLflow parent/child runs → report; validation errors;
search → TrainConfig YAML; compare reproduces the logged metrics."""

from __future__ import annotations

import json
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
    # the index training's measured choice picked (recsys/index/choice.py), named per model
    from recsys.index.choice import AUTO_KINDS

    assert df["index"].isin(AUTO_KINDS).all(), df["index"]
    from experiments.report import rich_table

    table = rich_table(df, 10)
    headers = [str(c.header) for c in table.columns]
    assert "index R@10" in headers and "annoy R@10" not in headers
    shown = [str(cell) for cell in table.columns[headers.index("index")]._cells]
    assert shown == list(df["index"])
    assert df.loc["ease", "index"] in experiment_run["stdout"]  # the terminal table names it too
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
        assert r.data.params["index.kind"] == df.loc[name, "index"]  # compare reads it back
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


def _search_runs(data_dir: Path, experiment: str):
    """The experiment's search parent runs and, per parent, its child (trial) runs."""
    client = _client(data_dir)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parents = [r for r in runs if r.data.tags.get("recsys.experiment.kind") == "search"]
    return parents, {
        p.info.run_id: [r for r in runs if r.data.tags.get("mlflow.parentRunId") == p.info.run_id] for p in parents
    }


def test_search_writes_trainable_best_config(experiment_run, tmp_path, monkeypatch):
    """`recsys experiment search` runs the one search (pipelines/search.py) over the spec's
    spaces: random draws within the ranges and lists, one MLflow child run per trial."""
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
    assert (tmp_path / "search" / "best.yaml").read_text() == out.read_text()
    trials = pd.read_csv(tmp_path / "search" / "trials.csv")
    assert len(trials) == 4 and (trials["state"] == "complete").all()
    assert set(trials["kind"]) <= {"als", "ease"}
    # the spec's space: regularization drawn in its log range, weighting from its list, factors
    # from the model's list; ease has no dimension, so it is tried once
    als = trials[trials["kind"] == "als"]
    params = [json.loads(p) for p in als["params"]]
    assert all(0.001 <= p["regularization"] <= 1.0 and p["factors"] in (8, 16) for p in params)
    assert len({p["regularization"] for p in params}) == len(params)
    assert set(als["weighting"]) <= {"confidence", "bm25"}
    assert (trials["kind"] == "ease").sum() == 1
    best = trials.iloc[0]  # best first; every trial is tuned, so the best is chosen
    assert trials["ndcg_at_10"].iloc[0] == trials["ndcg_at_10"].max()
    assert cfg.model.kind == best["kind"] and cfg.weighting == best["weighting"]
    assert "best:" in res.stdout
    # every trial a child run of one search run, in the spec's MLflow experiment
    parents, children = _search_runs(experiment_run["data"], "tiny")
    assert len(parents) == 1
    kids = children[parents[0].info.run_id]
    assert sorted(r.info.run_id for r in kids) == sorted(trials["run_id"])
    assert parents[0].data.metrics["best_ndcg_at_10"] == pytest.approx(best["ndcg_at_10"])
    assert parents[0].data.tags["recsys.experiment.spec"] == "tiny"


def test_grid_search_runs_every_point_through_the_one_search(tmp_path, monkeypatch):
    """``search.method: grid``: every combination of the lists is a trial of the one search,
    each recorded as an MLflow child run with its parameters; fewer trials asked, a seeded sample."""
    spec = {
        **SPEC,
        "name": "tiny-grid",
        "models": [
            {"kind": "als", "params": {"factors": [4, 8], "iterations": 5}, "weighting": ["bm25", "none"]},
            {"kind": "ease", "params": {"l2": [10.0, 50.0]}},
            {"kind": "popular"},
        ],
        "search": {"method": "grid", "trials": 100, "metric": "recall@5"},
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(spec))
    data = tmp_path / "data"
    res = _cli_inproc(["experiment", "search", str(path), "--report-dir", str(tmp_path / "rep")], data, monkeypatch)
    assert res.exit_code == 0, (res.output, res.exception)
    trials = pd.read_csv(tmp_path / "rep" / "trials.csv")
    points = {
        (k, json.loads(p).get("factors"), json.loads(p).get("l2"), w)
        for k, p, w in zip(trials["kind"], trials["params"], trials["weighting"])
    }
    assert points == {
        ("als", 4, None, "bm25"),
        ("als", 4, None, "none"),
        ("als", 8, None, "bm25"),
        ("als", 8, None, "none"),
        ("ease", None, 10.0, "confidence"),
        ("ease", None, 50.0, "confidence"),
    }
    assert trials["recall_at_5"].notna().all()
    parents, children = _search_runs(data, "tiny-grid")
    (parent,) = parents
    kids = children[parent.info.run_id]
    assert len(kids) == 6 and all(r.info.status == "FINISHED" for r in kids)
    logged = {
        (
            r.data.params["kind"],
            r.data.params.get("param.factors"),
            r.data.params.get("param.l2"),
            r.data.params["weighting"],
        )
        for r in kids
    }
    assert logged == {(k, None if f is None else str(f), None if l2 is None else str(l2), w) for k, f, l2, w in points}
    assert all("recall_at_5" in r.data.metrics for r in kids)
    assert parent.data.params["method"] == "grid" and parent.data.params["metric"] == "recall_at_5"

    # three trials of the same grid: a seeded sample of its points, in a study of its own
    res = _cli_inproc(
        ["experiment", "search", str(path), "--trials", "3", "--report-dir", str(tmp_path / "rep3")], data, monkeypatch
    )
    assert res.exit_code == 0, (res.output, res.exception)
    three = pd.read_csv(tmp_path / "rep3" / "trials.csv")
    assert len(three) == 3 and set(three["params"]) <= set(trials["params"])


def test_search_refuses_a_metric_it_cannot_maximize(tmp_path, monkeypatch):
    path = tmp_path / "gini.yaml"
    path.write_text(yaml.safe_dump({**SPEC, "search": {"metric": "gini@10"}}))
    res = _cli_inproc(["experiment", "search", str(path)], tmp_path / "data", monkeypatch)
    assert res.exit_code == 2, (res.output, res.exception)
    assert res.stderr.strip().startswith("error: search.metric") and "ndcg" in res.stderr
    assert not (tmp_path / "data" / "mlflow.db").exists()


def test_spec_models_map_onto_the_search_space():
    from experiments.runner import search_families
    from experiments.spec import parse_spec
    from pipelines.search import Choice, Span

    spec = parse_spec(
        {
            **SPEC,
            "models": [
                {
                    "kind": "als",
                    "params": {"factors": [8, 16], "iterations": 5},
                    "search": {
                        "regularization": {"low": 0.001, "high": 1.0, "log": True},
                        "weighting": ["confidence", "bm25"],
                    },
                },
                {"kind": "als", "params": {"factors": {"low": 4, "high": 32}}},
                {"kind": "tags"},
                {"kind": "popular"},
            ],
        }
    )
    first, second = search_families(spec)  # baselines and content encoders are not searched
    assert (first.name, second.name) == ("als", "als#2")
    assert first.dimensions == {
        "factors": Choice((8, 16)),
        "regularization": Span(0.001, 1.0, log=True),
        "weighting": Choice(("confidence", "bm25")),
    }
    assert first.config.params["iterations"] == 5 and first.size() is None
    assert second.dimensions == {"factors": Span(4, 32, integer=True)}
    with pytest.raises(ValueError, match="range"):
        first.grid()


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
