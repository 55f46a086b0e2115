"""Helpers for tests and benches: a seeded trained setup and a live uvicorn server subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(
    data_dir: Path,
    *,
    users: int = 600,
    items: int = 300,
    events: int = 30_000,
    clusters: int = 6,
    seed: int = 7,
    database_url: str | None = None,
    factors: int = 32,
    iterations: int = 8,
    content: str | None = None,
    dataset=None,
    model: dict | None = None,
) -> dict:
    """Generate data into a fresh store under ``data_dir`` (or ingest ``dataset``), train ALS
    (or ``model``, a model config), register as version 1 behind ``production``. Returns the
    environment for a server on it."""
    from feature_store import FeatureStore
    from pipelines.train import train
    from recsys.datasets.synthetic import generate_synthetic
    from recsys.settings import Settings

    env = {**os.environ, "RECSYS_DATA_DIR": str(data_dir)}
    if database_url:
        env["RECSYS_DATABASE_URL"] = database_url
    settings = Settings(data_dir=data_dir, database_url=database_url or "")
    if dataset is None:
        dataset = generate_synthetic(n_users=users, n_items=items, n_events=events, n_clusters=clusters, seed=seed)
    FeatureStore(settings.database_url).ingest(dataset)
    train(settings, training_config(factors, iterations, "production", content=content, model=model))
    return env


def training_config(
    factors: int = 32,
    iterations: int = 8,
    alias: str | None = "production",
    seed: int = 42,
    content: str | None = None,
    model: dict | None = None,
):
    """A small, fast ALS config (or ``model``, a model config: ``{"kind": ..., "params": ...}``);
    ``content="tfidf"`` adds a text encoder (hybrid, /search)."""
    from pipelines.train import ContentConfig, IndexConfig, ModelConfig, TrainConfig

    return TrainConfig(
        content=ContentConfig(kind=content) if content else None,
        model=ModelConfig.model_validate(model)
        if model is not None
        else ModelConfig(kind="als", params={"factors": factors, "regularization": 0.05, "iterations": iterations}),
        index=IndexConfig(n_trees=10, recall_queries=50),
        eval_users=500,
        promote_alias=alias,
        seed=seed,
    )


def settings_for(env: dict):
    from recsys.settings import Settings

    return Settings(data_dir=Path(env["RECSYS_DATA_DIR"]), database_url=env.get("RECSYS_DATABASE_URL", ""))


@contextmanager
def live_server(
    env: dict,
    *,
    workers: int = 1,
    port: int | None = None,
    extra_env: dict | None = None,
    ready_timeout: float = 180,
    log_path: Path | None = None,
) -> Iterator[str]:
    """``recsys serve`` in a subprocess; yields its base URL once /ready answers 200."""
    port = port or free_port()
    full_env = {**env, **(extra_env or {})}
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL
    cmd = [
        sys.executable,
        "-m",
        "cli.main",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    proc = subprocess.Popen(cmd, env=full_env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + ready_timeout
        while True:
            try:
                if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {proc.returncode}" + (f" (log: {log_path})" if log_path else "")
                )
            if time.time() > deadline:
                raise RuntimeError("server did not become ready")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log_path:
            log.close()
