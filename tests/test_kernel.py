"""One training kernel: ``recsys train`` and the scheduled pipeline compose the same steps
(pipelines/steps.py), so the same snapshot and config register the same model through either,
on a real SQLite feature store and a real MLflow store."""

from __future__ import annotations

import numpy as np
import pytest

from feature_store import FeatureStore
from pipelines import tracking
from pipelines.config import PipelineConfig
from pipelines.pipeline import FAIL_ENV, run_pipeline
from pipelines.train import train
from recsys.bundle import ModelBundle
from recsys.datasets.synthetic import generate_synthetic
from recsys.settings import Settings

pytestmark = pytest.mark.slow  # trains models or starts processes: not in make test-fast

LIGHTFM = {"kind": "lightfm", "params": {"no_components": 16, "epochs": 5}}
CONFIGS = {
    "als": {"models": [{"kind": "als", "params": {"factors": 16, "iterations": 6, "regularization": 0.05}}]},
    # LightFM with the catalog's categories and the users' attributes as side features
    "lightfm_features": {"models": [{**LIGHTFM, "features": {"item_categories": True, "user_attributes": True}}]},
    # an ALS + LightFM ensemble beside a TF-IDF content encoder: the hybrid
    "hybrid_ensemble": {
        "models": [
            {
                "kind": "ensemble",
                "params": {
                    "members": [
                        {"kind": "als", "params": {"factors": 8, "iterations": 4}, "weight": 1.0},
                        {**LIGHTFM, "weight": 0.5},
                    ]
                },
            }
        ],
        "content": {"kind": "tfidf"},
    },
}


def _bundle(settings: Settings, version: str) -> ModelBundle:
    mv = tracking.get_version(tracking.setup(settings), settings.registered_model_name, version)
    return ModelBundle.load(tracking.fetch_bundle(settings, mv), verify=True)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_train_and_pipeline_register_the_same_model(tmp_path, monkeypatch, name):
    monkeypatch.setenv("RECSYS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv(FAIL_ENV, raising=False)
    settings = Settings(data_dir=tmp_path / "data")
    FeatureStore(settings.database_url).ingest(generate_synthetic(n_users=300, n_items=150, n_events=9000, seed=5))
    config = PipelineConfig.model_validate(
        {
            "name": name,
            **CONFIGS[name],
            "evaluation": {"eval_users": 250, "test_ratio": 0.15},
            "index": {"kind": "exact"},
            "gate": {"popularity_baseline": False},
        }
    )
    # what `recsys train --config` reads for this candidate; registered, not promoted, so the
    # pipeline then runs as a first run (no production model)
    train_config = config.train_config(config.models[0]).model_copy(update={"register_version": True})
    train_config.promote_alias = None
    trained = train(settings, train_config)
    piped = run_pipeline(settings, config, run_id=f"same-{name}")
    assert piped.version is not None and piped.version != trained.version

    a, b = _bundle(settings, trained.version), _bundle(settings, piped.version)
    assert a.kind == b.kind == config.models[0].kind
    np.testing.assert_array_equal(a.user_ids, b.user_ids)
    np.testing.assert_array_equal(a.item_ids, b.item_ids)
    np.testing.assert_array_equal(a.user_vectors, b.user_vectors)
    np.testing.assert_array_equal(a.item_vectors, b.item_vectors)
    assert a.fold_in == b.fold_in
    # the same holdout, the same fit on its train part, the same scoring
    assert trained.metrics == piped.metrics == a.info["metrics"] == b.info["metrics"]
    assert 0 < trained.metrics["eval_users"] <= 250 and trained.metrics["ndcg_at_10"] > 0
    if config.content is not None:
        np.testing.assert_array_equal(a.extras["content"], b.extras["content"])
        assert {"content_ndcg_at_10", "hybrid_ndcg_at_10"} <= set(trained.metrics)
