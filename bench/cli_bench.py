"""`recsys model list` against the least any MLflow client must do to list the same versions.

A registry of 20 versions (real MLflow SQLite store, a run with metrics per version) is listed
by (a) a bare script: import MLflow, search the versions, read each run — the floor, since the
list shows the runs' metrics — and (b) ``python -m cli.main model list``. Each is run
``REPEAT`` times in fresh processes; the best wall time of each counts (the machine is
shared). Target: the command costs at most ``TARGET`` × the floor (typer, rich, the settings
and the table on top of MLflow; no feature store, no experiment creation).

    python bench/cli_bench.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VERSIONS = 20
REPEAT = 3
TARGET = 1.5

FLOOR = """
import sys
from mlflow import MlflowClient
client = MlflowClient(sys.argv[1])
for v in client.search_model_versions("name='recsys'"):
    client.get_run(v.run_id)
"""


def make_registry(data_dir: Path) -> str:
    from mlflow import MlflowClient

    from recsys.settings import Settings

    settings = Settings(data_dir=data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(settings.mlflow_tracking_uri)
    exp = client.create_experiment("recsys", artifact_location=settings.mlflow_artifact_root + "/recsys")
    client.create_registered_model(settings.registered_model_name)
    for i in range(VERSIONS):
        run = client.create_run(exp)
        for key in ("ndcg_at_10", "recall_at_10", "bias_coverage", "bias_amplification"):
            client.log_metric(run.info.run_id, key, 0.1 + i / 1000)
        client.set_terminated(run.info.run_id)
        mv = client.create_model_version(settings.registered_model_name, f"runs:/{run.info.run_id}/b", run.info.run_id)
        client.set_model_version_tag(settings.registered_model_name, mv.version, "kind", "als")
    client.set_registered_model_alias(settings.registered_model_name, "production", "1")
    return settings.mlflow_tracking_uri


def best_of(argv: list[str], env: dict[str, str]) -> float:
    times = []
    for _ in range(REPEAT):
        start = time.perf_counter()
        subprocess.run(argv, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        uri = make_registry(data_dir)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
        env.update(RECSYS_DATA_DIR=str(data_dir), PYTHONPATH=str(ROOT), MLFLOW_LOGGING_LEVEL="WARNING")
        floor = best_of([sys.executable, "-c", FLOOR, uri], env)
        command = best_of([sys.executable, "-m", "cli.main", "model", "list"], env)
    load = os.getloadavg()[0]
    ratio = command / floor
    ok = ratio <= TARGET
    print(f"{'what':<44} {'best of ' + str(REPEAT) + ' (s)':>16}")
    print(f"{'MLflow: import, search versions, read runs':<44} {floor:>16.2f}")
    print(f"{'recsys model list':<44} {command:>16.2f}")
    print(
        f"model list {command:.2f}s = {ratio:.2f}x the bare MLflow listing ({VERSIONS} versions), "
        f"target <= {TARGET}x: {'PASS' if ok else 'FAIL'} (load {load:.1f})"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
