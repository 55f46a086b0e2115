"""Serving throughput and latency: GET /users/{id}/recommendations (random known users, k=10,
catalog of 10,000+ items) against a bare JSON endpoint of the same app (/health), same server,
same wrk settings. Pass 1: peak throughput. Pass 2: each endpoint paced at 80% of its peak
(wrk Lua ``delay()`` per connection). Prints requests/s, p50/p99 and the throughput ratio;
the last line is a PASS/FAIL summary; exit 0 only when ratio >= 0.5 and p99 <= 20 ms at 80%.

    .venv/bin/python bench/serve_bench.py
    RECSYS_BENCH_ITEMS=20000 RECSYS_BENCH_WORKERS=2 .venv/bin/python bench/serve_bench.py

Extra modes (the base workload and its PASS/FAIL line are unchanged):

- ``RECSYS_BENCH_COMPARE_WORKERS=2``: afterwards, the same data served by 2 workers; a second
  table with peak recommendations/health, throughput vs the 1-worker run and RSS/PSS/USS per worker
  (target >= 1.6x; part of the exit status).
- ``RECSYS_BENCH_DATABASE=postgresql``: the store is a fresh database on the local PostgreSQL
  server (``RECSYS_BENCH_POSTGRES_ADMIN_URL``, default postgres@127.0.0.1:5432), dropped afterwards.
- ``RECSYS_BENCH_PROFILE=out.txt``: one more recommendations run under ``py-spy record`` against
  the worker; the top frames (self and total samples) are written to ``out.txt``.

- ``RECSYS_BENCH_FRESH_SHARE=0.5``: before measuring, that share of the users gets one event
  posted through ``POST /events`` (newer than the training snapshot), so that share of the
  recommendation requests is served by fold-in (the trained model's own, cached per user until
  the user's next event) instead of the trained vector. The table says which share ran.

- ``RECSYS_BENCH_MODEL=ensemble``: serve ``ensemble(lightfm×1 + itemknn×0.25)``, what the default
  ``recsys train`` search picks on MovieLens 100K (bench/foldin_movielens.py's config), instead of
  ALS (64 factors). ``RECSYS_BENCH_DATASET=movielens``: MovieLens 100K (../shared/datasets/ml-100k:
  1,682 items, 943 users) instead of the generated catalog (``RECSYS_BENCH_ITEMS`` etc. then unused).

- ``RECSYS_BENCH_IMPRESSIONS=0``: serve with impression logging off (``RECSYS_IMPRESSIONS``); by
  default it is on, as in production, so the ratio above is with every recommendation list logged
  (api/impressions.py). The table says which ran and how many impressions were logged and dropped.

Every table prints the 1-minute load average before and after it (the machine may be shared),
and the HTTP stack uvicorn ran with (h11 + asyncio, or httptools + uvloop when the ``fast``
extra is installed: both endpoints get cheaper, so the ratio is the harder to reach).

Needs ``wrk`` (Debian/Ubuntu: ``apt-get install wrk``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.harness import live_server, prepare  # noqa: E402

USERS = int(os.environ.get("RECSYS_BENCH_USERS", "20000"))
ITEMS = int(os.environ.get("RECSYS_BENCH_ITEMS", "10000"))
EVENTS = int(os.environ.get("RECSYS_BENCH_EVENTS", "400000"))
WORKERS = int(os.environ.get("RECSYS_BENCH_WORKERS", "1"))
CONNECTIONS = int(os.environ.get("RECSYS_BENCH_CONNECTIONS", "16"))
THREADS = int(os.environ.get("RECSYS_BENCH_THREADS", "1"))
DURATION = os.environ.get("RECSYS_BENCH_DURATION", "15s")
COMPARE_WORKERS = int(os.environ.get("RECSYS_BENCH_COMPARE_WORKERS", "0"))
DATABASE = os.environ.get("RECSYS_BENCH_DATABASE", "sqlite")
POSTGRES_ADMIN_URL = os.environ.get(
    "RECSYS_BENCH_POSTGRES_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)
PROFILE = os.environ.get("RECSYS_BENCH_PROFILE")
FRESH_SHARE = float(os.environ.get("RECSYS_BENCH_FRESH_SHARE", "0"))
IMPRESSIONS = os.environ.get("RECSYS_BENCH_IMPRESSIONS", "1") not in ("0", "false", "no", "")
MODEL = os.environ.get("RECSYS_BENCH_MODEL", "als")
DATASET = os.environ.get("RECSYS_BENCH_DATASET", "synthetic")
MOVIELENS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "ml-100k"
BENCH_KEY = "serve-bench-key"
PY_SPY = Path(sys.executable).with_name("py-spy")
TARGET_RATIO, TARGET_P99_MS, TARGET_SCALING = 0.5, 20.0, 1.6

LUA = """
math.randomseed(os.time())
local users = {{{users}}}
local pace_ms = {pace}
request = function()
  local path = "{path}"
  if path == "recs" then
    path = "/users/" .. users[math.random(1, #users)] .. "/recommendations?k=10"
  end
  return wrk.format("GET", path)
end
function delay()
  return pace_ms
end
response = function(status, headers, body)
  if status ~= 200 then errors_non200 = (errors_non200 or 0) + 1 end
end
done = function(summary, latency, requests)
  io.write(string.format("P50_US %d\\nP99_US %d\\n", latency:percentile(50), latency:percentile(99)))
  io.write(string.format("NON2XX %d\\n", summary.errors.status or 0))
end
"""


def wrk(base: str, path: str, pace_ms: float, tmp: Path) -> dict:
    script = tmp / f"bench_{path.strip('/') or 'root'}_{int(pace_ms)}.lua"
    users = ",".join(f'"{u}"' for u in USER_IDS)
    script.write_text(LUA.format(users=users, pace=int(pace_ms) if pace_ms >= 1 else 0, path=path))
    # wrk's delay() is whole milliseconds; finer pacing is done by the number of connections.
    cmd = ["wrk", "-t", str(THREADS), "-c", str(CONNECTIONS), "-d", DURATION, "-s", str(script), base]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    p50 = int(re.search(r"P50_US (\d+)", out).group(1)) / 1000
    p99 = int(re.search(r"P99_US (\d+)", out).group(1)) / 1000
    errors = int(re.search(r"NON2XX (\d+)", out).group(1))
    sock = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": rps,
        "requests": requests,
        "p50": p50,
        "p99": p99,
        "non2xx": errors,
        "socket_errors": sock.group(1) if sock else "none",
    }


def load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def worker_pids(base: str, expected: int) -> list[int]:
    """The worker pids behind ``base`` (each /health names its pid)."""
    pids: set[int] = set()
    deadline = time.monotonic() + 30
    while len(pids) < expected and time.monotonic() < deadline:
        pids.add(httpx.get(f"{base}/health", timeout=5).json()["pid"])
    return sorted(pids)


def memory_mb(pid: int) -> dict[str, float]:
    """RSS, PSS and USS of a worker (MB). Pages shared between processes (libraries, files
    mapped by several workers) count whole in RSS, divided among the sharers in PSS, and not at
    all in USS (what the worker alone holds)."""
    info = psutil.Process(pid).memory_full_info()
    return {"rss": info.rss / 2**20, "pss": info.pss / 2**20, "uss": info.uss / 2**20}


def memory_line(mem: dict[int, dict[str, float]]) -> str:
    return "memory per worker: " + ", ".join(
        f"pid {pid} RSS {m['rss']:,.0f} MB / PSS {m['pss']:,.0f} MB / USS {m['uss']:,.0f} MB" for pid, m in mem.items()
    )


@contextmanager
def database() -> str | None:
    """None (SQLite under the data folder) or a fresh PostgreSQL database, dropped afterwards."""
    if DATABASE == "sqlite":
        yield None
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"recsys_bench_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def profile(base: str, tmp: Path, out: Path) -> None:
    """One recommendations run under py-spy (raw stacks), summarised as top self/total frames."""
    pid = worker_pids(base, 1)[0]
    raw = tmp / "profile.txt"
    seconds = max(int(DURATION.rstrip("s")) - 3, 1)
    spy = subprocess.Popen(
        [
            str(PY_SPY),
            "record",
            "-p",
            str(pid),
            "-f",
            "raw",
            "-o",
            str(raw),
            "-r",
            "200",
            "-d",
            str(seconds),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    run = wrk(base, "recs", 0, tmp)
    spy.wait(timeout=120)
    self_n, total_n, samples = Counter(), Counter(), 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        # function level: "name (file:line)" -> "name (file)"
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";") if f]
        if not frames or not n.isdigit():
            continue
        # idle event-loop waits are not work
        if any(
            "select (selectors.py" in f or "_worker (concurrent" in f or "wait (threading.py" in f for f in frames[-2:]
        ):
            continue
        samples += int(n)
        self_n[frames[-1]] += int(n)
        for f in set(frames):
            total_n[f] += int(n)
    lines = [
        f"py-spy record -r 200 of worker {pid} during a wrk recommendations run ({run['rps']:,.0f} req/s, {load()})",
        f"{samples} busy samples (idle waits excluded)",
        "",
        "top self:",
    ]
    lines += [f"{100 * n / max(samples, 1):6.1f}%  {f}" for f, n in self_n.most_common(25)]
    lines += ["", "top total (inclusive):"]
    lines += [f"{100 * n / max(samples, 1):6.1f}%  {f}" for f, n in total_n.most_common(70)]
    out.write_text("\n".join(lines) + "\n")
    print(f"profile written to {out}")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the worker processes used so far."""
    return sum(sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids)


def endpoint_rows(base: str, tmp: Path, pids: list[int], paced: bool = True) -> dict:
    """Per endpoint: the peak run (with the workers' CPU per request), the run paced at 80%."""
    rows = {}
    for name, path in (("recommendations", "recs"), ("health", "/health")):
        before = cpu_seconds(pids)
        peak = wrk(base, path, 0, tmp)
        # CPU per request does not depend on what else runs on the machine the way req/s does
        peak["cpu_us"] = (cpu_seconds(pids) - before) / max(peak["requests"], 1) * 1e6
        # pace each connection so the total is ~80% of this endpoint's peak
        target = 0.8 * peak["rps"]
        pace = CONNECTIONS / target * 1000.0
        rows[name] = (peak, wrk(base, path, pace, tmp) if paced else None, target)
    return rows


def impression_counts(base: str) -> dict[str, float]:
    """``recsys_impressions_total`` by result, from the serving worker's /metrics."""
    text = httpx.get(f"{base}/metrics", timeout=30).text
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(r'^recsys_impressions_total\{result="(\w+)"\} ([0-9.e+]+)$', text, re.M)
    }


#: the users requests are for and the catalog, set by main() from the dataset served
USER_IDS: list[str] = []
ITEM_IDS: list[str] = []


#: the model kinds the bench serves (RECSYS_BENCH_MODEL)
def model_config(kind: str) -> dict:
    if kind == "als":
        return {"kind": "als", "params": {"factors": 64, "regularization": 0.05, "iterations": 10}}
    if kind == "ensemble":
        from bench.foldin_movielens import KINDS  # the search's pick on MovieLens 100K

        return KINDS["ensemble(lightfm + itemknn)"]["model"]
    raise SystemExit(f"RECSYS_BENCH_MODEL must be als or ensemble, got {kind!r}")


def bench_dataset():
    if DATASET == "movielens":
        from recsys.datasets import load_movielens_100k

        return load_movielens_100k(MOVIELENS)
    if DATASET != "synthetic":
        raise SystemExit(f"RECSYS_BENCH_DATASET must be synthetic or movielens, got {DATASET!r}")
    from recsys.datasets.synthetic import generate_synthetic

    return generate_synthetic(n_users=USERS, n_items=ITEMS, n_events=EVENTS, n_clusters=20, seed=7)


def post_fresh_events(base: str) -> None:
    """One event, newer than the training snapshot, for the first FRESH_SHARE of the users."""
    n = int(round(FRESH_SHARE * len(USER_IDS)))
    if n == 0:
        return
    rng = random.Random(7)
    with httpx.Client(base_url=base, headers={"X-API-Key": BENCH_KEY}, timeout=120) as http:
        for start in range(0, n, 5_000):
            batch = [
                {"user_id": u, "item_id": rng.choice(ITEM_IDS), "event_type": "click"}
                for u in USER_IDS[start : min(n, start + 5_000)]
            ]
            http.post("/events", json=batch).raise_for_status()
    print(f"posted one fresh event for {n:,} of {len(USER_IDS):,} users ({FRESH_SHARE:.0%} of requests)")


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    if shutil.which("wrk") is None:
        print("FAIL: wrk is not installed (apt-get install wrk)")
        return 2
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp, database() as database_url:
        tmp = Path(tmp)
        dataset = bench_dataset()
        # every user of the dataset, as the requests of the first version of this bench (u0..u19999):
        # the few without events are answered from popularity
        USER_IDS[:] = sorted(set(dataset.users["user_id"].astype(str)), key=lambda u: (len(u), u))
        ITEM_IDS[:] = sorted(set(dataset.items["item_id"].astype(str)))
        env = prepare(tmp / "data", database_url=database_url, dataset=dataset, model=model_config(MODEL))
        extra = {
            "RECSYS_RELOAD_POLL_SECONDS": "0",
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "RECSYS_API_KEYS": BENCH_KEY,
            "RECSYS_IMPRESSIONS": "1" if IMPRESSIONS else "0",
        }
        with live_server(env, workers=WORKERS, extra_env=extra) as base:
            post_fresh_events(base)
            # warm up (page in the memory-mapped index, JIT nothing, fill caches)
            wrk(base, "recs", 0, tmp)
            load_before = load()
            rows = endpoint_rows(base, tmp, worker_pids(base, WORKERS))
            load_after = load()
            rss = {pid: memory_mb(pid) for pid in worker_pids(base, WORKERS)}
            logged = impression_counts(base)
            if PROFILE:
                try:
                    profile(base, tmp, Path(PROFILE))
                except (OSError, subprocess.SubprocessError, httpx.HTTPError) as exc:  # the figures above still count
                    print(f"profile failed: {exc!r}")
        scaled = None
        if COMPARE_WORKERS:
            with live_server(env, workers=COMPARE_WORKERS, extra_env=extra) as base:
                wrk(base, "recs", 0, tmp)
                scaled_load = load()
                scaled = endpoint_rows(base, tmp, worker_pids(base, COMPARE_WORKERS), paced=False)
                scaled_rss = {pid: memory_mb(pid) for pid in worker_pids(base, COMPARE_WORKERS)}
                scaled_load += " -> " + load()
    store = "PostgreSQL" if database_url else "SQLite"
    # uvicorn picks its C HTTP parser and event loop when installed (extra "fast")
    stack = (
        "httptools+uvloop"
        if importlib.util.find_spec("httptools") and importlib.util.find_spec("uvloop")
        else "h11+asyncio"
    )
    print(
        f"{DATASET} catalog {len(ITEM_IDS):,} items, {len(USER_IDS):,} users ({FRESH_SHARE:.0%} with fresh events), "
        f"model {MODEL}, store {store}; {WORKERS} uvicorn worker(s), {stack}; "
        f"wrk -t{THREADS} -c{CONNECTIONS} -d{DURATION}; {load_before} -> {load_after}"
    )
    print(f"{'endpoint':<18}{'pass':<10}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}{'CPU µs/req':>12}")
    for name, (peak, paced, target) in rows.items():
        print(
            f"{name:<18}{'peak':<10}{peak['rps']:>10,.0f}{peak['p50']:>9.2f}{peak['p99']:>9.2f}{peak['non2xx']:>9}"
            f"{peak['cpu_us']:>12,.0f}"
        )
        print(
            f"{'':<18}{'80%':<10}{paced['rps']:>10,.0f}{paced['p50']:>9.2f}{paced['p99']:>9.2f}{paced['non2xx']:>9}  (target {target:,.0f}/s)"
        )
    print(memory_line(rss))
    print(
        "impression logging "
        + (
            f"on: {logged.get('logged', 0):,.0f} logged, {logged.get('dropped', 0):,.0f} dropped (queue full), "
            f"{logged.get('failed', 0):,.0f} failed"
            if IMPRESSIONS
            else "off"
        )
    )
    recs_peak, recs_paced, _ = rows["recommendations"]
    ratio = recs_peak["rps"] / rows["health"][0]["rps"]
    errors = sum(r["non2xx"] for pair in rows.values() for r in pair[:2])
    ok = ratio >= TARGET_RATIO and recs_paced["p99"] <= TARGET_P99_MS and errors == 0
    if scaled is not None:
        print()
        print(f"{COMPARE_WORKERS} uvicorn workers, same data and wrk settings; {scaled_load}")
        print(f"{'endpoint':<18}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}{'vs 1 worker':>13}")
        for name, (peak, _, _) in scaled.items():
            speedup = peak["rps"] / rows[name][0]["rps"]
            print(
                f"{name:<18}{peak['rps']:>10,.0f}{peak['p50']:>9.2f}{peak['p99']:>9.2f}{peak['non2xx']:>9}{speedup:>12.2f}x"
            )
        print(memory_line(scaled_rss))
        scaling = scaled["recommendations"][0]["rps"] / recs_peak["rps"]
        errors += sum(peak["non2xx"] for peak, _, _ in scaled.values())
        ok = ok and scaling >= TARGET_SCALING and errors == 0
        print(
            f"recommendations with {COMPARE_WORKERS} workers = {scaling:.2f}x one worker (target >= {TARGET_SCALING})"
        )
    print(f"throughput ratio recommendations/health = {ratio:.2f} (target >= {TARGET_RATIO})")
    cpu_ratio = rows["health"][0]["cpu_us"] / max(recs_peak["cpu_us"], 1e-9)
    print(f"worker CPU per request health/recommendations = {cpu_ratio:.2f} (for reading a busy machine's figures)")
    print(
        f"{'PASS' if ok else 'FAIL'}: recs {recs_peak['rps']:,.0f} req/s vs health {rows['health'][0]['rps']:,.0f} req/s "
        f"(ratio {ratio:.2f} >= {TARGET_RATIO}?), p99 at 80% peak {recs_paced['p99']:.1f} ms (<= {TARGET_P99_MS}?), {errors} errors"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
