"""Feature store ingest/snapshot benchmark.

Ingests ``generate_synthetic(n_users=20000, n_items=5000, n_events=1_000_000)`` into a fresh
SQLite file (or ``--url``) and exports it to the offline Parquet log (what ``recsys ingest``
does: SQL half, then the offline half), re-ingests it (must add 0 rows to either half), and
snapshots it from SQL and from Parquet. Then a crash half way through an export into a second
log: what it leaves, and that the re-run ends with every event exactly once. Prints a table;
exits non-zero when ingest + export takes longer than ``--max-seconds`` (default 60).

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
from feature_store.offline import OfflineStore
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
        sql_only = FeatureStore(url, offline_uri="")
        if sql_only.count_events():
            print(f"refusing to benchmark a non-empty store: {url}", file=sys.stderr)
            return 2
        store = FeatureStore(sql_only.engine, create=False, offline_uri=str(Path(tmp) / "offline"))
        rows: list[tuple[str, int, float]] = [("generate", args.events, t_gen)]
        first, t_ingest = _timed(sql_only.ingest, dataset, progress=args.progress)
        rows.append(("ingest (SQL half)", first.events_inserted, t_ingest))
        exported, t_export = _timed(store.export_offline, progress=args.progress)
        rows.append(("export (offline half)", exported.events, t_export))
        rows.append(("ingest total, both halves", first.events_inserted, t_ingest + t_export))
        state = store.offline.state()
        again, t_again = _timed(store.ingest, dataset, progress=args.progress)
        rows.append(("re-ingest (0 new expected)", again.events_inserted, t_again))
        reingest_offline_rows = store.offline.state().rows - state.rows
        snap, t_snap = _timed(store.snapshot, source="sql")
        rows.append(("snapshot from SQL", len(snap.events), t_snap))
        snap, t_snap = _timed(store.snapshot, source="offline")
        rows.append(("snapshot from Parquet", len(snap.events), t_snap))
        del snap

        # A crash half way through an export (between two partition files of the first batch).
        crash_log = OfflineStore(str(Path(tmp) / "offline-crash"))
        crashing = FeatureStore(store.engine, create=False, offline_uri=crash_log.uri)
        written: list[str] = []

        def crash_after_three(rel: str) -> None:
            written.append(rel)
            if len(written) == 3:
                raise RuntimeError("simulated crash")

        try:
            crashing.export_offline(batch_events=max(args.events // 4, 1), after_file=crash_after_three)
        except RuntimeError:
            pass
        left = crash_log.state()
        print(
            f"crash mid-export left: {len(written)} data files of an uncommitted batch on disk, "
            f"{left.rows} committed rows, watermark {left.watermark} (readers see {crash_log.read_table().num_rows} rows)"
        )
        resumed, t_resume = _timed(crashing.export_offline, batch_events=max(args.events // 4, 1))
        rows.append(("export re-run after crash", resumed.events, t_resume))
        seqs = crash_log.read_table(columns=["seq"]).column("seq").to_numpy()
        exactly_once = len(seqs) == len(set(seqs.tolist())) == store.count_events()

        if args.snapshot_events > args.events:
            seed = 1
            while store.count_events() < args.snapshot_events:
                n = min(args.events, args.snapshot_events - store.count_events())
                extra = generate_synthetic(n_users=args.users, n_items=args.items, n_events=n, seed=seed)
                extra.events["event_id"] = f"s{seed}-" + extra.events["event_id"]
                res, t = _timed(store.ingest, extra, progress=args.progress)
                rows.append((f"ingest more (seed {seed})", res.events_inserted, t))
                seed += 1
            big, t_big = _timed(store.snapshot, source="sql")
            rows.append(("SQL snapshot (large)", len(big.events), t_big))
            big, t_big = _timed(store.snapshot, source="offline")
            rows.append(("Parquet snapshot (large)", len(big.events), t_big))
        store.dispose()

    print(f"\nfeature store benchmark on {url.split(':')[0]}")
    print(f"{'step':<30} {'rows':>10} {'seconds':>9} {'rows/s':>11}")
    for name, n, secs in rows:
        print(f"{name:<30} {n:>10,} {secs:>9.2f} {n / secs if secs else 0:>11,.0f}")

    failures = []
    if again.events_inserted != 0 or again.events_duplicate != args.events:
        failures.append(f"re-ingest inserted {again.events_inserted} rows (expected 0)")
    if first.events_inserted != args.events:
        failures.append(f"first ingest inserted {first.events_inserted} of {args.events} events")
    if reingest_offline_rows:
        failures.append(f"re-ingest added {reingest_offline_rows} rows to the offline log (expected 0)")
    if exported.events != args.events:
        failures.append(f"export wrote {exported.events} of {args.events} events")
    if not exactly_once:
        failures.append("after the crash and re-run the log does not hold every event exactly once")
    if t_ingest + t_export > args.max_seconds:
        failures.append(f"ingest + export took {t_ingest + t_export:.1f}s > {args.max_seconds:.0f}s")
    for f in failures:
        print(f"FAIL: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
