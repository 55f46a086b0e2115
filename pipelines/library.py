"""The Python API: the two things a library user does, each through the path the service uses.

- :func:`train` trains from a pandas DataFrame of events (or a :class:`~recsys.datasets.Dataset`
  with a catalog and users) exactly what ``recsys train --config`` trains — the same
  :class:`~pipelines.train.TrainConfig`, holdout metrics, indexes, bundle, MLflow run and
  registered version behind the alias — and returns the :class:`~pipelines.train.TrainResult`.
- :func:`load` gives a :class:`~recsys.recommender.Recommender` (the serving core the HTTP API
  wraps) over the verified bundle of a registered version, of the version behind an alias, or of
  a bundle folder on disk.

Where things are stored is :class:`~recsys.settings.Settings` (``RECSYS_*``; by default the
embedded setup under ``./.recsys``), read here when not passed in.

    >>> from pipelines.library import load, train
    >>> result = train(events_frame)                      # doctest: +SKIP
    >>> load().recommend_for_user("u1", k=5).items        # doctest: +SKIP
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from pipelines import tracking
from pipelines.train import TrainConfig, TrainResult
from pipelines.train import train as train_pipeline
from recsys.bundle import ModelBundle
from recsys.datasets.base import Dataset
from recsys.recommender import Recommender
from recsys.settings import Settings

logger = logging.getLogger(__name__)

__all__ = ["TrainConfig", "TrainResult", "load", "train"]


def train(
    data: pd.DataFrame | Dataset, config: TrainConfig | None = None, *, settings: Settings | None = None
) -> TrainResult:
    """Train ``config`` (default: ``TrainConfig()``, ALS) on ``data`` and register the version.

    ``data`` is an events frame (``user_id``, ``item_id``; optional ``value``, ``timestamp``,
    ``event_type``, ``event_id``: the Dataset contract) or a Dataset, whose ``items`` give
    LightFM's side features and the content encoders their text. The version gets
    ``config.promote_alias`` (``production`` by default) unless that is None.
    """
    dataset = data if isinstance(data, Dataset) else Dataset(data, name="dataframe")
    return train_pipeline(settings or Settings(), config or TrainConfig(), dataset=dataset)


def load(
    alias: str | None = None,
    *,
    version: str | int | None = None,
    path: str | Path | None = None,
    catalog: pd.DataFrame | None = None,
    settings: Settings | None = None,
) -> Recommender:
    """The recommender of one trained model: the version behind ``alias`` (default
    ``settings.model_alias``), a registered ``version``, or the bundle folder at ``path``.

    Every file of the bundle is verified on load (a bundle that fails is never served).
    ``catalog`` (items frame: titles, categories, availability) is what filters and answers
    read; without it items are known by id only. Raises ``ValueError`` naming what is missing.
    """
    if sum(x is not None for x in (alias, version, path)) > 1:
        raise ValueError("give one of alias, version or path")
    if path is not None:
        bundle = ModelBundle.load(Path(path), verify=True)
    else:
        settings = settings or Settings()
        bundle = load_bundle(settings, registered_version(settings, alias, version))
    return Recommender(bundle, catalog)


def registered_version(settings: Settings, alias: str | None = None, version: str | None = None):
    """The registry's model version: ``version``, or the one behind ``alias`` (default
    ``settings.model_alias``). Raises ``ValueError`` naming what is missing."""
    client = tracking.setup(settings)
    name = settings.registered_model_name
    if version is not None:
        mv = tracking.get_version(client, name, version)
        if mv is None:
            raise ValueError(f"no version {version} of model {name!r}")
        return mv
    alias = alias or settings.model_alias
    mv = tracking.resolve_alias(client, name, alias)
    if mv is None:
        raise ValueError(f"no model version behind alias {name}@{alias}: train one first (recsys train)")
    return mv


def load_bundle(settings: Settings, mv) -> ModelBundle:
    """A registered version's bundle, fetched and verified file by file."""
    fetched = tracking.fetch_bundle_checked(settings, mv)
    bundle = ModelBundle.load(fetched.path, verify=True, manifest_sha256=fetched.manifest_sha256)
    logger.info("loaded %s version %s (%s)", settings.registered_model_name, mv.version, bundle.kind)
    return bundle
