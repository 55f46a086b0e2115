"""What the `recsys` command prints for a person at a terminal: `model list` in 80 columns with
the dashboard's status and coverage, `--version`, flags without type hints, every config
problem at once, library logs only with `-v`, distinct experiment names, search progress.

Real parts: the registry is a real MLflow SQLite store (versions registered with real runs and
metrics), the command runs as a subprocess (its output is not a terminal: the 80-column
layout applies), the dashboard page comes from the app through TestClient.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from importlib.metadata import version as installed_version
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LONG_REASON = "gate: nDCG@10 0.1010 is below production's 0.1812 by more than the allowed 2% drop " * 2


def recsys(*args: str, data_dir: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_") and k != "MLFLOW_LOGGING_LEVEL"}
    full_env.update(
        RECSYS_DATA_DIR=str(data_dir), PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1", COLUMNS="200", **(env or {})
    )
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args], capture_output=True, text=True, env=full_env, timeout=300
    )


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Path:
    """A data folder whose MLflow registry holds three versions of ``recsys``: v1 promoted
    behind ``production`` (bias-report coverage only, as `recsys train` logs it), v2 rejected
    by the gate with a long reason, v3 an ensemble with a long kind."""
    from mlflow import MlflowClient

    from recsys.settings import Settings

    data_dir = tmp_path_factory.mktemp("registry") / "data"
    settings = Settings(data_dir=data_dir)
    data_dir.mkdir(parents=True)
    client = MlflowClient(settings.mlflow_tracking_uri)
    exp = client.create_experiment("recsys", artifact_location=settings.mlflow_artifact_root + "/recsys")
    client.create_registered_model(settings.registered_model_name)
    specs = [
        ({"ndcg_at_10": 0.181225, "recall_at_10": 0.2, "bias_coverage": 0.392}, {"kind": "als"}),
        ({"ndcg_at_10": 0.101, "recall_at_10": 0.15, "coverage": 0.25}, {"kind": "bpr", "rejected": LONG_REASON}),
        ({"ndcg_at_10": 0.181375, "bias_coverage": 0.5}, {"kind": "ensemble(ease+als+lightfm)"}),
    ]
    for metrics, tags in specs:
        run = client.create_run(exp)
        for key, value in metrics.items():
            client.log_metric(run.info.run_id, key, value)
        client.set_terminated(run.info.run_id)
        mv = client.create_model_version(
            settings.registered_model_name, f"runs:/{run.info.run_id}/bundle", run.info.run_id
        )
        for key, value in tags.items():
            client.set_model_version_tag(settings.registered_model_name, mv.version, key, value)
    client.set_registered_model_alias(settings.registered_model_name, "production", "1")
    return data_dir


def test_model_list_fits_80_columns_with_the_dashboards_status_and_coverage(registry):
    proc = recsys("model", "list", data_dir=registry)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, proc.stdout
    header = next(line for line in lines if line.split()[:1] == ["version"])
    for column in ("version", "alias", "status", "kind", "nDCG@10", "coverage", "created"):
        assert f"{column}" in header.split(), header  # whole names, none cut to "versi…"
    rows = {line.split()[0]: line for line in lines if line.strip()[:1].isdigit()}
    assert set(rows) == {"1", "2", "3"}
    assert "production" in rows["1"] and "promoted" in rows["1"] and "0.3920" in rows["1"]
    assert "rejected" in rows["2"] and "0.2500" in rows["2"]
    assert "ensemble" in rows["3"]
    assert LONG_REASON[:40] not in proc.stdout  # the reason is for --wide
    assert proc.stderr.strip() == ""  # no MLflow INFO lines without -v

    # the dashboard's models page shows the same status and coverage for the same versions
    from fastapi.testclient import TestClient

    from api.main import create_app
    from recsys.settings import Settings

    with TestClient(create_app(Settings(data_dir=registry, reload_poll_seconds=0))) as client:
        page = client.get("/ui/models").text
    assert "0.3920" in page and "promoted" in page and "rejected" in page


def test_model_list_wide_shows_every_column_whole(registry):
    proc = recsys("model", "list", "--wide", data_dir=registry)
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    for column in ("gate reason", "recall@10", "amplif.", "group gap", "tags"):
        assert column in text
    assert "ensemble(ease+als+lightfm)" in text
    assert "allowed 2% drop" in text and "0.2000" in text


def test_model_list_reads_the_registry_without_the_feature_store(registry):
    """`recsys model list` is quick: it imports neither the feature store (its tables,
    sqlmodel) nor the API package (the dashboard), nor creates an experiment (bench/cli_bench.py times it)."""
    code = (
        "import sys\nfrom cli.main import app\ntry:\n    app(['model', 'list'])\nexcept SystemExit:\n    pass\n"
        "print('LOADED', sorted(m for m in ('feature_store', 'api', 'sqlmodel') if m in sys.modules))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env.update(RECSYS_DATA_DIR=str(registry), PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert "LOADED []" in proc.stdout, proc.stdout + proc.stderr


def test_version_and_flags_without_type_hints(tmp_path):
    proc = recsys("--version", data_dir=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == f"recsys {installed_version('recsys-service')}"

    from typer.main import get_command
    from typer.testing import CliRunner

    from cli.main import app

    runner = CliRunner()
    command = get_command(app)
    paths = [[]] + [[name] for name in command.commands]
    paths += [[name, sub] for name, group in command.commands.items() for sub in getattr(group, "commands", {})]
    for path in paths:
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "160"})
        assert result.exit_code == 0, (path, result.output)
        assert "<bool>" not in result.output, (path, result.output)
    serve_help = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "160"}).output
    assert "--access-log" in serve_help and "<int range>" in serve_help  # value options keep their type


def test_a_config_error_lists_every_problem(tmp_path):
    bad = tmp_path / "train.yaml"
    bad.write_text(yaml.safe_dump({"test_ratio": 2, "k": "ten", "colour": "blue"}))
    proc = recsys("train", "--config", str(bad), data_dir=tmp_path / "data")
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: config "), proc.stderr
    for field in ("test_ratio", "k:", "colour: unknown key"):
        assert field in lines[0], lines[0]
    assert "more problem" not in lines[0]

    from experiments.spec import SpecError, parse_spec

    with pytest.raises(SpecError) as exc:
        parse_spec({"name": "x y", "k": [], "models": [{"kind": "als"}], "dataset": {"format": "synthetic"}})
    assert "name" in str(exc.value) and "k" in str(exc.value) and "more problem" not in str(exc.value)


def test_library_logs_only_with_verbose(tmp_path):
    quiet = recsys("model", "list", data_dir=tmp_path / "fresh")  # creates the MLflow database
    assert quiet.returncode == 0, quiet.stderr
    assert "INFO" not in quiet.stderr and "Creating initial MLflow database" not in quiet.stderr, quiet.stderr
    loud = recsys("-v", "model", "list", data_dir=tmp_path / "fresh-verbose")
    assert loud.returncode == 0, loud.stderr
    assert "Creating initial MLflow database" in " ".join(loud.stderr.split()), loud.stderr


def test_native_library_lines_become_debug_records(capfd, caplog, monkeypatch):
    from recsys.native_logs import native_stderr_as_debug

    monkeypatch.setattr(logging.getLogger(), "handlers", [caplog.handler])  # none left by a CliRunner run

    log = logging.getLogger("recsys.test.native")
    with caplog.at_level(logging.DEBUG, logger="recsys.test.native"), native_stderr_as_debug(log):
        os.write(2, b"I0000 00:00:1.0 partitioner_factory_base.cc:58] sampled 1000\n")
    assert "partitioner_factory_base" not in capfd.readouterr().err
    assert any("partitioner_factory_base" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)


def test_experiment_names_are_shown_as_written():
    import pandas as pd
    from rich.console import Console

    from experiments.report import rich_table
    from experiments.spec import load_spec

    names = [c.name for c in load_spec(ROOT / "experiments" / "quick.yaml").configs()]
    assert len(names) == len(set(names)) and "als[weighting=bm25]" in names
    df = pd.DataFrame({"ndcg_at_10": [0.12, 0.11], "precision_at_10": [0.05, 0.04]}, index=names[:2])
    for markup in (True, False):  # whatever console prints it
        console = Console(width=120, markup=markup, record=True)
        console.print(rich_table(df, 10))
        text = console.export_text()
        assert names[0] in text and names[1] in text and "[bold" not in text


def test_quick_spec_is_small():
    from experiments.spec import load_spec

    spec = load_spec(ROOT / "experiments" / "quick.yaml")
    assert spec.dataset.params["n_events"] <= 20_000 and len(spec.configs()) <= 8
    assert "seconds" not in (ROOT / "experiments" / "synthetic.yaml").read_text().splitlines()[0]


def test_search_reports_every_trial_with_best_and_eta(tmp_path):
    from pipelines.search import SearchConfig, TrialProgress, run_search
    from recsys.datasets.synthetic import generate_synthetic
    from recsys.settings import Settings

    settings = Settings(data_dir=tmp_path / "data")
    dataset = generate_synthetic(n_users=200, n_items=100, n_events=5000, n_clusters=4, seed=3)
    seen: list[TrialProgress] = []
    config = SearchConfig(trials=4, content="none", families=("als", "itemknn"), patience=100, max_seconds=600)
    run_search(settings, dataset, config, on_trial=seen.append)
    assert [p.done for p in seen] == [1, 2, 3, 4]
    assert all(p.total == 4 for p in seen)
    best = [p.best for p in seen]
    assert all(b is not None for b in best) and best == sorted(best)  # best so far never drops
    assert seen[-1].eta_seconds == 0.0 and seen[0].eta_seconds > 0
    assert all(p.eta_seconds <= p.max_seconds - p.elapsed + 1e-9 for p in seen)
