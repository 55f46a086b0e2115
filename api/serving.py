"""The models the server answers with, how they are (re)loaded from MLflow, and A/B routing.

Lifecycle
---------
- Each served *alias* (``production``, plus the aliases of an A/B split) maps to one loaded
  version. A reload (``POST /admin/reload`` or the alias poller) fetches the new version's
  bundle, verifies it (``ModelBundle.load(verify=True)``: sha256 of every file, dims, ids),
  builds the Recommender with the current catalog, smoke-tests it, and only then switches one
  reference. Any failure is logged and raised as :class:`ReloadError`; the old model keeps
  serving. A cached bundle that fails verification is moved aside, so the next reload
  downloads it again from the registry.
- Pinned versions (``?model_version=``) are loaded on demand into a small LRU.

Catalog changes across workers
------------------------------
Every uvicorn worker holds its own models. Catalog writes made through the API append the
changed item ids to ``api_catalog_changes`` (after the feature-store write commits); the max
``seq`` of that log is the catalog generation. Before answering, a request compares it with
the generation its model has seen (one primary-key lookup) and, when behind, re-reads just the
changed items and applies them (availability, metadata, cold-start items). So an item deleted
through any worker is never returned by any worker from the next request on. Changes written
behind the API's back (CLI ingest) are picked up when a model is (re)loaded.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import select

from api import metrics
from api.tables import catalog_changes_table
from feature_store import FeatureStore, items_table
from pipelines import tracking
from recsys.bundle import ModelBundle
from recsys.recommender import Recommender, SearchUnavailable
from recsys.settings import Settings

logger = logging.getLogger(__name__)


class ModelNotReady(RuntimeError):
    pass


class ReloadError(RuntimeError):
    """A version could not be loaded; the previously served model is untouched."""

    def __init__(self, alias: str | None, version: str | None, reason: str) -> None:
        super().__init__(reason)
        self.alias, self.version, self.reason = alias, version, reason


class UnknownVersion(LookupError):
    pass


@dataclass(eq=False)
class LoadedModel:
    version: str
    run_id: str
    recommender: Recommender
    #: snapshot time of the training data (events created later are folded in on request)
    trained_as_of: pd.Timestamp | None = None
    #: catalog generation (api_catalog_changes.seq) this model's catalog reflects
    catalog_seq: int = 0
    loaded_at: float = field(default_factory=time.time)


def assign_variant(user_id: str, weights: dict[str, float], salt: str) -> str:
    """Stable A/B bucket: sha256(salt:user_id) → a point in [0, 1) → the alias whose share covers it."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64
    cumulative = 0.0
    last = None
    for alias, share in weights.items():
        cumulative += share
        last = alias
        if point < cumulative:
            return alias
    return last  # rounding: the top of the range belongs to the last alias


class ModelHolder:
    """Per-process holder of the served models; a reload builds fully, then swaps a reference."""

    def __init__(self, settings: Settings, store: FeatureStore) -> None:
        self.settings = settings
        self.store = store
        self.split = settings.ab_weights
        self.aliases: list[str] = list(self.split) or [settings.model_alias]
        if settings.model_alias not in self.aliases:
            self.aliases.insert(0, settings.model_alias)
        self._by_alias: dict[str, LoadedModel] = {}
        self._versions: OrderedDict[str, LoadedModel] = OrderedDict()
        self._load_lock = threading.Lock()  # one load at a time per process
        self._catalog_lock = threading.Lock()
        self._client = None
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    # ---- what is served ------------------------------------------------------------------
    @property
    def current(self) -> LoadedModel:
        model = self._by_alias.get(self.settings.model_alias)
        if model is None:
            raise ModelNotReady(
                f"no model is loaded: train one (recsys train) so that alias "
                f"{self.settings.registered_model_name}@{self.settings.model_alias} exists"
            )
        return model

    @property
    def ready(self) -> bool:
        return self.settings.model_alias in self._by_alias

    def served(self) -> dict[str, str]:
        return {alias: m.version for alias, m in self._by_alias.items()}

    def for_user(self, user_id: str | None, pinned: str | None = None) -> tuple[LoadedModel, str]:
        """The model answering this request and the variant name reported with it."""
        if pinned:
            return self.get_version(pinned), "pinned"
        if user_id is not None and self.split:
            alias = assign_variant(user_id, self.split, self.settings.ab_salt)
            model = self._by_alias.get(alias)
            if model is not None:
                return model, alias
            # A challenger alias that isn't loaded: its users get the default model.
        return self.current, self.settings.model_alias

    def variant_label(self, user_id: str, variant: str | None, version: str | None) -> str | None:
        """What an event stores in ``events.variant``: ``alias:version``."""
        if variant is None and version is None:
            try:
                model, variant = self.for_user(user_id)
            except ModelNotReady:
                return None
            return f"{variant}:{model.version}"
        if variant is None:
            return f"pinned:{version}"
        if version is None:
            model = self._by_alias.get(variant)
            return f"{variant}:{model.version}" if model is not None else variant
        return f"{variant}:{version}"

    # ---- loading -------------------------------------------------------------------------
    def client(self):
        if self._client is None:
            self._client = tracking.setup(self.settings)
        return self._client

    def load_alias(self, alias: str | None = None) -> LoadedModel | None:
        """Serve the version behind ``alias``; returns None when the alias does not exist.

        Raises :class:`ReloadError` when the version cannot be loaded (the old model stays).
        """
        alias = alias or self.settings.model_alias
        try:
            version = tracking.resolve_alias(self.client(), self.settings.registered_model_name, alias)
        except Exception as exc:
            metrics.MODEL_RELOAD_FAILURES.labels(alias=alias).inc()
            logger.error("could not resolve alias %s: %s", alias, exc)
            raise ReloadError(alias, None, f"could not resolve alias {alias!r}: {exc}") from exc
        if version is None:
            logger.warning("no model version behind alias %s@%s", self.settings.registered_model_name, alias)
            return None
        old = self._by_alias.get(alias)
        if old is not None and old.version == str(version.version):
            return old
        try:
            model = self._load(version)
        except ReloadError as exc:
            exc.alias = alias
            metrics.MODEL_RELOAD_FAILURES.labels(alias=alias).inc()
            raise
        self._by_alias[alias] = model  # the atomic swap: one reference
        metrics.MODEL_SWAPS.labels(alias=alias).inc()
        metrics.set_model_info(alias, old.version if old else None, model.version)
        logger.info("alias %s now served from version %s (was %s)", alias, model.version, old.version if old else None)
        return model

    def reload(self, alias: str | None = None) -> dict[str, dict]:
        """Reload one alias or every served alias; raises ReloadError on the first failure."""
        out = {}
        for a in [alias] if alias else self.aliases:
            before = self._by_alias.get(a)
            model = self.load_alias(a)
            out[a] = {
                "version": model.version if model else None,
                "previous_version": before.version if before else None,
                "swapped": model is not None and model is not before,
            }
        return out

    def get_version(self, version: str) -> LoadedModel:
        """A pinned version: from the LRU or loaded now. Raises UnknownVersion / ReloadError."""
        version = str(version)
        for model in self._by_alias.values():
            if model.version == version:
                return model
        model = self._versions.get(version)
        if model is not None:
            self._versions.move_to_end(version)
            return model
        mv = tracking.get_version(self.client(), self.settings.registered_model_name, version)
        if mv is None:
            raise UnknownVersion(version)
        model = self._load(mv)
        self._versions[version] = model
        while len(self._versions) > max(self.settings.model_cache_size, 1):
            self._versions.popitem(last=False)
        return model

    def _load(self, mv) -> LoadedModel:
        version = str(mv.version)
        with self._load_lock:
            cached = self._versions.get(version)
            if cached is not None:
                return cached
            for model in self._by_alias.values():
                if model.version == version:
                    return model
            start = time.perf_counter()
            path: Path | None = None
            try:
                path = tracking.fetch_bundle(self.settings, mv)
                bundle = ModelBundle.load(path, verify=True)
                seq = self._catalog_seq()
                recommender = Recommender(bundle, self.store.items_frame())
                _smoke_test(recommender, bundle)
            except Exception as exc:
                reason = f"version {version} refused: {exc.__class__.__name__}: {exc}"
                logger.error("%s (keeping the model that is being served)", reason)
                if path is not None:
                    _quarantine(path)
                raise ReloadError(None, version, reason) from exc
            as_of = (bundle.info.get("data") or {}).get("as_of")
            trained_as_of = pd.Timestamp(as_of) if as_of else None
            if trained_as_of is not None and trained_as_of.tzinfo is None:
                trained_as_of = trained_as_of.tz_localize("UTC")
            model = LoadedModel(version=version, run_id=mv.run_id, recommender=recommender,
                                trained_as_of=trained_as_of, catalog_seq=seq)
        logger.info("loaded version %s (%s, %d items) in %.2fs", version, bundle.kind, len(bundle.item_ids),
                    time.perf_counter() - start)
        return model

    # ---- alias polling -------------------------------------------------------------------
    def start_polling(self) -> None:
        interval = self.settings.reload_poll_seconds
        if interval <= 0 or self._poller is not None:
            return

        def loop() -> None:
            while not self._stop.wait(interval):
                for alias in self.aliases:
                    try:
                        self.load_alias(alias)
                    except ReloadError as exc:
                        logger.error("alias poll: %s", exc.reason)
                    except Exception:
                        logger.exception("alias poll failed for %s", alias)

        self._poller = threading.Thread(target=loop, name="alias-poller", daemon=True)
        self._poller.start()

    def stop(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=5)

    # ---- catalog generation --------------------------------------------------------------
    def _catalog_seq(self) -> int:
        with self.store.engine.connect() as conn:  # driver SQL: this runs on every request
            return int(conn.exec_driver_sql("SELECT max(seq) FROM api_catalog_changes").scalar() or 0)

    def record_catalog_change(self, item_ids: list[str]) -> None:
        """Append changed item ids to the log (call after the store write committed), then apply."""
        if not item_ids:
            return
        with self.store.engine.begin() as conn:
            conn.execute(catalog_changes_table.insert(), [{"item_id": str(i)} for i in item_ids])
        self.sync_catalog()

    def sync_catalog(self) -> None:
        """Bring every loaded model up to the catalog generation (cheap when nothing changed)."""
        models = list(self._by_alias.values()) + list(self._versions.values())
        if not models:
            return
        seq = self._catalog_seq()
        if all(m.catalog_seq >= seq for m in models):
            return
        with self._catalog_lock:
            since = min(m.catalog_seq for m in models)
            with self.store.engine.connect() as conn:
                ids = sorted({r[0] for r in conn.execute(
                    select(catalog_changes_table.c.item_id).where(
                        catalog_changes_table.c.seq > since, catalog_changes_table.c.seq <= seq)
                )})
                frame = _items_frame(conn, ids)
            for model in models:
                if model.catalog_seq >= seq:
                    continue
                rec = model.recommender
                new = frame[~frame["item_id"].isin(rec.item_pos)]
                rec.update_catalog(frame)
                if len(new) and "content" in rec.modes:
                    try:
                        rec.add_items(new[new["available"]])
                    except SearchUnavailable:
                        pass
                    except Exception:
                        logger.exception("could not add %d new items to version %s", len(new), model.version)
                model.catalog_seq = seq
            metrics.CATALOG_CHANGES.inc(len(ids))


def _items_frame(conn, item_ids: list[str]) -> pd.DataFrame:
    cols = ["item_id", "title", "description", "categories", "attributes", "available"]
    if not item_ids:
        return pd.DataFrame({c: [] for c in cols})
    rows = []
    for lo in range(0, len(item_ids), 500):
        rows += conn.execute(
            select(*(items_table.c[c] for c in cols)).where(items_table.c.item_id.in_(item_ids[lo : lo + 500]))
        ).all()
    frame = pd.DataFrame([tuple(r) for r in rows], columns=cols)
    frame["categories"] = [list(c or []) for c in frame["categories"]]
    frame["attributes"] = [dict(a or {}) for a in frame["attributes"]]
    frame["available"] = frame["available"].astype(bool)
    return frame


def _smoke_test(recommender: Recommender, bundle: ModelBundle) -> None:
    """Answer one request of each kind before the model may serve traffic."""
    if len(bundle.item_ids) == 0:
        raise ValueError("bundle has no items")
    vectors = np.asarray(bundle.item_vectors[:1])
    if not np.isfinite(vectors).all():
        raise ValueError("item vectors are not finite")
    if len(bundle.user_ids):
        recommender.recommend_for_user(str(bundle.user_ids[0]), (), k=1)
    recommender.similar_items(str(bundle.item_ids[0]), k=1)
    recommender.popular(1)


def _quarantine(path: Path) -> None:
    """Move a cached bundle that failed to load aside, so the next attempt downloads it again."""
    try:
        if path.exists():
            target = path.with_name(f".corrupt-{path.name}-{int(time.time() * 1000)}")
            path.rename(target)
            shutil.rmtree(target, ignore_errors=True)
    except OSError as exc:  # another worker moved it first
        logger.debug("could not quarantine %s: %s", path, exc)
