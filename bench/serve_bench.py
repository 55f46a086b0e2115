"""Serving throughput and latency: GET /users/{id}/recommendations (random known users, k=10,
catalog of 10,000+ items) against a bare JSON endpoint of the same app (/health), same server,
same wrk settings. Pass 1: peak throughput. Pass 2: each endpoint paced at 80% of its peak
(wrk Lua ``delay()`` per connection). Prints requests/s, p50/p99 and the throughput ratio;
the last line is a PASS/FAIL summary; exit 0 only when ratio >= 0.5 and p99 <= 20 ms at 80%.

    .venv/bin/python bench/serve_bench.py
    RECSYS_BENCH_ITEMS=20000 RECSYS_BENCH_WORKERS=2 .venv/bin/python bench/serve_bench.py

Needs ``wrk`` (Debian/Ubuntu: ``apt-get install wrk``).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api.testing import live_server, prepare  # noqa: E402

USERS = int(os.environ.get("RECSYS_BENCH_USERS", "20000"))
ITEMS = int(os.environ.get("RECSYS_BENCH_ITEMS", "10000"))
EVENTS = int(os.environ.get("RECSYS_BENCH_EVENTS", "400000"))
WORKERS = int(os.environ.get("RECSYS_BENCH_WORKERS", "1"))
CONNECTIONS = int(os.environ.get("RECSYS_BENCH_CONNECTIONS", "16"))
THREADS = int(os.environ.get("RECSYS_BENCH_THREADS", "1"))
DURATION = os.environ.get("RECSYS_BENCH_DURATION", "15s")
TARGET_RATIO, TARGET_P99_MS = 0.5, 20.0

LUA = """
math.randomseed(os.time())
local n_users = {users}
local pace_ms = {pace}
request = function()
  local path = "{path}"
  if path == "recs" then
    path = "/users/u" .. math.random(0, n_users - 1) .. "/recommendations?k=10"
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
    script.write_text(LUA.format(users=USERS, pace=int(pace_ms) if pace_ms >= 1 else 0, path=path))
    # wrk's delay() is whole milliseconds; finer pacing is done by the number of connections.
    cmd = ["wrk", "-t", str(THREADS), "-c", str(CONNECTIONS), "-d", DURATION, "-s", str(script), base]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = int(re.search(r"P50_US (\d+)", out).group(1)) / 1000
    p99 = int(re.search(r"P99_US (\d+)", out).group(1)) / 1000
    errors = int(re.search(r"NON2XX (\d+)", out).group(1))
    sock = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "p50": p50, "p99": p99, "non2xx": errors, "socket_errors": sock.group(1) if sock else "none"}


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    if shutil.which("wrk") is None:
        print("FAIL: wrk is not installed (apt-get install wrk)")
        return 2
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        tmp = Path(tmp)
        env = prepare(tmp / "data", users=USERS, items=ITEMS, events=EVENTS, clusters=20, factors=64, iterations=10)
        extra = {"RECSYS_RELOAD_POLL_SECONDS": "0", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        with live_server(env, workers=WORKERS, extra_env=extra) as base:
            # warm up (page in the memory-mapped index, JIT nothing, fill caches)
            wrk(base, "recs", 0, tmp)
            rows = {}
            for name, path in (("recommendations", "recs"), ("health", "/health")):
                peak = wrk(base, path, 0, tmp)
                # pace each connection so the total is ~80% of this endpoint's peak
                target = 0.8 * peak["rps"]
                pace = CONNECTIONS / target * 1000.0
                paced = wrk(base, path, pace, tmp)
                rows[name] = (peak, paced, target)
    print(f"catalog {ITEMS:,} items, {USERS:,} users; {WORKERS} uvicorn worker(s); wrk -t{THREADS} -c{CONNECTIONS} -d{DURATION}")
    print(f"{'endpoint':<18}{'pass':<10}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}")
    for name, (peak, paced, target) in rows.items():
        print(f"{name:<18}{'peak':<10}{peak['rps']:>10,.0f}{peak['p50']:>9.2f}{peak['p99']:>9.2f}{peak['non2xx']:>9}")
        print(f"{'':<18}{'80%':<10}{paced['rps']:>10,.0f}{paced['p50']:>9.2f}{paced['p99']:>9.2f}{paced['non2xx']:>9}  (target {target:,.0f}/s)")
    recs_peak, recs_paced, _ = rows["recommendations"]
    ratio = recs_peak["rps"] / rows["health"][0]["rps"]
    errors = sum(r["non2xx"] for pair in rows.values() for r in pair[:2])
    ok = ratio >= TARGET_RATIO and recs_paced["p99"] <= TARGET_P99_MS and errors == 0
    print(f"throughput ratio recommendations/health = {ratio:.2f} (target >= {TARGET_RATIO})")
    print(f"{'PASS' if ok else 'FAIL'}: recs {recs_peak['rps']:,.0f} req/s vs health {rows['health'][0]['rps']:,.0f} req/s "
          f"(ratio {ratio:.2f} >= {TARGET_RATIO}?), p99 at 80% peak {recs_paced['p99']:.1f} ms (<= {TARGET_P99_MS}?), {errors} errors")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
