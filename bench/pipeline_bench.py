"""Pipeline benchmark: 5M synthetic events in a fresh SQLite feature store, one full pipeline run.

Prints wall time and peak RSS per stage (RSS sampled every 20 ms in a thread; the high-water
mark while the stage runs) and exits 1 if the run's peak RSS reaches 6 GiB.

    .venv/bin/python bench/pipeline_bench.py [--events 5000000] [--data-dir DIR]

Data generation and ingest run in a child process, so the pipeline's memory is measured alone.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from rich.console import Console
from rich.table import Table

LIMIT_BYTES = 6 * 1024**3
logger = logging.getLogger("bench.pipeline")


class RssSampler:
    def __init__(self, interval: float = 0.02):
        self.proc = psutil.Process()
        self.interval = interval
        self.stage = "startup"
        self.peaks: dict[str, int] = {}
        self.wall: dict[str, float] = {}
        self._t0 = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            rss = self.proc.memory_info().rss
            if rss > self.peaks.get(self.stage, 0):
                self.peaks[self.stage] = rss
            time.sleep(self.interval)

    def on_stage(self, stage: str, event: str) -> None:
        now = time.perf_counter()
        if event == "start":
            self.stage, self._t0 = stage, now
            self.peaks[stage] = self.proc.memory_info().rss
        elif event == "done":
            self.wall[stage] = now - self._t0
            self.stage = "between"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def load_data(env: dict, n_users: int, n_items: int, n_events: int) -> float:
    code = (
        "import logging; logging.basicConfig(level=logging.INFO);"
        "from recsys.settings import Settings; from feature_store import FeatureStore;"
        "from recsys.datasets.synthetic import generate_synthetic;"
        f"d = generate_synthetic(n_users={n_users}, n_items={n_items}, n_events={n_events}, seed=42);"
        "print(FeatureStore(Settings().database_url).ingest(d))"
    )
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=5_000_000)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--data-dir", type=Path, default=None, help="default: a fresh temporary folder")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="pipeline-bench-"))
    os.environ["RECSYS_DATA_DIR"] = str(data_dir)
    console = Console()
    console.print(f"data dir {data_dir}: generating and ingesting {args.events:,} events")
    ingest_s = load_data(dict(os.environ), args.users, args.items, args.events)

    from pipelines.config import PipelineConfig
    from pipelines.pipeline import run_pipeline
    from recsys.settings import Settings

    config = PipelineConfig.model_validate({"name": "bench"})
    with RssSampler() as sampler:
        t0 = time.perf_counter()
        result = run_pipeline(Settings(), config, on_stage=sampler.on_stage)
        total = time.perf_counter() - t0
    peak = max(sampler.peaks.values())
    table = Table(
        title=f"pipeline on {args.events:,} events ({args.users:,} users, {args.items:,} items), SQLite — {result.status}"
    )
    table.add_column("stage")
    table.add_column("wall (s)", justify="right")
    table.add_column("peak RSS (MiB)", justify="right")
    for stage, seconds in sampler.wall.items():
        table.add_row(stage, f"{seconds:.1f}", f"{sampler.peaks.get(stage, 0) / 2**20:,.0f}")
    table.add_row("[bold]total run[/]", f"{total:.1f}", f"{peak / 2**20:,.0f}")
    table.add_row("(generate + ingest, child process)", f"{ingest_s:.1f}", "-")
    console.print(table)
    console.print(
        "metrics: "
        + ", ".join(f"{k}={v:.4f}" for k, v in result.metrics.items() if k.endswith("_at_10") or k == "coverage")
    )
    ok = peak < LIMIT_BYTES
    console.print(f"peak RSS {peak / 2**30:.2f} GiB {'<' if ok else '>='} 6 GiB target: {'OK' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
