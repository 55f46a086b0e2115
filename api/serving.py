"""The models the server answers with, how they are (re)loaded from MLflow, and A/B routing.

Lifecycle
---------
- Each served *alias* (``production``, plus the aliases of an A/B split) maps to one loaded
  version. A reload fetches the new version's bundle (cached by run id + manifest sha256,
  pipelines/tracking.py), loads a private verified copy (``ModelBundle.load``: sha256 of every
  file on the bytes used, dims, ids; nothing stays mapped from the cache folder), builds the
  Recommender with the current catalog, smoke-tests it, and only then switches one reference.
- A cached copy that fails verification is downloaded again at once from the artifact store
  (the truth) and loaded; only when that copy is bad too is the version refused
  (:class:`ReloadError`), and the old model keeps serving. With no old model (a start), the
  newest earlier promoted, never rejected version is served instead (``_last_good``).
- Pinned versions (``?model_version=``) live in a small LRU. Loading one that is not loaded
  needs an API key (api/deps.py) and runs off the event loop, one at a time per process
  (:meth:`ModelHolder.load_pinned`).

Across workers and replicas
---------------------------
Every uvicorn worker holds its own models; the shared state is in the database
(feature_store/control.py):

- *reload generation*: ``POST /admin/reload`` reloads its own worker, then bumps it (so does
  the pipeline's notify stage). A watcher thread in every worker checks it every
  ``RELOAD_CHECK_SECONDS`` and reloads its aliases when it moved. The same thread polls the
  registry aliases every ``RECSYS_RELOAD_POLL_SECONDS`` (promotions made without notify).
- *catalog generation*: catalog writes made through the API log the changed item ids (after
  the feature-store write commits). Every worker's sync thread compares the log's generation
  with the one its models have seen every ``RECSYS_HISTORY_FEED_SECONDS`` and, when behind,
  re-reads just the changed items and applies them; it reports the generation it applied in
  ``serving_workers``. The write answers only once every live worker (reported within
  ``WORKER_ALIVE_SECONDS``) has applied it, or after ``RECSYS_CATALOG_WAIT_SECONDS`` (logged).
  So an item deleted through any worker is not returned by any live worker from the next
  request on, and a request costs no SQL for it. Changes written behind the API's back (CLI
  ingest) are picked up when a model is (re)loaded.
- *event feed*: the same sync thread follows the store's events (api/history.py), so a user's
  history comes from memory; an event stored through another worker counts within a poll
  interval, one stored through this worker from the next request on.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd

from api import metrics
from api.history import HistoryCache, is_fresh, snapshot_cutoff
from api.impressions import ImpressionLog
from feature_store import FeatureStore
from pipelines import tracking
from recsys.bundle import BundleError, ModelBundle
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


class LoaderBusy(RuntimeError):
    """Another pinned version is being loaded in this process; retry shortly."""

    def __init__(self, loading: str) -> None:
        super().__init__(f"version {loading} is being loaded; retry in a moment")
        self.loading = loading


#: how often every worker checks the shared reload generation (seconds)
RELOAD_CHECK_SECONDS = 0.5
#: a worker reports itself at least this often (seconds) ...
WORKER_REPORT_SECONDS = 1.0
#: ... and one not heard from for this long is not waited for by catalog writes (seconds)
WORKER_ALIVE_SECONDS = 10.0


@dataclass(eq=False)
class LoadedModel:
    version: str
    run_id: str
    recommender: Recommender
    #: snapshot time of the training data (events created later are folded in on request)
    trained_as_of: pd.Timestamp | None = None
    #: catalog generation (api_catalog_changes.seq) this model's catalog reflects
    catalog_seq: int = 0
    manifest_sha256: str = ""
    #: name of the thread that loaded it (pinned loads run in the ``pinned-load`` pool)
    load_thread: str = ""
    loaded_at: float = field(default_factory=time.time)
    #: ``trained_as_of`` as an aware UTC datetime, compared with a user's newest event
    fresh_cutoff: datetime | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.fresh_cutoff = snapshot_cutoff(self.trained_as_of)


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
        #: the two aliases interleaved per request (RECSYS_INTERLEAVE), or None
        self.interleave = settings.interleave_aliases
        for alias in self.interleave or ():
            if alias not in self.aliases:
                self.aliases.append(alias)
        self.control = store.control
        self.registry = tracking.RegistryClient(settings)
        self._by_alias: dict[str, LoadedModel] = {}
        self._versions: OrderedDict[str, LoadedModel] = OrderedDict()
        self._versions_lock = threading.Lock()
        self._load_lock = threading.Lock()  # one load at a time per process
        self._alias_lock = threading.RLock()  # resolve + load + swap of an alias, one at a time
        self._catalog_lock = threading.Lock()
        self._pin_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pinned-load")
        self._pin_loading: tuple[str, asyncio.Future] | None = None  # touched on the event loop only
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._syncer: threading.Thread | None = None
        #: users' event histories, kept current by the event feed (api/history.py)
        self.history = HistoryCache(store, settings.history_cache_users)
        #: served lists, logged off the request path (api/impressions.py); None: logging off
        self.impressions = (
            ImpressionLog(
                store,
                queue_size=settings.impression_queue,
                batch_size=settings.impression_batch,
                flush_seconds=settings.impression_flush_seconds,
            )
            if settings.impressions
            else None
        )
        #: this process in ``serving_workers`` (catalog writes wait for every live worker)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._reported: tuple[int, float] = (-1, 0.0)  # catalog generation reported, when
        #: the reload generation this worker has acted on (read before the first load)
        self.reload_generation = self.control.reload_generation()

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

    def cached_versions(self) -> list[str]:
        return list(self._versions)

    def for_user(self, user_id: str | None, pinned: LoadedModel | None = None) -> tuple[LoadedModel, str]:
        """The model answering this request and the variant name reported with it."""
        if pinned is not None:
            return pinned, "pinned"
        if user_id is not None and self.split:
            alias = assign_variant(user_id, self.split, self.settings.ab_salt)
            model = self._by_alias.get(alias)
            if model is not None:
                return model, alias
            # A challenger alias that isn't loaded: its users get the default model.
        return self.current, self.settings.model_alias

    def interleaved(self) -> tuple[LoadedModel, LoadedModel] | None:
        """The two models to interleave (RECSYS_INTERLEAVE), or None when off or one is not loaded."""
        if self.interleave is None:
            return None
        a, b = (self._by_alias.get(alias) for alias in self.interleave)
        return (a, b) if a is not None and b is not None else None

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
        """The MLflow client (rebuilt when the tracking store file was replaced)."""
        reconnects = self.registry.reconnects
        client = self.registry.get()
        if self.registry.reconnects != reconnects:
            with self._versions_lock:  # pinned versions of the old registry mean nothing now
                self._versions.clear()
        return client

    def load_alias(self, alias: str | None = None) -> LoadedModel | None:
        """Serve the version behind ``alias``; returns None when the alias does not exist.

        Raises :class:`ReloadError` when the version cannot be loaded (the old model stays).
        """
        alias = alias or self.settings.model_alias
        with self._alias_lock:
            return self._load_alias(alias)

    def _load_alias(self, alias: str) -> LoadedModel | None:
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
        if old is not None and old.version == str(version.version) and old.run_id == version.run_id:
            return old
        try:
            model = self._load(version)
        except ReloadError as exc:
            exc.alias = alias
            metrics.MODEL_RELOAD_FAILURES.labels(alias=alias).inc()
            model = self._last_good(alias, str(version.version)) if old is None else None
            if model is None:
                raise
        self._by_alias[alias] = model  # the atomic swap: one reference
        metrics.MODEL_SWAPS.labels(alias=alias).inc()
        metrics.set_model_info(alias, old.version if old else None, model.version)
        logger.info("alias %s now served from version %s (was %s)", alias, model.version, old.version if old else None)
        return model

    def _last_good(self, alias: str, failed: str) -> LoadedModel | None:
        """Nothing is served for ``alias`` and its version is bad even fresh from the artifact
        store: serve the newest earlier version that was promoted and never rejected or rolled
        back (the rule of ``recsys model rollback``) rather than answer 503. The alias stays
        where it is; every poll tries its version again."""
        for row in tracking.list_versions(self.client(), self.settings.registered_model_name):
            tags = row["tags"]
            if (
                int(row["version"]) >= int(failed)
                or "promoted" not in tags
                or "rejected" in tags
                or "rolled_back" in tags
            ):
                continue
            mv = tracking.get_version(self.client(), self.settings.registered_model_name, row["version"])
            try:
                model = self._load(mv)
            except ReloadError:
                continue
            logger.error(
                "alias %s: version %s cannot be served; serving the last good version %s instead",
                alias,
                failed,
                model.version,
            )
            return model
        return None

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

    def loaded_version(self, version: str) -> LoadedModel | None:
        """A version this worker already holds (served by an alias or in the LRU); no I/O."""
        version = str(version)
        for model in list(self._by_alias.values()):
            if model.version == version:
                return model
        with self._versions_lock:
            model = self._versions.get(version)
            if model is not None:
                self._versions.move_to_end(version)
            return model

    async def load_pinned(self, version: str) -> LoadedModel:
        """A pinned version, loaded now if needed — in the ``pinned-load`` thread, never on the
        event loop, and one at a time per process: a request for the version being loaded
        waits for it, a request for another one gets :class:`LoaderBusy`.

        Raises UnknownVersion / ReloadError / LoaderBusy. Call on the event loop.
        """
        version = str(version)
        model = self.loaded_version(version)
        if model is not None:
            return model
        if self._pin_loading is not None:
            loading, future = self._pin_loading
            if loading != version:
                raise LoaderBusy(loading)
        else:
            future = asyncio.get_running_loop().run_in_executor(self._pin_executor, self._load_pinned, version)
            self._pin_loading = (version, future)

            def done(_f, fut=future) -> None:
                if self._pin_loading is not None and self._pin_loading[1] is fut:
                    self._pin_loading = None

            future.add_done_callback(done)
        return await asyncio.shield(future)

    def _load_pinned(self, version: str) -> LoadedModel:
        model = self.loaded_version(version)
        if model is not None:
            return model
        mv = tracking.get_version(self.client(), self.settings.registered_model_name, version)
        if mv is None:
            raise UnknownVersion(version)
        model = self._load(mv)
        with self._versions_lock:
            self._versions[version] = model
            while len(self._versions) > max(self.settings.model_cache_size, 1):
                self._versions.popitem(last=False)
        return model

    def _load(self, mv) -> LoadedModel:
        version = str(mv.version)
        with self._load_lock:
            with self._versions_lock:
                cached = self._versions.get(version)
            if cached is not None and cached.run_id == mv.run_id:
                return cached
            for model in list(self._by_alias.values()):
                if model.version == version and model.run_id == mv.run_id:
                    return model
            start = time.perf_counter()
            try:
                bundle, digest = self._fetch_and_verify(mv)
                seq = self.control.catalog_generation()
                recommender = Recommender(
                    bundle, self.store.items_frame(), search_attributes=self.settings.search_attributes
                )
                _smoke_test(recommender, bundle)
            except Exception as exc:
                reason = f"version {version} refused: {exc.__class__.__name__}: {exc}"
                logger.error("%s (keeping the model that is being served)", reason)
                raise ReloadError(None, version, reason) from exc
            trained_as_of = bundle.trained_as_of
            model = LoadedModel(
                version=version,
                run_id=mv.run_id,
                recommender=recommender,
                trained_as_of=trained_as_of,
                catalog_seq=seq,
                manifest_sha256=digest,
                load_thread=threading.current_thread().name,
            )
        logger.info(
            "loaded version %s (%s, %d items) in %.2fs",
            version,
            bundle.kind,
            len(bundle.item_ids),
            time.perf_counter() - start,
        )
        return model

    def _fetch_and_verify(self, mv) -> tuple[ModelBundle, str]:
        """A verified private copy of the version's bundle. A cached copy that fails
        verification is downloaded again from the artifact store at once; a copy fresh from
        the store that fails too means the version itself is bad (BundleError)."""
        fetched = tracking.fetch_bundle_checked(self.settings, mv)
        try:
            return ModelBundle.load(
                fetched.path, verify=True, manifest_sha256=fetched.manifest_sha256
            ), fetched.manifest_sha256
        except BundleError as exc:
            metrics.MODEL_RELOAD_FAILURES.labels(alias="cache").inc()
            logger.error("cached bundle of version %s failed verification (%s): downloading it again", mv.version, exc)
        fetched = tracking.fetch_bundle_checked(self.settings, mv, refresh=True)
        return ModelBundle.load(
            fetched.path, verify=True, manifest_sha256=fetched.manifest_sha256
        ), fetched.manifest_sha256

    # ---- reloads across workers, alias polling --------------------------------------------
    def announce_reload(self, requested_by: str) -> int:
        """Tell every worker (and replica) on this database to reload: bump the generation.
        Call after this worker reloaded; it does not reload again for its own bump."""
        generation = self.control.bump_reload_generation(requested_by)
        self.reload_generation = max(self.reload_generation, generation)
        return generation

    def check_reload_generation(self) -> bool:
        """Reload every alias if the shared generation moved; True when it had."""
        generation = self.control.reload_generation()
        if generation <= self.reload_generation:
            return False
        logger.info("reload generation %d (had %d): reloading %s", generation, self.reload_generation, self.aliases)
        self.reload_generation = generation
        self._reload_each("reload generation")
        return True

    def _reload_each(self, why: str) -> None:
        for alias in self.aliases:
            try:
                self.load_alias(alias)
            except ReloadError as exc:
                logger.error("%s: %s", why, exc.reason)
            except Exception:
                logger.exception("%s: reloading alias %s failed", why, alias)

    def start_watching(self) -> None:
        """Background thread: the reload generation every RELOAD_CHECK_SECONDS, the registry
        aliases every ``reload_poll_seconds`` (0: no alias polling)."""
        if self._watcher is not None:
            return
        poll_every = self.settings.reload_poll_seconds

        def loop() -> None:
            next_poll = time.monotonic() + poll_every
            while not self._stop.wait(RELOAD_CHECK_SECONDS):
                try:
                    self.check_reload_generation()
                except Exception:
                    logger.exception("could not read the reload generation")
                if poll_every > 0 and time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + poll_every
                    self._reload_each("alias poll")

        self._watcher = threading.Thread(target=loop, name=f"model-watcher-{os.getpid()}", daemon=True)
        self._watcher.start()

    def start_syncing(self) -> None:
        """Join ``serving_workers``, catch up with the catalog, warm the history cache with the
        most recently active users, then follow the catalog generation and the event feed every
        ``history_feed_seconds`` in a background thread. Call before serving requests."""
        if self._syncer is not None:
            return
        if self.impressions is not None:
            self.impressions.start()
        self._report(force=True)  # before the catch-up: a write from now on waits for us
        self.sync_catalog()
        self._report(force=True)
        interval = self.settings.history_feed_seconds

        # Warm before serving, not in the thread: a worker busy warming while it already accepts
        # connections answers slowly and leaves its share of the traffic to the others.
        start = time.perf_counter()
        try:
            warmed = self.history.warm(self.settings.history_cache_users)
            logger.info("history cache warmed with %d users in %.2fs", warmed, time.perf_counter() - start)
        except Exception:
            logger.exception("could not warm the history cache")

        def loop() -> None:
            while not self._stop.is_set():
                self.sync_once()
                self._stop.wait(interval)

        self._syncer = threading.Thread(target=loop, name=f"serving-sync-{os.getpid()}", daemon=True)
        self._syncer.start()

    def sync_once(self) -> None:
        """One round of the sync thread: catalog generation, event feed, report."""
        for what, step in (
            ("catalog", self.sync_catalog),
            ("event feed", self.follow_events),
            ("report", self._report),
        ):
            try:
                step()
            except Exception:
                logger.exception("serving sync: %s failed", what)

    def follow_events(self) -> int:
        """Apply the event feed to the cached histories, then fold in every changed user whose
        history is newer than a held model's snapshot, so that their next request finds the
        folded vector cached (the fold-in is paid once per event batch, off the request path).
        Returns how many events were applied."""
        applied = self.history.poll()
        changed = self.history.take_changed()
        if not changed:
            return applied
        for model in self._loaded_models():
            for user_id, history in changed.items():
                if not is_fresh(history.newest, model.fresh_cutoff):
                    continue
                try:
                    model.recommender.prefold(user_id, history.items, history.values)
                except Exception:  # the events are stored: the request folds in instead
                    logger.exception("could not fold in user %r for version %s", user_id, model.version)
        return applied

    def _loaded_models(self) -> list[LoadedModel]:
        """Every model this worker holds (served and cached), snapshotted under the cache lock."""
        with self._versions_lock:
            return list(self._by_alias.values()) + list(self._versions.values())

    def _report(self, force: bool = False) -> None:
        """Tell ``serving_workers`` the catalog generation this worker applied (when it moved,
        and at least every WORKER_REPORT_SECONDS)."""
        models = self._loaded_models()
        applied = min((m.catalog_seq for m in models), default=self.control.catalog_generation())
        last_seq, last_at = self._reported
        now = time.time()
        if force or applied != last_seq or now - last_at >= WORKER_REPORT_SECONDS:
            self.control.report_worker(self.worker_id, applied, now)
            self._reported = (applied, now)

    def stop(self) -> None:
        self._stop.set()
        if self.impressions is not None:
            self.impressions.stop()  # what is still queued is stored
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        if self._syncer is not None:
            self._syncer.join(timeout=5)
            try:
                self.control.remove_worker(self.worker_id)
            except Exception:
                logger.exception("could not remove worker %s from serving_workers", self.worker_id)
        self._pin_executor.shutdown(wait=False, cancel_futures=True)

    # ---- catalog generation --------------------------------------------------------------
    def record_catalog_change(self, item_ids: list[str]) -> None:
        """Log changed item ids (call after the store write committed), apply them here, then
        wait until every other live worker applied them (at most ``catalog_wait_seconds``).
        Blocking: call from a thread, not the event loop."""
        if not item_ids:
            return
        generation = self.control.append_catalog_changes(item_ids)
        self.sync_catalog()
        self._report()
        self.wait_catalog_applied(generation)

    def wait_catalog_applied(self, generation: int) -> list[str]:
        """Wait until no other live worker is behind ``generation``; returns the ones still
        behind when ``catalog_wait_seconds`` ran out (logged)."""
        deadline = time.monotonic() + self.settings.catalog_wait_seconds
        pause = 0.005
        while True:
            behind = self.control.workers_behind(generation, time.time() - WORKER_ALIVE_SECONDS, exclude=self.worker_id)
            if not behind:
                return []
            if time.monotonic() >= deadline:
                logger.warning(
                    "catalog generation %d: workers %s have not applied it after %.1fs",
                    generation,
                    behind,
                    self.settings.catalog_wait_seconds,
                )
                return behind
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def sync_catalog(self) -> None:
        """Bring every loaded model up to the catalog generation (one primary-key read when
        nothing changed). Runs in the sync thread and after this worker's own catalog writes."""
        models = self._loaded_models()
        if not models:
            return
        seq = self.control.catalog_generation()
        if all(m.catalog_seq >= seq for m in models):
            return
        with self._catalog_lock:
            since = min(m.catalog_seq for m in models)
            ids = self.control.changed_item_ids(since, seq)
            frame = self.control.items_by_ids(ids)
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
