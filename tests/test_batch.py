"""Batch recommendations (recsys/batch.py, `recsys recommend --all-users`): the same lists as
the API's Recommender, through a real feature store, a real MLflow store and the real CLI."""

import os

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pipelines.train import (
    IndexConfig,
    ModelConfig,
    TrainConfig,
    build_bundle,
    fit_model,
)
from recsys.batch import batch_path, recommend_all, seen_matrix
from recsys.datasets.synthetic import generate_synthetic
from recsys.index import ExactIndex, HnswItemIndex
from recsys.matrix import InteractionMatrix
from recsys.recommender import NO_FILTERS, Filters, Recommender

pytestmark = pytest.mark.slow  # trains models or starts processes: not in make test-fast

K = 8


@pytest.fixture(scope="module")
def data():
    return generate_synthetic(n_users=400, n_items=300, n_events=12_000, n_clusters=5, seed=4)


def _bundle(data, kind: str):
    config = TrainConfig(
        model=ModelConfig(kind="als", params={"factors": 16, "iterations": 6}),
        index=IndexConfig(kind=kind, recall_queries=100),
    )
    full = InteractionMatrix.from_events(data.events, alpha=config.alpha)
    return build_bundle(config, fit_model(config.model, full, data), full, {})


def _catalog_with_unavailable(data):
    items = data.items.copy()
    items.loc[items.index[::7], "available"] = False  # every 7th item is off sale
    return items


def _assert_same_as_recommender(rec, data, batches, filters, sample):
    bundle = rec.bundle
    seen_ids = data.events.groupby("user_id")["item_id"].agg(list)
    by_row = {}
    for batch in batches:
        for i, row in enumerate(batch.user_rows):
            by_row[int(row)] = (batch.item_rows[i], batch.scores[i])
    assert sorted(by_row) == list(range(len(bundle.user_ids)))
    unavailable = set(data.items["item_id"].iloc[::7])  # as _catalog_with_unavailable set them
    for row in sample:
        user = str(bundle.user_ids[row])
        expected = rec.recommend_for_user(user, seen_ids.get(user, []), K, filters=filters, mode="collaborative").items
        ids, scores = by_row[row]
        got = [rec.item_ids[j] for j in ids if j >= 0]
        assert got == [it.item_id for it in expected], user
        np.testing.assert_allclose(scores[: len(got)], [it.score for it in expected], rtol=1e-4, atol=1e-5)
        assert not set(got) & set(seen_ids.get(user, [])) and not set(got) & unavailable


@pytest.mark.parametrize(("kind", "path"), [("exact", "scan"), ("hnsw", "index")])
@pytest.mark.parametrize("filtered", [False, True])
def test_batch_lists_are_the_recommenders(data, kind, path, filtered):
    bundle = _bundle(data, kind)
    rec = Recommender(bundle, _catalog_with_unavailable(data))
    assert batch_path(rec) == path
    filters = Filters(exclude_categories=[min({c for cs in rec.categories for c in cs})]) if filtered else NO_FILTERS
    seen = seen_matrix(data.events, bundle.user_ids, bundle.item_ids)
    batches = list(recommend_all(rec, seen, K, filters=filters, batch_size=64))
    sample = np.random.default_rng(0).choice(len(bundle.user_ids), 40, replace=False)
    _assert_same_as_recommender(rec, data, batches, filters, sample)


def test_exact_batch_over_an_hnsw_model_equals_exact_serving(data):
    bundle = _bundle(data, "hnsw")
    assert isinstance(bundle.indexes["user"], HnswItemIndex)
    rec = Recommender(bundle, _catalog_with_unavailable(data))
    seen = seen_matrix(data.events, bundle.user_ids, bundle.item_ids)
    assert batch_path(rec, exact=True) == "scan"
    batches = list(recommend_all(rec, seen, K, exact=True, batch_size=100))
    # the reference: the same model served with an exact index
    bundle.indexes["user"] = ExactIndex("dot").build(bundle.item_vectors)
    exact_rec = Recommender(bundle, _catalog_with_unavailable(data))
    _assert_same_as_recommender(exact_rec, data, batches, NO_FILTERS, np.arange(0, 400, 9))


def test_seen_matrix_ignores_unknown_ids(data):
    events = pd.DataFrame(
        {"user_id": ["u_new", data.users["user_id"].iloc[0]], "item_id": [data.items["item_id"].iloc[0], "i_new"]}
    )
    m = seen_matrix(
        events, np.array(["x", data.users["user_id"].iloc[0]], object), data.items["item_id"].to_numpy(object)
    )
    assert m.shape == (2, len(data.items)) and m.nnz == 0


# ---- the CLI ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_env(tmp_path_factory, data):
    from feature_store import FeatureStore
    from pipelines.train import train
    from recsys.settings import get_settings

    folder = tmp_path_factory.mktemp("batch")
    env = {"RECSYS_DATA_DIR": str(folder / "data")}
    saved = dict(os.environ)
    os.environ.update(env)
    for name in (
        "RECSYS_DATABASE_URL",
        "RECSYS_MLFLOW_TRACKING_URI",
        "RECSYS_MODEL_ALIAS",
        "RECSYS_REGISTERED_MODEL_NAME",
        "RECSYS_MLFLOW_ARTIFACT_ROOT",
    ):
        os.environ.pop(name, None)
    get_settings.cache_clear()
    try:
        settings = get_settings()
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        store = FeatureStore(settings.database_url)
        store.ingest(data)
        result = train(
            settings,
            TrainConfig(
                model=ModelConfig(kind="als", params={"factors": 16, "iterations": 6}),
                # every family measured: the small-catalog rule (exact_enough_ms) off
                index=IndexConfig(recall_queries=100, exact_enough_ms=0.0, exact_max_items=0),
            ),
        )
        yield {"settings": settings, "version": result.version, "folder": folder, "store": store}
    finally:
        os.environ.clear()
        os.environ.update(saved)
        get_settings.cache_clear()


def _invoke(*args):
    from cli.main import app

    return CliRunner().invoke(app, list(args), prog_name="recsys")


def test_cli_writes_parquet_with_the_api_rules(trained_env, data):
    from pipelines import tracking
    from recsys.bundle import ModelBundle

    out = trained_env["folder"] / "recs.parquet"
    result = _invoke("recommend", "--all-users", "--k", str(K), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "users/s" in result.output
    table = pq.read_table(out)
    assert table.column_names == ["user_id", "rank", "item_id", "score", "model_version"]
    frame = table.to_pandas()
    assert set(frame["model_version"]) == {trained_env["version"]}
    assert frame.groupby("user_id")["rank"].apply(lambda r: r.tolist() == list(range(1, len(r) + 1))).all()
    assert frame["user_id"].nunique() == data.events["user_id"].nunique()
    # the served model's own answers, user by user
    settings = trained_env["settings"]
    client = tracking.setup(settings)
    mv = tracking.resolve_alias(client, settings.registered_model_name, settings.model_alias)
    bundle = ModelBundle.load(tracking.fetch_bundle(settings, mv))
    rec = Recommender(bundle, trained_env["store"].items_frame())
    seen_ids = data.events.groupby("user_id")["item_id"].agg(list)
    for user in frame["user_id"].drop_duplicates().sample(25, random_state=1):
        expected = rec.recommend_for_user(user, seen_ids[user], K, mode="collaborative").items
        rows = frame[frame["user_id"] == user].sort_values("rank")
        assert rows["item_id"].tolist() == [it.item_id for it in expected]
        assert not set(rows["item_id"]) & set(seen_ids[user])


def test_cli_lists_equal_the_http_api_answers(trained_env, data):
    """The Parquet lists, user by user, equal GET /users/{id}/recommendations from the app serving
    the same model version (FastAPI TestClient over the real store and registry)."""
    from fastapi.testclient import TestClient

    from api.main import create_app

    out = trained_env["folder"] / "recs-http.parquet"
    result = _invoke("recommend", "--all-users", "--k", str(K), "--out", str(out))
    assert result.exit_code == 0, result.output
    frame = pq.read_table(out).to_pandas()
    settings = trained_env["settings"].model_copy(update={"api_keys": "batch-key", "reload_poll_seconds": 0})
    with TestClient(create_app(settings), headers={"X-API-Key": "batch-key"}) as client:
        for user in frame["user_id"].drop_duplicates().sample(30, random_state=2):
            r = client.get(f"/users/{user}/recommendations", params={"k": K, "mode": "collaborative"})
            assert r.status_code == 200, r.text
            body = r.json()
            rows = frame[frame["user_id"] == user].sort_values("rank")
            assert rows["item_id"].tolist() == [it["item_id"] for it in body["items"]], user
            np.testing.assert_allclose(rows["score"], [it["score"] for it in body["items"]], rtol=1e-4, atol=1e-5)
            assert set(rows["model_version"]) == {body["model_version"]} == {trained_env["version"]}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "--all-users"),
        (("--all-users", "--alias", "nope"), "no model version behind alias"),
        (("--all-users", "--version", "99"), "no version 99"),
        (("--all-users", "--k", "0"), "--k"),
        (("--all-users", "--exclude-item", "a/b"), "exclude_item"),
    ],
)
def test_cli_refuses_bad_input_and_writes_nothing(trained_env, args, message):
    out = trained_env["folder"] / "refused.parquet"
    result = _invoke("recommend", "--out", str(out), *args)
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and message in result.output
    assert not out.exists() and not list(out.parent.glob(".refused.parquet.*"))


def test_cli_refuses_a_missing_output_folder(trained_env):
    out = trained_env["folder"] / "no" / "such" / "recs.parquet"
    result = _invoke("recommend", "--all-users", "--out", str(out))
    assert result.exit_code == 2 and "does not exist" in result.output


# ---- the index choice as training records it ------------------------------------------------
def test_train_records_the_index_choice(trained_env):
    import json

    from mlflow.tracking import MlflowClient

    from pipelines import tracking

    settings = trained_env["settings"]
    client = tracking.setup(settings)
    mv = tracking.get_version(client, settings.registered_model_name, trained_env["version"])
    manifest = json.loads((tracking.fetch_bundle(settings, mv) / "manifest.json").read_text())
    choice = manifest["info"]["index_choice"]
    assert set(choice) == {"user", "item"}
    for role, c in choice.items():
        kinds = {cand["kind"] for cand in c["candidates"]}
        # every family measured (ivf_pq only by name: recsys/index/choice.py AUTO_KINDS)
        assert kinds == {"exact", "scann", "ivf_flat", "ivf_sq8", "hnsw", "annoy"} and c["kind"] in kinds
        assert manifest["indexes"][role]["kind"] == c["kind"]  # the index file written is the chosen kind
        chosen = next(cand for cand in c["candidates"] if cand["kind"] == c["kind"])
        assert chosen["recall_at_10"] >= 0.95
        # the recall lower bound first, then latency: nothing reaching the target was faster
        assert chosen["recall_lower_bound"] >= 0.95
        assert all(
            cand["query_ms_p50"] >= chosen["query_ms_p50"]
            for cand in c["candidates"]
            if cand["recall_lower_bound"] >= 0.95
        )
    run = MlflowClient(settings.mlflow_tracking_uri).get_run(mv.run_id)
    assert run.data.params["index_kind"] == "auto"
    assert run.data.params["index_user_kind"] == choice["user"]["kind"]
    assert run.data.metrics["index_user_recall_at_10"] >= 0.95 and run.data.metrics["index_user_query_ms"] > 0
    assert {
        "index_user_exact_query_ms_p50",
        "index_user_hnsw_recall_at_10",
        "index_user_scann_recall_at_10",
        "index_item_ivf_flat_query_ms_p50",
        "index_item_annoy_build_seconds",
    } <= set(run.data.metrics)
    assert mv.tags["index.user"] == manifest["info"]["index_user_serving"]
    # `recsys model list` shows it per version
    from cli.model import index_summary

    summary = index_summary(mv.tags, dict(run.data.metrics))
    user_part = next(p for p in summary.split("; ") if p.startswith("user "))
    assert (
        user_part.split()[1] == mv.tags["index.user"]
        and float(user_part.split()[2]) >= 0.95
        and user_part.endswith("ms")
    )
    listed = _invoke("model", "list", "--wide")  # the indexes column is one of --wide's
    assert listed.exit_code == 0, listed.output
    assert "index" in listed.output and f"{run.data.metrics['index_user_query_ms']:.2f}ms" in listed.output


@pytest.mark.parametrize("kind", ["annoy", "hnsw", "exact", "scann", "ivf_flat"])
def test_index_config_kind_forces_that_index(data, kind):
    from recsys.index import AnnoyItemIndex
    from recsys.index.ivf_index import IvfItemIndex
    from recsys.index.scann_index import ScannItemIndex

    bundle = _bundle(data, kind)
    expected = {
        "annoy": AnnoyItemIndex,
        "hnsw": HnswItemIndex,
        "exact": ExactIndex,
        "scann": ScannItemIndex,
        "ivf_flat": IvfItemIndex,
    }[kind]
    assert all(isinstance(index, expected) for index in bundle.indexes.values())
    assert [c["kind"] for c in bundle.info["index_choice"]["user"]["candidates"]] == [kind]


# ---- users with events stored after training ------------------------------------------------
@pytest.fixture(scope="module")
def fresh_env(tmp_path_factory, data):
    """A trained model, then events stored after its snapshot: more events (with values) for
    known users and the first events of two users the model never saw."""
    import time

    from feature_store import FeatureStore
    from pipelines.train import train
    from recsys.settings import Settings

    folder = tmp_path_factory.mktemp("batch-fresh")
    settings = Settings(data_dir=folder / "data", database_url="", mlflow_tracking_uri="", mlflow_artifact_root="")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = FeatureStore(settings.database_url)
    store.ingest(data)
    result = train(
        settings,
        TrainConfig(model=ModelConfig(kind="als", params={"factors": 16, "iterations": 6}), index=IndexConfig()),
    )
    time.sleep(1.1)  # SQLite stores created_at to the second: the events below are newer
    users = data.users["user_id"].tolist()[:12]
    items = data.items["item_id"].tolist()
    rng = np.random.default_rng(3)
    events = [
        {"user_id": u, "item_id": items[int(j)], "event_type": "rating", "value": float(rng.integers(1, 6))}
        for u in users
        for j in rng.choice(len(items), 3, replace=False)
    ]
    events += [{"user_id": u, "item_id": items[j], "value": 2.0} for u in ("new-a", "new-b") for j in (1, 5, 9)]
    store.add_events(events)
    return {"settings": settings, "version": result.version, "folder": folder, "users": [*users, "new-a", "new-b"]}


def test_cli_folds_in_fresh_users_as_the_api_does(fresh_env, monkeypatch):
    """Users with events stored after training (returning and new) get, in the Parquet file,
    the answer GET /users/{id}/recommendations gives them: the fold-in, not the trained vector."""
    from fastapi.testclient import TestClient

    from api.main import create_app
    from recsys.settings import get_settings

    settings = fresh_env["settings"]
    monkeypatch.setenv("RECSYS_DATA_DIR", str(settings.data_dir))
    for name in (
        "RECSYS_DATABASE_URL",
        "RECSYS_MLFLOW_TRACKING_URI",
        "RECSYS_MODEL_ALIAS",
        "RECSYS_REGISTERED_MODEL_NAME",
        "RECSYS_MLFLOW_ARTIFACT_ROOT",
    ):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    out = fresh_env["folder"] / "recs.parquet"
    try:
        result = _invoke("recommend", "--all-users", "--k", str(K), "--out", str(out))
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert "14 users with events since training folded in" in result.output
    frame = pq.read_table(out).to_pandas()
    assert {"new-a", "new-b"} <= set(frame["user_id"])
    served = settings.model_copy(update={"api_keys": "batch-key", "reload_poll_seconds": 0})
    with TestClient(create_app(served), headers={"X-API-Key": "batch-key"}) as client:
        for user in fresh_env["users"]:
            body = client.get(f"/users/{user}/recommendations", params={"k": K, "mode": "collaborative"}).json()
            assert body["strategy"] == "fold_in", body
            rows = frame[frame["user_id"] == user].sort_values("rank")
            assert rows["item_id"].tolist() == [it["item_id"] for it in body["items"]], user
            np.testing.assert_allclose(rows["score"], [it["score"] for it in body["items"]], rtol=1e-4, atol=1e-5)
