"""The model the server currently answers with, and how it is (re)loaded from MLflow."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from feature_store import FeatureStore
from pipelines import tracking
from recsys.bundle import ModelBundle
from recsys.recommender import Recommender
from recsys.settings import Settings

logger = logging.getLogger(__name__)


class ModelNotReady(RuntimeError):
    pass


@dataclass(frozen=True)
class LoadedModel:
    version: str
    run_id: str
    recommender: Recommender


class ModelHolder:
    """Holds the served model; a reload builds the new one fully, then swaps one reference."""

    def __init__(self, settings: Settings, store: FeatureStore) -> None:
        self.settings = settings
        self.store = store
        self._current: LoadedModel | None = None
        self._lock = threading.Lock()

    @property
    def current(self) -> LoadedModel:
        model = self._current
        if model is None:
            raise ModelNotReady(
                f"no model is loaded: train one (recsys train) so that alias "
                f"{self.settings.registered_model_name}@{self.settings.model_alias} exists"
            )
        return model

    @property
    def ready(self) -> bool:
        return self._current is not None

    def load_alias(self, alias: str | None = None) -> LoadedModel | None:
        """Load the version behind the alias; on any failure keep serving the old model."""
        alias = alias or self.settings.model_alias
        client = tracking.setup(self.settings)
        version = tracking.resolve_alias(client, self.settings.registered_model_name, alias)
        if version is None:
            logger.warning("no model version behind alias %s@%s", self.settings.registered_model_name, alias)
            return None
        with self._lock:
            if self._current is not None and self._current.version == str(version.version):
                return self._current
            path = tracking.fetch_bundle(self.settings, version)
            bundle = ModelBundle.load(path, verify=True)
            recommender = Recommender(bundle, self.store.items_frame())
            self._current = LoadedModel(version=str(version.version), run_id=version.run_id, recommender=recommender)
        logger.info("serving model version %s (%s)", version.version, bundle.kind)
        return self._current
