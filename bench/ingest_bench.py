"""Feature store ingest/snapshot benchmark.

Ingests ``generate_synthetic(n_users=20000, n_items=5000, n_events=1_000_000)`` into a fresh
SQLite file (or ``--url``), re-ingests it (must add 0 rows), and snapshots it. Prints a table;
exits non-zero when the first ingest takes longer than ``--max-seconds`` (default 60).

    .venv/bin/python bench/ingest_bench.py [--events N] [--url URL] [--snapshot-events N]

``--snapshot-events N`` additionally appends synthetic events until the store holds N and times
a snapshot of all of them (e.g. 5_000_000).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

from feature_store import FeatureStore
from recsys.datasets import generate_synthetic

logger = logging.getLogger("ingest_bench")


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--url", default=None, help="database URL (default: a fresh SQLite file in a temp dir)")
    parser.add_argument("--max-seconds", type=float, default=60.0)
    parser.add_argument("--snapshot-events", type=int, default=0)
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    with tempfile.TemporaryDirectory(prefix="recsys-bench-") as tmp:
        url = args.url or f"sqlite:///{Path(tmp) / 'bench.db'}"
        dataset, t_gen = _timed(generate_synthetic, n_users=args.users, n_items=args.items, n_events=args.events)
        store = FeatureStore(url)
        if store.count_events():
            print(f"refusing to benchmark a non-empty store: {url}", file=sys.stderr)
            return 2
        rows: list[tuple[str, int, float]] = [("generate", args.events, t_gen)]
        first, t_ingest = _timed(store.ingest, dataset, progress=args.progress)
        rows.append(("ingest", first.events_inserted, t_ingest))
        again, t_again = _timed(store.ingest, dataset, progress=args.progress)
        rows.append(("re-ingest (0 new expected)", again.events_inserted, t_again))
        snap, t_snap = _timed(store.snapshot)
        rows.append(("snapshot", len(snap.events), t_snap))

        if args.snapshot_events > args.events:
            seed = 1
            while store.count_events() < args.snapshot_events:
                n = min(args.events, args.snapshot_events - store.count_events())
                extra = generate_synthetic(n_users=args.users, n_items=args.items, n_events=n, seed=seed)
                extra.events["event_id"] = f"s{seed}-" + extra.events["event_id"]
                res, t = _timed(store.ingest, extra, progress=args.progress)
                rows.append((f"ingest more (seed {seed})", res.events_inserted, t))
                seed += 1
            big, t_big = _timed(store.snapshot)
            rows.append(("snapshot (large)", len(big.events), t_big))
        store.dispose()

    print(f"\nfeature store benchmark on {url.split(':')[0]}")
    print(f"{'step':<28} {'rows':>10} {'seconds':>9} {'rows/s':>11}")
    for name, n, secs in rows:
        print(f"{name:<28} {n:>10,} {secs:>9.2f} {n / secs if secs else 0:>11,.0f}")

    failures = []
    if again.events_inserted != 0 or again.events_duplicate != args.events:
        failures.append(f"re-ingest inserted {again.events_inserted} rows (expected 0)")
    if first.events_inserted != args.events:
        failures.append(f"first ingest inserted {first.events_inserted} of {args.events} events")
    if t_ingest > args.max_seconds:
        failures.append(f"ingest took {t_ingest:.1f}s > {args.max_seconds:.0f}s")
    for f in failures:
        print(f"FAIL: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
