"""Spark as the ALS training engine (recsys.models.spark_als): the confidence mapping is exact,
accuracy matches implicit on MovieLens 100K, a Spark-trained version goes through train →
MLflow registry → API, and training runs on a real standalone Spark cluster on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import scipy.sparse as sp
from harness import free_port

from recsys.models.base import TrainData
from recsys.models.spark_als import (
    SparkALSEmbedder,
    SparkUnavailableError,
    require_spark,
)

pytestmark = [pytest.mark.spark, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
ML100K_CANDIDATES = [REPO.parent / "shared" / "datasets" / "ml-100k", Path("/work/shared/datasets/ml-100k")]
ML100K = next((p for p in ML100K_CANDIDATES if (p / "u.data").exists()), None)
SMALL = {"factors": 16, "regularization": 0.05, "iterations": 5}


def _local_spark(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip without pyspark or Java, except under CI (env CI set), where that is a failure;
    point the engine at ``local[2]``."""
    try:
        require_spark()
    except SparkUnavailableError as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    monkeypatch.setenv("RECSYS_SPARK_MASTER", "local[2]")
    monkeypatch.setenv("RECSYS_SPARK_DRIVER_MEMORY", "1g")
    monkeypatch.delenv("RECSYS_SPARK_CONF", raising=False)
    monkeypatch.delenv("RECSYS_SPARK_WORK_DIR", raising=False)


@pytest.fixture(autouse=True)
def spark_available(monkeypatch):
    _local_spark(monkeypatch)


@pytest.fixture(scope="module")
def local_fit(tmp_path_factory) -> tuple[sp.csr_matrix, SparkALSEmbedder, Path]:
    """One small Spark ALS fit on ``local[2]`` (with a work folder) shared by the tests below."""
    work = tmp_path_factory.mktemp("spark-work")
    with pytest.MonkeyPatch.context() as mp:
        _local_spark(mp)
        mp.setenv("RECSYS_SPARK_WORK_DIR", str(work))
        matrix = small_matrix()
        return matrix, SparkALSEmbedder(**SMALL).fit(TrainData(matrix)), work


def small_matrix(seed: int = 3) -> sp.csr_matrix:
    from recsys.datasets.synthetic import generate_synthetic
    from recsys.matrix import InteractionMatrix

    data = generate_synthetic(n_users=300, n_items=150, n_events=6_000, n_clusters=4, seed=seed)
    return InteractionMatrix.from_events(data.events, weighting="confidence", alpha=2.0).matrix


def test_user_vectors_solve_the_implicit_normal_equations(local_fit):
    """Spark's last sweep solves users against the final items. With our mapping each user
    vector must be the Hu–Koren–Volinsky solve with confidence c = the matrix entry (what
    implicit uses) and Spark's ALS-WR penalty regParam·n_u: a wrong alpha/rating mapping fails."""
    from recsys.models.als import als_user_solve

    matrix, model, work = local_fit
    assert model.user_vectors_.dtype == np.float32 and model.item_vectors_.dtype == np.float32
    assert model.user_vectors_.shape == (matrix.shape[0], 16) and model.item_vectors_.shape == (matrix.shape[1], 16)
    assert model.kind == "als" and model.metric == "dot"
    assert model.spark_application_id_.startswith("local-")
    assert list(work.iterdir()) == []  # the hand-off folder is cleaned up
    counts = np.diff(matrix.indptr)
    users = np.flatnonzero(counts)[:40]
    for u in users:
        items, conf = (
            matrix.indices[matrix.indptr[u] : matrix.indptr[u + 1]],
            matrix.data[matrix.indptr[u] : matrix.indptr[u + 1]],
        )
        expected = als_user_solve(model.item_vectors_, items, conf, model.reg_param_ * counts[u])
        np.testing.assert_allclose(model.user_vectors_[u], expected, rtol=2e-3, atol=2e-4)
    # fold_in answers like the implicit-trained model's (implicit's λ), close to the trained vector
    u = users[0]
    folded = model.fold_in(
        matrix.indices[matrix.indptr[u] : matrix.indptr[u + 1]], matrix.data[matrix.indptr[u] : matrix.indptr[u + 1]]
    )
    assert (
        np.dot(folded, model.user_vectors_[u]) / (np.linalg.norm(folded) * np.linalg.norm(model.user_vectors_[u])) > 0.9
    )


@pytest.mark.skipif(ML100K is None, reason="MovieLens 100K absent (../shared/datasets/ml-100k)")
def test_movielens_ndcg_within_ten_percent_of_implicit():
    from pipelines.train import TrainConfig
    from recsys.datasets import load_movielens_100k
    from recsys.evaluation.metrics import ranking_metrics_at_k
    from recsys.evaluation.splits import random_split
    from recsys.evaluation.topk import top_k_scores
    from recsys.matrix import InteractionMatrix
    from recsys.models.als import ALSEmbedder

    config = TrainConfig()  # the default params: 64 factors, λ 0.05, 15 iterations, confidence α 2
    data = load_movielens_100k(ML100K)
    full = InteractionMatrix.from_events(data.events, weighting=config.weighting, alpha=config.alpha)
    split = random_split(data.events, test_ratio=0.2, seed=42)
    train = InteractionMatrix.from_events(
        split.train, user_ids=full.user_ids, item_ids=full.item_ids, weighting=config.weighting, alpha=config.alpha
    )
    test = InteractionMatrix.from_events(split.test, user_ids=full.user_ids, item_ids=full.item_ids, weighting="none")
    users = np.flatnonzero(np.diff(test.matrix.indptr) > 0)

    def ndcg(model) -> float:
        top = top_k_scores(
            model.user_vectors_, model.item_vectors_, 10, exclude=train.matrix[users], user_rows=users, metric="dot"
        )[0]
        return float(ranking_metrics_at_k(top, test.matrix, 10, user_rows=users)["ndcg"])

    implicit_ndcg = ndcg(ALSEmbedder(**config.model.params).fit(TrainData(train.matrix)))
    spark_ndcg = ndcg(SparkALSEmbedder(**config.model.params).fit(TrainData(train.matrix)))
    assert implicit_ndcg > 0.2  # a real model, not two equally broken ones
    assert abs(spark_ndcg - implicit_ndcg) <= 0.10 * implicit_ndcg, (spark_ndcg, implicit_ndcg)


def test_spark_trained_version_is_registered_promoted_and_served(tmp_path):
    from fastapi.testclient import TestClient

    from api.main import create_app
    from feature_store import FeatureStore
    from pipelines import tracking
    from pipelines.train import IndexConfig, ModelConfig, TrainConfig, train
    from recsys.bundle import ModelBundle
    from recsys.datasets.synthetic import generate_synthetic
    from recsys.matrix import InteractionMatrix
    from recsys.models.als import ALSEmbedder
    from recsys.settings import Settings

    settings = Settings(data_dir=tmp_path / "data", reload_poll_seconds=0)
    assert settings.mlflow_tracking_uri.startswith("sqlite:///")
    data = generate_synthetic(n_users=400, n_items=200, n_events=12_000, n_clusters=5, seed=11)
    FeatureStore(settings.database_url).ingest(data)
    config = TrainConfig(
        model=ModelConfig(kind="als", engine="spark", params=SMALL),
        index=IndexConfig(n_trees=10, recall_queries=50),
        eval_users=300,
    )
    result = train(settings, config)
    assert result.version == "1"
    assert result.metrics["ndcg_at_10"] > 0.05  # clustered data: a working model beats random by far

    client = tracking.setup(settings)
    version = tracking.resolve_alias(client, settings.registered_model_name, "production")
    assert str(version.version) == "1"
    # The registered bundle holds Spark's factors: a direct Spark fit (same seed) on the same
    # matrix reproduces them, and they are not implicit's.
    bundle = ModelBundle.load(tracking.fetch_bundle(settings, version))
    assert bundle.kind == "als" and bundle.metric == "dot" and bundle.item_vectors.dtype == np.float32
    events = FeatureStore(settings.database_url).snapshot().events
    full = InteractionMatrix.from_events(events, weighting=config.weighting, alpha=config.alpha)
    assert list(full.item_ids) == list(bundle.item_ids)
    np.testing.assert_allclose(
        bundle.item_vectors, SparkALSEmbedder(**SMALL).fit(TrainData(full.matrix)).item_vectors_, rtol=1e-3, atol=1e-4
    )
    assert not np.allclose(
        bundle.item_vectors, ALSEmbedder(**SMALL).fit(TrainData(full.matrix)).item_vectors_, atol=1e-2
    )

    user = str(data.events["user_id"].iloc[0])
    with TestClient(create_app(settings)) as api:
        assert api.get("/ready").json()["model_version"] == "1"
        r = api.get(f"/users/{user}/recommendations", params={"k": 5})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_version"] == "1" and len(body["items"]) == 5
        seen = set(data.events.loc[data.events["user_id"] == user, "item_id"].astype(str))
        assert not seen & {i["item_id"] for i in body["items"]}
        # an anonymous session is folded in with ALS's solve over the Spark-trained item vectors
        items = sorted(seen)[:3]
        r = api.post("/recommendations", json={"item_ids": items, "k": 5})
        assert r.status_code == 200, r.text
        assert r.json()["strategy"] == "fold_in" and len(r.json()["items"]) == 5


# ---------------------------------------------------------------------------------------------
# A real standalone cluster: one master and one worker process on 127.0.0.1
# ---------------------------------------------------------------------------------------------


def _status(url: str) -> dict:
    """The master's JSON status; ``{}`` while its web UI is not answering JSON yet."""
    try:
        r = httpx.get(url, timeout=2)
        return r.json() if r.status_code == 200 else {}
    except (httpx.HTTPError, ValueError):
        return {}


def _wait_for(what: str, check, timeout: float, procs: list[subprocess.Popen], log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(
                    f"a Spark daemon exited ({p.returncode}) while waiting for {what}: {log.read_text()[-3000:]}"
                )
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise TimeoutError(f"{what} not within {timeout}s: {log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # its own process group: the daemon and its executors
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@contextmanager
def standalone_cluster(folder: Path) -> Iterator[tuple[str, str]]:
    """Start a Spark master and a 1-core worker with the launcher pyspark ships; yields the
    master URL and its web UI's JSON status URL; stops both afterwards."""
    import pyspark

    spark_home = Path(pyspark.__file__).parent
    spark_class = str(spark_home / "bin" / "spark-class")
    env = {
        **os.environ,
        "SPARK_HOME": str(spark_home),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_DAEMON_MEMORY": "256m",
        "SPARK_NO_DAEMONIZE": "1",
    }
    port, ui_port, worker_ui_port = free_port(), free_port(), free_port()
    master_url, status_url = f"spark://127.0.0.1:{port}", f"http://127.0.0.1:{ui_port}/json/"
    log = folder / "cluster.log"
    procs: list[subprocess.Popen] = []
    with open(log, "wb") as out:
        try:
            procs.append(
                subprocess.Popen(
                    [
                        spark_class,
                        "org.apache.spark.deploy.master.Master",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(port),
                        "--webui-port",
                        str(ui_port),
                    ],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            _wait_for("the master", lambda: _status(status_url).get("status") == "ALIVE", 90, procs, log)
            (folder / "worker").mkdir()
            procs.append(
                subprocess.Popen(
                    [
                        spark_class,
                        "org.apache.spark.deploy.worker.Worker",
                        "--host",
                        "127.0.0.1",
                        "--cores",
                        "1",
                        "--memory",
                        "1g",
                        "--webui-port",
                        str(worker_ui_port),
                        "--work-dir",
                        str(folder / "worker"),
                        master_url,
                    ],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            _wait_for(
                "the worker to register",
                lambda: any(w["state"] == "ALIVE" for w in _status(status_url).get("workers", [])),
                90,
                procs,
                log,
            )
            yield master_url, status_url
        finally:
            for p in reversed(procs):
                _stop(p)


def test_trains_on_a_standalone_cluster(local_fit, tmp_path, monkeypatch):
    matrix, local, _ = local_fit
    with standalone_cluster(tmp_path) as (master_url, status_url):
        monkeypatch.setenv("RECSYS_SPARK_MASTER", master_url)
        # The driver (this process) must be reachable by the executor the worker starts.
        monkeypatch.setenv(
            "RECSYS_SPARK_CONF",
            json.dumps(
                {
                    "spark.driver.host": "127.0.0.1",
                    "spark.driver.bindAddress": "127.0.0.1",
                    "spark.executor.memory": "512m",
                    "spark.cores.max": "1",
                }
            ),
        )
        monkeypatch.setenv("RECSYS_SPARK_WORK_DIR", str(tmp_path / "work"))
        remote = SparkALSEmbedder(**SMALL).fit(TrainData(matrix))
        app_id = remote.spark_application_id_
        assert app_id.startswith("app-"), app_id  # a standalone master's id, not local-…
        completed = _wait_for(
            "the application to be listed as completed",
            lambda: [a for a in _status(status_url).get("completedapps", []) if a["id"] == app_id],
            30,
            [],
            tmp_path / "cluster.log",
        )
        assert completed[0]["state"] == "FINISHED"
    # Same seed, same blocks (2): the cluster's factors are the local run's.
    np.testing.assert_allclose(remote.user_vectors_, local.user_vectors_, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(remote.item_vectors_, local.item_vectors_, rtol=1e-3, atol=1e-4)


def test_engine_spark_only_for_als():
    from pydantic import ValidationError

    from pipelines.train import ModelConfig

    with pytest.raises(ValidationError, match="engine 'spark' trains kind 'als' only"):
        ModelConfig(kind="bpr", engine="spark")
    assert ModelConfig(kind="als", engine="spark").engine == "spark"


def test_missing_pyspark_or_java_is_a_clear_error(monkeypatch):
    with monkeypatch.context() as without_pyspark:
        without_pyspark.setitem(sys.modules, "pyspark", None)  # as if the extra were not installed
        with pytest.raises(SparkUnavailableError, match=r"pip install 'recsys-service\[spark\]'"):
            SparkALSEmbedder(**SMALL).fit(TrainData(sp.identity(3, format="csr", dtype=np.float32)))
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(SparkUnavailableError, match="needs a Java runtime"):
        require_spark()
