"""Durability of POST /events under load: 8 concurrent clients post N events (default 100,000)
in batches, with duplicates (re-sent batches and repeated ids) and malformed requests mixed
in, against a live uvicorn on SQLite (or RECSYS_DATABASE_URL). Afterwards the store must hold
exactly the valid unique events: 0 lost, 0 duplicated. Exit 0 only then.

    .venv/bin/python bench/durability_bench.py            # 100,000 events
    RECSYS_DURABILITY_EVENTS=5000 .venv/bin/python bench/durability_bench.py
"""

from __future__ import annotations

import logging
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import func, select  # noqa: E402

from feature_store import FeatureStore, events_table  # noqa: E402
from tests.harness import live_server, prepare, settings_for  # noqa: E402

logger = logging.getLogger("durability_bench")

N_EVENTS = int(os.environ.get("RECSYS_DURABILITY_EVENTS", "100000"))
CLIENTS = int(os.environ.get("RECSYS_DURABILITY_CLIENTS", "8"))
BATCH = int(os.environ.get("RECSYS_DURABILITY_BATCH", "500"))
WORKERS = int(os.environ.get("RECSYS_DURABILITY_WORKERS", "2"))
KEY = "durability-key"
N_ITEMS = 200


def make_batches(n_events: int, seed: int = 0) -> tuple[list[list[dict]], list[list[dict]], set[str]]:
    """Valid batches (with ~5% of ids repeated inside/between batches), malformed ones, and the
    set of valid unique event ids the store must end up with."""
    rng = random.Random(seed)
    valid_ids = [f"dur-{i}" for i in range(n_events)]
    batches, malformed = [], []
    records: list[dict] = []
    for lo in range(0, n_events, BATCH):
        batch = [
            {
                "event_id": eid,
                "user_id": f"load-user-{rng.randrange(5000)}",
                "item_id": f"i{rng.randrange(N_ITEMS)}",
                "event_type": rng.choice(["view", "click", "purchase"]),
                "value": 1.0,
            }
            for eid in valid_ids[lo : lo + BATCH]
        ]
        records.extend(batch)
        # duplicates: a client's retry resends a few events of this or an earlier batch as they
        # were (the same id with other content would be a conflict, 409)
        for _ in range(max(1, len(batch) // 20)):
            batch.append(dict(records[rng.randrange(len(records))]))
        rng.shuffle(batch)
        batches.append(batch)
        if (lo // BATCH) % 5 == 0:  # every 5th: a malformed batch: one bad record poisons the whole batch
            bad = [{"event_id": f"bad-{lo}-{k}", "user_id": "u1", "item_id": "i1"} for k in range(10)]
            bad.append(
                rng.choice(
                    [
                        {"user_id": "u1"},
                        {"user_id": "u1", "item_id": "i1", "value": "NaN-ish"},
                        {"user_id": "u1", "item_id": "no-such-item", "event_id": f"bad-{lo}-x"},
                    ]
                )
            )
            malformed.append(bad)
    # re-send ~5% of whole batches (a client retrying after a timeout)
    resend = [batches[i] for i in rng.sample(range(len(batches)), max(1, len(batches) // 20))]
    return batches + resend, malformed, set(valid_ids)


def post_all(base: str, batches: list[list[dict]], malformed: list[list[dict]]) -> dict:
    work = [("ok", b) for b in batches] + [("bad", b) for b in malformed]
    random.Random(1).shuffle(work)
    lock = threading.Lock()
    stats = {"ok": 0, "rejected": 0, "unexpected": 0, "retries": 0, "inserted": 0, "duplicates": 0}

    def client(part: list) -> None:
        with httpx.Client(base_url=base, headers={"X-API-Key": KEY}, timeout=120) as http:
            for kind, batch in part:
                for attempt in range(5):
                    try:
                        r = http.post("/events", json=batch)
                        break
                    except httpx.TransportError:
                        with lock:
                            stats["retries"] += 1
                        time.sleep(0.5 * (attempt + 1))
                else:
                    raise RuntimeError("batch could not be posted after 5 attempts")
                with lock:
                    if kind == "ok" and r.status_code == 200:
                        stats["ok"] += 1
                        stats["inserted"] += r.json()["inserted"]
                        stats["duplicates"] += r.json()["duplicates"]
                    elif kind == "bad" and r.status_code == 422:
                        stats["rejected"] += 1
                    else:
                        stats["unexpected"] += 1
                        logger.error("unexpected %s for a %s batch: %s", r.status_code, kind, r.text[:300])

    threads = [threading.Thread(target=client, args=(work[i::CLIENTS],)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return stats


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    with tempfile.TemporaryDirectory(prefix="durability-") as tmp:
        env = prepare(
            Path(tmp), users=200, items=N_ITEMS, events=3000, database_url=os.environ.get("RECSYS_DATABASE_URL")
        )
        store = FeatureStore(settings_for(env).database_url)
        with store.engine.connect() as conn:
            before = conn.execute(select(func.count()).select_from(events_table)).scalar_one()
        batches, malformed, expected = make_batches(N_EVENTS)
        sent = sum(len(b) for b in batches)
        with live_server(
            env, workers=WORKERS, extra_env={"RECSYS_API_KEYS": KEY, "RECSYS_RELOAD_POLL_SECONDS": "0"}
        ) as base:
            start = time.perf_counter()
            stats = post_all(base, batches, malformed)
            elapsed = time.perf_counter() - start
        with store.engine.connect() as conn:
            stored = [
                r[0] for r in conn.execute(select(events_table.c.event_id).where(events_table.c.event_id.like("dur-%")))
            ]
            bad_stored = conn.execute(select(func.count()).where(events_table.c.event_id.like("bad-%"))).scalar_one()
            total = conn.execute(select(func.count()).select_from(events_table)).scalar_one()
        lost = len(expected - set(stored))
        duplicated = len(stored) - len(set(stored))
        extra = len(set(stored) - expected) + bad_stored
        db = store.dialect
    print(f"{'database':<28}{db}")
    print(f"{'valid unique events':<28}{len(expected):,}")
    print(
        f"{'event records sent':<28}{sent:,} in {len(batches):,} batches + {len(malformed)} malformed batches, {CLIENTS} clients"
    )
    print(f"{'time':<28}{elapsed:.1f} s ({sent / elapsed:,.0f} records/s)")
    print(f"{'responses':<28}{stats}")
    print(f"{'stored':<28}{len(stored):,} (store total {total:,}, before {before:,})")
    print(f"{'lost / duplicated / extra':<28}{lost} / {duplicated} / {extra}")
    ok = (
        lost == 0
        and duplicated == 0
        and extra == 0
        and stats["unexpected"] == 0
        and stats["inserted"] == len(expected)
        and total == before + len(expected)
    )
    print(
        f"{'PASS' if ok else 'FAIL'}: {len(expected):,} events, {lost} lost, {duplicated} duplicated, {extra} extra, "
        f"{stats['rejected']} malformed batches rejected, {sent / elapsed:,.0f} records/s on {db}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
