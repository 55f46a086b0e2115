"""One typed settings object for the whole service (env prefix ``RECSYS_``).

Defaults give the embedded setup: everything lives under one local data folder
(``./.recsys`` unless ``RECSYS_DATA_DIR`` says otherwise): a SQLite feature store,
a SQLite MLflow tracking store with a local artifact folder, and index caches.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECSYS_", extra="ignore")

    data_dir: Path = Path(".recsys")
    database_url: str = ""
    mlflow_tracking_uri: str = ""
    #: where new experiments keep their artifacts. Empty with a tracking *server* (http/https
    #: URI): the server decides, so with its default ``--serve-artifacts`` every upload and
    #: download goes through it (``mlflow-artifacts:/``) and no process needs a shared disk.
    mlflow_artifact_root: str = ""
    experiment_name: str = "recsys"
    #: the MLflow UI the dashboard (/ui) links runs to, e.g. ``http://127.0.0.1:5000``
    #: (default: the tracking URI when it is an MLflow server; else runs are named, not linked)
    mlflow_ui_url: str = ""
    registered_model_name: str = "recsys"
    model_alias: str = "production"
    #: the offline event log (Parquet, partitioned by event date) that training reads: a
    #: local folder or any URI ``pyarrow.fs.FileSystem.from_uri`` opens (``s3://bucket/prefix``,
    #: ``gs://…``, ``hdfs://…``; credentials come from the usual environment of that filesystem).
    #: Default ``$RECSYS_DATA_DIR/offline``.
    offline_store_uri: str = ""

    # ---- HTTP API (api/) --------------------------------------------------------------
    #: API keys accepted for writes and /admin/* (comma-separated or JSON list); keys can also
    #: live sha256-hashed in the api_keys table (``python -m api.keys create NAME``). With no key
    #: configured anywhere every write is refused (401/403): secure by default.
    api_keys: str = ""
    #: also require a key on read routes (recommendations, search, similar)
    reads_require_key: bool = False
    #: poll the registry alias every N seconds and swap in a new version (0 = off)
    reload_poll_seconds: float = 30.0
    #: how many model versions (pinned or A/B) a worker keeps loaded at once
    model_cache_size: int = 4
    #: A/B split between aliases, e.g. ``production=0.9,challenger=0.1`` (empty = all traffic
    #: on ``model_alias``); a user's variant is a stable hash of the user id and the salt
    ab_split: str = ""
    ab_salt: str = "recsys-ab"
    #: team-draft interleaving of two aliases' lists, ``production,challenger``: every user
    #: recommendation list (first page) merges both, each position credited to the version that
    #: contributed it (recsys/evaluation/interleaving.py); empty = off
    interleave: str = ""
    #: largest request body accepted (bytes); bigger ones get 413 before they are read. The
    #: default holds a 10,000-event batch (the /events maximum) with room for item attributes.
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    #: users whose event history a worker keeps in memory (LRU; filled at start with the most
    #: recently active users). A user outside it costs one store read, off the event loop.
    history_cache_users: int = Field(100_000, ge=1)
    #: how often a worker follows the store's event feed and the catalog generation (seconds):
    #: events stored through another worker or replica count within about this long
    history_feed_seconds: float = Field(0.2, gt=0, le=10)
    #: a catalog write (PUT/DELETE /items...) answers once every live worker applied it, or after
    #: this many seconds (then logged): from the next request on no worker serves the old item
    catalog_wait_seconds: float = Field(5.0, ge=0, le=60)
    #: POST /events creates the items it names that the catalog lacks (no title or text, available;
    #: fill them in later with PUT /items/{item_id}). Off: an event for an unknown item is refused
    #: with 422 and nothing of its batch is stored.
    create_unknown_items: bool = False
    #: item attribute keys whose values /search matches by their words besides the title,
    #: description and categories, as a JSON list, e.g. ``["brand", "author"]``
    search_attributes: list[str] = []
    #: log every served list as an impression (request id, user, version, variant, items by
    #: position), batched off the request path (api/impressions.py, docs/online-evaluation.md)
    impressions: bool = True
    #: impressions a worker queues at most; when full, new ones are dropped and counted
    impression_queue: int = Field(10_000, ge=1)
    #: impressions stored per transaction at most
    impression_batch: int = Field(500, ge=1)
    #: the writer stores what is queued at least this often (seconds): a crash loses at most
    #: about this long of impressions (plus one batch in flight)
    impression_flush_seconds: float = Field(0.5, gt=0, le=60)

    # ---- Spark training engine (``model: {kind: als, engine: spark}``) --------------------
    #: where Spark ALS runs: ``local[*]`` (this machine), ``spark://host:7077`` (a standalone
    #: cluster) or ``k8s://https://host:443`` (Kubernetes)
    spark_master: str = "local[*]"
    #: folder for the interaction hand-off (Parquet) and ALS checkpoints of each fit (removed
    #: afterwards); empty = a temp folder. On a cluster every executor must read it: shared storage.
    spark_work_dir: str = ""
    #: driver JVM heap; applies when a process starts its first Spark session
    spark_driver_memory: str = "2g"
    #: more Spark properties as a JSON object, e.g. ``{"spark.executor.memory": "8g"}``
    spark_conf: dict[str, str] = {}

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        self.data_dir = Path(self.data_dir).expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'feature_store.db'}"
        if not self.offline_store_uri:
            self.offline_store_uri = str(self.data_dir / "offline")
        if not self.mlflow_tracking_uri:
            self.mlflow_tracking_uri = f"sqlite:///{self.data_dir / 'mlflow.db'}"
        if not self.mlflow_artifact_root and not self.uses_tracking_server:
            self.mlflow_artifact_root = (self.data_dir / "mlartifacts").as_uri()
        return self

    @property
    def uses_tracking_server(self) -> bool:
        """MLflow is a remote tracking server (not a local SQLite/file store)."""
        return self.mlflow_tracking_uri.split("://", 1)[0].lower() in ("http", "https")

    @property
    def api_key_list(self) -> list[str]:
        raw = self.api_keys.strip()
        if raw.startswith("["):
            import json

            return [str(k) for k in json.loads(raw) if str(k)]
        return [k.strip() for k in raw.split(",") if k.strip()]

    @property
    def interleave_aliases(self) -> tuple[str, str] | None:
        """The two aliases of ``RECSYS_INTERLEAVE`` (production first), or None when off."""
        parts = [p.strip() for p in self.interleave.split(",") if p.strip()]
        if not parts:
            return None
        if len(parts) != 2 or parts[0] == parts[1]:
            raise ValueError(
                f"RECSYS_INTERLEAVE: expected two aliases, e.g. production,challenger; got {self.interleave!r}"
            )
        return parts[0], parts[1]

    @property
    def ab_weights(self) -> dict[str, float]:
        """Alias -> traffic share (normalized to sum 1); empty dict when no split is configured."""
        out: dict[str, float] = {}
        for part in self.ab_split.split(","):
            if not part.strip():
                continue
            alias, _, share = part.partition("=")
            if not alias.strip() or not share.strip():
                raise ValueError(f"RECSYS_AB_SPLIT: expected alias=share, got {part!r}")
            out[alias.strip()] = float(share)
        if out and (any(v < 0 for v in out.values()) or sum(out.values()) <= 0):
            raise ValueError("RECSYS_AB_SPLIT: shares must be >= 0 and sum to more than 0")
        total = sum(out.values())
        return {a: v / total for a, v in out.items()}

    @property
    def cache_dir(self) -> Path:
        """Local copies of downloaded model bundles (indexes are memory-mapped from here)."""
        return self.data_dir / "cache"


@lru_cache
def get_settings() -> Settings:
    return Settings()
