"""One typed settings object for the whole service (env prefix ``RECSYS_``).

Defaults give the embedded setup: everything lives under one local data folder
(``./.recsys`` unless ``RECSYS_DATA_DIR`` says otherwise): a SQLite feature store,
a SQLite MLflow tracking store with a local artifact folder, and index caches.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECSYS_", extra="ignore")

    data_dir: Path = Path(".recsys")
    database_url: str = ""
    mlflow_tracking_uri: str = ""
    mlflow_artifact_root: str = ""
    experiment_name: str = "recsys"
    registered_model_name: str = "recsys"
    model_alias: str = "production"

    @model_validator(mode="after")
    def _fill_defaults(self) -> "Settings":
        self.data_dir = Path(self.data_dir).expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'feature_store.db'}"
        if not self.mlflow_tracking_uri:
            self.mlflow_tracking_uri = f"sqlite:///{self.data_dir / 'mlflow.db'}"
        if not self.mlflow_artifact_root:
            self.mlflow_artifact_root = (self.data_dir / "mlartifacts").as_uri()
        return self

    @property
    def cache_dir(self) -> Path:
        """Local copies of downloaded model bundles (indexes are memory-mapped from here)."""
        return self.data_dir / "cache"


@lru_cache
def get_settings() -> Settings:
    return Settings()
